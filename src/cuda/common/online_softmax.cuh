// The online-softmax unit of the attention kernels, in base 2: a row's running maximum m (of
// the scaled scores s c, c = softmax_scale * log2(e)) and running sum l, updated chunk by
// chunk; P = 2^(s c - m); alpha = 2^(m_old - m_new) rescales the older output and sum. At the
// end out = O / l and lse = (m + log2 l) ln 2.
// Layout: the tensor-core accumulator fragment that mma.sync (m16n8) and wgmma (m64nN) share:
// a thread holds rows i = 0, 1 of its row pair, columns n * 8 + 2 * (lane % 4) + {0, 1} of each
// n8 tile; a row lives in the 4 lanes of a quad, so row reductions are two xor shuffles.
#pragma once

#include <cmath>

#include "cuda/common/mma.cuh"

namespace moba::cuda {

// Row total over the quad of lanes holding it.
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  x += __shfl_xor_sync(0xffffffffu, x, 2);
  return x;
}

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
  return x;
}

// One chunk of NS n8 score tiles: masked scores (-inf where hidden) in, P in place; m and l
// updated, alpha[i] is the factor for the row's older output (rescale_rows).
//   kFoldScale: s holds raw scores; the scale is folded into one FMA per score, c = scale.
//   otherwise:  s already holds s c (the mma.sync kernel scales before masking); c unused.
// The two forms are kept as each kernel has always computed them, so results stay bit-identical.
template <bool kFoldScale, int NS>
__device__ __forceinline__ void softmax_update(float (&s)[NS][4], float (&m)[2], float (&l)[2],
                                               float (&alpha)[2], float c) {
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    float mx = -INFINITY;
#pragma unroll
    for (int n = 0; n < NS; ++n) mx = fmaxf(mx, fmaxf(s[n][2 * i], s[n][2 * i + 1]));
    mx = quad_max(mx);
    float m_new;
    if constexpr (kFoldScale) m_new = fmaxf(m[i], mx * c);  // c > 0: max(s) c == max(s c)
    else m_new = fmaxf(m[i], mx);
    const float m_use = m_new == -INFINITY ? 0.f : m_new;  // a row with nothing visible yet
    alpha[i] = fast_exp2(m[i] - m_use);
    m[i] = m_new;
    float rs = 0.f;
#pragma unroll
    for (int n = 0; n < NS; ++n) {
      if constexpr (kFoldScale) {
        s[n][2 * i] = fast_exp2(fmaf(s[n][2 * i], c, -m_use));
        s[n][2 * i + 1] = fast_exp2(fmaf(s[n][2 * i + 1], c, -m_use));
      } else {
        s[n][2 * i] = fast_exp2(s[n][2 * i] - m_use);
        s[n][2 * i + 1] = fast_exp2(s[n][2 * i + 1] - m_use);
      }
      rs += s[n][2 * i] + s[n][2 * i + 1];
    }
    l[i] = l[i] * alpha[i] + rs;
  }
}

// O *= alpha, row by row.
template <int N>
__device__ __forceinline__ void rescale_rows(float (&o)[N][4], const float (&alpha)[2]) {
#pragma unroll
  for (int n = 0; n < N; ++n) {
    o[n][0] *= alpha[0];
    o[n][1] *= alpha[0];
    o[n][2] *= alpha[1];
    o[n][3] *= alpha[1];
  }
}

// Natural-log LSE of a finished row from its base-2 running max and full (quad-summed) sum.
__device__ __forceinline__ float row_lse(float m, float l) {
  return (m + __log2f(l)) * 0.6931471805599453f;
}

}  // namespace moba::cuda
