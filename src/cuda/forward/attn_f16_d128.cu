// One instantiation per file keeps the CUDA build parallel and small.
#include "cuda/forward/attn_kernel.cuh"

MOBA_INSTANTIATE_ATTENTION(__half, 128)
