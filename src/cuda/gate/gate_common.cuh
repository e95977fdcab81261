// Small device helpers shared by the gate kernels.
#pragma once

namespace moba::cuda::gate_detail {

// Largest i in [lo, hi) with a[i] <= x (a non-decreasing, a[lo] <= x): the sequence of a plan
// tile or block from a prefix array; empty sequences are skipped (the last of equal entries wins).
__device__ __forceinline__ int last_le(const int* a, int lo, int hi, int x) {
  while (hi - lo > 1) {
    const int mid = (lo + hi) >> 1;
    if (a[mid] <= x) lo = mid;
    else hi = mid;
  }
  return lo;
}

}  // namespace moba::cuda::gate_detail
