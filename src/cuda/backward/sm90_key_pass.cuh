// Key-major backward pass, sm_90a (warpgroup MMA). Same work items, row order, masks, per-element
// math and outputs as the mma.sync key pass (key_pass.cuh, see there): one CTA = one KeyItem, a
// tile of 64 * NG keys of one KV head (NG = KeyPassArgs::groups, 1 or 2) and its run of 64-row
// tiles. What changes is the MMA: NG warpgroups (128 NG threads), warpgroup w owning keys
// 64w..64w+63 of the tile, their dK, dV rows in its wgmma accumulators for the whole item.
// Per row tile (Q, dO of 64 rows in shared memory):
//   S^T  = K_w Q^T, dP^T = V_w dO^T     wgmma m64n64, A and B K-major from shared memory
//   P^T  = 2^(S^T scale log2e - lse), masked as key_pass.cuh; dS^T = P^T (dP^T - D)
//   dV_w += P^T dO, dK_w += dS^T Q      wgmma m64nD, A = P^T / dS^T re-packed from the
//                                       accumulators (registers), B MN-major (Q, dO rows)
//   dS^T -> shared; dQ (64 x D) = dS K  wgmma m64n64 per 64-column part of dQ, A = dS from
//                                       shared by transposed ldmatrix, B = K MN-major; parts
//                                       shared out over the warpgroups; added to the fp32 dQ
//                                       scratch by one bulk reduce-add per row (TMA unit) from
//                                       shared memory, or (dq_bulk = 0) by fp32 atomics.
// Loads: cp.async by every thread, two row-tile buffers (the next tile's Q, dO stream in while
// this one computes). Not TMA: listed (MoBA) row tiles gather arbitrary (token, head) rows,
// which a 2-D TMA box cannot name, and the tile::gather4 TMA mode is sm_100 only.
// Tiles use the 128-byte swizzle wgmma reads natively (hopper::swz: D/64 column blocks of R rows
// x 128 bytes); dS^T keeps key_pass.cuh's swizzled [key][64 rows] layout (bwd::swz<8>, the same
// 128-byte rows) that its transposed ldmatrix reads.
// No float atomics when dq_acc is null (deterministic mode): dK, dV are summed in registers and
// split tiles' partials by the fixed-order reduction, as in key_pass.cuh.
#pragma once

#include <cuda_runtime.h>

#include <cmath>

#include "cuda/backward/bwd_common.cuh"
#include "cuda/backward/sm90_key_pass.hpp"
#include "cuda/common/sm90_available.hpp"
#include "cuda/forward/hopper_wgmma.cuh"
#include "cuda/forward/sm90_pipeline.cuh"

namespace moba::detail::bwd {

// Shared memory (offsets from a 1024-byte aligned base): K, V (64 NG rows each), Q[2], dO[2]
// (64 rows), dS^T (64 NG x 64), metadata as key_pass.cuh (lse, D, token, head per row and
// buffer; MoA: t - w), with KeyPassArgs::dq_bulk the fp32 dQ rows of a tile (64 x D, padded).
template <int D>
struct Sm90KeyPassSmem {
  static constexpr int kRowTile = 64 * D * 2;  // bytes of one 64-row tile
  static constexpr int kDqStride = D + 8;  // floats per dQ row (32-byte pad: no bank conflicts)
  int k, v, q, dout, ds, meta, dq, bytes;
  __host__ __device__ Sm90KeyPassSmem(int groups, bool moa, bool dq_bulk)
      : k(0), v(groups * kRowTile), q(2 * groups * kRowTile), dout(q + 2 * kRowTile),
        ds(dout + 2 * kRowTile), meta(ds + groups * 64 * 64 * 2),
        dq(meta + (moa ? 5 : 4) * 2 * 64 * 4), bytes(1024 + dq + (dq_bulk ? 64 * kDqStride * 4 : 0)) {}
};

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
// acc (64 rows x 64 columns of dQ, wgmma m64n64 layout; rows 16 wi.. for warp wi) = dS K_part
// over the kKS 16-key steps of the tile: A = dS from dS^T in shared memory by transposed
// ldmatrix (the fragment of rows 16 wi.., keys 16 kk..), B = the K column block, MN-major.
template <bool kBf16, int kKS>
__device__ __forceinline__ void sm90_dq_part(float (&acc)[32], std::uint32_t sDS, std::uint32_t kpart,
                                             int KT, int wi, int lane) {
  namespace hw = moba::cuda::hopper;
  std::uint32_t af[kKS][4];
#pragma unroll
  for (int kk = 0; kk < kKS; ++kk)
    ldsm_x4_t(af[kk], sDS + swz<8>(kk * 16 + (lane & 7) + ((lane >> 4) << 3), 2 * wi + ((lane >> 3) & 1)));
  hw::wg_fence();
#pragma unroll
  for (int kk = 0; kk < kKS; ++kk) {
    const std::uint64_t db = hw::make_desc(kpart + kk * 16 * 128, KT * 128, 1024);
    hw::wgmma_rs<kBf16, 64>(acc, af[kk], db, kk > 0 ? 1 : 0);
  }
  hw::wg_commit();
  hw::wg_wait<0>();
  hw::reg_fence<32>(acc);
  hw::reg_fence_u<4 * kKS>(&af[0][0]);
}

// One 64-row tile's dV / dK step of a sm_90a key pass, once S^T became P^T in `s` (fp32,
// masked) and dP^T is in `g`: P^T's b16 A fragments, dV_w += P^T dO, dS^T = P^T (dP^T - D) (fp32
// P, as key_pass.cuh) into `g` and its A fragments, dK_w += dS^T Q (RS wgmma, B MN-major: the
// 64 rows are the k dimension), and, with with_ds, dS^T to ds_base in shared memory ([key][row],
// bwd::swz<8>) while the wgmmas run (they read registers and Q / dO, not that buffer). Returns
// with every wgmma retired. Shared by the lock-step and the warp-specialised passes.
template <bool kBf16, int D, class T>
__device__ __forceinline__ void sm90_dv_dk_step(float (&s)[32], float (&g)[32], const float* dt_b,
                                                int c4, float* dv, float* dk, std::uint32_t sDO,
                                                std::uint32_t sQ, bool with_ds, unsigned char* ds_base,
                                                int key_row0) {
  namespace hw = moba::cuda::hopper;
  // A fragments (b16) of P^T: k-step kq = query rows 16 kq..16 kq + 15 (n8 tiles 2 kq, 2 kq + 1).
  std::uint32_t pa[4][4], da[4][4];
#pragma unroll
  for (int kq = 0; kq < 4; ++kq) {
    const float* s0 = s + 8 * kq;
    pa[kq][0] = cuda::Dt<T>::pack(s0[0], s0[1]);
    pa[kq][1] = cuda::Dt<T>::pack(s0[2], s0[3]);
    pa[kq][2] = cuda::Dt<T>::pack(s0[4], s0[5]);
    pa[kq][3] = cuda::Dt<T>::pack(s0[6], s0[7]);
  }
  // dV_w += P^T dO.
  hw::wg_fence();
#pragma unroll
  for (int kq = 0; kq < 4; ++kq)
    hw::wgmma_rs<kBf16, D>(dv, pa[kq], hw::make_desc(sDO + kq * 16 * 128, 64 * 128, 1024), 1);
  hw::wg_commit();
  // dP^T landed; dV may still run, except at D = 128, where dK, dV, P^T, dP^T leave no
  // registers for P^T's fragments to stay live (waiting frees them: no spills)
  if constexpr (D == 128) {
    hw::wg_wait<0>();
    hw::reg_fence_u<16>(&pa[0][0]);
  } else {
    hw::wg_wait<1>();
  }
  hw::reg_fence<32>(g);

  // dS^T, its A fragments, dK_w += dS^T Q.
#pragma unroll
  for (int n = 0; n < 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) g[4 * n + e] = s[4 * n + e] * (g[4 * n + e] - dt_b[n * 8 + c4 * 2 + (e & 1)]);
#pragma unroll
  for (int kq = 0; kq < 4; ++kq) {
    const float* g0 = g + 8 * kq;
    da[kq][0] = cuda::Dt<T>::pack(g0[0], g0[1]);
    da[kq][1] = cuda::Dt<T>::pack(g0[2], g0[3]);
    da[kq][2] = cuda::Dt<T>::pack(g0[4], g0[5]);
    da[kq][3] = cuda::Dt<T>::pack(g0[6], g0[7]);
  }
  hw::wg_fence();
#pragma unroll
  for (int kq = 0; kq < 4; ++kq)
    hw::wgmma_rs<kBf16, D>(dk, da[kq], hw::make_desc(sQ + kq * 16 * 128, 64 * 128, 1024), 1);
  hw::wg_commit();

  // dS^T to shared for dQ while the wgmmas run.
  if (with_ds) {
    unsigned char* base = ds_base;
#pragma unroll
    for (int kq = 0; kq < 4; ++kq) {
      *reinterpret_cast<std::uint32_t*>(base + swz<8>(key_row0, 2 * kq) + c4 * 4) = da[kq][0];
      *reinterpret_cast<std::uint32_t*>(base + swz<8>(key_row0 + 8, 2 * kq) + c4 * 4) = da[kq][1];
      *reinterpret_cast<std::uint32_t*>(base + swz<8>(key_row0, 2 * kq + 1) + c4 * 4) = da[kq][2];
      *reinterpret_cast<std::uint32_t*>(base + swz<8>(key_row0 + 8, 2 * kq + 1) + c4 * 4) = da[kq][3];
    }
  }
  hw::wg_wait<0>();
  hw::reg_fence<D / 2>(dv);
  hw::reg_fence<D / 2>(dk);
  hw::reg_fence_u<16>(&pa[0][0]);
  hw::reg_fence_u<16>(&da[0][0]);
}

// The end of a sm_90a key pass: this thread's dK (scaled) and dV accumulator elements (wgmma
// m64nD layout, keys key_row0 and key_row0 + 8) to the outputs, or to the item's fp32 partial
// slot when the item is one split of a popular key tile (summed later in a fixed order, as
// key_pass.cuh). Shared by the lock-step and the warp-specialised passes.
template <class T, int D>
__device__ __forceinline__ void sm90_store_dk_dv(const KeyPassArgs& a, const KeyItem& it,
                                                 const float* dk, const float* dv, int key_row0,
                                                 int c4, int KT) {
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    const int d = n * 8 + c4 * 2;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int key = key_row0 + h * 8;
      const float k0 = dk[4 * n + 2 * h] * a.scale, k1 = dk[4 * n + 2 * h + 1] * a.scale;
      const float v0 = dv[4 * n + 2 * h], v1 = dv[4 * n + 2 * h + 1];
      if (it.partial < 0) {
        if (key < it.key_len) {
          const std::int64_t tok = it.key_start + key;
          *reinterpret_cast<std::uint32_t*>(static_cast<T*>(a.op.dk) + tok * a.op.dk_ts + it.g * a.op.dk_hs + d) =
              cuda::Dt<T>::pack(k0, k1);
          *reinterpret_cast<std::uint32_t*>(static_cast<T*>(a.op.dv) + tok * a.op.dv_ts + it.g * a.op.dv_hs + d) =
              cuda::Dt<T>::pack(v0, v1);
        }
      } else {
        float* pk = a.partial + (std::int64_t(it.partial) * 2 * KT + key) * D + d;
        *reinterpret_cast<float2*>(pk) = make_float2(k0, k1);
        *reinterpret_cast<float2*>(pk + KT * D) = make_float2(v0, v1);
      }
    }
  }
}
#endif

template <class T, int D, int kVis>
__global__ void __launch_bounds__(256, 1) sm90_key_pass_kernel(const KeyPassArgs a) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  // the grid is a bound when the plan was built on the device: past the count, no work
  if (a.n_items != nullptr && int(blockIdx.x) >= *a.n_items) return;
  namespace hw = moba::cuda::hopper;
  constexpr bool kBf16 = cuda::Dt<T>::kIsBf16;
  constexpr int kC = D / 8;  // 16-byte chunks per row
  extern __shared__ unsigned char smem_raw[];
  unsigned char* smem = reinterpret_cast<unsigned char*>(
      (reinterpret_cast<std::uintptr_t>(smem_raw) + 1023) & ~std::uintptr_t(1023));

  const KeyItem it = a.items[blockIdx.x];
  const int NG = a.groups, KT = 64 * NG, nthr = 128 * NG;
  const Sm90KeyPassSmem<D> L(NG, kVis == kVisMoa, a.dq_bulk != 0);
  const int tid = threadIdx.x, wg = tid >> 7, wi = (tid >> 5) & 3, lane = tid & 31;
  const int gq = lane >> 2, c4 = lane & 3;
  const int G = a.group, hq = a.hq;
  const std::uint32_t sb = smem_addr(smem);
  const std::uint32_t sK = sb + L.k, sV = sb + L.v, sDS = sb + L.ds;
  float* lse_s = reinterpret_cast<float*>(smem + L.meta);
  float* dt_s = lse_s + 128;
  int* tok_s = reinterpret_cast<int*>(dt_s + 128);
  int* head_s = tok_s + 128;
  int* lo_s = head_s + 128;  // MoA: t - w of the row

  const T* qp = static_cast<const T*>(a.op.q);
  const T* kp = static_cast<const T*>(a.op.k);
  const T* vp = static_cast<const T*>(a.op.v);
  const T* dop = static_cast<const T*>(a.op.dout);

  const int n_impl =
      it.impl_end > it.impl_begin ? ((it.impl_end - it.impl_begin + 63) / 64) * G : 0;

  // Row i of row tile rt: absolute token (-1: no row) and query head (as key_pass.cuh).
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
    const std::uint32_t sQ = sb + L.q + buf * L.kRowTile, sDO = sb + L.dout + buf * L.kRowTile;
    for (int c = tid; c < 64 * kC; c += nthr) {
      const int row = c / kC, chunk = c % kC;
      int tok, head;
      row_of(rt, row, tok, head);
      const bool ok = tok >= 0;
      const char* qs = reinterpret_cast<const char*>(
          ok ? qp + tok * a.op.q_ts + head * a.op.q_hs : qp);
      const char* ds = reinterpret_cast<const char*>(
          ok ? dop + tok * a.op.do_ts + head * a.op.do_hs : dop);
      const std::uint32_t off = static_cast<std::uint32_t>(hw::swz(row, chunk, 64));
      cp_async16(sQ + off, qs + (ok ? chunk * 16 : 0), ok);
      cp_async16(sDO + off, ds + (ok ? chunk * 16 : 0), ok);
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

  // Row tiles from a rotated start (see key_pass.cuh: spreads the dQ atomics of neighbours).
  const int n_rt = it.rt_end - it.rt_begin;
  const int rot = n_rt > 0 ? ((it.key_start >> 6) * 5 + it.g * 3) % n_rt : 0;
  auto rt_at = [&](int i) { const int x = i + rot; return it.rt_begin + (x >= n_rt ? x - n_rt : x); };

  // K, V tiles of the item (zeros past key_len) and the first row tile.
  for (int c = tid; c < KT * kC; c += nthr) {
    const int row = c / kC, chunk = c % kC;
    const bool ok = row < it.key_len;
    const std::int64_t tok = it.key_start + (ok ? row : 0);
    const std::uint32_t off = static_cast<std::uint32_t>(hw::swz(row, chunk, KT));
    cp_async16(sK + off, reinterpret_cast<const char*>(kp + tok * a.op.k_ts + it.g * a.op.k_hs) + chunk * 16, ok);
    cp_async16(sV + off, reinterpret_cast<const char*>(vp + tok * a.op.v_ts + it.g * a.op.v_hs) + chunk * 16, ok);
  }
  if (n_rt > 0) load_rows(rt_at(0), 0);
  cp_async_commit();

  // dK, dV rows of this warpgroup's 64 keys: wgmma m64nD accumulators (D/2 floats a thread):
  // [4j + e] = key row 16 wi + gq + 8 (e >> 1), column 8j + 2 c4 + (e & 1).
  float dk[D / 2], dv[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) dk[i] = dv[i] = 0.f;

  const int key_row0 = wg * 64 + wi * 16 + gq;  // this thread's key rows in the tile: +0, +8
  const int kabs0 = it.key_start + key_row0;
  const std::uint32_t kw = sK + wg * 64 * 128, vw = sV + wg * 64 * 128;  // this warpgroup's keys

  int buf = 0;
  for (int i = 0; i < n_rt; ++i, buf ^= 1) {
    const int rt = rt_at(i);
    cp_async_wait_all();
    hw::fence_proxy_async();  // this thread's cp.async writes, next read by wgmma (async proxy)
    if (a.dq_bulk && tid < 64) cuda::sm90::bulk_wait_read_all();  // dQ rows of the last tile read
    __syncthreads();  // tile rt landed; every wgmma / ldmatrix of the previous tile retired
    if (i + 1 < n_rt) {
      load_rows(rt_at(i + 1), buf ^ 1);
      cp_async_commit();
    }
    const bool with_dq = a.dq_acc != nullptr && (!a.dq_listed_only || rt >= n_impl);
    const bool diag = rt < n_impl && rt < G * NG;  // token tiles overlapping the key tile
    const std::uint32_t sQ = sb + L.q + buf * L.kRowTile, sDO = sb + L.dout + buf * L.kRowTile;
    const float* lse_b = lse_s + buf * 64;
    const float* dt_b = dt_s + buf * 64;
    const int* tok_b = tok_s + buf * 64;

    // S^T = K_w Q^T, then dP^T = V_w dO^T (64 keys x 64 rows each), one commit group each;
    // P^T is computed while dP^T runs, dS^T while dV runs (groups retire in order).
    float s[32], g[32];
    hw::wg_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const std::uint32_t koff = (kk & 3) * 32;  // 16 columns inside the 128-byte atom row
      const std::uint64_t dq = hw::make_desc(sQ + (kk >> 2) * 64 * 128 + koff, 16, 1024);
      const std::uint64_t dk_ = hw::make_desc(kw + (kk >> 2) * KT * 128 + koff, 16, 1024);
      if (kk == 0) hw::wgmma_ss_zero<kBf16, 64>(s, dk_, dq);
      else hw::wgmma_ss<kBf16, 64>(s, dk_, dq, 1);
    }
    hw::wg_commit();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const std::uint32_t koff = (kk & 3) * 32;
      const std::uint64_t ddo = hw::make_desc(sDO + (kk >> 2) * 64 * 128 + koff, 16, 1024);
      const std::uint64_t dv_ = hw::make_desc(vw + (kk >> 2) * KT * 128 + koff, 16, 1024);
      if (kk == 0) hw::wgmma_ss_zero<kBf16, 64>(g, dv_, ddo);
      else hw::wgmma_ss<kBf16, 64>(g, dv_, ddo, 1);
    }
    hw::wg_commit();
    hw::wg_wait<1>();  // S^T landed; dP^T may still run
    hw::reg_fence<32>(s);

    // P^T in place (per-element math and masks of key_pass.cuh).
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = n * 8 + c4 * 2 + (e & 1);
        float p = cuda::fast_exp2(s[4 * n + e] * a.scale_log2 - lse_b[col]);
        const int key = kabs0 + (e >> 1) * 8;
        if constexpr (kVis == kVisMoa) {
          const int tok = tok_b[col];
          if (rt < n_impl && !(tok >= key && (key < it.sink_end || key > lo_s[buf * 64 + col])))
            p = 0.f;
        } else if constexpr (kVis == kVisBlocks) {
          if ((diag && tok_b[col] < key) || key >= it.key_start + it.key_len) p = 0.f;
        } else {
          if (diag && tok_b[col] < key) p = 0.f;
        }
        s[4 * n + e] = p;
      }

    sm90_dv_dk_step<kBf16, D, T>(s, g, dt_b, c4, dv, dk, sDO, sQ, with_dq, smem + L.ds, key_row0);

    if (with_dq) {
      __syncthreads();  // dS^T complete
      // dQ rows 16 wi.. of the tile, 64 columns per part; part p on warpgroup p % NG.
      const int r0 = wi * 16 + gq;
      const int t0 = tok_b[r0], t1 = tok_b[r0 + 8];
      float* q0 = a.dq_acc + (std::int64_t(t0) * hq + head_s[buf * 64 + r0]) * D;
      float* q1 = a.dq_acc + (std::int64_t(t1) * hq + head_s[buf * 64 + r0 + 8]) * D;
      for (int part = wg; part < D / 64; part += NG) {
        float acc[32];
#pragma unroll
        for (int e = 0; e < 32; ++e) acc[e] = 0.f;  // defined before the first (overwriting) step
        const std::uint32_t kpart = sK + part * KT * 128;  // 64-column block `part` of K
        if (NG == 2) sm90_dq_part<kBf16, 8>(acc, sDS, kpart, KT, wi, lane);
        else sm90_dq_part<kBf16, 4>(acc, sDS, kpart, KT, wi, lane);
        if (a.dq_bulk) {  // to the tile's fp32 dQ rows in shared memory
          float* dq_s = reinterpret_cast<float*>(smem + L.dq);
#pragma unroll
          for (int n = 0; n < 8; ++n) {
            const int d = part * 64 + n * 8 + c4 * 2;
            *reinterpret_cast<float2*>(dq_s + r0 * L.kDqStride + d) = make_float2(acc[4 * n], acc[4 * n + 1]);
            *reinterpret_cast<float2*>(dq_s + (r0 + 8) * L.kDqStride + d) = make_float2(acc[4 * n + 2], acc[4 * n + 3]);
          }
        } else {
#pragma unroll
          for (int n = 0; n < 8; ++n) {
            const int d = part * 64 + n * 8 + c4 * 2;
            if (t0 >= 0) atomicAdd(reinterpret_cast<float2*>(q0 + d), make_float2(acc[4 * n], acc[4 * n + 1]));
            if (t1 >= 0) atomicAdd(reinterpret_cast<float2*>(q1 + d), make_float2(acc[4 * n + 2], acc[4 * n + 3]));
          }
        }
      }
      if (a.dq_bulk) {
        // every part of every row written (generic proxy), then one bulk reduce-add per row,
        // read by the TMA unit (async proxy); its source is waited for before the next tile's
        // writes (top of the loop) and its writes before the kernel ends
        hw::fence_proxy_async();
        __syncthreads();
        if (tid < 64) {
          const int tok = tok_b[tid];
          if (tok >= 0) {
            float* dst = a.dq_acc + (std::int64_t(tok) * hq + head_s[buf * 64 + tid]) * D;
            cuda::sm90::bulk_reduce_add_f32(dst, sb + L.dq + tid * L.kDqStride * 4, D * 4);
          }
          cuda::sm90::bulk_commit();
        }
      }
    }
  }
  if (a.dq_bulk && tid < 64) cuda::sm90::bulk_wait_all();

  // dK (scaled), dV: to the outputs, or to this item's fp32 partial slot.
  sm90_store_dk_dv<T, D>(a, it, dk, dv, key_row0, c4, KT);
#else
  (void)a;
#endif
}

template <class T, int D, int kVis>
void launch_sm90_key_pass_as(const KeyPassArgs& a, int n_items, cudaStream_t stream) {
  const int smem = Sm90KeyPassSmem<D>(a.groups, kVis == kVisMoa, a.dq_bulk != 0).bytes;
  MOBA_CUDA_CHECK(cudaFuncSetAttribute(sm90_key_pass_kernel<T, D, kVis>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  sm90_key_pass_kernel<T, D, kVis><<<n_items, 128 * a.groups, smem, stream>>>(a);
}

template <class T, int D>
void launch_sm90_key_pass_impl(const KeyPassArgs& a, int n_items, void* stream) {
  if (n_items <= 0) return;
  const auto s = static_cast<cudaStream_t>(stream);
  switch (a.visibility) {
    case kVisMoa: launch_sm90_key_pass_as<T, D, kVisMoa>(a, n_items, s); break;
    case kVisBlocks: launch_sm90_key_pass_as<T, D, kVisBlocks>(a, n_items, s); break;
    default: launch_sm90_key_pass_as<T, D, kVisCausal>(a, n_items, s); break;
  }
}

template <class T, int D>
bool sm90_key_pass_available_impl() {
  static const bool ok =  // per process (checked on the first call's device)
      ::moba::cuda::sm90a_kernel_runs(sm90_key_pass_kernel<T, D, kVisCausal>);
  return ok;
}

}  // namespace moba::detail::bwd

// One instantiation per .cu file.
#define MOBA_SM90_KEY_PASS_INSTANTIATE(kBf16, T, D)                                              \
  namespace moba::detail::bwd {                                                                \
  template <>                                                                                  \
  bool sm90_key_pass_available<kBf16, D>() {                                                   \
    return sm90_key_pass_available_impl<T, D>();                                               \
  }                                                                                            \
  template <>                                                                                  \
  void launch_sm90_key_pass<kBf16, D>(const KeyPassArgs& a, int n_items, void* stream) {       \
    launch_sm90_key_pass_impl<T, D>(a, n_items, stream);                                       \
  }                                                                                            \
  }
