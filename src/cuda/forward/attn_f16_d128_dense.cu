// One (dtype, head_dim) per file, split by kind so the build runs in parallel; the sm_80+
// mma.sync path (attn_kernel.cuh): full causal and MoA.
#include "cuda/forward/attn_kernel.cuh"

MOBA_INSTANTIATE_ATTENTION_KIND(__half, 128, moba::cuda::kDenseFull)
MOBA_INSTANTIATE_ATTENTION_KIND(__half, 128, moba::cuda::kDenseMoa)
