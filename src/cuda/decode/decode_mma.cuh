// Tensor-core split-KV decode attention (the path for GQA groups of >= kMmaMinGroup query heads).
//
// One CTA = (query row, up to kMaxGroup query heads of one KV head, split), like the CUDA-core
// kernel in decode_kernels.cuh, and the same key list: the union of the heads' key ranges,
// walked once for all heads. What differs is how the list is walked:
//   - the 4 warps are independent: warp w takes the 16-key chunks w, w+4, ... of the split and
//     keeps its own online softmax, so the main loop has no CTA barrier;
//   - a warp gathers its chunks' K and V rows from the pages with 16-byte cp.async into a
//     kStages-deep ring in shared memory (a chunk is 16 keys x D, 4-8 KB of K+V in flight per
//     stage per warp), issuing chunk i + kStages - 1 before it waits for chunk i;
//   - S = Q K^T and O += P V are mma.sync m16n8k16: the group's query heads are the 16 rows of
//     the A operand (rows >= G are zero), K / V fragments come from ldmatrix (V transposed), P
//     goes from the S accumulators to the A operand of PV in registers (FlashAttention-2 style).
// Scores are scaled after the fp32-accumulated QK (exact products of the stored dtype), P is
// rounded to the stored dtype for PV, as in the prefill kernels. At the end the 4 warps' states
// merge through shared memory into the final output or the split's (m, l, acc) for the
// combine kernel (the same partial layout as the CUDA-core kernel).
// Visibility per (head, key) is a bitmask per key: bit hh = head h0 + hh sees it (full: every
// key of the row's range; MoBA: the heads that selected the key's block, or all heads for the
// own block; MoA: sink or inside the head's window).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common/dtype.cuh"
#include "cuda/common/mma.cuh"
#include "cuda/decode/decode_params.hpp"
#include "cuda/decode/decode_rows.cuh"

namespace moba::cuda::decode {

constexpr int kChunk = 16;                  // keys per warp step (the mma's k / n extent)
constexpr int kWarps = kThreads / 32;
constexpr int kStages = 3;                  // cp.async ring depth per warp

template <class T, int D>
struct MmaSmem {
  static constexpr int kStride = D + 8;     // 16-byte rows; ldmatrix rows hit distinct banks
  union {
    T kv[kWarps][kStages][2][kChunk][kStride];  // per warp: ring of (K, V) chunks
    struct {                                    // after the loop: the warps' states
      float o[kWarps][kMaxGroup][D];
      float m[kWarps][kMaxGroup], l[kWarps][kMaxGroup];
    } fin;
  };
  unsigned key_mask[kWarps][kStages][kChunk];   // visibility bits of each staged key
  int sel[kMaxGroup][kMaxPast];
  int win_begin[kMaxGroup];
  int r_begin[kMaxRanges], r_off[kMaxRanges + 1];
  unsigned r_mask[kMaxRanges];
  int n_ranges;
};

template <class T, int D>
constexpr std::size_t mma_smem_bytes() {
  return sizeof(MmaSmem<T, D>);
}

template <class T, int D>
__global__ void __launch_bounds__(kThreads) attention_mma_kernel(const __grid_constant__ AttentionArgs a) {
  using S = MmaSmem<T, D>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  S& sm = *reinterpret_cast<S*>(smem_raw);
  const int row = blockIdx.x;
  const int g = blockIdx.y / a.head_chunks;
  const int h0 = g * a.group + (blockIdx.y % a.head_chunks) * kMaxGroup;
  const int G = min(kMaxGroup, g * a.group + a.group - h0);
  const int split = blockIdx.z;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int fr = lane / 4, fc = lane % 4;  // fragment row (head) and column pair
  // Q as A fragments (row fr = head h0 + fr; rows >= G and rows 8..15 are zero), loaded first:
  // they do not depend on the chain of loads that locates the row.
  std::uint32_t qa[D / 16][2];
  {
    const T* qp = static_cast<const T*>(a.q) + row * a.q_tok + (h0 + min(fr, G - 1)) * a.q_head;
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      const int d0 = ks * 16 + 2 * fc;
      if (fr < G) {
        qa[ks][0] = Dt<T>::pack(Dt<T>::to_float(qp[d0]), Dt<T>::to_float(qp[d0 + 1]));
        qa[ks][1] = Dt<T>::pack(Dt<T>::to_float(qp[d0 + 8]), Dt<T>::to_float(qp[d0 + 9]));
      } else {
        qa[ks][0] = qa[ks][1] = 0u;
      }
    }
  }
  // MoBA: the heads' selections, into registers before the row is located (also independent).
  constexpr int kSelPer = (kMaxGroup * kMaxPast + kThreads - 1) / kThreads;
  const int n_sel = a.kind == Kind::moba ? G * a.past_k : 0;
  int sel_v[kSelPer];
#pragma unroll
  for (int u = 0; u < kSelPer; ++u) {
    const int x = tid + u * kThreads;
    sel_v[u] = x < n_sel ? a.selection[std::int64_t(row) * a.hq * a.past_k + std::int64_t(h0) * a.past_k + x] : -1;
  }
  const RowInfo ri = locate(a.rows, row);
  const int t = ri.t;
#pragma unroll
  for (int u = 0; u < kSelPer; ++u) {
    const int x = tid + u * kThreads;
    if (x < n_sel) sm.sel[x / a.past_k][x % a.past_k] = sel_v[u];
  }
  if (tid < G && a.kind == Kind::moa) {
    const int w = moa_window(a.alpha[h0 + tid], a.beta[h0 + tid], ri.len);
    sm.win_begin[tid] = max(0, t - w + 1);
  }
  __syncthreads();
  if (tid == 0)  // each range with the heads that see it
    sm.n_ranges = build_key_ranges(a.kind, t, G, a.sink, sm.win_begin, a.block_size, a.own_block,
                                   a.past_k, [&](int hh, int s) { return sm.sel[hh][s]; },
                                   sm.r_begin, sm.r_off, sm.r_mask);
  __syncthreads();
  const int n_ranges = sm.n_ranges;
  const int total_keys = sm.r_off[n_ranges];
  const int key_begin = int(std::int64_t(total_keys) * split / a.splits);
  const int key_end = int(std::int64_t(total_keys) * (split + 1) / a.splits);
  const int n_chunks = (key_end - key_begin + kChunk - 1) / kChunk;
  const int my_chunks = n_chunks > warp ? (n_chunks - warp + kWarps - 1) / kWarps : 0;

  const std::int64_t table_row = (std::int64_t(ri.slot) * a.hkv + g) * a.pages.pages_per_seq;
  const T* kp = static_cast<const T*>(a.pages.k);
  const T* vp = static_cast<const T*>(a.pages.v);
  const int P = a.pages.page_size;

  // Issue the copies of the warp's i-th chunk into ring stage st (and its keys' visibility).
  auto issue = [&](int i, int st) {
    const int first = key_begin + (warp + i * kWarps) * kChunk;
    int cache_row = -1;  // page * P + offset of the lane's key (lanes < kChunk), -1: zeros
    if (lane < kChunk) {
      unsigned mask = 0;
      const int f = first + lane;
      if (f < key_end) {
        int lo = 0, hi = n_ranges - 1;
        while (lo < hi) {
          const int mid = (lo + hi + 1) / 2;
          if (sm.r_off[mid] <= f) lo = mid;
          else hi = mid - 1;
        }
        const int pos = sm.r_begin[lo] + (f - sm.r_off[lo]);
        mask = sm.r_mask[lo];
        if (a.kind == Kind::moa && pos >= a.sink)
          for (int hh = 0; hh < G; ++hh)
            if (pos < sm.win_begin[hh]) mask &= ~(1u << hh);
        if (pos / P < a.pages.pages_per_seq) {
          const int page = __ldg(a.pages.table + table_row + pos / P);
          if (page >= 0 && page < a.pages.num_pages) cache_row = page * P + pos % P;  // the GPU trusts the table; never reads outside
        }
      }
      sm.key_mask[warp][st][lane] = mask;
    }
    constexpr int kPieces = D / 8;  // 16-byte pieces per row
#pragma unroll
    for (int u = 0; u < kChunk * kPieces / 32; ++u) {
      const int x = lane + 32 * u, j = x / kPieces, c = x % kPieces;
      const int r = __shfl_sync(0xffffffffu, cache_row, j);
      const std::int64_t at = r >= 0 ? std::int64_t(r) * D + 8 * c : 0;
      cp_async_16(&sm.kv[warp][st][0][j][8 * c], kp + at, r >= 0);
      cp_async_16(&sm.kv[warp][st][1][j][8 * c], vp + at, r >= 0);
    }
  };

  float o[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  float m_run = -INFINITY, l_run = 0.f;  // row fr's running max (base 2) and this lane's share of l

#pragma unroll
  for (int i = 0; i < kStages - 1; ++i) {
    if (i < my_chunks) issue(i, i);
    cp_async_commit();
  }
  for (int i = 0; i < my_chunks; ++i) {
    const int st = i % kStages;
    if (i + kStages - 1 < my_chunks) issue(i + kStages - 1, (i + kStages - 1) % kStages);
    cp_async_commit();
    cp_async_wait<kStages - 1>();
    __syncwarp();

    // S = Q K^T for the chunk's 16 keys (two n-tiles of 8 keys).
    float s[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
    const T(*kt)[S::kStride] = sm.kv[warp][st][0];
    const T(*vt)[S::kStride] = sm.kv[warp][st][1];
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      std::uint32_t b[4];
      ldsm_x4(b, smem_addr(&kt[(lane & 7) + 8 * (lane >> 4)][ks * 16 + 8 * ((lane >> 3) & 1)]));
      const std::uint32_t af[4] = {qa[ks][0], 0u, qa[ks][1], 0u};
      mma_16816<T>(s[0], af, b[0], b[1]);
      mma_16816<T>(s[1], af, b[2], b[3]);
    }
    // Online softmax of row fr over the chunk (its 16 scores sit in the 4 lanes of a quad).
    float x[4];
    float mx = -INFINITY;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int key = 8 * (e / 2) + 2 * fc + (e % 2);
      const bool vis = (sm.key_mask[warp][st][key] >> fr) & 1u;
      x[e] = vis ? s[e / 2][e % 2] * a.scale_log2 : -INFINITY;
      mx = fmaxf(mx, x[e]);
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float m_new = fmaxf(m_run, mx);
    const float alpha = m_new == -INFINITY ? 1.f : exp2f(m_run - m_new);
    float p[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) p[e] = m_new == -INFINITY ? 0.f : exp2f(x[e] - m_new);
    l_run = l_run * alpha + (p[0] + p[1]) + (p[2] + p[3]);
    m_run = m_new;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) o[n][0] *= alpha, o[n][1] *= alpha;
    // O += P V: P (row fr, keys 2fc.. and 8+2fc..) is the A operand; V^T fragments by ldmatrix.trans.
    const std::uint32_t pa[4] = {Dt<T>::pack(p[0], p[1]), 0u, Dt<T>::pack(p[2], p[3]), 0u};
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
      std::uint32_t b[4];
      ldsm_x4_t(b, smem_addr(&vt[(lane & 7) + 8 * ((lane >> 3) & 1)][dp * 16 + 8 * (lane >> 4)]));
      mma_16816<T>(o[2 * dp], pa, b[0], b[1]);
      mma_16816<T>(o[2 * dp + 1], pa, b[2], b[3]);
    }
    __syncwarp();  // every lane is done with stage st before it is refilled
  }
  cp_async_wait<0>();
  l_run += __shfl_xor_sync(0xffffffffu, l_run, 1);
  l_run += __shfl_xor_sync(0xffffffffu, l_run, 2);
  __syncthreads();  // the ring becomes the warps' final states

  if (fr < G) {
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      sm.fin.o[warp][fr][8 * n + 2 * fc] = o[n][0];
      sm.fin.o[warp][fr][8 * n + 2 * fc + 1] = o[n][1];
    }
    if (fc == 0) {
      sm.fin.m[warp][fr] = m_run;
      sm.fin.l[warp][fr] = l_run;
    }
  }
  __syncthreads();
  for (int x = tid; x < G * D; x += kThreads) {
    const int hh = x / D, d = x % D, h = h0 + hh;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w)
      if (sm.fin.l[w][hh] > 0.f) M = fmaxf(M, sm.fin.m[w][hh]);
    float L = 0.f, acc = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      if (!(sm.fin.l[w][hh] > 0.f)) continue;
      const float wt = exp2f(sm.fin.m[w][hh] - M);
      L += wt * sm.fin.l[w][hh];
      acc += wt * sm.fin.o[w][hh][d];
    }
    if (a.splits == 1) {
      T* op = static_cast<T*>(a.out) + row * a.o_tok + h * a.o_head + d;
      *op = Dt<T>::from_float(L > 0.f ? acc / L : 0.f);
      if (d == 0) a.lse[std::int64_t(h) * a.rows.total + row] = L > 0.f ? (M + log2f(L)) * kLn2 : -INFINITY;
    } else {
      float* pp = a.partial + ((std::int64_t(split) * a.rows.total + row) * a.hq + h) * (D + 2);
      if (d == 0) {
        pp[0] = M;
        pp[1] = L;
      }
      pp[2 + d] = acc;
    }
  }
}

}  // namespace moba::cuda::decode
