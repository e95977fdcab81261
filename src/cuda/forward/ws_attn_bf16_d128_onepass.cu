// One (dtype, head_dim) per file, split by kind so the build runs in parallel; the sm_90a
// warp-specialised path (ws_kernel.cuh): MoBA in one pass (union blocks + own block).
#include "cuda/forward/ws_kernel.cuh"

MOBA_INSTANTIATE_ATTENTION_WS_KIND(__nv_bfloat16, 128, moba::cuda::kMobaOnePass)
