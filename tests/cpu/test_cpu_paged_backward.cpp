// paged_attention_backward (moba/paged_attention_backward.hpp) against fp64 truth: the one-shot
// layout's reference backward on the same key sets.
//
// Each random shape (every mode, dtype, head_dim, GQA/MQA, varlen with empty and length-1
// sequences, topk beyond the blocks) is run through the CPU forward for out, lse and the MoBA
// selection, then its K/V are scattered over pages of a random size in a shuffled order (page
// ids unrelated to positions) and the paged backward must give the reference's dq, dk, dv with
// the tolerances of the one-shot backward test (tests/cpu/test_cpu_attention.cpp), for f32 and
// dtype page gradients. Also: pages no row sees get 0, a page shared by two cache rows receives
// the sum of both, and bad caches / selections raise named errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "paged_backward_check.hpp"  // Paged, l2; the verification library (test_support.hpp)

namespace moba::testing {
namespace {

struct PagedGrads {
  HostTensor dq, dk_pages, dv_pages;
};

PagedGrads run_paged_backward(const Shape& s, Inputs& in, ForwardResult& fwd, Paged& pk, DType grad_dtype,
                              int threads, bool include_own_block = true) {
  PagedGrads g;
  g.dq = HostTensor(s.dtype, in.q.shape);
  g.dk_pages = HostTensor(grad_dtype, pk.k.shape);
  g.dv_pages = HostTensor(grad_dtype, pk.k.shape);
  g.dk_pages.fill(777.0);  // every element must be written
  g.dv_pages.fill(777.0);
  const int T = s.total();
  std::vector<std::int32_t> cu(in.cu.begin(), in.cu.end());
  PagedAttentionArgs args;
  if (s.params.mode == Mode::moba)
    args.selection = TensorView::contiguous(fwd.selection.data(), DType::i32, Device::cpu(),
                                            {T, s.hq, std::max(s.params.topk - 1, 0)});
  args.include_own_block = include_own_block;
  RunOptions o;
  o.num_threads = threads;
  paged_attention_backward(in.q.view(), TensorView::contiguous(cu.data(), DType::i32, Device::cpu(), {std::int64_t(cu.size())}),
                           pk.view, s.params, args, fwd.out.view(),
                           TensorView::contiguous(fwd.lse.data(), DType::f32, Device::cpu(), {s.hq, T}),
                           in.dout.view(), g.dq.view(), g.dk_pages.view(), g.dv_pages.view(), o);
  return g;
}

TEST(CpuPagedBackward, MatchesReferenceOnScatteredPages) {
  std::mt19937 rng(8642);
  RandomShapeOptions opt;
  opt.max_len = 160;
  double worst = 0;
  int shapes = 0;
  for (int iter = 0; iter < 60; ++iter) {
    const Shape s = random_shape(rng, opt);
    if (s.total() == 0) continue;
    Inputs in = make_inputs(s, 9000 + iter);
    ForwardResult fwd = run_forward(s, in, Backend::cpu, 1);
    const BackwardResult truth = truth_backward(s, in, fwd);

    const int page = std::vector<int>{1, 7, 16, 64}[iter % 4];
    Paged pk(s, in, page, rng);
    const DType gd = iter % 3 == 2 ? s.dtype : DType::f32;
    const PagedGrads got = run_paged_backward(s, in, fwd, pk, gd, iter % 4 == 3 ? 3 : 1);
    const std::vector<double> dk = pk.unpage(s, in, got.dk_pages), dv = pk.unpage(s, in, got.dv_pages);
    const std::vector<double>* mine[] = {nullptr, &dk, &dv};
    const std::vector<double> dq = got.dq.as_double();
    mine[0] = &dq;
    const HostTensor* want[] = {&truth.dq, &truth.dk, &truth.dv};
    const DType rounding[] = {s.dtype, gd, gd};
    const char* names[] = {"dq", "dk", "dv"};
    for (int i = 0; i < 3; ++i) {
      const std::vector<double> t = want[i]->as_double();
      const double norm = l2(t);
      const double err = l2_diff(*mine[i], t);
      const double allowed = 3 * l2_diff(rounded(t, s.dtype), t) + 2 * l2_diff(rounded(t, rounding[i]), t) +
                             kFloorBackward * norm + 1e-5 * std::sqrt(double(t.size()));
      EXPECT_LE(err, allowed) << names[i] << " page " << page << " " << s.str();
      worst = std::max(worst, err / allowed);
    }
    // Pages no row reads (the spare ones, tails past a sequence's end) are 0, not left as is.
    for (std::int64_t i = 0; i < got.dk_pages.numel(); ++i)
      ASSERT_NE(got.dk_pages.get(i), 777.0) << "element " << i << " not written, " << s.str();
    ++shapes;
  }
  std::printf("[ paged backward ] %d shapes, worst err/allowed %.3f\n", shapes, worst);
}

// Two cache rows whose page tables name the same pages (two query chunks of one sequence, as a
// context-parallel rank holding two pieces has): the shared pages get the sum of both rows.
TEST(CpuPagedBackward, SharedPagesSumOverRows) {
  std::mt19937 rng(77);
  Shape s;
  s.seqlens = {96};
  s.hq = 4;
  s.hkv = 2;
  s.d = 64;
  s.dtype = DType::f32;
  s.params = AttentionParams::moba_blocks(16, 3);
  Inputs in = make_inputs(s, 31);
  ForwardResult fwd = run_forward(s, in, Backend::cpu, 1);
  Paged pk(s, in, 16, rng);
  const PagedGrads whole = run_paged_backward(s, in, fwd, pk, DType::f32, 1);

  // Rows 0 and 1 share row 0's pages; row 0 holds tokens 0..39 (seq len 40), row 1 40..95.
  std::vector<std::int32_t> table(pk.table.begin(), pk.table.end());
  table.insert(table.end(), pk.table.begin(), pk.table.end());
  std::vector<std::int32_t> lens{40, 96}, cu{0, 40, 96};
  PagedKV kv = pk.view;
  kv.page_table = TensorView::contiguous(table.data(), DType::i32, Device::cpu(), {2, s.hkv, pk.pages_per_seq});
  kv.seq_lens = TensorView::contiguous(lens.data(), DType::i32, Device::cpu(), {2});
  PagedGrads split;
  split.dq = HostTensor(s.dtype, in.q.shape);
  split.dk_pages = HostTensor(DType::f32, pk.k.shape);
  split.dv_pages = HostTensor(DType::f32, pk.k.shape);
  PagedAttentionArgs args;
  args.selection = TensorView::contiguous(fwd.selection.data(), DType::i32, Device::cpu(), {96, s.hq, 2});
  paged_attention_backward(in.q.view(), TensorView::contiguous(cu.data(), DType::i32, Device::cpu(), {3}), kv,
                           s.params, args, fwd.out.view(),
                           TensorView::contiguous(fwd.lse.data(), DType::f32, Device::cpu(), {s.hq, 96}),
                           in.dout.view(), split.dq.view(), split.dk_pages.view(), split.dv_pages.view());
  for (std::int64_t i = 0; i < whole.dk_pages.numel(); ++i) {
    ASSERT_NEAR(split.dk_pages.get(i), whole.dk_pages.get(i), 1e-5 * (1 + std::fabs(whole.dk_pages.get(i))));
    ASSERT_NEAR(split.dv_pages.get(i), whole.dv_pages.get(i), 1e-5 * (1 + std::fabs(whole.dv_pages.get(i))));
  }
  for (std::int64_t i = 0; i < whole.dq.numel(); ++i) ASSERT_EQ(split.dq.get(i), whole.dq.get(i));
}

TEST(CpuPagedBackward, NamedErrors) {
  std::mt19937 rng(5);
  Shape s;
  s.seqlens = {64};
  s.hq = 2;
  s.hkv = 2;
  s.d = 64;
  s.dtype = DType::bf16;
  s.params = AttentionParams::moba_blocks(16, 2);
  Inputs in = make_inputs(s, 3);
  ForwardResult fwd = run_forward(s, in, Backend::cpu, 1);
  Paged pk(s, in, 16, rng);
  auto expect_error = [&](const char* what) {
    try {
      run_paged_backward(s, in, fwd, pk, DType::f32, 1);
      ADD_FAILURE() << "no error for " << what;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  const std::int32_t saved_sel = fwd.selection[40 * 2 + 1];
  fwd.selection[40 * 2 + 1] = 3;  // token 40 (block 2) may not select block 3
  expect_error("args.selection[40, 1, 0]");
  fwd.selection[40 * 2 + 1] = saved_sel;
  pk.table[1] = -1;  // page 1 of KV head 0 evicted
  expect_error("kv.page_table[0, 0, 1]");
  pk.table[1] = 0;
  HostTensor wrong(DType::f16, pk.k.shape);  // page gradients neither f32 nor bf16
  PagedGrads g;
  g.dq = HostTensor(s.dtype, in.q.shape);
  std::vector<std::int32_t> cu{0, 64};
  PagedAttentionArgs args;
  args.selection = TensorView::contiguous(fwd.selection.data(), DType::i32, Device::cpu(), {64, 2, 1});
  try {
    paged_attention_backward(in.q.view(), TensorView::contiguous(cu.data(), DType::i32, Device::cpu(), {2}),
                             pk.view, s.params, args, fwd.out.view(),
                             TensorView::contiguous(fwd.lse.data(), DType::f32, Device::cpu(), {2, 64}),
                             in.dout.view(), g.dq.view(), wrong.view(), wrong.view());
    ADD_FAILURE() << "no error for f16 page gradients";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("dk_pages"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace moba::testing
