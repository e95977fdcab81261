#include "moba/tensor.hpp"

#include <algorithm>
#include <limits>

#include <sstream>

namespace moba {

std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::f16: return 2;
    case DType::bf16: return 2;
    case DType::i32: return 4;
    case DType::f64: return 8;
  }
  return 0;
}

std::string dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "f32";
    case DType::f16: return "f16";
    case DType::bf16: return "bf16";
    case DType::i32: return "i32";
    case DType::f64: return "f64";
  }
  return "?";
}

std::string device_name(Device d) {
  return d.type == DeviceType::cpu ? "cpu" : "cuda:" + std::to_string(d.index);
}

TensorView TensorView::contiguous(void* data, DType dtype, Device device,
                                  std::initializer_list<std::int64_t> shape) {
  TensorView t;
  t.data = data;
  t.dtype = dtype;
  t.device = device;
  t.ndim = static_cast<int>(shape.size());
  int i = 0;
  for (auto s : shape) t.shape[i++] = s;
  std::int64_t st = 1;
  for (int d = t.ndim - 1; d >= 0; --d) {
    t.stride[d] = st;
    st *= t.shape[d];
  }
  return t;
}

namespace {

// The dimensions a view may hold: a caller's ndim outside [0, kMaxDims] is reported by the
// validation, which must not read beyond the arrays while doing so.
int dims(const TensorView& t) { return std::clamp(t.ndim, 0, TensorView::kMaxDims); }

// a * b, saturated to the int64 range instead of overflowing (sizes come from callers).
std::int64_t saturating_mul(std::int64_t a, std::int64_t b) {
  std::int64_t r;
  if (__builtin_mul_overflow(a, b, &r))
    return (a < 0) != (b < 0) ? std::numeric_limits<std::int64_t>::min()
                              : std::numeric_limits<std::int64_t>::max();
  return r;
}

}  // namespace

std::int64_t TensorView::numel() const {
  std::int64_t n = 1;
  for (int d = 0; d < dims(*this); ++d) n = saturating_mul(n, shape[d]);
  return n;
}

bool TensorView::is_contiguous() const {
  if (numel() == 0) return true;  // no element to misplace; torch gives such views odd strides
  std::int64_t st = 1;
  for (int d = dims(*this) - 1; d >= 0; --d) {
    if (shape[d] != 1 && stride[d] != st) return false;
    st = saturating_mul(st, shape[d]);
  }
  return true;
}

std::string TensorView::shape_str() const {
  std::ostringstream os;
  os << '[';
  for (int d = 0; d < dims(*this); ++d) os << (d ? ", " : "") << shape[d];
  if (ndim != dims(*this)) os << (ndim > 0 ? " (ndim " : "(ndim ") << ndim << ")";
  os << ']';
  return os.str();
}

}  // namespace moba
