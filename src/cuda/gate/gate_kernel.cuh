// MoBA gate on the GPU (docs/semantics.md, "Gate" and "Selection").
// 1. block_means_kernel: one CTA per (full block, KV head); fp64 sums (exact for bf16/f16
//    inputs, so the order does not matter), fp32 divide, round to the input dtype, exactly as
//    the reference does.
// 2. gate_topk_kernel: one CTA = 64 query rows of one head (all rows of a 64-row tile share the
//    own block because block_size is a multiple of 64). Scores q . mean for the past blocks run
//    on tensor cores (m16n8k16, fp32 accumulate) 64 blocks at a time; each chunk's 64x64 scores
//    go to shared memory only, where one thread per row keeps a sorted top-(topk-1) list
//    (strictly greater replaces, so ties keep the earlier block). The [tokens x blocks] score
//    matrix never reaches global memory. Tiles whose rows have at most topk-1 past blocks
//    select all of them without scoring.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common/check.hpp"
#include "cuda/common/mma.cuh"
#include "cuda/gate/gate_params.hpp"

namespace moba::cuda {

namespace gate_detail {
__device__ __forceinline__ int last_le(const int* a, int lo, int hi, int x) {
  while (hi - lo > 1) {
    const int mid = (lo + hi) >> 1;
    if (a[mid] <= x) lo = mid;
    else hi = mid;
  }
  return lo;
}
}  // namespace gate_detail

template <class T, int D>
__global__ void __launch_bounds__(256) block_means_kernel(const GateParams p) {
  constexpr int G = 256 / D;  // row groups
  __shared__ double part[256];
  const int gb = blockIdx.x, hk = blockIdx.y;
  const int seq = gate_detail::last_le(p.blk_off, 0, p.batch, gb);
  const int j = gb - p.blk_off[seq];
  const std::int64_t row0 = std::int64_t(p.cu[seq]) + std::int64_t(j) * p.block_size;
  const int d = threadIdx.x % D, rg = threadIdx.x / D;
  const T* kp = static_cast<const T*>(p.k) + row0 * p.k_ts + std::int64_t(hk) * p.k_hs + d;
  double s0 = 0, s1 = 0;
  int r = rg;
  for (; r + G < p.block_size; r += 2 * G) {
    s0 += double(Dt<T>::to_float(kp[std::int64_t(r) * p.k_ts]));
    s1 += double(Dt<T>::to_float(kp[std::int64_t(r + G) * p.k_ts]));
  }
  for (; r < p.block_size; r += G) s0 += double(Dt<T>::to_float(kp[std::int64_t(r) * p.k_ts]));
  part[threadIdx.x] = s0 + s1;
  __syncthreads();
  if (rg == 0) {
    double total = 0;
#pragma unroll
    for (int i = 0; i < G; ++i) total += part[i * D + d];
    const float mean = float(total) / float(p.block_size);
    static_cast<T*>(p.means)[(std::int64_t(gb) * p.hkv + hk) * D + d] = Dt<T>::from_float(mean);
  }
}

template <class T, int D>
struct GateTraits {
  static constexpr int kStride = D + 8;
  static constexpr int kTileElems = 64 * kStride;
  static constexpr int kScoreStride = 65;  // floats; odd stride: row-parallel reads are conflict-free
  static int smem_bytes(int past_k) {
    return 3 * kTileElems * int(sizeof(T)) + 64 * kScoreStride * 4 + past_k * 64 * 8;
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
  float* lst = sS + 64 * SS;                           // [K][64] scores, sorted descending
  int* lidx = reinterpret_cast<int*>(lst + p.past_k * 64);  // [K][64] block indices

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, c4 = lane & 3;
  const int tile = p.num_tiles - 1 - int(blockIdx.x);
  const int h = blockIdx.y, hk = h / p.group;
  const int seq = gate_detail::last_le(p.tile_off, 0, p.batch, tile);
  const int len = p.cu[seq + 1] - p.cu[seq];
  const int t0 = (tile - p.tile_off[seq]) * 64;
  const int nrows = min(64, len - t0);
  const int tok0 = p.cu[seq] + t0;
  const int own = t0 / p.block_size;  // the same for every row of the tile
  const int K = p.past_k;

  if (own <= K) {  // every past block is selected
    for (int idx = tid; idx < nrows * K; idx += 128) {
      const int r = idx / K, s = idx - r * K;
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
  const int nb = own;
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
#pragma unroll
    for (int n = 0; n < 8; ++n) {
      wS[g * SS + n * 8 + 2 * c4] = s[n][0];
      wS[g * SS + n * 8 + 2 * c4 + 1] = s[n][1];
      wS[(g + 8) * SS + n * 8 + 2 * c4] = s[n][2];
      wS[(g + 8) * SS + n * 8 + 2 * c4 + 1] = s[n][3];
    }
    __syncwarp();
    if (lane < 16) {
      const int ncol = min(64, nb - c * 64);
      const float* row = wS + lane * SS;
      for (int col = 0; col < ncol; ++col) {
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
    }
    __syncthreads();
  }

  if (lane < 16 && myrow < nrows) {
    // ascending block order (insertion sort; K is small)
    for (int a = 1; a < K; ++a) {
      const int x = lidx[a * 64 + myrow];
      int b = a - 1;
      while (b >= 0 && lidx[b * 64 + myrow] > x) {
        lidx[(b + 1) * 64 + myrow] = lidx[b * 64 + myrow];
        --b;
      }
      lidx[(b + 1) * 64 + myrow] = x;
    }
    std::int32_t* out = p.sel + (std::int64_t(tok0 + myrow) * p.hq + h) * K;
    for (int a = 0; a < K; ++a) out[a] = lidx[a * 64 + myrow];
  }
}

template <class T, int D>
void launch_gate(const GateParams& p, void* stream_v) {
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_v);
  if (p.past_k <= 0 || p.num_tiles <= 0) return;
  if (p.num_blocks > 0) {
    block_means_kernel<T, D><<<dim3(p.num_blocks, p.hkv), 256, 0, stream>>>(p);
    MOBA_CUDA_LAUNCH_CHECK();
  }
  const int smem = GateTraits<T, D>::smem_bytes(p.past_k);
  MOBA_CUDA_CHECK(cudaFuncSetAttribute(gate_topk_kernel<T, D>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  gate_topk_kernel<T, D><<<dim3(p.num_tiles, p.hq), 128, smem, stream>>>(p);
  MOBA_CUDA_LAUNCH_CHECK();
}

}  // namespace moba::cuda

#define MOBA_INSTANTIATE_GATE(T, D) \
  template void moba::cuda::launch_gate<T, D>(const moba::cuda::GateParams&, void*);
