// Synchronisation primitives of the warp-specialised sm_90a backward key pass
// (sm90_ws_key_pass.cuh) that sm90_pipeline.cuh does not have, through CUTLASS 4.2 / CuTe as
// sm90_pipeline.cuh's are:
//   a transaction count expected on an mbarrier without an arrival (the TMA thread announces the
//   bytes; every producer thread then arrives once, so the barrier's count is the same whether
//   a row tile came by TMA or by cp.async), and named barriers with a run-time thread count (the
//   consumer warpgroups are 1 or 2 per CTA, KeyPassArgs::groups).
// CUTLASS's asm has no "memory" clobber; the compiler-only fences around the calls keep plain
// shared-memory accesses from moving across them, as the clobber did.
#pragma once

#include <cstdint>

#include <cute/arch/copy_sm80.hpp>
#include <cutlass/arch/barrier.h>

#include "cuda/forward/sm90_pipeline.cuh"

namespace moba::detail::bwd::ws {

// mbarrier.expect_tx (relaxed, CTA scope: PTX's defaults) on the barrier at shared address `bar`.
__device__ __forceinline__ void mbar_expect_tx(std::uint32_t bar, std::uint32_t bytes) {
  moba::cuda::sm90::compiler_fence();
  cutlass::arch::ClusterTransactionBarrier::expect_transaction(moba::cuda::sm90::smem_u64(bar), bytes);
  moba::cuda::sm90::compiler_fence();
}

// Waits until at most one of this thread's cp.async groups (the newest) is still in flight.
__device__ __forceinline__ void cp_async_wait_one() {
  moba::cuda::sm90::compiler_fence();
  cute::cp_async_wait<1>();
  moba::cuda::sm90::compiler_fence();
}

// bar.sync / bar.arrive on named barrier `id` (1..15) for `threads` threads (a multiple of 32);
// the hardware id as given (CUTLASS's ReservedNamedBarriers overload).
__device__ __forceinline__ void named_sync_n(int id, int threads) {
  moba::cuda::sm90::compiler_fence();
  cutlass::arch::NamedBarrier::sync(threads, static_cast<cutlass::arch::ReservedNamedBarriers>(id));
  moba::cuda::sm90::compiler_fence();
}

}  // namespace moba::detail::bwd::ws
