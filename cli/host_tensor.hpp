// A tensor in host memory stored in its own dtype (f32, f16, bf16 or i32), contiguous, with
// element access as double. Inputs are made here and copied to a device when a backend needs.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "moba/tensor.hpp"

namespace moba::cli {

class HostTensor {
 public:
  HostTensor() = default;
  HostTensor(DType dtype, std::vector<std::int64_t> shape);

  DType dtype() const { return dtype_; }
  const std::vector<std::int64_t>& shape() const { return shape_; }
  std::int64_t numel() const { return numel_; }
  std::size_t bytes() const { return storage_.size(); }
  void* data() { return storage_.data(); }
  const void* data() const { return storage_.data(); }

  double get(std::int64_t i) const;
  void set(std::int64_t i, double value);  // rounds to the dtype
  std::vector<double> to_double() const;

  void fill(double value);
  void fill_normal(std::mt19937& rng, double stddev);
  HostTensor converted(DType dtype) const;  // same values (rounded) in another dtype

  // A contiguous view on the host. Empty tensors get a non-null pointer: the library treats
  // a null pointer as "no tensor".
  TensorView view();

 private:
  DType dtype_ = DType::f32;
  std::vector<std::int64_t> shape_;
  std::int64_t numel_ = 0;
  std::vector<std::uint8_t> storage_;
};

}  // namespace moba::cli
