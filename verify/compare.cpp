#include "compare.hpp"

#include <algorithm>
#include <cmath>

#include <cstdio>

namespace moba::verify {

namespace {

// Errors of a near-zero truth are relative to this. A gradient that is exactly zero (a token
// that sees only itself: P = 1, dS = P (dP - D) = 0) is the cancellation of terms of size
// |scale dP q| ~ 0.1..1 for unit-normal inputs, which fp32 leaves ~1e-6 of.
constexpr double kTinyMagnitude = 0.1;

// Relative size of per-element deviations d(i) against the truth.
template <class Deviation>
ErrorStat relative(std::size_t n, const std::vector<double>& truth, const std::vector<char>& mask,
                   Deviation&& deviation) {
  double num = 0, den = 0, max_dev = 0, max_ref = 0, count = 0;
  for (std::size_t i = 0; i < n; ++i) {
    if (!mask.empty() && !mask[i]) continue;
    const double d = deviation(i);
    if (!std::isfinite(d)) return {INFINITY, INFINITY};
    num += d * d;
    den += truth[i] * truth[i];
    count += 1;
    max_dev = std::max(max_dev, d);
    max_ref = std::max(max_ref, std::fabs(truth[i]));
  }
  if (num == 0) return {0, 0};
  return {std::sqrt(num) / std::max(std::sqrt(den), kTinyMagnitude * std::sqrt(count)),
          max_dev / std::max(max_ref, kTinyMagnitude)};
}

}  // namespace

ErrorStat error_of(const std::vector<double>& got, const std::vector<double>& truth,
                   const std::vector<char>& mask) {
  return relative(truth.size(), truth, mask, [&](std::size_t i) { return std::fabs(got[i] - truth[i]); });
}

ErrorStat size_of(const std::vector<double>& amount, const std::vector<double>& truth,
                  const std::vector<char>& mask) {
  if (amount.empty()) return {};
  return relative(truth.size(), truth, mask, [&](std::size_t i) { return std::fabs(amount[i]); });
}

Tolerance floor_of(DType dtype, Quantity q) {
  if (q == Quantity::lse) return {1e-5, 1e-4};
  switch (dtype) {
    case DType::f16: return {6e-5, 2.5e-4};  // unit roundoff 2^-11 = 4.9e-4
    case DType::bf16: return {5e-4, 2e-3};   // unit roundoff 2^-8 = 3.9e-3
    default: return {5e-5, 2e-4};
  }
}

Tolerance tolerance(DType dtype, Quantity q, const ErrorStat& reference_error,
                    const ErrorStat& allowance) {
  const Tolerance f = floor_of(dtype, q);
  return {2 * reference_error.rel_l2 + allowance.rel_l2 + f.rel_l2,
          2 * reference_error.rel_max + allowance.rel_max + f.rel_max};
}

std::string Verdict::explain() const {
  std::string s = name + ":";
  auto over = [&](const char* what, double err, double tol_, double ref, double allow) {
    char buf[160];
    std::snprintf(buf, sizeof buf, " %s %.2e > tol %.2e (reference in dtype %.2e, allowance %.2e);",
                  what, err, tol_, ref, allow);
    s += buf;
  };
  if (!(error.rel_l2 <= tol.rel_l2))
    over("rel_l2", error.rel_l2, tol.rel_l2, reference_error.rel_l2, allowance.rel_l2);
  if (!(error.rel_max <= tol.rel_max))
    over("rel_max", error.rel_max, tol.rel_max, reference_error.rel_max, allowance.rel_max);
  if (ok()) s += " ok";
  else s.pop_back();
  return s;
}

Verdict judge(const std::string& name, DType dtype, Quantity q, const std::vector<double>& got,
              const std::vector<double>& reference, const std::vector<double>& truth,
              const std::vector<char>& mask, const std::vector<double>& allowance) {
  Verdict v;
  v.name = name;
  v.error = error_of(got, truth, mask);
  v.reference_error = error_of(reference, truth, mask);
  v.allowance = size_of(allowance, truth, mask);
  v.tol = tolerance(dtype, q, v.reference_error, v.allowance);
  return v;
}

}  // namespace moba::verify

namespace moba::verify {

double rel_l2(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double d = a[i] - b[i];
    num += std::isnan(d) ? INFINITY : d * d;
    den += b[i] * b[i];
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-30);
}

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double d = std::fabs(a[i] - b[i]);
    if (std::isnan(d)) return INFINITY;
    m = std::max(m, d);
  }
  return m;
}

}  // namespace moba::verify
