// MoBA in one pass on the sm_90a warp-specialised forward (CudaOptions::moba_one_pass): tiles
// whose rows agree on their selected blocks merge the union of those blocks and their own block
// in one online softmax. Checked against the fp64 truth (verify/check.hpp, the GPU's own
// selection fixing the key sets; the selection against the reference gate), with the one-pass
// path on and off, and the statistic (CudaOptions::forward_stats) proving it ran:
//  - coherent inputs (a query block's rows near one vector, key blocks with distinct means):
//    every tile with past blocks runs in one pass; varlen with empty and length-1 sequences,
//    GQA / MQA, D 64 / 128, bf16 / f16, top-k beyond the blocks, blocks 128..512;
//  - mixed inputs (coherent heads beside random ones): some tiles one pass, some waves;
//  - bit-identical repeats, the factor option (0 one-pass tiles at a tiny factor), bad factors;
//  - on the sm_80 kernel the same inputs take the waves (statistic 0) and match the truth.
// CUDA-graph capture of one-pass tiles: test_cuda_graph.cpp (its block-128 shapes).
#include <cmath>

#include "cuda_test_util.hpp"

namespace moba::testing {
namespace {

bool has_ws() {
  for (auto k : forward_kernels())
    if (k == CudaOptions::ForwardKernel::sm90_warp_specialized) return true;
  return false;
}

// Coherent MoBA inputs: q of head h in query block b is u(h, b) + eps * noise; k of KV head g
// in key block j is w(g, j) + noise; v normal. All rows of a block then rank the past blocks
// alike (the gate's scores differ by ~sqrt(D) between blocks, by ~eps sqrt(D) between rows,
// eps = 0.01: a near tie adds at most a block to a union, within every shape's factor below).
// coherent_heads < hq: the other heads keep plain random queries and keys (mixed tiles).
Inputs coherent_inputs(const Shape& s, std::uint32_t seed, int coherent_heads) {
  Inputs in = make_inputs(s, seed);
  std::mt19937 rng(seed * 7 + 1);
  std::normal_distribution<double> nd(0.0, 1.0);
  const int B = s.params.block_size, D = s.d, group = s.hq / s.hkv;
  const std::vector<int> cu = s.cu_seqlens();
  for (std::size_t b = 0; b + 1 < cu.size(); ++b) {
    const int len = cu[b + 1] - cu[b];
    const int nblk = (len + B - 1) / B;
    for (int h = 0; h < s.hq; ++h) {
      if (h >= coherent_heads) continue;
      for (int j = 0; j < nblk; ++j) {
        std::vector<double> u(D);
        for (double& x : u) x = nd(rng);
        for (int t = j * B; t < std::min(len, (j + 1) * B); ++t)
          for (int d = 0; d < D; ++d)
            in.q.set((std::int64_t(cu[b] + t) * s.hq + h) * D + d, u[d] + 0.01 * nd(rng));
      }
    }
    for (int g = 0; g < s.hkv; ++g) {
      if (g * group >= coherent_heads) continue;  // the KV head of a random query head
      for (int j = 0; j < nblk; ++j) {
        std::vector<double> w(D);
        for (double& x : w) x = nd(rng);
        for (int t = j * B; t < std::min(len, (j + 1) * B); ++t)
          for (int d = 0; d < D; ++d)
            in.k.set((std::int64_t(cu[b] + t) * s.hkv + g) * D + d, w[d] + nd(rng));
      }
    }
  }
  return in;
}

Shape moba_shape(std::vector<int> lens, int hq, int hkv, int d, DType t, int block, int topk) {
  Shape s;
  s.seqlens = std::move(lens);
  s.hq = hq;
  s.hkv = hkv;
  s.d = d;
  s.dtype = t;
  s.params = AttentionParams::moba_blocks(block, topk);
  return s;
}

struct OnePassRun {
  GpuRun g;
  CudaForwardStats stats;
};

OnePassRun run_ws(const Shape& s, const Inputs& in, bool one_pass, float factor = 0.f,
           bool cu_on_device = false,
           CudaOptions::ForwardKernel k = CudaOptions::ForwardKernel::sm90_warp_specialized) {
  OnePassRun r;
  CudaOptions o;
  o.moba_one_pass = one_pass;
  o.moba_one_pass_factor = factor;
  o.forward_stats = &r.stats;
  r.g = gpu_forward(s, in, cu_on_device, k, &o);
  return r;
}

void expect_matches_truth(const Shape& s, Inputs& in, const GpuRun& g) {
  const ForwardCheck c = check_forward(s, in, as_forward_result(g));
  MOBA_EXPECT_CHECK_OK(c, s);
}

// Candidate tiles: (128-row tile, head) pairs with past blocks.
long long candidate_tiles(const Shape& s) {
  long long n = 0;
  for (int len : s.seqlens)
    for (int t0 = 0; t0 < len; t0 += 128)
      if (std::min(s.params.topk - 1, t0 / s.params.block_size) > 0) n += s.hq;
  return n;
}

TEST(CudaOnePass, CoherentTilesRunInOnePassAndMatchTruth) {
  MOBA_SKIP_WITHOUT_GPU();
  if (!has_ws()) GTEST_SKIP() << "the sm_90a warp-specialised kernel does not run here";
  const Shape shapes[] = {
      moba_shape({2048}, 4, 4, 128, DType::bf16, 128, 3),
      moba_shape({1500, 0, 1, 700, 129}, 4, 2, 64, DType::f16, 128, 4),  // varlen, GQA
      moba_shape({3000}, 8, 1, 128, DType::f16, 256, 3),                  // MQA
      moba_shape({1024, 900}, 4, 1, 64, DType::bf16, 128, 40),            // top-k beyond blocks
      moba_shape({2600, 300}, 2, 2, 128, DType::bf16, 512, 4),
      moba_shape({1800}, 2, 1, 64, DType::f16, 128, 9),                   // 8 slots
  };
  int i = 0;
  for (const Shape& s : shapes) {
    SCOPED_TRACE(s.str());
    Inputs in = coherent_inputs(s, 100 + i, s.hq);
    const bool dev_cu = i++ % 2 == 1;
    const OnePassRun on = run_ws(s, in, true, 0.f, dev_cu);
    expect_matches_truth(s, in, on.g);
    EXPECT_EQ(on.stats.moba_tiles, candidate_tiles(s));
    EXPECT_EQ(on.stats.one_pass_tiles, on.stats.moba_tiles) << "coherent tiles must all run in one pass";
    EXPECT_GE(on.stats.union_blocks, on.stats.one_pass_tiles);
    const OnePassRun off = run_ws(s, in, false, 0.f, dev_cu);
    expect_matches_truth(s, in, off.g);
    EXPECT_EQ(off.stats.one_pass_tiles, 0);
    EXPECT_EQ(on.g.sel, off.g.sel) << "the one-pass option must not change the selection";
    // on and off agree within the dtype's rounding (both are also within the truth's tolerance)
    double max_lse = 0;
    for (std::size_t e = 0; e < on.g.lse.size(); ++e)
      max_lse = std::max(max_lse, double(std::fabs(on.g.lse[e] - off.g.lse[e])));
    EXPECT_LT(max_lse, 1e-3);
    const OnePassRun again = run_ws(s, in, true, 0.f, dev_cu);
    EXPECT_EQ(again.g.out.bytes, on.g.out.bytes) << "repeats must be bit-identical";
    EXPECT_EQ(again.g.lse, on.g.lse);
    if (HasFailure()) return;
  }
}

TEST(CudaOnePass, MixedTilesSplitBetweenOnePassAndWaves) {
  MOBA_SKIP_WITHOUT_GPU();
  if (!has_ws()) GTEST_SKIP() << "the sm_90a warp-specialised kernel does not run here";
  const Shape shapes[] = {
      moba_shape({4096}, 4, 2, 128, DType::bf16, 128, 4),
      moba_shape({3000, 1, 0, 1300}, 4, 4, 64, DType::f16, 128, 3),
      moba_shape({5000}, 2, 1, 64, DType::bf16, 256, 3),
  };
  int i = 0;
  for (const Shape& s : shapes) {
    SCOPED_TRACE(s.str());
    Inputs in = coherent_inputs(s, 300 + i, s.hq / 2);  // half the heads coherent
    const OnePassRun on = run_ws(s, in, true, 0.f, i++ % 2 == 0);
    expect_matches_truth(s, in, on.g);
    EXPECT_GT(on.stats.one_pass_tiles, 0);
    EXPECT_LT(on.stats.one_pass_tiles, on.stats.moba_tiles) << "random heads should take the waves";
    const OnePassRun off = run_ws(s, in, false);
    EXPECT_EQ(on.g.sel, off.g.sel);
    if (HasFailure()) return;
  }
}

TEST(CudaOnePass, FactorDecidesAndBadFactorsAreErrors) {
  MOBA_SKIP_WITHOUT_GPU();
  if (!has_ws()) GTEST_SKIP() << "the sm_90a warp-specialised kernel does not run here";
  const Shape s = moba_shape({3000, 700}, 2, 1, 128, DType::bf16, 128, 3);  // up to 22 past blocks
  Inputs in = make_inputs(s, 41);  // random: unions grow with the position
  const OnePassRun tiny = run_ws(s, in, true, 1e-6f);
  EXPECT_EQ(tiny.stats.one_pass_tiles, 0) << "a union of >= 1 block exceeds 1e-6 x n";
  expect_matches_truth(s, in, tiny.g);
  const OnePassRun huge = run_ws(s, in, true, 1e9f);  // every tile whose union fits the cap
  expect_matches_truth(s, in, huge.g);
  const OnePassRun dflt = run_ws(s, in, true);
  EXPECT_GT(huge.stats.one_pass_tiles, dflt.stats.one_pass_tiles);
  EXPECT_GT(huge.stats.one_pass_tiles, 0);
  EXPECT_LT(huge.stats.one_pass_tiles, huge.stats.moba_tiles) << "unions over 16 blocks exist";
  for (float bad : {-1.f, NAN, INFINITY}) {
    try {
      run_ws(s, in, true, bad);
      ADD_FAILURE() << "factor " << bad << " accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::invalid_argument) << e.what();
    }
  }
}

TEST(CudaOnePass, Sm80KernelTakesTheWaves) {
  MOBA_SKIP_WITHOUT_GPU();
  const Shape s = moba_shape({1500, 1}, 4, 2, 64, DType::bf16, 128, 3);
  Inputs in = coherent_inputs(s, 55, s.hq);
  const OnePassRun r = run_ws(s, in, true, 0.f, false, CudaOptions::ForwardKernel::sm80_mma_sync);
  EXPECT_EQ(r.stats.one_pass_tiles, 0);
  expect_matches_truth(s, in, r.g);
}

// The graph test's block-128 shapes (random inputs) do run one-pass tiles on the sm_90a kernel,
// all of them for the short sequences and a mix for the long one.
TEST(CudaOnePass, GraphTestShapesRunOnePassTiles) {
  MOBA_SKIP_WITHOUT_GPU();
  if (!has_ws()) GTEST_SKIP() << "the sm_90a warp-specialised kernel does not run here";
  const Shape all = moba_shape({1100, 0, 900}, 2, 2, 128, DType::bf16, 128, 5);
  const Shape mixed = moba_shape({2600, 1}, 2, 1, 64, DType::f16, 128, 3);
  Inputs in_all = make_inputs(all, 31), in_mixed = make_inputs(mixed, 31);
  const OnePassRun a = run_ws(all, in_all, true, 0.f, true), m = run_ws(mixed, in_mixed, true, 0.f, true);
  EXPECT_EQ(a.stats.one_pass_tiles, a.stats.moba_tiles);
  EXPECT_GT(m.stats.one_pass_tiles, 0);
  EXPECT_LT(m.stats.one_pass_tiles, m.stats.moba_tiles);
}

}  // namespace
}  // namespace moba::testing
