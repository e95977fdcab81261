// The test suites' view of the verification library (verify/, shared with `moba check`):
// problems, random shapes, host tensors, runs through the public API, the fp64 truth and the
// comparisons with tolerances tied to the reference's own error, under moba::testing.
#pragma once

#include <gtest/gtest.h>

#include "check.hpp"
#include "key_sets.hpp"
#include "problem.hpp"

namespace moba::testing {

using namespace moba::verify;  // NOLINT: the tests' names are the library's

// Asserts a check passed, with the problem and what failed (verify/check.hpp).
#define MOBA_EXPECT_CHECK_OK(check, shape) \
  EXPECT_TRUE((check).ok()) << (shape).str() << "\n" << (check).explain()

}  // namespace moba::testing
