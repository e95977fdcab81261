// CPU attention influence (include/moba/influence.hpp): the backward's dS = P (dP - D) of dense
// causal attention, recomputed tile by tile from the forward's lse (P = exp(scale q.k - lse))
// and D_t = <dout_t, out_t> as cpu_backward does, then reduced straight into per-head
// histograms by distance bin and sink flag. A unit is one query head x kRowTile rows; per key
// tile it forms S = Q K^T and dP = dO V^T (fp32, K and V tiles transposed so the inner loops
// run over keys and vectorise), and adds every visible entry to the unit thread's own fp64 sums.
// The per-thread sums are added in thread order at the end. Memory: O(threads x tile + sums).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/influence.hpp"
#include "cpu/tiles.hpp"
#include "cpu/work.hpp"

namespace moba::detail {

namespace cpu {
namespace {

constexpr int kInfRows = 64;  // query rows per unit
constexpr int kInfKeys = 64;  // keys per tile

struct InfluenceTile {
  int D;
  std::vector<float> q, dout, lse, delta;   // unit rows: scaled q, dout, lse, D_t
  std::vector<float> kt, vt;                // key tile transposed, [D][kInfKeys]
  std::vector<float> s, dp;                 // [kInfRows][kInfKeys]
  std::vector<float> row;                   // scratch of one row

  explicit InfluenceTile(int d)
      : D(d), q(kInfRows * d), dout(kInfRows * d), lse(kInfRows), delta(kInfRows),
        kt(d * kInfKeys), vt(d * kInfKeys), s(kInfRows * kInfKeys), dp(kInfRows * kInfKeys),
        row(d) {}

  void load_rows(const Problem& p, const Influence& f, int begin, int h, int r0, int rows) {
    for (int r = 0; r < rows; ++r) {
      const std::int64_t tok = begin + r0 + r;
      load_row(p.dtype, f.q.data, elem(f.q, tok, h), &q[r * D], D, p.scale);
      load_row(p.dtype, f.dout.data, elem(f.dout, tok, h), &dout[r * D], D, 1.f);
      load_row(p.dtype, f.out.data, elem(f.out, tok, h), row.data(), D, 1.f);
      float dd = 0.f;
      for (int d = 0; d < D; ++d) dd += dout[r * D + d] * row[d];
      delta[r] = dd;
      lse[r] = f.lse[std::int64_t(h) * p.total + tok];
    }
  }

  void load_keys(const Problem& p, const Influence& f, int begin, int hk, int j0, int keys) {
    std::fill(kt.begin(), kt.end(), 0.f);
    std::fill(vt.begin(), vt.end(), 0.f);
    for (int c = 0; c < keys; ++c) {
      load_row(p.dtype, f.k.data, elem(f.k, begin + j0 + c, hk), row.data(), D, 1.f);
      for (int d = 0; d < D; ++d) kt[d * kInfKeys + c] = row[d];
      load_row(p.dtype, f.v.data, elem(f.v, begin + j0 + c, hk), row.data(), D, 1.f);
      for (int d = 0; d < D; ++d) vt[d * kInfKeys + c] = row[d];
    }
  }

  // s = Q K^T and dp = dO V^T for the unit's rows against the loaded key tile.
  void products(int rows) {
    for (int r = 0; r < rows; ++r) {
      float* sr = &s[r * kInfKeys];
      float* pr = &dp[r * kInfKeys];
      std::fill(sr, sr + kInfKeys, 0.f);
      std::fill(pr, pr + kInfKeys, 0.f);
      for (int d = 0; d < D; ++d) {
        const float qd = q[r * D + d], od = dout[r * D + d];
        const float* kd = &kt[d * kInfKeys];
        const float* vd = &vt[d * kInfKeys];
        for (int c = 0; c < kInfKeys; ++c) {
          sr[c] += qd * kd[c];
          pr[c] += od * vd[c];
        }
      }
    }
  }
};

void run_unit(const Problem& p, const Influence& f, const Unit& u, InfluenceTile& tile,
              std::vector<double>& sums) {
  const int begin = p.cu_seqlens[u.seq], hk = u.h / p.group(), rows = u.r1 - u.r0;
  tile.load_rows(p, f, begin, u.h, u.r0, rows);
  for (int j0 = 0; j0 < u.r1; j0 += kInfKeys) {
    const int keys = std::min(kInfKeys, u.r1 - j0);
    tile.load_keys(p, f, begin, hk, j0, keys);
    tile.products(rows);
    for (int r = 0; r < rows; ++r) {
      const int t = u.r0 + r;
      const int last = std::min(keys, t - j0 + 1);  // keys j <= t
      for (int c = 0; c < last; ++c) {
        const int j = j0 + c;
        const float prob = std::exp(tile.s[r * kInfKeys + c] - tile.lse[r]);
        const double ds = double(prob) * (tile.dp[r * kInfKeys + c] - tile.delta[r]);
        const int bin = f.bin_of_distance[t - j], flag = j < f.sink ? 1 : 0;
        sums[f.at(p.hq, 0, u.h, flag, bin)] -= ds;
        sums[f.at(p.hq, 1, u.h, flag, bin)] += std::fabs(ds);
      }
    }
  }
}

}  // namespace
}  // namespace cpu

void cpu_influence(const Problem& p, const Influence& f, const RunOptions& o) {
  if (p.total == 0) return;
  std::vector<cpu::Unit> units;
  for (int b = 0; b < p.batch; ++b) {
    const int len = p.cu_seqlens[b + 1] - p.cu_seqlens[b];
    for (int h = 0; h < p.hq; ++h)
      for (int r0 = 0; r0 < len; r0 += cpu::kInfRows)
        units.push_back({b, h, r0, std::min(r0 + cpu::kInfRows, len)});
  }
  // Late rows see the most keys: heaviest first keeps the dynamic schedule balanced.
  std::stable_sort(units.begin(), units.end(),
                   [](const cpu::Unit& a, const cpu::Unit& b) { return a.r0 > b.r0; });
  const std::size_t size = std::size_t(kInfluenceMeasures) * p.hq * 2 * f.bins;
  const int threads = cpu::thread_count(p, o);
  std::vector<std::vector<double>> partial(threads);
#pragma omp parallel num_threads(threads)
  {
    std::vector<double>& sums = partial[omp_get_thread_num()];
    sums.assign(size, 0.0);
    cpu::InfluenceTile tile(p.head_dim);
#pragma omp for schedule(dynamic, 1)
    for (std::size_t ui = 0; ui < units.size(); ++ui) cpu::run_unit(p, f, units[ui], tile, sums);
  }
  for (const auto& part : partial)
    for (std::size_t i = 0; i < part.size(); ++i) f.sums[i] += part[i];
}

}  // namespace moba::detail
