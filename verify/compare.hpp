// How far a backend's result is from the truth, and the tolerance it must meet.
//
// The truth is fp64 on the inputs' values (truth.hpp). The reference run on the inputs in their
// own dtype (fp64 inside, one rounding at the store) measures what rounding the outputs to that
// dtype alone costs. A backend passes when,
// for each output, both
//     rel_l2  = ||got - truth|| / ||truth||
//     rel_max = max |got - truth| / max |truth|
// are at most 2 x the same-dtype reference's error + a floor of the dtype (FlashAttention's
// rule against a same-precision reference) + an allowance for known, documented deviations
// (the backward's D_t = <dout_t, out_t> taken from the rounded out; see truth.hpp). The floors
// (f32: 5e-5 / 2e-4, f16: 6e-5 / 2.5e-4, bf16: 5e-4 / 2e-3; lse: 1e-5 / 1e-4 for every dtype,
// as lse is f32) cover fp32 accumulation; with f32 inputs the reference's own error is ~0, so
// the floor alone bounds it. Where the truth is tiny (a gradient that is exactly zero, e.g. of
// a token that sees only itself), errors are measured against magnitude 0.1 instead.
#pragma once

#include <string>
#include <vector>

#include "moba/tensor.hpp"

namespace moba::verify {

struct ErrorStat {
  double rel_l2 = 0;
  double rel_max = 0;
};

// Over the elements whose mask is non-zero (all of them when `mask` is empty). NaN or inf in
// `got` gives infinite error.
ErrorStat error_of(const std::vector<double>& got, const std::vector<double>& truth,
                   const std::vector<char>& mask = {});
// The size of `amount` (absolute per-element deviations) in the same relative units.
ErrorStat size_of(const std::vector<double>& amount, const std::vector<double>& truth,
                  const std::vector<char>& mask = {});

struct Tolerance {
  double rel_l2 = 0;
  double rel_max = 0;
};

enum class Quantity { output, lse };  // output: out, dq, dk, dv (stored in the input dtype)
Tolerance floor_of(DType dtype, Quantity q);
Tolerance tolerance(DType dtype, Quantity q, const ErrorStat& reference_error,
                    const ErrorStat& allowance = {});

struct Verdict {
  std::string name;  // "out", "lse", "dq", ...
  ErrorStat error, reference_error, allowance;
  Tolerance tol;
  bool ok() const { return error.rel_l2 <= tol.rel_l2 && error.rel_max <= tol.rel_max; }
  std::string explain() const;  // "dq: rel_l2 3.1e-02 > 8.4e-03 (reference in bf16 2.1e-03) ..."
};

// `allowance`: per-element absolute deviations the backend may add by design (empty: none).
Verdict judge(const std::string& name, DType dtype, Quantity q, const std::vector<double>& got,
              const std::vector<double>& reference, const std::vector<double>& truth,
              const std::vector<char>& mask = {}, const std::vector<double>& allowance = {});

}  // namespace moba::verify

namespace moba::verify {

// ||a - b|| / max(||b||, tiny) and max |a - b|, over all elements; NaN gives infinity.
double rel_l2(const std::vector<double>& a, const std::vector<double>& b);
double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b);

}  // namespace moba::verify
