// attention_influence: the CPU backend against the fp64 reference (which recomputes P from q, k
// in fp64) on random problems: several lengths incl. off-tile ones, GQA/MQA, varlen with empty
// and length-1 sequences, bins and sink; plus the row identity sum_j dS_j = 0 and named errors.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "moba/moba.hpp"

namespace {

struct Case {
  std::vector<int> lengths;
  int hq, hkv, dim;
  std::vector<int> edges;
  int sink;
};

struct Data {
  std::vector<float> q, k, v, out, dout, lse;
  std::vector<int> cu;
  int total = 0;
};

moba::TensorView view3(std::vector<float>& x, int total, int heads, int dim) {
  return moba::TensorView::contiguous(x.data(), moba::DType::f32, moba::Device::cpu(),
                                      {total, heads, dim});
}

Data make_data(const Case& c, unsigned seed) {
  Data d;
  d.cu = {0};
  for (int n : c.lengths) d.cu.push_back(d.cu.back() + n);
  d.total = d.cu.back();
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.f);
  auto fill = [&](std::vector<float>& x, std::size_t n, float scale) {
    x.resize(n);
    for (float& e : x) e = normal(rng) * scale;
  };
  fill(d.q, std::size_t(d.total) * c.hq * c.dim, 1.5f);
  fill(d.k, std::size_t(d.total) * c.hkv * c.dim, 1.5f);
  fill(d.v, std::size_t(d.total) * c.hkv * c.dim, 1.f);
  fill(d.dout, std::size_t(d.total) * c.hq * c.dim, 1.f);
  d.out.assign(d.q.size(), 0.f);
  d.lse.assign(std::size_t(c.hq) * d.total, 0.f);
  return d;
}

std::vector<double> influence(const Case& c, Data& d, moba::Backend backend) {
  auto cu = moba::TensorView::contiguous(d.cu.data(), moba::DType::i32, moba::Device::cpu(),
                                         {static_cast<std::int64_t>(d.cu.size())});
  auto q = view3(d.q, d.total, c.hq, c.dim), k = view3(d.k, d.total, c.hkv, c.dim);
  auto v = view3(d.v, d.total, c.hkv, c.dim), out = view3(d.out, d.total, c.hq, c.dim);
  auto dout = view3(d.dout, d.total, c.hq, c.dim);
  auto lse = moba::TensorView::contiguous(d.lse.data(), moba::DType::f32, moba::Device::cpu(),
                                          {c.hq, d.total});
  moba::RunOptions ref;
  ref.backend = moba::Backend::reference;
  moba::attention_forward(q, k, v, cu, moba::AttentionParams::full(), out, lse, {}, ref);
  moba::InfluenceBins bins{c.edges, c.sink};
  moba::RunOptions o;
  o.backend = backend;
  return moba::attention_influence(q, k, v, out, lse, dout, cu, 0.f, bins, o);
}

TEST(Influence, CpuMatchesReference) {
  const std::vector<Case> cases = {
      {{1}, 2, 2, 64, {0}, 0},
      {{37}, 4, 2, 64, {0, 1, 5, 16}, 4},
      {{130, 0, 1, 65}, 4, 1, 64, {0, 8, 64, 100}, 64},
      {{200}, 2, 2, 128, {0, 3, 33, 129, 150}, 7},
      {{96, 97}, 6, 3, 64, {0, 64}, 200},
  };
  unsigned seed = 1;
  for (const Case& c : cases) {
    Data d = make_data(c, seed++);
    const auto truth = influence(c, d, moba::Backend::reference);
    const auto fast = influence(c, d, moba::Backend::cpu);
    ASSERT_EQ(truth.size(), std::size_t(moba::kInfluenceMeasures) * c.hq * 2 * c.edges.size());
    ASSERT_EQ(fast.size(), truth.size());
    // fp32 products of a D-long dot product: error relative to the sum of magnitudes.
    double scale = 0;
    for (double x : truth) scale = std::max(scale, std::fabs(x));
    for (std::size_t i = 0; i < truth.size(); ++i)
      EXPECT_NEAR(fast[i], truth[i], 1e-4 * scale + 1e-6) << "entry " << i << " of case " << seed - 1;
    // Signed dS sums to 0 over each row, so over each head's bins and flags.
    const std::size_t per_head = 2 * c.edges.size();
    for (int h = 0; h < c.hq; ++h) {
      double signed_sum = 0, magnitude = 0;
      for (std::size_t i = 0; i < per_head; ++i) {
        signed_sum += truth[h * per_head + i];
        magnitude += truth[(c.hq + h) * per_head + i];
      }
      EXPECT_NEAR(signed_sum, 0.0, 1e-9 * std::max(1.0, magnitude)) << "head " << h;
      EXPECT_GE(magnitude, 0.0);
    }
  }
}

TEST(Influence, NamedErrors) {
  Case c{{16}, 2, 2, 64, {0, 4}, 2};
  Data d = make_data(c, 7);
  c.edges = {1, 4};
  EXPECT_THROW(influence(c, d, moba::Backend::cpu), moba::Error);
  c.edges = {0, 4, 4};
  try {
    influence(c, d, moba::Backend::reference);
    FAIL() << "expected moba::Error";
  } catch (const moba::Error& e) {
    EXPECT_NE(std::string(e.what()).find("distance_edges"), std::string::npos) << e.what();
  }
  c.edges = {0};
  c.sink = -1;
  EXPECT_THROW(influence(c, d, moba::Backend::cpu), moba::Error);
}

}  // namespace
