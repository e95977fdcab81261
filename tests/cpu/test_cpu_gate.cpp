// The CPU MoBA gate against a brute-force selection, and the tie rule on constructed ties.
#include <gtest/gtest.h>

#include "test_support.hpp"

namespace moba::testing {
namespace {

std::vector<std::int32_t> cpu_selection(const Shape& s, Inputs& in, int threads = 0) {
  return run_gate(s, in, on(Backend::cpu, threads));
}

// Brute force on the fp64 scores: block j is kept iff fewer than K blocks beat it, where x beats
// j when its score is higher, or equal and x is earlier. Returns ascending, -1 padded.
std::vector<std::int32_t> brute_force(const std::vector<double>& score, int K) {
  std::vector<std::int32_t> out;
  const int own = static_cast<int>(score.size());
  for (int j = 0; j < own; ++j) {
    int beaten_by = 0;
    for (int x = 0; x < own; ++x)
      if (score[x] > score[j] || (score[x] == score[j] && x < j)) ++beaten_by;
    if (beaten_by < K) out.push_back(j);
  }
  out.resize(K, -1);
  return out;
}

// The brute-force selection of every (token, head) of a shape.
std::vector<std::int32_t> brute_force_selection(const Shape& s, const Inputs& in) {
  const int K = s.params.topk - 1;
  std::vector<std::int32_t> sel(std::size_t(s.total()) * s.hq * K);
  for (std::size_t b = 0; b + 1 < in.cu.size(); ++b)
    for (int t = 0; t < in.cu[b + 1] - in.cu[b]; ++t)
      for (int h = 0; h < s.hq; ++h) {
        const std::vector<std::int32_t> want = brute_force(block_scores(s, in, int(b), t, h).score, K);
        std::copy(want.begin(), want.end(), sel.begin() + (std::size_t(in.cu[b] + t) * s.hq + h) * K);
      }
  return sel;
}

// Compares every (token, head) of a shape; mismatches must be near-ties of the fp64 scores.
void compare_to_brute_force(const Shape& s, Inputs& in, const std::vector<std::int32_t>& sel,
                            std::int64_t& rows, std::int64_t& near_ties, bool allow_near_ties) {
  const SelectionReport r = compare_selection(s, in, sel, brute_force_selection(s, in), allow_near_ties);
  EXPECT_TRUE(r.ok()) << s.str() << ": " << r.first_error;
  rows += r.rows;
  near_ties += r.near_ties;
}

TEST(CpuGate, MatchesBruteForceOnRandomShapes) {
  std::mt19937 rng(7);
  RandomShapeOptions opt;
  opt.modes = {Mode::moba};
  opt.block_sizes = {1, 3, 16, 32, 50, 64};
  opt.max_len = 200;
  std::int64_t rows = 0, near_ties = 0;
  for (int iter = 0; iter < 120; ++iter) {
    Shape s = random_shape(rng, opt);
    if (iter % 3 == 0) s.params.topk = 2 + iter % 5;  // few blocks kept of many: real choices
    Inputs in = make_inputs(s, 300 + iter);
    if (s.params.topk < 2) continue;
    compare_to_brute_force(s, in, cpu_selection(s, in, iter % 2 ? 1 : 3), rows, near_ties, true);
  }
  std::printf("[ gate     ] %lld rows, %lld near-tie differences from the fp64 brute force\n",
              static_cast<long long>(rows), static_cast<long long>(near_ties));
}

// Exact ties: every key block is a copy of one of a few blocks, so many blocks have identical
// means and therefore bit-identical scores in any arithmetic. The earlier block must win.
TEST(CpuGate, TiesGoToTheEarlierBlock) {
  for (DType dt : {DType::f32, DType::bf16, DType::f16})
    for (int D : {64, 128})
      for (int B : {16, 7}) {
        Shape s;
        s.seqlens = {12 * B + 5, 3 * B, 9 * B - 1};
        s.hq = 4, s.hkv = 2, s.d = D, s.dtype = dt;
        s.params = AttentionParams::moba_blocks(B, 4);
        Inputs in = make_inputs(s, 11);
        for (std::size_t b = 0; b + 1 < in.cu.size(); ++b)  // block j := block (j % 3) (j >= 3)
          for (int t = 3 * B; t < in.cu[b + 1] - in.cu[b]; ++t)
            for (int g = 0; g < s.hkv; ++g)
              for (int d = 0; d < D; ++d) {
                const int src = ((t / B) % 3) * B + t % B;
                in.k.set((std::int64_t(in.cu[b] + t) * s.hkv + g) * D + d,
                         in.k.get((std::int64_t(in.cu[b] + src) * s.hkv + g) * D + d));
              }
        std::int64_t rows = 0, near_ties = 0;
        compare_to_brute_force(s, in, cpu_selection(s, in), rows, near_ties, false);
        const std::vector<std::int32_t> sel = cpu_selection(s, in);
        // Block 12 of sequence 0 has 12 past blocks in 3 classes of 4 equal scores: the 3 kept
        // are the first three of the best class, c, c + 3, c + 6.
        const int t = 12 * B + 2;
        for (int h = 0; h < s.hq; ++h) {
          const std::int32_t* got = sel.data() + (t * s.hq + h) * 3;
          EXPECT_EQ(got[1], got[0] + 3);
          EXPECT_EQ(got[2], got[0] + 6);
          EXPECT_LT(got[0], 3);
        }
      }
}

// topk beyond the number of past blocks keeps them all; topk = 1 writes nothing (no slots).
TEST(CpuGate, TopkBeyondBlocks) {
  Shape s;
  s.seqlens = {100, 0, 1, 37};
  s.hq = 2, s.hkv = 1, s.d = 64, s.dtype = DType::bf16;
  s.params = AttentionParams::moba_blocks(16, 9);
  Inputs in = make_inputs(s, 5);
  const std::vector<std::int32_t> sel = cpu_selection(s, in);
  for (int t = 0; t < 100; ++t)
    for (int h = 0; h < 2; ++h)
      for (int i = 0; i < 8; ++i)
        EXPECT_EQ(sel[(t * 2 + h) * 8 + i], i < t / 16 ? i : -1) << t;
}

}  // namespace
}  // namespace moba::testing
