// Stream-ordered scratch memory for one backend call (host only, usable from .cpp files).
//   Workspace ws(stream);
//   float* acc = ws.alloc<float>(n);        // from moba's own pool, on the caller's stream
//   ...launch kernels on `stream`...
// Everything is released with cudaFreeAsync on the same stream when `ws` goes out of scope,
// so the memory is reused only after the kernels that use it have finished. A failed
// allocation throws moba::Error(out_of_memory) naming what was requested.
// stream_of(RunOptions) turns the public void* into a cudaStream_t (nullptr = legacy default).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "cuda/common/check.hpp"
#include "moba/params.hpp"

namespace moba::cuda {

inline cudaStream_t stream_of(const RunOptions& o) {
  return static_cast<cudaStream_t>(o.cuda_stream);
}

// moba's own stream-ordered memory pool of the current device (src/cuda/runtime.cpp). The
// caller's default pool and its settings stay untouched; freed workspace stays cached in this
// pool up to kWorkspaceKeepBytes, so the next call does not map it again (~1-2 ms for the
// 0.5 GiB dQ scratch of a 128K-token backward).
inline constexpr std::uint64_t kWorkspaceKeepBytes = std::uint64_t(4) << 30;
cudaMemPool_t workspace_pool();
// High-water mark of that pool's used bytes on `device` (0 if never made); reset restarts it.
std::uint64_t workspace_peak(int device, bool reset);

class Workspace {
 public:
  explicit Workspace(cudaStream_t s) : stream_(s) {}
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  ~Workspace() {
    for (void* p : blocks_) (void)cudaFreeAsync(p, stream_);
  }

  void* alloc_bytes(std::size_t bytes, const char* what) {
    if (bytes == 0) bytes = 16;
    void* p = nullptr;
    const cudaError_t e = cudaMallocFromPoolAsync(&p, bytes, workspace_pool(), stream_);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      const std::string msg = std::string("cuda backend: could not allocate ") +
                              std::to_string(bytes) + " bytes of workspace for " + what +
                              ": " + cudaGetErrorString(e);
      throw Error(e == cudaErrorMemoryAllocation ? ErrorKind::out_of_memory
                                                 : ErrorKind::backend_failure,
                  msg);
    }
    blocks_.push_back(p);
    return p;
  }
  template <class T>
  T* alloc(std::size_t n, const char* what) {
    return static_cast<T*>(alloc_bytes(n * sizeof(T), what));
  }
  // A device copy of a host vector (stream-ordered; the pageable source is staged before
  // cudaMemcpyAsync returns, so the vector may die afterwards).
  template <class T>
  T* upload(const std::vector<T>& host, const char* what) {
    T* d = alloc<T>(host.size(), what);
    if (!host.empty())
      MOBA_CUDA_CHECK(cudaMemcpyAsync(d, host.data(), host.size() * sizeof(T),
                                      cudaMemcpyHostToDevice, stream_));
    return d;
  }
  cudaStream_t stream() const { return stream_; }

 private:
  cudaStream_t stream_;
  std::vector<void*> blocks_;
};

}  // namespace moba::cuda
