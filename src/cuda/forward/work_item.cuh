// Which rows and which keys one CTA of the forward attention computes: the work-item prologue
// shared by the mma.sync kernel (attn_kernel.cuh, 64-row tiles) and the wgmma kernel
// (hopper_kernel.cuh, 128-row tiles). kRows is the tile height; the tables (tile_off,
// btile_off) must be the ones built for it.
//   dense kinds (full, MoBA own block, MoA): blockIdx.x counts tiles from the longest (the last
//     tile of the tables) down; blockIdx.y is the query head. The grid may be a bound (tables
//     planned on the device): CTAs past tile_off[batch] have no work.
//   gathered MoBA wave: blockIdx.x counts the wave's bucket tiles; the rows are the tokens of one
//     bucket (slot, head, key block) that chose the block, kRows at a time.
#pragma once

#include "cuda/forward/attn_params.hpp"

namespace moba::cuda {

// Largest index i in [lo, hi) with a[i] <= x (a non-decreasing, a[lo] <= x).
__device__ __forceinline__ int last_le(const int* a, int lo, int hi, int x) {
  while (hi - lo > 1) {
    const int mid = (lo + hi) >> 1;
    if (a[mid] <= x) lo = mid;
    else hi = mid;
  }
  return lo;
}

struct WorkItem {
  int h, seq, nrows;
  int t0;                  // dense: position of the first row within the sequence (gather: 0)
  int r0b, r0e, r1b, r1e;  // two key ranges (positions within the sequence), r0 may be empty
  int moa_w;               // MoA: the head's window in this sequence
};

// Fills `w` and, for threads tid < kRows, the rows' tokens (sTok, -1: no row) and positions
// (sPos). Returns false when the CTA has no work (every thread of it returns the same).
template <int kRows>
__device__ __forceinline__ bool resolve_work_item(const AttnParams& p, int tid, int* sTok,
                                                  int* sPos, WorkItem& w) {
  w.t0 = 0;
  w.r0b = w.r0e = w.r1b = w.r1e = 0;
  w.moa_w = 0;
  if (p.kind != kGatherWave) {
    const int tile = p.tile_off[p.batch] - 1 - int(blockIdx.x);  // longest tiles first
    if (tile < 0) return false;
    w.h = blockIdx.y;
    w.seq = last_le(p.tile_off, 0, p.batch, tile);
    const int len = p.cu[w.seq + 1] - p.cu[w.seq];
    w.t0 = (tile - p.tile_off[w.seq]) * kRows;
    w.nrows = min(kRows, len - w.t0);
    const int tend = w.t0 + w.nrows;
    if (p.kind == kDenseFull) {
      w.r1b = 0; w.r1e = tend;
    } else if (p.kind == kDenseMobaOwn) {
      w.r1b = (w.t0 / p.block_size) * p.block_size; w.r1e = tend;  // own block of the first row
    } else {  // MoA
      w.moa_w = p.moa_window[w.h * p.batch + w.seq];
      const int lo = max(0, w.t0 - w.moa_w + 1);
      if (p.moa_sink >= lo) {
        w.r1b = 0; w.r1e = tend;
      } else {
        w.r0b = 0; w.r0e = p.moa_sink;
        w.r1b = lo; w.r1e = tend;
      }
    }
    if (tid < kRows) {
      sTok[tid] = tid < w.nrows ? p.cu[w.seq] + w.t0 + tid : -1;
      sPos[tid] = w.t0 + tid;
    }
  } else {
    const int tiles_begin = p.btile_off[p.bucket_begin];
    const int i = tiles_begin + int(blockIdx.x);
    if (i >= p.btile_off[p.bucket_end]) return false;
    const int b = last_le(p.btile_off, p.bucket_begin, p.bucket_end, i);
    const int local = b - p.bucket_begin;
    w.h = local / p.num_blocks;
    const int gb = local - w.h * p.num_blocks;
    w.seq = last_le(p.blk_off, 0, p.batch, gb);
    const int j_block = gb - p.blk_off[w.seq];
    w.r1b = j_block * p.block_size;
    w.r1e = w.r1b + p.block_size;
    const int start = p.bucket_off[b] + (i - p.btile_off[b]) * kRows;
    w.nrows = min(kRows, p.bucket_off[b + 1] - start);
    if (tid < kRows) {
      const int tok = tid < w.nrows ? p.rows[start + tid] : -1;
      sTok[tid] = tok;
      sPos[tid] = tok >= 0 ? tok - p.cu[w.seq] : 0;
    }
  }
  return true;
}

}  // namespace moba::cuda
