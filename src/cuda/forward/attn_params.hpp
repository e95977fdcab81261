// The plain-data description of one forward launch, shared by the host planner
// (forward.cpp) and the attention kernels (attn_kernel.cuh, ws_kernel.cuh).
#pragma once

#include <cstdint>

namespace moba::cuda {

// What a launch computes.
//   kDenseFull   full causal: rows = 64-token tiles (128 on the sm_90a kernel), keys 0..t
//   kDenseMobaOwn MoBA own block, causal; writes the final result for rows with no past
//                 selection and the running state (scratch) for the others
//   kDenseMoa    MoA: sink + sliding window
//   kGatherWave  MoBA wave s: the rows whose s-th selected block is j, gathered into 64-row
//                (128-row) tiles against the whole block j; merges into the running state
//   kMobaOnePass MoBA in one pass (sm_90a kernel only): a 128-row tile of one query block over
//                the union of its rows' selected blocks (each row masked to the blocks it
//                chose) and then its own block causally, in one online softmax; writes the
//                final out and lse (onepass_plan.hpp plans which tiles run so)
enum AttnKind : int {
  kDenseFull = 0,
  kDenseMobaOwn = 1,
  kDenseMoa = 2,
  kGatherWave = 3,
  kMobaOnePass = 4
};

// One-pass tiles: at most this many union blocks (a 16-bit row mask; bounded shared memory).
constexpr int kOnePassMaxUnion = 16;
// op_union holds, per dense item, the union size then its block ids.
constexpr int kOnePassUnionStride = kOnePassMaxUnion + 1;

struct AttnParams {
  const void* q;
  const void* k;
  const void* v;
  void* out;
  std::int64_t q_ts, q_hs, k_ts, k_hs, v_ts, v_hs, o_ts, o_hs;  // element strides
  float* lse;   // [hq, total]
  float* acc;   // MoBA scratch [total, hq, D] fp32, unnormalised output
  float* mrow;  // MoBA scratch [hq, total]: running max (log2 domain, scaled)
  float* lrow;  // MoBA scratch [hq, total]: running sum
  int total, hq, group;
  float scale_log2;  // softmax_scale * log2(e)
  int kind;
  int block_size, past_k;
  // sequences
  int batch;
  const int* cu;        // [batch + 1]
  const int* tile_off;  // [batch + 1] prefix of ceil(len / 64); tile_off[batch] = tiles
  const int* blk_off;   // [batch + 1] prefix of full blocks len / block_size
  int num_blocks;       // blk_off[batch], or a bound of it (device planning): the buckets of
                        // a wave are numbered with this value (empty ones get no tiles)
  // MoA
  const int* moa_window;  // [hq * batch]
  int moa_sink;
  // gather wave
  int wave;
  const int* rows;        // token indices, grouped by bucket
  const int* bucket_off;  // [num_buckets + 1]
  const int* btile_off;   // [num_buckets + 1] prefix of ceil(count / 64)
  const int* tile_bucket;  // [btile_off[num_buckets]] bucket of each tile (128-row tiles; the
                           // warp-specialised kernel resolves a tile with it in one load)
  int bucket_begin, bucket_end;  // this wave's buckets: (wave * hq + h) * num_blocks + gb
  // MoBA one-pass tiles (onepass_plan.hpp; all null when the forward runs no one-pass tile).
  // Indices d are dense items (work_item.cuh: tile rank from the last tile, heads fastest).
  const int* op_counts;    // [0] one-pass items, [1] own-block-pass items (the rest)
  const int* op_items;     // [op_counts[0]] dense item of one-pass item i (longest first)
  const int* own_items;    // [op_counts[1]] dense item of own-block-pass item i; null: every
                           // dense item runs the own-block pass (sm_80 kernel, no one-pass)
  const int* op_union;     // [dense items][kOnePassUnionStride]: size U, then U sorted block ids
  const std::uint16_t* op_mask;  // [dense items][128]: bit u = the row chose union block u
  const int* op_flag;      // [dense items] 1: the tile runs one-pass (the waves skip its rows)
};

// sm_80+ mma.sync path (attn_kernel.cuh): 64-row tables. One instantiation per (dtype,
// head_dim, kind), defined in attn_<dtype>_d<D>_<kinds>.cu.
template <class T, int D, int Kind>
void launch_attention_kind(const AttnParams& p, int grid_x, int grid_y, void* stream);

// sm_90a warp-specialised path (ws_kernel.cuh): producer warpgroup with TMA + mbarriers, two
// consumer warpgroups; 128-row tables (tile_off / btile_off built for 128-row tiles). One
// instantiation per (dtype, head_dim, kind), defined in ws_attn_<dtype>_d<D>_<kinds>.cu; the
// maps describe K and V (tensor_map.hpp).
struct KvTensorMaps;
template <class T, int D, int Kind>
void launch_attention_ws_kind(const AttnParams& p, const KvTensorMaps& maps, int grid_x,
                              int grid_y, bool persistent, void* stream);
// Whether the current device is compute capability 9.0, this binary holds sm_90a code and the
// driver encodes tensor maps.
template <class T, int D>
bool ws_attention_available();

}  // namespace moba::cuda
