// The CPU backend against the fp64 truth on hundreds of random shapes (every mode, dtype,
// head_dim, GQA/MQA, varlen with empty and length-1 sequences, odd block sizes, topk beyond the
// blocks), with the rules `moba check` applies (verify/check.hpp, verify/compare.hpp):
// the truth is fp64 on the inputs' values over the CPU's own MoBA selection; out, lse, dq, dk
// and dv must be within 2x the error of the reference run in the same dtype plus a floor of
// the dtype (rel_l2 and rel_max), f16/bf16 dq and dk plus the exact shift of taking
// D = <dout, out> from the rounded out; the selection must equal the reference gate's except at
// near-equal fp64 scores. A planted fault fails these tests: see Fault* at the end.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>

#include "test_support.hpp"

namespace moba::testing {
namespace {

// Threads per random shape: mostly 1 so the suite's time does not depend on how loaded the
// machine is (OpenMP barriers wait for descheduled threads); every 4th shape uses 3 threads so
// the threaded paths (dynamic units, per-thread dK/dV accumulators) see the same random cases.
int threads_for(int iter) { return iter % 4 == 3 ? 3 : 1; }

double ratio(const Verdict& v) {
  return std::max(v.error.rel_l2 / v.tol.rel_l2, v.error.rel_max / v.tol.rel_max);
}

TEST(CpuAttention, ForwardMatchesFp64Truth) {
  std::mt19937 rng(1234);
  int shapes = 0;
  std::int64_t moba_rows = 0, near_ties = 0;
  double worst = 0;  // max over shapes of err / tolerance
  for (int iter = 0; iter < 250; ++iter) {
    const Shape s = random_shape(rng);
    Inputs in = make_inputs(s, 1000 + iter);
    const ForwardResult fast = run_forward(s, in, Backend::cpu, threads_for(iter));
    const ForwardCheck c = check_forward(s, in, fast);
    MOBA_EXPECT_CHECK_OK(c, s);
    moba_rows += c.selection.rows;
    near_ties += c.selection.near_ties;
    worst = std::max({worst, ratio(c.out), ratio(c.lse)});
    ++shapes;
  }
  std::printf("[ forward  ] %d shapes, worst err/tolerance %.3f, MoBA rows %lld, near-tie selection differences %lld\n",
              shapes, worst, static_cast<long long>(moba_rows), static_cast<long long>(near_ties));
}

// Gradients on the CPU forward's selection (the key sets are fixed, as in training).
TEST(CpuAttention, BackwardMatchesFp64Truth) {
  std::mt19937 rng(4321);
  RandomShapeOptions opt;
  opt.max_len = 160;  // the fp64 references of the backward dominate the suite's time
  double worst = 0;
  int shapes = 0;
  for (int iter = 0; iter < 120; ++iter) {
    const Shape s = random_shape(rng, opt);
    Inputs in = make_inputs(s, 5000 + iter);
    ForwardResult fwd = run_forward(s, in, Backend::cpu, threads_for(iter));
    const BackwardResult fast = run_backward(s, in, fwd, Backend::cpu, threads_for(iter + 1));
    const Truth truth = truth_forward(s, in, fwd.selection);
    const BackwardCheck c = check_backward(s, in, fwd, truth, fast);
    MOBA_EXPECT_CHECK_OK(c, s);
    worst = std::max({worst, ratio(c.dq), ratio(c.dk), ratio(c.dv)});
    ++shapes;
  }
  std::printf("[ backward ] %d shapes, worst err/tolerance %.3f\n", shapes, worst);
}

// The thread count changes nothing in the forward (each output row belongs to one unit); with
// RunOptions::deterministic the backward repeats bit for bit (dq, dk and dv; dk/dv are summed
// from per-thread accumulators, whose unit assignment is static only in that mode), and dq,
// whose rows belong to one unit, does not depend on the thread count in either mode.
TEST(CpuAttention, ThreadCountAndDeterminism) {
  std::mt19937 rng(99);
  for (int iter = 0; iter < 6; ++iter) {
    RandomShapeOptions opt;
    opt.max_len = 400;
    const Shape s = random_shape(rng, opt);
    Inputs in = make_inputs(s, 77 + iter);
    ForwardResult one = run_forward(s, in, Backend::cpu, 1);
    ForwardResult many = run_forward(s, in, Backend::cpu, 4);
    EXPECT_EQ(one.out.bytes, many.out.bytes) << s.str();
    EXPECT_EQ(one.selection, many.selection) << s.str();
    EXPECT_EQ(0, std::memcmp(one.lse.data(), many.lse.data(), one.lse.size() * sizeof(float))) << s.str();
    RunOptions det = on(Backend::cpu, 3);
    det.deterministic = true;
    const BackwardResult a = run_backward(s, in, one, det);
    const BackwardResult b = run_backward(s, in, one, det);
    EXPECT_EQ(a.dq.bytes, b.dq.bytes) << s.str();
    EXPECT_EQ(a.dk.bytes, b.dk.bytes) << s.str();
    EXPECT_EQ(a.dv.bytes, b.dv.bytes) << s.str();
    const BackwardResult c = run_backward(s, in, one, Backend::cpu, 1);
    EXPECT_EQ(a.dq.bytes, c.dq.bytes) << s.str();
    const BackwardResult d = run_backward(s, in, one, Backend::cpu, 3);
    EXPECT_EQ(a.dq.bytes, d.dq.bytes) << s.str();
  }
}

// The checks above can fail: an out row 1% off, a NaN lse, a selection that swaps a block for
// the worst one, a dk 3% off are each rejected by the same rules.
TEST(CpuAttention, FaultsAreCaught) {
  Shape s;
  s.seqlens = {200, 77};
  s.hq = 4, s.hkv = 2, s.d = 64, s.dtype = DType::bf16;
  s.params = AttentionParams::moba_blocks(32, 3);
  Inputs in = make_inputs(s, 3);
  ForwardResult fwd = run_forward(s, in, Backend::cpu);
  ASSERT_TRUE(check_forward(s, in, fwd).ok());

  ForwardResult row_off = fwd;
  for (int d = 0; d < s.d; ++d) row_off.out.set(d, row_off.out.get(d) * 1.01 + 0.02);
  EXPECT_FALSE(check_forward(s, in, row_off).out.ok());

  ForwardResult nan_lse = fwd;
  nan_lse.lse[5] = NAN;
  EXPECT_FALSE(check_forward(s, in, nan_lse).lse.ok());

  // Token 199 of sequence 0 (own block 6) keeps 2 of 6 past blocks; replace the better kept
  // block with the worst one.
  ForwardResult bad_sel = fwd;
  const BlockScores sc = block_scores(s, in, 0, 199, 0);
  const int worst = int(std::min_element(sc.score.begin(), sc.score.end()) - sc.score.begin());
  std::int32_t* row = bad_sel.selection.data() + std::size_t(199) * s.hq * 2;
  ASSERT_NE(row[0], worst);
  ASSERT_NE(row[1], worst);
  row[1] = worst;
  std::sort(row, row + 2);
  EXPECT_FALSE(check_forward(s, in, bad_sel).selection.ok());

  const Truth truth = truth_forward(s, in, fwd.selection);
  BackwardResult bwd = run_backward(s, in, fwd, Backend::cpu);
  ASSERT_TRUE(check_backward(s, in, fwd, truth, bwd).ok());
  BackwardResult dk_off = bwd;  // 3% too large everywhere (bf16 rounding is 0.4%)
  for (std::int64_t i = 0; i < dk_off.dk.numel(); ++i) dk_off.dk.set(i, dk_off.dk.get(i) * 1.03);
  EXPECT_FALSE(check_backward(s, in, fwd, truth, dk_off).dk.ok());
}

}  // namespace
}  // namespace moba::testing
