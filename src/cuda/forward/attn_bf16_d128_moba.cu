// One (dtype, head_dim) per file, split by kind so the build runs in parallel; the sm_80+
// mma.sync path (attn_kernel.cuh): MoBA own block and gathered selection waves.
#include "cuda/forward/attn_kernel.cuh"

MOBA_INSTANTIATE_ATTENTION_KIND(__nv_bfloat16, 128, moba::cuda::kDenseMobaOwn)
MOBA_INSTANTIATE_ATTENTION_KIND(__nv_bfloat16, 128, moba::cuda::kGatherWave)
