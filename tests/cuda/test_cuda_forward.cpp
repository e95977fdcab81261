// CUDA gate + forward against the fp64 truth on hundreds of random shapes, by the rules of the
// CPU tests and `moba check` (verify/check.hpp): the truth is fp64 over the key sets of the
// GPU's own selection; out and lse within 2x the error of the reference run in the same dtype
// (the truth rounded once) plus the dtype's floor, in rel_l2 and rel_max (verify/compare.hpp);
// the selection identical to the reference gate's except where the swapped blocks' fp64 scores
// are within fp32 rounding (verify/selection_check.hpp; counted and printed).
#include <cstdlib>
#include <string>

#include "cuda_test_util.hpp"

namespace moba::testing {
namespace {

struct Stats {
  int shapes = 0;
  std::int64_t rows_checked = 0, near_ties = 0;
};

// Every forward kernel of this device (forward_kernels()) on the shape, each checked by the
// verification library against the fp64 truth. The gate runs before the kernel choice, so every
// kernel must report the same selection.
void check_gpu_forward(const Shape& s, Inputs& in, bool cu_on_device, Stats& st) {
  SCOPED_TRACE(s.str());
  const std::vector<CudaOptions::ForwardKernel> kernels = forward_kernels();
  std::vector<std::int32_t> first_sel;
  for (std::size_t i = 0; i < kernels.size(); ++i) {
    SCOPED_TRACE(kernel_name(kernels[i]));
    const GpuRun g = gpu_forward(s, in, cu_on_device, kernels[i]);
    if (i == 0) first_sel = g.sel;
    else EXPECT_EQ(g.sel, first_sel) << "the kernel choice changed the gate's selection";
    const ForwardCheck c = check_forward(s, in, as_forward_result(g));
    MOBA_EXPECT_CHECK_OK(c, s);
    if (i == 0) {
      st.rows_checked += c.selection.rows;
      st.near_ties += c.selection.near_ties;
    }
  }
  ++st.shapes;
}

int env_int(const char* name, int dflt) {
  const char* v = std::getenv(name);
  return v ? std::atoi(v) : dflt;
}

// Keeps the fp64 truth affordable: about sum(len^2) * hq * D multiply-adds.
bool affordable(const Shape& s) {
  double w = 0;
  for (int l : s.seqlens) w += double(l) * l;
  return w * s.hq * s.d <= 3e9;
}

TEST(CudaBackend, RejectsF32WithoutTouchingTheDevice) {
  std::vector<int> cu{0, 64};
  std::vector<float> dummy(1);
  void* fake = reinterpret_cast<void*>(0x1000);
  TensorView q = TensorView::contiguous(fake, DType::f32, Device::cuda(0), {64, 2, 64});
  TensorView lse = TensorView::contiguous(fake, DType::f32, Device::cuda(0), {2, 64});
  RunOptions o;
  o.backend = Backend::cuda;
  try {
    attention_forward(q, q, q, TensorView::contiguous(cu.data(), DType::i32, Device::cpu(), {2}),
                      AttentionParams::full(), q, lse, TensorView{}, o);
    FAIL() << "expected moba::Error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::unsupported) << e.what();
    EXPECT_NE(std::string(e.what()).find("f32"), std::string::npos) << e.what();
  }
}

TEST(CudaForward, RandomShapesMatchFp64Truth) {
  MOBA_SKIP_WITHOUT_GPU();
  const int n = env_int("MOBA_CUDA_TEST_SHAPES", 300);
  std::mt19937 rng(20251113);
  RandomShapeOptions opt;
  opt.max_len = 1000;
  opt.head_dims = {64, 128};
  opt.dtypes = {DType::f16, DType::bf16};
  opt.block_sizes = {16, 48, 64, 100, 128, 192, 256, 320};  // any size >= 16
  // MOBA_CUDA_TEST_MODE=full|moba|moa keeps one mode (a sanitizer run's few shapes then cover it)
  if (const char* m = std::getenv("MOBA_CUDA_TEST_MODE"))
    opt.modes = {std::string(m) == "full" ? Mode::full : std::string(m) == "moa" ? Mode::moa : Mode::moba};
  Stats st;
  int by_mode[3] = {0, 0, 0};
  for (int i = 0; i < n; ++i) {
    Shape s = random_shape(rng, opt);
    while (!affordable(s)) s = random_shape(rng, opt);
    Inputs in = make_inputs(s, 1000 + i);
    check_gpu_forward(s, in, i % 3 == 0, st);
    ++by_mode[int(s.params.mode)];
    if (HasFailure()) break;
  }
  std::printf("checked %d shapes (full %d, moba %d, moa %d); selection rows %lld, near-ties %lld\n",
              st.shapes, by_mode[0], by_mode[1], by_mode[2], static_cast<long long>(st.rows_checked),
              static_cast<long long>(st.near_ties));
}

TEST(CudaForward, LongSequencesAndLargeTopk) {
  MOBA_SKIP_WITHOUT_GPU();
  Stats st;
  struct Case { std::vector<int> lens; int hq, hkv, d; DType t; int block, topk; };
  const Case cases[] = {
      {{4096}, 2, 1, 128, DType::bf16, 64, 3},
      {{3000, 1100}, 4, 2, 64, DType::f16, 64, 40},
      {{2500}, 2, 2, 128, DType::bf16, 128, 8},
      {{4100}, 1, 1, 64, DType::bf16, 64, 64},
      {{2048, 0, 777}, 8, 1, 128, DType::f16, 256, 4},
      {{1500, 600}, 2, 1, 64, DType::bf16, 64, 300},  // topk - 1 beyond the gate's list limit,
                                                      // but no row has that many past blocks
      // Blocks that are not a multiple of 64: tiles whose rows lie in several blocks, partial
      // chunks of gathered blocks, gate rows with fewer past blocks than their tile's last row.
      {{2000, 1, 333}, 4, 2, 64, DType::bf16, 16, 6},
      {{1800}, 2, 1, 128, DType::f16, 16, 120},
      {{2500, 700}, 2, 2, 64, DType::f16, 100, 4},
      {{3000}, 2, 1, 128, DType::bf16, 1000, 2},
      {{9000}, 1, 1, 64, DType::bf16, 4096, 2},
  };
  int i = 0;
  for (const Case& c : cases) {
    Shape s;
    s.seqlens = c.lens;
    s.hq = c.hq;
    s.hkv = c.hkv;
    s.d = c.d;
    s.dtype = c.t;
    s.params = AttentionParams::moba_blocks(c.block, c.topk);
    Inputs in = make_inputs(s, 77 + i++);
    check_gpu_forward(s, in, false, st);
  }
  std::printf("selection rows %lld, near-ties %lld\n", static_cast<long long>(st.rows_checked),
              static_cast<long long>(st.near_ties));
}

// q, k, v as views into one packed [T, hq + 2 hkv, D] tensor (flash-attn's qkv layout), on
// every forward kernel (the TMA descriptors of the warp-specialised one carry the strides).
TEST(CudaForward, StridedOperands) {
  MOBA_SKIP_WITHOUT_GPU();
  const int T = 700, hq = 4, hkv = 2, D = 128, H = hq + 2 * hkv;
  for (const auto kernel : forward_kernels())
  for (Mode mode : {Mode::full, Mode::moba}) {
    SCOPED_TRACE(kernel_name(kernel));
    Shape s;
    s.seqlens = {300, 400};
    s.hq = hq;
    s.hkv = hkv;
    s.d = D;
    s.dtype = DType::bf16;
    s.params = mode == Mode::full ? AttentionParams::full() : AttentionParams::moba_blocks(64, 3);
    Inputs in = make_inputs(s, 5);
    const GpuRun dense = gpu_forward(s, in, false, kernel);
    // Pack.
    HostTensor packed(DType::bf16, {T, H, D});
    for (int t = 0; t < T; ++t)
      for (int d = 0; d < D; ++d) {
        for (int h = 0; h < hq; ++h) packed.set((std::int64_t(t) * H + h) * D + d, in.q.get((std::int64_t(t) * hq + h) * D + d));
        for (int h = 0; h < hkv; ++h) {
          packed.set((std::int64_t(t) * H + hq + h) * D + d, in.k.get((std::int64_t(t) * hkv + h) * D + d));
          packed.set((std::int64_t(t) * H + hq + hkv + h) * D + d, in.v.get((std::int64_t(t) * hkv + h) * D + d));
        }
      }
    DevBuf buf(packed.bytes.size()), o(in.q.bytes.size()), l(std::size_t(T) * hq * 4), sl(std::size_t(T) * hq * 2 * 4);
    buf.up(packed.bytes.data());
    auto view = [&](int h0, int nh) {
      TensorView v = dev_view(static_cast<char*>(buf.p) + std::size_t(h0) * D * 2, DType::bf16, {T, nh, D});
      v.stride[0] = std::int64_t(H) * D;
      return v;
    };
    std::vector<int> cu = in.cu;
    RunOptions opt;
    opt.backend = Backend::cuda;
    opt.cuda.forward_kernel = kernel;
    opt.cuda.forward_persistent = ws_persistent();
    TensorView selv;
    if (mode == Mode::moba) selv = dev_view(sl.p, DType::i32, {T, hq, 2});
    attention_forward(view(0, hq), view(hq, hkv), view(hq + hkv, hkv),
                      TensorView::contiguous(cu.data(), DType::i32, Device::cpu(), {3}), s.params,
                      dev_view(o.p, DType::bf16, {T, hq, D}), dev_view(l.p, DType::f32, {hq, T}), selv, opt);
    CUDA_OK(cudaDeviceSynchronize());
    HostTensor out(DType::bf16, {T, hq, D});
    o.down(out.bytes.data());
    EXPECT_EQ(out.bytes, dense.out.bytes) << "strided and contiguous operands must give identical bits";
  }
}

TEST(CudaForward, RepeatsAreBitIdentical) {
  MOBA_SKIP_WITHOUT_GPU();
  Shape s;
  s.seqlens = {2000, 1500};
  s.hq = 8;
  s.hkv = 2;
  s.d = 128;
  s.dtype = DType::bf16;
  s.params = AttentionParams::moba_blocks(64, 6);
  Inputs in = make_inputs(s, 9);
  for (const auto kernel : forward_kernels()) {
    SCOPED_TRACE(kernel_name(kernel));
    const GpuRun a = gpu_forward(s, in, false, kernel), b = gpu_forward(s, in, false, kernel);
    EXPECT_EQ(a.out.bytes, b.out.bytes);
    EXPECT_EQ(a.lse, b.lse);
    EXPECT_EQ(a.sel, b.sel);
  }
}

// CudaOptions::forward_kernel = sm90_wgmma named the lock-step sm_90a kernel, since removed; the
// value is kept as an alias of sm90_warp_specialized: the same bits where that kernel runs, the
// same named error where it does not.
TEST(CudaForward, Sm90WgmmaIsAnAliasOfWarpSpecialized) {
  MOBA_SKIP_WITHOUT_GPU();
  Shape s;
  s.seqlens = {700, 1};
  s.hq = 4;
  s.hkv = 2;
  s.d = 64;
  s.dtype = DType::f16;
  s.params = AttentionParams::moba_blocks(128, 3);
  Inputs in = make_inputs(s, 11);
  auto run = [&](CudaOptions::ForwardKernel k, GpuRun& g) -> bool {
    try {
      g = gpu_forward(s, in, false, k);
      return true;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::unsupported) << e.what();
      return false;
    }
  };
  GpuRun ws, alias;
  const bool ws_ran = run(CudaOptions::ForwardKernel::sm90_warp_specialized, ws);
  const bool alias_ran = run(CudaOptions::ForwardKernel::sm90_wgmma, alias);
  ASSERT_EQ(ws_ran, alias_ran);
  if (!ws_ran) GTEST_SKIP() << "the sm_90a warp-specialised kernel does not run here";
  EXPECT_EQ(ws.out.bytes, alias.out.bytes);
  EXPECT_EQ(ws.lse, alias.lse);
  EXPECT_EQ(ws.sel, alias.sel);
}

}  // namespace
}  // namespace moba::testing
