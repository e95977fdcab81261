// MoBA in one pass, on the CPU (no GPU needed): a host mirror of the device plan
// (src/cuda/forward/onepass_plan.cu: per 128-row tile and head, the union of its rows' selected
// blocks, the shared rule onepass_accept, row masks, the stable split into one-pass and
// own-pass items) over random selections, half of them coherent (all rows of a block and head
// choose alike, so their tiles run in one pass). Then every work item is walked as
// ws_kernel.cuh does: one-pass items with Visibility<kMobaOnePass> and UnionChunks (the TMA
// thread's chunk positions; per row, union chunks kept or masked whole by the row's mask, the
// own range by the per-element rule unless a whole chunk is visible), own-pass items with
// Visibility<kDenseMobaOwn> over own_items. Each row's keys must equal core/visibility.hpp's for
// its selection; every (token, head) must lie in exactly one item; onepass_row (what the waves
// use to skip rows) must say exactly which rows the one-pass items computed.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <set>
#include <vector>

#include "core/visibility.hpp"
#include "cuda/common/visibility.cuh"
#include "cuda/forward/onepass_plan.hpp"
#include "cuda_test_util.hpp"

namespace moba::testing {
namespace {

using cuda::AttnParams;
using cuda::kOnePassMaxUnion;
using cuda::kOnePassUnionStride;
using cuda::Visibility;
using cuda::WorkTile;

struct HostPlan {
  std::vector<int> counts = std::vector<int>(4, 0), flags, items, own_items, unions;
  std::vector<std::uint16_t> masks;
};

HostPlan host_plan(const AttnParams& a, const std::vector<std::int32_t>& sel, float factor) {
  HostPlan hp;
  const int dense = a.tile_off[a.batch] * a.hq;
  hp.flags.assign(std::max(dense, 1), 0);
  hp.unions.assign(std::size_t(std::max(dense, 1)) * kOnePassUnionStride, 0);
  hp.masks.assign(std::size_t(std::max(dense, 1)) * 128, 0);
  for (int d = 0; d < dense; ++d) {
    WorkTile w;
    cuda::dense_rows<128>(a, d, w);
    const int jown = w.t0 / a.block_size, n = std::min(a.past_k, jown);
    if (n == 0) continue;
    ++hp.counts[2];
    std::set<int> u;
    for (int r = 0; r < w.nrows; ++r)
      for (int s = 0; s < n; ++s) {
        const int x = sel[(std::size_t(a.cu[w.seq] + w.t0 + r) * a.hq + w.h) * a.past_k + s];
        if (x >= 0 && x < jown) u.insert(x);
      }
    const int U = int(u.size());
    if (!cuda::onepass_accept(U, n, factor)) continue;
    hp.flags[d] = 1;
    hp.counts[3] += U;
    const std::vector<int> ids(u.begin(), u.end());
    hp.unions[std::size_t(d) * kOnePassUnionStride] = U;
    for (int i = 0; i < U; ++i) hp.unions[std::size_t(d) * kOnePassUnionStride + 1 + i] = ids[i];
    for (int r = 0; r < w.nrows; ++r) {
      unsigned m = 0;
      for (int s = 0; s < n; ++s) {
        const int x = sel[(std::size_t(a.cu[w.seq] + w.t0 + r) * a.hq + w.h) * a.past_k + s];
        for (int i = 0; i < U; ++i)
          if (ids[i] == x) m |= 1u << i;
      }
      hp.masks[std::size_t(d) * 128 + r] = std::uint16_t(m);
    }
  }
  for (int d = 0; d < dense; ++d) (hp.flags[d] ? hp.items : hp.own_items).push_back(d);
  hp.counts[0] = int(hp.items.size());
  hp.counts[1] = int(hp.own_items.size());
  if (hp.items.empty()) hp.items.push_back(-1);
  if (hp.own_items.empty()) hp.own_items.push_back(-1);
  return hp;
}

// A random selection (distinct past blocks, ascending, -1 padded); for a coherent (sequence,
// block, head) every row of the block takes the same blocks.
std::vector<std::int32_t> random_selection(const Shape& s, const detail::Problem& p,
                                           std::mt19937& rng) {
  const int past = p.past_k(), B = p.block_size;
  const std::vector<int> cu = s.cu_seqlens();
  std::vector<std::int32_t> sel(std::size_t(s.total()) * s.hq * std::max(past, 1), -1);
  auto pick = [&](int own) {
    std::vector<int> blocks(own);
    for (int j = 0; j < own; ++j) blocks[j] = j;
    std::shuffle(blocks.begin(), blocks.end(), rng);
    blocks.resize(std::min(own, past));
    std::sort(blocks.begin(), blocks.end());
    return blocks;
  };
  for (std::size_t b = 0; b + 1 < cu.size(); ++b)
    for (int h = 0; h < s.hq; ++h)
      for (int j0 = 0; j0 * B < cu[b + 1] - cu[b]; ++j0) {
        const bool coherent = rng() % 2 == 0;
        const std::vector<int> shared = pick(j0);
        for (int pos = j0 * B; pos < std::min(cu[b + 1] - cu[b], (j0 + 1) * B); ++pos) {
          const std::vector<int> blocks = coherent ? shared : pick(j0);
          for (std::size_t i = 0; i < blocks.size(); ++i)
            sel[(std::size_t(cu[b] + pos) * s.hq + h) * past + i] = blocks[i];
        }
      }
  return sel;
}

// The keys ws_kernel.cuh lets row r (position t, mask `mask`) of one-pass tile w see.
std::vector<int> one_pass_keys(const AttnParams& a, const WorkTile& w, const int* ublk, int r,
                               int t, unsigned mask) {
  constexpr int KN = 128;
  using Vis = Visibility<cuda::kMobaOnePass>;
  const cuda::UnionChunks<KN> chunks(w, ublk, a.block_size);
  const Vis vis(a, w);
  const int pos_first = w.t0 + (r / 16) * 16, pos_last = pos_first + 15;
  std::vector<int> keys;
  for (int c = 0; c < chunks.count; ++c) {
    const int kb = chunks.begin(c), ke = chunks.end(c);
    if (chunks.in_union(c)) {
      EXPECT_EQ(ke - kb, KN);
      if (Vis::row_chose(mask, chunks.union_index(c)))
        for (int key = kb; key < ke; ++key) keys.push_back(key);
      continue;
    }
    const bool masked = ke - kb < KN || !vis.all_visible<KN>(kb, pos_first, pos_last);
    for (int key = kb; key < kb + KN; ++key)
      if (!masked || (key < ke && vis.visible(key, t))) keys.push_back(key);
  }
  return keys;
}

void check_one_pass_tiling(const Shape& s, std::mt19937& rng, float factor, long long& one_pass,
                           long long& candidates) {
  SCOPED_TRACE(s.str() + " factor " + std::to_string(factor));
  const detail::Problem p = problem_of(s);
  const int T = s.total(), B = p.block_size, batch = int(s.seqlens.size());
  ASSERT_EQ(B % 128, 0);
  std::vector<int> cu = s.cu_seqlens(), t128(batch + 1, 0), boff(batch + 1, 0);
  for (int b = 0; b < batch; ++b) {
    t128[b + 1] = t128[b] + (s.seqlens[b] + 127) / 128;
    boff[b + 1] = boff[b] + s.seqlens[b] / B;
  }
  AttnParams a{};
  a.total = T;
  a.hq = s.hq;
  a.group = s.hq / s.hkv;
  a.block_size = B;
  a.past_k = p.past_k();
  a.batch = batch;
  a.cu = cu.data();
  a.tile_off = t128.data();
  a.blk_off = boff.data();
  a.num_blocks = boff.back();
  if (a.past_k == 0) return;
  const std::vector<std::int32_t> sel = random_selection(s, p, rng);
  const HostPlan hp = host_plan(a, sel, factor);
  a.op_counts = hp.counts.data();
  a.op_items = hp.items.data();
  a.own_items = hp.own_items.data();
  a.op_union = hp.unions.data();
  a.op_mask = hp.masks.data();
  a.op_flag = hp.flags.data();
  one_pass += hp.counts[0];
  candidates += hp.counts[2];

  std::vector<int> seen(std::size_t(T) * s.hq, 0), by_one_pass(std::size_t(T) * s.hq, 0);
  auto want_keys = [&](int seq, int pos, int h) {
    const int len = cu[seq + 1] - cu[seq];
    const std::int32_t* row_sel = sel.data() + (std::size_t(cu[seq] + pos) * s.hq + h) * a.past_k;
    std::vector<int> want;
    detail::for_each_visible_range(p, len, pos, h, row_sel, [&](int kb, int ke) {
      for (int k = kb; k < ke; ++k) want.push_back(k);
    });
    std::sort(want.begin(), want.end());
    return want;
  };
  const int op_items = Visibility<cuda::kMobaOnePass>::items(a);
  for (int i = 0; i < op_items; ++i) {
    WorkTile w;
    Visibility<cuda::kMobaOnePass>::tile<128>(a, i, w);
    const int nu = w.e0 / B;
    ASSERT_EQ(w.b0, 0);
    ASSERT_EQ(w.e0 % B, 0);
    ASSERT_GE(nu, 1);
    ASSERT_LE(nu, kOnePassMaxUnion);
    ASSERT_EQ(w.b1 % B, 0);
    ASSERT_LE(w.b1, w.t0);
    ASSERT_LE(w.t0 + w.nrows - 1, w.b1 + B - 1) << "a one-pass tile lies in one block";
    const int* ublk = hp.unions.data() + std::size_t(w.start) * kOnePassUnionStride + 1;
    for (int u = 1; u < nu; ++u) ASSERT_LT(ublk[u - 1], ublk[u]) << "union sorted, distinct";
    for (int r = 0; r < w.nrows; ++r) {
      const int pos = w.t0 + r, tok = cu[w.seq] + pos;
      ++seen[std::size_t(tok) * s.hq + w.h];
      ++by_one_pass[std::size_t(tok) * s.hq + w.h];
      const unsigned mask = hp.masks[std::size_t(w.start) * 128 + r];
      std::vector<int> got = one_pass_keys(a, w, ublk, r, pos, mask);
      std::sort(got.begin(), got.end());
      ASSERT_EQ(got, want_keys(w.seq, pos, w.h)) << "one-pass item " << i << " position " << pos;
    }
  }
  const int own_items = Visibility<cuda::kDenseMobaOwn>::items(a);
  ASSERT_EQ(op_items + own_items, t128.back() * s.hq);
  for (int i = 0; i < own_items; ++i) {
    WorkTile w;
    Visibility<cuda::kDenseMobaOwn>::tile<128>(a, i, w);
    for (int r = 0; r < w.nrows; ++r) {
      const int tok = cu[w.seq] + w.t0 + r;
      ++seen[std::size_t(tok) * s.hq + w.h];
    }
  }
  for (int b = 0; b < batch; ++b)
    for (int pos = 0; pos < s.seqlens[b]; ++pos)
      for (int h = 0; h < s.hq; ++h) {
        const std::size_t e = std::size_t(cu[b] + pos) * s.hq + h;
        ASSERT_EQ(seen[e], 1) << "token " << cu[b] + pos << " head " << h;
        ASSERT_EQ(cuda::onepass_row(a.op_flag, t128.data(), batch, s.hq, b, pos, h), by_one_pass[e] == 1)
            << "the waves' skip rule disagrees with the one-pass items";
      }
}

// Varlen (empty and length-1 sequences, off-grid lengths), GQA / MQA, blocks 128..384, top-k
// from 1 to beyond the blocks.
Shape random_onepass_shape(std::mt19937& rng) {
  auto pick = [&](std::initializer_list<int> v) { return *(v.begin() + rng() % v.size()); };
  Shape s;
  const int batch = 1 + int(rng() % 4);
  for (int b = 0; b < batch; ++b) s.seqlens.push_back(pick({0, 1, 2, 3, 4, 5}) < 2 ? pick({0, 1}) : 2 + int(rng() % 1400));
  s.hq = pick({1, 2, 4});
  s.hkv = s.hq / pick({1, s.hq});
  s.d = 64;
  s.dtype = DType::bf16;
  s.params = AttentionParams::moba_blocks(pick({128, 256, 384}), pick({1, 2, 3, 4, 9}));
  return s;
}

TEST(OnePassTiling, WorkItemsMatchCoreKeySets) {
  std::mt19937 rng(20261129);
  long long one_pass = 0, candidates = 0;
  for (int i = 0; i < 40; ++i) {
    const Shape s = random_onepass_shape(rng);
    for (float factor : {cuda::onepass_default_factor(s.params.block_size), 1e9f}) {
      check_one_pass_tiling(s, rng, factor, one_pass, candidates);
      if (HasFatalFailure()) return;
    }
  }
  std::printf("one-pass tiles %lld of %lld candidates\n", one_pass, candidates);
  EXPECT_GT(one_pass, 0);
  EXPECT_LT(one_pass, candidates);
}

}  // namespace
}  // namespace moba::testing
