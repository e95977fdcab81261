// CUDA device memory for the CLI. The library never allocates; its callers do. cudart is linked
// only when the library was built with its CUDA backend; without it, every call here throws.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace moba::cli {

bool cuda_runtime_linked();

struct CudaDevice {
  int index = 0;
  std::string name;
  int sm_major = 0, sm_minor = 0;
  int multiprocessors = 0;
  double memory_gib = 0;
};
// The visible devices; empty when cudart is not linked or no device/driver is present.
// `problem` receives the runtime's reason when the device count query fails.
std::vector<CudaDevice> cuda_devices(std::string* problem = nullptr);

void cuda_synchronize();

// Owns one allocation on the current CUDA device.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* get() const { return ptr_; }
  void upload(const void* host, std::size_t bytes);
  void download(void* host, std::size_t bytes) const;

 private:
  void* ptr_ = nullptr;
  std::size_t bytes_ = 0;
};

}  // namespace moba::cli
