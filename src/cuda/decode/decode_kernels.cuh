// Paged decode / chunked prefill on the GPU (moba/paged_attention.hpp, moba/kv_cache.hpp).
//
// attention: split-KV (flash-decoding). One CTA = (query row, up to kMaxGroup query heads of one
// KV head, split). It gathers the union of its heads' key ranges (full: 0..t; MoA: sink and the
// widest window; MoBA: the blocks any of its heads selected plus the own block), walks its
// split's share of that union in tiles of 64 keys gathered from the pages (each tile read once
// for all its heads: GQA without repeated K/V traffic), masks per head, and keeps one online
// softmax per head in fp32 (base 2). Splits write (m, l, acc) and a merge kernel combines them by
// log-sum-exp in a fixed order. Only the selected pages are read.
// This is the CUDA-core kernel, for GQA groups of < kMmaMinGroup heads; larger groups take the
// tensor-core kernel of decode_mma.cuh (same key list, same partial layout, same combine).
// gate: one CTA = (query row, head chunk): scores of every completed past block against the
// cached means (read once for the chunk's heads), then top-(k-1) with ties to the earlier block
// (rounds over the head's scores staged in shared memory). With few rows and many blocks the
// scoring is spread over score_splits CTAs and a second launch selects.
// append: copy kernel (token x KV head), block-sum kernel (sequence x KV head, exact fp64 sums
// in token order, a mean written when its block completes), then seq_lens += n.
// Kernel arguments are __grid_constant__ structs (the MoA windows of every head included): read
// in place, never copied per thread.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <climits>
#include <cstdint>

#include "cuda/common/check.hpp"
#include "cuda/common/dtype.cuh"
#include "cuda/decode/decode_mma.cuh"
#include "cuda/decode/decode_params.hpp"
#include "cuda/decode/decode_rows.cuh"

namespace moba::cuda::decode {

// ---------------------------------------------------------------------------------------------
// Attention

template <class T, int D>
struct AttnSmem {
  static constexpr int kStride = D + 2;  // odd number of 32-bit words per row: no bank conflicts
  T k[kTile][kStride];
  T v[kTile][kStride];
  float q[kMaxGroup][D];
  float s[kMaxGroup][kTile];
  float m[kMaxGroup], l[kMaxGroup], alpha[kMaxGroup];
  int sel[kMaxGroup][kMaxPast];
  int win_begin[kMaxGroup];
  int r_begin[kMaxRanges], r_off[kMaxRanges + 1];
  int n_ranges;
  int key_pos[kTile];
};

template <class T, int D>
__global__ void __launch_bounds__(kThreads) attention_kernel(const __grid_constant__ AttentionArgs a) {
  using S = AttnSmem<T, D>;
  __shared__ S sm;
  const int row = blockIdx.x;
  const int g = blockIdx.y / a.head_chunks;
  const int h0 = g * a.group + (blockIdx.y % a.head_chunks) * kMaxGroup;
  const int G = min(kMaxGroup, g * a.group + a.group - h0);
  const int split = blockIdx.z;
  const int tid = threadIdx.x;
  const RowInfo ri = locate(a.rows, row);
  const int t = ri.t;

  // Queries (pre-scaled for exp2), per-head state, selections / windows.
  for (int x = tid; x < G * D; x += kThreads) {
    const int hh = x / D, d = x % D;
    const T* qp = static_cast<const T*>(a.q) + row * a.q_tok + (h0 + hh) * a.q_head + d;
    sm.q[hh][d] = Dt<T>::to_float(*qp) * a.scale_log2;
  }
  if (tid < G) {
    sm.m[tid] = -INFINITY;
    sm.l[tid] = 0.f;
    if (a.kind == Kind::moa) {
      const int w = moa_window(a.alpha[h0 + tid], a.beta[h0 + tid], ri.len);
      sm.win_begin[tid] = max(0, t - w + 1);
    }
  }
  if (a.kind == Kind::moba)
    for (int x = tid; x < G * a.past_k; x += kThreads) {
      const int hh = x / a.past_k, s = x % a.past_k;
      sm.sel[hh][s] = a.selection[(std::int64_t(row) * a.hq + h0 + hh) * a.past_k + s];
    }
  __syncthreads();

  if (tid == 0)
    sm.n_ranges = build_key_ranges(a.kind, t, G, a.sink, sm.win_begin, a.block_size, a.own_block,
                                   a.past_k, [&](int hh, int s) { return sm.sel[hh][s]; },
                                   sm.r_begin, sm.r_off, nullptr);
  __syncthreads();
  const int n_ranges = sm.n_ranges;
  const int total_keys = sm.r_off[n_ranges];
  const int key_begin = int(std::int64_t(total_keys) * split / a.splits);
  const int key_end = int(std::int64_t(total_keys) * (split + 1) / a.splits);

  // PV ownership: thread -> (d, first head); heads step by kThreads / D.
  constexpr int kHeadLanes = kThreads / D;
  constexpr int kAccHeads = (kMaxGroup + kHeadLanes - 1) / kHeadLanes;
  const int my_d = tid % D, my_h = tid / D;
  float acc[kAccHeads];
#pragma unroll
  for (int x = 0; x < kAccHeads; ++x) acc[x] = 0.f;

  const std::int64_t table_row = (std::int64_t(ri.slot) * a.hkv + g) * a.pages.pages_per_seq;
  const T* kp = static_cast<const T*>(a.pages.k);
  const T* vp = static_cast<const T*>(a.pages.v);
  const int P = a.pages.page_size;
  const int warp = tid / 32, lane = tid % 32;

  for (int tile = key_begin; tile < key_end; tile += kTile) {
    const int nk = min(kTile, key_end - tile);
    // Positions of the tile's keys.
    if (tid < kTile) {
      int pos = -1;
      if (tid < nk) {
        const int f = tile + tid;
        int lo = 0, hi = n_ranges - 1;
        while (lo < hi) {
          const int mid = (lo + hi + 1) / 2;
          if (sm.r_off[mid] <= f) lo = mid;
          else hi = mid - 1;
        }
        pos = sm.r_begin[lo] + (f - sm.r_off[lo]);
      }
      sm.key_pos[tid] = pos;
    }
    __syncthreads();
    // Gather K and V rows from their pages: 16-byte global loads (all issued before the shared
    // stores), 32-bit shared stores (rows are odd-word strided for the score reads).
    constexpr int kChunks = D / 8;  // 16-byte pieces per row
    constexpr int kPer = kTile * kChunks / kThreads;
    uint4 kr[kPer], vr[kPer];
#pragma unroll
    for (int u = 0; u < kPer; ++u) {
      const int x = tid + u * kThreads, j = x / kChunks, c = x % kChunks;
      const int pos = sm.key_pos[j];
      const bool in_table = pos >= 0 && pos / P < a.pages.pages_per_seq;
      const int page = in_table ? __ldg(a.pages.table + table_row + pos / P) : -1;
      kr[u] = make_uint4(0, 0, 0, 0);
      vr[u] = kr[u];
      if (page >= 0 && page < a.pages.num_pages) {  // the GPU trusts the table; never reads outside
        const std::int64_t at = (std::int64_t(page) * P + pos % P) * D + 8 * c;
        kr[u] = __ldg(reinterpret_cast<const uint4*>(kp + at));
        vr[u] = __ldg(reinterpret_cast<const uint4*>(vp + at));
      }
    }
#pragma unroll
    for (int u = 0; u < kPer; ++u) {
      const int x = tid + u * kThreads, j = x / kChunks, c = x % kChunks;
      std::uint32_t* kd = reinterpret_cast<std::uint32_t*>(&sm.k[j][8 * c]);
      std::uint32_t* vd = reinterpret_cast<std::uint32_t*>(&sm.v[j][8 * c]);
      kd[0] = kr[u].x, kd[1] = kr[u].y, kd[2] = kr[u].z, kd[3] = kr[u].w;
      vd[0] = vr[u].x, vd[1] = vr[u].y, vd[2] = vr[u].z, vd[3] = vr[u].w;
    }
    __syncthreads();
    // Scores: thread -> key j, heads hh = tid / kTile + 2k; masked per head.
    {
      const int j = tid % kTile;
      const int pos = sm.key_pos[j];
      for (int hh = tid / kTile; hh < G; hh += kThreads / kTile) {
        float sc = -INFINITY;
        bool visible = pos >= 0;
        if (visible && a.kind == Kind::moa) visible = pos < a.sink || pos >= sm.win_begin[hh];
        if (visible && a.kind == Kind::moba) {
          const int blk = pos / a.block_size;
          visible = blk == t / a.block_size ? a.own_block : false;
          if (!visible)
            for (int s = 0; s < a.past_k; ++s) visible |= sm.sel[hh][s] == blk;
        }
        if (visible) {
          float acc_s = 0.f;
#pragma unroll 8
          for (int w = 0; w < D / 2; ++w) {
            const float2 kv = Dt<T>::unpack(*reinterpret_cast<const std::uint32_t*>(&sm.k[j][2 * w]));
            acc_s = fmaf(sm.q[hh][2 * w], kv.x, acc_s);
            acc_s = fmaf(sm.q[hh][2 * w + 1], kv.y, acc_s);
          }
          sc = acc_s;
        }
        sm.s[hh][j] = sc;
      }
    }
    __syncthreads();
    // Online softmax per head: warp w takes heads w, w + 4, ...
    for (int hh = warp; hh < G; hh += kThreads / 32) {
      const float s0 = sm.s[hh][lane], s1 = sm.s[hh][lane + 32];
      float mx = fmaxf(s0, s1);
      for (int o = 16; o > 0; o /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
      const float m_old = sm.m[hh];
      const float m_new = fmaxf(m_old, mx);
      const float p0 = m_new == -INFINITY ? 0.f : exp2f(s0 - m_new);
      const float p1 = m_new == -INFINITY ? 0.f : exp2f(s1 - m_new);
      float sum = p0 + p1;
      for (int o = 16; o > 0; o /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, o);
      __syncwarp();
      sm.s[hh][lane] = p0;
      sm.s[hh][lane + 32] = p1;
      if (lane == 0) {
        const float alpha = m_new == -INFINITY ? 1.f : exp2f(m_old - m_new);
        sm.alpha[hh] = alpha;
        sm.l[hh] = sm.l[hh] * alpha + sum;
        sm.m[hh] = m_new;
      }
    }
    __syncthreads();
    // P.V
#pragma unroll
    for (int x = 0; x < kAccHeads; ++x) {
      const int hh = my_h + x * kHeadLanes;
      if (hh >= G) break;
      float o = acc[x] * sm.alpha[hh];
      for (int j = 0; j < nk; ++j) o = fmaf(sm.s[hh][j], Dt<T>::to_float(sm.v[j][my_d]), o);
      acc[x] = o;
    }
    __syncthreads();
  }

  // Results: the final output (one split) or this split's (m, l, acc).
#pragma unroll
  for (int x = 0; x < kAccHeads; ++x) {
    const int hh = my_h + x * kHeadLanes;
    if (hh >= G) break;
    const int h = h0 + hh;
    const float m = sm.m[hh], l = sm.l[hh];
    if (a.splits == 1) {
      T* o = static_cast<T*>(a.out) + row * a.o_tok + h * a.o_head + my_d;
      *o = Dt<T>::from_float(l > 0.f ? acc[x] / l : 0.f);
      if (my_d == 0) a.lse[std::int64_t(h) * a.rows.total + row] = l > 0.f ? (m + log2f(l)) * kLn2 : -INFINITY;
    } else {
      float* p = a.partial + ((std::int64_t(split) * a.rows.total + row) * a.hq + h) * (D + 2);
      if (my_d == 0) {
        p[0] = m;
        p[1] = l;
      }
      p[2 + my_d] = acc[x];
    }
  }
}

// Combines the splits of one (row, head): the splits' maxima and weights are computed in
// parallel (thread s takes splits s, s + D, ...) and reduced in a fixed tree, then thread d sums
// its column over the splits with several loads in flight (a serial walk of the splits, one
// dependent L2 round trip each, would cost tens of microseconds at 100+ splits).
template <int D>
__device__ __forceinline__ float block_reduce(float v, float* red, bool is_max) {
  for (int o = 16; o > 0; o /= 2) {
    const float w = __shfl_xor_sync(0xffffffffu, v, o);
    v = is_max ? fmaxf(v, w) : v + w;
  }
  __syncthreads();  // red is reused by consecutive reductions
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
  __syncthreads();
  v = red[0];
#pragma unroll
  for (int w = 1; w < D / 32; ++w) v = is_max ? fmaxf(v, red[w]) : v + red[w];
  return v;
}

template <class T, int D>
__global__ void __launch_bounds__(D) combine_kernel(const __grid_constant__ AttentionArgs a) {
  __shared__ float weight[kMaxSplits];
  __shared__ float red[D / 32];
  const int row = blockIdx.x, h = blockIdx.y, d = threadIdx.x;
  const std::int64_t stride = std::int64_t(a.rows.total) * a.hq * (D + 2);
  const float* p = a.partial + (std::int64_t(row) * a.hq + h) * (D + 2);
  float mx = -INFINITY;
  for (int s = d; s < a.splits; s += D) {
    const float m = p[s * stride], l = p[s * stride + 1];
    weight[s] = l > 0.f ? m : -INFINITY;
    mx = fmaxf(mx, weight[s]);
  }
  const float M = block_reduce<D>(mx, red, true);
  float lsum = 0.f;
  for (int s = d; s < a.splits; s += D) {
    const float w = weight[s] == -INFINITY ? 0.f : exp2f(weight[s] - M);
    lsum += w * p[s * stride + 1];
    weight[s] = w;
  }
  const float L = block_reduce<D>(lsum, red, false);  // its barriers publish weight[]
  float acc = 0.f;
#pragma unroll 8
  for (int s = 0; s < a.splits; ++s) acc = fmaf(weight[s], p[s * stride + 2 + d], acc);
  T* o = static_cast<T*>(a.out) + row * a.o_tok + h * a.o_head + d;
  *o = Dt<T>::from_float(L > 0.f ? acc / L : 0.f);
  if (d == 0) a.lse[std::int64_t(h) * a.rows.total + row] = L > 0.f ? (M + log2f(L)) * kLn2 : -INFINITY;
}

// ---------------------------------------------------------------------------------------------
// Gate

__device__ __forceinline__ bool better(float s1, int j1, float s2, int j2) {
  return s1 > s2 || (s1 == s2 && j1 < j2);
}

template <class T, int D>
__global__ void __launch_bounds__(kThreads) gate_kernel(const __grid_constant__ GateArgs a) {
  __shared__ float q[kMaxGroup][D];
  __shared__ float red_s[kThreads / 32];
  __shared__ int red_j[kThreads / 32];
  __shared__ int picked[kMaxPast];
  extern __shared__ float sc_smem[];  // a.smem_blocks scores
  const int row = blockIdx.x;
  const int g = blockIdx.y / a.head_chunks;
  const int h0 = g * a.group + (blockIdx.y % a.head_chunks) * kMaxGroup;
  const int G = min(kMaxGroup, g * a.group + a.group - h0);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const RowInfo ri = locate(a.rows, row);
  const int own = max(0, min(ri.t / a.block_size, a.max_blocks));  // (the host sized the means)
  const int keep = min(a.past_k, own);
  float* scores = a.scores + (std::int64_t(row) * a.hq + h0) * a.max_blocks;
  if (a.phase != GatePhase::select && keep < own) {
    for (int x = tid; x < G * D; x += kThreads) {
      const int hh = x / D, d = x % D;
      q[hh][d] = Dt<T>::to_float(static_cast<const T*>(a.q)[row * a.q_tok + (h0 + hh) * a.q_head + d]);
    }
    __syncthreads();
    const T* means = static_cast<const T*>(a.means) + (std::int64_t(ri.slot) * a.hkv + g) * a.max_blocks * D;
    const int j_end = int(std::int64_t(own) * (blockIdx.z + 1) / gridDim.z);  // this CTA's slice
    for (int j = int(std::int64_t(own) * blockIdx.z / gridDim.z) + tid; j < j_end; j += kThreads) {
      float acc[kMaxGroup];
#pragma unroll
      for (int hh = 0; hh < kMaxGroup; ++hh) acc[hh] = 0.f;
      const T* mrow = means + std::int64_t(j) * D;
      for (int d = 0; d < D; d += 2) {
        const float2 m = Dt<T>::unpack(__ldg(reinterpret_cast<const std::uint32_t*>(mrow + d)));
#pragma unroll
        for (int hh = 0; hh < kMaxGroup; ++hh) {
          if (hh < G) {
            acc[hh] = fmaf(q[hh][d], m.x, acc[hh]);
            acc[hh] = fmaf(q[hh][d + 1], m.y, acc[hh]);
          }
        }
      }
#pragma unroll
      for (int hh = 0; hh < kMaxGroup; ++hh)
        if (hh < G) scores[std::int64_t(hh) * a.max_blocks + j] = acc[hh];
    }
    __syncthreads();
  }
  if (a.phase == GatePhase::score) return;
  for (int hh = 0; hh < G; ++hh) {
    int* out = a.selection + (std::int64_t(row) * a.hq + h0 + hh) * a.past_k;
    if (keep == own) {  // every past block is kept
      for (int s = tid; s < a.past_k; s += kThreads) out[s] = s < own ? s : -1;
      continue;
    }
    // The head's scores move to shared memory when they fit (one coalesced read): the k - 1
    // rounds below then scan shared memory instead of making a dependent L2 trip per element.
    float* sc = scores + std::int64_t(hh) * a.max_blocks;
    if (own <= a.smem_blocks) {
      __syncthreads();  // the previous head's rounds are done with sc_smem
      for (int j = tid; j < own; j += kThreads) sc_smem[j] = sc[j];
      __syncthreads();
      sc = sc_smem;
    }
    for (int r = 0; r < keep; ++r) {
      float bs = -INFINITY;
      int bj = INT_MAX;
      for (int j = tid; j < own; j += kThreads) {
        const float s = sc[j];
        if (better(s, j, bs, bj)) bs = s, bj = j;
      }
      for (int o = 16; o > 0; o /= 2) {
        const float s2 = __shfl_xor_sync(0xffffffffu, bs, o);
        const int j2 = __shfl_xor_sync(0xffffffffu, bj, o);
        if (better(s2, j2, bs, bj)) bs = s2, bj = j2;
      }
      if (lane == 0) red_s[warp] = bs, red_j[warp] = bj;
      __syncthreads();
      if (tid == 0) {
        for (int w = 1; w < kThreads / 32; ++w)
          if (better(red_s[w], red_j[w], bs, bj)) bs = red_s[w], bj = red_j[w];
        picked[r] = bj;
        sc[bj] = -INFINITY;  // out of the next rounds (scores are finite)
      }
      __syncthreads();
    }
    if (tid == 0) {  // ascending block indices, then -1
      for (int x = 1; x < keep; ++x)
        for (int y = x; y > 0 && picked[y - 1] > picked[y]; --y) {
          const int tmp = picked[y];
          picked[y] = picked[y - 1];
          picked[y - 1] = tmp;
        }
      for (int s = 0; s < a.past_k; ++s) out[s] = s < keep ? picked[s] : -1;
    }
    __syncthreads();
  }
}

// ---------------------------------------------------------------------------------------------
// Append

template <class T, int D>
__global__ void append_copy_kernel(const __grid_constant__ AppendArgs a) {
  const int token = blockIdx.x, g = blockIdx.y, d = threadIdx.x;
  const RowInfo ri = locate(a.rows, token);  // t = len - n + i with len before the append
  const int pos = ri.len + ri.i;
  if (pos >= a.pages_per_seq * a.page_size) return;  // the host checked; never write outside
  const int page = __ldg(a.table + (std::int64_t(ri.slot) * a.hkv + g) * a.pages_per_seq + pos / a.page_size);
  if (page < 0 || page >= a.num_pages) return;
  const std::int64_t at = (std::int64_t(page) * a.page_size + pos % a.page_size) * D + d;
  static_cast<T*>(a.k_pages)[at] = static_cast<const T*>(a.k)[token * a.k_tok + g * a.k_head + d];
  static_cast<T*>(a.v_pages)[at] = static_cast<const T*>(a.v)[token * a.v_tok + g * a.v_head + d];
}

template <class T, int D>
__global__ void append_means_kernel(const __grid_constant__ AppendArgs a) {
  const int b = blockIdx.x, g = blockIdx.y, d = threadIdx.x;
  const int slot = a.rows.slots ? a.rows.slots[b] : b;
  const int c0 = a.rows.cu[b], n = a.rows.cu[b + 1] - c0;
  if (n == 0) return;
  const int len = a.rows.seq_lens[slot];
  double* sum_p = a.block_sums + (std::int64_t(slot) * a.hkv + g) * D + d;
  double sum = *sum_p;
  T* means = static_cast<T*>(a.means) + (std::int64_t(slot) * a.hkv + g) * a.max_blocks * D + d;
  const T* k = static_cast<const T*>(a.k) + g * a.k_head + d;
  for (int i = 0; i < n; ++i) {
    sum += double(Dt<T>::to_float(k[(c0 + i) * a.k_tok]));
    const int pos = len + i;
    if ((pos + 1) % a.block_size == 0 && pos / a.block_size < a.max_blocks) {
      means[std::int64_t(pos / a.block_size) * D] = Dt<T>::from_float(static_cast<float>(sum) / static_cast<float>(a.block_size));
      sum = 0.0;
    }
  }
  *sum_p = sum;
}

// static: this header is compiled once per dtype (decode_f16.cu, decode_bf16.cu); the kernel
// is not a template, so each unit keeps its own copy.
static __global__ void append_lengths_kernel(const __grid_constant__ AppendArgs a) {
  for (int b = threadIdx.x; b < a.rows.batch; b += blockDim.x) {
    const int slot = a.rows.slots ? a.rows.slots[b] : b;
    a.seq_lens_out[slot] += a.rows.cu[b + 1] - a.rows.cu[b];
  }
}

// ---------------------------------------------------------------------------------------------
// Merge of two partial states

template <class T>
__global__ void merge_kernel(const __grid_constant__ MergeArgs a) {
  const int t = blockIdx.x, h = blockIdx.y;
  const std::int64_t li = std::int64_t(h) * a.total + t;
  const float la = a.lse_a[li], lb = a.lse_b[li];
  const float m = fmaxf(la, lb);
  const float wa = la == -INFINITY ? 0.f : expf(la - m);
  const float wb = lb == -INFINITY ? 0.f : expf(lb - m);
  const float sum = wa + wb;
  for (int d = threadIdx.x; d < a.head_dim; d += blockDim.x) {
    const float x = Dt<T>::to_float(static_cast<const T*>(a.a)[t * a.a_tok + h * a.a_head + d]);
    const float y = Dt<T>::to_float(static_cast<const T*>(a.b)[t * a.b_tok + h * a.b_head + d]);
    static_cast<T*>(a.out)[t * a.o_tok + h * a.o_head + d] = Dt<T>::from_float(sum > 0.f ? (wa * x + wb * y) / sum : 0.f);
  }
  __syncthreads();  // out may alias a: every read above happened before lse is written
  if (threadIdx.x == 0) a.lse[li] = sum > 0.f ? m + logf(sum) : -INFINITY;
}

// ---------------------------------------------------------------------------------------------
// Launchers

// The tensor-core kernel's shared memory exceeds the 48 KB default: opt in once per device (a
// function attribute each device keeps; later calls, e.g. while a graph is captured, make no
// CUDA call for it).
template <class T, int D>
int mma_smem_opt_in() {
  constexpr int kDevices = 64;
  static std::atomic<bool> done[kDevices];
  const int bytes = static_cast<int>(mma_smem_bytes<T, D>());
  int dev = 0;
  MOBA_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev < kDevices && done[dev].load()) return bytes;
  MOBA_CUDA_CHECK(cudaFuncSetAttribute(attention_mma_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  if (dev < kDevices) done[dev].store(true);
  return bytes;
}

template <class T, int D>
void attention_launch(const AttentionArgs& a, cudaStream_t s) {
  const dim3 grid(a.rows.total, a.hkv * a.head_chunks, a.splits);
  if (uses_tensor_cores(a.group)) attention_mma_kernel<T, D><<<grid, kThreads, mma_smem_opt_in<T, D>(), s>>>(a);
  else attention_kernel<T, D><<<grid, kThreads, 0, s>>>(a);
  if (a.splits > 1) combine_kernel<T, D><<<dim3(a.rows.total, a.hq), D, 0, s>>>(a);
}

// Cached per device and kernel: the first call (normally an eager one) asks the occupancy API,
// later ones (e.g. while a graph is being captured) read the cache.
template <class T, int D>
int attention_ctas_per_sm(int group) {
  constexpr int kDevices = 64;
  static std::atomic<int> cached[2][kDevices];
  const int mma = uses_tensor_cores(group) ? 1 : 0;
  int dev = 0;
  MOBA_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev < kDevices && cached[mma][dev].load() > 0) return cached[mma][dev].load();
  int n = 0;
  if (mma)
    MOBA_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, attention_mma_kernel<T, D>, kThreads, mma_smem_opt_in<T, D>()));
  else
    MOBA_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, attention_kernel<T, D>, kThreads, 0));
  n = std::max(n, 1);
  if (dev < kDevices) cached[mma][dev].store(n);
  return n;
}

template <class T, int D>
void gate_launch(const GateArgs& a, cudaStream_t s) {
  const dim3 grid(a.rows.total, a.hkv * a.head_chunks);
  if (a.score_splits <= 1) {
    gate_kernel<T, D><<<grid, kThreads, a.smem_blocks * sizeof(float), s>>>(a);
    return;
  }
  // Many blocks, few rows: the scores over the means spread over score_splits CTAs per (row,
  // head chunk), then one CTA each picks the top k - 1.
  GateArgs score = a, select = a;
  score.phase = GatePhase::score;
  select.phase = GatePhase::select;
  gate_kernel<T, D><<<dim3(grid.x, grid.y, a.score_splits), kThreads, 0, s>>>(score);
  gate_kernel<T, D><<<grid, kThreads, a.smem_blocks * sizeof(float), s>>>(select);
}

template <class T, int D>
void append_launch(const AppendArgs& a, cudaStream_t s) {
  if (a.rows.total > 0) append_copy_kernel<T, D><<<dim3(a.rows.total, a.hkv), D, 0, s>>>(a);
  if (a.block_size > 0) append_means_kernel<T, D><<<dim3(a.rows.batch, a.hkv), D, 0, s>>>(a);
  append_lengths_kernel<<<1, 256, 0, s>>>(a);
}

template <class T>
void launch_attention(const AttentionArgs& a, int head_dim, cudaStream_t s) {
  if (head_dim == 64) attention_launch<T, 64>(a, s);
  else attention_launch<T, 128>(a, s);
}

template <class T>
int resident_attention_ctas(int group, int head_dim) {
  return head_dim == 64 ? attention_ctas_per_sm<T, 64>(group) : attention_ctas_per_sm<T, 128>(group);
}

template <class T>
void launch_gate(const GateArgs& a, int head_dim, cudaStream_t s) {
  if (head_dim == 64) gate_launch<T, 64>(a, s);
  else gate_launch<T, 128>(a, s);
}

template <class T>
void launch_append(const AppendArgs& a, int head_dim, cudaStream_t s) {
  if (head_dim == 64) append_launch<T, 64>(a, s);
  else append_launch<T, 128>(a, s);
}

template <class T>
void launch_merge(const MergeArgs& a, cudaStream_t s) {
  merge_kernel<T><<<dim3(a.total, a.heads), 128, 0, s>>>(a);
}

#define MOBA_DECODE_INSTANTIATE(T)                                              \
  template void launch_attention<T>(const AttentionArgs&, int, cudaStream_t);   \
  template int resident_attention_ctas<T>(int, int);                             \
  template void launch_gate<T>(const GateArgs&, int, cudaStream_t);             \
  template void launch_append<T>(const AppendArgs&, int, cudaStream_t);         \
  template void launch_merge<T>(const MergeArgs&, cudaStream_t);

}  // namespace moba::cuda::decode
