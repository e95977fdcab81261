// Reference attention influence: for every (token, head) of dense causal attention, the exact
// fp64 probabilities P, dP = <dout, v>, D = sum_j P_j dP_j and dS_j = P_j (dP_j - D), added to
// the histogram bin of the distance t - j. Recomputes P from q and k (out/lse unused), like
// reference_backward: the truth the CPU backend is measured against.
#include <cmath>
#include <vector>

#include "core/dtype.hpp"
#include "core/influence.hpp"

namespace moba::detail {

namespace {

double element(const Problem& p, const Operand& x, int token, int head, int d) {
  return load_as_float(x.data, token * x.token_stride + head * x.head_stride + d, p.dtype);
}

double dot(const Problem& p, const Operand& a, int ta, int ha, const Operand& b, int tb, int hb) {
  double s = 0;
  for (int d = 0; d < p.head_dim; ++d) s += element(p, a, ta, ha, d) * element(p, b, tb, hb, d);
  return s;
}

}  // namespace

void reference_influence(const Problem& p, const Influence& f) {
  std::vector<double> prob, dprob;
  for (int b = 0; b < p.batch; ++b) {
    const int begin = p.cu_seqlens[b], len = p.cu_seqlens[b + 1] - begin;
    for (int t = 0; t < len; ++t)
      for (int h = 0; h < p.hq; ++h) {
        const int hk = h / p.group(), tok = begin + t;
        prob.assign(t + 1, 0.0);
        dprob.assign(t + 1, 0.0);
        double mx = -INFINITY;
        for (int j = 0; j <= t; ++j) {
          prob[j] = p.scale * dot(p, f.q, tok, h, f.k, begin + j, hk);
          mx = std::max(mx, prob[j]);
        }
        double sum = 0;
        for (double& x : prob) sum += (x = std::exp(x - mx));
        double delta = 0;
        for (int j = 0; j <= t; ++j) {
          prob[j] /= sum;
          dprob[j] = dot(p, f.dout, tok, h, f.v, begin + j, hk);
          delta += prob[j] * dprob[j];
        }
        for (int j = 0; j <= t; ++j) {
          const double ds = prob[j] * (dprob[j] - delta);
          const int bin = f.bin_of_distance[t - j], flag = j < f.sink ? 1 : 0;
          f.sums[f.at(p.hq, 0, h, flag, bin)] -= ds;
          f.sums[f.at(p.hq, 1, h, flag, bin)] += std::fabs(ds);
        }
      }
  }
}

}  // namespace moba::detail
