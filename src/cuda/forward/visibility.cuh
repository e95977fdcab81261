// Which keys a 128-row query tile of the warp-specialised forward (ws_kernel.cuh) sees, as
// compile-time functors, one per launch kind (attn_params.hpp), plugged into the one kernel
// template. Each states the same key sets as core/visibility.hpp:
//   Visibility<kDenseFull>     causal: keys 0..t
//   Visibility<kDenseMobaOwn>  MoBA own block, causal: keys own(t)..t
//   Visibility<kDenseMoa>      MoA: sink keys 0..sink-1 plus the window t-w+1..t
//   Visibility<kGatherWave>    MoBA selected block j (strictly in the past): all its keys
// A tile's keys are at most two ranges of sequence positions [b0, e0) then [b1, e1), streamed
// in 128-key chunks; `all_visible` says when a whole chunk needs no per-element mask (the
// common case: chunks strictly below the diagonal), `visible` is the per-element rule.
// Plain C++ as well (host and device), so a CPU test checks the functors against
// core/visibility.hpp (tests/cuda/test_ws_visibility.cpp).
#pragma once

#include "cuda/forward/attn_params.hpp"

#if defined(__CUDACC__)
#define MOBA_WS_HD __host__ __device__ __forceinline__
#else
#define MOBA_WS_HD inline
#endif

namespace moba::cuda {

MOBA_WS_HD int ws_min(int a, int b) { return a < b ? a : b; }
MOBA_WS_HD int ws_max(int a, int b) { return a > b ? a : b; }

// The rows and key ranges of one CTA.
struct WsTile {
  int h = 0, seq = 0;
  int t0 = 0;       // dense: position of row 0; gather: unused
  int nrows = 0;    // valid rows (<= 128)
  int start = 0;    // gather: index of row 0 in p.rows
  int b0 = 0, e0 = 0, b1 = 0, e1 = 0;  // key ranges (positions in the sequence)
  int moa_w = 0;
};

MOBA_WS_HD int ws_last_le(const int* a, int lo, int hi, int x) {
  while (hi - lo > 1) {
    const int mid = (lo + hi) >> 1;
    if (a[mid] <= x) lo = mid;
    else hi = mid;
  }
  return lo;
}

// Dense launches: work item i = (tile rank, head), heads fastest, the 128-row tiles longest
// first (tile ranks count down from the last tile table entry). The tile count is read from
// tile_off[batch]: the tables may have been planned on the device (the grid is then a bound).
MOBA_WS_HD int ws_dense_items(const AttnParams& p) { return p.tile_off[p.batch] * p.hq; }
MOBA_WS_HD void ws_dense_rows(const AttnParams& p, int i, WsTile& w) {
  const int tile = p.tile_off[p.batch] - 1 - i / p.hq;
  w.h = i - (i / p.hq) * p.hq;
  w.seq = ws_last_le(p.tile_off, 0, p.batch, tile);
  const int len = p.cu[w.seq + 1] - p.cu[w.seq];
  w.t0 = (tile - p.tile_off[w.seq]) * 128;
  w.nrows = ws_min(128, len - w.t0);
}

template <int Kind>
struct Visibility;

template <>
struct Visibility<kDenseFull> {
  static constexpr bool kGather = false;
  MOBA_WS_HD static int items(const AttnParams& p) { return ws_dense_items(p); }
  MOBA_WS_HD static void tile(const AttnParams& p, int i, WsTile& w) {
    ws_dense_rows(p, i, w);
    w.b1 = 0;
    w.e1 = w.t0 + w.nrows;
  }
  MOBA_WS_HD explicit Visibility(const AttnParams&, const WsTile&) {}
  // rows tf..tl (positions), keys kb..kb+127
  MOBA_WS_HD bool all_visible(int kb, int tf, int) const { return kb + 127 <= tf; }
  MOBA_WS_HD bool visible(int key, int t) const { return key <= t; }
};

template <>
struct Visibility<kDenseMobaOwn> {
  static constexpr bool kGather = false;
  int block;
  MOBA_WS_HD static int items(const AttnParams& p) { return ws_dense_items(p); }
  MOBA_WS_HD static void tile(const AttnParams& p, int i, WsTile& w) {
    ws_dense_rows(p, i, w);
    w.b1 = (w.t0 / p.block_size) * p.block_size;  // own block of the first row
    w.e1 = w.t0 + w.nrows;
  }
  MOBA_WS_HD explicit Visibility(const AttnParams& p, const WsTile&) : block(p.block_size) {}
  MOBA_WS_HD bool all_visible(int kb, int tf, int tl) const {
    return kb + 127 <= tf && kb >= (tl / block) * block;
  }
  MOBA_WS_HD bool visible(int key, int t) const { return key <= t && key >= (t / block) * block; }
};

template <>
struct Visibility<kDenseMoa> {
  static constexpr bool kGather = false;
  int sink, window;
  MOBA_WS_HD static int items(const AttnParams& p) { return ws_dense_items(p); }
  MOBA_WS_HD static void tile(const AttnParams& p, int i, WsTile& w) {
    ws_dense_rows(p, i, w);
    w.moa_w = p.moa_window[w.h * p.batch + w.seq];
    const int tend = w.t0 + w.nrows;
    const int lo = ws_max(0, w.t0 - w.moa_w + 1);
    if (p.moa_sink >= lo) {
      w.b1 = 0;
      w.e1 = tend;
    } else {
      w.b0 = 0;
      w.e0 = p.moa_sink;
      w.b1 = lo;
      w.e1 = tend;
    }
  }
  MOBA_WS_HD Visibility(const AttnParams& p, const WsTile& w) : sink(p.moa_sink), window(w.moa_w) {}
  // key k is hidden from row t when k > t, or sink <= k <= t - window
  MOBA_WS_HD bool all_visible(int kb, int tf, int tl) const {
    return kb + 127 <= tf && (kb + 127 < sink || kb > tl - window);
  }
  MOBA_WS_HD bool visible(int key, int t) const {
    return key <= t && (key < sink || key > t - window);
  }
};

template <>
struct Visibility<kGatherWave> {
  static constexpr bool kGather = true;
  // Work item = one 128-row tile of a bucket (this wave's slot, head, key block j).
  MOBA_WS_HD static int items(const AttnParams& p) {
    return p.btile_off[p.bucket_end] - p.btile_off[p.bucket_begin];
  }
  MOBA_WS_HD static void tile(const AttnParams& p, int item, WsTile& w) {
    const int i = p.btile_off[p.bucket_begin] + item;
    const int b = p.tile_bucket[i];
    const int local = b - p.bucket_begin;
    w.h = local / p.num_blocks;
    const int gb = local - w.h * p.num_blocks;
    w.seq = ws_last_le(p.blk_off, 0, p.batch, gb);
    const int j_block = gb - p.blk_off[w.seq];
    w.b1 = j_block * p.block_size;
    w.e1 = w.b1 + p.block_size;
    w.start = p.bucket_off[b] + (i - p.btile_off[b]) * 128;
    w.nrows = ws_min(128, p.bucket_off[b + 1] - w.start);
  }
  MOBA_WS_HD explicit Visibility(const AttnParams&, const WsTile&) {}
  MOBA_WS_HD bool all_visible(int, int, int) const { return true; }
  MOBA_WS_HD bool visible(int, int) const { return true; }
};

}  // namespace moba::cuda
