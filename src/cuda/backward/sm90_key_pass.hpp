// The sm_90a wgmma key pass (sm90_key_pass.cuh): launchers and the availability check, one
// instantiation per (dtype, head_dim) .cu file. Same KeyPassArgs / KeyItem interface (and so the
// same plan, partial slots and dQ accumulator) as the mma.sync key pass (key_pass.cuh).
#pragma once

#include "cuda/backward/bwd_plan.hpp"

namespace moba::detail::bwd {

// True when the device is compute capability 9.0 and the build holds sm_90a code for the kernel
// (checked once per process, on the first call's device).
template <bool kBf16, int D> bool sm90_key_pass_available();
template <bool kBf16, int D> void launch_sm90_key_pass(const KeyPassArgs& a, int n_items, void* stream);

}  // namespace moba::detail::bwd
