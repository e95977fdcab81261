// Which keys a query row sees, as compile-time functors, one per launch kind (attn_params.hpp),
// plugged into each kernel template instead of a run-time `kind` switch. Every CUDA kernel
// that masks scores uses them: the forward kernels (attn_kernel.cuh, ws_kernel.cuh; key and
// row as positions within a sequence) and the backward passes (key_pass.cuh, dq_pass.cuh;
// absolute tokens: the sink's end and a block's start are then shifted by the sequence's first
// token, which keeps every comparison the same). Each states the key sets of
// core/visibility.hpp (docs/semantics.md):
//   Visibility<kDenseFull>     causal: keys 0..t
//   Visibility<kDenseMobaOwn>  MoBA own block, causal: keys own(t)..t
//   Visibility<kDenseMoa>      MoA: sink keys 0..sink-1 plus the window t-w+1..t
//   Visibility<kGatherWave>    MoBA selected block j (strictly in the past): all its keys
//   Visibility<kMobaOnePass>   MoBA in one pass: the tile's union blocks (a row sees a whole
//                              union block when it chose it, none of it otherwise: one
//                              predicate per row and 128-key chunk), then its own block causally
// For the forward's work items (work_item.cuh) each functor also names the tile's key ranges:
// at most two ranges of positions [b0, e0) then [b1, e1), streamed in kKeys-key chunks;
// `all_visible` says when a whole chunk needs no per-element mask (the common case: chunks
// strictly below the diagonal), `visible` is the per-element rule. Plain C++ as well (host and
// device), so a CPU test checks the functors against core/visibility.hpp
// (tests/cuda/test_ws_visibility.cpp).
#pragma once

#include "cuda/forward/attn_params.hpp"
#include "cuda/forward/work_item.cuh"

#define MOBA_WS_HD MOBA_HD

namespace moba::cuda {

// The names this header had when only the warp-specialised kernel used it (128-row tiles).
MOBA_HD int ws_dense_items(const AttnParams& p) { return dense_items(p); }
MOBA_HD void ws_dense_rows(const AttnParams& p, int i, WorkTile& w) { dense_rows<128>(p, i, w); }

template <int Kind>
struct Visibility;

template <>
struct Visibility<kDenseFull> {
  static constexpr bool kGather = false;
  static constexpr bool kUnion = false;
  MOBA_HD static int items(const AttnParams& p) { return dense_items(p); }
  template <int kRows = 128>
  MOBA_HD static void tile(const AttnParams& p, int i, WorkTile& w) {
    dense_rows<kRows>(p, i, w);
    w.b1 = 0;
    w.e1 = w.t0 + w.nrows;
  }
  MOBA_HD Visibility() {}
  MOBA_HD explicit Visibility(const AttnParams&, const WorkTile&) {}
  // rows tf..tl (positions), keys kb..kb+kKeys-1
  template <int kKeys = 128>
  MOBA_HD bool all_visible(int kb, int tf, int) const { return kb + kKeys - 1 <= tf; }
  MOBA_HD static bool visible(int key, int t) { return key <= t; }
  // !visible, spelled as the backward passes always tested it (their code generation is kept).
  MOBA_HD static bool hidden(int key, int t) { return t < key; }
};

template <>
struct Visibility<kDenseMobaOwn> {
  static constexpr bool kGather = false;
  static constexpr bool kUnion = false;
  int block;
  // With one-pass tiles planned (own_items set), the own-block pass runs only the others.
  MOBA_HD static int items(const AttnParams& p) {
    return p.own_items ? p.op_counts[1] : dense_items(p);
  }
  template <int kRows = 128>
  MOBA_HD static void tile(const AttnParams& p, int i, WorkTile& w) {
    dense_rows<kRows>(p, p.own_items ? p.own_items[i] : i, w);
    w.b1 = (w.t0 / p.block_size) * p.block_size;  // own block of the first row
    w.e1 = w.t0 + w.nrows;
  }
  MOBA_HD explicit Visibility(const AttnParams& p, const WorkTile&) : block(p.block_size) {}
  template <int kKeys = 128>
  MOBA_HD bool all_visible(int kb, int tf, int tl) const {
    return kb + kKeys - 1 <= tf && kb >= (tl / block) * block;
  }
  MOBA_HD bool visible(int key, int t) const { return visible_in(key, t, 0, block); }
  // The rule for absolute tokens (the backward): the row's block starts at a multiple of
  // `block` from the sequence's first token seq_begin (computed only when key <= t).
  MOBA_HD static bool visible_in(int key, int t, int seq_begin, int block) {
    return key <= t && key >= seq_begin + (t - seq_begin) / block * block;
  }
};

template <>
struct Visibility<kDenseMoa> {
  static constexpr bool kGather = false;
  static constexpr bool kUnion = false;
  int sink, window;
  MOBA_HD static int items(const AttnParams& p) { return dense_items(p); }
  template <int kRows = 128>
  MOBA_HD static void tile(const AttnParams& p, int i, WorkTile& w) {
    dense_rows<kRows>(p, i, w);
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
  MOBA_HD Visibility(const AttnParams& p, const WorkTile& w) : sink(p.moa_sink), window(w.moa_w) {}
  // sink_end: the first key past the sink (absolute tokens: shifted by the sequence's start)
  MOBA_HD Visibility(int sink_end, int w) : sink(sink_end), window(w) {}
  // key k is hidden from row t when k > t, or sink <= k <= t - window
  template <int kKeys = 128>
  MOBA_HD bool all_visible(int kb, int tf, int tl) const {
    return kb + kKeys - 1 <= tf && (kb + kKeys - 1 < sink || kb > tl - window);
  }
  MOBA_HD bool visible(int key, int t) const {
    return key <= t && (key < sink || key > t - window);
  }
  // The same rule spelled as each backward pass always had it, so their code generation (and
  // register spills) stay as measured: branch-free (the dQ pass) ...
  MOBA_HD bool visible_branch_free(int key, int t) const {
    return (key <= t) & ((key < sink) | (key > t - window));
  }
  // ... and with the window's last hidden key t - w given (precomputed per row, the key pass; a
  // reference, so a value kept in shared memory is read only when the rule needs it).
  MOBA_HD static bool visible_from(int key, int t, int sink_end, const int& t_minus_w) {
    return t >= key && (key < sink_end || key > t_minus_w);
  }
};

template <>
struct Visibility<kGatherWave> {
  static constexpr bool kGather = true;
  static constexpr bool kUnion = false;
  // Work item = one bucket tile of this wave (slot, head, key block j).
  MOBA_HD static int items(const AttnParams& p) { return gather_items(p); }
  template <int kRows = 128>
  MOBA_HD static void tile(const AttnParams& p, int item, WorkTile& w) {
    gather_rows<kRows>(p, item, w);
  }
  MOBA_HD explicit Visibility(const AttnParams&, const WorkTile&) {}
  template <int kKeys = 128>
  MOBA_HD bool all_visible(int, int, int) const { return true; }
  MOBA_HD bool visible(int, int) const { return true; }
};

// MoBA in one pass (kRows = 128 and block sizes that are a multiple of 128: the tile's rows
// share one own block). Work item = the i-th one-pass item of the plan (onepass_plan.hpp); the
// tile's chunks are UnionChunks (work_item.cuh): U whole union blocks ([b0, e0) = [0, U x block)),
// then the own range
// [own block start, last row]. In union chunk c a row's scores are kept when it chose union
// block union_index(c) (bit of its row mask), else all masked; in the own range the rule is
// causal (every key there is in the rows' own block).
template <>
struct Visibility<kMobaOnePass> {
  static constexpr bool kGather = false;
  static constexpr bool kUnion = true;
  MOBA_HD static int items(const AttnParams& p) { return p.op_counts[0]; }
  template <int kRows = 128>
  MOBA_HD static void tile(const AttnParams& p, int i, WorkTile& w) {
    const int d = p.op_items[i];
    dense_rows<kRows>(p, d, w);
    w.start = d;  // the plan's tables (union, row masks) are indexed by the dense item
    w.b0 = 0;  // the union blocks end to end (UnionChunks)
    w.e0 = p.op_union[std::int64_t(d) * kOnePassUnionStride] * p.block_size;
    w.b1 = (w.t0 / p.block_size) * p.block_size;
    w.e1 = w.t0 + w.nrows;
  }
  MOBA_HD explicit Visibility(const AttnParams&, const WorkTile&) {}
  // own range only (union chunks: row_chose)
  template <int kKeys = 128>
  MOBA_HD bool all_visible(int kb, int tf, int) const { return kb + kKeys - 1 <= tf; }
  MOBA_HD bool visible(int key, int t) const { return key <= t; }
  // whether a row with choice mask `mask` sees union block u (all of it) or none of it
  MOBA_HD static bool row_chose(unsigned mask, int u) { return (mask >> u) & 1u; }
};

}  // namespace moba::cuda
