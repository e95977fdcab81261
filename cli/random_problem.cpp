#include "random_problem.hpp"

#include <algorithm>
#include <cmath>
#include <random>

namespace moba::cli {

namespace {

double full_causal_work(const Problem& p) {
  double pairs = 0;
  for (int len : p.seqlens) pairs += double(len) * (len + 1) / 2;
  return pairs * p.hq * p.head_dim;
}

}  // namespace

RandomCase random_case(int index, unsigned seed, const RandomProblemOptions& o) {
  std::mt19937 rng(seed * 1000003u + static_cast<unsigned>(index) * 7919u + 17u);
  auto uniform = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  auto pick = [&](const auto& v) { return v[std::size_t(uniform(0, int(v.size()) - 1))]; };

  RandomCase c;
  Problem& p = c.problem;
  static const Mode modes[] = {Mode::full, Mode::moba, Mode::moa};
  const Mode mode = modes[index % 3];
  p.dtype = o.dtypes[std::size_t(index / 3) % o.dtypes.size()];

  const int batch = uniform(1, o.max_batch);
  for (int b = 0; b < batch; ++b) {
    const int r = uniform(0, 9);
    p.seqlens.push_back(r == 0 ? 0 : r == 1 ? 1 : uniform(2, std::max(2, o.max_len)));
  }
  if (p.total() == 0) p.seqlens.back() = uniform(2, std::max(2, o.max_len));
  p.hkv = pick(std::vector<int>{1, 1, 2, 4});
  p.hq = p.hkv * pick(std::vector<int>{1, 2, 4, 8});
  p.head_dim = pick(o.head_dims);

  // Bound the reference's time: fewer heads first, then shorter sequences.
  while (full_causal_work(p) > o.max_work) {
    if (p.hq > p.hkv) {
      p.hq /= 2;
    } else if (p.hkv > 1) {
      p.hkv /= 2;
      p.hq /= 2;
    } else {
      for (int& len : p.seqlens)
        if (len > 1) len = std::max(2, static_cast<int>(len * 0.7));
    }
  }

  const int max_len = p.max_seqlen();
  switch (mode) {
    case Mode::full: p.params = AttentionParams::full(); break;
    case Mode::moba: {
      const int block = pick(o.block_sizes);
      const int blocks = (max_len + block - 1) / block;
      p.params = AttentionParams::moba_blocks(block, uniform(1, blocks + 2));
      break;
    }
    case Mode::moa: {
      MoaHeads heads;
      heads.sink = pick(std::vector<int>{0, 4, 16, 64});
      const int n = uniform(0, 1) ? p.hkv : p.hq;  // one pair per KV head or per query head
      for (int h = 0; h < n; ++h) {
        heads.alpha.push_back(static_cast<float>(uniform(0, 2 * max_len)));  // some beyond N
        heads.beta.push_back(uniform(0, 2) == 0
                                 ? 0.f
                                 : std::uniform_real_distribution<float>(0.f, 0.8f)(rng));
      }
      p.params = AttentionParams::moa_heads(heads);
      break;
    }
  }
  if (uniform(0, 4) == 0)
    p.params.softmax_scale = std::uniform_real_distribution<float>(0.02f, 0.3f)(rng);
  c.q_stddev = uniform(0, 3) == 0 ? 4.0 : 1.0;
  c.input_seed = static_cast<unsigned>(rng());
  return c;
}

}  // namespace moba::cli
