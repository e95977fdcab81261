// One instantiation per file (CI builds on 2 cores): warp-specialised sm_90a key pass, f16, head_dim 64.
#include "cuda/backward/sm90_ws_key_pass.cuh"

MOBA_SM90_WS_KEY_PASS_INSTANTIATE(false, __half, 64)
