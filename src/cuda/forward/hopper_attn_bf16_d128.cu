// One instantiation per file (see attn_bf16_d128.cu); the sm_90a wgmma path.
#include "cuda/forward/hopper_kernel.cuh"

MOBA_INSTANTIATE_ATTENTION_HOPPER(__nv_bfloat16, 128)
