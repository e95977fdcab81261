// MoBA forward work lists: the rows that chose each key block, grouped by selection slot.
// Bucket b = (slot * hq + head) * num_blocks + global_block. After build_wave_lists:
//   rows[bucket_off[b] .. bucket_off[b+1])  the tokens in bucket b (order within a bucket is
//                                           irrelevant: each row is computed independently)
//   btile_off[b]                            prefix of ceil(count_b / tile_rows): row tiles
//                                           (64 for attn_kernel.cuh, 128 for the sm_90a path)
//   tile_bucket[t]                          the bucket of tile t (btile_off[b] <= t <
//                                           btile_off[b + 1]): a tile's bucket in one load
// With op_flag (onepass_plan.hpp), rows of tiles that run in one pass get no entries.
// Index lists only (int32, the size of the selection itself); no per-top-k output workspace.
#pragma once

#include <cstdint>

#include "cuda/common/workspace.hpp"

namespace moba::cuda {

struct WaveLists {
  int* rows = nullptr;
  int* bucket_off = nullptr;  // [num_buckets + 1]
  int* btile_off = nullptr;   // [num_buckets + 1]
  int* tile_bucket = nullptr;  // [tiles] the bucket of each tile (tiles <= tile_bound)
  std::int64_t num_buckets = 0;
};

WaveLists build_wave_lists(const std::int32_t* sel, int total, int hq, int past_k,
                           const int* cu, int batch, const int* blk_off, int num_blocks,
                           Workspace& ws, int tile_rows = 64,
                           const int* tile128_off = nullptr, const int* op_flag = nullptr);

}  // namespace moba::cuda
