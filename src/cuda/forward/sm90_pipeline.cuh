// sm_90a pipeline primitives of the warp-specialised forward (ws_kernel.cuh) and the sm_90a
// backward key pass, through CUTLASS 4.2 / CuTe:
//   mbarriers (init, arrive, arrive with an expected transaction count, parity wait):
//     cutlass::arch::ClusterBarrier / ClusterTransactionBarrier;
//   TMA descriptor prefetch: cute::prefetch_tma_descriptor;
//   named barriers (bar.sync / bar.arrive with a thread count): cutlass::arch::NamedBarrier;
//   setmaxnreg: cutlass::arch::warpgroup_reg_alloc / warpgroup_reg_dealloc;
//   bulk-group commit / wait for reads: cute::tma_store_arrive / tma_store_wait.
// Three stay PTX, each with its reason below: the TMA tile load (CuTe's adds a cache-policy
// operand), the non-tensor bulk reduce-add (cp.reduce.async.bulk .add.f32) and the full
// bulk-group wait (wait_group without .read); CuTe/CUTLASS 4.2 has no equivalent of the last two.
// The kernels pass shared-memory addresses as 32-bit shared-window offsets (as their PTX and
// descriptors use them); CUTLASS takes generic pointers and converts them back, and the two
// conversions fold away. CUTLASS's inline asm has no "memory" clobber where ours had one;
// compiler_fence() around those calls keeps the compiler from moving plain shared-memory
// accesses across a barrier.
// Phase convention of the parity wait: a fresh barrier is in phase 0; waiting for parity P
// returns once the phase with parity P has completed, so waiting for parity 1 on a fresh
// barrier returns at once (the "previous" phase counts as complete).
#pragma once

#include <cstdint>

#include <cute/arch/copy_sm90_desc.hpp>
#include <cute/arch/copy_sm90_tma.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>

namespace moba::cuda::sm90 {

__device__ __forceinline__ void compiler_fence() { asm volatile("" ::: "memory"); }

// Generic pointer of a shared-memory address (what CUTLASS's barrier and TMA calls take).
__device__ __forceinline__ std::uint64_t* smem_u64(std::uint32_t addr) {
  return static_cast<std::uint64_t*>(__cvta_shared_to_generic(addr));
}

__device__ __forceinline__ void mbar_init(std::uint32_t bar, std::uint32_t count) {
  compiler_fence();
  cutlass::arch::ClusterBarrier::init(smem_u64(bar), count);
  compiler_fence();
}

// Makes the initialised barriers visible to the other threads and to the async proxy (TMA)
// before the CTA-wide barrier that follows it.
__device__ __forceinline__ void mbar_fence_init() {
  compiler_fence();
  cutlass::arch::fence_barrier_init();
  compiler_fence();
}

__device__ __forceinline__ void mbar_arrive(std::uint32_t bar) {
  compiler_fence();
  cutlass::arch::ClusterBarrier::arrive(smem_u64(bar));
  compiler_fence();
}

// One arrival plus `bytes` expected from asynchronous copies (complete_tx) in this phase.
__device__ __forceinline__ void mbar_arrive_expect_tx(std::uint32_t bar, std::uint32_t bytes) {
  compiler_fence();
  cutlass::arch::ClusterTransactionBarrier::arrive_and_expect_tx(smem_u64(bar), bytes);
  compiler_fence();
}

__device__ __forceinline__ bool mbar_try_wait(std::uint32_t bar, std::uint32_t parity) {
  compiler_fence();
  const bool done = cutlass::arch::ClusterBarrier::try_wait(smem_u64(bar), parity);
  compiler_fence();
  return done;
}

// A spin on try_wait, not ClusterBarrier::wait: that one passes a suspend-time hint and
// compiles to a different retry loop (NANOSLEEP.SYNCS + SYNCS.PHASECHK); this keeps the
// kernels' SASS as it was measured.
__device__ __forceinline__ void mbar_wait(std::uint32_t bar, std::uint32_t parity) {
  while (!mbar_try_wait(bar, parity)) {
  }
}

// TMA: the box at coordinates (c0, c1, c2) of the tensor map into shared memory at `dst`;
// the bytes are counted against `bar`'s expected transaction count when they land.
// PTX: cute::SM90_TMA_LOAD_3D (CuTe 4.2) always passes an L2 cache policy (.L2::cache_hint;
// EVICT_NORMAL is the default policy), which adds two uniform moves and a policy operand to
// every UTMALDG; this form keeps the kernels' SASS as it was measured (bench/build/sm90_port_sass.sh).
__device__ __forceinline__ void tma_load_3d(std::uint32_t dst, const void* tmap, int c0, int c1,
                                            int c2, std::uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(dst),
      "l"(reinterpret_cast<std::uint64_t>(tmap)), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
      : "memory");
}

__device__ __forceinline__ void tma_prefetch_map(const void* tmap) {
  cute::prefetch_tma_descriptor(static_cast<const cute::TmaDescriptor*>(tmap));
}

// Named barrier `id` (1..15; 0 is __syncthreads) completing when `threads` threads arrived:
// sync waits for completion, arrive only counts. The ids are the hardware ids (CUTLASS's
// ReservedNamedBarriers overload; its plain-integer overload adds 8 for CUTLASS's own).
template <int kThreads>
__device__ __forceinline__ void named_sync(int id) {
  compiler_fence();
  cutlass::arch::NamedBarrier::sync(kThreads, static_cast<cutlass::arch::ReservedNamedBarriers>(id));
  compiler_fence();
}
template <int kThreads>
__device__ __forceinline__ void named_arrive(int id) {
  compiler_fence();
  cutlass::arch::NamedBarrier::arrive(kThreads, static_cast<cutlass::arch::ReservedNamedBarriers>(id));
  compiler_fence();
}

// Register budget per thread of the executing warpgroup (multiples of 8 in 24..256). The
// producer gives registers back (dec) before the consumers take them (inc blocks until the
// pool has them).
template <int kRegs>
__device__ __forceinline__ void regs_dec() {
  cutlass::arch::warpgroup_reg_dealloc<kRegs>();
}
template <int kRegs>
__device__ __forceinline__ void regs_inc() {
  cutlass::arch::warpgroup_reg_alloc<kRegs>();
}

// Bulk reduce-add (the TMA unit, no tensor map): `bytes` (a multiple of 16, both addresses
// 16-byte aligned) of fp32 from shared memory added element-wise into global memory, each
// element atomically (concurrent CTAs may add to the same row). Used by the sm_90a backward
// key pass for dQ rows. Completion per thread through bulk groups: commit, then wait until the
// shared source was read (before overwriting it) or until the writes are done (before exit).
// PTX: CuTe 4.2 has bulk reduce-add only through a tensor map (SM90_TMA_REDUCE_ADD), not the
// plain-address form.
__device__ __forceinline__ void bulk_reduce_add_f32(float* dst, std::uint32_t src, std::uint32_t bytes) {
  asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(dst),
               "r"(src), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void bulk_commit() {
  compiler_fence();
  cute::tma_store_arrive();
  compiler_fence();
}
__device__ __forceinline__ void bulk_wait_read_all() { cute::tma_store_wait<0>(); }
// PTX: CuTe 4.2 waits on bulk groups only with .read (tma_store_wait), not for the writes.
__device__ __forceinline__ void bulk_wait_all() { asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory"); }

}  // namespace moba::cuda::sm90
