// Instantiations and launches of the CUDA paged backward (paged_backward.cuh): bf16 and f16,
// head_dim 64 and 128.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "cuda/paged/paged_backward.cuh"

namespace moba::cuda::paged {

template <class T>
void launch_backward(const BackwardArgs& a, int head_dim, cudaStream_t s) {
  if (a.total == 0) return;
  const dim3 grid(static_cast<unsigned>(a.total), static_cast<unsigned>(a.hkv * a.head_chunks));
  if (head_dim == 64) paged_backward_kernel<T, 64><<<grid, kThreads, 0, s>>>(a);
  else paged_backward_kernel<T, 128><<<grid, kThreads, 0, s>>>(a);
}

template <class T>
void launch_to_dtype(const float* src, void* dst, std::int64_t n, cudaStream_t s) {
  if (n == 0) return;
  const std::int64_t blocks = std::min<std::int64_t>((n + 255) / 256, 65535);
  to_dtype_kernel<T><<<static_cast<unsigned>(blocks), 256, 0, s>>>(src, static_cast<T*>(dst), n);
}

template void launch_backward<__nv_bfloat16>(const BackwardArgs&, int, cudaStream_t);
template void launch_backward<__half>(const BackwardArgs&, int, cudaStream_t);
template void launch_to_dtype<__nv_bfloat16>(const float*, void*, std::int64_t, cudaStream_t);
template void launch_to_dtype<__half>(const float*, void*, std::int64_t, cudaStream_t);

}  // namespace moba::cuda::paged
