#include "host_tensor.hpp"

#include "moba/half.hpp"

namespace moba::verify {

HostTensor::HostTensor(DType t, std::vector<std::int64_t> s) : dtype(t), shape(std::move(s)) {
  bytes.assign(std::size_t(numel()) * dtype_size(t), 0);
}

std::int64_t HostTensor::numel() const {
  std::int64_t n = 1;
  for (auto x : shape) n *= x;
  return n;
}

double HostTensor::get(std::int64_t i) const {
  const std::uint8_t* p = bytes.data();
  switch (dtype) {
    case DType::f32: return reinterpret_cast<const float*>(p)[i];
    case DType::f16: return f16_to_float(reinterpret_cast<const std::uint16_t*>(p)[i]);
    case DType::bf16: return bf16_to_float(reinterpret_cast<const std::uint16_t*>(p)[i]);
    case DType::i32: return reinterpret_cast<const std::int32_t*>(p)[i];
  }
  return 0;
}

void HostTensor::set(std::int64_t i, double value) {
  std::uint8_t* p = bytes.data();
  const auto f = static_cast<float>(value);
  switch (dtype) {
    case DType::f32: reinterpret_cast<float*>(p)[i] = f; break;
    case DType::f16: reinterpret_cast<std::uint16_t*>(p)[i] = float_to_f16(f); break;
    case DType::bf16: reinterpret_cast<std::uint16_t*>(p)[i] = float_to_bf16(f); break;
    case DType::i32: reinterpret_cast<std::int32_t*>(p)[i] = static_cast<std::int32_t>(value); break;
  }
}

std::vector<double> HostTensor::as_double() const {
  std::vector<double> out(static_cast<std::size_t>(numel()));
  for (std::int64_t i = 0; i < numel(); ++i) out[std::size_t(i)] = get(i);
  return out;
}

void HostTensor::fill(double value) {
  for (std::int64_t i = 0; i < numel(); ++i) set(i, value);
}

void HostTensor::fill_normal(std::mt19937& rng, double stddev) {
  std::normal_distribution<double> normal(0.0, stddev);
  for (std::int64_t i = 0; i < numel(); ++i) set(i, normal(rng));
}

HostTensor HostTensor::converted(DType t) const {
  HostTensor out(t, shape);
  for (std::int64_t i = 0; i < numel(); ++i) out.set(i, get(i));
  return out;
}

TensorView HostTensor::view() {
  TensorView t;
  t.data = bytes.empty() ? static_cast<void*>(this) : bytes.data();
  t.dtype = dtype;
  t.device = Device::cpu();
  t.ndim = static_cast<int>(shape.size());
  std::int64_t stride = 1;
  for (int d = t.ndim - 1; d >= 0; --d) {
    t.shape[d] = shape[std::size_t(d)];
    t.stride[d] = stride;
    stride *= shape[std::size_t(d)];
  }
  return t;
}

std::vector<double> rounded(const std::vector<double>& x, DType dtype) {
  HostTensor r(dtype, {std::int64_t(x.size())});
  for (std::size_t i = 0; i < x.size(); ++i) r.set(std::int64_t(i), x[i]);
  return r.as_double();
}

}  // namespace moba::verify
