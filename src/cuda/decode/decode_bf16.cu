// Paged decode kernels for bf16 (one dtype per file keeps the build parallel).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/decode/decode_kernels.cuh"

namespace moba::cuda::decode {
MOBA_DECODE_INSTANTIATE(__nv_bfloat16)
}  // namespace moba::cuda::decode
