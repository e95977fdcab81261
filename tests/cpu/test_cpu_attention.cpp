// The CPU backend against fp64 truth on hundreds of random shapes (every mode, dtype, head_dim,
// GQA/MQA, varlen with empty and length-1 sequences, odd block sizes, topk beyond the blocks).
//
// Tolerances are tied to the dtype's own error. Truth is computed in fp64 from the very same
// input values (bf16/f16 inputs are exact in f32/f64), so the only error a correct backend may
// add beyond fp32 arithmetic is the single rounding of its output to the dtype - exactly the
// error of the reference backend run in that dtype, which is ||round(truth) - truth||.
//   forward:  ||fast - truth|| <= 2 ||round(truth) - truth|| + 1e-5 ||truth||
//   backward: ||fast - truth|| <= 3 ||round(truth) - truth|| + 3e-5 ||truth|| + 1e-5 sqrt(n)
// Factor 2: the fast backend rounds once too, after fp32 rather than fp64 accumulation. Factor 3
// in the backward: D_t = <dout, out> is taken from the *rounded* out (as flash attention does),
// a second error of the dtype's size. The relative floors cover fp32 arithmetic where rounding
// is tiny (f32): accumulating <= a few hundred keys of D <= 128 products costs ~1e-6 relative.
// The absolute floor (per element, RMS) covers gradients that are exactly 0 in truth, e.g. a
// length-1 sequence (P = 1 so dS = dP - D = 0), where fp32 leaves ~1e-6 residues.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>

#include "cpu_check.hpp"

namespace moba::testing {
namespace {

constexpr double kFloorForward = 1e-5;
constexpr double kFloorBackward = 3e-5;

// Threads per random shape: mostly 1 so the suite's time does not depend on how loaded the
// machine is (OpenMP barriers wait for descheduled threads); every 4th shape uses 3 threads so
// the threaded paths (dynamic units, per-thread dK/dV accumulators) see the same random cases.
double l2(const std::vector<double>& a) {
  double s = 0;
  for (double x : a) s += x * x;
  return std::sqrt(s);
}
double l2_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += std::isnan(a[i] - b[i]) ? INFINITY : (a[i] - b[i]) * (a[i] - b[i]);
  return std::sqrt(s);
}

int threads_for(int iter) { return iter % 4 == 3 ? 3 : 1; }

struct Stats {
  int shapes = 0, moba_rows = 0, near_ties = 0;
  double worst_ratio = 0;  // max over shapes of err_fast / allowed
};

// Selection of the fast backend vs the reference gate: identical except near-ties.
void check_selection(const Shape& s, Inputs& in, const std::vector<std::int32_t>& fast, Stats& st) {
  const std::vector<std::int32_t> ref = reference_selection(s, in);
  const int K = std::max(s.params.topk - 1, 0);
  for (std::size_t b = 0; b + 1 < in.cu.size(); ++b)
    for (int t = 0; t < in.cu[b + 1] - in.cu[b]; ++t)
      for (int h = 0; h < s.hq; ++h) {
        const std::size_t at = (std::size_t(in.cu[b] + t) * s.hq + h) * K;
        ++st.moba_rows;
        if (std::equal(fast.begin() + at, fast.begin() + at + K, ref.begin() + at)) continue;
        ++st.near_ties;
        EXPECT_TRUE(selection_within_near_tie(block_scores(s, in, int(b), t, h), fast.data() + at, K))
            << s.str() << " token " << t << " head " << h;
      }
}

TEST(CpuAttention, ForwardMatchesFp64Truth) {
  std::mt19937 rng(1234);
  Stats st;
  for (int iter = 0; iter < 250; ++iter) {
    const Shape s = random_shape(rng);
    Inputs in = make_inputs(s, 1000 + iter);
    const ForwardResult fast = run_forward(s, in, Backend::cpu, threads_for(iter));
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

// Gradients against the reference backend run on f32 copies (fp64 inside, so exact to f32), on
// the fast forward's selection: the key sets are fixed, as in training.
TEST(CpuAttention, BackwardMatchesReference) {
  std::mt19937 rng(4321);
  RandomShapeOptions opt;
  opt.max_len = 160;  // the fp64 reference backward dominates the suite's time
  double worst = 0;
  int shapes = 0;
  for (int iter = 0; iter < 150; ++iter) {
    const Shape s = random_shape(rng, opt);
    Inputs in = make_inputs(s, 5000 + iter);
    ForwardResult fwd = run_forward(s, in, Backend::cpu, threads_for(iter));
    const BackwardResult fast = run_backward(s, in, fwd, Backend::cpu, threads_for(iter + 1));
    Shape s32 = s;
    s32.dtype = DType::f32;
    Inputs in32 = convert(in, DType::f32);
    ForwardResult fwd32;  // the reference backward reads only the selection
    fwd32.out = HostTensor(DType::f32, fwd.out.shape);
    fwd32.lse = fwd.lse;
    fwd32.selection = fwd.selection;
    const BackwardResult truth = run_backward(s32, in32, fwd32, Backend::reference);
    const std::pair<const HostTensor*, const HostTensor*> grads[] = {
        {&fast.dq, &truth.dq}, {&fast.dk, &truth.dk}, {&fast.dv, &truth.dv}};
    const char* names[] = {"dq", "dk", "dv"};
    for (int i = 0; i < 3; ++i) {
      const std::vector<double> t = grads[i].second->as_double();
      const double norm = l2(t);
      const double err = l2_diff(grads[i].first->as_double(), t);
      const double allowed = 3 * l2_diff(rounded(t, s.dtype), t) + kFloorBackward * norm + 1e-5 * std::sqrt(double(t.size()));
      EXPECT_LE(err, allowed) << names[i] << " " << s.str();
      worst = std::max(worst, err / allowed);
    }
    ++shapes;
  }
  std::printf("[ backward ] %d shapes, worst err/allowed %.3f\n", shapes, worst);
}

// The thread count changes nothing in the forward (each output row belongs to one unit), and a
// deterministic backward repeats bit for bit; both against a single thread as well.
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
    const BackwardResult a = run_backward(s, in, one, Backend::cpu, 3);
    const BackwardResult b = run_backward(s, in, one, Backend::cpu, 3);
    EXPECT_EQ(a.dq.bytes, b.dq.bytes) << s.str();  // dq rows belong to one unit: always exact
    const BackwardResult c = run_backward(s, in, one, Backend::cpu, 1);
    EXPECT_EQ(a.dq.bytes, c.dq.bytes) << s.str();
  }
}

}  // namespace
}  // namespace moba::testing
