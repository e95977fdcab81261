// Element access in any storage dtype as float, for host code of every backend
// (the scalar conversions are public: moba/half.hpp).
#pragma once

#include <cstdint>

#include "moba/half.hpp"
#include "moba/tensor.hpp"

namespace moba::detail {

using moba::bf16_to_float;
using moba::f16_to_float;
using moba::float_to_bf16;
using moba::float_to_f16;

inline float load_as_float(const void* base, std::int64_t i, DType t) {
  switch (t) {
    case DType::f32: return static_cast<const float*>(base)[i];
    case DType::bf16: return bf16_to_float(static_cast<const std::uint16_t*>(base)[i]);
    case DType::f16: return f16_to_float(static_cast<const std::uint16_t*>(base)[i]);
    default: return 0.f;
  }
}

inline void store_from_float(void* base, std::int64_t i, DType t, float v) {
  switch (t) {
    case DType::f32: static_cast<float*>(base)[i] = v; break;
    case DType::bf16: static_cast<std::uint16_t*>(base)[i] = float_to_bf16(v); break;
    case DType::f16: static_cast<std::uint16_t*>(base)[i] = float_to_f16(v); break;
    default: break;
  }
}

// Rounds a float to the nearest value representable in dtype t (identity for f32).
inline float round_to(DType t, float v) {
  switch (t) {
    case DType::bf16: return bf16_to_float(float_to_bf16(v));
    case DType::f16: return f16_to_float(float_to_f16(v));
    default: return v;
  }
}

}  // namespace moba::detail
