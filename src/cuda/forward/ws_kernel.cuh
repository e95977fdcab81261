// The forward attention engine, sm_90a warp-specialised path (CudaOptions::forward_kernel =
// sm90_warp_specialized; also what sm90_wgmma selects since the lock-step wgmma kernel it named
// was removed). Same work items (work_item.cuh, 128-row tiles: the 128-row tables), visibility
// functors, online-softmax unit and epilogue as the mma.sync kernel (attn_kernel.cuh); the
// swizzled shared-memory tiles and wgmma shapes of hopper_wgmma.cuh. Who does what:
//   persistent CTAs (one per SM), each walking work items (tiles) blockIdx.x, + gridDim.x, ...
//   warpgroup 0 = producer (setmaxnreg down to 40 registers): warps 1-3 resolve each work item
//     once (its WorkTile and row tokens, into one of two shared slots, tile_full[slot]) a tile
//     ahead of the consumers, then copy its Q rows (cp.async: gathered MoBA rows are arbitrary
//     tokens, which a TMA box cannot name) once the consumers released the previous tile's Q
//     (q_full / q_empty). Resolving a tile is a chain of dependent global loads (its bucket from
//     the tile_bucket table, a binary search over the sequences, the row tokens); done by the TMA
//     thread and the consumers at every tile start it (then with a binary search over the
//     buckets too) stalled the pipeline at each tile boundary (ncu: L1TEX scoreboard the top
//     stall, ~36%);
//     one thread of warp 0 streams every tile's K and V chunks with TMA (cp.async.bulk.tensor,
//     128 keys x 64 columns per box, 128-byte swizzle) into kStages buffers, each guarded by
//     mbarriers k_full / v_full (one arrival + the transaction bytes) and empty (256 consumer
//     arrivals), running ahead into the next tile while the consumers finish this one.
//   warpgroups 1 and 2 = consumers (setmaxnreg up to 232 registers), 64 query rows each, both
//     over every chunk of the tile. Per chunk c (intra-warpgroup overlap): issue S_c = Q K_c^T
//     and O += P_{c-1} V_{c-1} back to back, wait for S_c only, run the softmax of chunk c while
//     the P V still runs, then wait for it, release chunk c-1's buffers, rescale O, pack P_c.
//     Ping-pong (named barriers 1 and 2): a consumer issues its wgmmas only in its turn and
//     passes the turn right after issuing, so one warpgroup's softmax overlaps the other's
//     GEMMs on the tensor cores.
// Online softmax in base 2 with the scale folded into one FMA per score: p = 2^(s*c - m), where
// c = scale * log2(e) and m is the running maximum of s*c.
// Which keys a tile sees is the compile-time Visibility<Kind> functor (common/visibility.cuh).
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cfloat>
#include <cstdint>

#include "cuda/common/check.hpp"
#include "cuda/common/mma.cuh"
#include "cuda/common/online_softmax.cuh"
#include "cuda/common/sm90_available.hpp"
#include "cuda/common/visibility.cuh"
#include "cuda/forward/attn_params.hpp"
#include "cuda/forward/epilogue.cuh"
#include "cuda/forward/hopper_wgmma.cuh"
#include "cuda/forward/sm90_pipeline.cuh"
#include "cuda/forward/tensor_map.hpp"
#include "cuda/forward/work_item.cuh"

namespace moba::cuda {

template <int D>
struct WsTraits {
  static constexpr int kRows = 128;  // query rows per CTA: 2 consumer warpgroups x 64
  static constexpr int kKeys = 128;  // keys per chunk
  // D = 128: 3 x 64 KB of K/V + 32 KB of Q = 224 KB (opt-in limit 227 KB); D = 64: 5 x 32 KB
  static constexpr int kStages = D == 128 ? 3 : 5;
  static constexpr int kThreads = 384;
  static constexpr int kQThreads = 96;  // producer warps 1-3 load Q; warp 0 drives the TMA
  static constexpr int kProducerRegs = 40;
  static constexpr int kConsumerRegs = 232;  // 128 x 40 + 256 x 232 <= 65536
  static constexpr int kQBytes = kRows * D * 2;
  static constexpr int kTileBytes = kKeys * D * 2;  // one K or V chunk
  static constexpr int kKOff = kQBytes;
  static constexpr int kVOff = kKOff + kStages * kTileBytes;
  static constexpr int kBarOff = kVOff + kStages * kTileBytes;
  // q_full, q_empty, k_full[S], v_full[S], empty[S], tile_full[2]
  static constexpr int kNumBars = 2 + 3 * kStages + 2;
  static constexpr int kSlotOff = (kBarOff + kNumBars * 8 + 15) / 16 * 16;  // WsTileSlot[2]
  static constexpr int kRowTokOff = kSlotOff + 128;                        // int[2][kRows]
  // MoBA one pass: the tile's union block ids (int[2][kOnePassMaxUnion]) and its rows' choice
  // masks (uint16[2][kRows]); 640 bytes, reserved for every kind (the CTA owns its SM anyway)
  static constexpr int kUnionOff = kRowTokOff + 2 * kRows * 4;
  static constexpr int kMaskOff = kUnionOff + 2 * kOnePassMaxUnion * 4;
  static constexpr int kSmemBytes = 1024 + kMaskOff + 2 * kRows * 2;  // 1 KB: swizzle alignment
  static_assert(kSmemBytes <= 227 * 1024, "shared memory over the sm_90 opt-in limit");
};

// A resolved work item, as the producer leaves it in shared memory for the TMA thread and the
// consumers (two slots: tile n in slot n & 1).
struct WsTileSlot {
  WorkTile w;
  int seq_begin;  // token of the sequence's position 0
};
static_assert(sizeof(WsTileSlot) <= 64, "two slots in the 128 bytes reserved for them");

namespace ws {

// Named barrier ids: 0 is __syncthreads; 1 + w is consumer w's turn to issue wgmmas.
constexpr int kTurnBarrier = 1;

}  // namespace ws

template <class T, int D, int Kind>
__global__ void __launch_bounds__(384, 1)
    attn_fwd_ws_kernel(const __grid_constant__ AttnParams p,
                       const __grid_constant__ KvTensorMaps maps) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using namespace hopper;
  using namespace sm90;
  using Tr = WsTraits<D>;
  using Vis = Visibility<Kind>;
  constexpr int S = Tr::kStages;
  constexpr int KN = Tr::kKeys;
  constexpr int KD = D / 16;  // k-steps over the head dim (S = Q K^T)
  constexpr int ND = D / 8;   // n8 tiles of O
  constexpr int NS = KN / 8;  // n8 tiles of S
  constexpr bool kBf16 = Dt<T>::kIsBf16;
  constexpr bool kGather = Vis::kGather;

  extern __shared__ unsigned char smem_raw[];
  unsigned char* base = reinterpret_cast<unsigned char*>(
      (reinterpret_cast<std::uintptr_t>(smem_raw) + 1023) & ~std::uintptr_t(1023));
  unsigned char* sQ = base;
  const std::uint32_t q_addr0 = smem_addr(base);
  const std::uint32_t k_addr0 = q_addr0 + Tr::kKOff;
  const std::uint32_t v_addr0 = q_addr0 + Tr::kVOff;
  const std::uint32_t bar0 = q_addr0 + Tr::kBarOff;
  const std::uint32_t q_full = bar0, q_empty = bar0 + 8;
  auto k_full = [&](int s) { return bar0 + 8u * std::uint32_t(2 + s); };
  auto v_full = [&](int s) { return bar0 + 8u * std::uint32_t(2 + S + s); };
  auto empty = [&](int s) { return bar0 + 8u * std::uint32_t(2 + 2 * S + s); };
  auto tile_full = [&](int slot) { return bar0 + 8u * std::uint32_t(2 + 3 * S + slot); };
  WsTileSlot* slots = reinterpret_cast<WsTileSlot*>(base + Tr::kSlotOff);
  int* row_tok = reinterpret_cast<int*>(base + Tr::kRowTokOff);  // [slot][row]
  int* union_blk = reinterpret_cast<int*>(base + Tr::kUnionOff);  // [slot][kOnePassMaxUnion]
  std::uint16_t* row_mask = reinterpret_cast<std::uint16_t*>(base + Tr::kMaskOff);  // [slot][row]
  using Chunks = ChunksOf<Vis::kUnion, KN>;

  const int tid = threadIdx.x, wg = tid >> 7, warp = (tid >> 5) & 3, lane = tid & 31;
  const int items = Vis::items(p);  // CTAs take items blockIdx.x, + gridDim.x, ...
  if (int(blockIdx.x) >= items) return;  // uniform over the CTA, before any barrier

  if (tid == 0) {
    mbar_init(q_full, Tr::kQThreads);  // every Q-loading producer thread, per tile
    mbar_init(q_empty, 2 * 128);       // every consumer thread, after its tile's last Q K^T
    for (int s = 0; s < S; ++s) {
      mbar_init(k_full(s), 1);  // the producer's arrive.expect_tx (+ the TMA bytes)
      mbar_init(v_full(s), 1);
      mbar_init(empty(s), 2 * 128);  // every consumer thread, after its wgmmas read the chunk
    }
    mbar_init(tile_full(0), Tr::kQThreads);  // every Q-loading thread, once the slot is written
    mbar_init(tile_full(1), Tr::kQThreads);
    mbar_fence_init();
  }
  __syncthreads();

  if (wg == 0) {
    // ================================ producer ===========================================
    regs_dec<Tr::kProducerRegs>();
    if (warp == 0) {
      // one thread streams every tile's K and V chunks through the stages
      if (lane != 0) return;
      tma_prefetch_map(&maps.k);
      tma_prefetch_map(&maps.v);
      int s = 0, issued = 0, n = 0;
      std::uint32_t round_parity = 0;  // parity of the round stage s is in
      for (int item = blockIdx.x; item < items; item += gridDim.x, ++n) {
        mbar_wait(tile_full(n & 1), std::uint32_t(n >> 1) & 1u);
        const WorkTile w = slots[n & 1].w;
        const int seq_begin = slots[n & 1].seq_begin;
        const int hk = w.h / p.group;
        // union block ids (one-pass tiles): the slot is rewritten only after the consumers
        // released this tile's Q, i.e. after they saw its last K chunk, issued by this loop
        const auto chunks = Chunks::make(w, union_blk + (n & 1) * kOnePassMaxUnion, p.block_size);
        for (int c = 0; c < chunks.count; ++c, ++issued) {
          // stage s is free once the consumers released its previous chunk (round - 1)
          if (issued >= S) mbar_wait(empty(s), round_parity ^ 1u);
          const int tok = seq_begin + chunks.begin(c);
          mbar_arrive_expect_tx(k_full(s), Tr::kTileBytes);
#pragma unroll
          for (int cb = 0; cb < D / 64; ++cb) {
            const std::uint32_t dst = k_addr0 + s * Tr::kTileBytes + cb * KN * 128;
            if (maps.k_token_dim == 2) tma_load_3d(dst, &maps.k, cb * 64, hk, tok, k_full(s));
            else tma_load_3d(dst, &maps.k, cb * 64, tok, hk, k_full(s));
          }
          mbar_arrive_expect_tx(v_full(s), Tr::kTileBytes);
#pragma unroll
          for (int cb = 0; cb < D / 64; ++cb) {
            const std::uint32_t dst = v_addr0 + s * Tr::kTileBytes + cb * KN * 128;
            if (maps.v_token_dim == 2) tma_load_3d(dst, &maps.v, cb * 64, hk, tok, v_full(s));
            else tma_load_3d(dst, &maps.v, cb * 64, tok, hk, v_full(s));
          }
          if (++s == S) {
            s = 0;
            round_parity ^= 1u;
          }
        }
      }
    } else {
      // warps 1-3: resolve each tile into its slot (slot n & 1 was last read for tile n - 2,
      // whose Q the consumers released before this loop's wait for tile n - 1), then its Q rows
      // (zeros past the tile's rows) once the consumers are done reading the previous tile's Q
      int n = 0;
      for (int item = blockIdx.x; item < items; item += gridDim.x, ++n) {
        WorkTile w;
        Vis::tile(p, item, w);
        const int seq_begin = p.cu[w.seq];
        int* toks = row_tok + (n & 1) * Tr::kRows;
        for (int r = tid - 32; r < Tr::kRows; r += Tr::kQThreads)
          toks[r] = row_token<kGather>(p, w, seq_begin, r);
        if (tid == 32) {
          slots[n & 1].w = w;
          slots[n & 1].seq_begin = seq_begin;
        }
        if constexpr (Vis::kUnion) {  // the plan's union and row masks (w.start: dense item)
          const int* u_src = p.op_union + std::int64_t(w.start) * kOnePassUnionStride + 1;
          for (int u = tid - 32; u < w.e0 / p.block_size; u += Tr::kQThreads)
            union_blk[(n & 1) * kOnePassMaxUnion + u] = u_src[u];
          const std::uint16_t* m_src = p.op_mask + std::int64_t(w.start) * Tr::kRows;
          for (int r = tid - 32; r < Tr::kRows; r += Tr::kQThreads)
            row_mask[(n & 1) * Tr::kRows + r] = m_src[r];
        }
        mbar_arrive(tile_full(n & 1));
        if (n > 0) mbar_wait(q_empty, std::uint32_t(n - 1) & 1u);
        for (int r = tid - 32; r < Tr::kRows; r += Tr::kQThreads) {
          const int tok = toks[r];  // written by this thread above
          const T* src = static_cast<const T*>(p.q) +
                         (tok >= 0 ? std::int64_t(tok) * p.q_ts + std::int64_t(w.h) * p.q_hs : 0);
#pragma unroll
          for (int cc = 0; cc < D / 8; ++cc)
            cp_async_16(sQ + swz(r, cc, Tr::kRows), src + cc * 8, tok >= 0);
        }
        cp_async_commit();
        cp_async_wait<0>();
        fence_proxy_async();  // generic-proxy writes, read by wgmma (async proxy)
        mbar_arrive(q_full);
      }
    }
    return;
  }

  // ================================== consumers =============================================
  regs_inc<Tr::kConsumerRegs>();
  const int cw = wg - 1;  // consumer 0 or 1: rows 64 cw .. 64 cw + 63 of each tile
  const int g = lane >> 2, c4 = lane & 3;
  const int row0 = cw * 64 + warp * 16 + g, row1 = row0 + 8;
  const float sl2 = p.scale_log2;
  const std::uint32_t q_addr = q_addr0 + cw * 64 * 128;  // this warpgroup's 64 rows
  auto my_turn = [&]() { named_sync<256>(ws::kTurnBarrier + cw); };
  auto pass_turn = [&]() { named_arrive<256>(ws::kTurnBarrier + (cw ^ 1)); };

  float o[ND][4];
  float s[NS][4];
  std::uint32_t pa[KN / 16][4];
  float m[2], l[2], alpha[2];

  // S = Q K^T for the chunk in stage st: 64 x KN per warpgroup, K-major A and B
  auto issue_qk = [&](int st) {
    const std::uint32_t k_addr = k_addr0 + st * Tr::kTileBytes;
#pragma unroll
    for (int kk = 0; kk < KD; ++kk) {
      const std::uint32_t koff = (kk & 3) * 32;  // 16 columns = 32 bytes inside the atom row
      const std::uint64_t da = make_desc(q_addr + (kk >> 2) * Tr::kRows * 128 + koff, 16, 1024);
      const std::uint64_t db = make_desc(k_addr + (kk >> 2) * KN * 128 + koff, 16, 1024);
      if (kk == 0) wgmma_ss_zero<kBf16, KN>(&s[0][0], da, db);
      else wgmma_ss<kBf16, KN>(&s[0][0], da, db, 1);
    }
  };
  // O += P V: P (64 x KN) from registers, V MN-major (d contiguous) from shared memory
  auto issue_pv = [&](int st) {
    const std::uint32_t v_addr = v_addr0 + st * Tr::kTileBytes;
#pragma unroll
    for (int kk = 0; kk < KN / 16; ++kk) {
      // 16 keys = two 8-row groups (SBO 1024 B); D/64 column blocks of KN x 128 B (LBO)
      const std::uint64_t db = make_desc(v_addr + kk * 16 * 128, KN * 128, 1024);
      wgmma_rs<kBf16, D>(&o[0][0], pa[kk], db, 1);
    }
  };
  auto pack = [&]() {
#pragma unroll
    for (int kk = 0; kk < KN / 16; ++kk) {
      pa[kk][0] = Dt<T>::pack(s[2 * kk][0], s[2 * kk][1]);
      pa[kk][1] = Dt<T>::pack(s[2 * kk][2], s[2 * kk][3]);
      pa[kk][2] = Dt<T>::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      pa[kk][3] = Dt<T>::pack(s[2 * kk + 1][2], s[2 * kk + 1][3]);
    }
  };

  int st = 0;                  // stage of the next chunk to consume (over all tiles)
  std::uint32_t ph = 0;        // its full barriers' phase parity
  auto advance = [&]() {
    if (++st == S) {
      st = 0;
      ph ^= 1u;
    }
  };
  int n = 0;
  for (int item = blockIdx.x; item < items; item += gridDim.x, ++n) {
    mbar_wait(q_full, std::uint32_t(n) & 1u);  // this tile's Q rows, slot and row tokens
    const WorkTile w = slots[n & 1].w;
    const Vis vis(p, w);
    const auto chunks = Chunks::make(w, nullptr, p.block_size);  // union chunks: masks only
    const int nchunks = chunks.count;  // >= 1: a row sees its own position

    // Turn accounting, per tile: each consumer takes nchunks + 1 turns (S_0, one per later
    // chunk, the last P V) and passes the turn after each, except consumer 1's last pass,
    // which would have no taker: consumer 1 gives consumer 0 the tile's first turn instead.
    // Consumer 0's barrier so sees 1 + nchunks arrivals and consumer 1's nchunks + 1, matching
    // each one's nchunks + 1 syncs; the strict alternation keeps arrivals of different turns
    // (and tiles) from meeting in one barrier phase.
    if (cw == 1) named_arrive<256>(ws::kTurnBarrier + 0);

    // this thread's two rows (token, position in the sequence; token -1 past the tile's rows)
    // and this warp's first and last row positions (dense kinds: rows are consecutive)
    const int seq_begin = slots[n & 1].seq_begin;
    int tok_r[2], pos_r[2];
    unsigned mask_r[2] = {0u, 0u};  // one-pass tiles: the union blocks each row chose
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int r = i == 0 ? row0 : row1;
      tok_r[i] = row_tok[(n & 1) * Tr::kRows + r];
      pos_r[i] = row_position<kGather>(w, tok_r[i], seq_begin, r);
      if constexpr (Vis::kUnion) mask_r[i] = row_mask[(n & 1) * Tr::kRows + r];
    }
    const int pos_first = w.t0 + cw * 64 + warp * 16, pos_last = pos_first + 15;

#pragma unroll
    for (int nn = 0; nn < ND; ++nn) o[nn][0] = o[nn][1] = o[nn][2] = o[nn][3] = 0.f;
    m[0] = m[1] = -INFINITY;
    l[0] = l[1] = 0.f;
    if constexpr (kGather) resume_rows<D, ND>(p, tok_r, w.h, c4, o, m, l);  // earlier passes

    // Mask (visibility.cuh), then the online-softmax update (online_softmax.cuh): running
    // max, P = 2^(s c - m) in place, running sum; alpha rescales the older O.
    auto softmax = [&](int c) {
      if constexpr (Vis::kUnion) {
        if (chunks.in_union(c)) {  // a whole block: one predicate per row (it chose it or not)
          const int u = chunks.union_index(c);
#pragma unroll
          for (int i = 0; i < 2; ++i)
            if (!Vis::row_chose(mask_r[i], u))
#pragma unroll
              for (int nn = 0; nn < NS; ++nn) s[nn][2 * i] = s[nn][2 * i + 1] = -INFINITY;
          softmax_update<true>(s, m, l, alpha, sl2);
          return;
        }
      }
      const int kb = chunks.begin(c), ke = chunks.end(c);
      if (ke - kb < KN || !vis.all_visible(kb, pos_first, pos_last)) {
#pragma unroll
        for (int nn = 0; nn < NS; ++nn)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int key = kb + nn * 8 + 2 * c4 + (e & 1);
            if (!(key < ke && vis.visible(key, pos_r[e >> 1]))) s[nn][e] = -INFINITY;
          }
      }
      softmax_update<true>(s, m, l, alpha, sl2);
    };

    // chunk 0: S_0 and its softmax; O is defined by ordinary instructions, no P V in flight
    mbar_wait(k_full(st), ph);
    my_turn();
    reg_fence<ND * 4>(&o[0][0]);
    wg_fence();
    issue_qk(st);
    wg_commit();
    pass_turn();
    wg_wait<0>();
    reg_fence<NS * 4>(&s[0][0]);
    if (nchunks == 1) mbar_arrive(q_empty);  // the tile's last read of Q is done
    softmax(0);
    rescale_rows(o, alpha);
    pack();
    int prev = st;                // stage of chunk c - 1
    std::uint32_t prev_ph = ph;
    advance();

    for (int c = 1; c < nchunks; ++c) {
      mbar_wait(k_full(st), ph);
      mbar_wait(v_full(prev), prev_ph);
      my_turn();
      reg_fence<ND * 4>(&o[0][0]);
      reg_fence_u<KN / 4>(&pa[0][0]);
      wg_fence();
      issue_qk(st);
      wg_commit();
      issue_pv(prev);
      wg_commit();
      pass_turn();
      wg_wait<1>();  // S_c; the P V of chunk c - 1 keeps running under the softmax
      reg_fence<NS * 4>(&s[0][0]);
      if (c == nchunks - 1) mbar_arrive(q_empty);
      softmax(c);
      wg_wait<0>();
      reg_fence<ND * 4>(&o[0][0]);
      reg_fence_u<KN / 4>(&pa[0][0]);
      mbar_arrive(empty(prev));  // chunk c - 1's K and V are read
      rescale_rows(o, alpha);
      pack();
      prev = st;
      prev_ph = ph;
      advance();
    }

    // the last chunk's P V
    mbar_wait(v_full(prev), prev_ph);
    my_turn();
    reg_fence<ND * 4>(&o[0][0]);
    reg_fence_u<KN / 4>(&pa[0][0]);
    wg_fence();
    issue_pv(prev);
    wg_commit();
    if (cw == 0) pass_turn();
    wg_wait<0>();
    reg_fence<ND * 4>(&o[0][0]);
    reg_fence_u<KN / 4>(&pa[0][0]);
    mbar_arrive(empty(prev));

    write_rows<T, D, ND, Kind>(p, o, m, l, tok_r, pos_r, w.h, c4);
  }
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  __trap();  // a Hopper build without the sm_90a features: never selected (see forward.cpp)
#endif
}

// True when this binary holds sm_90a code for the kernel, the current device runs it and the
// driver encodes tensor maps.
template <class T, int D>
bool ws_attention_available() {
  static const bool ok =  // per process (checked on the first call's device)
      ::moba::cuda::sm90a_kernel_runs(attn_fwd_ws_kernel<T, D, kDenseFull>) && tensor_maps_available();
  return ok;
}

// grid_x * grid_y bounds the number of tiles. Persistent: one CTA per SM, each walking work
// items blockIdx.x, + gridDim.x, ... so the next tile's Q, K and V load while the current one
// computes; otherwise one CTA per tile.
template <class T, int D, int Kind>
void launch_attention_ws_kind(const AttnParams& p, const KvTensorMaps& maps, int grid_x,
                              int grid_y, bool persistent, void* stream) {
  if (grid_x <= 0 || grid_y <= 0) return;
  using Tr = WsTraits<D>;
  int dev = 0, sms = 0;
  MOBA_CUDA_CHECK(cudaGetDevice(&dev));
  MOBA_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  const long long bound = (long long)grid_x * grid_y;
  const int grid = int(std::min<long long>(bound, persistent ? std::max(sms, 1) : 0x7fffffff));
  MOBA_CUDA_CHECK(cudaFuncSetAttribute(attn_fwd_ws_kernel<T, D, Kind>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       Tr::kSmemBytes));
  attn_fwd_ws_kernel<T, D, Kind><<<grid, Tr::kThreads, Tr::kSmemBytes,
                                   static_cast<cudaStream_t>(stream)>>>(p, maps);
  MOBA_CUDA_LAUNCH_CHECK();
}

}  // namespace moba::cuda

// One (dtype, head_dim, kind) per line; the ws_attn_<dtype>_d<D>_<kinds>.cu files use it.
#define MOBA_INSTANTIATE_ATTENTION_WS_KIND(T, D, KIND)                                        \
  template void moba::cuda::launch_attention_ws_kind<T, D, KIND>(                            \
      const moba::cuda::AttnParams&, const moba::cuda::KvTensorMaps&, int, int, bool, void*);
#define MOBA_INSTANTIATE_ATTENTION_WS_PROBE(T, D) \
  template bool moba::cuda::ws_attention_available<T, D>();
