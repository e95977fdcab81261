// The warp-specialised sm_90a key pass (sm90_ws_key_pass.cuh): launchers and the availability
// check, one instantiation per (dtype, head_dim) .cu file. Same KeyPassArgs / KeyItem interface
// as the other two key passes (same plan, partial slots, dQ accumulator and determinism).
#pragma once

#include "cuda/backward/bwd_plan.hpp"

namespace moba::detail::bwd {

// True when the device is compute capability 9.0 and the build holds sm_90a code for the kernel.
template <bool kBf16, int D> bool sm90_ws_key_pass_available();
// row_tma: implicit row tiles by TMA (else by cp.async, as the listed rows).
template <bool kBf16, int D>
void launch_sm90_ws_key_pass(const KeyPassArgs& a, int n_items, bool row_tma, void* stream);

}  // namespace moba::detail::bwd
