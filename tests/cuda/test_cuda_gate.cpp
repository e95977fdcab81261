// The CUDA MoBA gate on its own (moba_gate with device tensors) against the reference gate, the
// definition of the selection: identical on every (token, head) except where fp32 rounding can
// reorder blocks whose fp64 scores are near-equal (verify/selection_check.hpp, the rule of the
// CPU tests and `moba check`), over many shapes: f16/bf16, head_dim 64/128, block sizes 64..256,
// GQA/MQA, varlen with empty and length-1 sequences, lengths off the block grid, topk from 2
// to beyond the number of blocks, cu_seqlens on the host and on the device. Exact ties (copied
// blocks) must go to the earlier block, with no near-tie allowance.
// The gate has two top-k kernels, both run here: per-thread register lists for topk - 1 <= 8
// (gate_topk_regs.cuh, 128-row CTAs that may span sequences) and shared-memory lists above that.
// MOBA_CUDA_GATE_SHAPES=<n> sets the number of random shapes (default 200).
#include <cstdlib>

#include "cuda_test_util.hpp"

namespace moba::testing {
namespace {

int num_shapes() {
  const char* e = std::getenv("MOBA_CUDA_GATE_SHAPES");
  return e ? std::max(1, std::atoi(e)) : 200;
}

TEST(CudaGate, MatchesReferenceOnRandomShapes) {
  MOBA_SKIP_WITHOUT_GPU();
  std::mt19937 rng(20261129);
  RandomShapeOptions opt;
  opt.max_len = 1500;
  opt.dtypes = {DType::f16, DType::bf16};
  opt.modes = {Mode::moba};
  opt.block_sizes = {64, 128, 192, 256};
  std::int64_t rows = 0, near_ties = 0;
  const int n = num_shapes();
  for (int i = 0; i < n; ++i) {
    Shape s = random_shape(rng, opt);
    if (i % 3 == 0) s.params.topk = 2 + i % 6;  // few blocks kept of many: real choices
    if (s.params.topk < 2) s.params.topk = 2;
    Inputs in = make_inputs(s, 700 + i, i % 5 == 0 ? 4.0 : 1.0);
    const std::vector<std::int32_t> got = gpu_gate(s, in, i % 3 == 1);
    const SelectionReport r = compare_selection(s, in, got, reference_selection(s, in));
    EXPECT_TRUE(r.ok()) << s.str() << ": " << r.differ - r.near_ties
                        << " rows differ beyond near ties, first: " << r.first_error;
    rows += r.rows;
    near_ties += r.near_ties;
    if (HasFailure()) break;
  }
  std::printf("[ gate ] %d shapes, %lld rows with past blocks, %lld near-tie differences\n", n,
              static_cast<long long>(rows), static_cast<long long>(near_ties));
}

// Every key block from the fourth on is a copy of one of the first three, so many blocks have
// identical means and bit-identical scores in any arithmetic; the earlier block must win.
// topk 4 and 8 run the register lists (thread columns interleave: a tie can sit in another
// lane's list), 12 the shared-memory lists.
void copy_blocks_mod3(const Shape& s, Inputs& in) {
  const int B = s.params.block_size, D = s.d;
  for (std::size_t b = 0; b + 1 < in.cu.size(); ++b)
    for (int t = 3 * B; t < in.cu[b + 1] - in.cu[b]; ++t)
      for (int g = 0; g < s.hkv; ++g)
        for (int d = 0; d < D; ++d) {
          const int src = ((t / B) % 3) * B + t % B;
          in.k.set((std::int64_t(in.cu[b] + t) * s.hkv + g) * D + d,
                   in.k.get((std::int64_t(in.cu[b] + src) * s.hkv + g) * D + d));
        }
}

TEST(CudaGate, ExactTiesGoToTheEarlierBlock) {
  MOBA_SKIP_WITHOUT_GPU();
  for (DType dt : {DType::bf16, DType::f16})
    for (int D : {64, 128})
      for (int topk : {4, 8, 12}) {
        const int B = 64;
        Shape s;
        s.seqlens = {12 * B + 5, 3 * B, 9 * B - 1, 90 * B + 17};
        s.hq = 4, s.hkv = 2, s.d = D, s.dtype = dt;
        s.params = AttentionParams::moba_blocks(B, topk);
        Inputs in = make_inputs(s, 11);
        copy_blocks_mod3(s, in);
        const SelectionReport r =
            compare_selection(s, in, gpu_gate(s, in), reference_selection(s, in), false);
        EXPECT_TRUE(r.ok()) << s.str() << ": " << r.first_error;
      }
}

// Both top-k kernels at the edges of the register path (topk - 1 = 3, 4, 5, 7, 8, 9): many
// 64-block chunks, small and off-grid blocks (16, 48, 100), 128-row CTAs whose two 64-row tiles
// lie in different sequences (lengths off the 64 grid, empty and length-1 sequences between),
// GQA, both dtypes and head dims, cu_seqlens on the host and on the device.
TEST(CudaGate, RegisterListEdges) {
  MOBA_SKIP_WITHOUT_GPU();
  int i = 0;
  for (int topk : {4, 5, 6, 8, 9, 10})
    for (int B : {16, 48, 100}) {
      Shape s;
      s.seqlens = {70, 0, 1, 2900 + 37 * i, 130, 64, 1000};
      s.hq = 4, s.hkv = i % 2 ? 1 : 2, s.d = i % 3 ? 64 : 128;
      s.dtype = i % 2 ? DType::f16 : DType::bf16;
      s.params = AttentionParams::moba_blocks(B, topk);
      Inputs in = make_inputs(s, 900 + i, i % 4 == 0 ? 4.0 : 1.0);
      const SelectionReport r =
          compare_selection(s, in, gpu_gate(s, in, i % 2 == 1), reference_selection(s, in));
      EXPECT_TRUE(r.ok()) << s.str() << ": " << r.differ - r.near_ties
                          << " rows differ beyond near ties, first: " << r.first_error;
      ++i;
    }
}

// Increasing scores (each block's mean a larger multiple of one key row, the queries that row):
// every score beats the lists, the worst case of the register lists' updates.
TEST(CudaGate, AscendingScores) {
  MOBA_SKIP_WITHOUT_GPU();
  for (int topk : {3, 8, 20}) {
    const int B = 16, D = 64;
    Shape s;
    s.seqlens = {1500, 333};
    s.hq = 2, s.hkv = 1, s.d = D, s.dtype = DType::f16;
    s.params = AttentionParams::moba_blocks(B, topk);
    Inputs in = make_inputs(s, 3);
    for (std::size_t b = 0; b + 1 < in.cu.size(); ++b)
      for (int t = 0; t < in.cu[b + 1] - in.cu[b]; ++t)
        for (int d = 0; d < D; ++d) {
          const std::int64_t row = in.cu[b] + t;
          in.k.set(row * D + d, d == 0 ? 0.001 * (t / B + 1) : 0.0);  // mean: (0.001 (j + 1), 0, ..)
          for (int h = 0; h < s.hq; ++h) in.q.set((row * s.hq + h) * D + d, d == 0 ? 1.0 : 0.0);
        }
    const SelectionReport r = compare_selection(s, in, gpu_gate(s, in), reference_selection(s, in));
    EXPECT_TRUE(r.ok()) << s.str() << ": " << r.first_error;
  }
}

// topk beyond the number of past blocks keeps them all, in order, -1 padded.
TEST(CudaGate, TopkBeyondBlocks) {
  MOBA_SKIP_WITHOUT_GPU();
  Shape s;
  s.seqlens = {700, 0, 1, 300};
  s.hq = 2, s.hkv = 1, s.d = 128, s.dtype = DType::bf16;
  s.params = AttentionParams::moba_blocks(64, 14);
  Inputs in = make_inputs(s, 5);
  const std::vector<std::int32_t> sel = gpu_gate(s, in);
  for (int t = 0; t < 700; ++t)
    for (int h = 0; h < 2; ++h)
      for (int i = 0; i < 13; ++i) EXPECT_EQ(sel[(t * 2 + h) * 13 + i], i < t / 64 ? i : -1) << t;
}

}  // namespace
}  // namespace moba::testing
