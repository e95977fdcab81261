// CUDA paged_attention_backward (src/cuda/paged/) against the fp64 reference backward and the
// CPU paged backward on the same pages.
//
// Each random shape (full / MoBA / MoA, bf16 and f16, head_dim 64 and 128, GQA and MQA, varlen
// with empty and length-1 sequences, topk beyond the blocks, MoA windows shorter than the sink)
// is run through the CPU forward for out, lse and the MoBA selection (the external selection
// the backward takes), its K/V scattered over shuffled pages of size 1, 7, 16 or 64 (pages
// straddle MoBA blocks), and the GPU backward must give the reference's dq, dk, dv within the
// CPU paged backward test's tolerance, for f32 and dtype page gradients, and agree with the CPU
// paged backward. MoBA shapes also run without the own block (a context-parallel rank's call
// over fetched blocks) against the CPU. Then: two cache rows sharing pages (device slots and
// device cu_seqlens), and the refusals (f32, deterministic).
// MOBA_CUDA_PAGED_BWD_SHAPES=<n> sets the number of random shapes (default 40).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>

#include "../cpu/paged_backward_check.hpp"
#include "cuda_test_util.hpp"

namespace moba::testing {
namespace {

int shape_count() {
  const char* v = std::getenv("MOBA_CUDA_PAGED_BWD_SHAPES");
  return v ? std::max(1, std::atoi(v)) : 40;
}

struct Grads {
  HostTensor dq, dk, dv;
};

// One backward call, on the CPU (host views) or on the GPU (everything uploaded; outputs
// poisoned with NaN first so an element left unwritten fails).
struct Call {
  const Shape& s;
  Inputs& in;
  ForwardResult& fwd;
  Paged& pk;
  std::vector<std::int32_t> cu, slots;  // slots empty: identity
  std::vector<std::int32_t> table, lens;
  int rows = 0;
  bool own = true;
  bool cu_on_device = false;

  Call(const Shape& s_, Inputs& in_, ForwardResult& f, Paged& p)
      : s(s_), in(in_), fwd(f), pk(p), cu(in_.cu.begin(), in_.cu.end()), table(p.table), lens(p.lens), rows(p.rows) {}

  PagedAttentionArgs args_of(const TensorView& sel, const TensorView& sl) const {
    PagedAttentionArgs a;
    if (s.params.mode == Mode::moba) a.selection = sel;
    a.slots = sl;
    a.include_own_block = own;
    return a;
  }

  Grads cpu(DType gd) {
    Grads g{HostTensor(s.dtype, in.q.shape), HostTensor(gd, pk.k.shape), HostTensor(gd, pk.k.shape)};
    const int T = s.total(), K = std::max(s.params.topk - 1, 0);
    PagedKV kv;
    kv.k_pages = pk.k.view();
    kv.v_pages = pk.v.view();
    kv.page_table = TensorView::contiguous(table.data(), DType::i32, Device::cpu(), {rows, s.hkv, pk.pages_per_seq});
    kv.seq_lens = TensorView::contiguous(lens.data(), DType::i32, Device::cpu(), {rows});
    const TensorView sel = TensorView::contiguous(fwd.selection.data(), DType::i32, Device::cpu(), {T, s.hq, K});
    const TensorView sl = slots.empty() ? TensorView{}
                                        : TensorView::contiguous(slots.data(), DType::i32, Device::cpu(),
                                                                 {std::int64_t(slots.size())});
    RunOptions o;
    o.backend = Backend::cpu;
    o.num_threads = 2;
    paged_attention_backward(in.q.view(), TensorView::contiguous(cu.data(), DType::i32, Device::cpu(), {std::int64_t(cu.size())}),
                             kv, s.params, args_of(sel, sl), fwd.out.view(),
                             TensorView::contiguous(fwd.lse.data(), DType::f32, Device::cpu(), {s.hq, T}),
                             in.dout.view(), g.dq.view(), g.dk.view(), g.dv.view(), o);
    return g;
  }

  Grads gpu(DType gd) {
    Grads g{HostTensor(s.dtype, in.q.shape), HostTensor(gd, pk.k.shape), HostTensor(gd, pk.k.shape)};
    const int T = s.total(), K = std::max(s.params.topk - 1, 0), D = s.d;
    const std::size_t es = dtype_size(s.dtype);
    DevBuf q(es * in.q.numel()), out(es * fwd.out.numel()), dout(es * in.dout.numel());
    DevBuf kp(es * pk.k.numel()), vp(es * pk.v.numel());
    DevBuf tab(4 * table.size()), ln(4 * lens.size()), sel(4 * std::max<std::size_t>(fwd.selection.size(), 1));
    DevBuf lse(4 * fwd.lse.size()), dcu(4 * cu.size()), dsl(4 * std::max<std::size_t>(slots.size(), 1));
    DevBuf dq(es * in.q.numel()), dk(dtype_size(gd) * pk.k.numel()), dv(dtype_size(gd) * pk.k.numel());
    q.up(in.q.data());
    out.up(fwd.out.data());
    dout.up(in.dout.data());
    kp.up(pk.k.data());
    vp.up(pk.v.data());
    tab.up(table.data());
    ln.up(lens.data());
    if (!fwd.selection.empty()) sel.up(fwd.selection.data());
    lse.up(fwd.lse.data());
    dcu.up(cu.data());
    if (!slots.empty()) dsl.up(slots.data());
    for (DevBuf* b : {&dq, &dk, &dv})
      if (cudaMemset(b->p, 0xFF, b->bytes) != cudaSuccess) throw std::runtime_error("cudaMemset failed");
    PagedKV kv;
    kv.k_pages = dev_view(kp.p, s.dtype, {pk.num_pages, pk.page_size, D});
    kv.v_pages = dev_view(vp.p, s.dtype, {pk.num_pages, pk.page_size, D});
    kv.page_table = dev_view(tab.p, DType::i32, {rows, s.hkv, pk.pages_per_seq});
    kv.seq_lens = dev_view(ln.p, DType::i32, {rows});
    const TensorView cu_v = cu_on_device ? dev_view(dcu.p, DType::i32, {std::int64_t(cu.size())})
                                         : TensorView::contiguous(cu.data(), DType::i32, Device::cpu(),
                                                                  {std::int64_t(cu.size())});
    const TensorView sl = slots.empty() ? TensorView{} : dev_view(dsl.p, DType::i32, {std::int64_t(slots.size())});
    paged_attention_backward(dev_view(q.p, s.dtype, {T, s.hq, D}), cu_v, kv, s.params,
                             args_of(dev_view(sel.p, DType::i32, {T, s.hq, K}), sl),
                             dev_view(out.p, s.dtype, {T, s.hq, D}), dev_view(lse.p, DType::f32, {s.hq, T}),
                             dev_view(dout.p, s.dtype, {T, s.hq, D}), dev_view(dq.p, s.dtype, {T, s.hq, D}),
                             dev_view(dk.p, gd, {pk.num_pages, pk.page_size, D}),
                             dev_view(dv.p, gd, {pk.num_pages, pk.page_size, D}), RunOptions{});
    if (cudaDeviceSynchronize() != cudaSuccess) throw std::runtime_error("kernel failed");
    dq.down(g.dq.data());
    dk.down(g.dk.data());
    dv.down(g.dv.data());
    return g;
  }
};

// err(got, want) <= allowed, with `allowed` the CPU paged backward test's rule: a few times the
// error of rounding the truth to the dtypes involved plus an fp32 floor.
double check(const char* name, const std::vector<double>& got, const std::vector<double>& want, DType in_dtype,
             DType out_dtype, const std::string& where) {
  const double err = l2_diff(got, want);
  const double allowed = 3 * l2_diff(rounded(want, in_dtype), want) + 2 * l2_diff(rounded(want, out_dtype), want) +
                         kFloorBackward * l2(want) + 1e-5 * std::sqrt(double(want.size()));
  EXPECT_LE(err, allowed) << name << " " << where;
  return err / allowed;
}

// GPU vs CPU on identical inputs: both accumulate in fp32 (only the order differs), then round
// to `out_dtype` once, so an element may differ by one unit in the last place of out_dtype
// (< 2^-7 relative for bf16, 2^-10 for f16) plus fp32 order noise.
double check_vs_cpu(const char* name, const std::vector<double>& got, const std::vector<double>& want,
                    DType out_dtype, const std::string& where) {
  const double ulp = out_dtype == DType::bf16 ? 1.0 / 128 : out_dtype == DType::f16 ? 1.0 / 1024 : 0.0;
  const double err = l2_diff(got, want);
  const double allowed = (ulp + kFloorBackward) * l2(want) + 1e-5 * std::sqrt(double(want.size()));
  EXPECT_LE(err, allowed) << name << " " << where;
  return err / allowed;
}

TEST(CudaPagedBackward, MatchesReferenceAndCpuOnScatteredPages) {
  MOBA_SKIP_WITHOUT_GPU();
  std::mt19937 rng(4242);
  RandomShapeOptions opt;
  opt.max_len = 200;
  opt.dtypes = {DType::bf16, DType::f16};
  opt.head_dims = {64, 128};
  double worst = 0, worst_cpu = 0;
  int shapes = 0;
  const int n = shape_count();
  for (int iter = 0; iter < n; ++iter) {
    const Shape s = random_shape(rng, opt);
    if (s.total() == 0) continue;
    Inputs in = make_inputs(s, 5100 + iter);
    ForwardResult fwd = run_forward(s, in, Backend::cpu, 2);
    const BackwardResult truth = truth_backward(s, in, fwd);

    const int page = std::vector<int>{1, 7, 16, 64}[iter % 4];
    Paged pk(s, in, page, rng);
    const DType gd = iter % 3 == 2 ? s.dtype : DType::f32;
    Call call(s, in, fwd, pk);
    call.cu_on_device = iter % 2 == 1;
    const Grads gpu = call.gpu(gd);
    const Grads cpu = call.cpu(gd);
    const std::string where = "page " + std::to_string(page) + " " + s.str();
    const std::vector<double> got[3] = {gpu.dq.as_double(), pk.unpage(s, in, gpu.dk), pk.unpage(s, in, gpu.dv)};
    const std::vector<double> host[3] = {cpu.dq.as_double(), pk.unpage(s, in, cpu.dk), pk.unpage(s, in, cpu.dv)};
    const HostTensor* want[3] = {&truth.dq, &truth.dk, &truth.dv};
    const DType rounding[3] = {s.dtype, gd, gd};
    const char* names[3] = {"dq", "dk", "dv"};
    for (int i = 0; i < 3; ++i) {
      worst = std::max(worst, check(names[i], got[i], want[i]->as_double(), s.dtype, rounding[i], where));
      // GPU vs CPU on identical inputs: both fp32, only the summation order and one rounding differ.
      worst_cpu = std::max(worst_cpu, check_vs_cpu(names[i], got[i], host[i], rounding[i], "vs cpu " + where));
    }
    // Every page element is written (unread pages and tails get 0, not the NaN poison).
    for (std::int64_t i = 0; i < gpu.dk.numel(); ++i)
      ASSERT_FALSE(std::isnan(gpu.dk.get(i)) || std::isnan(gpu.dv.get(i))) << "element " << i << " " << where;
    for (std::int64_t i = 0; i < gpu.dq.numel(); ++i) ASSERT_FALSE(std::isnan(gpu.dq.get(i))) << where;
    if (s.params.mode == Mode::moba) {  // the fetched-blocks-only call of a context-parallel rank
      call.own = false;
      const Grads g2 = call.gpu(DType::f32), c2 = call.cpu(DType::f32);
      check_vs_cpu("dq (no own block)", g2.dq.as_double(), c2.dq.as_double(), s.dtype, where);
      check_vs_cpu("dk (no own block)", g2.dk.as_double(), c2.dk.as_double(), DType::f32, where);
      check_vs_cpu("dv (no own block)", g2.dv.as_double(), c2.dv.as_double(), DType::f32, where);
    }
    ++shapes;
  }
  std::printf("[ cuda paged backward ] %d shapes, worst err/allowed vs fp64 %.3f, vs cpu %.3f\n", shapes, worst,
              worst_cpu);
}

// Two cache rows naming the same pages (a rank holding two pieces of one sequence): the pages
// get the sum of both rows, on device slots and device cu_seqlens.
TEST(CudaPagedBackward, SharedPagesSumOverRowsWithDeviceSlots) {
  MOBA_SKIP_WITHOUT_GPU();
  for (int D : {64, 128}) {
    std::mt19937 rng(91 + D);
    Shape s;
    s.seqlens = {200};
    s.hq = 8;
    s.hkv = 2;
    s.d = D;
    s.dtype = DType::bf16;
    s.params = AttentionParams::moba_blocks(32, 3);
    Inputs in = make_inputs(s, 17);
    ForwardResult fwd = run_forward(s, in, Backend::cpu, 2);
    Paged pk(s, in, 24, rng);  // pages straddle the blocks
    Call call(s, in, fwd, pk);
    // Row 1 (a second cache row with row 0's pages) holds tokens 0..69 (length 70); slot 0
    // serves tokens 70..199. Sequence order reversed by the slots.
    call.table.insert(call.table.end(), pk.table.begin(), pk.table.end());
    call.lens = {200, 70};
    call.rows = 2;
    call.cu = {0, 70, 200};
    call.slots = {1, 0};
    call.cu_on_device = true;
    const Grads gpu = call.gpu(DType::f32), cpu = call.cpu(DType::f32);
    const std::string where = "D=" + std::to_string(D);
    check_vs_cpu("dq", gpu.dq.as_double(), cpu.dq.as_double(), s.dtype, where);
    check_vs_cpu("dk", gpu.dk.as_double(), cpu.dk.as_double(), DType::f32, where);
    check_vs_cpu("dv", gpu.dv.as_double(), cpu.dv.as_double(), DType::f32, where);
    double norm = 0;
    for (double x : gpu.dk.as_double()) norm += std::fabs(x);
    EXPECT_GT(norm, 0.0);
  }
}

TEST(CudaPagedBackward, RefusesWhatItDoesNotSupport) {
  MOBA_SKIP_WITHOUT_GPU();
  std::mt19937 rng(5);
  Shape s;
  s.seqlens = {40};
  s.hq = 2;
  s.hkv = 1;
  s.d = 64;
  s.dtype = DType::bf16;
  s.params = AttentionParams::full();
  Inputs in = make_inputs(s, 3);
  ForwardResult fwd = run_forward(s, in, Backend::cpu, 1);
  Paged pk(s, in, 16, rng);
  // deterministic = true: float atomics cannot promise it; a named unsupported error.
  DevBuf q(2 * in.q.numel()), kp(2 * pk.k.numel()), tab(4 * pk.table.size()), ln(4), lse(4 * fwd.lse.size());
  DevBuf dq(2 * in.q.numel()), dk(4 * pk.k.numel());
  PagedKV kv;
  kv.k_pages = dev_view(kp.p, s.dtype, {pk.num_pages, 16, 64});
  kv.v_pages = kv.k_pages;
  kv.page_table = dev_view(tab.p, DType::i32, {1, 1, pk.pages_per_seq});
  kv.seq_lens = dev_view(ln.p, DType::i32, {1});
  std::vector<std::int32_t> cu{0, 40};
  const TensorView cu_v = TensorView::contiguous(cu.data(), DType::i32, Device::cpu(), {2});
  const TensorView qv = dev_view(q.p, s.dtype, {40, 2, 64});
  RunOptions det;
  det.deterministic = true;
  try {
    paged_attention_backward(qv, cu_v, kv, s.params, {}, qv, dev_view(lse.p, DType::f32, {2, 40}), qv,
                             dev_view(dq.p, s.dtype, {40, 2, 64}), dev_view(dk.p, DType::f32, {pk.num_pages, 16, 64}),
                             dev_view(dk.p, DType::f32, {pk.num_pages, 16, 64}), det);
    ADD_FAILURE() << "deterministic = true on the GPU was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::unsupported) << e.what();
  }
  // dk_pages of another dtype than f32 / q's: invalid argument.
  try {
    paged_attention_backward(qv, cu_v, kv, s.params, {}, qv, dev_view(lse.p, DType::f32, {2, 40}), qv,
                             dev_view(dq.p, s.dtype, {40, 2, 64}), dev_view(dk.p, DType::f16, {pk.num_pages, 16, 64}),
                             dev_view(dk.p, DType::f16, {pk.num_pages, 16, 64}), RunOptions{});
    ADD_FAILURE() << "f16 page gradients for bf16 q were accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::invalid_argument) << e.what();
  }
}

}  // namespace
}  // namespace moba::testing
