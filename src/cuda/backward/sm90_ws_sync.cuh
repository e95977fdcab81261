// Synchronisation primitives of the warp-specialised sm_90a backward key pass
// (sm90_ws_key_pass.cuh) that sm90_pipeline.cuh does not have (that file stays as it is):
//   a transaction count expected on an mbarrier without an arrival (the TMA thread announces the
//   bytes; every producer thread then arrives once, so the barrier's count is the same whether
//   a row tile came by TMA or by cp.async), and named barriers with a run-time thread count (the
//   consumer warpgroups are 1 or 2 per CTA, KeyPassArgs::groups).
#pragma once

#include <cstdint>

namespace moba::detail::bwd::ws {

__device__ __forceinline__ void mbar_expect_tx(std::uint32_t bar, std::uint32_t bytes) {
  asm volatile("mbarrier.expect_tx.relaxed.cta.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}

// Waits until at most one of this thread's cp.async groups (the newest) is still in flight.
__device__ __forceinline__ void cp_async_wait_one() { asm volatile("cp.async.wait_group 1;\n" ::: "memory"); }

// bar.sync / bar.arrive on named barrier `id` (1..15) for `threads` threads (a multiple of 32).
__device__ __forceinline__ void named_sync_n(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

}  // namespace moba::detail::bwd::ws
