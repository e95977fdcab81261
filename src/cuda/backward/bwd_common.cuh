// Device building blocks of the CUDA backward kernels: the swizzled shared-memory tile layout,
// mma.sync / ldmatrix (from src/cuda/common/) and an address-form cp.async.
//
// Shared-memory tiles hold R rows of D elements (2-byte dtype) in 16-byte chunks; chunk c of
// row r is stored at chunk position c ^ (r & 7) of that row, so the 8 row addresses of one
// ldmatrix 8x8 matrix (same chunk, 8 consecutive rows) fall in 8 different bank groups.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cstdint>

#include "cuda/backward/bwd_plan.hpp"
#include "cuda/common/check.hpp"
#include "cuda/common/mma.cuh"
#include "cuda/common/visibility.cuh"

namespace moba::detail::bwd {

// The mma / ldmatrix / dtype primitives are the backend's shared ones (src/cuda/common/).
using cuda::ldsm_x4;
using cuda::ldsm_x4_t;
using cuda::smem_addr;

template <class T>
struct DTypeOps {
  __device__ static __forceinline__ std::uint32_t pack(float lo, float hi) { return cuda::Dt<T>::pack(lo, hi); }
  __device__ static __forceinline__ void mma(float c[4], const std::uint32_t a[4], std::uint32_t b0,
                                             std::uint32_t b1) {
    cuda::mma_16816<T>(c, a, b0, b1);
  }
};

// Byte offset of (row, chunk) in a swizzled tile with `chunks` 16-byte chunks per row.
template <int kChunks>
__device__ inline std::uint32_t swz(int row, int chunk) {
  return static_cast<std::uint32_t>((row * kChunks + (chunk ^ (row & 7))) * 16);
}

// 16-byte global -> shared copy to a shared-window address (the kernels compute swizzled
// addresses as u32); when !pred nothing is read and the 16 bytes are zeroed. The "memory"
// clobbers keep plain shared-memory accesses on their side of the commit/wait.
__device__ inline void cp_async16(std::uint32_t dst, const void* src, bool pred) {
  const int n = pred ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n)
               : "memory");
}
__device__ inline void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ inline void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

constexpr float kLog2e = 1.4426950408889634f;

}  // namespace moba::detail::bwd
