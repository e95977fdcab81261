// Where a query row of the paged kernels sits (its sequence, cache row, position) and MoA's
// window rule: shared by the decode attention kernels (decode_kernels.cuh, decode_mma.cuh), the
// gate and the append.
#pragma once

#include <cuda_runtime.h>

#include "cuda/decode/decode_params.hpp"

namespace moba::cuda::decode {

constexpr float kLn2 = 0.6931471805599453f;

// The sequence a query row belongs to (binary search in cu) and its position.
struct RowInfo {
  int b, slot, n, i, t, len;
};

__device__ __forceinline__ RowInfo locate(const Rows& r, int row) {
  int lo = 0, hi = r.batch - 1;  // the last b with cu[b] <= row (skipping empty sequences)
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (__ldg(r.cu + mid) <= row) lo = mid;
    else hi = mid - 1;
  }
  RowInfo x;
  x.b = lo;
  x.slot = r.slots ? __ldg(r.slots + lo) : lo;
  const int c0 = __ldg(r.cu + lo);
  x.n = __ldg(r.cu + lo + 1) - c0;
  x.i = row - c0;
  x.len = __ldg(r.seq_lens + x.slot);
  x.t = x.len - x.n + x.i;
  return x;
}

__device__ __forceinline__ int moa_window(float alpha, float beta, int n) {
  const double span = floor(double(alpha) + double(beta) * double(n));
  if (span < 1.0) return 1;
  return span > double(n) ? max(n, 1) : static_cast<int>(span);
}

}  // namespace moba::cuda::decode
