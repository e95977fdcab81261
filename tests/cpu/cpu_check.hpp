// Helpers of the CPU backend tests: the fp64 gate scores (to judge near-ties) and the
// comparison of a selection against the reference's.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/dtype.hpp"
#include "core/problem.hpp"
#include "core/visibility.hpp"
#include "test_support.hpp"

namespace moba::testing {

// fp64 scores <q_t, mean_j> of every past block of token t (within sequence b), head h, with the
// means built exactly as docs/semantics.md says; also sum_d |q_d mean_jd| per block, the scale of
// the fp32 rounding error a fast backend may make on that score.
struct BlockScores {
  std::vector<double> score, magnitude;
};
inline BlockScores block_scores(const Shape& s, const Inputs& in, int b, int t, int h) {
  const int B = s.params.block_size, D = s.d, group = s.hq / s.hkv, g = h / group;
  const int begin = in.cu[b], own = t / B;
  BlockScores r;
  for (int j = 0; j < own; ++j) {
    double sc = 0, mag = 0;
    for (int d = 0; d < D; ++d) {
      double sum = 0;
      for (int x = j * B; x < (j + 1) * B; ++x) sum += in.k.get((std::int64_t(begin + x) * s.hkv + g) * D + d);
      const double mean = detail::round_to(s.dtype, static_cast<float>(sum) / static_cast<float>(B));
      const double qd = in.q.get((std::int64_t(begin + t) * s.hq + h) * D + d);
      sc += qd * mean;
      mag += std::fabs(qd * mean);
    }
    r.score.push_back(sc);
    r.magnitude.push_back(mag);
  }
  return r;
}

// Relative size of a near-tie: fp32 accumulation of D products can move a score by about
// D * 2^-24 * sum|terms| in the worst case (7.6e-6 relative for D = 128); both sides of a
// comparison may err, so 2e-5 * sum|terms| bounds every legitimate disagreement.
constexpr double kNearTie = 2e-5;

// True when `chosen` (a fast backend's ascending slots, -1 padded) is a correct top-k of the fp64
// scores up to near-ties: right count, and no unchosen block beats a chosen one by more than
// the fp32 tolerance.
inline bool selection_within_near_tie(const BlockScores& sc, const std::int32_t* chosen, int slots) {
  const int own = static_cast<int>(sc.score.size());
  const int keep = std::min(slots, own);
  std::vector<bool> in(own, false);
  for (int i = 0; i < slots; ++i) {
    const int j = chosen[i];
    if (i < keep) {
      if (j < 0 || j >= own || in[j] || (i > 0 && j <= chosen[i - 1])) return false;
      in[j] = true;
    } else if (j != -1) {
      return false;
    }
  }
  for (int x = 0; x < own; ++x)
    for (int y = 0; y < own; ++y)
      if (!in[x] && in[y]) {
        const double tol = kNearTie * std::max(sc.magnitude[x], sc.magnitude[y]);
        if (sc.score[x] > sc.score[y] + tol) return false;
      }
  return true;
}

}  // namespace moba::testing

namespace moba::testing {

// The problem's key sets (core/visibility.hpp) for a shape, to compute exact results for a
// given MoBA selection.
inline detail::Problem key_set_problem(const Shape& s) {
  detail::Problem p;
  p.hq = s.hq, p.hkv = s.hkv, p.head_dim = s.d, p.mode = s.params.mode;
  p.block_size = s.params.block_size, p.topk = s.params.topk;
  p.scale = s.params.softmax_scale != 0.f ? s.params.softmax_scale : static_cast<float>(1.0 / std::sqrt(double(s.d)));
  if (p.mode == Mode::moa) {
    const auto& a = s.params.moa.alpha;
    for (int h = 0; h < s.hq; ++h) {
      const int src = static_cast<int>(a.size()) == s.hq ? h : h / (s.hq / s.hkv);
      p.moa_alpha.push_back(a[src]);
      p.moa_beta.push_back(s.params.moa.beta[src]);
    }
    p.moa_sink = s.params.moa.sink;
  }
  return p;
}

// fp64 forward over fixed key sets (MoBA: the given selection): out [T, hq, D], lse [hq, T].
inline void exact_forward(const Shape& s, const Inputs& in, const std::vector<std::int32_t>& sel,
                          std::vector<double>& out, std::vector<double>& lse) {
  const detail::Problem p = key_set_problem(s);
  const int D = s.d, T = s.total(), K = p.past_k();
  out.assign(std::size_t(T) * s.hq * D, 0.0);
  lse.assign(std::size_t(T) * s.hq, 0.0);
  const std::vector<double> q = in.q.as_double(), k = in.k.as_double(), v = in.v.as_double();
  std::vector<int> keys;
  std::vector<double> w;
  for (std::size_t b = 0; b + 1 < in.cu.size(); ++b) {
    const int begin = in.cu[b], len = in.cu[b + 1] - begin;
    for (int t = 0; t < len; ++t)
      for (int h = 0; h < s.hq; ++h) {
        const int g = h / (s.hq / s.hkv);
        const std::int64_t row = std::int64_t(begin + t) * s.hq + h;
        keys.clear();
        detail::for_each_visible_range(p, len, t, h, sel.empty() ? nullptr : sel.data() + row * K,
                                       [&](int lo, int hi) { for (int j = lo; j < hi; ++j) keys.push_back(begin + j); });
        w.assign(keys.size(), 0.0);
        double mx = -INFINITY;
        for (std::size_t i = 0; i < keys.size(); ++i) {
          double dot = 0;
          const double* kr = &k[(std::size_t(keys[i]) * s.hkv + g) * D];
          for (int d = 0; d < D; ++d) dot += q[row * D + d] * kr[d];
          w[i] = dot * p.scale;
          mx = std::max(mx, w[i]);
        }
        double sum = 0;
        for (double& x : w) sum += (x = std::exp(x - mx));
        for (std::size_t i = 0; i < keys.size(); ++i) {
          const double* vr = &v[(std::size_t(keys[i]) * s.hkv + g) * D];
          for (int d = 0; d < D; ++d) out[row * D + d] += w[i] / sum * vr[d];
        }
        lse[std::size_t(h) * T + begin + t] = mx + std::log(sum);
      }
  }
}

// The reference backend's gate (the definition of the selection).
inline std::vector<std::int32_t> reference_selection(const Shape& s, Inputs& in) {
  const std::int64_t T = s.total();
  const int K = std::max(s.params.topk - 1, 0);
  std::vector<std::int32_t> sel(std::size_t(T) * s.hq * K + 1, -7);
  RunOptions o;
  o.backend = Backend::reference;
  moba_gate(in.q.view(), in.k.view(),
            TensorView::contiguous(in.cu.data(), DType::i32, Device::cpu(), {std::int64_t(in.cu.size())}),
            s.params, TensorView::contiguous(sel.data(), DType::i32, Device::cpu(), {T, s.hq, K}), o);
  sel.pop_back();
  return sel;
}

// Each value rounded to dtype once: the error of a result that is exact up to its final store.
inline std::vector<double> rounded(const std::vector<double>& x, DType t) {
  std::vector<double> r(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) r[i] = detail::round_to(t, static_cast<float>(x[i]));
  return r;
}

}  // namespace moba::testing
