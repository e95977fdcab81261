// The two ends of a query tile's MoBA running state, shared by the mma.sync and the wgmma
// attention kernels (their accumulators have the same per-thread layout: rows i = 0, 1 of the
// thread's row pair, columns n * 8 + 2 * c4 + {0, 1}; online_softmax.cuh).
//   resume_rows: a gathered wave starts from the rows' unnormalised output, max and sum.
//   write_rows:  a row's last pass normalises and writes out and lse; an earlier MoBA pass
//                (own block, or a wave that is not the row's last) leaves the unnormalised
//                output, max and sum in the fp32 running state.
#pragma once

#include <cstdint>

#include "cuda/common/dtype.cuh"
#include "cuda/common/online_softmax.cuh"
#include "cuda/forward/attn_params.hpp"

namespace moba::cuda {

template <int D, int ND>
__device__ __forceinline__ void resume_rows(const AttnParams& p, const int (&tok_r)[2], int h,
                                            int c4, float (&o)[ND][4], float (&m)[2],
                                            float (&l)[2]) {
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int tok = tok_r[i];
    if (tok < 0) continue;
    const std::int64_t ri = std::int64_t(h) * p.total + tok;
    m[i] = p.mrow[ri];
    l[i] = c4 == 0 ? p.lrow[ri] : 0.f;  // the sum once per quad: write_rows adds the quad
    const float* a = p.acc + (std::int64_t(tok) * p.hq + h) * D;
#pragma unroll
    for (int n = 0; n < ND; ++n) {
      const float2 v2 = *reinterpret_cast<const float2*>(a + n * 8 + 2 * c4);
      o[n][2 * i] = v2.x;
      o[n][2 * i + 1] = v2.y;
    }
  }
}

// Whether this launch is the row's last pass (position pos): MoBA's own-block pass is the last
// for rows with no past block to visit; gathered wave s is the last for rows with s + 1 of them.
template <int Kind>
__device__ __forceinline__ bool last_pass(const AttnParams& p, int pos) {
  if constexpr (Kind == kDenseMobaOwn) return min(p.past_k, pos / p.block_size) == 0;
  else if constexpr (Kind == kGatherWave) return p.wave == min(p.past_k, pos / p.block_size) - 1;
  else return true;
}

template <class T, int D, int ND, int Kind>
__device__ __forceinline__ void write_rows(const AttnParams& p, const float (&o)[ND][4],
                                           const float (&m)[2], const float (&l)[2],
                                           const int (&tok_r)[2], const int (&pos_r)[2], int h,
                                           int c4) {
  T* og = static_cast<T*>(p.out);
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const float lt = quad_sum(l[i]);
    const int tok = tok_r[i];
    if (tok < 0) continue;
    const std::int64_t ri = std::int64_t(h) * p.total + tok;
    if (last_pass<Kind>(p, pos_r[i])) {
      const float inv = 1.f / lt;
      T* dst = og + std::int64_t(tok) * p.o_ts + std::int64_t(h) * p.o_hs;
#pragma unroll
      for (int n = 0; n < ND; ++n)
        *reinterpret_cast<std::uint32_t*>(dst + n * 8 + 2 * c4) =
            Dt<T>::pack(o[n][2 * i] * inv, o[n][2 * i + 1] * inv);
      if (c4 == 0) p.lse[ri] = row_lse(m[i], lt);
    } else {
      float* a = p.acc + (std::int64_t(tok) * p.hq + h) * D;
#pragma unroll
      for (int n = 0; n < ND; ++n)
        *reinterpret_cast<float2*>(a + n * 8 + 2 * c4) = make_float2(o[n][2 * i], o[n][2 * i + 1]);
      if (c4 == 0) {
        p.mrow[ri] = m[i];
        p.lrow[ri] = lt;
      }
    }
  }
}

}  // namespace moba::cuda
