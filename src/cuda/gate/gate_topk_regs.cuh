// Fused gate scores + top-k for small top-k (topk - 1 <= kRegGateMaxK), the common case (FlashMoBA's
// setting (d) keeps 7 past blocks of up to 4096).
//
// One CTA = TP consecutive 64-row plan tiles of one query head (TP = 2: 128 rows, 4 warps of 32
// rows). Per 64-block chunk of the means (a 3-stage cp.async ring, one barrier per chunk), each warp
// computes its 32 x 64 scores on tensor cores (m16n8k16, fp32 accumulate; q fragments stay in
// registers, every means fragment feeds two mma) and never writes them anywhere: each thread
// owns the 16 columns per chunk that the mma layout gives it for each of its 4 rows, and keeps
// for every row its own best-K list of those columns in registers. Two filters keep the list
// updates rare and exact:
//   - the thread's own K-th best (a score not better than it in (score desc, block asc) order,
//     i.e. <= it, since columns arrive in ascending block order, cannot enter its list);
//   - the best of the four K-th bests of the row's quad, refreshed every 16 columns: a score
//     strictly below it has K better scores in the row already. Equal scores are kept.
// At the end the quad merges its four lists (K rounds of a 2-step shuffle arg-max in the
// (score desc, block asc) order) and the row's lane writes the K winners in ascending block
// order, -1 padded. Every block of the row's true top-K is in its thread's list (fewer than K
// blocks of the thread's columns precede it), so the merge is exact: ties go to the earlier
// block, and the own block and later ones are never candidates (j < own).
// The lists, their filters and the quad merge are gate_topk_lists.cuh's (shared with the sm_90a
// warpgroup-MMA kernel, gate_topk_sm90.cuh).
// Rows of several sequences in one CTA (varlen): the CTA runs one pass per sequence over its
// tiles of that sequence; warps of other sequences only help load and wait at the barriers.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common/check.hpp"
#include "cuda/common/mma.cuh"
#include "cuda/gate/gate_common.cuh"
#include "cuda/gate/gate_params.hpp"
#include "cuda/gate/gate_topk_lists.cuh"

namespace moba::cuda {

constexpr int kRegGateMaxK = 8;  // largest topk - 1 of the register path
constexpr int kRegGateTiles = 2;  // 64-row plan tiles per CTA (128 rows, 4 warps)

template <class T, int D, int TP>
struct RegGateTraits {
  static constexpr int kThreads = 64 * TP;  // 2 warps (of 32 rows) per 64-row plan tile
  static constexpr int kStride = D + 8;     // 16-byte row shift: ldmatrix is conflict-free
  static constexpr int kChunk = 64;         // key blocks per stage
  static constexpr int kStages = 3;
  static constexpr int kSubCols = 16;       // scores held at once: 2 m-tiles x kSubCols / 8 n-tiles
  static constexpr int kQElems = 64 * TP * kStride;
  static constexpr int kStageElems = kChunk * kStride;
  static constexpr int kSmemBytes = (kQElems + kStages * kStageElems) * int(sizeof(T));
};


template <class T, int D, int KR, int TP>
__global__ void __launch_bounds__(64 * TP, TP == 2 ? 2 : 1) gate_topk_regs_kernel(const GateParams p) {
  using Tr = RegGateTraits<T, D, TP>;
  constexpr int S = Tr::kStride, KD = D / 16, CPR = D / 8, NT = Tr::kThreads, NS = Tr::kSubCols / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sM = sQ + Tr::kQElems;

  const int tiles = p.tile_off[p.batch];
  const int group_idx = (tiles + TP - 1) / TP - 1 - int(blockIdx.x);  // longest rows first
  if (group_idx < 0) return;  // the grid may be a bound (device planning)
  const int tile_lo = group_idx * TP, tile_hi = min(tiles, tile_lo + TP);
  const int h = blockIdx.y, hk = h / p.group, K = p.past_k, B = p.block_size;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, c4 = lane & 3;

  // This warp's 32 rows: rows wr0 .. wr0 + 31 of plan tile wt.
  const int wt = tile_lo + (warp >> 1), wr0 = (warp & 1) * 32;
  int w_seq = -1, w_t0 = 0, w_rows = 0, w_tok0 = 0;
  if (wt < tile_hi) {
    w_seq = gate_detail::last_le(p.tile_off, 0, p.batch, wt);
    w_t0 = (wt - p.tile_off[w_seq]) * 64;
    w_rows = min(64, p.cu[w_seq + 1] - p.cu[w_seq] - w_t0);
    w_tok0 = p.cu[w_seq] + w_t0;
  }
  {
    const T* qg = static_cast<const T*>(p.q);
#pragma unroll
    for (int it = 0; it < CPR; ++it) {
      const int idx = lane + it * 32;
      const int r = idx / CPR, cc = idx % CPR;
      const bool ok = wr0 + r < w_rows;
      const std::int64_t tok = ok ? w_tok0 + wr0 + r : 0;
      cp_async_16(sQ + (warp * 32 + r) * S + cc * 8, qg + tok * p.q_ts + std::int64_t(h) * p.q_hs + cc * 8,
                  ok);
    }
    cp_async_commit();
  }
  // Thread rows i = 0..3: row wr0 + (i / 2) * 16 + (i % 2) * 8 + g of the warp's tile (the mma
  // accumulator rows of m-tile i / 2); own = its number of past blocks (0 for a padding row).
  int own[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int lr = wr0 + (i >> 1) * 16 + (i & 1) * 8 + g;
    own[i] = lr < w_rows ? (w_t0 + lr) / B : 0;
  }

  const T* means = static_cast<const T*>(p.means);
  const std::int64_t mstride = std::int64_t(p.hkv) * D;
  for (int t = tile_lo; t < tile_hi;) {
    // One pass: the CTA's tiles [t, t_end) of one sequence.
    const int seq = gate_detail::last_le(p.tile_off, 0, p.batch, t);
    const int t_end = min(tile_hi, p.tile_off[seq + 1]);
    const int len = p.cu[seq + 1] - p.cu[seq];
    const int nb = (min(len, (t_end - p.tile_off[seq]) * 64) - 1) / B;  // the last row's past blocks
    const bool active = w_seq == seq && wr0 < w_rows;
    t = t_end;
    __syncthreads();  // an earlier pass's warps are done with the stages

    if (nb <= K) {  // every row keeps all of its past blocks
      if (active) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int lr = wr0 + (i >> 1) * 16 + (i & 1) * 8 + g;
          if (lr >= w_rows) continue;
          gate_detail::write_all_past(p.sel + (std::int64_t(w_tok0 + lr) * p.hq + h) * K, own[i], K, c4);
        }
      }
      continue;
    }

    const T* mg = means + (std::int64_t(p.blk_off[seq]) * p.hkv + hk) * D;
    auto load_means = [&](int c) {
      T* dst = sM + (c % Tr::kStages) * Tr::kStageElems;
#pragma unroll
      for (int it = 0; it < Tr::kChunk * CPR / NT; ++it) {
        const int idx = tid + it * NT;
        const int r = idx / CPR, cc = idx % CPR;
        const int j = c * Tr::kChunk + r;
        const bool ok = j < nb;
        cp_async_16(dst + r * S + cc * 8, mg + std::int64_t(ok ? j : 0) * mstride + cc * 8, ok);
      }
    };
    const int nch = (nb + Tr::kChunk - 1) / Tr::kChunk;
    load_means(0);
    cp_async_commit();
    if (nch > 1) load_means(1);
    cp_async_commit();

    float ls[4][KR];
    int li[4][KR];
    float thr[4], bound[4];
    gate_detail::lists_init<KR, 4>(ls, li, thr, bound, K);
    std::uint32_t qf[2][KD][4];

    for (int c = 0; c < nch; ++c) {
      cp_async_wait<1>();  // chunk c (and the q rows) landed for this thread ...
      __syncthreads();     // ... and for all; every warp is done with chunk c - 1's stage
      if (c + 2 < nch) load_means(c + 2);
      cp_async_commit();  // possibly empty: keeps the group count uniform
      if (!active) continue;
      if (c == 0) {
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
          for (int kk = 0; kk < KD; ++kk)
            ldsm_x4(qf[mt][kk],
                    smem_addr(sQ + (warp * 32 + mt * 16 + (lane & 15)) * S + kk * 16 + (lane >> 4) * 8));
      }
      const T* cM = sM + (c % Tr::kStages) * Tr::kStageElems;
#pragma unroll 1
      for (int sub = 0; sub < Tr::kChunk / Tr::kSubCols; ++sub) {
        const int jb = c * Tr::kChunk + sub * Tr::kSubCols;
        if (jb >= nb) break;  // no row of the pass has a past block here
        float s[2][NS][4];
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
          for (int n = 0; n < NS; ++n) s[mt][n][0] = s[mt][n][1] = s[mt][n][2] = s[mt][n][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < KD; ++kk)
#pragma unroll
          for (int np = 0; np < NS / 2; ++np) {
            std::uint32_t b[4];
            ldsm_x4(b, smem_addr(cM + (jb - c * Tr::kChunk + np * 16 + (lane & 7) + (lane >> 4) * 8) * S + kk * 16 +
                                 ((lane >> 3) & 1) * 8));
#pragma unroll
            for (int mt = 0; mt < 2; ++mt) {
              mma_16816<T>(s[mt][2 * np], qf[mt][kk], b[0], b[1]);
              mma_16816<T>(s[mt][2 * np + 1], qf[mt][kk], b[2], b[3]);
            }
          }
        // Column of score x (0 .. 2 NS - 1) of a row: jb + 2 c4 + (x / 2) * 8 + x % 2, ascending in x.
        const int jt = jb + 2 * c4;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int mt = i >> 1, hf = (i & 1) * 2;
          gate_detail::row_scan<KR, 2 * NS>([&](int x) { return s[mt][x >> 1][hf + (x & 1)]; }, jt, own[i],
                                            ls[i], li[i], thr[i], bound[i]);
        }
        gate_detail::refresh_bounds<4>(thr, bound);
      }
    }
    if (!active) continue;

    // Merge the quad's four lists of each row; lane c4 keeps row c4's winners.
    int pick[KR];
    gate_detail::quad_merge<KR, 4>(ls, li, K, c4, pick);
    const int lr = wr0 + (c4 >> 1) * 16 + (c4 & 1) * 8 + g;  // row i = c4
    if (lr < w_rows) gate_detail::write_pick<KR>(p.sel + (std::int64_t(w_tok0 + lr) * p.hq + h) * K, pick, K);
  }
  cp_async_wait<0>();
}

// TP plan tiles per CTA. smem: (64 TP + 3 * 64) rows of D + 8 elements.
template <class T, int D, int KR, int TP>
void launch_topk_regs(const GateParams& p, cudaStream_t stream) {
  using Tr = RegGateTraits<T, D, TP>;
  MOBA_CUDA_CHECK(cudaFuncSetAttribute(gate_topk_regs_kernel<T, D, KR, TP>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, Tr::kSmemBytes));
  // two 128-row CTAs per SM need 2 x 87 KB (D = 128): ask for the largest shared-memory carveout
  MOBA_CUDA_CHECK(cudaFuncSetAttribute(gate_topk_regs_kernel<T, D, KR, TP>,
                                       cudaFuncAttributePreferredSharedMemoryCarveout,
                                       int(cudaSharedmemCarveoutMaxShared)));
  const int groups = (p.num_tiles + TP - 1) / TP;
  gate_topk_regs_kernel<T, D, KR, TP><<<dim3(groups, p.hq), Tr::kThreads, Tr::kSmemBytes, stream>>>(p);
  MOBA_CUDA_LAUNCH_CHECK();
}

}  // namespace moba::cuda
