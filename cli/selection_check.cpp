#include "selection_check.hpp"

#include <algorithm>
#include <cmath>
#include <map>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace moba::cli {

std::vector<char> rows_differ(const HostTensor& a, const HostTensor& b, int slots) {
  const std::int64_t rows = slots ? a.numel() / slots : 0;
  std::vector<char> out(std::size_t(rows), 0);
  for (std::int64_t r = 0; r < rows; ++r)
    for (int s = 0; s < slots; ++s)
      if (a.get(r * slots + s) != b.get(r * slots + s)) out[std::size_t(r)] = 1;
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

// Gate block means of one sequence and KV head, as docs/semantics.md defines them: exact sum,
// fp32 division, rounded to the dtype.
std::vector<double> block_means(const Problem& p, const HostTensor& k, int begin, int nfull,
                                int hk) {
  const int D = p.head_dim, B = p.params.block_size;
  HostTensor rounder(p.dtype, {1});
  std::vector<double> means(std::size_t(nfull) * D);
  for (int j = 0; j < nfull; ++j)
    for (int d = 0; d < D; ++d) {
      double sum = 0;
      for (int t = j * B; t < (j + 1) * B; ++t)
        sum += k.get((std::int64_t(begin + t) * p.hkv + hk) * D + d);
      rounder.set(0, static_cast<float>(sum) / static_cast<float>(B));
      means[std::size_t(j) * D + d] = rounder.get(0);
    }
  return means;
}

}  // namespace

SelectionReport compare_selection(const Problem& p, const HostTensor& q, const HostTensor& k,
                                  const HostTensor& got, const HostTensor& want) {
  SelectionReport r;
  const int K = p.selection_slots(), B = p.params.block_size, D = p.head_dim;
  if (K == 0) return r;
  const std::vector<std::int32_t> cu = p.cu_seqlens();
  const double u = unit_roundoff(p.dtype);
  std::map<std::pair<int, int>, std::vector<double>> means_cache;

  for (int b = 0; b + 1 < static_cast<int>(cu.size()); ++b) {
    const int begin = cu[std::size_t(b)], len = cu[std::size_t(b) + 1] - begin;
    for (int t = 0; t < len; ++t)
      for (int h = 0; h < p.hq; ++h) {
        const int own = t / B;
        if (own > 0) ++r.rows;
        const std::int64_t base = (std::int64_t(begin + t) * p.hq + h) * K;
        std::vector<int> a, w;
        for (int s = 0; s < K; ++s) {
          a.push_back(static_cast<int>(got.get(base + s)));
          w.push_back(static_cast<int>(want.get(base + s)));
        }
        if (a == w) continue;
        ++r.differ;

        // Well-formed: the right count of valid past blocks, ascending, then -1s.
        const int count = std::min(K, own);
        bool valid = true;
        for (int s = 0; s < K; ++s) {
          if (s < count) valid &= a[std::size_t(s)] >= 0 && a[std::size_t(s)] < own &&
                                  (s == 0 || a[std::size_t(s)] > a[std::size_t(s) - 1]);
          else valid &= a[std::size_t(s)] == -1;
        }
        bool near_tie = false;
        if (valid) {
          const int hk = h / (p.hq / p.hkv);
          auto& means = means_cache[{b, hk}];
          if (means.empty()) means = block_means(p, k, begin, len / B, hk);
          auto qd = [&](int d) { return q.get((std::int64_t(begin + t) * p.hq + h) * D + d); };
          double worst_gap = 0, allowance = 0;
          auto score = [&](int j, double& slack) {
            double s = 0, abs_sum = 0, abs_max = 0;
            for (int d = 0; d < D; ++d) {
              const double x = qd(d) * means[std::size_t(j) * D + d];
              s += x;
              abs_sum += std::fabs(x);
              abs_max = std::max(abs_max, std::fabs(x));
            }
            slack = 1e-5 * abs_sum + 2 * u * abs_max;
            return s;
          };
          std::vector<int> only_a, only_w;
          std::set_difference(a.begin(), a.begin() + count, w.begin(), w.begin() + count,
                              std::back_inserter(only_a));
          std::set_difference(w.begin(), w.begin() + count, a.begin(), a.begin() + count,
                              std::back_inserter(only_w));
          for (int x : only_a)
            for (int y : only_w) {
              double sx, sy;
              const double gap = std::fabs(score(x, sx) - score(y, sy));
              worst_gap = std::max(worst_gap, gap);
              allowance = std::max(allowance, sx + sy);
            }
          near_tie = worst_gap <= allowance;
        }
        if (near_tie) {
          ++r.near_ties;
        } else if (r.first_error.empty()) {
          r.first_error = fmt::format("sequence {} token {} head {}: chose [{}], reference [{}]{}",
                                      b, t, h, fmt::join(a, ","), fmt::join(w, ","),
                                      valid ? " (scores not within rounding)" : " (malformed)");
        }
      }
  }
  return r;
}

}  // namespace moba::cli
