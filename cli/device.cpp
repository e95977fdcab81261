#include "device.hpp"

#include <utility>

#include "cli_error.hpp"

#ifdef MOBA_CLI_CUDA
#include <cuda_runtime.h>
#endif

namespace moba::cli {

#ifdef MOBA_CLI_CUDA

namespace {
void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess)
    throw CliError(std::string("CUDA ") + what + " failed: " + cudaGetErrorString(status));
}
}  // namespace

bool cuda_runtime_linked() { return true; }

std::vector<CudaDevice> cuda_devices(std::string* problem) {
  std::vector<CudaDevice> out;
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    // The runtime words a missing driver as "CUDA driver version is insufficient for CUDA
    // runtime version"; on a machine without a GPU that only means there is no driver.
    if (problem)
      *problem = status == cudaErrorInsufficientDriver
                     ? "no usable NVIDIA driver (no GPU, or a driver older than this CUDA runtime)"
                 : status == cudaErrorNoDevice ? "no CUDA-capable GPU found"
                                               : cudaGetErrorString(status);
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
    return out;
  }
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) continue;
    out.push_back({i, prop.name, prop.major, prop.minor, prop.multiProcessorCount,
                   double(prop.totalGlobalMem) / double(1 << 30)});
  }
  return out;
}

void cuda_synchronize() { check(cudaDeviceSynchronize(), "synchronize"); }

DeviceBuffer::DeviceBuffer(std::size_t bytes) : bytes_(bytes) {
  check(cudaMalloc(&ptr_, bytes == 0 ? 16 : bytes), "malloc");
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_) cudaFree(ptr_);
}

void DeviceBuffer::upload(const void* host, std::size_t bytes) {
  if (bytes) check(cudaMemcpy(ptr_, host, bytes, cudaMemcpyHostToDevice), "copy to device");
}

void DeviceBuffer::download(void* host, std::size_t bytes) const {
  if (bytes) check(cudaMemcpy(host, ptr_, bytes, cudaMemcpyDeviceToHost), "copy to host");
}

#else  // no CUDA runtime in this build

namespace {
[[noreturn]] void absent() {
  throw CliError("this moba was built without its CUDA backend (configure with nvcc present)");
}
}  // namespace

bool cuda_runtime_linked() { return false; }
std::vector<CudaDevice> cuda_devices(std::string* problem) {
  if (problem) *problem = "CUDA backend not compiled";
  return {};
}
void cuda_synchronize() {}
DeviceBuffer::DeviceBuffer(std::size_t) { absent(); }
DeviceBuffer::~DeviceBuffer() = default;
void DeviceBuffer::upload(const void*, std::size_t) { absent(); }
void DeviceBuffer::download(void*, std::size_t) const { absent(); }

#endif

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : ptr_(std::exchange(other.ptr_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  std::swap(ptr_, other.ptr_);
  std::swap(bytes_, other.bytes_);
  return *this;
}

}  // namespace moba::cli
