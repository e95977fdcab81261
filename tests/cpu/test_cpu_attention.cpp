// The CPU backend against fp64 truth on hundreds of random shapes (every mode, dtype, head_dim,
// GQA/MQA, varlen with empty and length-1 sequences, odd block sizes, topk beyond the blocks).
//
// Tolerances are tied to the dtype's own error. Truth is computed in fp64 from the very same
// input values (bf16/f16 inputs are exact in f32/f64), so the only error a correct backend may
// add beyond fp32 arithmetic is the single rounding of its output to the dtype - exactly the
// error of the reference backend run in that dtype, which equals rel_l2(round(truth), truth).
// We allow twice that (the fast backend rounds once too, after fp32 rather than fp64
// accumulation; for the backward also D_t = <dout, out> uses the rounded `out`, as flash
// attention does), plus a floor for fp32 arithmetic that matters where rounding is tiny (f32):
// fp32 accumulation over <= a few hundred keys and D <= 128 products gives ~1e-6 relative.
#include <gtest/gtest.h>

#include <cstdio>

#include "cpu_check.hpp"

namespace moba::testing {
namespace {

constexpr double kFloorForward = 1e-5;
constexpr double kFloorBackward = 3e-5;

struct Stats {
  int shapes = 0, moba_rows = 0, near_ties = 0;
  double worst_ratio = 0;  // max over shapes of err_fast / allowed
};

// Selection of the fast backend vs the reference gate: identical except near-ties.
void check_selection(const Shape& s, Inputs& in, const std::vector<std::int32_t>& fast, Stats& st) {
  ForwardResult ref = run_forward(s, in, Backend::reference);
  const int K = std::max(s.params.topk - 1, 0);
  for (std::size_t b = 0; b + 1 < in.cu.size(); ++b)
    for (int t = 0; t < in.cu[b + 1] - in.cu[b]; ++t)
      for (int h = 0; h < s.hq; ++h) {
        const std::size_t at = (std::size_t(in.cu[b] + t) * s.hq + h) * K;
        ++st.moba_rows;
        if (std::equal(fast.begin() + at, fast.begin() + at + K, ref.selection.begin() + at)) continue;
        ++st.near_ties;
        EXPECT_TRUE(selection_within_near_tie(block_scores(s, in, int(b), t, h), fast.data() + at, K))
            << s.str() << " token " << t << " head " << h;
      }
}

TEST(CpuAttention, ForwardMatchesFp64Truth) {
  std::mt19937 rng(1234);
  Stats st;
  for (int iter = 0; iter < 300; ++iter) {
    const Shape s = random_shape(rng);
    Inputs in = make_inputs(s, 1000 + iter);
    const ForwardResult fast = run_forward(s, in, Backend::cpu);
    if (s.params.mode == Mode::moba) check_selection(s, in, fast.selection, st);
    std::vector<double> out, lse;
    exact_forward(s, in, fast.selection, out, lse);  // truth on the fast backend's key sets
    const double err = rel_l2(fast.out.as_double(), out);
    const double allowed = 2 * rel_l2(rounded(out, s.dtype), out) + kFloorForward;
    EXPECT_LE(err, allowed) << s.str();
    st.worst_ratio = std::max(st.worst_ratio, err / allowed);
    std::vector<double> lse_fast(fast.lse.begin(), fast.lse.end());
    EXPECT_LE(max_abs_diff(lse_fast, lse), 2e-5 * (1 + *std::max_element(lse.begin(), lse.end()))) << s.str();
    ++st.shapes;
  }
  std::printf("[ forward  ] %d shapes, worst err/allowed %.3f, MoBA rows %d, near-tie selection differences %d\n",
              st.shapes, st.worst_ratio, st.moba_rows, st.near_ties);
}

}  // namespace
}  // namespace moba::testing
