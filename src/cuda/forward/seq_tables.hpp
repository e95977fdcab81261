// The per-sequence tables of the gate and the forward, built on the device from a cu_seqlens
// that lives on the GPU: no device-to-host copy and no host synchronisation, so a forward can be
// captured in a CUDA graph and replayed with new lengths in the same buffer.
//
// Layout of `tables` (int32), nb1 = batch + 1:
//   cu [nb1] | tile_off [nb1] | blk_off [nb1] | tile128_off [nb1] | moa_window [hq * batch]
//   | invalid [1]
// the same tables forward.cpp builds on the host from a host cu_seqlens (prefix sums of
// ceil(len / 64), len / block_size, ceil(len / 128); the MoA window per (head, sequence)), plus
// a flag. A cu_seqlens that is not 0 = c[0] <= ... <= c[batch] = total sets `invalid` and is
// planned as empty sequences: the kernels then read and write nothing, and
// poison_if_invalid() fills out and lse with NaN, so a bad cu_seqlens cannot pass unnoticed.
// The totals (tile_off[batch], blk_off[batch], ...) stay on the device; kernels read them there
// and the host launches grids sized by bounds from total and batch.
#pragma once

#include <cstdint>

#include "cuda/common/workspace.hpp"

namespace moba::cuda {

// MoA heads whose alpha/beta travel in the planner's kernel parameters.
constexpr int kPlanMaxMoaHeads = 256;

struct SeqTableArgs {
  const int* cu_in;  // the caller's device cu_seqlens [batch + 1]
  int batch, total;
  int block_size;  // MoBA block size; 0 when there are no blocks
  int hq;          // MoA: heads with a window (0 otherwise)
  int moa_sink;
  float moa_alpha[kPlanMaxMoaHeads];
  float moa_beta[kPlanMaxMoaHeads];
  const float* moa_ab_dev;  // hq > kPlanMaxMoaHeads: alpha [hq] then beta [hq] on the device
};

// Number of ints of the tables (including the flag).
inline std::int64_t seq_tables_size(int batch, int moa_heads) {
  return 4 * (std::int64_t(batch) + 1) + std::int64_t(moa_heads) * batch + 1;
}

// Writes the tables (seq_tables_size ints at `tables`) on `stream`.
void build_seq_tables(const SeqTableArgs& a, int* tables, cudaStream_t stream);

// Fills out [total, hq, D] (2-byte dtype) and lse [hq, total] with NaN when *invalid != 0;
// returns at once otherwise.
void poison_if_invalid(const int* invalid, void* out, std::int64_t o_ts, std::int64_t o_hs,
                       float* lse, int total, int hq, int head_dim, cudaStream_t stream);

}  // namespace moba::cuda
