// The visibility functors (src/cuda/common/visibility.cuh) and work items of the forward on the
// CPU, no GPU needed: for random shapes (varlen with empty and length-1 sequences, off-grid
// lengths, MoBA blocks 48..256, MoA windows and sinks), walk every work item exactly as
// ws_kernel.cuh does (128-row tiles, 128-key chunks, whole-chunk `all_visible` per 16-row warp,
// else the per-element rule) and as attn_kernel.cuh does (64-row tiles, 64-key chunks) and compare each row's key set with core/visibility.hpp; every (token,
// head) must be covered by exactly one tile. Gathered waves: every (token, head, slot) with a
// selected block must sit in exactly one tile of its slot's wave, against that whole block.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "core/visibility.hpp"
#include "cuda/common/visibility.cuh"
#include "cuda_test_util.hpp"

namespace moba::testing {
namespace {

using cuda::AttnParams;
using cuda::Visibility;
using cuda::WsTile;

// Host copies of forward.cpp's per-sequence tables (rows-row tiles).
struct Tables {
  std::vector<int> cu, tile_off, blk_off, moa_window;
};

Tables make_tables(const Shape& s, const detail::Problem& p, int rows) {
  Tables t;
  t.cu = s.cu_seqlens();
  const int batch = int(s.seqlens.size());
  t.tile_off.assign(batch + 1, 0);
  t.blk_off.assign(batch + 1, 0);
  for (int b = 0; b < batch; ++b) {
    const int len = s.seqlens[b];
    t.tile_off[b + 1] = t.tile_off[b] + (len + rows - 1) / rows;
    t.blk_off[b + 1] = t.blk_off[b] + (p.mode == Mode::moba ? len / p.block_size : 0);
  }
  if (p.mode == Mode::moa)
    for (int h = 0; h < s.hq; ++h)
      for (int b = 0; b < batch; ++b) t.moa_window.push_back(p.moa_window(h, s.seqlens[b]));
  return t;
}

AttnParams params_of(const Shape& s, const detail::Problem& p, const Tables& t) {
  AttnParams a{};
  a.total = s.total();
  a.hq = s.hq;
  a.group = s.hq / s.hkv;
  a.block_size = p.block_size;
  a.past_k = p.past_k();
  a.batch = int(s.seqlens.size());
  a.cu = t.cu.data();
  a.tile_off = t.tile_off.data();
  a.blk_off = t.blk_off.data();
  a.num_blocks = t.blk_off.back();
  a.moa_window = t.moa_window.empty() ? nullptr : t.moa_window.data();
  a.moa_sink = p.moa_sink;
  return a;
}

// Keys the kernel lets row r (position t) of tile w see, in chunk order (kKeys-key chunks,
// KeyChunks of work_item.cuh).
template <int kKeys, int Kind>
std::vector<int> kernel_keys(const Visibility<Kind>& vis, const WsTile& w, int r, int t) {
  const cuda::KeyChunks<kKeys> chunks(w);
  const int pos_first = w.t0 + (r / 16) * 16, pos_last = pos_first + 15;
  std::vector<int> keys;
  for (int c = 0; c < chunks.count; ++c) {
    const int kb = chunks.begin(c), ke = chunks.end(c);
    const bool masked = ke - kb < kKeys || !vis.template all_visible<kKeys>(kb, pos_first, pos_last);
    for (int key = kb; key < kb + kKeys; ++key)
      if (!masked || (key < ke && vis.visible(key, t))) keys.push_back(key);
  }
  return keys;
}

// kRows-row tiles with kKeys-key chunks: 128 / 128 (ws_kernel.cuh) or 64 / 64 (attn_kernel.cuh).
template <int Kind, int kRows, int kKeys>
void check_dense(const Shape& s) {
  SCOPED_TRACE(s.str() + " rows " + std::to_string(kRows));
  const detail::Problem p = problem_of(s);
  const Tables t = make_tables(s, p, kRows);
  const AttnParams a = params_of(s, p, t);
  const int T = s.total();
  std::vector<int> seen(std::size_t(T) * s.hq, 0);
  const std::vector<std::int32_t> no_sel(std::max(p.past_k(), 1), -1);  // own block only
  const int items = Visibility<Kind>::items(a);
  ASSERT_EQ(items, t.tile_off.back() * s.hq);
  for (int item = 0; item < items; ++item) {
    WsTile w;
    Visibility<Kind>::template tile<kRows>(a, item, w);
    const Visibility<Kind> vis(a, w);
    const int len = t.cu[w.seq + 1] - t.cu[w.seq];
    ASSERT_GE(w.nrows, 1) << "item " << item;
    ASSERT_LE(w.nrows, kRows);
    ASSERT_LE(w.t0 + w.nrows, len);
    for (int r = 0; r < w.nrows; ++r) {
      const int pos = w.t0 + r, tok = t.cu[w.seq] + pos;
      ++seen[std::size_t(tok) * s.hq + w.h];
      std::vector<int> want;
      detail::for_each_visible_range(p, len, pos, w.h, no_sel.data(), [&](int kb, int ke) {
        for (int k = kb; k < ke; ++k) want.push_back(k);
      });
      const std::vector<int> got = kernel_keys<kKeys>(vis, w, r, pos);
      ASSERT_EQ(got, want) << "item " << item << " head " << w.h << " position " << pos;
    }
  }
  for (std::size_t i = 0; i < seen.size(); ++i)
    ASSERT_EQ(seen[i], 1) << "token " << i / s.hq << " head " << i % s.hq;
}

// MoBA gathered waves: a random selection (distinct past blocks, ascending, -1 padded) turned
// into forward.cpp's bucket lists for each slot, then decoded tile by tile (kRows-row tiles).
template <int kRows>
void check_gather(const Shape& s, std::mt19937& rng) {
  SCOPED_TRACE(s.str() + " rows " + std::to_string(kRows));
  const detail::Problem p = problem_of(s);
  const Tables t = make_tables(s, p, kRows);
  AttnParams a = params_of(s, p, t);
  const int T = s.total(), past = p.past_k(), B = p.block_size, nb = a.num_blocks;
  if (past == 0 || nb == 0) return;
  std::vector<std::int32_t> sel(std::size_t(T) * s.hq * past, -1);
  std::vector<int> seq_of(T);
  for (int b = 0; b + 1 < int(t.cu.size()); ++b)
    for (int x = t.cu[b]; x < t.cu[b + 1]; ++x) seq_of[x] = b;
  for (int tok = 0; tok < T; ++tok)
    for (int h = 0; h < s.hq; ++h) {
      const int own = (tok - t.cu[seq_of[tok]]) / B;
      std::vector<int> blocks(own);
      for (int j = 0; j < own; ++j) blocks[j] = j;
      std::shuffle(blocks.begin(), blocks.end(), rng);
      blocks.resize(std::min(own, past));
      std::sort(blocks.begin(), blocks.end());
      for (std::size_t i = 0; i < blocks.size(); ++i) sel[(std::size_t(tok) * s.hq + h) * past + i] = blocks[i];
    }
  // buckets b = (slot * hq + h) * nb + global block; rows in token order; kRows-row tiles
  const long long nbk = (long long)past * s.hq * nb;
  std::vector<std::vector<int>> bucket(nbk);
  for (int tok = 0; tok < T; ++tok)
    for (int h = 0; h < s.hq; ++h)
      for (int sl = 0; sl < past; ++sl) {
        const int j = sel[(std::size_t(tok) * s.hq + h) * past + sl];
        if (j >= 0) bucket[((long long)sl * s.hq + h) * nb + t.blk_off[seq_of[tok]] + j].push_back(tok);
      }
  std::vector<int> rows, boff(1, 0), toff(1, 0);
  for (const auto& bk : bucket) {
    rows.insert(rows.end(), bk.begin(), bk.end());
    boff.push_back(int(rows.size()));
    toff.push_back(toff.back() + (int(bk.size()) + kRows - 1) / kRows);
  }
  a.rows = rows.data();
  a.bucket_off = boff.data();
  a.btile_off = toff.data();
  std::vector<int> tile_bucket;  // as build_wave_lists writes it
  for (long long b = 0; b < nbk; ++b)
    for (int t = toff[b]; t < toff[b + 1]; ++t) tile_bucket.push_back(int(b));
  a.tile_bucket = tile_bucket.data();
  std::vector<int> seen(sel.size(), 0);
  for (int sl = 0; sl < past; ++sl) {
    a.wave = sl;
    a.bucket_begin = int((long long)sl * s.hq * nb);
    a.bucket_end = int((long long)(sl + 1) * s.hq * nb);
    const int items = Visibility<cuda::kGatherWave>::items(a);
    for (int item = 0; item < items; ++item) {
      WsTile w;
      Visibility<cuda::kGatherWave>::template tile<kRows>(a, item, w);
      ASSERT_GE(w.nrows, 1);
      ASSERT_LE(w.nrows, kRows);
      ASSERT_EQ(w.e1 - w.b1, B);
      ASSERT_EQ(w.e0 - w.b0, 0);
      ASSERT_EQ(w.b1 % B, 0);
      const int j = w.b1 / B;
      for (int r = 0; r < w.nrows; ++r) {
        const int tok = rows[w.start + r];
        ASSERT_EQ(seq_of[tok], w.seq);
        const std::size_t e = (std::size_t(tok) * s.hq + w.h) * past + sl;
        ASSERT_EQ(sel[e], j) << "token " << tok << " head " << w.h << " slot " << sl;
        ++seen[e];
      }
    }
  }
  for (std::size_t e = 0; e < sel.size(); ++e) ASSERT_EQ(seen[e], sel[e] >= 0 ? 1 : 0) << "entry " << e;
}

TEST(WsVisibility, DenseKindsMatchCoreKeySets) {
  std::mt19937 rng(20261129);
  RandomShapeOptions opt;
  opt.max_len = 700;
  opt.dtypes = {DType::bf16};
  opt.block_sizes = {48, 64, 100, 128, 192, 256};
  int by_mode[3] = {0, 0, 0};
  for (int i = 0; i < 150; ++i) {
    const Shape s = random_shape(rng, opt);
    ++by_mode[int(s.params.mode)];
    switch (s.params.mode) {
      case Mode::full:
        check_dense<cuda::kDenseFull, 128, 128>(s);
        check_dense<cuda::kDenseFull, 64, 64>(s);
        break;
      case Mode::moba:
        check_dense<cuda::kDenseMobaOwn, 128, 128>(s);
        check_dense<cuda::kDenseMobaOwn, 64, 64>(s);
        break;
      case Mode::moa:
        check_dense<cuda::kDenseMoa, 128, 128>(s);
        check_dense<cuda::kDenseMoa, 64, 64>(s);
        break;
    }
    if (HasFatalFailure()) return;
  }
  EXPECT_GT(by_mode[0] * by_mode[1] * by_mode[2], 0);
}

TEST(WsVisibility, GatheredWavesCoverEverySelectionOnce) {
  std::mt19937 rng(7);
  RandomShapeOptions opt;
  opt.max_len = 900;
  opt.dtypes = {DType::bf16};
  opt.modes = {Mode::moba};
  opt.block_sizes = {48, 64, 100, 128, 192};
  for (int i = 0; i < 60; ++i) {
    const Shape s = random_shape(rng, opt);
    std::mt19937 rng64 = rng;  // the same selection for both tile heights
    check_gather<128>(s, rng);
    check_gather<64>(s, rng64);
    if (HasFatalFailure()) return;
  }
}

}  // namespace
}  // namespace moba::testing
