// Fused gate scores + top-k on sm_90a warpgroup MMA, for topk - 1 <= kSm90GateMaxK (16): the
// register top-k range of the mma.sync kernel (<= 8) and beyond it; selects what
// gate_topk_regs.cuh / gate_topk_kernel select (the same rule, same lists as the former; fp32
// scores summed in another order, so near ties may go either way).
//
// One CTA = TP consecutive 64-row plan tiles of one query head (TP = 2: 128 rows) and
// TP + 1/4 warpgroups: consumer warpgroup w owns plan tile w (its 64 Q rows in shared memory,
// 128-byte swizzled, loaded once by cp.async), and one producer warp streams the means of the
// tiles' sequence through a kStages-deep ring of 128-block stages: one TMA box per 64 columns
// (128 means rows x 128 bytes, the swizzle wgmma reads), completing on the stage's `full`
// mbarrier; every consumer thread arrives on the stage's `empty` mbarrier once its wgmmas have
// read it, and the producer refills it after that.
// Per stage a consumer warpgroup computes two 64 x 64 score steps S = Q M^T (wgmma m64n64k16,
// A = Q and B = the means, both K-major from shared memory, fp32 accumulate) into two
// accumulator sets in turn: the next step's wgmma runs on the tensor cores while the threads
// filter the current step's scores into their per-row top-k lists (gate_topk_lists.cuh). The
// accumulator of a warp's 16 rows has the mma.sync C layout, so the filter is the same code as
// the mma.sync kernel's: a thread holds 2 rows (g, g + 8 of its warp's 16) x 16 columns per
// step, and refreshes the quad bounds every 16 columns as that kernel does.
// Varlen: the CTA makes one pass per sequence over its tiles of that sequence (as
// gate_topk_regs.cuh): the producer streams that sequence's means; warpgroups of another
// sequence only wait for each stage and release it (the empty barrier counts every consumer
// thread). A pass whose last row has at most K past blocks scores nothing.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "cuda/common/check.hpp"
#include "cuda/common/mma.cuh"
#include "cuda/common/sm90_available.hpp"
#include "cuda/forward/hopper_wgmma.cuh"
#include "cuda/forward/sm90_pipeline.cuh"
#include "cuda/forward/tensor_map.hpp"
#include "cuda/gate/gate_common.cuh"
#include "cuda/gate/gate_params.hpp"
#include "cuda/gate/gate_topk_lists.cuh"

namespace moba::cuda {

constexpr int kSm90GateTiles = 2;  // 64-row plan tiles (consumer warpgroups) per CTA
// Largest topk - 1 of this kernel: 2 rows a thread leave room for lists of 16 (the mma.sync
// kernel's 4 rows a thread stop at kRegGateMaxK = 8; between the two the shared-memory lists run).
constexpr int kSm90GateMaxK = 16;

template <int D, int TP>
struct Sm90GateTraits {
  static constexpr int kThreads = 128 * TP + 32;  // TP consumer warpgroups + the producer warp
  static constexpr int kChunk = 128;              // means rows (key blocks) per stage: one TMA box
  static constexpr int kStep = 64;                // blocks per wgmma (m64n64), two per stage
  static constexpr int kStages = 4;
  static constexpr int kQBytes = 64 * D * 2;  // one warpgroup's rows
  static constexpr int kStageBytes = kChunk * D * 2;
  static constexpr int kMOff = TP * kQBytes;
  static constexpr int kBarOff = kMOff + kStages * kStageBytes;  // full[S], empty[S]
  static constexpr int kSmemBytes = 1024 + kBarOff + 2 * kStages * 8;  // 1 KB: swizzle alignment
  static_assert(kSmemBytes <= 227 * 1024, "shared memory over the sm_90 opt-in limit");
};

// The pass of the CTA's tiles [t, ...) of one sequence, as every thread computes it.
struct GatePass {
  int seq, t_end, nb;  // nb: past blocks of the pass's last row
  __device__ __forceinline__ GatePass(const GateParams& p, int t, int tile_hi) {
    seq = gate_detail::last_le(p.tile_off, 0, p.batch, t);
    t_end = min(tile_hi, p.tile_off[seq + 1]);
    const int len = p.cu[seq + 1] - p.cu[seq];
    nb = (min(len, (t_end - p.tile_off[seq]) * 64) - 1) / p.block_size;
  }
};

template <class T, int D, int KR, int TP>
__global__ void __launch_bounds__(128 * TP + 32, 1)
    gate_topk_sm90_kernel(const __grid_constant__ GateParams p,
                          const __grid_constant__ KvTensorMaps maps) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using namespace hopper;
  using namespace sm90;
  using Tr = Sm90GateTraits<D, TP>;
  constexpr int S = Tr::kStages, KD = D / 16, CPR = D / 8;
  constexpr bool kBf16 = Dt<T>::kIsBf16;
  extern __shared__ unsigned char smem_raw[];
  unsigned char* base = reinterpret_cast<unsigned char*>(
      (reinterpret_cast<std::uintptr_t>(smem_raw) + 1023) & ~std::uintptr_t(1023));
  const std::uint32_t q_addr0 = smem_addr(base);
  const std::uint32_t m_addr0 = q_addr0 + Tr::kMOff;
  const std::uint32_t bar0 = q_addr0 + Tr::kBarOff;
  auto full = [&](int s) { return bar0 + 8u * std::uint32_t(s); };
  auto empty = [&](int s) { return bar0 + 8u * std::uint32_t(S + s); };

  const int tiles = p.tile_off[p.batch];
  const int group_idx = (tiles + TP - 1) / TP - 1 - int(blockIdx.x);  // longest rows first
  if (group_idx < 0) return;  // the grid may be a bound (device planning); uniform per CTA
  const int tile_lo = group_idx * TP, tile_hi = min(tiles, tile_lo + TP);
  const int h = blockIdx.y, hk = h / p.group, K = p.past_k;
  const int tid = threadIdx.x, warp = (tid >> 5) & 3, lane = tid & 31;
  // the warpgroup index through a shuffle: ptxas then knows it is warp-uniform, so the wgmmas
  // below are not in a divergent path (which would serialise them)
  const int wg = __shfl_sync(0xffffffffu, tid >> 7, 0);

  if (tid == 0) {
    for (int s = 0; s < S; ++s) {
      mbar_init(full(s), 1);           // the producer's arrive.expect_tx (+ the TMA bytes)
      mbar_init(empty(s), 128 * TP);   // every consumer thread, once its wgmmas read the stage
    }
    mbar_fence_init();
  }
  __syncthreads();

  if (wg == TP) {
    // ================================ producer warp ======================================
    if (lane != 0) return;
    tma_prefetch_map(&maps.k);
    int it = 0;  // stages issued so far (all passes): stage it % S, round it / S
    for (int t = tile_lo; t < tile_hi;) {
      const GatePass ps(p, t, tile_hi);
      t = ps.t_end;
      if (ps.nb <= K) continue;
      const int nch = (ps.nb + Tr::kChunk - 1) / Tr::kChunk;
      const int blk0 = p.blk_off[ps.seq];
      for (int c = 0; c < nch; ++c, ++it) {
        const int s = it % S;
        if (it >= S) mbar_wait(empty(s), std::uint32_t(it / S - 1) & 1u);
        mbar_arrive_expect_tx(full(s), Tr::kStageBytes);
        const int row = blk0 + c * Tr::kChunk;  // rows past the tensor arrive as zeros
#pragma unroll
        for (int cb = 0; cb < D / 64; ++cb) {
          const std::uint32_t dst = m_addr0 + s * Tr::kStageBytes + cb * Tr::kChunk * 128;
          if (maps.k_token_dim == 2) tma_load_3d(dst, &maps.k, cb * 64, hk, row, full(s));
          else tma_load_3d(dst, &maps.k, cb * 64, row, hk, full(s));
        }
      }
    }
    return;
  }

  // ================================== consumers ===========================================
  const int g = lane >> 2, c4 = lane & 3;
  const int wt = tile_lo + wg;  // this warpgroup's plan tile
  int w_seq = -1, w_t0 = 0, w_rows = 0, w_tok0 = 0;
  if (wt < tile_hi) {
    w_seq = gate_detail::last_le(p.tile_off, 0, p.batch, wt);
    w_t0 = (wt - p.tile_off[w_seq]) * 64;
    w_rows = min(64, p.cu[w_seq + 1] - p.cu[w_seq] - w_t0);
    w_tok0 = p.cu[w_seq] + w_t0;
  }
  const std::uint32_t q_addr = q_addr0 + wg * Tr::kQBytes;
  {
    const T* qg = static_cast<const T*>(p.q);
    unsigned char* sQ = base + wg * Tr::kQBytes;
    for (int idx = tid - wg * 128; idx < 64 * CPR; idx += 128) {
      const int r = idx / CPR, cc = idx % CPR;
      const bool ok = r < w_rows;
      const std::int64_t tok = ok ? w_tok0 + r : 0;
      cp_async_16(sQ + swz(r, cc, 64), qg + tok * p.q_ts + std::int64_t(h) * p.q_hs + cc * 8, ok);
    }
    cp_async_commit();
    cp_async_wait<0>();
    fence_proxy_async();  // generic-proxy writes, read by wgmma (async proxy)
    named_sync<128>(1 + wg);
  }
  // Thread rows r = 0, 1: rows 16 warp + g + 8 r of the tile (the accumulator's rows);
  // own = the row's number of past blocks (0 for a padding row).
  int lr[2], own[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    lr[r] = warp * 16 + g + 8 * r;
    own[r] = lr[r] < w_rows ? (w_t0 + lr[r]) / p.block_size : 0;
  }

  int it = 0;  // stages consumed so far (all passes), as the producer counts them
  for (int t = tile_lo; t < tile_hi;) {
    const GatePass ps(p, t, tile_hi);
    t = ps.t_end;
    const bool active = __shfl_sync(0xffffffffu, int(w_seq == ps.seq), 0) != 0;  // warp-uniform for ptxas
    if (ps.nb <= K) {  // every row keeps all of its past blocks
      if (active)
#pragma unroll
        for (int r = 0; r < 2; ++r)
          if (lr[r] < w_rows)
            gate_detail::write_all_past(p.sel + (std::int64_t(w_tok0 + lr[r]) * p.hq + h) * K, own[r], K, c4);
      continue;
    }
    const int nb = ps.nb;
    const int nch = (nb + Tr::kChunk - 1) / Tr::kChunk, nsteps = (nb + Tr::kStep - 1) / Tr::kStep;
    const int it0 = it;
    it += nch;
    auto stage = [&](int c) { return (it0 + c) % S; };
    auto parity = [&](int c) { return std::uint32_t((it0 + c) / S) & 1u; };
    if (!active) {  // another sequence's warpgroup: release each stage once it has landed
      for (int c = 0; c < nch; ++c) {
        mbar_wait(full(stage(c)), parity(c));
        mbar_arrive(empty(stage(c)));
      }
      continue;
    }

    float ls[2][KR];
    int li[2][KR];
    float thr[2], bound[2];
    gate_detail::lists_init<KR, 2>(ls, li, thr, bound, K);
    float acc0[32], acc1[32];

    // S (64 rows x 64 blocks) = Q M^T for half `hf` of stage s, into acc; one commit group.
    auto issue = [&](float* acc, int s, int hf) {
      const std::uint32_t mb = m_addr0 + s * Tr::kStageBytes + hf * Tr::kStep * 128;
      wg_fence();
#pragma unroll
      for (int kk = 0; kk < KD; ++kk) {
        const std::uint32_t koff = (kk & 3) * 32;  // 16 columns = 32 bytes inside the atom row
        const std::uint64_t da = make_desc(q_addr + (kk >> 2) * 64 * 128 + koff, 16, 1024);
        const std::uint64_t db = make_desc(mb + (kk >> 2) * Tr::kChunk * 128 + koff, 16, 1024);
        if (kk == 0) wgmma_ss_zero<kBf16, 64>(acc, da, db);
        else wgmma_ss<kBf16, 64>(acc, da, db, 1);
      }
      wg_commit();
    };
    // The step's scores (blocks jb .. jb + 63) into the lists, 16 columns at a time: n8 tiles
    // 2q, 2q + 1 of the accumulator, row r at acc[4 n + 2 r + 0..1].
    auto filter = [&](const float* acc, int jb) {
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        if (jb + 16 * q >= nb) break;  // no row of the pass has a past block here (uniform)
        const int jt = jb + 16 * q + 2 * c4;
#pragma unroll
        for (int r = 0; r < 2; ++r)
          gate_detail::row_scan<KR, 4>([&](int x) { return acc[4 * (2 * q + (x >> 1)) + 2 * r + (x & 1)]; },
                                       jt, own[r], ls[r], li[r], thr[r], bound[r]);
        gate_detail::refresh_bounds<2>(thr, bound);
      }
    };

    // Stage c: half 0 into acc0, half 1 into acc1, issued back to back; the threads filter
    // acc0 while acc1's wgmmas run, then acc1 (the other consumer warpgroup's wgmmas keep the
    // tensor cores busy meanwhile). No wgmma stays in flight across iterations: ptxas tracks
    // the order of commit groups only within one, and serialises every wgmma of the kernel
    // when a filter reads an accumulator retired by a wait<1> for a group of the iteration
    // before (measured here with ptxas 13.0: advisory C7514).
    for (int c = 0; c < nch; ++c) {
      mbar_wait(full(stage(c)), parity(c));
      issue(acc0, stage(c), 0);
      // a last stage of one step has no second half (a uniform branch ptxas accepts: both paths
      // retire every group by the wait<0> below, within the iteration)
      const bool has1 = 2 * c + 1 < nsteps;
      if (has1) {
        issue(acc1, stage(c), 1);
        wg_wait<1>();
      } else {
        wg_wait<0>();
      }
      reg_fence<32>(acc0);
      filter(acc0, c * Tr::kChunk);  // while acc1's wgmmas run
      wg_wait<0>();
      reg_fence<32>(acc1);
      mbar_arrive(empty(stage(c)));  // this thread's wgmmas that read stage c are complete
      if (has1) filter(acc1, c * Tr::kChunk + Tr::kStep);
    }

    int pick[KR];
    gate_detail::quad_merge<KR, 2>(ls, li, K, c4, pick);
    const int lrow = warp * 16 + g + 8 * c4;  // row r = c4 (lanes 0, 1 of the quad)
    if (c4 < 2 && lrow < w_rows)
      gate_detail::write_pick<KR>(p.sel + (std::int64_t(w_tok0 + lrow) * p.hq + h) * K, pick, K);
  }
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  __trap();  // a Hopper build without the sm_90a features: never selected (gate_sm90_available)
#endif
}

// True when this binary holds sm_90a code for the kernel, the current device runs it and the
// driver encodes tensor maps (checked once per process, on the first call's device).
template <class T, int D>
bool gate_sm90_available_impl() {
  static const bool ok =
      ::moba::cuda::sm90a_kernel_runs(gate_topk_sm90_kernel<T, D, kRegGateMaxK, kSm90GateTiles>) &&
      tensor_maps_available();
  return ok;
}

// TP plan tiles per CTA. The means [blocks, hkv, D] are described to the TMA as a [tokens,
// heads, D] operand of `blocks` tokens (make_kv_tensor_maps; its second map is not used).
template <class T, int D, int KR, int TP>
void launch_topk_sm90(const GateParams& p, cudaStream_t stream) {
  using Tr = Sm90GateTraits<D, TP>;
  const KvOperand m{p.means, std::int64_t(p.hkv) * D, D};
  const KvTensorMaps maps =
      make_kv_tensor_maps(m, m, std::max(p.num_blocks, 1), p.hkv, D, Dt<T>::kIsBf16);
  MOBA_CUDA_CHECK(cudaFuncSetAttribute(gate_topk_sm90_kernel<T, D, KR, TP>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, Tr::kSmemBytes));
  const int groups = (p.num_tiles + TP - 1) / TP;
  gate_topk_sm90_kernel<T, D, KR, TP>
      <<<dim3(groups, p.hq), Tr::kThreads, Tr::kSmemBytes, stream>>>(p, maps);
  MOBA_CUDA_LAUNCH_CHECK();
}

}  // namespace moba::cuda
