// Framework-free tensor views: a pointer plus shape, strides, dtype and device.
// The library never owns or allocates the memory a view points to.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>

namespace moba {

// f64 only for the KV cache's exact running key sums (moba/kv_cache.hpp).
enum class DType : std::uint8_t { f32, f16, bf16, i32, f64 };

enum class DeviceType : std::uint8_t { cpu, cuda };

struct Device {
  DeviceType type = DeviceType::cpu;
  int index = 0;
  static Device cpu() { return {DeviceType::cpu, 0}; }
  static Device cuda(int i = 0) { return {DeviceType::cuda, i}; }
  bool operator==(const Device& o) const { return type == o.type && index == o.index; }
  bool operator!=(const Device& o) const { return !(*this == o); }
};

std::size_t dtype_size(DType t);
std::string dtype_name(DType t);
std::string device_name(Device d);

// Up to 4 dimensions; strides are in elements (not bytes), like torch.
struct TensorView {
  static constexpr int kMaxDims = 4;
  void* data = nullptr;
  DType dtype = DType::f32;
  Device device{};
  int ndim = 0;
  std::int64_t shape[kMaxDims] = {0, 0, 0, 0};
  std::int64_t stride[kMaxDims] = {0, 0, 0, 0};

  // A row-major contiguous view of `shape`.
  static TensorView contiguous(void* data, DType dtype, Device device,
                               std::initializer_list<std::int64_t> shape);
  bool empty_view() const { return data == nullptr && ndim == 0; }
  std::int64_t numel() const;
  bool is_contiguous() const;
  std::string shape_str() const;  // "[4, 8, 128]"
};

}  // namespace moba
