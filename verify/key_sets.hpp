// The library's resolved problem for a verify::Problem, so code that includes the library's
// internals (src/) can enumerate key sets with core/visibility.hpp (e.g. emulated kernels).
#pragma once

#include "core/problem.hpp"
#include "problem.hpp"

namespace moba::verify {

detail::Problem problem_of(const Problem& p);

}  // namespace moba::verify
