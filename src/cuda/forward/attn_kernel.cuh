// The forward attention engine (sm_80+ mma.sync path). One CTA = 4 warps = 64 query rows of one
// query head; each warp owns 16 rows. The rows are either a contiguous 64-token tile of a
// sequence (dense kinds: full causal, MoBA own block, MoA) or up to 64 gathered tokens that all
// chose the same key block in the same selection slot (MoBA wave). Keys stream through shared
// memory in 64-key chunks (cp.async, double-buffered); S = Q K^T and O += P V run on tensor
// cores (m16n8k16) with one online softmax in registers.
//
// MoBA state between launches: rows that still have selected blocks to visit keep their
// unnormalised fp32 output, running max and sum in one output-sized scratch (acc, mrow, lrow).
// Slot s of every row is visited in wave s, so a row is touched by one CTA per launch: no races,
// no atomics, bit-identical repeats. The launch that visits a row's last block writes `out` and
// `lse` directly.
#pragma once

#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>

#include "cuda/common/check.hpp"
#include "cuda/common/mma.cuh"
#include "cuda/common/online_softmax.cuh"
#include "cuda/common/visibility.cuh"
#include "cuda/forward/attn_params.hpp"
#include "cuda/forward/epilogue.cuh"
#include "cuda/forward/work_item.cuh"

namespace moba::cuda {

template <class T, int D>
struct AttnTraits {
  static constexpr int kStride = D + 8;  // elements; 16-byte pad keeps ldmatrix conflict-free
  static constexpr int kTileElems = 64 * kStride;
  static constexpr int kSmemBytes = 5 * kTileElems * int(sizeof(T)) + 2 * 64 * int(sizeof(int));
};

template <class T, int D, int Kind>
__global__ void __launch_bounds__(128) attn_fwd_kernel(const AttnParams p) {
  using Tr = AttnTraits<T, D>;
  using Vis = Visibility<Kind>;
  constexpr int S = Tr::kStride;
  constexpr int KD = D / 16;  // k-steps over the head dim
  constexpr int ND = D / 8;   // n-tiles over the head dim
  constexpr bool kGather = Vis::kGather;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + Tr::kTileElems;       // 2 buffers
  T* sV = sK + 2 * Tr::kTileElems;   // 2 buffers
  int* sTok = reinterpret_cast<int*>(sV + 2 * Tr::kTileElems);
  int* sPos = sTok + 64;

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, c4 = lane & 3;

  // ---- which rows and which keys (work_item.cuh, visibility.cuh) ------------------------
  // dense launches: blockIdx.x = tile rank, blockIdx.y = head; gathered waves: gridDim.y = 1
  const int item = int(blockIdx.x) * int(gridDim.y) + int(blockIdx.y);
  if (item >= Vis::items(p)) return;  // the grid may be a bound (device-planned tables)
  WorkTile w;
  Vis::template tile<64>(p, item, w);
  const Vis vis(p, w);
  const int h = w.h, seq = w.seq;
  const int seq_begin = p.cu[seq];
  const int hk = h / p.group;
  if (tid < 64) {
    const int tok = row_token<kGather>(p, w, seq_begin, tid);
    sTok[tid] = tok;
    sPos[tid] = row_position<kGather>(w, tok, seq_begin, tid);
  }
  __syncthreads();

  const T* qg = static_cast<const T*>(p.q);
  const T* kg = static_cast<const T*>(p.k);
  const T* vg = static_cast<const T*>(p.v);

  // ---- async loads ---------------------------------------------------------------------
  constexpr int kChunksPerRow = D / 8;  // 16-byte pieces
  auto load_q = [&]() {
#pragma unroll
    for (int it = 0; it < 64 * kChunksPerRow / 128; ++it) {
      const int idx = tid + it * 128;
      const int r = idx / kChunksPerRow, cc = idx % kChunksPerRow;
      const int tok = sTok[r];
      const T* src = qg + (tok >= 0 ? std::int64_t(tok) * p.q_ts + std::int64_t(h) * p.q_hs + cc * 8 : 0);
      cp_async_16(sQ + r * S + cc * 8, src, tok >= 0);
    }
  };
  const KeyChunks<64> chunks(w);
  const int nchunks = chunks.count;  // >= 1: a row sees its own position
  auto load_kv = [&](int cidx, int buf) {
    const int kb = chunks.begin(cidx), ke = chunks.end(cidx);
    T* dk = sK + buf * Tr::kTileElems;
    T* dv = sV + buf * Tr::kTileElems;
#pragma unroll
    for (int it = 0; it < 64 * kChunksPerRow / 128; ++it) {
      const int idx = tid + it * 128;
      const int r = idx / kChunksPerRow, cc = idx % kChunksPerRow;
      const int kp = kb + r;
      const bool ok = kp < ke;
      const std::int64_t tok = seq_begin + (ok ? kp : kb);
      cp_async_16(dk + r * S + cc * 8, kg + tok * p.k_ts + std::int64_t(hk) * p.k_hs + cc * 8, ok);
      cp_async_16(dv + r * S + cc * 8, vg + tok * p.v_ts + std::int64_t(hk) * p.v_hs + cc * 8, ok);
    }
  };

  // ---- per-thread state ----------------------------------------------------------------
  const int row0 = warp * 16 + g, row1 = row0 + 8;
  const int tok_r[2] = {sTok[row0], sTok[row1]};
  const int pos_r[2] = {sPos[row0], sPos[row1]};
  float o[ND][4];
  float m[2], l[2];
#pragma unroll
  for (int n = 0; n < ND; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  m[0] = m[1] = -INFINITY;
  l[0] = l[1] = 0.f;
  if constexpr (kGather) resume_rows<D, ND>(p, tok_r, h, c4, o, m, l);  // earlier passes

  load_q();
  load_kv(0, 0);
  cp_async_commit();

  std::uint32_t qf[KD][4];
  const float sl2 = p.scale_log2;
  // this warp's first and last row positions (dense kinds: rows are consecutive)
  const int pos_first = w.t0 + warp * 16, pos_last = pos_first + 15;
  float alpha[2];

  for (int cidx = 0; cidx < nchunks; ++cidx) {
    const int buf = cidx & 1;
    if (cidx + 1 < nchunks) {
      load_kv(cidx + 1, buf ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (cidx == 0) {
#pragma unroll
      for (int kk = 0; kk < KD; ++kk)
        ldsm_x4(qf[kk], smem_addr(sQ + (warp * 16 + (lane & 15)) * S + kk * 16 + (lane >> 4) * 8));
    }
    const T* cK = sK + buf * Tr::kTileElems;
    const T* cV = sV + buf * Tr::kTileElems;

    // S = Q K^T (16 x 64 per warp)
    float s[8][4];
#pragma unroll
    for (int n = 0; n < 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
    for (int np = 0; np < 4; ++np) {
#pragma unroll
      for (int kk = 0; kk < KD; ++kk) {
        std::uint32_t b[4];
        ldsm_x4(b, smem_addr(cK + (np * 16 + (lane & 7) + (lane >> 4) * 8) * S + kk * 16 +
                             ((lane >> 3) & 1) * 8));
        mma_16816<T>(s[2 * np], qf[kk], b[0], b[1]);
        mma_16816<T>(s[2 * np + 1], qf[kk], b[2], b[3]);
      }
    }

    // scale, mask (visibility.cuh), online softmax (online_softmax.cuh)
    const int kb = chunks.begin(cidx), ke = chunks.end(cidx);
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] *= sl2;
    // A chunk shorter than 64 keys (a sequence's end, or a gathered block of a size that is not
    // a multiple of 64) masks its zero-filled tail.
    if (ke - kb < 64 || !vis.template all_visible<64>(kb, pos_first, pos_last)) {
#pragma unroll
      for (int n = 0; n < 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = kb + n * 8 + 2 * c4 + (e & 1);
          if (!(key < ke && vis.visible(key, pos_r[e >> 1]))) s[n][e] = -INFINITY;
        }
    }
    softmax_update<false>(s, m, l, alpha, sl2);  // scores already scaled: kept bit-identical
    rescale_rows(o, alpha);

    // O += P V
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      std::uint32_t a[4];
      a[0] = Dt<T>::pack(s[2 * kk][0], s[2 * kk][1]);
      a[1] = Dt<T>::pack(s[2 * kk][2], s[2 * kk][3]);
      a[2] = Dt<T>::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      a[3] = Dt<T>::pack(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
      for (int dp = 0; dp < KD; ++dp) {
        std::uint32_t b[4];
        ldsm_x4_t(b, smem_addr(cV + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * S + dp * 16 +
                               (lane >> 4) * 8));
        mma_16816<T>(o[2 * dp], a, b[0], b[1]);
        mma_16816<T>(o[2 * dp + 1], a, b[2], b[3]);
      }
    }
    __syncthreads();
  }

  write_rows<T, D, ND, Kind>(p, o, m, l, tok_r, pos_r, h, c4);
}

template <class T, int D, int Kind>
void launch_attention_kind(const AttnParams& p, int grid_x, int grid_y, void* stream) {
  if (grid_x <= 0 || grid_y <= 0) return;
  using Tr = AttnTraits<T, D>;
  MOBA_CUDA_CHECK(cudaFuncSetAttribute(attn_fwd_kernel<T, D, Kind>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       Tr::kSmemBytes));
  attn_fwd_kernel<T, D, Kind><<<dim3(grid_x, grid_y), 128, Tr::kSmemBytes,
                                static_cast<cudaStream_t>(stream)>>>(p);
  MOBA_CUDA_LAUNCH_CHECK();
}

}  // namespace moba::cuda

// One (dtype, head_dim, kind) per line; the attn_<dtype>_d<D>_<kinds>.cu files use it.
#define MOBA_INSTANTIATE_ATTENTION_KIND(T, D, KIND)                                             \
  template void moba::cuda::launch_attention_kind<T, D, KIND>(const moba::cuda::AttnParams&, \
                                                               int, int, void*);
