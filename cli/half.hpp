// f16 / bf16 <-> float conversions for the CLI's host tensors. Round-to-nearest-even, like
// PyTorch and the GPU; NaN stays NaN and overflow becomes inf.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace moba::cli {

inline float bits_as_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline std::uint32_t float_as_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float bf16_to_float(std::uint16_t h) { return bits_as_float(std::uint32_t(h) << 16); }

inline std::uint16_t float_to_bf16(float f) {
  std::uint32_t u = float_as_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return std::uint16_t((u >> 16) | 0x40u);  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return std::uint16_t(u >> 16);
}

inline float f16_to_float(std::uint16_t h) {
  const std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1fu;
  const std::uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24
    const float v = std::ldexp(float(mantissa), -24);
    return sign ? -v : v;
  }
  if (exponent == 31) return bits_as_float(sign | 0x7f800000u | (mantissa << 13));
  return bits_as_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

inline std::uint16_t float_to_f16(float f) {
  const std::uint32_t u = float_as_bits(f);
  const auto sign = std::uint16_t((u >> 16) & 0x8000u);
  const std::uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7e00u;    // NaN
  if (a >= 0x477ff000u) return sign | 0x7c00u;   // rounds past the largest f16: inf
  if (a < 0x38800000u) {                         // f16 subnormal or zero: units of 2^-24
    return sign | std::uint16_t(std::nearbyint(bits_as_float(a) * 16777216.0f));
  }
  std::uint32_t r = a + 0xfffu + ((a >> 13) & 1u);  // round the mantissa to 10 bits
  r -= 112u << 23;                                  // exponent bias 127 -> 15
  return sign | std::uint16_t(r >> 13);
}

}  // namespace moba::cli
