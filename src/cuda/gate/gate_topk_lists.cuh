// The register top-k lists of the fused gate, shared by its two score kernels: mma.sync
// (gate_topk_regs.cuh, 4 rows per thread) and sm_90a warpgroup MMA (gate_topk_sm90.cuh, 2 rows
// per thread). Both kernels' score fragments have the same per-quad layout: the four lanes of a
// quad hold the same rows, and lane c4 of a row holds, per 8 columns, columns 2 c4 and 2 c4 + 1
// (the mma.sync m16n8 C fragment; each warp's 16 rows of a wgmma m64nN accumulator likewise).
// So a thread scores, for each of its rows, the columns jt + (x / 2) 8 + x % 2 (jt = first
// column + 2 c4) of every step, ascending in x, and keeps its own best-K list of them:
//   - row_scan: its own K-th best (a later column not strictly better cannot enter: ties keep the
//     earlier block) and the quad's bound (the best of the four lanes' K-th bests: a score
//     strictly below it has K better ones in the row already) filter the scores; the few
//     candidates are inserted in ascending column order (list_insert);
//   - refresh_bounds: the quad's bound of each row, after every 16 columns of the row;
//   - quad_merge: at the end, K rounds of a 2-step shuffle arg-max in (score desc, block asc)
//     order over the quad's four lists; lane c4 < R keeps row c4's winners in ascending block
//     order, -1 padded.
// Exact: every block of a row's true top-K is in its thread's list (fewer than K blocks of the
// thread's columns precede it in the selection order), ties go to the earlier block, and a
// block is a candidate only when j < own (the row's own block and later ones never are).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace moba::cuda::gate_detail {

// A thread's list of one row: KR slots, best first; K < KR lists start with KR - K slots that
// hold (+inf, kPinned), which nothing displaces, so the K-th best is always the last slot (register
// arrays need compile-time indices: a run-time slot K - 1 would put the lists in local memory).
constexpr int kEmpty = -1, kPinned = -2;

// The selection order: higher score first, equal scores: earlier block first; an empty slot
// after everything. For two different blocks exactly one is better, NaN included (it falls to
// the block order), so all lanes of a shuffle reduction agree on the winner.
__device__ __forceinline__ bool better(float a, int ia, float b, int ib) {
  // bitwise on purpose: predicated selects, no branches in the (divergent) list updates
  return (ib != kPinned) & (ia >= 0) & ((ib < 0) | (a > b) | (!(b > a) & (ia < ib)));
}

// Inserts (v, j) into a list sorted in the selection order and refreshes thr: the K-th best
// score once the list is full, NaN before (everything passes). j is later than every block in
// the list (a thread meets its columns in ascending order), so (v, j) goes before the first
// empty slot or strictly lower score; pinned slots hold +inf and are never passed. The
// insertion point is a running OR, so a NaN in the list cannot split the shift.
template <int KR>
__device__ __forceinline__ void list_insert(float (&ls)[KR], int (&li)[KR], float& thr, float v,
                                            int j) {
  bool here = false, prev_here = false;
  float prev_s = 0.f;
  int prev_i = 0;
#pragma unroll
  for (int k = 0; k < KR; ++k) {
    const float os = ls[k];
    const int oi = li[k];
    here = here | (oi == kEmpty) | (v > os);
    ls[k] = prev_here ? prev_s : (here ? v : os);
    li[k] = prev_here ? prev_i : (here ? j : oi);
    prev_s = os, prev_i = oi, prev_here = here;
  }
  thr = li[KR - 1] >= 0 ? ls[KR - 1] : __int_as_float(0x7fffffff);
}

// Empty lists of R rows keeping K (<= KR) blocks each; no filter yet (NaN thresholds).
template <int KR, int R>
__device__ __forceinline__ void lists_init(float (&ls)[R][KR], int (&li)[R][KR], float (&thr)[R],
                                           float (&bound)[R], int K) {
#pragma unroll
  for (int i = 0; i < R; ++i) {
    thr[i] = bound[i] = __int_as_float(0x7fffffff);  // NaN: no filter yet
#pragma unroll
    for (int k = 0; k < KR; ++k) {
      const bool pinned = k < KR - K;
      ls[i][k] = pinned ? INFINITY : 0.f;
      li[i][k] = pinned ? kPinned : kEmpty;
    }
  }
}

// One row's NX scores val(x) (x a compile-time index after unrolling) of columns
// jt + (x / 2) 8 + x % 2 into its list: the candidates (before own, passing both filters) as a
// bit mask, then inserted in ascending column order. NX <= 32.
template <int KR, int NX, class Val>
__device__ __forceinline__ void row_scan(const Val& val, int jt, int own, float (&ls)[KR],
                                         int (&li)[KR], float& thr, float bound) {
  unsigned cand = 0;
#pragma unroll
  for (int x = 0; x < NX; ++x) {
    const float v = val(x);
    const int j = jt + (x >> 1) * 8 + (x & 1);
    if (j < own && !(v <= thr) && !(v < bound)) cand |= 1u << x;
  }
  while (cand) {
    const int x = __ffs(cand) - 1;
    cand &= cand - 1;
    float v = val(0);
#pragma unroll
    for (int y = 1; y < NX; ++y)
      if (x == y) v = val(y);
    if (!(v <= thr))  // thr rose since the mask was taken
      list_insert<KR>(ls, li, thr, v, jt + (x >> 1) * 8 + (x & 1));
  }
}

// The quad's bound of each row: the best of its four lanes' K-th bests (fmaxf ignores NaN, a
// list not yet full).
template <int R>
__device__ __forceinline__ void refresh_bounds(const float (&thr)[R], float (&bound)[R]) {
  constexpr unsigned kFull = 0xffffffffu;
#pragma unroll
  for (int i = 0; i < R; ++i) {
    const float b = fmaxf(thr[i], __shfl_xor_sync(kFull, thr[i], 1));
    bound[i] = fmaxf(b, __shfl_xor_sync(kFull, b, 2));
  }
}

// Merges the quad's four lists of each of the R rows (R <= 4): lane c4 < R receives row c4's
// K winners in ascending block order in pick[0 .. K), -1 (fewer than K past blocks) after them.
// The lists are consumed. Every lane of the warp must call it.
template <int KR, int R>
__device__ __forceinline__ void quad_merge(float (&ls)[R][KR], int (&li)[R][KR], int K, int c4,
                                           int (&pick)[KR]) {
  constexpr unsigned kFull = 0xffffffffu;
#pragma unroll
  for (int r = 0; r < KR; ++r) pick[r] = -1;
#pragma unroll
  for (int i = 0; i < R; ++i) {
#pragma unroll
    for (int r = 0; r < KR; ++r) {
      if (r >= K) break;
      float bs = 0.f;  // this lane's best: its first slot not pinned or popped
      int bi = kEmpty;
#pragma unroll
      for (int k = KR - 1; k >= 0; --k)
        if (li[i][k] >= 0) bs = ls[i][k], bi = li[i][k];
#pragma unroll
      for (int x = 1; x <= 2; x <<= 1) {
        const float os = __shfl_xor_sync(kFull, bs, x);
        const int oi = __shfl_xor_sync(kFull, bi, x);
        if (better(os, oi, bs, bi)) bs = os, bi = oi;
      }
#pragma unroll
      for (int k = 0; k < KR; ++k)  // the winner's lane pops it
        if (bi >= 0 && li[i][k] == bi) li[i][k] = kPinned;
      if (c4 == i) pick[r] = bi;
    }
  }
  // Ascending block order; -1 (fewer than K past blocks) sorts last as an unsigned value.
#pragma unroll
  for (int a = 0; a < KR; ++a)
#pragma unroll
    for (int b = 0; b + 1 < KR - a; ++b)
      if (unsigned(pick[b]) > unsigned(pick[b + 1])) {
        const int x = pick[b];
        pick[b] = pick[b + 1];
        pick[b + 1] = x;
      }
}

// Writes a row's K selected blocks.
template <int KR>
__device__ __forceinline__ void write_pick(std::int32_t* out, const int (&pick)[KR], int K) {
#pragma unroll
  for (int a = 0; a < KR; ++a)
    if (a < K) out[a] = pick[a];
}

// A row with at most K past blocks (own <= K) keeps them all, in order, -1 padded; the quad's
// lanes share the slots.
__device__ __forceinline__ void write_all_past(std::int32_t* out, int own, int K, int c4) {
  for (int s = c4; s < K; s += 4) out[s] = s < own ? s : -1;
}

}  // namespace moba::cuda::gate_detail
