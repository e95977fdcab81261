// CPU forward: flash-style online softmax over key tiles, fp32 accumulation, one rounding of
// `out` at the end. Scores are kept in log2 units (q pre-multiplied by scale * log2(e)) so the
// softmax needs only exp2, which vexp2 computes with a shift and a short polynomial.
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "core/backends.hpp"
#include "cpu/microkernels.hpp"
#include "cpu/tiles.hpp"
#include "cpu/work.hpp"

namespace moba::detail {

namespace cpu {
namespace {

// One thread's state for the unit it is running: fp32 query rows, output accumulators and the
// running max / sum of every row, plus the scratch of one (row chunk x key tile) step.
template <int D>
struct ForwardTile {
  aligned_vector<float> q, o, m, l;
  const float* kpanels = nullptr;  // this sequence's K, [panel][D][16]
  const float* vslices = nullptr;  // this sequence's V, sliced [D/16][total][16] (first key)
  std::ptrdiff_t vss = 0;          // its slice stride
  const RowPlan* plan = nullptr;

  alignas(64) float s[kRowTile * kKeyTile];
  float alpha[kRowTile];
  const float* qp[kRowTile];
  float* op[kRowTile];
  const float* vp[kKeyTile];

  void reset(int rows) {
    q.resize(std::size_t(rows) * D);
    o.assign(std::size_t(rows) * D, 0.f);
    m.assign(rows, -INFINITY);
    l.assign(rows, 0.f);
  }

  void run(const Job& job) {
    for (int c0 = 0; c0 < job.count; c0 += kRowTile) {
      const int* idx = job.rows + c0;
      const int mc = std::min(kRowTile, job.count - c0);
      for (int r = 0; r < mc; ++r) {
        qp[r] = q.data() + std::size_t(idx[r]) * D;
        op[r] = o.data() + std::size_t(idx[r]) * D;
      }
      for_each_key_tile(*plan, job, idx, mc, [&](int kt, int kmin, int kend) { tile(job, idx, mc, kt, kmin, kend); });
    }
  }

  void tile(const Job& job, const int* idx, int mc, int kt, int kmin, int kend) {
    const int n = kend - kt, ncols = (n + kPanel - 1) / kPanel * kPanel;
    for (int c = 0; c < ncols; c += kPanel)
      panel_dot_rows<D>(mc, qp, kpanels + std::size_t(kt + c) * D, s + c, kKeyTile);
    for (int r = 0; r < mc; ++r) {
      float* sr = s + r * kKeyTile;
      mask_row(*plan, job, idx[r], kt, kmin, kend, ncols, sr);
      vf mx = vset1(-INFINITY);
      for (int c = 0; c < ncols; c += kLanes) mx = vmax(mx, vload(sr + c));
      const float tile_max = hmax(mx);
      float& mr = m[idx[r]];
      if (tile_max == -INFINITY) {  // nothing visible in this tile for this row
        for (int c = 0; c < ncols; ++c) sr[c] = 0.f;
        alpha[r] = 1.f;
        continue;
      }
      const float m_new = std::max(mr, tile_max);
      alpha[r] = std::exp2(mr - m_new);  // 0 on the first visible tile (mr = -inf)
      const vf mv = vset1(m_new);
      vf sum = vzero();
      for (int c = 0; c < ncols; c += kLanes) {
        const vf pv = vexp2(vload(sr + c) - mv);
        vstore(sr + c, pv);
        sum = sum + pv;
      }
      l[idx[r]] = l[idx[r]] * alpha[r] + hsum(sum);
      mr = m_new;
    }
    for (int j = 0; j < n; ++j) vp[j] = vslices + std::size_t(kt + j) * kPanel;
    rows_axpy_all<D>(mc, n, s, kKeyTile, 1, vp, vss, op, alpha);  // o = alpha * o + P.V
  }
};

// K/V of every KV head are packed first (one barrier), then all units of all heads share one
// dynamic loop: two barriers per call, whatever the number of heads.
template <int D>
void forward(const Problem& p, const Forward& f, int threads) {
  const PanelLayout lay(p);
  const std::size_t head_panels = std::size_t(lay.panels()) * D * kPanel, head_rows = std::size_t(p.total) * D;
  PackBuffer kpanels(head_panels * p.hkv), vslices(head_rows * p.hkv);
  std::vector<Unit> units;
  for (int g = 0; g < p.hkv; ++g) {
    const std::vector<Unit> ug = make_units(p, g);
    units.insert(units.end(), ug.begin(), ug.end());
  }
  std::stable_sort(units.begin(), units.end(), [](const Unit& a, const Unit& b) { return a.r0 > b.r0; });
  const float qmul = p.scale * kLog2e;
#pragma omp parallel num_threads(threads)
  {
    for (int g = 0; g < p.hkv; ++g) {
      pack_panels(p, lay, f.k, g, kpanels.data() + g * head_panels);
      pack_slices(p, f.v, g, vslices.data() + g * head_rows);
    }
    auto eng = std::make_unique<ForwardTile<D>>();
    RowPlan plan;
#pragma omp barrier
#pragma omp for schedule(dynamic, 1)
    for (std::size_t ui = 0; ui < units.size(); ++ui) {
      const Unit& u = units[ui];
      const int begin = p.cu_seqlens[u.seq], g = u.h / p.group();
      plan.build(p, u, f.selection);
      eng->plan = &plan;
      eng->kpanels = kpanels.data() + g * head_panels + lay.seq_panel[u.seq] * D * kPanel;
      eng->vslices = vslices.data() + g * head_rows + std::size_t(begin) * kPanel;
      eng->vss = slice_stride(p);
      eng->reset(plan.rows);
      for (int r = 0; r < plan.rows; ++r)
        load_row(p.dtype, f.q.data, elem(f.q, begin + u.r0 + r, u.h), eng->q.data() + std::size_t(r) * D, D, qmul);
      for_each_job(p, plan, [&](const Job& job) { eng->run(job); });
      for (int r = 0; r < plan.rows; ++r) {
        const std::int64_t tok = begin + u.r0 + r;
        store_row(p.dtype, f.out.data, elem(f.out, tok, u.h), eng->o.data() + std::size_t(r) * D, D, 1.f / eng->l[r]);
        f.lse[std::int64_t(u.h) * p.total + tok] = (eng->m[r] + std::log2(eng->l[r])) * kLn2;
      }
    }
  }
}

}  // namespace
}  // namespace cpu

void cpu_forward(const Problem& p, const Forward& f, const RunOptions& o) {
  if (p.total == 0) return;
  if (p.mode == Mode::moba) cpu_gate(p, f.q, f.k, f.selection, o);
  const int threads = cpu::thread_count(p, o);
  if (p.head_dim == 64) cpu::forward<64>(p, f, threads);
  else cpu::forward<128>(p, f, threads);
}

}  // namespace moba::detail
