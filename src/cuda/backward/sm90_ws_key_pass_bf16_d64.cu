// One instantiation per file (CI builds on 2 cores): warp-specialised sm_90a key pass, bf16, head_dim 64.
#include "cuda/backward/sm90_ws_key_pass.cuh"

MOBA_SM90_WS_KEY_PASS_INSTANTIATE(true, __nv_bfloat16, 64)
