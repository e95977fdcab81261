// CUDA backward of attention over a paged KV cache (moba/paged_attention_backward.hpp).
//
// One CTA per (query row, KV head, chunk of <= kMaxGroup query heads of that KV head), the
// decode forward's work split: the CTA gathers the union of its heads' key ranges (full: 0..t;
// MoA: the sink and the widest window; MoBA: the blocks any of its heads selected plus the own
// block) and walks it in tiles of kTile keys read once through the page table for all its heads
// (GQA without repeating K/V). Per tile and head it recomputes the probabilities from the
// forward's lse, P = exp(scale q.k - lse), and dS = P (dO.v - <dO, out>), masked to the keys the
// head itself sees (its own selection / window); then
//   dq (registers, fp32)   += dS k              written once at the end, times scale
//   dK (fp32, atomics)     += sum over heads  dS (scale q)
//   dV (fp32, atomics)     += sum over heads  P dO
// into page-shaped fp32 accumulators, so a page shared by several cache rows, heads or query
// rows receives the sum of all of them. Summing the group's heads before the atomic cuts the
// atomics by the group size. Float atomics make the dK/dV summation order vary between runs
// (not bit-reproducible); dq is computed in a fixed order.
//
// Device contents (lengths, page ids, selections) are trusted as by the paged forward, but a
// page id outside [0, num_pages), a table column past pages_per_seq and a selection slot that
// is not a completed past block are skipped rather than read.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "cuda/common/dtype.cuh"
#include "cuda/decode/decode_rows.cuh"
#include "cuda/paged/paged_backward_params.hpp"

namespace moba::cuda::paged {

struct RowInfo {
  bool valid;     // the row belongs to a sequence
  int slot;       // cache row
  int len;        // cached length of that row
  int t;          // position of the query row in it
};

__device__ __forceinline__ RowInfo locate_row(const BackwardArgs& a, int row) {
  RowInfo x{false, 0, 0, 0};
  if (a.batch <= 0) return x;
  int lo = 0, hi = a.batch - 1;  // last sequence whose first row is <= row
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (__ldg(a.cu + mid) <= row) lo = mid;
    else hi = mid - 1;
  }
  const int c0 = __ldg(a.cu + lo), c1 = __ldg(a.cu + lo + 1);
  if (row < c0 || row >= c1) return x;
  x.valid = true;
  x.slot = a.slots ? __ldg(a.slots + lo) : lo;
  x.len = __ldg(a.seq_lens + x.slot);
  x.t = x.len - (c1 - c0) + (row - c0);
  return x;
}

// MoA window of a head in a sequence of n tokens; the host's Problem::moa_window (one fused
// multiply-add in fp64, floor).
__device__ __forceinline__ int moa_window(float alpha, float beta, int n) {
  const double span = floor(fma(double(beta), double(n), double(alpha)));
  if (span < 1.0) return 1;
  return span > double(n) ? max(n, 1) : static_cast<int>(span);
}

template <class T, int D>
struct BwdSmem {
  static constexpr int kStride = D + 2;  // odd number of 32-bit words per row
  T k[kTile][kStride];
  T v[kTile][kStride];
  float q[kMaxGroup][D];   // scale * q
  float dout[kMaxGroup][D];
  float p[kMaxGroup][kTile];
  float ds[kMaxGroup][kTile];
  float lse[kMaxGroup], delta[kMaxGroup];
  int sel[kMaxGroup][kMaxPast];
  int win_begin[kMaxGroup];
  int r_begin[kMaxRanges], r_off[kMaxRanges + 1];
  int n_ranges;
  int key_pos[kTile];
  std::int64_t key_row[kTile];  // page * page_size + offset, -1 = not readable
};

template <class T, int D>
__global__ void __launch_bounds__(kThreads) paged_backward_kernel(const __grid_constant__ BackwardArgs a) {
  using S = BwdSmem<T, D>;
  __shared__ S sm;
  constexpr int kPerThread = kMaxGroup * D / kThreads;  // dq accumulators per thread
  const int row = blockIdx.x;
  const int g = blockIdx.y / a.head_chunks;
  const int h0 = g * a.group + (blockIdx.y % a.head_chunks) * kMaxGroup;
  const int G = min(kMaxGroup, g * a.group + a.group - h0);
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const RowInfo ri = locate_row(a, row);
  const int t = ri.t;

  // Queries (times scale), dout, lse and D = <dout, out> of the CTA's heads.
  for (int x = tid; x < G * D; x += kThreads) {
    const int hh = x / D, d = x % D;
    const std::int64_t h = h0 + hh;
    sm.q[hh][d] = Dt<T>::to_float(static_cast<const T*>(a.q)[row * a.q_tok + h * a.q_head + d]) * a.scale;
    sm.dout[hh][d] = Dt<T>::to_float(static_cast<const T*>(a.dout)[row * a.do_tok + h * a.do_head + d]);
  }
  for (int hh = warp; hh < G; hh += kThreads / 32) {
    const std::int64_t h = h0 + hh;
    float s = 0.f;
    for (int d = lane; d < D; d += 32)
      s += Dt<T>::to_float(static_cast<const T*>(a.dout)[row * a.do_tok + h * a.do_head + d]) *
           Dt<T>::to_float(static_cast<const T*>(a.out)[row * a.o_tok + h * a.o_head + d]);
    for (int o = 16; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) {
      sm.delta[hh] = s;
      sm.lse[hh] = a.lse[h * a.total + row];
    }
  }
  if (tid < G && a.kind == Kind::moa && ri.valid) {
    const int w = moa_window(a.alpha[h0 + tid], a.beta[h0 + tid], ri.len);
    sm.win_begin[tid] = max(0, t - w + 1);
  }
  if (a.kind == Kind::moba)
    for (int x = tid; x < G * a.past_k; x += kThreads) {
      const int hh = x / a.past_k, s = x % a.past_k;
      sm.sel[hh][s] = a.selection[(std::int64_t(row) * a.hq + h0 + hh) * a.past_k + s];
    }
  __syncthreads();

  // The union of the heads' key ranges (none for a row without keys: dq = 0).
  if (tid == 0) {
    sm.r_off[0] = 0;
    sm.n_ranges = !ri.valid || t < 0
                      ? 0
                      : decode::build_key_ranges(a.kind, t, G, a.sink, sm.win_begin, a.block_size,
                                         a.own_block, a.past_k,
                                         [&](int hh, int s) { return sm.sel[hh][s]; }, sm.r_begin,
                                         sm.r_off, nullptr);
  }
  __syncthreads();
  const int n_ranges = sm.n_ranges;
  const int total_keys = sm.r_off[n_ranges];
  const std::int64_t table_base = (std::int64_t(ri.slot) * a.hkv + g) * a.pages_per_seq;

  float acc[kPerThread];
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) acc[i] = 0.f;

  for (int k0 = 0; k0 < total_keys; k0 += kTile) {
    const int nk = min(kTile, total_keys - k0);
    // Positions and page rows of the tile's keys.
    if (tid < kTile) {
      int pos = -1;
      std::int64_t prow = -1;
      if (tid < nk) {
        const int u = k0 + tid;
        int lo = 0, hi = n_ranges - 1;  // the range holding union index u
        while (lo < hi) {
          const int mid = (lo + hi + 1) / 2;
          if (sm.r_off[mid] <= u) lo = mid;
          else hi = mid - 1;
        }
        pos = sm.r_begin[lo] + (u - sm.r_off[lo]);
        const int col = pos / a.page_size;
        if (col < a.pages_per_seq) {
          const int page = __ldg(a.table + table_base + col);
          if (page >= 0 && page < a.num_pages) prow = std::int64_t(page) * a.page_size + pos % a.page_size;
        }
      }
      sm.key_pos[tid] = pos;
      sm.key_row[tid] = prow;
    }
    __syncthreads();
    for (int x = tid; x < kTile * D; x += kThreads) {
      const int j = x / D, d = x % D;
      const std::int64_t prow = sm.key_row[j];
      T kx = Dt<T>::from_float(0.f), vx = kx;
      if (prow >= 0) {
        kx = static_cast<const T*>(a.k_pages)[prow * D + d];
        vx = static_cast<const T*>(a.v_pages)[prow * D + d];
      }
      sm.k[j][d] = kx;
      sm.v[j][d] = vx;
    }
    __syncthreads();
    // P and dS of every (head, key) of the tile, masked to what the head itself sees.
    for (int x = tid; x < G * kTile; x += kThreads) {
      const int hh = x / kTile, j = x % kTile;
      const int pos = sm.key_pos[j];
      bool visible = pos >= 0 && sm.key_row[j] >= 0 && sm.lse[hh] != -INFINITY;
      if (visible && a.kind == Kind::moa) visible = pos < a.sink || pos >= sm.win_begin[hh];
      if (visible && a.kind == Kind::moba) {
        const int blk = pos / a.block_size, own = t / a.block_size;
        bool seen = a.own_block && blk == own;
        for (int s = 0; s < a.past_k && !seen; ++s) seen = sm.sel[hh][s] == blk && blk < own;
        visible = seen;
      }
      float pj = 0.f, dsj = 0.f;
      if (visible) {
        float s = 0.f, dp = 0.f;
#pragma unroll 8
        for (int d = 0; d < D; ++d) {
          s += sm.q[hh][d] * Dt<T>::to_float(sm.k[j][d]);
          dp += sm.dout[hh][d] * Dt<T>::to_float(sm.v[j][d]);
        }
        pj = expf(s - sm.lse[hh]);
        dsj = pj * (dp - sm.delta[hh]);
      }
      sm.p[hh][j] = pj;
      sm.ds[hh][j] = dsj;
    }
    __syncthreads();
    // dq: thread owns (head, d) pairs tid, tid + kThreads, ...
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      const int x = tid + i * kThreads;
      if (x < G * D) {
        const int hh = x / D, d = x % D;
        float s = 0.f;
        for (int j = 0; j < nk; ++j) s += sm.ds[hh][j] * Dt<T>::to_float(sm.k[j][d]);
        acc[i] += s;
      }
    }
    // dK / dV of the tile's keys, summed over the CTA's heads, then one atomic each.
    for (int x = tid; x < nk * D; x += kThreads) {
      const int j = x / D, d = x % D;
      const std::int64_t prow = sm.key_row[j];
      if (prow < 0) continue;
      float dk = 0.f, dv = 0.f;
      for (int hh = 0; hh < G; ++hh) {
        dk += sm.ds[hh][j] * sm.q[hh][d];
        dv += sm.p[hh][j] * sm.dout[hh][d];
      }
      if (dk != 0.f) atomicAdd(a.dk + prow * D + d, dk);
      if (dv != 0.f) atomicAdd(a.dv + prow * D + d, dv);
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    const int x = tid + i * kThreads;
    if (x < G * D) {
      const int hh = x / D, d = x % D;
      static_cast<T*>(a.dq)[row * a.dq_tok + std::int64_t(h0 + hh) * a.dq_head + d] =
          Dt<T>::from_float(a.scale * acc[i]);
    }
  }
}

template <class T>
__global__ void to_dtype_kernel(const float* __restrict__ src, T* __restrict__ dst, std::int64_t n) {
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n;
       i += std::int64_t(gridDim.x) * blockDim.x)
    dst[i] = Dt<T>::from_float(src[i]);
}

}  // namespace moba::cuda::paged
