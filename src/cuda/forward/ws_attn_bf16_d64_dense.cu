// One (dtype, head_dim) per file, split by kind so the build runs in parallel; the sm_90a
// warp-specialised path (ws_kernel.cuh): full causal and MoA, plus the availability probe.
#include "cuda/forward/ws_kernel.cuh"

MOBA_INSTANTIATE_ATTENTION_WS_KIND(__nv_bfloat16, 64, moba::cuda::kDenseFull)
MOBA_INSTANTIATE_ATTENTION_WS_KIND(__nv_bfloat16, 64, moba::cuda::kDenseMoa)
MOBA_INSTANTIATE_ATTENTION_WS_PROBE(__nv_bfloat16, 64)
