// MoBA in one pass: which 128-row tiles of the sm_90a forward merge their own block and all
// their rows' selected blocks on chip, in one online softmax (Visibility<kMobaOnePass>), and
// which keep the own-block pass + per-slot waves through the fp32 running state.
//
// A dense item d (128-row tile, head; block size a multiple of 128, so its rows share one own
// block j_own) has n = min(topk - 1, j_own) selected blocks per row. Its union U (the distinct
// blocks its rows chose) is computed on the device after the gate; the tile runs one pass when
//   0 < n,  U <= kOnePassMaxUnion  and  U <= factor * n.
// Why that rule (docs/architecture.md, "MoBA in one pass"): one pass computes U whole blocks for
// all 128 rows; the waves compute each row's n blocks but move the fp32 running state (~10 D
// bytes per row and slot, HBM) per block visit. At 550 TFLOP/s and 4.8 TB/s a row's state
// visit costs as much time as 10 D * 550 / 4.8 = 1146 D FLOPs, i.e. the work of
// 286 / block_size of a block (4 B D FLOPs): the waves cost n (1 + 286 / B) block-equivalents
// against U for one pass, so the break-even factor is 1 + 286 / B (3.2 at B = 128, 1.14 at
// B = 2048). CudaOptions::moba_one_pass_factor overrides it.
// No host sync: the plan reads the device tables (the 128-row tile offsets), writes per-item
// flags, unions and row masks, and compacts the items into the one-pass list and the own-pass
// list (longest first, both); the counts stay on the device (capturable in a CUDA graph).
#pragma once

#include <cstdint>

#include "cuda/common/workspace.hpp"
#include "cuda/forward/attn_params.hpp"
#include "cuda/forward/work_item.cuh"

namespace moba::cuda {

// The break-even factor of the rule above for a block size.
inline float onepass_default_factor(int block_size) { return 1.f + 286.f / float(block_size); }

// The rule, shared by the device plan and the CPU tests. n: selected blocks per row (> 0).
MOBA_HD bool onepass_accept(int union_size, int n, float factor) {
  return n > 0 && union_size <= kOnePassMaxUnion && float(union_size) <= factor * float(n);
}

// Whether the row at position pos of sequence seq, head h, lies in a one-pass tile (then no
// wave and no own-block pass computes it). t128: the 128-row tile offsets [batch + 1].
MOBA_HD bool onepass_row(const int* op_flag, const int* t128, int batch, int hq, int seq,
                         int pos, int h) {
  const int tile = t128[seq] + pos / 128;
  return op_flag[(std::int64_t(t128[batch]) - 1 - tile) * hq + h] != 0;
}

// The device counters of a plan. [0] one-pass items, [1] own-pass items (both read by the
// kernels); [2] candidate items (with past blocks), [3] sum of the one-pass items' union sizes:
// CudaForwardStats only, counted when `statistics` (two same-address atomics per item otherwise
// spent on every call).
struct OnePassCounts {
  int* dev = nullptr;
  bool statistics = false;
};

struct OnePassPlan {
  OnePassCounts counts;
  int* items = nullptr;      // [dense bound] one-pass dense items
  int* own_items = nullptr;  // [dense bound] own-pass dense items
  int* unions = nullptr;     // [dense bound][kOnePassUnionStride]
  std::uint16_t* masks = nullptr;  // [dense bound][128]
  int* flags = nullptr;      // [dense bound]
};

// Plans the one-pass tiles of a MoBA forward on ws.stream(). `a` has the 128-row tables
// (tile_off = 128-row tile offsets), cu, hq, batch, block_size (a multiple of 128) and past_k;
// sel is the gate's selection [total, hq, past_k]; dense_bound bounds tile_off[batch] * hq.
OnePassPlan plan_one_pass(const AttnParams& a, const std::int32_t* sel, long long dense_bound,
                          float factor, bool statistics, Workspace& ws);

// Points the attention parameters at a plan.
inline void use_one_pass(AttnParams& a, const OnePassPlan& op) {
  a.op_counts = op.counts.dev;
  a.op_items = op.items;
  a.own_items = op.own_items;
  a.op_union = op.unions;
  a.op_mask = op.masks;
  a.op_flag = op.flags;
}

}  // namespace moba::cuda
