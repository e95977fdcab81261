// Reference MoBA gate (docs/semantics.md, "Gate"): plain loops, fp64 scores.
#include <algorithm>
#include <numeric>
#include <vector>

#include "core/backends.hpp"
#include "core/dtype.hpp"

namespace moba::detail {

namespace {

// Mean of the keys of each full block of one sequence and KV head: summed exactly (fp64, so
// the order does not matter), divided in fp32 and rounded to the input dtype, as the public
// implementation's `k.mean(dim).float()` on bf16/fp16 keys does.
std::vector<double> block_means(const Problem& p, const Operand& k, int seq_begin, int nfull,
                                int kv_head) {
  const int D = p.head_dim, B = p.block_size;
  std::vector<double> means(std::size_t(nfull) * D);
  for (int j = 0; j < nfull; ++j)
    for (int d = 0; d < D; ++d) {
      double sum = 0;
      for (int t = j * B; t < (j + 1) * B; ++t)
        sum += load_as_float(k.data, (seq_begin + t) * k.token_stride + kv_head * k.head_stride + d, p.dtype);
      const float mean = static_cast<float>(sum) / static_cast<float>(B);
      means[std::size_t(j) * D + d] = round_to(p.dtype, mean);
    }
  return means;
}

}  // namespace

void reference_gate(const Problem& p, const Operand& q, const Operand& k, std::int32_t* selection) {
  const int D = p.head_dim, B = p.block_size, K = p.past_k();
  if (K == 0) return;
  std::vector<double> scores;
  std::vector<int> order;
  for (int b = 0; b < p.batch; ++b) {
    const int begin = p.cu_seqlens[b], len = p.cu_seqlens[b + 1] - begin;
    const int nfull = len / B;  // only full blocks can be in any token's past
    for (int hk = 0; hk < p.hkv; ++hk) {
      const std::vector<double> means = block_means(p, k, begin, nfull, hk);
      for (int h = hk * p.group(); h < (hk + 1) * p.group(); ++h)
        for (int t = 0; t < len; ++t) {
          std::int32_t* out = selection + (std::int64_t(begin + t) * p.hq + h) * K;
          std::fill(out, out + K, -1);
          const int own = t / B;  // past blocks are 0 .. own-1
          if (own == 0) continue;
          scores.assign(own, 0.0);
          for (int j = 0; j < own; ++j) {
            double s = 0;
            for (int d = 0; d < D; ++d)
              s += double(load_as_float(q.data, (begin + t) * q.token_stride + h * q.head_stride + d, p.dtype)) *
                   means[std::size_t(j) * D + d];
            scores[j] = s;
          }
          // Highest score first; equal scores: the earlier block wins.
          order.resize(own);
          std::iota(order.begin(), order.end(), 0);
          const int keep = std::min(K, own);
          std::partial_sort(order.begin(), order.begin() + keep, order.end(), [&](int a, int c) {
            return scores[a] != scores[c] ? scores[a] > scores[c] : a < c;
          });
          std::sort(order.begin(), order.begin() + keep);
          std::copy(order.begin(), order.begin() + keep, out);
        }
    }
  }
}

}  // namespace moba::detail
