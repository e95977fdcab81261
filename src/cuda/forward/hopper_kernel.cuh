// The forward attention engine, sm_90a path (Hopper warpgroup MMA). Same work items, masks,
// running-state and LSE conventions as attn_kernel.cuh (see there), with larger tiles:
//   one CTA = 2 warpgroups = 128 query rows of one query head (warpgroup w owns rows 64w..64w+63)
//   keys stream through shared memory in 128-key chunks (cp.async by all 256 threads, three
//   buffers), so each K/V byte read from L2 feeds 128 rows instead of 64.
// Per chunk c: wait for chunk c, one barrier, start loading chunk c + 1, retire O += P V of chunk
// c - 1 (left in flight across the barrier), S = Q K_c^T, softmax, issue O += P_c V_c without
// waiting. Chunk c + 1 goes to the buffer last read by the P V of chunk c - 2, which every
// warpgroup retired before this barrier.
// Shared-memory tiles use the 128-byte swizzle that wgmma reads natively: a tile of R rows x D
// columns (b16) is stored as D/64 column blocks of R rows x 128 bytes; the 16-byte piece c of
// row r sits at piece position c ^ (r & 7). Q and K are K-major operands (S = Q K^T); V is the
// MN-major B operand of O += P V (P from registers, the S accumulator re-packed to b16).
// Dense tiles are ceil(len / 128) per sequence (tile_off is the 128-row table);
// gathered waves use 128-row bucket tiles (btile_off built with 128).
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <type_traits>
#include <cfloat>
#include <cstdint>

#include "cuda/common/check.hpp"
#include "cuda/common/mma.cuh"
#include "cuda/common/visibility.cuh"
#include "cuda/forward/attn_params.hpp"
#include "cuda/forward/epilogue.cuh"
#include "cuda/forward/hopper_wgmma.cuh"
#include "cuda/forward/work_item.cuh"

namespace moba::cuda {

template <class T, int D>
struct HopperTraits {
  static constexpr int kRows = 128;
  static constexpr int kKeys = 128;
  static constexpr int kQBytes = kRows * D * 2;
  static constexpr int kKVBytes = kKeys * D * 2;
  static constexpr int kStages = 3;
  // 1 KB slack to align the tiles to the 1024-byte swizzle atom, Q, 3 x (K, V), row tables:
  // 226 KB for D = 128 (the opt-in limit is 227 KB)
  static constexpr int kSmemBytes = 1024 + kQBytes + 2 * kStages * kKVBytes + 2 * kRows * 4;
};

namespace hopper {

// Byte offset of 16-byte piece cc (of D/8) in row r of a swizzled tile with `rows` rows.
__device__ __forceinline__ int swz(int r, int cc, int rows) {
  return (cc >> 3) * rows * 128 + r * 128 + (((cc & 7) ^ (r & 7)) << 4);
}

// wgmma shared-memory descriptor, 128-byte swizzle. lbo/sbo in bytes.
__device__ __forceinline__ std::uint64_t make_desc(std::uint32_t addr, std::uint32_t lbo,
                                                   std::uint32_t sbo) {
  std::uint64_t d = 0;
  d |= std::uint64_t((addr & 0x3FFFF) >> 4);
  d |= std::uint64_t((lbo >> 4) & 0x3FFF) << 16;
  d |= std::uint64_t((sbo >> 4) & 0x3FFF) << 32;
  d |= std::uint64_t(1) << 62;  // 128B swizzle
  return d;
}

__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wg_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
// Keeps the compiler from moving accesses of an accumulator across the async MMA window.
template <int N>
__device__ __forceinline__ void reg_fence(float* r) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}

template <int N>
__device__ __forceinline__ void reg_fence_u(std::uint32_t* r) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+r"(r[i])::"memory");
}

}  // namespace hopper

template <class T, int D>
__global__ void __launch_bounds__(256, 1) attn_fwd_hopper_kernel(const AttnParams p) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using namespace hopper;
  using Tr = HopperTraits<T, D>;
  constexpr int KN = Tr::kKeys;
  constexpr int KD = D / 16;   // k-steps over the head dim (S = Q K^T)
  constexpr int ND = D / 8;    // n8 tiles of O
  constexpr int NS = KN / 8;   // n8 tiles of S
  constexpr bool kBf16 = Dt<T>::kIsBf16;
  extern __shared__ unsigned char smem_raw[];
  unsigned char* base = reinterpret_cast<unsigned char*>(
      (reinterpret_cast<std::uintptr_t>(smem_raw) + 1023) & ~std::uintptr_t(1023));
  unsigned char* sQ = base;
  unsigned char* sK = sQ + Tr::kQBytes;                  // kStages buffers
  unsigned char* sV = sK + Tr::kStages * Tr::kKVBytes;   // kStages buffers
  int* sTok = reinterpret_cast<int*>(sV + Tr::kStages * Tr::kKVBytes);
  int* sPos = sTok + 128;

  const int tid = threadIdx.x, wg = tid >> 7, warp = (tid >> 5) & 3, lane = tid & 31;
  const int g = lane >> 2, c4 = lane & 3;
  const bool gather = p.kind == kGatherWave;

  // ---- which rows and which keys (work_item.cuh, 128-row tiles) ---------------------------
  WorkItem w;
  if (!resolve_work_item<128>(p, tid, sTok, sPos, w)) return;
  const int h = w.h, seq = w.seq, t0 = w.t0, moa_w = w.moa_w;
  const int r0b = w.r0b, r0e = w.r0e, r1b = w.r1b, r1e = w.r1e;
  const int seq_begin = p.cu[seq];
  const int hk = h / p.group;
  __syncthreads();

  const T* qg = static_cast<const T*>(p.q);
  const T* kg = static_cast<const T*>(p.k);
  const T* vg = static_cast<const T*>(p.v);

  // ---- async loads into the swizzled tiles -------------------------------------------------
  constexpr int kPieces = D / 8;  // 16-byte pieces per row
  auto load_q = [&]() {
#pragma unroll
    for (int it = 0; it < 128 * kPieces / 256; ++it) {
      const int idx = tid + it * 256;
      const int r = idx / kPieces, cc = idx % kPieces;
      const int tok = sTok[r];
      const T* src = qg + (tok >= 0 ? std::int64_t(tok) * p.q_ts + std::int64_t(h) * p.q_hs + cc * 8 : 0);
      cp_async_16(sQ + swz(r, cc, 128), src, tok >= 0);
    }
  };
  const int n0 = (r0e - r0b + KN - 1) / KN;
  const int n1 = (r1e - r1b + KN - 1) / KN;
  const int nchunks = n0 + n1;
  auto chunk_range = [&](int cidx, int& kb, int& ke) {
    if (cidx < n0) { kb = r0b + cidx * KN; ke = min(kb + KN, r0e); }
    else { kb = r1b + (cidx - n0) * KN; ke = min(kb + KN, r1e); }
  };
  auto load_kv = [&](int cidx, int buf) {
    int kb, ke;
    chunk_range(cidx, kb, ke);
    unsigned char* dk = sK + buf * Tr::kKVBytes;
    unsigned char* dv = sV + buf * Tr::kKVBytes;
#pragma unroll
    for (int it = 0; it < KN * kPieces / 256; ++it) {
      const int idx = tid + it * 256;
      const int r = idx / kPieces, cc = idx % kPieces;
      const int kp = kb + r;
      const bool ok = kp < ke;
      const std::int64_t tok = seq_begin + (ok ? kp : kb);
      const int off = swz(r, cc, KN);
      cp_async_16(dk + off, kg + tok * p.k_ts + std::int64_t(hk) * p.k_hs + cc * 8, ok);
      cp_async_16(dv + off, vg + tok * p.v_ts + std::int64_t(hk) * p.v_hs + cc * 8, ok);
    }
  };

  // ---- per-thread state ----------------------------------------------------------------
  const int row0 = wg * 64 + warp * 16 + g, row1 = row0 + 8;
  const int tok_r[2] = {sTok[row0], sTok[row1]};
  const int pos_r[2] = {sPos[row0], sPos[row1]};
  float o[ND][4];
  float m[2], l[2];
#pragma unroll
  for (int n = 0; n < ND; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  m[0] = m[1] = -INFINITY;
  l[0] = l[1] = 0.f;
  load_q();  // start the copies first: the state reads below overlap them
  load_kv(0, 0);
  cp_async_commit();
  if (gather) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int tok = tok_r[i];
      if (tok < 0) continue;
      const std::int64_t ri = std::int64_t(h) * p.total + tok;
      m[i] = p.mrow[ri];
      l[i] = c4 == 0 ? p.lrow[ri] : 0.f;
      const float* a = p.acc + (std::int64_t(tok) * p.hq + h) * D;
#pragma unroll
      for (int n = 0; n < ND; ++n) {
        const float2 v2 = *reinterpret_cast<const float2*>(a + n * 8 + 2 * c4);
        o[n][2 * i] = v2.x;
        o[n][2 * i + 1] = v2.y;
      }
    }
  }

  const float sl2 = p.scale_log2;
  const int t_wg = t0 + wg * 64;  // dense: position of this warpgroup's first row
  const std::uint32_t q_addr = smem_addr(sQ) + wg * 64 * 128;
  const std::uint32_t k_addr0 = smem_addr(sK), v_addr0 = smem_addr(sV);

  // P of the previous chunk: the A operand of its P V, kept live (and fenced) until that wgmma
  // retires, so the compiler cannot reuse its registers while the tensor cores read them.
  std::uint32_t pa[KN / 16][4];
  // One chunk. The first is peeled (kFirst): there the accumulators are defined by ordinary
  // instructions (zero or the resumed state) with no P V in flight; every later chunk starts
  // with the P V of the previous one in flight, so ptxas sees only wgmma definitions of O
  // between a P V and its wait and keeps the wgmmas asynchronous. Both warpgroups always run
  // (a partly empty tile computes on zero rows and discards them) to keep that picture simple.
  auto step = [&](int cidx, int buf, auto first) {
    constexpr bool kFirst = decltype(first)::value;
    cp_async_wait<0>();   // chunk cidx (and Q)
    fence_proxy_async();  // cp.async writes (generic proxy) are read by wgmma (async proxy)
    __syncthreads();
    if (cidx + 1 < nchunks) {
      load_kv(cidx + 1, buf + 1 == Tr::kStages ? 0 : buf + 1);
      cp_async_commit();
    }
    const std::uint32_t k_addr = k_addr0 + buf * Tr::kKVBytes;
    const std::uint32_t v_addr = v_addr0 + buf * Tr::kKVBytes;
    if constexpr (!kFirst) {
      wg_wait<0>();  // O += P V of the previous chunk (in flight across the barrier)
      reg_fence<ND * 4>(&o[0][0]);
      reg_fence_u<KN / 4>(&pa[0][0]);
    }

    // S = Q K^T: 64 x KN per warpgroup, K-major A and B
    float s[NS][4];
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < KD; ++kk) {
      const std::uint32_t koff = (kk & 3) * 32;  // 16 columns = 32 bytes inside the atom row
      const std::uint64_t da = make_desc(q_addr + (kk >> 2) * 128 * 128 + koff, 16, 1024);
      const std::uint64_t db = make_desc(k_addr + (kk >> 2) * KN * 128 + koff, 16, 1024);
      if (kk == 0) wgmma_ss_zero<kBf16, KN>(&s[0][0], da, db);
      else wgmma_ss<kBf16, KN>(&s[0][0], da, db, 1);
    }
    wg_commit();
    wg_wait<0>();
    reg_fence<NS * 4>(&s[0][0]);

    int kb, ke;
    chunk_range(cidx, kb, ke);
    const bool need_mask = ke - kb < KN ||
                           (!gather && (p.kind == kDenseMoa || p.kind == kDenseMobaOwn ||
                                        kb + KN - 1 > t_wg));
#pragma unroll
    for (int n = 0; n < NS; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] *= sl2;
    if (need_mask) {
      const int own0 = p.kind == kDenseMobaOwn ? (pos_r[0] / p.block_size) * p.block_size : 0;
      const int own1 = p.kind == kDenseMobaOwn ? (pos_r[1] / p.block_size) * p.block_size : 0;
#pragma unroll
      for (int n = 0; n < NS; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = kb + n * 8 + 2 * c4 + (e & 1);
          const int t = pos_r[e >> 1];
          bool vis = (key < ke) & visibility::own_block(key, t, (e >> 1) ? own1 : own0);
          if (p.kind == kDenseMoa) vis = vis & visibility::moa(key, t, p.moa_sink, moa_w);
          if (!vis) s[n][e] = -INFINITY;
        }
    }

    // online softmax (rows g and g + 8 of this warp; a row lives in 4 lanes)
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      float mx = -INFINITY;
#pragma unroll
      for (int n = 0; n < NS; ++n) mx = fmaxf(mx, fmaxf(s[n][2 * i], s[n][2 * i + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m[i], mx);
      const float m_use = m_new == -INFINITY ? 0.f : m_new;
      const float alpha = fast_exp2(m[i] - m_use);
      m[i] = m_new;
      float rs = 0.f;
#pragma unroll
      for (int n = 0; n < NS; ++n) {
        s[n][2 * i] = fast_exp2(s[n][2 * i] - m_use);
        s[n][2 * i + 1] = fast_exp2(s[n][2 * i + 1] - m_use);
        rs += s[n][2 * i] + s[n][2 * i + 1];
      }
      l[i] = l[i] * alpha + rs;
#pragma unroll
      for (int n = 0; n < ND; ++n) {
        o[n][2 * i] *= alpha;
        o[n][2 * i + 1] *= alpha;
      }
    }

    // O += P V: P (64 x KN) from registers, V MN-major (d contiguous) from shared memory
#pragma unroll
    for (int kk = 0; kk < KN / 16; ++kk) {
      pa[kk][0] = Dt<T>::pack(s[2 * kk][0], s[2 * kk][1]);
      pa[kk][1] = Dt<T>::pack(s[2 * kk][2], s[2 * kk][3]);
      pa[kk][2] = Dt<T>::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      pa[kk][3] = Dt<T>::pack(s[2 * kk + 1][2], s[2 * kk + 1][3]);
    }
    reg_fence<ND * 4>(&o[0][0]);
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < KN / 16; ++kk) {
      // 16 keys = two 8-row groups (SBO 1024 B); D/64 column blocks of KN x 128 B (LBO)
      const std::uint64_t db = make_desc(v_addr + kk * 16 * 128, KN * 128, 1024);
      wgmma_rs<kBf16, D>(&o[0][0], pa[kk], db, 1);
    }
    wg_commit();  // retired at the next chunk's first wait or after the loop
  };

  step(0, 0, std::true_type{});  // nchunks >= 1: every row sees at least its own position
  int buf = 0;
  for (int cidx = 1; cidx < nchunks; ++cidx) {
    buf = buf + 1 == Tr::kStages ? 0 : buf + 1;
    step(cidx, buf, std::false_type{});
  }
  wg_wait<0>();
  reg_fence<ND * 4>(&o[0][0]);
  reg_fence_u<KN / 4>(&pa[0][0]);

  write_rows<T, D, ND>(p, o, m, l, tok_r, pos_r, h, c4, gather);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  __trap();  // a Hopper build without the sm_90a features: never selected (see forward.cpp)
#endif
}

// True when this binary holds sm_90a code for the kernel and the current device runs it.
template <class T, int D>
bool hopper_attention_available() {
  static std::atomic<int> cached{-1};  // per process (checked on the first call's device)
  if (cached.load() < 0) {
    int dev = 0, major = 0, minor = 0;
    bool ok = cudaGetDevice(&dev) == cudaSuccess &&
              cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
              cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) == cudaSuccess &&
              major == 9 && minor == 0;
    if (ok) {
      cudaFuncAttributes fa{};
      ok = cudaFuncGetAttributes(&fa, attn_fwd_hopper_kernel<T, D>) == cudaSuccess &&
           fa.binaryVersion == 90;
    }
    (void)cudaGetLastError();
    cached.store(ok ? 1 : 0);
  }
  return cached.load() == 1;
}

template <class T, int D>
void launch_attention_hopper(const AttnParams& p, int grid_x, int grid_y, void* stream) {
  if (grid_x <= 0 || grid_y <= 0) return;
  using Tr = HopperTraits<T, D>;
  MOBA_CUDA_CHECK(cudaFuncSetAttribute(attn_fwd_hopper_kernel<T, D>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       Tr::kSmemBytes));
  attn_fwd_hopper_kernel<T, D><<<dim3(grid_x, grid_y), 256, Tr::kSmemBytes,
                                 static_cast<cudaStream_t>(stream)>>>(p);
  MOBA_CUDA_LAUNCH_CHECK();
}

}  // namespace moba::cuda

#define MOBA_INSTANTIATE_ATTENTION_HOPPER(T, D)                                              \
  template void moba::cuda::launch_attention_hopper<T, D>(const moba::cuda::AttnParams&, int, \
                                                          int, void*);                       \
  template bool moba::cuda::hopper_attention_available<T, D>();
