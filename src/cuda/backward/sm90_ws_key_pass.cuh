// Key-major backward pass, sm_90a, warp-specialised (CudaOptions::backward_kernel =
// sm90_warp_specialized). Same work items, row order, masks, per-element math, dQ handling and
// outputs as the lock-step sm_90a pass (sm90_key_pass.cuh, which says what each product is);
// what changes is who loads and how the row tiles are handed over:
//   warpgroup 0 = producer (setmaxnreg down to 24 registers): loads the item's K, V once
//     (cp.async, zeros past key_len: the zero rows keep the dQ of rows past the key tile's end
//     exact) and then every row tile's Q, dO, lse, D, tokens and heads into a ring of kStages
//     stages (3 at D = 128, 4 at D = 64), each guarded by mbarriers full (128 producer
//     arrivals, plus the TMA transaction bytes) and empty (every consumer thread, once it no
//     longer reads the stage). Implicit row tiles (64 consecutive tokens of one head) come by
//     TMA boxes (64 columns x 64 tokens, 128-byte swizzle, row_tensor_map.hpp; rows past the
//     tile's end carry other tokens or the box's zero fill and are masked by their lse = inf,
//     as the zero-filled rows of the lock-step pass); listed (MoBA) row tiles are gathered by
//     cp.async from the producer's 128 threads (Hopper's TMA cannot gather rows), which wait for
//     their copies, fence them to the async proxy and arrive one tile later (after issuing the
//     next tile's copies: two gathered tiles in flight).
//   warpgroups 1..NG = consumers (setmaxnreg up to 240): warpgroup w owns keys 64(w-1).. of the
//     tile with dK, dV in its wgmma accumulators and runs the GEMM chain of every row tile while
//     the next tiles' loads are in flight; they never issue loads. The consumers synchronise
//     among themselves (named barrier 1) only around the shared dS^T and dQ buffers, i.e. only
//     on row tiles whose dQ this pass adds; elsewhere the warpgroups run independently.
// 128 * (NG + 1) threads; register pool: 128 x 24 + 256 x 240 = 64512 = 384 x 168 (the launch
// bound's allocation), so the consumers can take 240 (the lock-step pass uses 235-255 at
// D = 128 with no producer).
#pragma once

#include <cuda_runtime.h>

#include <cmath>

#include "cuda/backward/bwd_common.cuh"
#include "cuda/common/sm90_available.hpp"
#include "cuda/backward/row_tensor_map.hpp"
#include "cuda/backward/sm90_key_pass.cuh"
#include "cuda/backward/sm90_ws_key_pass.hpp"
#include "cuda/backward/sm90_ws_sync.cuh"
#include "cuda/forward/hopper_wgmma.cuh"
#include "cuda/forward/sm90_pipeline.cuh"

namespace moba::detail::bwd {

// Shared memory (offsets from a 1024-byte aligned base): K, V (64 NG rows each), Q[S], dO[S]
// (64 rows), dS^T (64 NG x 64), the fp32 dQ rows of a tile with KeyPassArgs::dq_bulk, the
// stages' row metadata (lse, D, token, head, MoA t - w) and the mbarriers.
template <int D>
struct Sm90WsKeyPassSmem {
  static constexpr int kStages = D == 128 ? 3 : 4;
  static constexpr int kRowTile = 64 * D * 2;  // bytes of one 64-row tile
  static constexpr int kDqStride = D + 8;      // floats per dQ row (32-byte pad: no bank conflicts)
  static constexpr int kProducerRegs = 24;
  static constexpr int kConsumerRegs = 240;
  int k, v, q, dout, ds, dq, meta, bars, bytes;
  __host__ __device__ constexpr Sm90WsKeyPassSmem(int groups, bool dq_bulk)
      : k(0), v(groups * kRowTile), q(2 * groups * kRowTile), dout(q + kStages * kRowTile),
        ds(dout + kStages * kRowTile), dq(ds + groups * 64 * 64 * 2),
        meta(dq + (dq_bulk ? 64 * kDqStride * 4 : 0)), bars(meta + 5 * kStages * 64 * 4),
        bytes(1024 + bars + (2 * kStages + 1) * 8) {}
};
static_assert(Sm90WsKeyPassSmem<128>(2, true).bytes <= 227 * 1024, "over the sm_90 shared-memory opt-in limit");
static_assert(Sm90WsKeyPassSmem<64>(2, true).bytes <= 227 * 1024, "over the sm_90 shared-memory opt-in limit");

template <class T, int D, int kVis>
__global__ void __launch_bounds__(384, 1)
    sm90_ws_key_pass_kernel(const __grid_constant__ KeyPassArgs a, const __grid_constant__ RowTensorMaps maps) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  // the grid is a bound when the plan was built on the device: past the count, no work
  // (uniform over the CTA, before any barrier)
  if (a.n_items != nullptr && int(blockIdx.x) >= *a.n_items) return;
  namespace hw = moba::cuda::hopper;
  namespace pl = moba::cuda::sm90;
  using L_t = Sm90WsKeyPassSmem<D>;
  constexpr int S = L_t::kStages;
  constexpr bool kBf16 = cuda::Dt<T>::kIsBf16;
  constexpr int kC = D / 8;  // 16-byte chunks per row
  extern __shared__ unsigned char smem_raw[];
  unsigned char* smem = reinterpret_cast<unsigned char*>(
      (reinterpret_cast<std::uintptr_t>(smem_raw) + 1023) & ~std::uintptr_t(1023));

  const KeyItem it = a.items[blockIdx.x];
  const int NG = a.groups, KT = 64 * NG;
  const L_t L(NG, a.dq_bulk != 0);
  const int tid = threadIdx.x;
  const int G = a.group, hq = a.hq;
  const std::uint32_t sb = smem_addr(smem);
  const std::uint32_t sK = sb + L.k, sV = sb + L.v;
  float* lse_s = reinterpret_cast<float*>(smem + L.meta);  // [stage][64]
  float* dt_s = lse_s + S * 64;
  int* tok_s = reinterpret_cast<int*>(dt_s + S * 64);
  int* head_s = tok_s + S * 64;
  int* lo_s = head_s + S * 64;  // MoA: t - w of the row
  const std::uint32_t bar0 = sb + L.bars;
  auto full = [&](int s) { return bar0 + 8u * std::uint32_t(s); };
  auto empty = [&](int s) { return bar0 + 8u * std::uint32_t(S + s); };
  const std::uint32_t kv_full = bar0 + 8u * std::uint32_t(2 * S);

  const int n_impl = it.impl_end > it.impl_begin ? ((it.impl_end - it.impl_begin + 63) / 64) * G : 0;
  // Row tiles from a rotated start (as the other key passes: spreads neighbours' dQ adds).
  const int n_rt = it.rt_end - it.rt_begin;
  const int rot = n_rt > 0 ? ((it.key_start >> 6) * 5 + it.g * 3) % n_rt : 0;
  auto rt_at = [&](int i) { const int x = i + rot; return it.rt_begin + (x >= n_rt ? x - n_rt : x); };

  if (tid == 0) {
    for (int s = 0; s < S; ++s) {
      pl::mbar_init(full(s), 128);       // every producer thread (+ the TMA bytes, if any)
      pl::mbar_init(empty(s), 128 * NG);  // every consumer thread, done with the stage
    }
    pl::mbar_init(kv_full, 128);
    pl::mbar_fence_init();
  }
  __syncthreads();

  if (tid < 128) {
    // ================================ producer ===========================================
    pl::regs_dec<L_t::kProducerRegs>();
    if (n_rt == 0) return;
    const T* kp = static_cast<const T*>(a.op.k);
    const T* vp = static_cast<const T*>(a.op.v);
    for (int c = tid; c < KT * kC; c += 128) {
      const int row = c / kC, chunk = c % kC;
      const bool ok = row < it.key_len;
      const std::int64_t tok = it.key_start + (ok ? row : 0);
      const std::uint32_t off = static_cast<std::uint32_t>(hw::swz(row, chunk, KT));
      cp_async16(sK + off, reinterpret_cast<const char*>(kp + tok * a.op.k_ts + it.g * a.op.k_hs) + chunk * 16, ok);
      cp_async16(sV + off, reinterpret_cast<const char*>(vp + tok * a.op.v_ts + it.g * a.op.v_hs) + chunk * 16, ok);
    }
    cp_async_commit();
    if (tid == 0 && maps.valid) {
      pl::tma_prefetch_map(&maps.q);
      pl::tma_prefetch_map(&maps.dout);
    }
    // Thread p serves row p % 64 of each tile: threads 0-63 its Q row, token, head and lse,
    // threads 64-127 its dO row, D and (MoA) window start.
    const int r = tid & 63;
    const bool q_half = tid < 64;
    // A gathered tile's arrival waits for its copies, so it is deferred until the next tile's
    // copies are issued: two tiles' loads in flight. `pend`: the stage still to be arrived on.
    int st = 0, pend = -1;
    bool kv_done = false;
    std::uint32_t round = 0;
    auto complete = [&](bool keep_newest) {  // copies landed -> async proxy -> arrivals
      if (keep_newest) ws::cp_async_wait_one();
      else cp_async_wait_all();
      hw::fence_proxy_async();
      if (!kv_done) pl::mbar_arrive(kv_full);
      kv_done = true;
      if (pend >= 0) pl::mbar_arrive(full(pend));  // also releases that tile's metadata writes
      pend = -1;
    };
    for (int i = 0; i < n_rt; ++i) {
      // the stage's previous tile released (tile i - S: never the deferred tile i - 1, so the
      // consumers can always get there)
      if (i >= S) pl::mbar_wait(empty(st), round ^ 1u);
      const int rt = rt_at(i);
      int tok, head;
      bool tma = false;
      if (rt < n_impl) {
        const int tt = rt / G;
        head = it.g * G + (rt - tt * G);
        const int tok0 = it.impl_begin + tt * 64;
        tok = tok0 + r < it.impl_end ? tok0 + r : -1;
        tma = maps.valid != 0;
        if (tma && tid == 0) {
          ws::mbar_expect_tx(full(st), 2 * L_t::kRowTile);
#pragma unroll
          for (int cb = 0; cb < D / 64; ++cb) {
            const std::uint32_t dq_ = sb + L.q + st * L_t::kRowTile + cb * 64 * 128;
            const std::uint32_t dd_ = sb + L.dout + st * L_t::kRowTile + cb * 64 * 128;
            if (maps.q_token_dim == 2) pl::tma_load_3d(dq_, &maps.q, cb * 64, head, tok0, full(st));
            else pl::tma_load_3d(dq_, &maps.q, cb * 64, tok0, head, full(st));
            if (maps.do_token_dim == 2) pl::tma_load_3d(dd_, &maps.dout, cb * 64, head, tok0, full(st));
            else pl::tma_load_3d(dd_, &maps.dout, cb * 64, tok0, head, full(st));
          }
        }
      } else {
        const int e = (rt - n_impl) * 64 + r;
        if (e < it.list_len) {
          const int v = __ldg(a.list + it.list_begin + e);
          tok = v / hq;
          head = v - tok * hq;
        } else {
          tok = -1;
          head = 0;
        }
      }
      if (!tma) {
        const bool ok = tok >= 0;
        const char* src = q_half ? reinterpret_cast<const char*>(static_cast<const T*>(a.op.q) +
                                                                 (ok ? tok * a.op.q_ts + head * a.op.q_hs : 0))
                                 : reinterpret_cast<const char*>(static_cast<const T*>(a.op.dout) +
                                                                 (ok ? tok * a.op.do_ts + head * a.op.do_hs : 0));
        const std::uint32_t dst = sb + (q_half ? L.q : L.dout) + st * L_t::kRowTile;
#pragma unroll 4
        for (int chunk = 0; chunk < kC; ++chunk)
          cp_async16(dst + static_cast<std::uint32_t>(hw::swz(r, chunk, 64)), src + (ok ? chunk * 16 : 0), ok);
        cp_async_commit();
      }
      const std::int64_t li = std::int64_t(head) * a.total + tok;
      if (q_half) {
        tok_s[st * 64 + r] = tok;
        head_s[st * 64 + r] = head;
        lse_s[st * 64 + r] = tok >= 0 ? a.lse[li] * kLog2e : INFINITY;
      } else {
        dt_s[st * 64 + r] = tok >= 0 ? a.dt[li] : 0.f;
        if constexpr (kVis == kVisMoa)
          lo_s[st * 64 + r] = tok >= 0 ? tok - a.moa_window[head * a.batch + it.seq] : 0;
      }
      if (tma) {
        if (pend >= 0 || !kv_done) complete(false);  // the previous tile's copies, K and V
        pl::mbar_arrive(full(st));  // releases the metadata; the TMA bytes complete the phase
      } else {
        if (pend >= 0 || !kv_done) complete(true);  // all but this tile's copies
        pend = st;
      }
      if (++st == S) {
        st = 0;
        round ^= 1u;
      }
    }
    if (pend >= 0) complete(false);
    return;
  }

  // ================================== consumers =============================================
  pl::regs_inc<L_t::kConsumerRegs>();
  const int ctid = tid - 128, wg = ctid >> 7, wi = (ctid >> 5) & 3, lane = ctid & 31;
  const int gq = lane >> 2, c4 = lane & 3;
  const int ncons = 128 * NG;
  const std::uint32_t sDS = sb + L.ds;

  // dK, dV rows of this warpgroup's 64 keys (layout as sm90_key_pass.cuh).
  float dk[D / 2], dv[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) dk[i] = dv[i] = 0.f;

  const int key_row0 = wg * 64 + wi * 16 + gq;  // this thread's key rows in the tile: +0, +8
  const int kabs0 = it.key_start + key_row0;
  const std::uint32_t kw = sK + wg * 64 * 128, vw = sV + wg * 64 * 128;  // this warpgroup's keys

  if (n_rt > 0) pl::mbar_wait(kv_full, 0);
  int st = 0;
  std::uint32_t round = 0;
  for (int i = 0; i < n_rt; ++i) {
    const int rt = rt_at(i);
    pl::mbar_wait(full(st), round);
    const bool with_dq = a.dq_acc != nullptr && (!a.dq_listed_only || rt >= n_impl);
    const bool diag = rt < n_impl && rt < G * NG;  // token tiles overlapping the key tile
    const std::uint32_t sQ = sb + L.q + st * L_t::kRowTile, sDO = sb + L.dout + st * L_t::kRowTile;
    const float* lse_b = lse_s + st * 64;
    const float* dt_b = dt_s + st * 64;
    const int* tok_b = tok_s + st * 64;

    // S^T = K_w Q^T, then dP^T = V_w dO^T, one commit group each (as sm90_key_pass.cuh).
    float s[32], g[32];
    hw::wg_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const std::uint32_t koff = (kk & 3) * 32;
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
    hw::wg_wait<1>();
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
          if (rt < n_impl && !(tok >= key && (key < it.sink_end || key > lo_s[st * 64 + col]))) p = 0.f;
        } else if constexpr (kVis == kVisBlocks) {
          if ((diag && tok_b[col] < key) || key >= it.key_start + it.key_len) p = 0.f;
        } else {
          if (diag && tok_b[col] < key) p = 0.f;
        }
        s[4 * n + e] = p;
      }

    // dV, dK; dS^T to shared for dQ while the wgmmas run (the previous dQ tile's reads of that
    // buffer ended before its barrier 1, after its dQ parts, which every consumer passed).
    sm90_dv_dk_step<kBf16, D, T>(s, g, dt_b, c4, dv, dk, sDO, sQ, with_dq, smem + L.ds, key_row0);

    if (with_dq) {
      // the last dQ tile's bulk adds have read the fp32 rows (their issuers wait, then the barrier)
      if (a.dq_bulk && ctid < 64) pl::bulk_wait_read_all();
      ws::named_sync_n(1, ncons);  // dS^T complete; the dQ row buffer free
      const int r0 = wi * 16 + gq;
      const int t0 = tok_b[r0], t1 = tok_b[r0 + 8];
      float* q0 = a.dq_acc + (std::int64_t(t0) * hq + head_s[st * 64 + r0]) * D;
      float* q1 = a.dq_acc + (std::int64_t(t1) * hq + head_s[st * 64 + r0 + 8]) * D;
      for (int part = wg; part < D / 64; part += NG) {
        float acc[32];
#pragma unroll
        for (int e = 0; e < 32; ++e) acc[e] = 0.f;
        const std::uint32_t kpart = sK + part * KT * 128;
        if (NG == 2) sm90_dq_part<kBf16, 8>(acc, sDS, kpart, KT, wi, lane);
        else sm90_dq_part<kBf16, 4>(acc, sDS, kpart, KT, wi, lane);
        if (a.dq_bulk) {
          float* dq_s = reinterpret_cast<float*>(smem + L.dq);
#pragma unroll
          for (int n = 0; n < 8; ++n) {
            const int d = part * 64 + n * 8 + c4 * 2;
            *reinterpret_cast<float2*>(dq_s + r0 * L_t::kDqStride + d) = make_float2(acc[4 * n], acc[4 * n + 1]);
            *reinterpret_cast<float2*>(dq_s + (r0 + 8) * L_t::kDqStride + d) =
                make_float2(acc[4 * n + 2], acc[4 * n + 3]);
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
      if (a.dq_bulk) hw::fence_proxy_async();  // the fp32 rows, next read by the TMA unit
      ws::named_sync_n(1, ncons);  // every dQ part done: rows complete, dS^T reads retired
      if (a.dq_bulk && ctid < 64) {
        const int tok = tok_b[ctid];
        if (tok >= 0) {
          float* dst = a.dq_acc + (std::int64_t(tok) * hq + head_s[st * 64 + ctid]) * D;
          pl::bulk_reduce_add_f32(dst, sb + L.dq + ctid * L_t::kDqStride * 4, D * 4);
        }
        pl::bulk_commit();
      }
    }
    pl::mbar_arrive(empty(st));  // this thread's last read of the stage (Q, dO, metadata) is done
    if (++st == S) {
      st = 0;
      round ^= 1u;
    }
  }
  if (a.dq_bulk && ctid < 64) pl::bulk_wait_all();

  // dK (scaled), dV: to the outputs, or to this item's fp32 partial slot.
  sm90_store_dk_dv<T, D>(a, it, dk, dv, key_row0, c4, KT);
#else
  (void)a;
  (void)maps;
#endif
}

template <class T, int D, int kVis>
void launch_sm90_ws_key_pass_as(const KeyPassArgs& a, const RowTensorMaps& maps, int n_items, cudaStream_t stream) {
  const int smem = Sm90WsKeyPassSmem<D>(a.groups, a.dq_bulk != 0).bytes;
  MOBA_CUDA_CHECK(cudaFuncSetAttribute(sm90_ws_key_pass_kernel<T, D, kVis>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  sm90_ws_key_pass_kernel<T, D, kVis><<<n_items, 128 * (a.groups + 1), smem, stream>>>(a, maps);
}

template <class T, int D>
void launch_sm90_ws_key_pass_impl(const KeyPassArgs& a, int n_items, bool row_tma, void* stream) {
  if (n_items <= 0) return;
  const auto s = static_cast<cudaStream_t>(stream);
  RowTensorMaps maps{};
  if (row_tma)
    maps = make_row_tensor_maps(a.op.q, a.op.q_ts, a.op.q_hs, a.op.dout, a.op.do_ts, a.op.do_hs, a.total, a.hq, D,
                                cuda::Dt<T>::kIsBf16);
  switch (a.visibility) {
    case kVisMoa: launch_sm90_ws_key_pass_as<T, D, kVisMoa>(a, maps, n_items, s); break;
    case kVisBlocks: launch_sm90_ws_key_pass_as<T, D, kVisBlocks>(a, maps, n_items, s); break;
    default: launch_sm90_ws_key_pass_as<T, D, kVisCausal>(a, maps, n_items, s); break;
  }
}

template <class T, int D>
bool sm90_ws_key_pass_available_impl() {
  static const bool ok =  // per process (checked on the first call's device)
      ::moba::cuda::sm90a_kernel_runs(sm90_ws_key_pass_kernel<T, D, kVisCausal>);
  return ok;
}

}  // namespace moba::detail::bwd

// One instantiation per .cu file.
#define MOBA_SM90_WS_KEY_PASS_INSTANTIATE(kBf16, T, D)                                           \
  namespace moba::detail::bwd {                                                                \
  template <>                                                                                  \
  bool sm90_ws_key_pass_available<kBf16, D>() {                                                \
    return sm90_ws_key_pass_available_impl<T, D>();                                            \
  }                                                                                            \
  template <>                                                                                  \
  void launch_sm90_ws_key_pass<kBf16, D>(const KeyPassArgs& a, int n_items, bool row_tma,      \
                                         void* stream) {                                       \
    launch_sm90_ws_key_pass_impl<T, D>(a, n_items, row_tma, stream);                           \
  }                                                                                            \
  }
