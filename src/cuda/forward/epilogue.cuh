// The end of a query tile, shared by the mma.sync and the wgmma attention kernels (their
// accumulators have the same per-thread layout: rows i = 0, 1 of the thread's row pair,
// columns n * 8 + 2 * c4 + {0, 1}). A row's last pass normalises and writes out and lse; an
// earlier MoBA pass leaves the unnormalised output, max and sum in the fp32 running state.
#pragma once

#include <cstdint>

#include "cuda/common/dtype.cuh"
#include "cuda/forward/attn_params.hpp"

namespace moba::cuda {

template <class T, int D, int ND>
__device__ __forceinline__ void write_rows(const AttnParams& p, const float (&o)[ND][4],
                                           const float (&m)[2], const float (&l)[2],
                                           const int (&tok_r)[2], const int (&pos_r)[2], int h,
                                           int c4, bool gather) {
  T* og = static_cast<T*>(p.out);
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    float lt = l[i];
    lt += __shfl_xor_sync(0xffffffffu, lt, 1);
    lt += __shfl_xor_sync(0xffffffffu, lt, 2);
    const int tok = tok_r[i];
    if (tok < 0) continue;
    const int pos = pos_r[i];
    bool final_row = true;
    if (p.kind == kDenseMobaOwn) {
      final_row = min(p.past_k, pos / p.block_size) == 0;
    } else if (gather) {
      final_row = p.wave == min(p.past_k, pos / p.block_size) - 1;
    }
    const std::int64_t ri = std::int64_t(h) * p.total + tok;
    if (final_row) {
      const float inv = 1.f / lt;
      T* dst = og + std::int64_t(tok) * p.o_ts + std::int64_t(h) * p.o_hs;
#pragma unroll
      for (int n = 0; n < ND; ++n)
        *reinterpret_cast<std::uint32_t*>(dst + n * 8 + 2 * c4) =
            Dt<T>::pack(o[n][2 * i] * inv, o[n][2 * i + 1] * inv);
      if (c4 == 0) p.lse[ri] = (m[i] + __log2f(lt)) * 0.6931471805599453f;
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
