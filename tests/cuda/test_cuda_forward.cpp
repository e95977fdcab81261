// CUDA gate + forward against fp64 truth on hundreds of random shapes.
//
// Tolerance. The truth is an fp64 forward over the key sets the GPU's own selection implies
// (selection differences are checked separately, below). A kernel that computes in fp32 and
// rounds only `out` to the input dtype has error e_round = rel_l2(round_dtype(truth), truth).
// The GPU also rounds P to the input dtype before P.V (as every flash kernel does): each p_j
// gets an independent relative error of the same unit roundoff, which adds a second error term
// of about the same size, so rel_l2(gpu, truth) ~ sqrt(2) * e_round. We allow 2 * e_round + 1e-5
// (the floor covers fp32 accumulation, ~1e-6). LSE is computed from fp32 scores: |diff| <=
// 2e-3 + 1e-4 * |lse|. Selection: identical, except where the fp64 scores of the swapped blocks
// differ by less than the fp32 accumulation bound 2 * D * 2^-24 * sum|q_d mean_d| (counted and
// printed).
#include <cstdlib>

#include "cuda_test_util.hpp"

namespace moba::testing {
namespace {

struct Stats {
  int shapes = 0, rows_checked = 0, near_ties = 0;
};

void check_selection(const Shape& s, Inputs& in, const std::vector<std::int32_t>& gpu, Stats& st) {
  const int T = s.total(), past = std::max(s.params.topk - 1, 0);
  if (past == 0) return;
  std::vector<std::int32_t> ref(std::size_t(T) * s.hq * past, -7);
  RunOptions o;
  o.backend = Backend::reference;
  std::vector<int> cu = in.cu;
  moba_gate(in.q.view(), in.k.view(),
            TensorView::contiguous(cu.data(), DType::i32, Device::cpu(), {std::int64_t(cu.size())}),
            s.params, TensorView::contiguous(ref.data(), DType::i32, Device::cpu(), {T, s.hq, past}), o);
  GateScores gs(s, in);
  for (std::size_t b = 0; b + 1 < in.cu.size(); ++b)
    for (int tok = in.cu[b]; tok < in.cu[b + 1]; ++tok)
      for (int h = 0; h < s.hq; ++h) {
        const std::int32_t* g = &gpu[(std::size_t(tok) * s.hq + h) * past];
        const std::int32_t* r = &ref[(std::size_t(tok) * s.hq + h) * past];
        ++st.rows_checked;
        if (std::equal(g, g + past, r)) continue;
        // Same count, ascending, -1 padded, valid blocks; swapped blocks must be near-ties.
        const int own = (tok - in.cu[b]) / s.params.block_size;
        std::vector<int> gv, rv;
        for (int x = 0; x < past; ++x) {
          if (g[x] >= 0) gv.push_back(g[x]);
          if (r[x] >= 0) rv.push_back(r[x]);
          if (x > 0 && g[x] >= 0) ASSERT_GT(g[x], g[x - 1]) << s.str() << " tok " << tok << " h " << h;
          if (g[x] < 0) ASSERT_EQ(g[x], -1) << s.str();
        }
        ASSERT_EQ(gv.size(), rv.size()) << s.str() << " tok " << tok << " h " << h;
        for (int a : gv) ASSERT_LT(a, own) << s.str();
        for (int a : gv)
          for (int c : rv) {
            if (std::find(rv.begin(), rv.end(), a) != rv.end()) continue;  // a is in both
            if (std::find(gv.begin(), gv.end(), c) != gv.end()) continue;
            double sa, ma, sc, mc;
            gs.score(int(b), tok, h, a, sa, ma);
            gs.score(int(b), tok, h, c, sc, mc);
            const double tol = 2.0 * s.d * std::ldexp(1.0, -24) * std::max(ma, mc);
            ASSERT_LE(sc - sa, tol) << s.str() << " tok " << tok << " h " << h << ": GPU chose block "
                                    << a << " (score " << sa << ") over block " << c << " (score "
                                    << sc << ")";
          }
        ++st.near_ties;
      }
}

void check_against_truth(const GpuRun& g, const Truth& t, double e_round);

// Every forward kernel of this device (forward_kernels()) on the shape, against one fp64 truth
// (the gate runs before the kernel choice, so every run must select the same blocks).
void check_forward(const Shape& s, Inputs& in, bool cu_on_device, Stats& st) {
  SCOPED_TRACE(s.str());
  const std::vector<CudaOptions::ForwardKernel> kernels = forward_kernels();
  const GpuRun first = gpu_forward(s, in, cu_on_device, kernels[0]);
  if (s.params.mode == Mode::moba) {
    check_selection(s, in, first.sel, st);
    if (::testing::Test::HasFatalFailure()) return;
  }
  const Truth t = truth_forward(s, in, first.sel);
  std::vector<double> rounded(t.out.size());
  for (std::size_t i = 0; i < t.out.size(); ++i) rounded[i] = detail::round_to(s.dtype, float(t.out[i]));
  const double e_round = rel_l2(rounded, t.out);
  for (std::size_t i = 0; i < kernels.size(); ++i) {
    SCOPED_TRACE(kernel_name(kernels[i]));
    const GpuRun g = i == 0 ? first : gpu_forward(s, in, cu_on_device, kernels[i]);
    EXPECT_EQ(g.sel, first.sel) << "the kernel choice changed the gate's selection";
    check_against_truth(g, t, e_round);
  }
  ++st.shapes;
}

void check_against_truth(const GpuRun& g, const Truth& t, double e_round) {
  const double err = rel_l2(g.out.as_double(), t.out);
  EXPECT_LE(err, 2.0 * e_round + 1e-5) << "rel_l2(gpu, truth) " << err << ", same-precision " << e_round;
  double worst = 0;
  std::size_t worst_i = 0;
  for (std::size_t i = 0; i < t.lse.size(); ++i) {
    const double d = std::fabs(double(g.lse[i]) - t.lse[i]) / (2e-3 + 1e-4 * std::fabs(t.lse[i]));
    if (!(d <= worst)) {
      worst = std::isnan(d) ? INFINITY : d;
      worst_i = i;
    }
  }
  EXPECT_LE(worst, 1.0) << "lse[" << worst_i << "] gpu " << g.lse[worst_i] << " truth " << t.lse[worst_i];
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
  Stats st;
  int by_mode[3] = {0, 0, 0};
  for (int i = 0; i < n; ++i) {
    Shape s = random_shape(rng, opt);
    while (!affordable(s)) s = random_shape(rng, opt);
    Inputs in = make_inputs(s, 1000 + i);
    check_forward(s, in, i % 3 == 0, st);
    ++by_mode[int(s.params.mode)];
    if (HasFailure()) break;
  }
  std::printf("checked %d shapes (full %d, moba %d, moa %d); selection rows %d, near-ties %d\n",
              st.shapes, by_mode[0], by_mode[1], by_mode[2], st.rows_checked, st.near_ties);
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
    check_forward(s, in, false, st);
  }
  std::printf("selection rows %d, near-ties %d\n", st.rows_checked, st.near_ties);
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

}  // namespace
}  // namespace moba::testing
