// MoBA gate on the GPU (docs/semantics.md, "Gate" and "Selection").
// 1. block_sums_kernel + block_means_finalize: fp64 sums per (full block, KV head), split over
//    CTAs of 256 rows (exact for bf16/f16 inputs, so the order does not matter), then fp32
//    divide and rounding to the input dtype, exactly as the reference does.
//    Blocks of at most 256 rows: one CTA per block writes the mean directly (one launch).
// 2. Top-k. topk - 1 <= 8: gate_topk_regs_kernel (gate_topk_regs.cuh: 128-row CTAs, scores and
//    per-thread candidate lists in registers) or, with GateParams::sm90 and up to topk - 1 = 16,
//    gate_topk_sm90_kernel (gate_topk_sm90.cuh: the same lists over warpgroup-MMA scores,
//    TMA-fed). Larger topk:
//    gate_topk_kernel: one CTA = 64 query rows of one head. Scores q . mean for the past blocks
//    of the tile's last row run on tensor cores (m16n8k16, fp32 accumulate) 64 blocks at a time
//    (a row whose own block comes earlier, block_size not a multiple of 64, ignores the blocks
//    from its own on); each chunk's 64x64 scores
//    go to shared memory only. The mma threads flag, per row, the scores above the row's
//    current K-th best (a 64-bit mask); one thread per row then walks only the flagged blocks
//    in ascending order and keeps a sorted top-(topk-1) list (strictly greater replaces, so
//    ties keep the earlier block). The [tokens x blocks] score
//    matrix never reaches global memory. Tiles whose rows have at most topk-1 past blocks
//    select all of them without scoring.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "cuda/common/check.hpp"
#include "cuda/common/mma.cuh"
#include "cuda/gate/gate_common.cuh"
#include "cuda/gate/gate_params.hpp"
#include "cuda/gate/gate_topk_regs.cuh"
#include "cuda/gate/gate_topk_sm90.cuh"

namespace moba::cuda {


// Block sums in fp64, split over CTAs of kSumRows rows each and combined by fp64 atomics.
// Every partial sum of bf16/f16 inputs is exact in fp64 (for any block whose values span fewer
// than ~2^40 in magnitude), so the atomic order does not change the result: deterministic.
constexpr int kSumRows = 256;

template <class T, int D>
__global__ void __launch_bounds__(256) block_sums_kernel(const GateParams p, double* sums) {
  constexpr int V = D / 8;    // 16-byte pieces per row
  constexpr int R = 256 / V;  // row groups
  __shared__ double red[R][D];
  const int gb = blockIdx.x, hk = blockIdx.y;
  if (gb >= p.blk_off[p.batch]) return;  // the grid may be a bound (device planning)
  const int seq = gate_detail::last_le(p.blk_off, 0, p.batch, gb);
  const int j = gb - p.blk_off[seq];
  const int r_begin = blockIdx.z * kSumRows, r_end = min(p.block_size, r_begin + kSumRows);
  const std::int64_t row0 = std::int64_t(p.cu[seq]) + std::int64_t(j) * p.block_size;
  const int v = threadIdx.x % V, rg = threadIdx.x / V;
  const T* kp = static_cast<const T*>(p.k) + row0 * p.k_ts + std::int64_t(hk) * p.k_hs + v * 8;
  double acc[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) acc[i] = 0;
#pragma unroll 4
  for (int r = r_begin + rg; r < r_end; r += R) {
    const uint4 u = *reinterpret_cast<const uint4*>(kp + std::int64_t(r) * p.k_ts);
    const std::uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 f = Dt<T>::unpack(w[i]);
      acc[2 * i] += double(f.x);
      acc[2 * i + 1] += double(f.y);
    }
  }
#pragma unroll
  for (int i = 0; i < 8; ++i) red[rg][v * 8 + i] = acc[i];
  __syncthreads();
  for (int d = threadIdx.x; d < D; d += 256) {
    double t = 0;
#pragma unroll
    for (int i = 0; i < R; ++i) t += red[i][d];
    const std::int64_t o = (std::int64_t(gb) * p.hkv + hk) * D + d;
    if (gridDim.z == 1)  // the whole block: its mean, rounded as block_means_finalize does
      static_cast<T*>(p.means)[o] = Dt<T>::from_float(float(t) / float(p.block_size));
    else
      atomicAdd(sums + o, t);
  }
}

// mean = round_dtype(float(sum) / float(B)), as the reference.
template <class T, int D>
__global__ void block_means_finalize(const GateParams p, const double* sums, long long n) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)gridDim.x * blockDim.x)
    static_cast<T*>(p.means)[i] = Dt<T>::from_float(float(sums[i]) / float(p.block_size));
}

template <class T, int D>
struct GateTraits {
  static constexpr int kStride = D + 8;
  static constexpr int kTileElems = 64 * kStride;
  static constexpr int kScoreStride = 65;  // floats; odd stride: row-parallel reads are conflict-free
  static int smem_bytes(int past_k) {
    return 3 * kTileElems * int(sizeof(T)) + 64 * kScoreStride * 4 + 64 * 4 + 64 * 8 +
           past_k * 64 * 8;
  }
};

template <class T, int D>
__global__ void __launch_bounds__(128) gate_topk_kernel(const GateParams p) {
  using Tr = GateTraits<T, D>;
  constexpr int S = Tr::kStride;
  constexpr int KD = D / 16;
  constexpr int SS = Tr::kScoreStride;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sM = sQ + Tr::kTileElems;  // 2 buffers
  float* sS = reinterpret_cast<float*>(sM + 2 * Tr::kTileElems);
  float* sThr = sS + 64 * SS;  // per row: K-th best score so far, NaN while fewer than K
  unsigned long long* sMask = reinterpret_cast<unsigned long long*>(sThr + 64);  // candidates
  float* lst = reinterpret_cast<float*>(sMask + 64);   // [K][64] scores, sorted descending
  int* lidx = reinterpret_cast<int*>(lst + p.past_k * 64);  // [K][64] block indices

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, c4 = lane & 3;
  const int tile = p.tile_off[p.batch] - 1 - int(blockIdx.x);  // the grid may be a bound
  if (tile < 0) return;
  const int h = blockIdx.y, hk = h / p.group;
  const int seq = gate_detail::last_le(p.tile_off, 0, p.batch, tile);
  const int len = p.cu[seq + 1] - p.cu[seq];
  const int t0 = (tile - p.tile_off[seq]) * 64;
  const int nrows = min(64, len - t0);
  const int tok0 = p.cu[seq] + t0;
  // Past blocks of the tile's last row (every row's when block_size is a multiple of 64).
  const int own_last = (t0 + nrows - 1) / p.block_size;
  const int K = p.past_k;

  if (own_last <= K) {  // every row selects all of its past blocks
    for (int idx = tid; idx < nrows * K; idx += 128) {
      const int r = idx / K, s = idx - r * K;
      const int own = (t0 + r) / p.block_size;
      p.sel[(std::int64_t(tok0 + r) * p.hq + h) * K + s] = s < own ? s : -1;
    }
    return;
  }

  const T* qg = static_cast<const T*>(p.q);
  const T* mg = static_cast<const T*>(p.means) + (std::int64_t(p.blk_off[seq]) * p.hkv + hk) * D;
  const std::int64_t mstride = std::int64_t(p.hkv) * D;
  constexpr int CPR = D / 8;
#pragma unroll
  for (int it = 0; it < 64 * CPR / 128; ++it) {
    const int idx = tid + it * 128;
    const int r = idx / CPR, cc = idx % CPR;
    const bool ok = r < nrows;
    cp_async_16(sQ + r * S + cc * 8,
                qg + std::int64_t(tok0 + (ok ? r : 0)) * p.q_ts + std::int64_t(h) * p.q_hs + cc * 8, ok);
  }
  const int nb = own_last;
  const int nch = (nb + 63) / 64;
  auto load_means = [&](int c, int buf) {
    T* dst = sM + buf * Tr::kTileElems;
#pragma unroll
    for (int it = 0; it < 64 * CPR / 128; ++it) {
      const int idx = tid + it * 128;
      const int r = idx / CPR, cc = idx % CPR;
      const int j = c * 64 + r;
      const bool ok = j < nb;
      cp_async_16(dst + r * S + cc * 8, mg + std::int64_t(ok ? j : 0) * mstride + cc * 8, ok);
    }
  };
  load_means(0, 0);
  cp_async_commit();
  if (tid < 64) sThr[tid] = __int_as_float(0x7fffffff);  // NaN: every score is a candidate

  const int myrow = warp * 16 + lane;  // scanning lanes 0..15
  int cnt = 0;
  float thr = -INFINITY;
  std::uint32_t qf[KD][4];

  for (int c = 0; c < nch; ++c) {
    const int buf = c & 1;
    if (c + 1 < nch) {
      load_means(c + 1, buf ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (c == 0) {
#pragma unroll
      for (int kk = 0; kk < KD; ++kk)
        ldsm_x4(qf[kk], smem_addr(sQ + (warp * 16 + (lane & 15)) * S + kk * 16 + (lane >> 4) * 8));
    }
    const T* cM = sM + buf * Tr::kTileElems;
    float s[8][4];
#pragma unroll
    for (int n = 0; n < 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
    for (int np = 0; np < 4; ++np) {
#pragma unroll
      for (int kk = 0; kk < KD; ++kk) {
        std::uint32_t b[4];
        ldsm_x4(b, smem_addr(cM + (np * 16 + (lane & 7) + (lane >> 4) * 8) * S + kk * 16 +
                             ((lane >> 3) & 1) * 8));
        mma_16816<T>(s[2 * np], qf[kk], b[0], b[1]);
        mma_16816<T>(s[2 * np + 1], qf[kk], b[2], b[3]);
      }
    }
    float* wS = sS + (warp * 16) * SS;
    // Candidates: scores not <= the row's current K-th best (all while the list is not full;
    // NaN thresholds and NaN scores compare false, so they are candidates too).
    const float th0 = sThr[warp * 16 + g], th1 = sThr[warp * 16 + g + 8];
    unsigned long long m0 = 0, m1 = 0;
#pragma unroll
    for (int n = 0; n < 8; ++n) {
      wS[g * SS + n * 8 + 2 * c4] = s[n][0];
      wS[g * SS + n * 8 + 2 * c4 + 1] = s[n][1];
      wS[(g + 8) * SS + n * 8 + 2 * c4] = s[n][2];
      wS[(g + 8) * SS + n * 8 + 2 * c4 + 1] = s[n][3];
      const int col = n * 8 + 2 * c4;
      if (!(s[n][0] <= th0)) m0 |= 1ull << col;
      if (!(s[n][1] <= th0)) m0 |= 1ull << (col + 1);
      if (!(s[n][2] <= th1)) m1 |= 1ull << col;
      if (!(s[n][3] <= th1)) m1 |= 1ull << (col + 1);
    }
    m0 |= __shfl_xor_sync(0xffffffffu, m0, 1);
    m0 |= __shfl_xor_sync(0xffffffffu, m0, 2);
    m1 |= __shfl_xor_sync(0xffffffffu, m1, 1);
    m1 |= __shfl_xor_sync(0xffffffffu, m1, 2);
    if (c4 == 0) {
      sMask[warp * 16 + g] = m0;
      sMask[warp * 16 + g + 8] = m1;
    }
    __syncwarp();
    if (lane < 16) {
      // this row's past blocks in the chunk (its own block and later ones are not candidates)
      const int ncol = min(64, (t0 + myrow) / p.block_size - c * 64);
      unsigned long long mask = ncol > 0 ? sMask[myrow] : 0ull;
      if (ncol > 0 && ncol < 64) mask &= (1ull << ncol) - 1;
      const float* row = wS + lane * SS;
      while (mask) {  // ascending columns: equal scores keep the earlier block
        const int col = __ffsll(static_cast<long long>(mask)) - 1;
        mask &= mask - 1;
        const float v = row[col];
        if (cnt == K && !(v > thr)) continue;
        int pos = cnt < K ? cnt : K - 1;
        while (pos > 0 && lst[(pos - 1) * 64 + myrow] < v) {
          lst[pos * 64 + myrow] = lst[(pos - 1) * 64 + myrow];
          lidx[pos * 64 + myrow] = lidx[(pos - 1) * 64 + myrow];
          --pos;
        }
        lst[pos * 64 + myrow] = v;
        lidx[pos * 64 + myrow] = c * 64 + col;
        if (cnt < K) ++cnt;
        if (cnt == K) thr = lst[(K - 1) * 64 + myrow];
      }
      if (cnt == K) sThr[myrow] = thr;
    }
    __syncthreads();
  }

  if (lane < 16 && myrow < nrows) {
    // ascending block order (insertion sort; K is small). cnt < K only for a row with at most
    // K past blocks in a tile whose last row has more: it keeps all of them, -1 padded.
    for (int a = 1; a < cnt; ++a) {
      const int x = lidx[a * 64 + myrow];
      int b = a - 1;
      while (b >= 0 && lidx[b * 64 + myrow] > x) {
        lidx[(b + 1) * 64 + myrow] = lidx[b * 64 + myrow];
        --b;
      }
      lidx[(b + 1) * 64 + myrow] = x;
    }
    std::int32_t* out = p.sel + (std::int64_t(tok0 + myrow) * p.hq + h) * K;
    for (int a = 0; a < K; ++a) out[a] = a < cnt ? lidx[a * 64 + myrow] : -1;
  }
}

// Block means of every full block and KV head: fp64 sums split over CTAs of kSumRows rows
// (memset + atomics + finalize), or one CTA per block that writes the mean itself when
// block_size <= kSumRows (one launch: what keeps the gate's fixed cost low at 8K).
template <class T, int D>
void launch_block_means(const GateParams& p, void* sums_ws, cudaStream_t stream) {
  if (p.num_blocks <= 0) return;
  const int splits = (p.block_size + kSumRows - 1) / kSumRows;
  const long long n = (long long)p.num_blocks * p.hkv * D;
  double* sums = static_cast<double*>(sums_ws);
  if (splits > 1) MOBA_CUDA_CHECK(cudaMemsetAsync(sums, 0, n * sizeof(double), stream));
  block_sums_kernel<T, D><<<dim3(p.num_blocks, p.hkv, splits), 256, 0, stream>>>(p, sums);
  MOBA_CUDA_LAUNCH_CHECK();
  if (splits > 1) {
    const long long blocks = std::min<long long>((n + 255) / 256, 65536);
    block_means_finalize<T, D><<<int(blocks), 256, 0, stream>>>(p, sums, n);
    MOBA_CUDA_LAUNCH_CHECK();
  }
}

// The shared-memory-list top-k kernel (any past_k up to kGateMaxPastK).
template <class T, int D>
void launch_topk_smem(const GateParams& p, cudaStream_t stream) {
  const int smem = GateTraits<T, D>::smem_bytes(p.list_k);
  MOBA_CUDA_CHECK(cudaFuncSetAttribute(gate_topk_kernel<T, D>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  gate_topk_kernel<T, D><<<dim3(p.num_tiles, p.hq), 128, smem, stream>>>(p);
  MOBA_CUDA_LAUNCH_CHECK();
}

// The top-k kernel for p: per-thread register lists over sm_90a warpgroup-MMA scores
// (gate_topk_sm90.cuh) when p.sm90 and topk - 1 <= kSm90GateMaxK; else over mma.sync scores
// (gate_topk_regs.cuh) when topk - 1 <= kRegGateMaxK or no row has more past blocks than
// topk - 1 (no list is then needed); the shared-memory lists of gate_topk_kernel otherwise.
template <class T, int D>
void launch_gate_topk(const GateParams& p, cudaStream_t stream) {
  if (p.sm90 && (p.list_k == 0 || p.past_k <= 4))
    launch_topk_sm90<T, D, 4, kSm90GateTiles>(p, stream);
  else if (p.sm90 && p.past_k <= kRegGateMaxK)
    launch_topk_sm90<T, D, kRegGateMaxK, kSm90GateTiles>(p, stream);
  else if (p.sm90 && p.past_k <= kSm90GateMaxK)
    launch_topk_sm90<T, D, kSm90GateMaxK, kSm90GateTiles>(p, stream);
  else if (p.list_k == 0 || p.past_k <= 4)
    launch_topk_regs<T, D, 4, kRegGateTiles>(p, stream);
  else if (p.past_k <= kRegGateMaxK)
    launch_topk_regs<T, D, kRegGateMaxK, kRegGateTiles>(p, stream);
  else
    launch_topk_smem<T, D>(p, stream);
}

template <class T, int D>
void launch_gate(const GateParams& p, void* sums_ws, void* stream_v) {
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_v);
  if (p.past_k <= 0 || p.num_tiles <= 0) return;  // num_tiles: the grid (exact or a bound)
  launch_block_means<T, D>(p, sums_ws, stream);
  launch_gate_topk<T, D>(p, stream);
}

template <class T, int D>
bool gate_sm90_available() {
  return gate_sm90_available_impl<T, D>();
}

}  // namespace moba::cuda

#define MOBA_INSTANTIATE_GATE(T, D)                                                          \
  template void moba::cuda::launch_gate<T, D>(const moba::cuda::GateParams&, void*, void*); \
  template bool moba::cuda::gate_sm90_available<T, D>();
