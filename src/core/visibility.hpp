// Which keys a query token sees, as a few disjoint ascending ranges of positions within its
// sequence. This is the one place that turns the three modes into key sets; the reference
// backend iterates it directly, the fast backends tile the same ranges.
#pragma once

#include <algorithm>
#include <cstdint>

#include "core/problem.hpp"

namespace moba::detail {

// Calls f(begin, end) for each half-open range [begin, end) of key positions visible to the
// token at position t (0-based within a sequence of length seqlen), query head h.
// `selection` points at the token's past_k slots (MoBA only).
template <class F>
void for_each_visible_range(const Problem& p, int seqlen, int t, int h,
                            const std::int32_t* selection, F&& f) {
  switch (p.mode) {
    case Mode::full:
      f(0, t + 1);
      return;
    case Mode::moba: {
      const int own = t / p.block_size;
      for (int s = 0; s < p.past_k(); ++s) {  // ascending, -1 marks unused slots
        const int j = selection[s];
        if (j >= 0 && j < own) f(j * p.block_size, (j + 1) * p.block_size);
      }
      f(own * p.block_size, t + 1);
      return;
    }
    case Mode::moa: {
      const int w = p.moa_window(h, seqlen);
      const int win_begin = std::max(0, t - w + 1);
      const int sink_end = std::min(p.moa_sink, win_begin);
      if (sink_end > 0) f(0, sink_end);
      f(std::max(win_begin, sink_end), t + 1);
      return;
    }
  }
}

}  // namespace moba::detail
