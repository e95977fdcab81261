// The key sets of docs/semantics.md as device predicates, one definition for every CUDA kernel
// that masks scores: the forward kernels (key and row as positions within a sequence) and the
// backward passes (absolute tokens; the sink's end and a block's start are then shifted by the
// sequence's first token, which keeps every comparison the same). core/visibility.hpp states
// the same sets as ranges for the reference and the CPU backend. Bitwise &, | (no short
// circuit): the masks stay branch-free predicates in the unrolled score loops.
#pragma once

namespace moba::cuda::visibility {

// Full causal: a row sees the keys up to itself.
__device__ __forceinline__ bool causal(int key, int row) { return key <= row; }

// MoBA own block: the keys from the start of the row's block (block_lo) up to the row.
__device__ __forceinline__ bool own_block(int key, int row, int block_lo) {
  return (key <= row) & (key >= block_lo);
}

// MoA: the keys up to the row that are in the sink (below sink_end) or in the row's window of
// w >= 1 keys ending at the row.
__device__ __forceinline__ bool moa(int key, int row, int sink_end, int w) {
  return (key <= row) & ((key < sink_end) | (key > row - w));
}

}  // namespace moba::cuda::visibility
