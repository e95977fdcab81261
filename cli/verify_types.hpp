// The verification library's types (verify/), under the tool's namespace: `check` and `bench`
// describe problems, make inputs and judge results with the same code as the test suites.
#pragma once

#include "check.hpp"
#include "problem.hpp"

namespace moba::cli {

using verify::BackwardResult;
using verify::ForwardResult;
using verify::HostTensor;
using verify::Inputs;
using verify::mode_name;
using verify::Problem;

}  // namespace moba::cli
