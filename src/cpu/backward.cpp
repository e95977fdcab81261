// CPU backward (FlashAttention-2 algebra): per (row chunk x key tile) recompute P from the saved
// lse, dP = dO.V^T, dS = P (dP - D) with D_t = <dout_t, out_t>, then dV += P^T dO,
// dK += dS^T Q, dQ += dS K: five products of the forward's size. The selection is the forward's
// (the gate is not rerun). Units are the forward's (query head x rows), so dQ rows belong to
// one unit; dK/dV of a key are hit by many units, so each thread adds into its own fp32
// accumulator for the current KV head and the copies are summed once at the end (no atomics,
// no races; with RunOptions::deterministic the unit->thread assignment is static, so repeats
// are bit-identical). Memory: threads x total x D x 8 bytes for the accumulators.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "core/backends.hpp"
#include "cpu/microkernels.hpp"
#include "cpu/tiles.hpp"
#include "cpu/work.hpp"

namespace moba::detail {

namespace cpu {
namespace {

template <int D>
struct BackwardTile {
  // Unit rows: q * scale * log2(e), dout, dq accumulator, lse * log2(e), D_t.
  aligned_vector<float> q, dout, dq, lse2, delta;
  // q and dout again, sliced [D/16][rows][16] (see rows_axpy): the dV / dK products read 16-column
  // slices of up to 96 query rows per pass, 96 lines that row-major (512 B apart) would squeeze
  // into 8 of the 64 L1 sets.
  aligned_vector<float> qs, dos;
  std::ptrdiff_t rss = 0;  // their slice stride, rows * 16
  const float* kpanels = nullptr;  // this sequence's K and V as [panel][D][16], K as rows
  const float* vpanels = nullptr;
  const float* kslices = nullptr;  // K sliced, [D/16][total][16], this sequence's first key
  std::ptrdiff_t kss = 0;
  float* dk_acc = nullptr;  // this thread's accumulators, this sequence's first key
  float* dv_acc = nullptr;
  const RowPlan* plan = nullptr;

  alignas(64) float p[kRowTile * kKeyTile];
  alignas(64) float ds[kRowTile * kKeyTile];
  const float* qp[kRowTile];
  const float* dop[kRowTile];
  const float* qsp[kRowTile];
  const float* dosp[kRowTile];
  float* dqp[kRowTile];
  const float* kp[kKeyTile];
  float* dkp[kKeyTile];
  float* dvp[kKeyTile];

  void reset(int rows) {
    q.resize(std::size_t(rows) * D);
    dout.resize(std::size_t(rows) * D);
    qs.resize(std::size_t(rows) * D);
    dos.resize(std::size_t(rows) * D);
    rss = std::ptrdiff_t(rows) * kPanel;
    dq.assign(std::size_t(rows) * D, 0.f);
    lse2.resize(rows);
    delta.resize(rows);
  }

  void run(const Job& job) {
    for (int c0 = 0; c0 < job.count; c0 += kRowTile) {
      const int* idx = job.rows + c0;
      const int mc = std::min(kRowTile, job.count - c0);
      for (int r = 0; r < mc; ++r) {
        qp[r] = q.data() + std::size_t(idx[r]) * D;
        dop[r] = dout.data() + std::size_t(idx[r]) * D;
        dqp[r] = dq.data() + std::size_t(idx[r]) * D;
        qsp[r] = qs.data() + std::size_t(idx[r]) * kPanel;
        dosp[r] = dos.data() + std::size_t(idx[r]) * kPanel;
      }
      for_each_key_tile(*plan, job, idx, mc, [&](int kt, int kmin, int kend) { tile(job, idx, mc, kt, kmin, kend); });
    }
  }

  void tile(const Job& job, const int* idx, int mc, int kt, int kmin, int kend) {
    const int n = kend - kt, ncols = (n + kPanel - 1) / kPanel * kPanel;
    for (int c = 0; c < ncols; c += kPanel) {
      panel_dot_rows<D>(mc, qp, kpanels + std::size_t(kt + c) * D, p + c, kKeyTile);
      panel_dot_rows<D>(mc, dop, vpanels + std::size_t(kt + c) * D, ds + c, kKeyTile);
    }
    for (int r = 0; r < mc; ++r) {
      float* pr = p + r * kKeyTile;
      float* dsr = ds + r * kKeyTile;
      mask_row(*plan, job, idx[r], kt, kmin, kend, ncols, pr);
      const vf l = vset1(lse2[idx[r]]), dt = vset1(delta[idx[r]]);
      for (int c = 0; c < ncols; c += kLanes) {
        const vf pv = vexp2(vload(pr + c) - l);  // masked: exp2(-inf) = 0
        vstore(pr + c, pv);
        vstore(dsr + c, pv * (vload(dsr + c) - dt));
      }
    }
    for (int j = 0; j < n; ++j) {
      kp[j] = kslices + std::size_t(kt + j) * kPanel;
      dkp[j] = dk_acc + std::size_t(kt + j) * D;
      dvp[j] = dv_acc + std::size_t(kt + j) * D;
    }
    rows_axpy_all<D>(n, mc, p, 1, kKeyTile, dosp, rss, dvp, nullptr);  // dV += P^T dO
    rows_axpy_all<D>(n, mc, ds, 1, kKeyTile, qsp, rss, dkp, nullptr);  // dK += dS^T Q (scaled)
    rows_axpy_all<D>(mc, n, ds, kKeyTile, 1, kp, kss, dqp, nullptr);     // dQ += dS K
  }
};

template <int D>
void backward(const Problem& p, const Backward& w, const RunOptions& o) {
  const int threads = thread_count(p, o);
  const PanelLayout lay(p);
  PackBuffer kpanels(std::size_t(lay.panels()) * D * kPanel), vpanels(kpanels.size()), kslices(std::size_t(p.total) * D);
  std::vector<aligned_vector<float>> dk_acc(threads), dv_acc(threads);
  const float qmul = p.scale * kLog2e;
  const std::size_t acc_size = std::size_t(p.total) * D;
  std::vector<std::vector<Unit>> units(p.hkv);
  for (int g = 0; g < p.hkv; ++g) units[g] = make_units(p, g);
  // One parallel region; per KV head: pack (barrier), units (barrier), reduce (barrier).
#pragma omp parallel num_threads(threads)
  {
    const int tid = omp_get_thread_num();
    auto eng = std::make_unique<BackwardTile<D>>();
    RowPlan plan;
    std::vector<float> out_row(D), sum(D);
    for (int g = 0; g < p.hkv; ++g) {
      pack_panels(p, lay, w.k, g, kpanels.data());
      pack_panels(p, lay, w.v, g, vpanels.data());
      pack_slices(p, w.k, g, kslices.data());
      dk_acc[tid].assign(acc_size, 0.f);
      dv_acc[tid].assign(acc_size, 0.f);
#pragma omp barrier
      auto run_unit = [&](const Unit& u) {
        const int begin = p.cu_seqlens[u.seq];
        plan.build(p, u, w.selection);
        eng->plan = &plan;
        eng->kpanels = kpanels.data() + lay.seq_panel[u.seq] * D * kPanel;
        eng->vpanels = vpanels.data() + lay.seq_panel[u.seq] * D * kPanel;
        eng->kslices = kslices.data() + std::size_t(begin) * kPanel;
        eng->kss = slice_stride(p);
        eng->dk_acc = dk_acc[tid].data() + std::size_t(begin) * D;
        eng->dv_acc = dv_acc[tid].data() + std::size_t(begin) * D;
        eng->reset(plan.rows);
        for (int r = 0; r < plan.rows; ++r) {
          const std::int64_t tok = begin + u.r0 + r;
          float* dor = eng->dout.data() + std::size_t(r) * D;
          load_row(p.dtype, w.q.data, elem(w.q, tok, u.h), eng->q.data() + std::size_t(r) * D, D, qmul);
          load_row(p.dtype, w.dout.data, elem(w.dout, tok, u.h), dor, D, 1.f);
          load_row(p.dtype, w.out.data, elem(w.out, tok, u.h), out_row.data(), D, 1.f);
          float dot = 0.f;
          for (int d = 0; d < D; ++d) dot += dor[d] * out_row[d];
          eng->delta[r] = dot;
          eng->lse2[r] = w.lse[std::int64_t(u.h) * p.total + tok] * kLog2e;
          for (int d0 = 0; d0 < D; d0 += kPanel) {
            const std::ptrdiff_t at = d0 / kPanel * eng->rss + std::ptrdiff_t(r) * kPanel;
            std::copy(eng->q.data() + std::size_t(r) * D + d0, eng->q.data() + std::size_t(r) * D + d0 + kPanel, eng->qs.data() + at);
            std::copy(dor + d0, dor + d0 + kPanel, eng->dos.data() + at);
          }
        }
        for_each_job(p, plan, [&](const Job& job) { eng->run(job); });
        for (int r = 0; r < plan.rows; ++r)
          store_row(p.dtype, w.dq.data, elem(w.dq, begin + u.r0 + r, u.h), eng->dq.data() + std::size_t(r) * D, D, p.scale);
      };
      const std::vector<Unit>& ug = units[g];
      if (o.deterministic) {
#pragma omp for schedule(static, 1)
        for (std::size_t ui = 0; ui < ug.size(); ++ui) run_unit(ug[ui]);
      } else {
#pragma omp for schedule(dynamic, 1)
        for (std::size_t ui = 0; ui < ug.size(); ++ui) run_unit(ug[ui]);
      }
      // (implicit barrier) Sum the per-thread copies in thread order and round once; the
      // loop's closing barrier also keeps the next head's packing from overwriting K/V early.
#pragma omp for schedule(static)
      for (int t = 0; t < p.total; ++t) {
        for (int which = 0; which < 2; ++which) {
          auto& acc = which == 0 ? dk_acc : dv_acc;
          std::fill(sum.begin(), sum.end(), 0.f);
          for (int th = 0; th < threads; ++th) {
            if (acc[th].empty()) continue;  // a thread the runtime did not start
            const float* a = acc[th].data() + std::size_t(t) * D;
            for (int d = 0; d < D; ++d) sum[d] += a[d];
          }
          const Operand& dst = which == 0 ? w.dk : w.dv;
          store_row(p.dtype, dst.data, elem(dst, t, g), sum.data(), D, which == 0 ? kLn2 : 1.f);
        }
      }
    }
  }
}

}  // namespace
}  // namespace cpu

void cpu_backward(const Problem& p, const Backward& b, const RunOptions& o) {
  if (p.total == 0) return;
  if (p.head_dim == 64) cpu::backward<64>(p, b, o);
  else cpu::backward<128>(p, b, o);
}

}  // namespace moba::detail
