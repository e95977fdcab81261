// The reference backend is the definition of truth, so it is checked against an independent
// dense masked attention written here from docs/semantics.md, against properties that follow
// from the semantics, and its gradients against finite differences.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/dtype.hpp"
#include "test_support.hpp"

namespace moba::testing {
namespace {

// ---- an independent implementation: explicit [T x T] mask per head, dense softmax ----------

// mask[h][t][j] for one sequence, from semantics.md, coded without core/visibility.hpp.
std::vector<std::vector<std::vector<char>>> build_mask(const Shape& s, const Inputs& in, int seq) {
  const int begin = in.cu[seq], len = in.cu[seq + 1] - begin, D = s.d;
  std::vector<std::vector<std::vector<char>>> mask(s.hq, std::vector<std::vector<char>>(len, std::vector<char>(len, 0)));
  const auto& p = s.params;
  for (int h = 0; h < s.hq; ++h) {
    const int hk = h / (s.hq / s.hkv);
    for (int t = 0; t < len; ++t) {
      if (p.mode == Mode::full) {
        for (int j = 0; j <= t; ++j) mask[h][t][j] = 1;
      } else if (p.mode == Mode::moa) {
        const bool per_q = static_cast<int>(p.moa.alpha.size()) == s.hq;
        const int ph = per_q ? h : hk;
        long w = static_cast<long>(std::floor(double(p.moa.alpha[ph]) + double(p.moa.beta[ph]) * len));
        w = std::clamp<long>(w, 1, len);
        for (int j = 0; j <= t; ++j) mask[h][t][j] = (j < p.moa.sink || j > t - w) ? 1 : 0;
      } else {
        const int B = p.block_size, own = t / B;
        for (int j = own * B; j <= t; ++j) mask[h][t][j] = 1;
        // Rank every past block: a block is kept iff fewer than topk-1 blocks beat it.
        std::vector<double> score(own, 0.0);
        for (int b = 0; b < own; ++b)
          for (int d = 0; d < D; ++d) {
            double sum = 0;
            for (int x = b * B; x < (b + 1) * B; ++x) sum += in.k.get((std::int64_t(begin + x) * s.hkv + hk) * D + d);
            const double mean = detail::round_to(s.dtype, static_cast<float>(sum) / static_cast<float>(B));
            score[b] += in.q.get((std::int64_t(begin + t) * s.hq + h) * D + d) * mean;
          }
        for (int b = 0; b < own; ++b) {
          int beaten_by = 0;
          for (int c = 0; c < own; ++c)
            if (score[c] > score[b] || (score[c] == score[b] && c < b)) ++beaten_by;
          if (beaten_by < p.topk - 1)
            for (int j = b * B; j < (b + 1) * B; ++j) mask[h][t][j] = 1;
        }
      }
    }
  }
  return mask;
}

void dense_masked(const Shape& s, const Inputs& in, std::vector<double>& out, std::vector<double>& lse) {
  const int D = s.d, T = s.total();
  const double scale = s.params.softmax_scale != 0.f ? s.params.softmax_scale : 1.0 / std::sqrt(double(D));
  out.assign(std::size_t(T) * s.hq * D, 0.0);
  lse.assign(std::size_t(T) * s.hq, 0.0);
  for (std::size_t b = 0; b + 1 < in.cu.size(); ++b) {
    const int begin = in.cu[b], len = in.cu[b + 1] - begin;
    const auto mask = build_mask(s, in, static_cast<int>(b));
    for (int h = 0; h < s.hq; ++h) {
      const int hk = h / (s.hq / s.hkv);
      for (int t = 0; t < len; ++t) {
        std::vector<double> logit(len, -INFINITY);
        double mx = -INFINITY;
        for (int j = 0; j < len; ++j) {
          if (!mask[h][t][j]) continue;
          double dot = 0;
          for (int d = 0; d < D; ++d)
            dot += in.q.get((std::int64_t(begin + t) * s.hq + h) * D + d) * in.k.get((std::int64_t(begin + j) * s.hkv + hk) * D + d);
          logit[j] = dot * scale;
          mx = std::max(mx, logit[j]);
        }
        double sum = 0;
        for (int j = 0; j < len; ++j) sum += mask[h][t][j] ? std::exp(logit[j] - mx) : 0.0;
        for (int j = 0; j < len; ++j) {
          if (!mask[h][t][j]) continue;
          const double p = std::exp(logit[j] - mx) / sum;
          for (int d = 0; d < D; ++d)
            out[(std::size_t(begin + t) * s.hq + h) * D + d] += p * in.v.get((std::int64_t(begin + j) * s.hkv + hk) * D + d);
        }
        lse[std::size_t(h) * T + begin + t] = mx + std::log(sum);
      }
    }
  }
}

RandomShapeOptions small_shapes() {
  RandomShapeOptions o;
  o.max_len = 90;
  o.head_dims = {8, 16, 64};  // the reference takes any head_dim
  o.dtypes = {DType::f32};
  o.block_sizes = {1, 3, 8, 16, 50};
  return o;
}

TEST(Reference, MatchesIndependentDenseMaskedAttention) {
  std::mt19937 rng(1234);
  for (int c = 0; c < 150; ++c) {
    const Shape s = random_shape(rng, small_shapes());
    Inputs in = make_inputs(s, 100 + c);
    const ForwardResult r = run_forward(s, in, Backend::reference);
    std::vector<double> out, lse;
    dense_masked(s, in, out, lse);
    const std::vector<double> lse_got(r.lse.begin(), r.lse.end());
    EXPECT_LT(rel_l2(r.out.as_double(), out), 1e-6) << s.str();
    EXPECT_LT(max_abs_diff(lse_got, lse), 1e-5) << s.str();
  }
}

TEST(Reference, SelectionIsAscendingPaddedAndPast) {
  std::mt19937 rng(7);
  RandomShapeOptions o = small_shapes();
  o.modes = {Mode::moba};
  for (int c = 0; c < 60; ++c) {
    const Shape s = random_shape(rng, o);
    Inputs in = make_inputs(s, 500 + c);
    const ForwardResult r = run_forward(s, in, Backend::reference);
    const int K = s.params.topk - 1, B = s.params.block_size;
    for (std::size_t b = 0; b + 1 < in.cu.size(); ++b)
      for (int t = in.cu[b]; t < in.cu[b + 1]; ++t)
        for (int h = 0; h < s.hq; ++h) {
          const std::int32_t* sel = &r.selection[(std::size_t(t) * s.hq + h) * K];
          const int own = (t - in.cu[b]) / B, expect_used = std::min(K, own);
          for (int i = 0; i < K; ++i) {
            if (i < expect_used) {
              ASSERT_GE(sel[i], 0) << s.str();
              ASSERT_LT(sel[i], own) << s.str();
              if (i > 0) ASSERT_LT(sel[i - 1], sel[i]) << s.str();
            } else {
              ASSERT_EQ(sel[i], -1) << s.str();
            }
          }
        }
  }
}

TEST(Reference, TopkCoveringAllBlocksEqualsFull) {
  Shape s;
  s.seqlens = {0, 97, 1, 64};
  s.hq = 4;
  s.hkv = 2;
  s.d = 16;
  s.dtype = DType::f32;
  Inputs in = make_inputs(s, 9);
  s.params = AttentionParams::moba_blocks(10, 11);  // 10 blocks of the 97-long sequence + own
  const ForwardResult moba = run_forward(s, in, Backend::reference);
  s.params = AttentionParams::full();
  const ForwardResult full = run_forward(s, in, Backend::reference);
  EXPECT_EQ(moba.out.as_double(), full.out.as_double());
}

TEST(Reference, MoaLimits) {
  Shape s;
  s.seqlens = {40, 7};
  s.hq = 2;
  s.hkv = 1;
  s.d = 8;
  s.dtype = DType::f32;
  Inputs in = make_inputs(s, 3);
  s.params = AttentionParams::full();
  const ForwardResult full = run_forward(s, in, Backend::reference);
  s.params = AttentionParams::moa_heads(MoaHeads{{1000.f}, {0.f}, 0});  // window beyond N
  EXPECT_EQ(run_forward(s, in, Backend::reference).out.as_double(), full.out.as_double());
  s.params = AttentionParams::moa_heads(MoaHeads{{0.f}, {0.f}, 0});  // window 1: self only
  const ForwardResult self = run_forward(s, in, Backend::reference);
  for (int t = 0; t < s.total(); ++t)
    for (int h = 0; h < 2; ++h)
      for (int d = 0; d < 8; ++d)
        ASSERT_NEAR(self.out.get((std::int64_t(t) * 2 + h) * 8 + d), in.v.get(std::int64_t(t) * 8 + d), 1e-6);
}

// Directional derivative of L = sum(out * dout) along a random u, by central differences in
// (near) fp64: the reference computes in fp64 and stores f32, so L has ~1e-7 relative noise.
// For MoBA the perturbation must not change the selection (it is held fixed by definition).
double loss(const Shape& s, Inputs& in, ForwardResult* keep = nullptr) {
  ForwardResult r = run_forward(s, in, Backend::reference);
  double l = 0;
  const auto o = r.out.as_double(), g = in.dout.as_double();
  for (std::size_t i = 0; i < o.size(); ++i) l += o[i] * g[i];
  if (keep) *keep = std::move(r);
  return l;
}

TEST(Reference, GradientsMatchFiniteDifferences) {
  std::mt19937 rng(99);
  RandomShapeOptions o = small_shapes();
  o.max_len = 24;
  o.max_batch = 2;
  o.head_dims = {8};
  o.block_sizes = {3, 4, 5};
  int checked = 0;
  for (int c = 0; c < 40; ++c) {
    const Shape s = random_shape(rng, o);
    Inputs in = make_inputs(s, 900 + c);
    ForwardResult fwd;
    loss(s, in, &fwd);
    const BackwardResult g = run_backward(s, in, fwd, Backend::reference);
    const HostTensor* grads[3] = {&g.dq, &g.dk, &g.dv};
    HostTensor* xs[3] = {&in.q, &in.k, &in.v};
    for (int which = 0; which < 3; ++which) {
      HostTensor& x = *xs[which];
      const HostTensor saved = x;
      std::vector<double> u(x.numel());
      std::normal_distribution<double> n(0, 1);
      for (double& e : u) e = n(rng);
      const double eps = 1e-2;
      ForwardResult plus, minus;
      for (std::int64_t i = 0; i < x.numel(); ++i) x.set(i, saved.get(i) + eps * u[i]);
      const double lp = loss(s, in, &plus);
      for (std::int64_t i = 0; i < x.numel(); ++i) x.set(i, saved.get(i) - eps * u[i]);
      const double lm = loss(s, in, &minus);
      x = saved;
      if (plus.selection != fwd.selection || minus.selection != fwd.selection) continue;
      double analytic = 0;
      for (std::int64_t i = 0; i < x.numel(); ++i) analytic += grads[which]->get(i) * u[i];
      const double numeric = (lp - lm) / (2 * eps);
      EXPECT_NEAR(numeric, analytic, 2e-3 * std::max(1.0, std::fabs(analytic))) << s.str() << " grad " << which;
      ++checked;
    }
  }
  EXPECT_GT(checked, 90);  // most shapes keep their selection under the perturbation
}

TEST(Reference, GateTiesGoToTheEarlierBlock) {
  // Two identical key blocks score equally for every query: the earlier one must win.
  Shape s;
  s.seqlens = {12};
  s.hq = s.hkv = 1;
  s.d = 4;
  s.dtype = DType::f32;
  s.params = AttentionParams::moba_blocks(4, 2);  // own + 1 past block
  Inputs in = make_inputs(s, 1);
  for (int x = 0; x < 4; ++x)
    for (int d = 0; d < 4; ++d) in.k.set((4 + x) * 4 + d, in.k.get(x * 4 + d));
  const ForwardResult r = run_forward(s, in, Backend::reference);
  for (int t = 8; t < 12; ++t) EXPECT_EQ(r.selection[t], 0) << "token " << t;
}

}  // namespace
}  // namespace moba::testing
