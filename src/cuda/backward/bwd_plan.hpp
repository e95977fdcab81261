// Work items and kernel arguments of the CUDA backward, shared by host planning code and the
// kernels (plain structs, no CUDA types).
//
// Key-major pass (dK, dV and, in the default mode, the listed rows' dQ by fp32 atomics): one
// item is one tile of 64 * NG keys (NG = 2 when tiles of 128 keys stay inside one MoBA block)
// of one KV head together with a range of 64-row tiles of the query rows that see it.
// The rows of a key tile are, in order:
//   implicit rows: tokens [impl_begin, impl_end) of the key tile's sequence, for each query
//     head of the group, in 64-token x 1-head tiles (token tile major, head minor). These are
//     the rows that see the tile causally: the own MoBA block's rows from the tile on, or, in
//     full mode, every later row. The first token tile (the diagonal) is masked causally.
//     MoA: every later row for a tile that starts in the sink, else the rows up to the last
//     key + the group's widest window; each of these tiles is masked by the window rule.
//   listed rows: entries t * hq + h of the rows that selected the tile's MoBA block as a past
//     block (all keys visible), 64 per tile.
// A key tile with many row tiles is split over several items; each then writes its dK/dV
// partial in fp32 to a slot, and a small kernel sums the slots in a fixed order.
//
// Query-major dQ pass (both modes for the implicit rows; the listed rows only in the
// deterministic mode's wave path): one item is one 64-row tile (implicit: 64 tokens of one
// head; listed: 64 entries of a selection slot's list) and a run of key tiles it sees fully,
// the last one optionally diagonal. Each launch ("wave") touches every row at most once, so
// dQ is accumulated without atomics in a fixed order.
//
// Deterministic mode, slot path (a MoBA block fits one key tile and P <= kDetSlotMax): the key
// pass computes each listed entry's dQ (row, slot s) whole (one key tile is the whole block) and
// stores it to slot buffer s (no atomics, each element written once); the dQ pass over the
// implicit rows then runs last and adds the row's valid slots in slot order to its registers.
#pragma once

#include <cstdint>

namespace moba::detail::bwd {

struct KeyItem {
  int key_start;   // absolute token of the tile's first key
  int key_len;     // keys of the tile inside the sequence (1..64 * NG)
  int g;           // KV head
  int impl_begin;  // absolute tokens of the implicit rows: [impl_begin, impl_end)
  int impl_end;
  int list_begin;  // listed rows: entries [list_begin, list_begin + list_len) of the list array
  int list_len;
  int rt_begin;  // row tiles [rt_begin, rt_end) of this item (implicit tiles first)
  int rt_end;
  int partial;  // -1: write dK/dV to the outputs; else the fp32 partial slot
  // MoA only: the sequence (index into KeyPassArgs::moa_window) and the absolute token where
  // its sink ends. A row t of head h sees key j iff j <= t and (j < sink_end or j > t - w_h).
  int seq;
  int sink_end;
};

struct DqItem {
  int key_start;    // absolute token of the first key tile
  int n_key_tiles;  // consecutive 64-key tiles
  int diag;         // 1: the last key tile is masked causally (key <= query token)
  int g;            // KV head
  int head;         // implicit rows: the query head; -1 for listed rows
  int row_begin;    // implicit: first absolute token; listed: first entry of the list array
  int row_len;      // rows of this tile (1..64)
  // MoA only: first the sink's key tiles [seq_begin, seq_begin + 64 * sink_tiles), then the
  // n_key_tiles from key_start (disjoint); every tile masked by the window rule of moa_w.
  int sink_tiles;
  int seq_begin;  // first token of the item's sequence (MoA, kVisBlocks, implicit rows always)
  int moa_w;
  int key_end;  // kVisBlocks, listed rows: the chosen block's end (keys from it are not seen)
};

// The visibility rule of a launch (a template parameter of both passes' kernels, so each rule
// compiles to its own kernel and the common ones carry no code of the others).
//   kVisCausal: full causal and MoBA blocks a multiple of 64. Implicit rows see keys <= their
//               own token (only the diagonal tiles are masked); listed rows see whole tiles.
//   kVisBlocks: MoBA blocks of any size. Key pass: as kVisCausal, plus the keys past a partial
//               tile masked. dQ pass: implicit rows see [own block start, row], listed rows
//               keys below DqItem::key_end; every tile masked.
//   kVisMoa:    sink + window (MoA), every tile masked.
enum Visibility : int { kVisCausal = 0, kVisBlocks = 1, kVisMoa = 2 };

struct Operands {
  const void* q;
  const void* k;
  const void* v;
  const void* dout;
  void* dq;
  void* dk;
  void* dv;
  std::int64_t q_ts, q_hs, k_ts, k_hs, v_ts, v_hs, do_ts, do_hs;
  std::int64_t dq_ts, dq_hs, dk_ts, dk_hs, dv_ts, dv_hs;
};

struct KeyPassArgs {
  Operands op;
  const float* lse;        // [hq, total]
  const float* dt;         // [hq, total]  D_t = <dout_t, out_t>
  const int* list;         // entries t * hq + h
  const KeyItem* items;
  float* dq_acc;           // [total, hq, D] fp32, atomically accumulated; nullptr: no dQ
  int dq_listed_only;      // 1: dQ only for listed rows (the causal rows' dQ comes from the dQ pass)
  float* partial;          // [slots, 2, 64 * NG, D] fp32 (dK then dV)
  int total, hq, group;
  float scale, scale_log2;
  int groups;  // NG: 64-key warp groups per CTA (1 or 2); tiles are 64 * NG keys
  // MoA (nullptr otherwise): window of (head h, sequence b) at moa_window[h * batch + b]
  const int* moa_window;
  int batch;
  int visibility;  // Visibility
  const int* n_items = nullptr;  // device count of items (the grid is a bound); nullptr: the grid
  // sm_90a key pass only: 1 adds each row's dQ by one bulk reduce-add (TMA unit) from shared
  // memory instead of per-thread fp32 atomics (same sums, other order). Unused by key_pass.cuh.
  int dq_bulk = 0;
  // Deterministic slot path (key_pass.cuh only): non-null: a listed entry's dQ is stored (no
  // atomics) to dq_acc + slot * dq_slot_stride + row * D, slot = list_slot[entry] (its
  // selection slot); dq_acc then holds P slot buffers.
  const signed char* list_slot = nullptr;
  long long dq_slot_stride = 0;
};

// Most selection slots the deterministic slot path takes (its P fp32 slot buffers of
// [total, hq, D] replace the one dQ scratch of the wave path: at most twice its memory).
constexpr int kDetSlotMax = 2;

// How the dQ pass stores its tile's result. kDqStoreOutSlots (deterministic slot path): adds the
// row's valid slot buffers (DqPassArgs::slots) in slot order, then scales and rounds to dq.
enum DqStore : int { kDqStoreAcc = 0, kDqAddAcc = 1, kDqStoreOut = 2, kDqStoreOutSlots = 3 };

struct DqPassArgs {
  Operands op;
  const float* lse;
  const float* dt;
  const int* list;
  const DqItem* items;
  float* dq_acc;  // [total, hq, D]
  int store;      // DqStore
  int total, hq, group;
  float scale, scale_log2;
  int moa_sink;    // kVisMoa: sink tokens at the start of each sequence
  int visibility;  // Visibility
  int block_size;  // kVisBlocks and the slot path
  const int* n_items = nullptr;  // device count of items (the grid is a bound); nullptr: the grid
  // kDqStoreOutSlots: P slot buffers at dq_acc + s * slot_stride ([total, hq, D] each); slot s
  // of row (t, h) is valid (was written by the key pass) iff j = selection[(t hq + h) P + s]
  // is a past block of t's sequence: 0 <= j < (t - DqItem::seq_begin) / block_size.
  const std::int32_t* selection = nullptr;
  int slots = 0;
  long long slot_stride = 0;
};

// A key tile whose row tiles were split over n_slots items: their fp32 dK/dV partials sit in
// slots [slot_begin, slot_begin + n_slots) and are summed in that order.
struct SplitTile {
  int key_start, key_len, g, slot_begin, n_slots;
};

// The backward's work, planned on the device (bwd_device_plan.cu) from cu_seqlens and the saved
// selection: no device-to-host copy and no host synchronisation, so a training step can be
// captured in a CUDA graph. Every count (n_*) is a device int; the host knows only the bounds
// (max_*), which size the grids and the scratch, and the kernels return at once past a count.
struct BackwardPlan {
  // MoBA row lists (selection slots P > 0): entries t * hq + h of the rows that chose a past
  // block, grouped by key k = (id * hkv + g) * P + s (block id, KV head g, slot s) and ordered by
  // token then head inside a group; group k is list[list_off[k] .. list_off[k + 1]).
  // Block j of sequence b has id = cu[b] / B + j + b: increasing in (b, j), so one sort orders
  // the groups by sequence, block, KV head, slot, and ids stay below n_block_ids.
  const int* list = nullptr;
  const int* list_off = nullptr;  // [n_block_ids * hkv * P + 1]
  long long n_block_ids = 0;
  // Key-major items, longest first (KeyItem::partial indexes the fp32 partial slots).
  const KeyItem* key_items = nullptr;
  const int* n_key_items = nullptr;
  int max_key_items = 0;
  const SplitTile* splits = nullptr;  // key tiles split over several items
  const int* n_splits = nullptr;
  int max_splits = 0;
  int max_partials = 0;  // partial slots the split items may use
  // dQ waves. Wave 0: the implicit rows, longest first. Wave 1 + s (deterministic mode): the
  // rows of selection slot s, at listed_items + s * max_listed_items, n_listed_items[s] of them.
  const DqItem* dq_items = nullptr;
  const int* n_dq_items = nullptr;
  int max_dq_items = 0;
  const DqItem* listed_items = nullptr;
  const int* n_listed_items = nullptr;  // [P]
  int max_listed_items = 0;
  // Deterministic slot path: the selection slot of each list entry (list[i]'s slot).
  const signed char* list_slot = nullptr;
  // Non-null when cu_seqlens came from the GPU: 1 when it failed the device check (the plan is
  // then empty and the gradients are filled with NaN).
  const int* invalid = nullptr;
};

// Launchers, one instantiation per (dtype, head_dim) and .cu file. kBf16 picks the dtype.
template <bool kBf16, int D> void launch_key_pass(const KeyPassArgs& a, int n_items, void* stream);
template <bool kBf16, int D> void launch_dq_pass(const DqPassArgs& a, int n_items, void* stream);

}  // namespace moba::detail::bwd
