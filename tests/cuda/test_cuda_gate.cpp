// The CUDA MoBA gate on its own (moba_gate with device tensors) against the reference gate, the
// definition of the selection: identical on every (token, head) except where fp32 rounding can
// reorder blocks whose fp64 scores are near-equal (verify/selection_check.hpp, the rule of the
// CPU tests and `moba check`), over many shapes: f16/bf16, head_dim 64/128, block sizes 64..256,
// GQA/MQA, varlen with empty and length-1 sequences, lengths off the block grid, topk from 2
// to beyond the number of blocks, cu_seqlens on the host and on the device. Exact ties (copied
// blocks) must go to the earlier block, with no near-tie allowance.
// The gate has two top-k kernels, both run here: per-thread register lists for topk - 1 <= 8
// (128-row CTAs that may span sequences) and shared-memory lists above that. The register range
// has two score kernels (CudaOptions::gate_kernel): mma.sync (gate_topk_regs.cuh) and sm_90a
// warpgroup MMA (gate_topk_sm90.cuh, where the device and the build run it; its register lists
// reach topk - 1 = 16, where mma.sync uses the shared-memory lists); every check runs
// each of them in this one process against the reference, and the two against each other:
// identical except near ties (different fp32 summation orders), exactly identical on exact ties.
// MOBA_CUDA_GATE_SHAPES=<n> sets the number of random shapes (default 200).
#include <cstdlib>

#include "cuda_test_util.hpp"

namespace moba::testing {
namespace {

int num_shapes() {
  const char* e = std::getenv("MOBA_CUDA_GATE_SHAPES");
  return e ? std::max(1, std::atoi(e)) : 200;
}

const char* gate_kernel_name(CudaOptions::GateKernel k) {
  switch (k) {
    case CudaOptions::GateKernel::sm90_wgmma: return "sm90_wgmma";
    case CudaOptions::GateKernel::sm80_mma_sync: return "sm80_mma_sync";
    default: return "automatic";
  }
}

// A small problem whose gate scores (more past blocks than topk - 1).
Shape probe_shape() {
  Shape s;
  s.seqlens = {700};
  s.hq = s.hkv = 1;
  s.d = 64;
  s.dtype = DType::bf16;
  s.params = AttentionParams::moba_blocks(64, 3);
  return s;
}

// The gate score kernels this device runs: mma.sync always, sm_90a warpgroup MMA where the
// device and the build allow (probed once: forcing it elsewhere throws moba::Error(unsupported)).
const std::vector<CudaOptions::GateKernel>& gate_kernels() {
  static const std::vector<CudaOptions::GateKernel> kernels = [] {
    std::vector<CudaOptions::GateKernel> k{CudaOptions::GateKernel::sm80_mma_sync};
    const Shape s = probe_shape();
    try {
      gpu_gate(s, make_inputs(s, 1), false, CudaOptions::GateKernel::sm90_wgmma);
      k.push_back(CudaOptions::GateKernel::sm90_wgmma);
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::unsupported) throw;
      std::printf("[ gate ] sm90_wgmma does not run here (%s): mma.sync only\n", e.what());
    }
    return k;
  }();
  return kernels;
}

struct GateTally {
  std::int64_t rows = 0, near_ties = 0, kernels_differ = 0;
};

// Every gate kernel on (s, in) against the reference selection (near ties allowed unless
// `exact`), and each further kernel against the first (mma.sync): the same rule, so their rows
// may differ only where their fp32 scores are near-equal (none at all when `exact`).
void check_gate_kernels(const Shape& s, Inputs& in, bool cu_on_device, bool exact = false,
                        GateTally* tally = nullptr) {
  const std::vector<std::int32_t> want = reference_selection(s, in);
  std::vector<std::int32_t> first;
  for (const auto kernel : gate_kernels()) {
    SCOPED_TRACE(gate_kernel_name(kernel));
    const std::vector<std::int32_t> got = gpu_gate(s, in, cu_on_device, kernel);
    const SelectionReport r = compare_selection(s, in, got, want, !exact);
    EXPECT_TRUE(r.ok()) << s.str() << " [" << gate_kernel_name(kernel) << "]: " << r.differ - r.near_ties
                        << " rows differ beyond near ties, first: " << r.first_error;
    if (tally) tally->rows += r.rows, tally->near_ties += r.near_ties;
    if (first.empty()) {
      first = got;
      continue;
    }
    const SelectionReport x = compare_selection(s, in, got, first, !exact);
    EXPECT_TRUE(x.ok()) << s.str() << ": " << gate_kernel_name(kernel) << " and sm80_mma_sync differ on "
                        << x.differ - x.near_ties << " rows beyond near ties, first: " << x.first_error;
    if (tally) tally->kernels_differ += x.differ;
  }
}

TEST(CudaGate, MatchesReferenceOnRandomShapes) {
  MOBA_SKIP_WITHOUT_GPU();
  std::mt19937 rng(20261129);
  RandomShapeOptions opt;
  opt.max_len = 1500;
  opt.dtypes = {DType::f16, DType::bf16};
  opt.modes = {Mode::moba};
  opt.block_sizes = {16, 48, 64, 100, 128, 192, 256};
  GateTally t;
  const int n = num_shapes();
  for (int i = 0; i < n; ++i) {
    Shape s = random_shape(rng, opt);
    if (i % 3 == 0) s.params.topk = 2 + i % 6;  // few blocks kept of many: real choices
    if (i % 7 == 0) s.params.topk = 9;           // mma.sync's register range's largest
    if (i % 11 == 0) s.params.topk = 10 + i % 8;  // sm90's register range beyond it (to 16)
    if (s.params.topk < 2) s.params.topk = 2;
    Inputs in = make_inputs(s, 700 + i, i % 5 == 0 ? 4.0 : 1.0);
    check_gate_kernels(s, in, i % 3 == 1, false, &t);
    if (HasFailure()) break;
  }
  std::printf("[ gate ] %d shapes x %zu kernels, %lld rows with past blocks, %lld near-tie "
              "differences from the reference, %lld rows where the kernels differ (near ties)\n",
              n, gate_kernels().size(), static_cast<long long>(t.rows),
              static_cast<long long>(t.near_ties), static_cast<long long>(t.kernels_differ));
}

// Every key block from the fourth on is a copy of one of the first three, so many blocks have
// identical means and bit-identical scores in any arithmetic; the earlier block must win.
// topk 4 and 8 run the register lists (thread columns interleave: a tie can sit in another
// lane's list), 12 and 17 the shared-memory lists on mma.sync and the register lists on sm90.
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
      for (int topk : {4, 8, 12, 17}) {
        const int B = 64;
        Shape s;
        s.seqlens = {12 * B + 5, 3 * B, 9 * B - 1, 90 * B + 17};
        s.hq = 4, s.hkv = 2, s.d = D, s.dtype = dt;
        s.params = AttentionParams::moba_blocks(B, topk);
        Inputs in = make_inputs(s, 11);
        copy_blocks_mod3(s, in);
        check_gate_kernels(s, in, false, /*exact=*/true);
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
      check_gate_kernels(s, in, i % 2 == 1);
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
    check_gate_kernels(s, in, false);
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
  for (const int topk : {14, 5}) {  // 5: rows of the first blocks in the register range
    s.params.topk = topk;
    for (const auto kernel : gate_kernels()) {
      SCOPED_TRACE(gate_kernel_name(kernel));
      const std::vector<std::int32_t> sel = gpu_gate(s, in, false, kernel);
      const int K = topk - 1;
      for (int t = 0; t < (topk == 14 ? 700 : 4 * 64); ++t)
        for (int h = 0; h < 2; ++h)
          for (int i = 0; i < K; ++i) EXPECT_EQ(sel[(t * 2 + h) * K + i], i < t / 64 ? i : -1) << t;
    }
  }
}

// Every kernel selection of the register range on shapes where one 128-row CTA holds rows of
// several sequences, some scoring and some not (a pass of few blocks keeps all of them), heads
// that share a KV head (GQA 4:1), block sizes below and off the 64-row tile, and a long
// sequence with several means stages (over 128 blocks per row): the sm_90a kernel's passes,
// stage ring and the second wgmma half past the last block.
TEST(CudaGate, PassesAndStagesOfBothKernels) {
  MOBA_SKIP_WITHOUT_GPU();
  int i = 0;
  for (int B : {16, 32, 80, 128})
    for (int topk : {2, 4, 9, 13, 17}) {
      Shape s;
      s.seqlens = {B * 3 + 7, 1, 0, 64, 65, B * (B <= 32 ? 300 : 140) + 33, 127, 2};
      s.hq = 4, s.hkv = 1, s.d = i % 2 ? 128 : 64;
      s.dtype = i % 3 ? DType::f16 : DType::bf16;
      s.params = AttentionParams::moba_blocks(B, topk);
      Inputs in = make_inputs(s, 1300 + i, i % 4 == 1 ? 4.0 : 1.0);
      check_gate_kernels(s, in, i % 2 == 0);
      ++i;
    }
}

// One long sequence of 700 small blocks: the sm_90a kernel's 4-stage ring of 128-block stages
// wraps around (6 stages per pass); small enough for compute-sanitizer.
TEST(CudaGate, StageRingWraps) {
  MOBA_SKIP_WITHOUT_GPU();
  Shape s;
  s.seqlens = {16 * 700 + 5, 300};
  s.hq = 2, s.hkv = 1, s.d = 64, s.dtype = DType::f16;
  s.params = AttentionParams::moba_blocks(16, 6);
  Inputs in = make_inputs(s, 77);
  check_gate_kernels(s, in, true);
}

// Asking for the sm_90a gate where it cannot run is a named error, not a silent fallback.
TEST(CudaGate, Sm90GateWhereItCannotRunIsUnsupported) {
  MOBA_SKIP_WITHOUT_GPU();
  if (gate_kernels().size() > 1) GTEST_SKIP() << "sm90_wgmma runs on this device";
  const Shape s = probe_shape();
  try {
    gpu_gate(s, make_inputs(s, 1), false, CudaOptions::GateKernel::sm90_wgmma);
    FAIL() << "expected moba::Error(unsupported)";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::unsupported) << e.what();
  }
}

}  // namespace
}  // namespace moba::testing
