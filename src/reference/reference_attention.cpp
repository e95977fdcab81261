// Reference forward and backward: for every (token, head), one exact softmax in fp64 over the
// keys core/visibility.hpp says it sees. Slow on purpose; readable first.
#include <cmath>
#include <vector>

#include "core/backends.hpp"
#include "core/dtype.hpp"
#include "core/visibility.hpp"

namespace moba::detail {

namespace {

struct Row {  // one (token, head) of one sequence
  int begin, len, t, h, hk;
  const std::int32_t* selection;
};

double element(const Problem& p, const Operand& x, int token, int head, int d) {
  return load_as_float(x.data, token * x.token_stride + head * x.head_stride + d, p.dtype);
}

// Visible key positions (absolute) and their probabilities; returns the log-sum-exp.
double softmax_row(const Problem& p, const Operand& q, const Operand& k, const Row& r,
                   std::vector<int>& keys, std::vector<double>& prob) {
  keys.clear();
  for_each_visible_range(p, r.len, r.t, r.h, r.selection, [&](int b, int e) {
    for (int j = b; j < e; ++j) keys.push_back(r.begin + j);
  });
  prob.assign(keys.size(), 0.0);
  double mx = -INFINITY;
  for (std::size_t i = 0; i < keys.size(); ++i) {
    double s = 0;
    for (int d = 0; d < p.head_dim; ++d)
      s += element(p, q, r.begin + r.t, r.h, d) * element(p, k, keys[i], r.hk, d);
    prob[i] = s * p.scale;
    mx = std::max(mx, prob[i]);
  }
  double sum = 0;
  for (double& x : prob) sum += (x = std::exp(x - mx));
  for (double& x : prob) x /= sum;
  return mx + std::log(sum);
}

template <class F>
void for_each_row(const Problem& p, const std::int32_t* selection, F&& f) {
  for (int b = 0; b < p.batch; ++b) {
    const int begin = p.cu_seqlens[b], len = p.cu_seqlens[b + 1] - begin;
    for (int t = 0; t < len; ++t)
      for (int h = 0; h < p.hq; ++h) {
        const std::int32_t* sel =
            selection ? selection + (std::int64_t(begin + t) * p.hq + h) * p.past_k() : nullptr;
        f(Row{begin, len, t, h, h / p.group(), sel});
      }
  }
}

}  // namespace

void reference_forward(const Problem& p, const Forward& f) {
  if (p.mode == Mode::moba) reference_gate(p, f.q, f.k, f.selection);
  std::vector<int> keys;
  std::vector<double> prob, acc(p.head_dim);
  for_each_row(p, f.selection, [&](const Row& r) {
    const double lse = softmax_row(p, f.q, f.k, r, keys, prob);
    std::fill(acc.begin(), acc.end(), 0.0);
    for (std::size_t i = 0; i < keys.size(); ++i)
      for (int d = 0; d < p.head_dim; ++d) acc[d] += prob[i] * element(p, f.v, keys[i], r.hk, d);
    const int tok = r.begin + r.t;
    for (int d = 0; d < p.head_dim; ++d)
      store_from_float(f.out.data, tok * f.out.token_stride + r.h * f.out.head_stride + d, p.dtype,
                       static_cast<float>(acc[d]));
    f.lse[std::int64_t(r.h) * p.total + tok] = static_cast<float>(lse);
  });
}

// Exact gradients of the forward's function (the selection held fixed). Recomputes the
// probabilities in fp64 and uses D = sum_j P_j dP_j, so it does not depend on the rounded
// out/lse the caller passes: it is the truth the fast backends are measured against.
void reference_backward(const Problem& p, const Backward& w) {
  const int D = p.head_dim;
  std::vector<double> dq(std::size_t(p.total) * p.hq * D, 0.0);
  std::vector<double> dk(std::size_t(p.total) * p.hkv * D, 0.0), dv(dk.size(), 0.0);
  std::vector<int> keys;
  std::vector<double> prob, dprob;
  for_each_row(p, w.selection, [&](const Row& r) {
    softmax_row(p, w.q, w.k, r, keys, prob);
    const int tok = r.begin + r.t;
    dprob.assign(keys.size(), 0.0);
    double dot = 0;  // sum_j P_j dP_j
    for (std::size_t i = 0; i < keys.size(); ++i) {
      double s = 0;
      for (int d = 0; d < D; ++d) s += element(p, w.dout, tok, r.h, d) * element(p, w.v, keys[i], r.hk, d);
      dprob[i] = s;
      dot += prob[i] * s;
    }
    for (std::size_t i = 0; i < keys.size(); ++i) {
      const double ds = prob[i] * (dprob[i] - dot) * p.scale;
      double* dk_row = &dk[(std::size_t(keys[i]) * p.hkv + r.hk) * D];
      double* dv_row = &dv[(std::size_t(keys[i]) * p.hkv + r.hk) * D];
      double* dq_row = &dq[(std::size_t(tok) * p.hq + r.h) * D];
      for (int d = 0; d < D; ++d) {
        dq_row[d] += ds * element(p, w.k, keys[i], r.hk, d);
        dk_row[d] += ds * element(p, w.q, tok, r.h, d);
        dv_row[d] += prob[i] * element(p, w.dout, tok, r.h, d);
      }
    }
  });
  auto store = [&](const Operand& o, const std::vector<double>& g, int heads) {
    for (int t = 0; t < p.total; ++t)
      for (int h = 0; h < heads; ++h)
        for (int d = 0; d < D; ++d)
          store_from_float(o.data, t * o.token_stride + h * o.head_stride + d, p.dtype,
                           static_cast<float>(g[(std::size_t(t) * heads + h) * D + d]));
  };
  store(w.dq, dq, p.hq);
  store(w.dk, dk, p.hkv);
  store(w.dv, dv, p.hkv);
}

}  // namespace moba::detail
