// One instantiation per file keeps the CUDA build parallel and small.
#include "cuda/gate/gate_kernel.cuh"

MOBA_INSTANTIATE_GATE(__nv_bfloat16, 128)
