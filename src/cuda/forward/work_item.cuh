// Which rows one CTA (or one persistent CTA's turn) of the forward attention computes: the
// work-item decoding shared by the mma.sync kernel (attn_kernel.cuh, 64-row tiles) and the
// warp-specialised kernel (ws_kernel.cuh, 128-row tiles). kRows is the tile height; the tables
// (tile_off, btile_off) must be the ones built for it.
//   dense kinds (full, MoBA own block, MoA): item i = (tile rank, head), heads fastest, the
//     tiles longest first (ranks count down from the last tile of the tables). The tile count
//     is read from tile_off[batch]: the tables may have been planned on the device (the grid
//     is then a bound, and items past the count have no work).
//   gathered MoBA wave: item i = the wave's i-th bucket tile; the rows are the tokens of one
//     bucket (slot, head, key block) that chose the block, kRows at a time.
//   MoBA one pass: item i = the i-th dense item the one-pass plan marked (op_items), keys =
//     its union blocks (UnionChunks) then its own block; the own-block pass then takes the
//     other dense items (own_items).
// Which keys the rows see (the tile's key ranges) is the visibility policy's part
// (common/visibility.cuh). Plain C++ as well (host and device), so CPU tests walk the same
// decoding (tests/cuda/test_ws_visibility.cpp).
#pragma once

#include "cuda/forward/attn_params.hpp"

#if defined(__CUDACC__)
#define MOBA_HD __host__ __device__ __forceinline__
#else
#define MOBA_HD inline
#endif

namespace moba::cuda {

MOBA_HD int ws_min(int a, int b) { return a < b ? a : b; }
MOBA_HD int ws_max(int a, int b) { return a > b ? a : b; }

// The rows and key ranges of one work item.
struct WorkTile {
  int h = 0, seq = 0;
  int t0 = 0;       // dense: position of row 0; gather: unused
  int nrows = 0;    // valid rows (<= kRows)
  int start = 0;    // gather: index of row 0 in p.rows
  int b0 = 0, e0 = 0, b1 = 0, e1 = 0;  // key ranges [b0, e0) then [b1, e1) (positions)
  int moa_w = 0;    // MoA: the head's window in this sequence
  // (MoBA one pass: [b0, e0) = [0, U x block) are the U union blocks laid end to end, see
  // UnionChunks; a field more here would cost the D = 64 kernels register spills)
};
using WsTile = WorkTile;  // the name the warp-specialised kernel's tests know it by

// Largest index i in [lo, hi) with a[i] <= x (a non-decreasing, a[lo] <= x).
MOBA_HD int ws_last_le(const int* a, int lo, int hi, int x) {
  while (hi - lo > 1) {
    const int mid = (lo + hi) >> 1;
    if (a[mid] <= x) lo = mid;
    else hi = mid;
  }
  return lo;
}

MOBA_HD int dense_items(const AttnParams& p) { return p.tile_off[p.batch] * p.hq; }

// The dense item of the kRows-row tile holding position pos of sequence seq, head h (the
// inverse of dense_rows' tile and head; tile_off for kRows-row tiles).
template <int kRows>
MOBA_HD int dense_item_of(const AttnParams& p, int seq, int pos, int h) {
  const int tile = p.tile_off[seq] + pos / kRows;
  return (p.tile_off[p.batch] - 1 - tile) * p.hq + h;
}

template <int kRows>
MOBA_HD void dense_rows(const AttnParams& p, int i, WorkTile& w) {
  const int tile = p.tile_off[p.batch] - 1 - i / p.hq;
  w.h = i - (i / p.hq) * p.hq;
  w.seq = ws_last_le(p.tile_off, 0, p.batch, tile);
  const int len = p.cu[w.seq + 1] - p.cu[w.seq];
  w.t0 = (tile - p.tile_off[w.seq]) * kRows;
  w.nrows = ws_min(kRows, len - w.t0);
}

MOBA_HD int gather_items(const AttnParams& p) {
  return p.btile_off[p.bucket_end] - p.btile_off[p.bucket_begin];
}

// The rows of a gathered bucket tile, and its key range: the whole selected block j.
template <int kRows>
MOBA_HD void gather_rows(const AttnParams& p, int item, WorkTile& w) {
  const int i = p.btile_off[p.bucket_begin] + item;
  const int b = p.tile_bucket[i];  // one load, not a binary search over the buckets
  const int local = b - p.bucket_begin;
  w.h = local / p.num_blocks;
  const int gb = local - w.h * p.num_blocks;
  w.seq = ws_last_le(p.blk_off, 0, p.batch, gb);
  const int j_block = gb - p.blk_off[w.seq];
  w.b1 = j_block * p.block_size;
  w.e1 = w.b1 + p.block_size;
  w.start = p.bucket_off[b] + (i - p.btile_off[b]) * kRows;
  w.nrows = ws_min(kRows, p.bucket_off[b + 1] - w.start);
}

// Token of row r of a tile (-1 past its rows): gathered tiles list their rows, dense tiles are
// consecutive positions from t0.
template <bool kGather>
MOBA_HD int row_token(const AttnParams& p, const WorkTile& w, int seq_begin, int r) {
  if (r >= w.nrows) return -1;
  if constexpr (kGather) return p.rows[w.start + r];
  else return seq_begin + w.t0 + r;
}

// Position of row r within its sequence (rows past the tile: any value, their keys are
// computed and discarded).
template <bool kGather>
MOBA_HD int row_position(const WorkTile& w, int tok, int seq_begin, int r) {
  if constexpr (kGather) return tok >= 0 ? tok - seq_begin : 0;
  else return w.t0 + r;
}

// Chunks of `kKeys` keys over the tile's two key ranges.
template <int kKeys>
struct KeyChunks {
  int b0, e0, b1, e1, n0, count;
  MOBA_HD explicit KeyChunks(const WorkTile& w)
      : b0(w.b0), e0(w.e0), b1(w.b1), e1(w.e1), n0((w.e0 - w.b0 + kKeys - 1) / kKeys),
        count(n0 + (w.e1 - w.b1 + kKeys - 1) / kKeys) {}
  MOBA_HD int begin(int c) const { return c < n0 ? b0 + c * kKeys : b1 + (c - n0) * kKeys; }
  MOBA_HD int end(int c) const {
    return c < n0 ? ws_min(b0 + (c + 1) * kKeys, e0) : ws_min(b1 + (c - n0 + 1) * kKeys, e1);
  }
};

// A one-pass tile's chunks: its U union blocks (block ids in ublk, whole blocks of `block`
// keys, block a multiple of kKeys; w.e0 - w.b0 = U x block, the union blocks laid end to end)
// then the own range [b1, e1). ublk is read only by begin()
// and end() of union chunks (the TMA thread; the consumers mask union chunks by the row's
// choice and pass nullptr).
template <int kKeys>
struct UnionChunks {
  const int* ublk;
  int block, per_block, nuc, b1, e1, count;
  MOBA_HD UnionChunks(const WorkTile& w, const int* ublk_, int block_)
      : ublk(ublk_), block(block_), per_block(block_ / kKeys), nuc((w.e0 - w.b0) / kKeys),
        b1(w.b1), e1(w.e1), count(nuc + (w.e1 - w.b1 + kKeys - 1) / kKeys) {}
  MOBA_HD bool in_union(int c) const { return c < nuc; }
  MOBA_HD int union_index(int c) const { return c / per_block; }
  MOBA_HD int begin(int c) const {
    return c < nuc ? ublk[c / per_block] * block + (c % per_block) * kKeys
                   : b1 + (c - nuc) * kKeys;
  }
  MOBA_HD int end(int c) const {
    return c < nuc ? begin(c) + kKeys : ws_min(b1 + (c - nuc + 1) * kKeys, e1);
  }
};

// The chunk walk of a kind: UnionChunks for one-pass tiles, KeyChunks otherwise.
template <bool kUnion, int kKeys>
struct ChunksOf {
  using type = KeyChunks<kKeys>;
  MOBA_HD static type make(const WorkTile& w, const int*, int) { return type(w); }
};
template <int kKeys>
struct ChunksOf<true, kKeys> {
  using type = UnionChunks<kKeys>;
  MOBA_HD static type make(const WorkTile& w, const int* ublk, int block) {
    return type(w, ublk, block);
  }
};

}  // namespace moba::cuda
