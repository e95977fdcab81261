#include "truth.hpp"

#include <algorithm>
#include <cmath>
#include <thread>

#include "core/visibility.hpp"
#include "key_sets.hpp"

namespace moba::verify {

detail::Problem problem_of(const Problem& s) {
  detail::Problem p;
  p.mode = s.params.mode;
  p.block_size = s.params.block_size;
  p.topk = s.params.topk;
  p.hq = s.hq;
  p.hkv = s.hkv;
  p.head_dim = s.d;
  p.scale = s.params.softmax_scale != 0.f ? s.params.softmax_scale
                                          : static_cast<float>(1.0 / std::sqrt(double(s.d)));
  if (p.mode == Mode::moa) {
    const auto& a = s.params.moa.alpha;
    for (int h = 0; h < s.hq; ++h) {
      const int src = int(a.size()) == s.hq ? h : h / (s.hq / s.hkv);
      p.moa_alpha.push_back(a[std::size_t(src)]);
      p.moa_beta.push_back(s.params.moa.beta[std::size_t(src)]);
    }
    p.moa_sink = s.params.moa.sink;
  }
  return p;
}

Truth truth_forward(const Problem& s, const Inputs& in, const std::vector<std::int32_t>& sel) {
  const detail::Problem p = problem_of(s);
  const int T = s.total(), D = s.d, past = s.params.mode == Mode::moba ? p.past_k() : 0;
  const std::vector<double> q = in.q.as_double(), k = in.k.as_double(), v = in.v.as_double();
  Truth t;
  t.out.assign(std::size_t(T) * s.hq * D, 0.0);
  t.lse.assign(std::size_t(T) * s.hq, 0.0);
  std::vector<int> seq_of(static_cast<std::size_t>(T));
  for (std::size_t b = 0; b + 1 < in.cu.size(); ++b)
    for (int x = in.cu[b]; x < in.cu[b + 1]; ++x) seq_of[std::size_t(x)] = int(b);
  auto rows = [&](int first, int step) {
    std::vector<double> w;
    std::vector<int> keys;
    for (int tok = first; tok < T; tok += step) {
      const int b = seq_of[std::size_t(tok)], begin = in.cu[std::size_t(b)];
      const int len = in.cu[std::size_t(b) + 1] - begin;
      for (int h = 0; h < s.hq; ++h) {
        const int g = h / (s.hq / s.hkv);
        const std::size_t row = std::size_t(tok) * s.hq + h;
        keys.clear();
        detail::for_each_visible_range(p, len, tok - begin, h, past ? sel.data() + row * past : nullptr,
                                       [&](int lo, int hi) {
                                         for (int j = lo; j < hi; ++j) keys.push_back(begin + j);
                                       });
        w.resize(keys.size());
        double mx = -INFINITY;
        const double* qr = &q[row * D];
        for (std::size_t i = 0; i < keys.size(); ++i) {
          const double* kr = &k[(std::size_t(keys[i]) * s.hkv + g) * D];
          double dot = 0;
          for (int d = 0; d < D; ++d) dot += qr[d] * kr[d];
          w[i] = dot * p.scale;
          mx = std::max(mx, w[i]);
        }
        double sum = 0;
        for (double& x : w) sum += (x = std::exp(x - mx));
        double* orow = &t.out[row * D];
        for (std::size_t i = 0; i < keys.size(); ++i) {
          const double* vr = &v[(std::size_t(keys[i]) * s.hkv + g) * D];
          for (int d = 0; d < D; ++d) orow[d] += w[i] / sum * vr[d];
        }
        t.lse[std::size_t(h) * T + tok] = mx + std::log(sum);
      }
    }
  };
  // Threads only where the work pays for them (the test suites run many small problems).
  double work = 0;
  for (int l : s.seqlens) work += double(l) * l;
  work *= double(s.hq) * D;
  const int threads = work < 2e7 ? 1 : int(std::max(1u, std::min(32u, std::thread::hardware_concurrency())));
  if (threads == 1) {
    rows(0, 1);
  } else {
    std::vector<std::thread> pool;
    for (int w = 0; w < threads; ++w) pool.emplace_back(rows, w, threads);
    for (auto& th : pool) th.join();
  }
  return t;
}

BackwardResult truth_backward(const Problem& p, const Inputs& in, const ForwardResult& fwd) {
  Problem p32 = p;
  p32.dtype = DType::f32;
  Inputs in32 = convert(in, DType::f32);
  ForwardResult state = fwd;
  state.out = fwd.out.converted(DType::f32);
  return run_backward(p32, in32, state, Backend::reference);
}

std::vector<std::int32_t> reference_selection(const Problem& p, Inputs& in) {
  return run_gate(p, in, on(Backend::reference));
}

BlockScores block_scores(const Problem& p, const Inputs& in, int seq, int t, int h) {
  const int B = p.params.block_size, D = p.d, g = h / (p.hq / p.hkv);
  const int begin = in.cu[std::size_t(seq)], own = t / B;
  HostTensor rounder(p.dtype, {1});
  BlockScores r;
  for (int j = 0; j < own; ++j) {
    double sc = 0, abs_sum = 0, abs_max = 0;
    for (int d = 0; d < D; ++d) {
      double sum = 0;
      for (int x = j * B; x < (j + 1) * B; ++x)
        sum += in.k.get((std::int64_t(begin + x) * p.hkv + g) * D + d);
      rounder.set(0, static_cast<float>(sum) / static_cast<float>(B));
      const double term = in.q.get((std::int64_t(begin + t) * p.hq + h) * D + d) * rounder.get(0);
      sc += term;
      abs_sum += std::fabs(term);
      abs_max = std::max(abs_max, std::fabs(term));
    }
    r.score.push_back(sc);
    r.abs_sum.push_back(abs_sum);
    r.abs_max.push_back(abs_max);
  }
  return r;
}

GradientAllowance rounded_out_allowance(const Problem& p, const Inputs& in,
                                        const HostTensor& out_rounded, const Truth& truth,
                                        const std::vector<std::int32_t>& selection) {
  const int T = p.total(), H = p.hq, D = p.d;
  const double scale = problem_of(p).scale;
  Problem p32 = p;
  p32.dtype = DType::f32;
  Inputs in32 = convert(in, DType::f32);
  std::vector<double> dD(std::size_t(T) * H, 0.0);
  for (std::int64_t r = 0; r < std::int64_t(T) * H; ++r) {
    double s = 0;
    for (int d = 0; d < D; ++d)
      s += in32.dout.get(r * D + d) * (out_rounded.get(r * D + d) - truth.out[std::size_t(r * D + d)]);
    dD[std::size_t(r)] = s;
    for (int d = 0; d < D; ++d) in32.dout.set(r * D + d, s * in32.q.get(r * D + d));
  }

  GradientAllowance a;
  const Truth kbar = truth_forward(p32, Inputs{in32.q, in32.k, in32.k, in32.dout, in32.cu}, selection);
  a.dq.resize(kbar.out.size());
  for (std::size_t i = 0; i < kbar.out.size(); ++i)
    a.dq[i] = std::fabs(scale * dD[i / std::size_t(D)] * kbar.out[i]);

  ForwardResult state;
  state.out = HostTensor(DType::f32, {T, H, D});
  for (std::size_t i = 0; i < truth.out.size(); ++i) state.out.set(std::int64_t(i), truth.out[i]);
  state.lse.assign(truth.lse.begin(), truth.lse.end());
  state.selection = selection;
  const BackwardResult spread = run_backward(p32, in32, state, Backend::reference);
  a.dk = spread.dv.as_double();
  for (double& x : a.dk) x = std::fabs(scale * x);
  return a;
}

}  // namespace moba::verify
