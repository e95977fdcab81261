// A tensor in host memory stored in its own dtype (f32, f16, bf16 or i32), contiguous, with
// element access as double. Inputs are made here and copied to a device when a backend needs.
// Fields are public: tests compare results bit for bit (`a.bytes == b.bytes`).
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "moba/tensor.hpp"

namespace moba::verify {

struct HostTensor {
  DType dtype = DType::f32;
  std::vector<std::int64_t> shape;
  std::vector<std::uint8_t> bytes;

  HostTensor() = default;
  HostTensor(DType dtype, std::vector<std::int64_t> shape);

  std::int64_t numel() const;
  void* data() { return bytes.data(); }
  const void* data() const { return bytes.data(); }

  double get(std::int64_t i) const;
  void set(std::int64_t i, double value);  // rounds to the dtype
  std::vector<double> as_double() const;

  void fill(double value);
  void fill_normal(std::mt19937& rng, double stddev = 1.0);
  HostTensor converted(DType dtype) const;  // the same values (rounded) in another dtype

  // A contiguous view on the host. Empty tensors get a non-null pointer: the library treats a
  // null pointer as "no tensor".
  TensorView view();
};

// Each value rounded to `dtype` once: the error of a result exact up to its final store.
std::vector<double> rounded(const std::vector<double>& x, DType dtype);
template <class T>
std::vector<double> as_double(const std::vector<T>& x) {
  return std::vector<double>(x.begin(), x.end());
}

}  // namespace moba::verify
