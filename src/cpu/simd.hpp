// Eight fp32 lanes, the unit every CPU micro-kernel works in. With AVX2+FMA (the library is
// built with -march=native) these are ymm registers and intrinsics; elsewhere GCC/Clang vector
// extensions give the same 8-lane code, which the compiler lowers to whatever SIMD exists.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define MOBA_CPU_AVX2 1
#endif

namespace moba::detail::cpu {

// The softmax runs in base 2 (exp2 on pre-scaled scores); these convert to and from base e.
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

constexpr int kLanes = 8;

#ifdef MOBA_CPU_AVX2
using vf = __m256;
inline vf vzero() { return _mm256_setzero_ps(); }
inline vf vset1(float x) { return _mm256_set1_ps(x); }
inline vf vload(const float* p) { return _mm256_loadu_ps(p); }
inline void vstore(float* p, vf v) { _mm256_storeu_ps(p, v); }
inline vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
inline vf vmax(vf a, vf b) { return _mm256_max_ps(a, b); }
inline float hsum(vf v) {
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  x = _mm_add_ss(x, _mm_movehdup_ps(x));
  return _mm_cvtss_f32(x);
}
inline float hmax(vf v) {
  __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_max_ps(x, _mm_movehl_ps(x, x));
  x = _mm_max_ss(x, _mm_movehdup_ps(x));
  return _mm_cvtss_f32(x);
}
// 2^n for integer-valued n in [-127, 127] as float bits; n = -127 gives +0.
inline vf vpow2i(vf n) {
  const __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
  return _mm256_castsi256_ps(_mm256_slli_epi32(e, 23));
}
inline vf vround(vf x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
#else
typedef float vf __attribute__((vector_size(32)));
typedef std::int32_t vi __attribute__((vector_size(32)));
inline vf vzero() { return vf{}; }
inline vf vset1(float x) { return vf{} + x; }
inline vf vload(const float* p) { vf v; std::memcpy(&v, p, sizeof v); return v; }
inline void vstore(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
inline vf vfma(vf a, vf b, vf c) { return a * b + c; }
inline vf vmax(vf a, vf b) { return a > b ? a : b; }
inline float hsum(vf v) { float s = 0; for (int i = 0; i < kLanes; ++i) s += v[i]; return s; }
inline float hmax(vf v) { float m = v[0]; for (int i = 1; i < kLanes; ++i) m = v[i] > m ? v[i] : m; return m; }
inline vf vpow2i(vf n) {
  const vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
  vf r;
  std::memcpy(&r, &bits, sizeof r);
  return r;
}
inline vf vround(vf x) {  // round half away from zero; only the range [-0.5, 0.5] of x - n matters
  const vf h = x < 0 ? vset1(-0.5f) : vset1(0.5f);
  return __builtin_convertvector(__builtin_convertvector(x + h, vi), vf);
}
#endif

// 2^x for the softmax: x <= 0 in practice (the running max is subtracted). Anything below
// -127 (masked -inf entries included) returns exactly 0, so masked keys add nothing. The
// polynomial is the degree-7 Taylor series of 2^f on |f| <= 1/2 (truncation < 6e-9
// relative), well below fp32 rounding, so the softmax matches the fp64 reference to fp32.
inline vf vexp2(vf x) {
  x = vmax(x, vset1(-127.f));
  const vf n = vround(x);
  const vf f = x - n;
  vf p = vset1(1.5252733804059841e-05f);          // ln2^7 / 7!
  p = vfma(p, f, vset1(1.5403530393381606e-04f));  // ln2^6 / 6!
  p = vfma(p, f, vset1(1.3333558146428443e-03f));  // ln2^5 / 5!
  p = vfma(p, f, vset1(9.6181291076284772e-03f));  // ln2^4 / 4!
  p = vfma(p, f, vset1(5.5504108664821580e-02f));  // ln2^3 / 3!
  p = vfma(p, f, vset1(2.4022650695910071e-01f));  // ln2^2 / 2!
  p = vfma(p, f, vset1(6.9314718055994531e-01f));  // ln2
  p = vfma(p, f, vset1(1.0f));
  return p * vpow2i(n);
}

}  // namespace moba::detail::cpu
