#include "host_tensor.hpp"

#include <cmath>

#include "moba/half.hpp"

namespace moba::cli {

HostTensor::HostTensor(DType dtype, std::vector<std::int64_t> shape)
    : dtype_(dtype), shape_(std::move(shape)), numel_(1) {
  for (auto s : shape_) numel_ *= s;
  storage_.assign(std::size_t(numel_) * dtype_size(dtype_), 0);
}

double HostTensor::get(std::int64_t i) const {
  const std::uint8_t* p = storage_.data();
  switch (dtype_) {
    case DType::f32: return reinterpret_cast<const float*>(p)[i];
    case DType::f16: return f16_to_float(reinterpret_cast<const std::uint16_t*>(p)[i]);
    case DType::bf16: return bf16_to_float(reinterpret_cast<const std::uint16_t*>(p)[i]);
    case DType::i32: return reinterpret_cast<const std::int32_t*>(p)[i];
  }
  return 0;
}

void HostTensor::set(std::int64_t i, double value) {
  std::uint8_t* p = storage_.data();
  const auto f = static_cast<float>(value);
  switch (dtype_) {
    case DType::f32: reinterpret_cast<float*>(p)[i] = f; break;
    case DType::f16: reinterpret_cast<std::uint16_t*>(p)[i] = float_to_f16(f); break;
    case DType::bf16: reinterpret_cast<std::uint16_t*>(p)[i] = float_to_bf16(f); break;
    case DType::i32: reinterpret_cast<std::int32_t*>(p)[i] = static_cast<std::int32_t>(value); break;
  }
}

std::vector<double> HostTensor::to_double() const {
  std::vector<double> out(static_cast<std::size_t>(numel_));
  for (std::int64_t i = 0; i < numel_; ++i) out[std::size_t(i)] = get(i);
  return out;
}

void HostTensor::fill(double value) {
  for (std::int64_t i = 0; i < numel_; ++i) set(i, value);
}

void HostTensor::fill_normal(std::mt19937& rng, double stddev) {
  std::normal_distribution<double> normal(0.0, stddev);
  for (std::int64_t i = 0; i < numel_; ++i) set(i, normal(rng));
}

HostTensor HostTensor::converted(DType dtype) const {
  HostTensor out(dtype, shape_);
  for (std::int64_t i = 0; i < numel_; ++i) out.set(i, get(i));
  return out;
}

TensorView HostTensor::view() {
  TensorView t;
  t.data = storage_.empty() ? static_cast<void*>(this) : storage_.data();
  t.dtype = dtype_;
  t.device = Device::cpu();
  t.ndim = static_cast<int>(shape_.size());
  std::int64_t stride = 1;
  for (int d = t.ndim - 1; d >= 0; --d) {
    t.shape[d] = shape_[std::size_t(d)];
    t.stride[d] = stride;
    stride *= shape_[std::size_t(d)];
  }
  return t;
}

}  // namespace moba::cli
