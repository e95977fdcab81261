// How the forward and backward cut the work: units (one query head, a run of query rows of one
// sequence) handed to threads, and per unit the key ranges each row sees, taken from
// core/visibility.hpp so the fast backend cannot drift from the reference's key sets.
//   full / MoA: a unit is a tile of kRowTile consecutive rows; each row sees one or two ranges
//               (MoA: sink + window), processed over their union with masking at the edges.
//   MoBA:       a unit is a run of whole query blocks (about kMobaRows rows). Its rows are grouped
//               by the past block j they chose (a CSR list per j), so block j's keys are run once
//               against exactly the rows that need them (key-block-major), then every row's own
//               block causally. Unchosen blocks are never touched: the work falls with sparsity.
//               Gathering over several query blocks, not one, matters: with top-k of many
//               blocks only ~B*(k-1)/i rows of query block i choose a given j, too few rows to
//               reuse a key tile from registers; a span of blocks multiplies that.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/problem.hpp"
#include "core/visibility.hpp"

namespace moba::detail::cpu {

constexpr int kRowTile = 96;  // query rows per engine chunk (a multiple of the 6-row kernel)
constexpr int kKeyTile = 64;  // keys per engine step (whole 16-key panels)
constexpr int kMobaRows = 1024;  // MoBA unit: whole query blocks, about this many rows

struct Unit {
  int seq, h, r0, r1;  // query head h, rows r0 .. r1-1 of sequence seq
};

// The units of every query head reading KV head g. Heaviest first (causal rows late in a
// sequence see the most keys), which keeps dynamic scheduling balanced at the end.
inline std::vector<Unit> make_units(const Problem& p, int g) {
  std::vector<Unit> units;
  const int step = p.mode == Mode::moba ? p.block_size * std::max(1, kMobaRows / p.block_size) : kRowTile;
  for (int b = 0; b < p.batch; ++b) {
    const int len = p.cu_seqlens[b + 1] - p.cu_seqlens[b];
    for (int h = g * p.group(); h < (g + 1) * p.group(); ++h)
      for (int r0 = 0; r0 < len; r0 += step) units.push_back({b, h, r0, std::min(r0 + step, len)});
  }
  std::stable_sort(units.begin(), units.end(), [](const Unit& a, const Unit& b) { return a.r0 > b.r0; });
  return units;
}

inline const std::int32_t* selection_of(const Problem& p, const std::int32_t* sel, std::int64_t token, int h) {
  return sel ? sel + (token * p.hq + h) * p.past_k() : nullptr;
}

// Per-row visible ranges of one unit. Every row has range A (full: [0, t]; MoBA: the own block
// [iB, t]; MoA: the sink, possibly empty) and optionally B (MoA: the window). MoBA past blocks
// are kept as lists of rows per block instead.
struct RowPlan {
  int rows = 0;
  std::vector<int> alo, ahi, blo, bhi;
  std::vector<int> all;                      // 0 .. rows-1
  int past_blocks = 0;                       // MoBA: blocks 0 .. past_blocks-1 may be chosen
  std::vector<int> past_start, past_rows;    // CSR: rows that chose block j

  void build(const Problem& p, const Unit& u, const std::int32_t* selection) {
    rows = u.r1 - u.r0;
    const int begin = p.cu_seqlens[u.seq], len = p.cu_seqlens[u.seq + 1] - begin;
    alo.assign(rows, 0), ahi.assign(rows, 0), blo.assign(rows, 0), bhi.assign(rows, 0);
    all.resize(rows);
    const bool moba = p.mode == Mode::moba;
    past_blocks = moba ? (u.r1 - 1) / p.block_size : 0;  // the last row's own block
    past_start.assign(past_blocks + 1, 0);
    pairs_.clear();
    for (int r = 0; r < rows; ++r) {
      all[r] = r;
      const int t = u.r0 + r;
      const int own_begin = moba ? t / p.block_size * p.block_size : 0;
      int ranges = 0;
      for_each_visible_range(p, len, t, u.h, selection_of(p, selection, begin + t, u.h), [&](int lo, int hi) {
        if (moba && hi <= own_begin) {  // a chosen past block
          pairs_.push_back({lo / p.block_size, r});
          ++past_start[lo / p.block_size + 1];
        } else if (ranges++ == 0) {
          alo[r] = lo, ahi[r] = hi;
        } else {
          blo[r] = lo, bhi[r] = hi;
        }
      });
    }
    for (int j = 0; j < past_blocks; ++j) past_start[j + 1] += past_start[j];
    past_rows.resize(pairs_.size());
    fill_.assign(past_start.begin(), past_start.end() - 1);
    for (const auto& pr : pairs_) past_rows[fill_[pr.first]++] = pr.second;
  }

 private:
  std::vector<std::pair<int, int>> pairs_;  // (block, row)
  std::vector<int> fill_;
};

struct Interval {
  int lo, hi;
};

// The rows a job runs, and the key interval(s) each sees. `uniform` (MoBA past block): every
// row sees exactly that interval; otherwise the per-row ranges of the RowPlan.
struct Job {
  const int* rows;
  int count;
  const Interval* uniform;
};

// Calls f(job) for every job of a unit: the MoBA past blocks first, then the per-row ranges.
template <class F>
void for_each_job(const Problem& p, const RowPlan& plan, F&& f) {
  Interval block;
  for (int j = 0; j < plan.past_blocks; ++j) {
    const int n = plan.past_start[j + 1] - plan.past_start[j];
    if (n == 0) continue;  // nobody chose block j: skipped entirely
    block = {j * p.block_size, (j + 1) * p.block_size};
    f(Job{plan.past_rows.data() + plan.past_start[j], n, &block});
  }
  f(Job{plan.all.data(), plan.rows, nullptr});
}

// Calls tile(kt, kmin, kend) over the union of the job chunk's key ranges: tiles start on a
// 16-key panel boundary kt, keys below kmin (already done, or before the range) and from kend
// on are outside this step; no key is visited twice.
template <class F>
void for_each_key_tile(const RowPlan& plan, const Job& job, const int* idx, int count, F&& tile) {
  Interval ranges[2];
  int nr = 0;
  if (job.uniform) {
    ranges[nr++] = *job.uniform;
  } else {
    Interval a{1 << 30, -1}, b{1 << 30, -1};
    for (int r = 0; r < count; ++r) {
      const int i = idx[r];
      if (plan.ahi[i] > plan.alo[i]) a = {std::min(a.lo, plan.alo[i]), std::max(a.hi, plan.ahi[i])};
      if (plan.bhi[i] > plan.blo[i]) b = {std::min(b.lo, plan.blo[i]), std::max(b.hi, plan.bhi[i])};
    }
    if (a.hi > a.lo) ranges[nr++] = a;
    if (b.hi > b.lo) ranges[nr++] = b;
    if (nr == 2 && ranges[1].lo < ranges[0].lo) std::swap(ranges[0], ranges[1]);
  }
  int cursor = 0;
  for (int q = 0; q < nr; ++q) {
    for (int k = std::max(ranges[q].lo, cursor); k < ranges[q].hi;) {
      const int kt = k - k % 16;
      const int kend = std::min(kt + kKeyTile, ranges[q].hi);
      tile(kt, k, kend);
      k = cursor = kend;
    }
  }
}

// Masks row r's scores s[0 .. ncols) of the tile starting at key kt: keys outside
// [kmin, kend) or outside the row's visible ranges become -inf. Skipped (the common case) when
// the whole tile is visible.
inline void mask_row(const RowPlan& plan, const Job& job, int i, int kt, int kmin, int kend,
                     int ncols, float* s) {
  int lo1, hi1, lo2 = 0, hi2 = 0;
  if (job.uniform) {
    lo1 = job.uniform->lo, hi1 = job.uniform->hi;
  } else {
    lo1 = plan.alo[i], hi1 = plan.ahi[i], lo2 = plan.blo[i], hi2 = plan.bhi[i];
  }
  const int tend = kt + ncols;
  if (kmin == kt && kend == tend && ((lo1 <= kt && tend <= hi1) || (lo2 <= kt && tend <= hi2))) return;
  lo1 = std::max(lo1, kmin), hi1 = std::min(hi1, kend);
  lo2 = std::max(lo2, kmin), hi2 = std::min(hi2, kend);
  for (int c = 0; c < ncols; ++c) {
    const int key = kt + c;
    if (!((key >= lo1 && key < hi1) || (key >= lo2 && key < hi2))) s[c] = -INFINITY;
  }
}

}  // namespace moba::detail::cpu
