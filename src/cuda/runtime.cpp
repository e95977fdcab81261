// Device discovery and small runtime services of the CUDA backend.
#include <cuda_runtime.h>

#include <mutex>
#include <sstream>

#include "core/backends.hpp"
#include "cuda/common/check.hpp"
#include "cuda/common/workspace.hpp"

namespace moba::detail {

bool cuda_compiled() { return true; }

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

std::uint64_t cuda_workspace_peak(int device, bool reset) {
  return cuda::workspace_peak(device, reset);
}

std::string cuda_describe() {
  std::ostringstream os;
  int rt = 0, drv = 0;
  (void)cudaRuntimeGetVersion(&rt);
  (void)cudaDriverGetVersion(&drv);
  const int n = cuda_device_count();
  os << "runtime " << rt / 1000 << "." << (rt % 1000) / 10;
  if (drv > 0) os << ", driver API " << drv / 1000 << "." << (drv % 1000) / 10;
  os << ", kernels";
#ifdef MOBA_CUDA_ARCHS
  os << " " << MOBA_CUDA_ARCHS;
#endif
  if (n == 0) {
    os << "; no CUDA device";
    return os.str();
  }
  for (int i = 0; i < n; ++i) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) {
      (void)cudaGetLastError();
      continue;
    }
    os << "; cuda:" << i << " " << prop.name << " (sm_" << prop.major << prop.minor << ", "
       << prop.multiProcessorCount << " SMs, " << (prop.totalGlobalMem >> 20) << " MiB)";
  }
  return os.str();
}

void cuda_copy_to_host(void* dst, const void* src, std::size_t bytes, void* stream) {
  // On the caller's stream, so a cu_seqlens written by a kernel on a non-blocking stream is read
  // after that kernel (a plain cudaMemcpy would order only against the legacy default stream).
  const auto s = static_cast<cudaStream_t>(stream);
  MOBA_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s));
  MOBA_CUDA_CHECK(cudaStreamSynchronize(s));
}

}  // namespace moba::detail

namespace moba::cuda {

namespace {
std::mutex pools_mu;
cudaMemPool_t pools[64] = {};  // one per device, made on first use
}  // namespace

cudaMemPool_t workspace_pool() {
  int dev = 0;
  MOBA_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev < 0 || dev >= 64)
    throw Error(ErrorKind::unsupported, "cuda backend: device index " + std::to_string(dev) + " beyond 63");
  std::lock_guard<std::mutex> lock(pools_mu);
  if (!pools[dev]) {
    cudaMemPoolProps props{};
    props.allocType = cudaMemAllocationTypePinned;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = dev;
    cudaMemPool_t pool = nullptr;
    MOBA_CUDA_CHECK(cudaMemPoolCreate(&pool, &props));
    std::uint64_t keep = kWorkspaceKeepBytes;
    MOBA_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
    pools[dev] = pool;
  }
  return pools[dev];
}

std::uint64_t workspace_peak(int device, bool reset) {
  std::lock_guard<std::mutex> lock(pools_mu);
  if (device < 0 || device >= 64 || !pools[device]) return 0;  // the API checked the range
  std::uint64_t high = 0;
  MOBA_CUDA_CHECK(cudaMemPoolGetAttribute(pools[device], cudaMemPoolAttrUsedMemHigh, &high));
  if (reset) {
    std::uint64_t zero = 0;  // the only value the attribute accepts: restart the mark
    MOBA_CUDA_CHECK(cudaMemPoolSetAttribute(pools[device], cudaMemPoolAttrUsedMemHigh, &zero));
  }
  return high;
}

}  // namespace moba::cuda
