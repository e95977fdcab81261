// sm_90a pipeline primitives of the warp-specialised forward (ws_kernel.cuh), as raw PTX:
//   mbarriers (init, arrive, arrive with an expected transaction count, parity wait),
//   TMA tile loads (cp.async.bulk.tensor) that complete on an mbarrier,
//   named barriers (bar.sync / bar.arrive with a thread count) and setmaxnreg.
// Phase convention of the parity wait: a fresh barrier is in phase 0; waiting for parity P
// returns once the phase with parity P has completed, so waiting for parity 1 on a fresh
// barrier returns at once (the "previous" phase counts as complete).
#pragma once

#include <cstdint>

namespace moba::cuda::sm90 {

__device__ __forceinline__ void mbar_init(std::uint32_t bar, std::uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}

// Makes the initialised barriers visible to the other threads and to the async proxy (TMA)
// before the CTA-wide barrier that follows it.
__device__ __forceinline__ void mbar_fence_init() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

__device__ __forceinline__ void mbar_arrive(std::uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}

// One arrival plus `bytes` expected from asynchronous copies (complete_tx) in this phase.
__device__ __forceinline__ void mbar_arrive_expect_tx(std::uint32_t bar, std::uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
}

__device__ __forceinline__ bool mbar_try_wait(std::uint32_t bar, std::uint32_t parity) {
  std::uint32_t done;
  asm volatile(
      "{\n.reg .pred p;\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
      "selp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(done)
      : "r"(bar), "r"(parity)
      : "memory");
  return done != 0;
}

__device__ __forceinline__ void mbar_wait(std::uint32_t bar, std::uint32_t parity) {
  while (!mbar_try_wait(bar, parity)) {
  }
}

// TMA: the box at coordinates (c0, c1, c2) of the tensor map into shared memory at `dst`;
// the bytes are counted against `bar`'s expected transaction count when they land.
__device__ __forceinline__ void tma_load_3d(std::uint32_t dst, const void* tmap, int c0, int c1,
                                            int c2, std::uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(dst),
      "l"(reinterpret_cast<std::uint64_t>(tmap)), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
      : "memory");
}

__device__ __forceinline__ void tma_prefetch_map(const void* tmap) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<std::uint64_t>(tmap))
               : "memory");
}

// Named barrier `id` (1..15; 0 is __syncthreads) completing when `threads` threads arrived:
// sync waits for completion, arrive only counts.
template <int kThreads>
__device__ __forceinline__ void named_sync(int id) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "n"(kThreads) : "memory");
}
template <int kThreads>
__device__ __forceinline__ void named_arrive(int id) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "n"(kThreads) : "memory");
}

// Register budget per thread of the executing warpgroup (multiples of 8 in 24..256). The
// producer gives registers back (dec) before the consumers take them (inc blocks until the
// pool has them).
template <int kRegs>
__device__ __forceinline__ void regs_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}
template <int kRegs>
__device__ __forceinline__ void regs_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

// Bulk reduce-add (the TMA unit, no tensor map): `bytes` (a multiple of 16, both addresses
// 16-byte aligned) of fp32 from shared memory added element-wise into global memory, each
// element atomically (concurrent CTAs may add to the same row). Used by the sm_90a backward
// key pass for dQ rows. Completion per thread through bulk groups: commit, then wait until the
// shared source was read (before overwriting it) or until the writes are done (before exit).
__device__ __forceinline__ void bulk_reduce_add_f32(float* dst, std::uint32_t src, std::uint32_t bytes) {
  asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(dst),
               "r"(src), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void bulk_wait_read_all() {
  asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
}
__device__ __forceinline__ void bulk_wait_all() { asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory"); }

}  // namespace moba::cuda::sm90
