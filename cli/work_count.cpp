#include "work_count.hpp"

#include <algorithm>
#include <cmath>

namespace moba::cli {

namespace {

double full_pairs(double len) { return len * (len + 1) / 2; }

double moba_pairs(int len, int block, int topk) {
  const int past_slots = std::max(topk - 1, 0);
  double pairs = 0;
  for (int t = 0; t < len; ++t) {
    const int own = t / block;
    pairs += double(t - own * block + 1) + double(block) * std::min(past_slots, own);
  }
  return pairs;
}

// MoA head with window w (own token included) and `sink` first tokens, over one sequence.
double moa_pairs(int len, int window, int sink) {
  double pairs = 0;
  for (int t = 0; t < len; ++t)
    pairs += std::min(t + 1, window) + std::max(0, std::min(sink, t - window + 1));
  return pairs;
}

int moa_window(float alpha, float beta, int len) {
  const double span = std::floor(double(alpha) + double(beta) * double(len));
  if (span < 1.0) return 1;
  return span > double(len) ? std::max(len, 1) : static_cast<int>(span);
}

}  // namespace

double visible_pairs(const Problem& p) {
  double pairs = 0;
  for (int len : p.seqlens) {
    switch (p.params.mode) {
      case Mode::full: pairs += p.hq * full_pairs(len); break;
      case Mode::moba: pairs += p.hq * moba_pairs(len, p.params.block_size, p.params.topk); break;
      case Mode::moa: {
        const auto& a = p.params.moa.alpha;
        const auto& b = p.params.moa.beta;
        const int per = static_cast<int>(a.size()) == p.hq ? 1 : p.hq / p.hkv;  // heads per value
        for (int h = 0; h < p.hq; ++h)
          pairs += moa_pairs(len, moa_window(a[h / per], b[h / per], len), p.params.moa.sink);
        break;
      }
    }
  }
  return pairs;
}

double forward_flops(const Problem& p) { return 4.0 * p.d * visible_pairs(p); }
double backward_flops(const Problem& p) { return 2.5 * forward_flops(p); }

}  // namespace moba::cli
