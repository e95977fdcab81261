// Key-major backward pass (mma.sync, sm_80+). One CTA = one KeyItem: a tile of 64 * NG keys
// (NG = a.groups, 1 or 2; 128 * NG threads) of one KV head and a run of 64-row tiles of the
// query rows that see it (bwd_plan.hpp). NG = 2 (128-key tiles, full mode and MoBA blocks of
// a multiple of 128) halves the Q/dO loads and dQ atomics per unit of work.
//
// Warp w owns keys 16w..16w+15 of the tile and keeps their dK, dV rows in registers for the
// whole item (no atomics for them). Per row tile, with Q, dO of the 64 rows in shared memory:
//   S^T  = K_w Q^T             (16 x 64)   P^T = exp(scale S^T - lse), causal mask on the diagonal
//   dP^T = V_w dO^T            (16 x 64)   dS^T = P^T (dP^T - D)
//   dV_w += P^T dO,  dK_w += dS^T Q        (P, dS rounded to the dtype as mma operands)
//   dS^T -> shared; dQ (64 x D) = dS K, warp w rows 16(w%4).., columns split over the groups,
//   added by fp32 atomics (deterministic slot path: listed rows' dQ stored to the row's slot
//   buffer, each element written once: the tile is the entry's whole block).
// Q/dO of the next row tile are prefetched with cp.async while the current one computes.
#pragma once

#include <cmath>

#include "cuda/backward/bwd_common.cuh"

namespace moba::detail::bwd {

// Shared memory: K, V (64 NG rows each), Q[2], dO[2] (64 rows), dS^T (64 NG x 64), metadata
// (lse, D, token, head per row and buffer; MoA: also t - w per row and buffer).
template <int D>
struct KeyPassSmem {
  static constexpr int kTile = 64 * D * 2;  // bytes of one 64 x D tile
  int ng, k, v, q, dout, ds, meta, bytes;
  __host__ __device__ KeyPassSmem(int groups, bool moa)
      : ng(groups), k(0), v(groups * kTile), q(2 * groups * kTile), dout(q + 2 * kTile),
        ds(dout + 2 * kTile), meta(ds + groups * 64 * 64 * 2),
        bytes(meta + (moa ? 5 : 4) * 2 * 64 * 4) {}
};

// kVis (Visibility): kVisMoa masks the implicit rows by MoA's window + sink rule
// (KeyItem::sink_end, the row's window) instead of the causal diagonal alone; kVisBlocks also
// masks the keys past a partial tile (which listed rows would otherwise see with score 0).
template <class T, int D, int kVis>
__global__ void __launch_bounds__(256, 1) key_pass_kernel(const KeyPassArgs a) {
  using Ops = DTypeOps<T>;
  constexpr int kC = D / 8;  // 16-byte chunks per row
  extern __shared__ __align__(128) unsigned char smem[];
  // Grids are sized by a bound; the plan's count lives on the device.
  if (a.n_items != nullptr && int(blockIdx.x) >= *a.n_items) return;

  const KeyItem it = a.items[blockIdx.x];
  const int NG = a.groups, nthr = 128 * NG;
  const KeyPassSmem<D> L(NG, kVis == kVisMoa);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int G = a.group, hq = a.hq;
  const std::uint32_t sb = smem_addr(smem);
  const std::uint32_t sK = sb + L.k, sV = sb + L.v, sDS = sb + L.ds;
  float* lse_s = reinterpret_cast<float*>(smem + L.meta);
  float* dt_s = lse_s + 128;
  int* tok_s = reinterpret_cast<int*>(dt_s + 128);
  int* head_s = tok_s + 128;
  int* lo_s = head_s + 128;  // MoA: t - w of the row (keys above it are in the window)

  const T* qp = static_cast<const T*>(a.op.q);
  const T* kp = static_cast<const T*>(a.op.k);
  const T* vp = static_cast<const T*>(a.op.v);
  const T* dop = static_cast<const T*>(a.op.dout);

  const int n_impl =
      it.impl_end > it.impl_begin ? ((it.impl_end - it.impl_begin + 63) / 64) * G : 0;

  // Row i of row tile rt: absolute token (-1: no row) and query head.
  auto row_of = [&](int rt, int i, int& tok, int& head) {
    if (rt < n_impl) {
      const int tt = rt / G;
      head = it.g * G + (rt - tt * G);
      tok = it.impl_begin + tt * 64 + i;
      if (tok >= it.impl_end) tok = -1;
    } else {
      const int e = (rt - n_impl) * 64 + i;
      if (e < it.list_len) {
        const int v = __ldg(a.list + it.list_begin + e);
        tok = v / hq;
        head = v - tok * hq;
      } else {
        tok = -1;
        head = 0;
      }
    }
  };

  auto load_rows = [&](int rt, int buf) {
    const std::uint32_t sQ = sb + L.q + buf * L.kTile, sDO = sb + L.dout + buf * L.kTile;
    for (int c = tid; c < 64 * kC; c += nthr) {
      const int row = c / kC, chunk = c % kC;
      int tok, head;
      row_of(rt, row, tok, head);
      const bool ok = tok >= 0;
      const char* qs = reinterpret_cast<const char*>(
          ok ? qp + tok * a.op.q_ts + head * a.op.q_hs : qp);
      const char* ds = reinterpret_cast<const char*>(
          ok ? dop + tok * a.op.do_ts + head * a.op.do_hs : dop);
      cp_async16(sQ + swz<kC>(row, chunk), qs + (ok ? chunk * 16 : 0), ok);
      cp_async16(sDO + swz<kC>(row, chunk), ds + (ok ? chunk * 16 : 0), ok);
    }
    if (tid < 64) {
      int tok, head;
      row_of(rt, tid, tok, head);
      tok_s[buf * 64 + tid] = tok;
      head_s[buf * 64 + tid] = head;
      const std::int64_t li = std::int64_t(head) * a.total + tok;
      lse_s[buf * 64 + tid] = tok >= 0 ? a.lse[li] * kLog2e : INFINITY;
      dt_s[buf * 64 + tid] = tok >= 0 ? a.dt[li] : 0.f;
      if constexpr (kVis == kVisMoa)
        lo_s[buf * 64 + tid] = tok >= 0 ? tok - a.moa_window[head * a.batch + it.seq] : 0;
    }
  };

  // Row tiles are visited from a rotated start, so that CTAs of neighbouring key tiles (which
  // share most of their rows and run at the same time) add dQ to different rows at any moment.
  const int n_rt = it.rt_end - it.rt_begin;
  const int rot = n_rt > 0 ? ((it.key_start >> 6) * 5 + it.g * 3) % n_rt : 0;
  auto rt_at = [&](int i) { const int x = i + rot; return it.rt_begin + (x >= n_rt ? x - n_rt : x); };

  // K, V tiles of the item and the first row tile.
  for (int c = tid; c < 64 * NG * kC; c += nthr) {
    const int row = c / kC, chunk = c % kC;
    const bool ok = row < it.key_len;
    const std::int64_t tok = it.key_start + (ok ? row : 0);
    cp_async16(sK + swz<kC>(row, chunk),
               reinterpret_cast<const char*>(kp + tok * a.op.k_ts + it.g * a.op.k_hs) + chunk * 16, ok);
    cp_async16(sV + swz<kC>(row, chunk),
               reinterpret_cast<const char*>(vp + tok * a.op.v_ts + it.g * a.op.v_hs) + chunk * 16, ok);
  }
  if (n_rt > 0) load_rows(rt_at(0), 0);
  cp_async_commit();

  float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[n][e] = dv[n][e] = 0.f;

  const int key_row0 = warp * 16 + (lane >> 2);  // this thread's key rows: key_row0, +8
  const int kabs0 = it.key_start + key_row0;

  int buf = 0;
  for (int i = 0; i < n_rt; ++i, buf ^= 1) {
    const int rt = rt_at(i);
    cp_async_wait_all();
    __syncthreads();  // tile rt landed; every warp is done with the previous tile (buffers, dS)
    if (i + 1 < n_rt) {
      load_rows(rt_at(i + 1), buf ^ 1);
      cp_async_commit();
    }
    const bool with_dq = a.dq_acc != nullptr && (!a.dq_listed_only || rt >= n_impl);
    const bool diag = rt < n_impl && rt < G * NG;  // token tiles overlapping the key tile
    const std::uint32_t sQ = sb + L.q + buf * L.kTile, sDO = sb + L.dout + buf * L.kTile;
    const float* lse_b = lse_s + buf * 64;
    const float* dt_b = dt_s + buf * 64;
    const int* tok_b = tok_s + buf * 64;

    // S^T = K_w Q^T, then P^T in place.
    float s[8][4];
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      std::uint32_t af[4];
      ldsm_x4(af, sK + swz<kC>(warp * 16 + (lane & 15), 2 * kk + (lane >> 4)));
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        std::uint32_t bf[4];
        ldsm_x4(bf, sQ + swz<kC>(np * 16 + (lane & 7) + ((lane >> 4) << 3), 2 * kk + ((lane >> 3) & 1)));
        Ops::mma(s[2 * np], af, bf[0], bf[1]);
        Ops::mma(s[2 * np + 1], af, bf[2], bf[3]);
      }
    }
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = n * 8 + (lane & 3) * 2 + (e & 1);
        float p = cuda::fast_exp2(s[n][e] * a.scale_log2 - lse_b[col]);
        const int key = kabs0 + (e >> 1) * 8;
        if constexpr (kVis == kVisMoa) {
          const int tok = tok_b[col];
          // the MoA rule with the row's t - w precomputed (lo_s)
          if (rt < n_impl &&
              !cuda::Visibility<cuda::kDenseMoa>::visible_from(key, tok, it.sink_end, lo_s[buf * 64 + col]))
            p = 0.f;
        } else if constexpr (kVis == kVisBlocks) {
          if ((diag && cuda::Visibility<cuda::kDenseFull>::hidden(key, tok_b[col])) ||
              key >= it.key_start + it.key_len)
            p = 0.f;
        } else {
          if (diag && cuda::Visibility<cuda::kDenseFull>::hidden(key, tok_b[col])) p = 0.f;
        }
        s[n][e] = p;
      }

    // dV_w += P^T dO.
#pragma unroll
    for (int kq = 0; kq < 4; ++kq) {
      const std::uint32_t pa[4] = {Ops::pack(s[2 * kq][0], s[2 * kq][1]), Ops::pack(s[2 * kq][2], s[2 * kq][3]),
                                   Ops::pack(s[2 * kq + 1][0], s[2 * kq + 1][1]),
                                   Ops::pack(s[2 * kq + 1][2], s[2 * kq + 1][3])};
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        std::uint32_t bf[4];
        ldsm_x4_t(bf, sDO + swz<kC>(kq * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), 2 * dp + (lane >> 4)));
        Ops::mma(dv[2 * dp], pa, bf[0], bf[1]);
        Ops::mma(dv[2 * dp + 1], pa, bf[2], bf[3]);
      }
    }

    // dP^T = V_w dO^T, then dS^T in place.
    float g[8][4];
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) g[n][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      std::uint32_t af[4];
      ldsm_x4(af, sV + swz<kC>(warp * 16 + (lane & 15), 2 * kk + (lane >> 4)));
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        std::uint32_t bf[4];
        ldsm_x4(bf, sDO + swz<kC>(np * 16 + (lane & 7) + ((lane >> 4) << 3), 2 * kk + ((lane >> 3) & 1)));
        Ops::mma(g[2 * np], af, bf[0], bf[1]);
        Ops::mma(g[2 * np + 1], af, bf[2], bf[3]);
      }
    }
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = n * 8 + (lane & 3) * 2 + (e & 1);
        g[n][e] = s[n][e] * (g[n][e] - dt_b[col]);
      }

    // dK_w += dS^T Q; dS^T to shared ([key][query], swizzled) for dQ.
#pragma unroll
    for (int kq = 0; kq < 4; ++kq) {
      const std::uint32_t da[4] = {Ops::pack(g[2 * kq][0], g[2 * kq][1]), Ops::pack(g[2 * kq][2], g[2 * kq][3]),
                                   Ops::pack(g[2 * kq + 1][0], g[2 * kq + 1][1]),
                                   Ops::pack(g[2 * kq + 1][2], g[2 * kq + 1][3])};
      if (with_dq) {
        unsigned char* base = smem + L.ds;
        *reinterpret_cast<std::uint32_t*>(base + swz<8>(key_row0, 2 * kq) + (lane & 3) * 4) = da[0];
        *reinterpret_cast<std::uint32_t*>(base + swz<8>(key_row0 + 8, 2 * kq) + (lane & 3) * 4) = da[1];
        *reinterpret_cast<std::uint32_t*>(base + swz<8>(key_row0, 2 * kq + 1) + (lane & 3) * 4) = da[2];
        *reinterpret_cast<std::uint32_t*>(base + swz<8>(key_row0 + 8, 2 * kq + 1) + (lane & 3) * 4) = da[3];
      }
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        std::uint32_t bf[4];
        ldsm_x4_t(bf, sQ + swz<kC>(kq * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), 2 * dp + (lane >> 4)));
        Ops::mma(dk[2 * dp], da, bf[0], bf[1]);
        Ops::mma(dk[2 * dp + 1], da, bf[2], bf[3]);
      }
    }

    if (with_dq) {
      __syncthreads();  // dS^T complete
      // dQ rows 16(w%4).. = dS (rows, 64 NG keys) K (64 NG keys, D); A from dS^T by transposed
      // loads. NG = 1: each warp does both column halves; NG = 2: warp group w/4 does one.
      const int rw = warp & 3;
      const int r0 = rw * 16 + (lane >> 2);
      const int t0 = tok_b[r0], t1 = tok_b[r0 + 8];
      float* q0 = a.dq_acc + (std::int64_t(t0) * hq + head_s[buf * 64 + r0]) * D;
      float* q1 = a.dq_acc + (std::int64_t(t1) * hq + head_s[buf * 64 + r0 + 8]) * D;
      const int h_begin = NG == 1 ? 0 : (warp >> 2), h_end = NG == 1 ? 2 : h_begin + 1;
      for (int half = h_begin; half < h_end; ++half) {
        float acc[D / 16][4];
#pragma unroll
        for (int n = 0; n < D / 16; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[n][e] = 0.f;
        for (int kk = 0; kk < 4 * NG; ++kk) {
          std::uint32_t af[4];
          ldsm_x4_t(af, sDS + swz<8>(kk * 16 + (lane & 7) + ((lane >> 4) << 3), 2 * rw + ((lane >> 3) & 1)));
#pragma unroll
          for (int dp = 0; dp < D / 32; ++dp) {
            std::uint32_t bf[4];
            ldsm_x4_t(bf, sK + swz<kC>(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3),
                                       2 * (half * (D / 32) + dp) + (lane >> 4)));
            Ops::mma(acc[2 * dp], af, bf[0], bf[1]);
            Ops::mma(acc[2 * dp + 1], af, bf[2], bf[3]);
          }
        }
        if (kVis != kVisMoa && a.list_slot != nullptr) {  // MoA lists no rows
          // Deterministic slot path (listed rows only): the entry's whole dQ, stored to its
          // selection slot's buffer (each element written once).
          const int e0 = it.list_begin + (rt - n_impl) * 64 + r0;
          const int s0 = t0 >= 0 ? a.list_slot[e0] : -1, s1 = t1 >= 0 ? a.list_slot[e0 + 8] : -1;
          float* p0 = q0 + std::int64_t(s0) * a.dq_slot_stride;
          float* p1 = q1 + std::int64_t(s1) * a.dq_slot_stride;
#pragma unroll
          for (int n = 0; n < D / 16; ++n) {
            const int d = half * (D / 2) + n * 8 + (lane & 3) * 2;
            if (s0 >= 0) *reinterpret_cast<float2*>(p0 + d) = make_float2(acc[n][0], acc[n][1]);
            if (s1 >= 0) *reinterpret_cast<float2*>(p1 + d) = make_float2(acc[n][2], acc[n][3]);
          }
          continue;
        }
#pragma unroll
        for (int n = 0; n < D / 16; ++n) {
          const int d = half * (D / 2) + n * 8 + (lane & 3) * 2;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
          if (t0 >= 0) atomicAdd(reinterpret_cast<float2*>(q0 + d), make_float2(acc[n][0], acc[n][1]));
          if (t1 >= 0) atomicAdd(reinterpret_cast<float2*>(q1 + d), make_float2(acc[n][2], acc[n][3]));
#else
          if (t0 >= 0) { atomicAdd(q0 + d, acc[n][0]); atomicAdd(q0 + d + 1, acc[n][1]); }
          if (t1 >= 0) { atomicAdd(q1 + d, acc[n][2]); atomicAdd(q1 + d + 1, acc[n][3]); }
#endif
        }
      }
    }
  }

  // dK (scaled), dV: to the outputs, or to this item's fp32 partial slot.
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    const int d = n * 8 + (lane & 3) * 2;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int key = key_row0 + h * 8;
      const float k0 = dk[n][2 * h] * a.scale, k1 = dk[n][2 * h + 1] * a.scale;
      const float v0 = dv[n][2 * h], v1 = dv[n][2 * h + 1];
      if (it.partial < 0) {
        if (key < it.key_len) {
          const std::int64_t tok = it.key_start + key;
          *reinterpret_cast<std::uint32_t*>(static_cast<T*>(a.op.dk) + tok * a.op.dk_ts + it.g * a.op.dk_hs + d) =
              Ops::pack(k0, k1);
          *reinterpret_cast<std::uint32_t*>(static_cast<T*>(a.op.dv) + tok * a.op.dv_ts + it.g * a.op.dv_hs + d) =
              Ops::pack(v0, v1);
        }
      } else {
        float* pk = a.partial + (std::int64_t(it.partial) * 2 * 64 * NG + key) * D + d;
        *reinterpret_cast<float2*>(pk) = make_float2(k0, k1);
        *reinterpret_cast<float2*>(pk + 64 * NG * D) = make_float2(v0, v1);
      }
    }
  }
}

template <class T, int D, int kVis>
void launch_key_pass_as(const KeyPassArgs& a, int n_items, cudaStream_t stream) {
  const int smem = KeyPassSmem<D>(a.groups, kVis == kVisMoa).bytes;
  MOBA_CUDA_CHECK(cudaFuncSetAttribute(key_pass_kernel<T, D, kVis>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  key_pass_kernel<T, D, kVis><<<n_items, 128 * a.groups, smem, stream>>>(a);
}

template <class T, int D>
void launch_key_pass_impl(const KeyPassArgs& a, int n_items, void* stream) {
  if (n_items <= 0) return;
  const auto s = static_cast<cudaStream_t>(stream);
  switch (a.visibility) {
    case kVisMoa: launch_key_pass_as<T, D, kVisMoa>(a, n_items, s); break;
    case kVisBlocks: launch_key_pass_as<T, D, kVisBlocks>(a, n_items, s); break;
    default: launch_key_pass_as<T, D, kVisCausal>(a, n_items, s); break;
  }
}

}  // namespace moba::detail::bwd
