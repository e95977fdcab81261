// The MoBA selection rule on one row's gate scores, shared by the one-shot gate (gate.cpp) and
// the paged decode gate (paged.cpp): the keep = min(K, own) highest of scores[0 .. own) as
// ascending block indices; equal scores go to the earlier block (docs/semantics.md
// "Selection"). Insertion into a K-long sorted list: K is small (top-k - 1).
#pragma once

#include <algorithm>

namespace moba::detail::cpu {

inline int top_blocks(const float* scores, int own, int K, int* best, float* best_score) {
  if (K >= own) {  // every past block is kept: no comparison needed
    for (int j = 0; j < own; ++j) best[j] = j;
    return own;
  }
  int count = 0;
  for (int j = 0; j < own; ++j) {
    const float s = scores[j];
    // j is later than every kept block, so it must beat the worst strictly to enter.
    if (count == K && !(s > best_score[K - 1])) continue;
    int pos = count < K ? count++ : K - 1;
    for (; pos > 0 && best_score[pos - 1] < s; --pos) {
      best_score[pos] = best_score[pos - 1];
      best[pos] = best[pos - 1];
    }
    best_score[pos] = s;
    best[pos] = j;
  }
  std::sort(best, best + count);
  return count;
}

}  // namespace moba::detail::cpu
