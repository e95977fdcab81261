// Query-major dQ pass (mma.sync, sm_80+), in both modes: the causal rows' dQ always, and in the
// deterministic mode's wave path also the listed rows' (one launch per selection slot). One CTA = 4 warps =
// one DqItem: 64 query rows (Q, dO kept in shared memory) against a run of 64-key tiles
// (K, V double-buffered by cp.async). Warp w owns rows 16w..16w+15 and keeps their dQ in
// registers:  S = Q K^T, P = exp(scale S - lse), dP = dO V^T, dS = P (dP - D), dQ += dS K.
// The result is stored, added (fixed launch order) or scaled and rounded to the output (in the
// deterministic slot path after adding the row's listed dQ from the key pass's slot buffers, in
// slot order); no atomics, so this pass alone is bit-identical across runs.
#pragma once

#include <cmath>

#include "cuda/backward/bwd_common.cuh"

namespace moba::detail::bwd {

template <int D>
struct DqPassSmem {
  static constexpr int kTile = 64 * D * 2;
  static constexpr int kQ = 0, kDO = kTile, kK = 2 * kTile, kV = 4 * kTile;  // K, V: 2 buffers
  static constexpr int kMeta = 6 * kTile;  // lse2[64] dt[64] tok[64] head[64]
  static constexpr int kBytes = kMeta + 4 * 64 * 4;
};

// kVis (Visibility): the mask rule. kVisMoa visits the item's sink tiles first, then its
// window tiles.
// kSlots: the deterministic slot path's epilogue (kDqStoreOutSlots), a separate instantiation so
// that the other kernels' code (registers, spills) is untouched by it.
template <class T, int D, int kVis, bool kSlots = false>
__global__ void __launch_bounds__(128, 2) dq_pass_kernel(const DqPassArgs a) {
  using Ops = DTypeOps<T>;
  using L = DqPassSmem<D>;
  constexpr int kC = D / 8;
  extern __shared__ __align__(128) unsigned char smem[];
  // Grids are sized by a bound; the plan's count lives on the device.
  if (a.n_items != nullptr && int(blockIdx.x) >= *a.n_items) return;

  const DqItem it = a.items[blockIdx.x];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int hq = a.hq;
  const std::uint32_t sb = smem_addr(smem);
  const std::uint32_t sQ = sb + L::kQ, sDO = sb + L::kDO;
  float* lse_s = reinterpret_cast<float*>(smem + L::kMeta);
  float* dt_s = lse_s + 64;
  int* tok_s = reinterpret_cast<int*>(dt_s + 64);
  int* head_s = tok_s + 64;

  const T* qp = static_cast<const T*>(a.op.q);
  const T* kp = static_cast<const T*>(a.op.k);
  const T* vp = static_cast<const T*>(a.op.v);
  const T* dop = static_cast<const T*>(a.op.dout);

  auto row_of = [&](int i, int& tok, int& head) {
    if (i >= it.row_len) {
      tok = -1;
      head = 0;
    } else if (it.head >= 0) {
      tok = it.row_begin + i;
      head = it.head;
    } else {
      const int v = __ldg(a.list + it.row_begin + i);
      tok = v / hq;
      head = v - tok * hq;
    }
  };

  // Absolute token of the first key of key tile c.
  auto tile_base = [&](int c) {
    if constexpr (kVis == kVisMoa)
      return c < it.sink_tiles ? it.seq_begin + c * 64 : it.key_start + (c - it.sink_tiles) * 64;
    else
      return it.key_start + c * 64;
  };
  const int n_tiles = kVis == kVisMoa ? it.sink_tiles + it.n_key_tiles : it.n_key_tiles;

  auto load_keys = [&](int c, int buf) {
    const std::uint32_t sK = sb + L::kK + buf * L::kTile, sV = sb + L::kV + buf * L::kTile;
    const int base = tile_base(c);
#pragma unroll
    for (int i = 0; i < 64 * kC / 128; ++i) {
      const int e = tid + i * 128;
      const int row = e / kC, chunk = e % kC;
      const int key = base + row;
      const bool ok = key < a.total;
      const std::int64_t tok = ok ? key : 0;
      cp_async16(sK + swz<kC>(row, chunk),
                 reinterpret_cast<const char*>(kp + tok * a.op.k_ts + it.g * a.op.k_hs) + chunk * 16, ok);
      cp_async16(sV + swz<kC>(row, chunk),
                 reinterpret_cast<const char*>(vp + tok * a.op.v_ts + it.g * a.op.v_hs) + chunk * 16, ok);
    }
  };

  // Rows: Q, dO, lse, D.
#pragma unroll
  for (int i = 0; i < 64 * kC / 128; ++i) {
    const int c = tid + i * 128;
    const int row = c / kC, chunk = c % kC;
    int tok, head;
    row_of(row, tok, head);
    const bool ok = tok >= 0;
    const char* qs = reinterpret_cast<const char*>(ok ? qp + tok * a.op.q_ts + head * a.op.q_hs : qp);
    const char* ds = reinterpret_cast<const char*>(ok ? dop + tok * a.op.do_ts + head * a.op.do_hs : dop);
    cp_async16(sQ + swz<kC>(row, chunk), qs + (ok ? chunk * 16 : 0), ok);
    cp_async16(sDO + swz<kC>(row, chunk), ds + (ok ? chunk * 16 : 0), ok);
  }
  if (tid < 64) {
    int tok, head;
    row_of(tid, tok, head);
    tok_s[tid] = tok;
    head_s[tid] = head;
    const std::int64_t li = std::int64_t(head) * a.total + tok;
    lse_s[tid] = tok >= 0 ? a.lse[li] * kLog2e : INFINITY;
    dt_s[tid] = tok >= 0 ? a.dt[li] : 0.f;
  }
  load_keys(0, 0);
  cp_async_commit();

  const int r0 = warp * 16 + (lane >> 2);  // this thread's rows r0, r0 + 8
  float lse_r[2], dt_r[2];
  int tok_r[2];

  float acc[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[n][e] = 0.f;

  for (int c = 0; c < n_tiles; ++c) {
    const int buf = c & 1;
    cp_async_wait_all();
    __syncthreads();
    if (c == 0) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        lse_r[h] = lse_s[r0 + 8 * h];
        dt_r[h] = dt_s[r0 + 8 * h];
        tok_r[h] = tok_s[r0 + 8 * h];
      }
    }
    if (c + 1 < n_tiles) {
      load_keys(c + 1, buf ^ 1);
      cp_async_commit();
    }
    const std::uint32_t sK = sb + L::kK + buf * L::kTile, sV = sb + L::kV + buf * L::kTile;
    const bool diag = it.diag && c == n_tiles - 1;
    const int kbase = tile_base(c);

    float s[8][4], g[8][4];
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] = g[n][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      std::uint32_t aq[4], ad[4];
      ldsm_x4(aq, sQ + swz<kC>(warp * 16 + (lane & 15), 2 * kk + (lane >> 4)));
      ldsm_x4(ad, sDO + swz<kC>(warp * 16 + (lane & 15), 2 * kk + (lane >> 4)));
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        std::uint32_t bk[4], bv[4];
        const int row = np * 16 + (lane & 7) + ((lane >> 4) << 3), chunk = 2 * kk + ((lane >> 3) & 1);
        ldsm_x4(bk, sK + swz<kC>(row, chunk));
        ldsm_x4(bv, sV + swz<kC>(row, chunk));
        Ops::mma(s[2 * np], aq, bk[0], bk[1]);
        Ops::mma(s[2 * np + 1], aq, bk[2], bk[3]);
        Ops::mma(g[2 * np], ad, bv[0], bv[1]);
        Ops::mma(g[2 * np + 1], ad, bv[2], bv[3]);
      }
    }
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int h = e >> 1;
        const int key = kbase + n * 8 + (lane & 3) * 2 + (e & 1);
        float p = cuda::fast_exp2(s[n][e] * a.scale_log2 - lse_r[h]);
        if constexpr (kVis == kVisMoa) {
          const int tok = tok_r[h];
          const cuda::Visibility<cuda::kDenseMoa> moa(it.seq_begin + a.moa_sink, it.moa_w);
          if (!moa.visible_branch_free(key, tok)) p = 0.f;
        } else if constexpr (kVis == kVisBlocks) {
          const int tok = tok_r[h];
          const bool vis = it.head >= 0
                               ? cuda::Visibility<cuda::kDenseMobaOwn>::visible_in(key, tok, it.seq_begin,
                                                                                   a.block_size)
                               : key < it.key_end;
          if (!vis) p = 0.f;
        } else {
          if (diag && cuda::Visibility<cuda::kDenseFull>::hidden(key, tok_r[h])) p = 0.f;
        }
        g[n][e] = p * (g[n][e] - dt_r[h]);
      }
    // dQ += dS K.
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      const std::uint32_t da[4] = {Ops::pack(g[2 * kk][0], g[2 * kk][1]), Ops::pack(g[2 * kk][2], g[2 * kk][3]),
                                   Ops::pack(g[2 * kk + 1][0], g[2 * kk + 1][1]),
                                   Ops::pack(g[2 * kk + 1][2], g[2 * kk + 1][3])};
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        std::uint32_t bf[4];
        ldsm_x4_t(bf, sK + swz<kC>(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), 2 * dp + (lane >> 4)));
        Ops::mma(acc[2 * dp], da, bf[0], bf[1]);
        Ops::mma(acc[2 * dp + 1], da, bf[2], bf[3]);
      }
    }
  }

  if (n_tiles == 0) {
    cp_async_wait_all();
    return;
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int tok = tok_r[h];
    if (tok < 0) continue;
    const int head = head_s[r0 + 8 * h];
    float* accp = a.dq_acc + (std::int64_t(tok) * hq + head) * D;
    T* outp = static_cast<T*>(a.op.dq) + tok * a.op.dq_ts + head * a.op.dq_hs;
    if constexpr (kSlots) {
      // The listed entries' dQ from the slot buffers, in slot order (the key pass wrote the
      // valid ones; the others hold stale bytes and are skipped by the selection's own rule).
      const std::int32_t* sel = a.selection + (std::int64_t(tok) * hq + head) * a.slots;
      const int own = (tok - it.seq_begin) / a.block_size;
      for (int sl = 0; sl < a.slots; ++sl) {
        const int j = __ldg(sel + sl);
        if (j < 0 || j >= own) continue;
        const float* sp = accp + sl * a.slot_stride;
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
          const float2 v = *reinterpret_cast<const float2*>(sp + n * 8 + (lane & 3) * 2);
          acc[n][2 * h] += v.x;
          acc[n][2 * h + 1] += v.y;
        }
      }
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        const int d = n * 8 + (lane & 3) * 2;
        *reinterpret_cast<std::uint32_t*>(outp + d) = Ops::pack(acc[n][2 * h] * a.scale, acc[n][2 * h + 1] * a.scale);
      }
    } else {
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        const int d = n * 8 + (lane & 3) * 2;
        float2 v = make_float2(acc[n][2 * h], acc[n][2 * h + 1]);
        if (a.store == kDqStoreOut) {
          *reinterpret_cast<std::uint32_t*>(outp + d) = Ops::pack(v.x * a.scale, v.y * a.scale);
        } else {
          float2* dst = reinterpret_cast<float2*>(accp + d);
          if (a.store == kDqAddAcc) {
            const float2 old = *dst;
            v.x += old.x;
            v.y += old.y;
          }
          *dst = v;
        }
      }
    }
  }
}

template <class T, int D, int kVis, bool kSlots = false>
void launch_dq_pass_as(const DqPassArgs& a, int n_items, cudaStream_t stream) {
  constexpr int kSmem = DqPassSmem<D>::kBytes;
  MOBA_CUDA_CHECK(cudaFuncSetAttribute(dq_pass_kernel<T, D, kVis, kSlots>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
  dq_pass_kernel<T, D, kVis, kSlots><<<n_items, 128, kSmem, stream>>>(a);
}

template <class T, int D>
void launch_dq_pass_impl(const DqPassArgs& a, int n_items, void* stream) {
  if (n_items <= 0) return;
  const auto s = static_cast<cudaStream_t>(stream);
  if (a.store == kDqStoreOutSlots) {  // MoBA only: causal-aligned blocks or any block size
    if (a.visibility == kVisBlocks) launch_dq_pass_as<T, D, kVisBlocks, true>(a, n_items, s);
    else launch_dq_pass_as<T, D, kVisCausal, true>(a, n_items, s);
    return;
  }
  switch (a.visibility) {
    case kVisMoa: launch_dq_pass_as<T, D, kVisMoa>(a, n_items, s); break;
    case kVisBlocks: launch_dq_pass_as<T, D, kVisBlocks>(a, n_items, s); break;
    default: launch_dq_pass_as<T, D, kVisCausal>(a, n_items, s); break;
  }
}

}  // namespace moba::detail::bwd
