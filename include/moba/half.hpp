// bf16 / f16 <-> float conversions for preparing and reading tensors on the host.
// Round-to-nearest-even, as on the GPU and in PyTorch; NaN stays NaN, overflow becomes inf.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace moba {

inline float bits_to_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline std::uint32_t float_to_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

inline float bf16_to_float(std::uint16_t h) { return bits_to_float(std::uint32_t(h) << 16); }

inline std::uint16_t float_to_bf16(float f) {
  std::uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return std::uint16_t((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return std::uint16_t(u >> 16);
}

inline float f16_to_float(std::uint16_t h) {
  const std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1fu;
  const std::uint32_t man = h & 0x3ffu;
  if (exp == 0) {  // zero or subnormal: man * 2^-24
    const float v = std::ldexp(float(man), -24);
    return sign ? -v : v;
  }
  if (exp == 31) return bits_to_float(sign | 0x7f800000u | (man << 13));
  return bits_to_float(sign | ((exp + 112) << 23) | (man << 13));
}

inline std::uint16_t float_to_f16(float f) {
  const std::uint32_t u = float_to_bits(f);
  const std::uint16_t sign = std::uint16_t((u >> 16) & 0x8000u);
  const std::uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7e00u;             // NaN
  if (a >= 0x477ff000u) return sign | 0x7c00u;            // overflow (>= 65520) -> inf
  if (a < 0x38800000u) {                                  // subnormal or zero in f16
    const float v = bits_to_float(a);                     // |f|
    const float scaled = v * 16777216.0f;                 // units of 2^-24, exact
    return sign | std::uint16_t(std::nearbyint(scaled));  // ties to even (default mode)
  }
  std::uint32_t r = a + 0xfffu + ((a >> 13) & 1u);        // round mantissa to 10 bits
  r -= 112u << 23;                                        // rebias exponent 127 -> 15
  return sign | std::uint16_t(r >> 13);
}

}  // namespace moba
