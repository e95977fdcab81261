#include "selection_check.hpp"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <sstream>

#include "truth.hpp"

namespace moba::verify {

std::vector<char> rows_differ(const std::vector<std::int32_t>& a,
                              const std::vector<std::int32_t>& b, int slots) {
  const std::size_t rows = slots ? a.size() / std::size_t(slots) : 0;
  std::vector<char> out(rows, 0);
  for (std::size_t r = 0; r < rows; ++r)
    out[r] = !std::equal(a.begin() + r * slots, a.begin() + (r + 1) * slots, b.begin() + r * slots);
  return out;
}

namespace {

double unit_roundoff(DType t) {
  switch (t) {
    case DType::bf16: return std::ldexp(1.0, -8);
    case DType::f16: return std::ldexp(1.0, -11);
    default: return 0;  // f32 means are not rounded further
  }
}

std::string join(const std::vector<int>& v) {
  std::string s;
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s;
}

bool well_formed(const std::vector<int>& a, int count) {
  for (std::size_t s = 0; s < a.size(); ++s) {
    if (int(s) >= count) {
      if (a[s] != -1) return false;
    } else if (a[s] < 0 || (s > 0 && a[s] <= a[s - 1])) {
      return false;
    }
  }
  return true;
}

}  // namespace

SelectionReport compare_selection(const Problem& p, const Inputs& in,
                                  const std::vector<std::int32_t>& got,
                                  const std::vector<std::int32_t>& want, bool allow_near_ties) {
  SelectionReport r;
  const int K = p.selection_slots(), B = p.params.block_size;
  if (K == 0) return r;
  const double u = unit_roundoff(p.dtype);
  for (int b = 0; b + 1 < static_cast<int>(in.cu.size()); ++b) {
    const int begin = in.cu[std::size_t(b)], len = in.cu[std::size_t(b) + 1] - begin;
    for (int t = 0; t < len; ++t)
      for (int h = 0; h < p.hq; ++h) {
        const int own = t / B;
        if (own > 0) ++r.rows;
        const std::size_t base = (std::size_t(begin + t) * p.hq + h) * K;
        const std::vector<int> a(got.begin() + base, got.begin() + base + K);
        const std::vector<int> w(want.begin() + base, want.begin() + base + K);
        if (a == w) continue;
        ++r.differ;
        const int count = std::min(K, own);
        const bool valid = well_formed(a, count) && (count == 0 || a[std::size_t(count) - 1] < own);
        bool near_tie = false;
        if (valid && allow_near_ties) {
          const BlockScores sc = block_scores(p, in, b, t, h);
          auto slack = [&](int j) { return 1e-5 * sc.abs_sum[j] + 2 * u * sc.abs_max[j]; };
          std::vector<int> only_a, only_w;
          std::set_difference(a.begin(), a.begin() + count, w.begin(), w.begin() + count,
                              std::back_inserter(only_a));
          std::set_difference(w.begin(), w.begin() + count, a.begin(), a.begin() + count,
                              std::back_inserter(only_w));
          near_tie = true;
          for (int x : only_a)
            for (int y : only_w)
              near_tie &= std::fabs(sc.score[x] - sc.score[y]) <= slack(x) + slack(y);
        }
        if (near_tie) {
          ++r.near_ties;
        } else if (r.first_error.empty()) {
          std::ostringstream os;
          os << "sequence " << b << " token " << t << " head " << h << ": chose [" << join(a)
             << "], reference [" << join(w) << "]"
             << (!valid ? " (malformed)" : allow_near_ties ? " (scores not within rounding)" : "");
          r.first_error = os.str();
        }
      }
  }
  return r;
}

}  // namespace moba::verify
