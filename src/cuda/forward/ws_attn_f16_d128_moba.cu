// One (dtype, head_dim) per file, split by kind so the build runs in parallel; the sm_90a
// warp-specialised path (ws_kernel.cuh): MoBA own block and gathered selection waves.
#include "cuda/forward/ws_kernel.cuh"

MOBA_INSTANTIATE_ATTENTION_WS_KIND(__half, 128, moba::cuda::kDenseMobaOwn)
MOBA_INSTANTIATE_ATTENTION_WS_KIND(__half, 128, moba::cuda::kGatherWave)
