// Shared by every CUDA file of the backend (forward, gate, backward):
//   MOBA_CUDA_CHECK(expr)      a cudaError_t that is not cudaSuccess becomes moba::Error
//                              (cudaErrorMemoryAllocation -> ErrorKind::out_of_memory, every
//                              other code -> ErrorKind::backend_failure), message names the call,
//                              the file:line and CUDA's own text.
//   MOBA_CUDA_LAUNCH_CHECK()   put after every kernel launch (<<<...>>>): reports launch errors
//                              (bad configuration, too much shared memory) at the launch site.
// Plain C++ (host only), so .cpp files can include it too.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "moba/error.hpp"

namespace moba::cuda {

[[noreturn]] inline void throw_cuda_error(cudaError_t e, const char* what, const char* file,
                                          int line) {
  (void)cudaGetLastError();  // clear a sticky non-fatal error so later calls start clean
  const std::string msg = std::string("cuda backend: ") + what + " failed at " + file + ":" +
                          std::to_string(line) + ": " + cudaGetErrorName(e) + " (" +
                          cudaGetErrorString(e) + ")";
  if (e == cudaErrorMemoryAllocation)
    throw Error(ErrorKind::out_of_memory, msg + "; the GPU ran out of memory");
  throw Error(ErrorKind::backend_failure, msg);
}

}  // namespace moba::cuda

#define MOBA_CUDA_CHECK(expr)                                                  \
  do {                                                                         \
    const cudaError_t moba_err_ = (expr);                                      \
    if (moba_err_ != cudaSuccess)                                              \
      ::moba::cuda::throw_cuda_error(moba_err_, #expr, __FILE__, __LINE__);    \
  } while (0)

#define MOBA_CUDA_LAUNCH_CHECK()                                               \
  do {                                                                         \
    const cudaError_t moba_err_ = cudaGetLastError();                          \
    if (moba_err_ != cudaSuccess)                                              \
      ::moba::cuda::throw_cuda_error(moba_err_, "kernel launch", __FILE__, __LINE__); \
  } while (0)
