// Where a query row of the paged kernels sits (its sequence, cache row, position), MoA's
// window rule and the union of a head group's key ranges: shared by the decode attention kernels
// (decode_kernels.cuh, decode_mma.cuh), the gate, the append and the paged backward
// (src/cuda/paged/paged_backward.cuh).
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

// The union of G heads' key ranges of a query at position t as ascending disjoint ranges: range
// i starts at r_begin[i] and holds r_off[i + 1] - r_off[i] keys (r_off[0] = 0). Full: 0..t; MoA:
// the sink and the widest of the heads' windows (win_begin[hh], refined per key by the caller);
// MoBA: every block any head chose (sel(hh, s), ascending, each once) and the own block up to t.
// With r_mask, each range also gets the heads that see it (a MoBA block: the heads that chose
// it; everything else: all G), and ranges with different masks are not merged. Returns the
// number of ranges. One thread; the lists are short (kMaxRanges). KindT: decode::Kind or
// paged::Kind (the same three values).
template <class KindT, class Sel>
__device__ int build_key_ranges(KindT kind, int t, int G, int sink, const int* win_begin,
                                int block_size, bool own_block, int past_k, Sel sel,
                                int* r_begin, int* r_off, unsigned* r_mask) {
  const unsigned all = (1u << G) - 1u;
  int n = 0;
  auto push = [&](int b, int e, unsigned mask) {  // ranges arrive with ascending begins
    if (b >= e) return;
    if (n > 0 && (!r_mask || r_mask[n - 1] == mask)) {
      const int last_end = r_begin[n - 1] + (r_off[n] - r_off[n - 1]);
      if (b <= last_end) {
        if (e > last_end) r_off[n] += e - last_end;
        return;
      }
    }
    r_begin[n] = b;
    if (r_mask) r_mask[n] = mask;
    r_off[n + 1] = r_off[n] + (e - b);
    ++n;
  };
  r_off[0] = 0;
  if (kind == KindT::full) {
    push(0, t + 1, all);
  } else if (kind == KindT::moa) {
    int wb = t + 1;
    for (int hh = 0; hh < G; ++hh) wb = min(wb, win_begin[hh]);
    push(0, min(sink, wb), all);
    push(max(wb, min(sink, wb)), t + 1, all);
  } else {
    const int B = block_size, own = t / B;
    int last = -1;
    for (;;) {  // ascending distinct selected blocks: repeatedly the smallest above `last`
      int next = own;
      for (int hh = 0; hh < G; ++hh)
        for (int s = 0; s < past_k; ++s) {
          const int j = sel(hh, s);
          if (j > last && j < next) next = j;
        }
      if (next >= own) break;
      unsigned mask = all;
      if (r_mask) {
        mask = 0;
        for (int hh = 0; hh < G; ++hh)
          for (int s = 0; s < past_k; ++s)
            if (sel(hh, s) == next) mask |= 1u << hh;
      }
      push(next * B, (next + 1) * B, mask);
      last = next;
    }
    if (own_block) push(own * B, t + 1, all);
  }
  return n;
}

}  // namespace moba::cuda::decode
