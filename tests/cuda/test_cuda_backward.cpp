// CUDA backward against fp64 reference gradients on random shapes.
//
// The saved forward state (out, lse, selection) comes from the CPU reference forward and is
// copied to the GPU, so the backward is tested independently of the GPU forward.
//
// Tolerance. The truth is the reference backward on f32 copies of the inputs (fp64 inside).
// A bf16/f16 implementation cannot match it exactly: it sees `out` rounded to the dtype (in
// D = <dout, out>), lse in fp32, and feeds P and dS to the tensor cores rounded to the dtype
// (as every flash-style backward does), then rounds dq/dk/dv once. We build exactly that
// implementation on the CPU ("emulated": fp64 arithmetic, those roundings, nothing else) and
// require rel_l2(gpu, truth) <= 2 * rel_l2(emulated, truth) + 1e-5; the floor covers fp32
// accumulation (~1e-6). rel_l2 is normalised by max(||truth||, 1e-3 * sqrt(n)), so a gradient
// that is exactly zero in truth (e.g. a length-1 sequence, where dS = 0) is compared in
// absolute terms instead of dividing by zero. Outputs are poisoned (NaN) before every call and
// NaN never passes. Deterministic mode must be bit-identical on repeats.
// MOBA_CUDA_BWD_SHAPES=<n> sets the number of random shapes (default 40), e.g. for
// compute-sanitizer runs. Every case runs through each backward key-pass kernel of the device
// (CudaOptions::backward_kernel: sm80_mma_sync, and sm90_wgmma and sm90_warp_specialized on
// sm_90a builds and devices; MOBA_CUDA_TEST_BWD_KERNELS=sm90_wgmma,... keeps only the listed ones).
#include <cstdlib>

#include "cuda/backward/bwd_stats.hpp"
#include "cuda_test_util.hpp"

namespace moba::testing {
namespace {

int num_shapes(int dflt) {
  const char* e = std::getenv("MOBA_CUDA_BWD_SHAPES");
  return e ? std::max(1, std::atoi(e)) : dflt;
}

RandomShapeOptions gpu_options() {
  RandomShapeOptions o;
  o.max_len = 260;
  o.max_batch = 3;
  o.head_dims = {64, 128};
  o.dtypes = {DType::f16, DType::bf16};
  o.modes = {Mode::full, Mode::moba, Mode::moba, Mode::moa};
  o.block_sizes = {16, 48, 64, 100, 128, 192};
  return o;
}

// The emulated low-precision backward described at the top (fp64 arithmetic; out, P and dS
// rounded to the dtype; lse as given in f32; outputs rounded to the dtype).
BackwardResult emulated_backward(const Shape& s, const Inputs& in, const ForwardResult& fwd) {
  const detail::Problem p = problem_of(s);
  const int T = s.total(), D = s.d, past = p.past_k();
  const std::vector<double> q = in.q.as_double(), k = in.k.as_double(), v = in.v.as_double();
  const std::vector<double> dout = in.dout.as_double(), out = fwd.out.as_double();
  std::vector<double> dq(std::size_t(T) * s.hq * D, 0.0), dk(std::size_t(T) * s.hkv * D, 0.0),
      dv(dk.size(), 0.0);
  auto rd = [&](double x) { return double(detail::round_to(s.dtype, static_cast<float>(x))); };
  std::vector<int> keys;
  for (std::size_t b = 0; b + 1 < in.cu.size(); ++b) {
    const int begin = in.cu[b], len = in.cu[b + 1] - begin;
    for (int tok = begin; tok < begin + len; ++tok)
      for (int h = 0; h < s.hq; ++h) {
        const int hk = h / (s.hq / s.hkv);
        keys.clear();
        const std::int32_t* sp = past ? fwd.selection.data() + (std::size_t(tok) * s.hq + h) * past : nullptr;
        detail::for_each_visible_range(p, len, tok - begin, h, sp, [&](int kb, int ke) {
          for (int j = kb; j < ke; ++j) keys.push_back(begin + j);
        });
        const std::size_t qi = (std::size_t(tok) * s.hq + h) * D;
        const double lse = fwd.lse[std::size_t(h) * T + tok];
        double Dt = 0;
        for (int d = 0; d < D; ++d) Dt += dout[qi + d] * out[qi + d];
        for (int key : keys) {
          const std::size_t ki = (std::size_t(key) * s.hkv + hk) * D;
          double sc = 0, dp = 0;
          for (int d = 0; d < D; ++d) {
            sc += q[qi + d] * k[ki + d];
            dp += dout[qi + d] * v[ki + d];
          }
          const double pr = std::exp(sc * p.scale - lse);
          const double ds = rd(pr * (dp - Dt));
          const double prr = rd(pr);
          for (int d = 0; d < D; ++d) {
            dv[ki + d] += prr * dout[qi + d];
            dk[ki + d] += p.scale * ds * q[qi + d];
            dq[qi + d] += p.scale * ds * k[ki + d];
          }
        }
      }
  }
  BackwardResult r;
  r.dq = HostTensor(s.dtype, {T, s.hq, D});
  r.dk = HostTensor(s.dtype, {T, s.hkv, D});
  r.dv = HostTensor(s.dtype, {T, s.hkv, D});
  for (std::size_t i = 0; i < dq.size(); ++i) r.dq.set(std::int64_t(i), dq[i]);
  for (std::size_t i = 0; i < dk.size(); ++i) {
    r.dk.set(std::int64_t(i), dk[i]);
    r.dv.set(std::int64_t(i), dv[i]);
  }
  return r;
}

// Backward on the GPU through the public API; dq/dk/dv poisoned (all bits set: NaN) first.
BackwardResult gpu_backward(const Shape& s, const Inputs& in, const ForwardResult& fwd,
                            bool deterministic, bool cu_on_device, const CudaOptions& cuda = {}) {
  const std::int64_t T = s.total();
  const int past = s.params.mode == Mode::moba ? std::max(s.params.topk - 1, 0) : 0;
  DevBuf q(in.q.bytes.size()), k(in.k.bytes.size()), v(in.v.bytes.size()), dout(in.dout.bytes.size());
  DevBuf o(fwd.out.bytes.size()), l(fwd.lse.size() * 4), sl(fwd.selection.size() * 4 + 4);
  DevBuf dq(in.q.bytes.size()), dk(in.k.bytes.size()), dv(in.v.bytes.size()), cu(in.cu.size() * 4);
  q.up(in.q.bytes.data());
  k.up(in.k.bytes.data());
  v.up(in.v.bytes.data());
  dout.up(in.dout.bytes.data());
  o.up(fwd.out.bytes.data());
  l.up(fwd.lse.data());
  if (!fwd.selection.empty()) {
    if (cudaMemcpy(sl.p, fwd.selection.data(), fwd.selection.size() * 4, cudaMemcpyHostToDevice) != cudaSuccess)
      throw std::runtime_error("cudaMemcpy failed");
  }
  cu.up(in.cu.data());
  for (DevBuf* b : {&dq, &dk, &dv})
    if (cudaMemset(b->p, 0xff, b->bytes) != cudaSuccess) throw std::runtime_error("cudaMemset failed");
  std::vector<int> cu_host = in.cu;
  TensorView cuv = cu_on_device ? dev_view(cu.p, DType::i32, {std::int64_t(in.cu.size())})
                                : TensorView::contiguous(cu_host.data(), DType::i32, Device::cpu(),
                                                         {std::int64_t(in.cu.size())});
  TensorView selv;
  if (s.params.mode == Mode::moba) selv = dev_view(sl.p, DType::i32, {T, s.hq, past});
  RunOptions opt;
  opt.backend = Backend::cuda;
  opt.deterministic = deterministic;
  opt.cuda = cuda;
  attention_backward(dev_view(q.p, s.dtype, {T, s.hq, s.d}), dev_view(k.p, s.dtype, {T, s.hkv, s.d}),
                     dev_view(v.p, s.dtype, {T, s.hkv, s.d}), dev_view(o.p, s.dtype, {T, s.hq, s.d}),
                     dev_view(l.p, DType::f32, {s.hq, T}), dev_view(dout.p, s.dtype, {T, s.hq, s.d}), cuv,
                     s.params, selv, dev_view(dq.p, s.dtype, {T, s.hq, s.d}),
                     dev_view(dk.p, s.dtype, {T, s.hkv, s.d}), dev_view(dv.p, s.dtype, {T, s.hkv, s.d}), opt);
  const cudaError_t e = cudaDeviceSynchronize();
  if (e != cudaSuccess) throw std::runtime_error(std::string("kernel failed: ") + cudaGetErrorString(e));
  BackwardResult r;
  r.dq = HostTensor(s.dtype, {T, s.hq, s.d});
  r.dk = HostTensor(s.dtype, {T, s.hkv, s.d});
  r.dv = HostTensor(s.dtype, {T, s.hkv, s.d});
  dq.down(r.dq.bytes.data());
  dk.down(r.dk.bytes.data());
  dv.down(r.dv.bytes.data());
  return r;
}

double rel_err(const std::vector<double>& a, const std::vector<double>& truth) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double d = a[i] - truth[i];
    num += std::isnan(d) ? INFINITY : d * d;
    den += truth[i] * truth[i];
  }
  const double floor = 1e-3 * std::sqrt(double(std::max<std::size_t>(a.size(), 1)));
  return std::sqrt(num) / std::max(std::sqrt(den), floor);
}

struct Case {
  Shape shape;
  Inputs in;
  ForwardResult fwd;
  BackwardResult truth, emul;
};

// The two yardsticks of a case whose saved forward state is set: the fp64 truth (the reference
// on f32 copies of everything; it recomputes P and ignores out/lse) and the emulated bf16/f16
// backward whose error the GPU may double.
void set_yardsticks(Case& c) {
  c.truth = truth_backward(c.shape, c.in, c.fwd);
  c.emul = emulated_backward(c.shape, c.in, c.fwd);
}

Case make_case(const Shape& s, std::uint32_t seed) {
  Case c{s, make_inputs(s, seed), {}, {}, {}};
  c.fwd = run_forward(s, c.in, Backend::reference);
  set_yardsticks(c);
  return c;
}

double g_worst_ratio = 0;  // max over checks of gpu err / emulated err (printed)

double rms(const HostTensor& t) {
  double s = 0;
  const std::vector<double> v = t.as_double();
  for (double x : v) s += x * x;
  return std::sqrt(s / double(std::max<std::size_t>(v.size(), 1)));
}

// The fp32 accumulation noise rel_err may add on top of twice the emulation's error. dS =
// P (dP - D) subtracts two sums of the same d products (D_t = <dout_t, out_t>, dP = <dout, v>)
// taken in different orders on the GPU; where the exact dS cancels (a row that sees one key:
// dq = dk = 0) the emulation, which sums in one order, is exact and the GPU is off by fp32
// rounding of those sums (seen: 4e-6 absolute over 256 values). Bound: 2^-20 * sqrt(d) per
// product sum, times scale and the operand sizes, per element, in rel_err's units.
double fp32_noise(const Case& c, std::size_t n, const std::vector<double>& truth) {
  const Shape& s = c.shape;
  const double scale = s.params.softmax_scale != 0.f ? s.params.softmax_scale : 1.0 / std::sqrt(double(s.d));
  const double per_element = std::ldexp(1.0, -20) * std::sqrt(double(s.d)) * scale * rms(c.in.dout) *
                             rms(c.in.v) * std::max(rms(c.in.q), rms(c.in.k));
  double den = 0;
  for (double t : truth) den += t * t;
  const double floor = 1e-3 * std::sqrt(double(std::max<std::size_t>(n, 1)));
  return per_element * std::sqrt(double(n)) / std::max(std::sqrt(den), floor);
}

void check_against_truth(const Case& c, const BackwardResult& g, const char* what) {
  const char* names[3] = {"dq", "dk", "dv"};
  const HostTensor* gs[3] = {&g.dq, &g.dk, &g.dv};
  const HostTensor* ts[3] = {&c.truth.dq, &c.truth.dk, &c.truth.dv};
  const HostTensor* es[3] = {&c.emul.dq, &c.emul.dk, &c.emul.dv};
  for (int i = 0; i < 3; ++i) {
    const std::vector<double> t = ts[i]->as_double();
    const double eg = rel_err(gs[i]->as_double(), t), ee = rel_err(es[i]->as_double(), t);
    if (ee > 1e-4) g_worst_ratio = std::max(g_worst_ratio, eg / ee);
    EXPECT_LE(eg, 2.0 * ee + 1e-5 + fp32_noise(c, t.size(), t)) << what << " " << names[i] << ": gpu err " << eg
                                   << " vs emulated low-precision err " << ee << " | " << c.shape.str();
  }
}

bool same_bits(const BackwardResult& a, const BackwardResult& b) {
  return a.dq.bytes == b.dq.bytes && a.dk.bytes == b.dk.bytes && a.dv.bytes == b.dv.bytes;
}

const char* backward_kernel_name(CudaOptions::BackwardKernel k) {
  switch (k) {
    case CudaOptions::BackwardKernel::sm80_mma_sync: return "sm80_mma_sync";
    case CudaOptions::BackwardKernel::sm90_wgmma: return "sm90_wgmma";
    case CudaOptions::BackwardKernel::sm90_warp_specialized: return "sm90_warp_specialized";
    default: return "automatic";
  }
}

// The backward key-pass kernels this device runs, each test case goes through all of them:
// sm80_mma_sync always; sm90_wgmma where it can run (else skipped with a message, once).
// MOBA_CUDA_TEST_BWD_KERNELS=<comma list of names> keeps only those (e.g. to isolate the new
// kernel under compute-sanitizer).
std::vector<CudaOptions::BackwardKernel> backward_kernels();

void run_case_with(const Case& c, int idx, CudaOptions::BackwardKernel kernel) {
  SCOPED_TRACE(backward_kernel_name(kernel));
  CudaOptions base;
  base.backward_kernel = kernel;
  const BackwardResult fast = gpu_backward(c.shape, c.in, c.fwd, false, idx % 2 == 1, base);
  check_against_truth(c, fast, "default");
  CudaOptions narrow = base;  // 64-key tiles everywhere (the path of MoBA blocks not a multiple of 128)
  narrow.backward_key_tile = 64;
  check_against_truth(c, gpu_backward(c.shape, c.in, c.fwd, false, idx % 2 == 0, narrow), "64-key tiles");
  CudaOptions atomic = base;  // every dQ by atomics in the key pass
  atomic.backward_dq_all_atomic = true;
  check_against_truth(c, gpu_backward(c.shape, c.in, c.fwd, false, idx % 2 == 1, atomic), "all-atomic dQ");
  if (kernel == CudaOptions::BackwardKernel::sm90_wgmma ||
      kernel == CudaOptions::BackwardKernel::sm90_warp_specialized) {  // dQ by per-thread atomics, not bulk reduce-adds
    CudaOptions per_thread = base;
    per_thread.backward_dq_bulk_reduce = false;
    check_against_truth(c, gpu_backward(c.shape, c.in, c.fwd, false, idx % 2 == 0, per_thread), "dQ atomics");
    per_thread.backward_dq_all_atomic = true;
    check_against_truth(c, gpu_backward(c.shape, c.in, c.fwd, false, idx % 2 == 1, per_thread), "all-atomic dQ, atomics");
  }
  if (kernel == CudaOptions::BackwardKernel::sm90_warp_specialized) {  // implicit rows by cp.async, not TMA
    CudaOptions gather = base;
    gather.backward_row_tma = false;
    check_against_truth(c, gpu_backward(c.shape, c.in, c.fwd, false, idx % 2 == 0, gather), "rows by cp.async");
    gather.backward_dq_all_atomic = true;
    check_against_truth(c, gpu_backward(c.shape, c.in, c.fwd, false, idx % 2 == 1, gather), "rows by cp.async, all-atomic dQ");
  }
  const BackwardResult d1 = gpu_backward(c.shape, c.in, c.fwd, true, idx % 2 == 0, base);
  check_against_truth(c, d1, "deterministic");
  const BackwardResult d2 = gpu_backward(c.shape, c.in, c.fwd, true, idx % 2 == 1, base);
  EXPECT_TRUE(same_bits(d1, d2)) << "deterministic mode not bit-identical on repeat | " << c.shape.str();
}

void run_case(const Case& c, int idx) {
  for (const auto kernel : backward_kernels()) run_case_with(c, idx, kernel);
}

std::vector<CudaOptions::BackwardKernel> backward_kernels() {
  static const std::vector<CudaOptions::BackwardKernel> kernels = [] {
    const char* only = std::getenv("MOBA_CUDA_TEST_BWD_KERNELS");
    auto wanted = [&](CudaOptions::BackwardKernel k) {
      if (!only || !*only) return true;
      const std::string list = std::string(",") + only + ",";
      return list.find(std::string(",") + backward_kernel_name(k) + ",") != std::string::npos;
    };
    std::vector<CudaOptions::BackwardKernel> k;
    if (wanted(CudaOptions::BackwardKernel::sm80_mma_sync)) k.push_back(CudaOptions::BackwardKernel::sm80_mma_sync);
    for (const auto sm90 : {CudaOptions::BackwardKernel::sm90_wgmma, CudaOptions::BackwardKernel::sm90_warp_specialized}) {
      if (!wanted(sm90)) continue;
      Shape s;
      s.seqlens = {16};
      s.hq = s.hkv = 1;
      s.d = 64;
      s.dtype = DType::bf16;
      s.params = AttentionParams::full();
      Inputs in = make_inputs(s, 1);
      const ForwardResult fwd = run_forward(s, in, Backend::reference);
      CudaOptions o;
      o.backward_kernel = sm90;
      try {
        gpu_backward(s, in, fwd, false, false, o);
        k.push_back(sm90);
      } catch (const Error& e) {
        std::printf("[ skip ] backward kernel %s not tested on this device: %s\n", backward_kernel_name(sm90), e.what());
      }
    }
    return k;
  }();
  return kernels;
}

// Asking for the sm_90a key pass where it cannot run is a named error, never a silent fallback.
TEST(CudaBackward, Sm90KernelRunsOrIsRefused) {
  MOBA_SKIP_WITHOUT_GPU();
  Shape s;
  s.seqlens = {70};
  s.hq = 2;
  s.hkv = 1;
  s.d = 128;
  s.dtype = DType::f16;
  s.params = AttentionParams::moba_blocks(64, 2);
  const Case c = make_case(s, 11);
  int major = 0, dev = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  for (const auto k : {CudaOptions::BackwardKernel::sm90_wgmma, CudaOptions::BackwardKernel::sm90_warp_specialized}) {
    const std::string name = backward_kernel_name(k);
    CudaOptions o;
    o.backward_kernel = k;
    try {
      check_against_truth(c, gpu_backward(s, c.in, c.fwd, false, false, o), name.c_str());
      EXPECT_EQ(major, 9) << name << " ran on a compute capability " << major << " device";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::unsupported) << e.what();
      EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
      std::printf("[ info ] %s refused here (expected off sm_90a): %s\n", name.c_str(), e.what());
    }
  }
}

TEST(CudaBackward, RandomShapesMatchReference) {
  MOBA_SKIP_WITHOUT_GPU();
  std::mt19937 rng(20261123);
  const RandomShapeOptions opt = gpu_options();
  const int n = num_shapes(40);
  for (int i = 0; i < n; ++i) {
    const Shape s = random_shape(rng, opt);
    SCOPED_TRACE(s.str());
    run_case(make_case(s, 1000 + i), i);
    if (HasFailure()) break;
  }
  std::printf("[ info ] %d shapes; worst gpu/emulated error ratio %.3f (limit 2)\n", n, g_worst_ratio);
}

// Small fixed shapes for compute-sanitizer (memcheck / racecheck) runs.
TEST(CudaBackward, SmallShapes) {
  MOBA_SKIP_WITHOUT_GPU();
  std::vector<Shape> shapes;
  Shape a;
  a.seqlens = {130, 1, 0, 67};
  a.hq = 4;
  a.hkv = 2;
  a.d = 64;
  a.dtype = DType::bf16;
  a.params = AttentionParams::moba_blocks(64, 3);
  shapes.push_back(a);
  Shape b = a;
  b.d = 128;
  b.dtype = DType::f16;
  b.params = AttentionParams::full();
  shapes.push_back(b);
  Shape c = a;
  c.seqlens = {300};
  c.hq = 8;
  c.hkv = 1;
  c.d = 128;
  c.params = AttentionParams::moba_blocks(128, 2);
  shapes.push_back(c);
  for (std::size_t i = 0; i < shapes.size(); ++i) {
    SCOPED_TRACE(shapes[i].str());
    run_case(make_case(shapes[i], 7 + std::uint32_t(i)), int(i));
  }
}

// One block chosen by every later row: its key tiles get far more rows than the average and
// are split over several CTAs (fp32 partials summed by a second kernel).
TEST(CudaBackward, PopularBlockIsSplit) {
  MOBA_SKIP_WITHOUT_GPU();
  Shape s;
  s.seqlens = {2112};
  s.hq = 2;
  s.hkv = 2;
  s.d = 64;
  s.dtype = DType::bf16;
  s.params = AttentionParams::moba_blocks(64, 2);
  Case c{s, make_inputs(s, 99), {}, {}, {}};
  c.fwd = run_forward(s, c.in, Backend::reference);
  for (int tok = 0; tok < s.total(); ++tok)
    for (int h = 0; h < s.hq; ++h) c.fwd.selection[std::size_t(tok) * s.hq + h] = tok >= 64 ? 0 : -1;
  // lse of the forced selection (the backward takes it as given): recompute on the CPU.
  {
    Truth t = truth_forward(s, c.in, c.fwd.selection);
    for (std::size_t i = 0; i < t.lse.size(); ++i) c.fwd.lse[i] = static_cast<float>(t.lse[i]);
    for (std::size_t i = 0; i < t.out.size(); ++i) c.fwd.out.set(std::int64_t(i), t.out[i]);
  }
  set_yardsticks(c);
  run_case(c, 0);
}

// Full causal, one long sequence, GQA: the first 128-key tiles see far more row tiles than the
// average and are split; the causal diagonal spans two token tiles of every key tile.
TEST(CudaBackward, LongCausalIsSplit) {
  MOBA_SKIP_WITHOUT_GPU();
  Shape s;
  s.seqlens = {2200, 70};
  s.hq = 2;
  s.hkv = 1;
  s.d = 64;
  s.dtype = DType::f16;
  s.params = AttentionParams::full();
  run_case(make_case(s, 4242), 1);
}

// MoA on longer sequences than the random shapes: the sink's key tiles and the window's are
// separate ranges of the dQ items, key tiles past the sink see only a window of rows, windows
// differ per head inside a GQA group, one shorter than the sink and one longer than the
// sequence.
TEST(CudaBackward, MoaSinkAndWindows) {
  MOBA_SKIP_WITHOUT_GPU();
  struct MoaCase { std::vector<int> lens; int hq, hkv, d; DType t; std::vector<float> alpha, beta; int sink; };
  const MoaCase cases[] = {
      {{1500}, 4, 2, 64, DType::bf16, {40.f, 300.f, 10.f, 5000.f}, {0.f, 0.f, 0.05f, 0.f}, 16},
      {{900, 0, 1, 700}, 2, 1, 128, DType::f16, {100.f, 3.f}, {0.1f, 0.f}, 100},
      {{1200, 333}, 2, 2, 64, DType::f16, {64.f, 129.f}, {0.f, 0.2f}, 0},
  };
  int i = 0;
  for (const MoaCase& m : cases) {
    Shape s;
    s.seqlens = m.lens;
    s.hq = m.hq;
    s.hkv = m.hkv;
    s.d = m.d;
    s.dtype = m.t;
    MoaHeads h;
    h.alpha = m.alpha;
    h.beta = m.beta;
    h.sink = m.sink;
    s.params = AttentionParams::moa_heads(h);
    SCOPED_TRACE(s.str());
    run_case(make_case(s, 300 + i), i);
    ++i;
  }
}

// MoBA blocks of any size >= 16, most not a multiple of 64: key tiles cut per block (partial
// ones with listed rows), dQ tiles whose rows lie in several blocks, listed rows' key tiles that
// overhang their block; up to 4096-token blocks.
TEST(CudaBackward, AnyBlockSize) {
  MOBA_SKIP_WITHOUT_GPU();
  struct BlockCase { std::vector<int> lens; int hq, hkv, d; DType t; int block, topk; };
  const BlockCase cases[] = {
      {{700}, 2, 1, 64, DType::bf16, 16, 5},
      {{900, 0, 1, 130}, 4, 2, 128, DType::f16, 50, 4},
      {{300, 0, 1, 517}, 2, 2, 64, DType::bf16, 100, 3},
      {{2600}, 1, 1, 64, DType::f16, 1000, 2},
      {{4200}, 1, 1, 64, DType::bf16, 4096, 2},
  };
  int i = 0;
  for (const BlockCase& c : cases) {
    Shape s;
    s.seqlens = c.lens;
    s.hq = c.hq;
    s.hkv = c.hkv;
    s.d = c.d;
    s.dtype = c.t;
    s.params = AttentionParams::moba_blocks(c.block, c.topk);
    SCOPED_TRACE(s.str());
    run_case(make_case(s, 500 + i), i);
    ++i;
    if (HasFailure()) break;
  }
}

// Deterministic mode's slot path (a MoBA block is one key tile, top-k <= 3: the mma.sync key
// pass stores each listed entry's dQ to its slot's buffer, the dQ pass adds them last) and, for
// comparison, shapes that keep the per-slot dQ waves: small blocks incl. non-multiples of 64,
// varlen with empty and length-1 sequences, GQA, top-k beyond the blocks. run_case checks every
// mode against the fp64 truth and deterministic repeats for bit-identity; here also which path
// ran (1 dQ launch on the slot path, 1 + P on the wave path).
TEST(CudaBackward, DeterministicSlotPath) {
  MOBA_SKIP_WITHOUT_GPU();
  struct DetCase { std::vector<int> lens; int hq, hkv, d; DType t; int block, topk; bool slots; };
  const DetCase cases[] = {
      {{700, 1, 0, 130}, 4, 2, 64, DType::bf16, 64, 3, true},
      {{500, 0, 1, 333}, 2, 1, 128, DType::f16, 48, 3, true},   // any block size < 64
      {{900, 1}, 2, 2, 128, DType::bf16, 128, 2, true},         // 128-key tiles, one slot
      {{100, 1, 0, 40}, 4, 1, 64, DType::f16, 64, 3, true},     // top-k beyond the blocks
      {{300, 17}, 2, 1, 64, DType::bf16, 16, 3, true},          // smallest block
      {{600, 1, 250}, 2, 1, 64, DType::bf16, 100, 3, false},    // block over two key tiles
      {{800, 0, 70}, 4, 2, 64, DType::f16, 64, 5, false},       // top-k > 3
  };
  int i = 0;
  for (const DetCase& dc : cases) {
    Shape s;
    s.seqlens = dc.lens;
    s.hq = dc.hq;
    s.hkv = dc.hkv;
    s.d = dc.d;
    s.dtype = dc.t;
    s.params = AttentionParams::moba_blocks(dc.block, dc.topk);
    SCOPED_TRACE(s.str());
    const Case c = make_case(s, 700 + i);
    run_case(c, i);
    CudaOptions o;
    o.backward_kernel = CudaOptions::BackwardKernel::sm80_mma_sync;
    const BackwardResult a = gpu_backward(s, c.in, c.fwd, true, i % 2 == 0, o);
    const int waves = moba::detail::bwd::last_backward_stats().dq_waves;
    EXPECT_EQ(waves, dc.slots ? 1 : dc.topk) << "dQ launches of the deterministic backward";
    check_against_truth(c, a, "deterministic mma.sync");
    EXPECT_TRUE(same_bits(a, gpu_backward(s, c.in, c.fwd, true, i % 2 == 1, o)))
        << "deterministic mode not bit-identical on repeat (cu_seqlens on the host vs the GPU)";
    ++i;
    if (HasFailure()) break;
  }
}

// The backward's scratch at a mid shape (16K tokens, 8 heads, D 128, blocks of 64 top-3) stays
// under the analytic bound of docs/architecture.md ("Backward scratch"), in both modes: the
// pool's high-water mark of the call (moba::cuda_workspace_peak_bytes) and the backward's own
// count of what it held at once.
TEST(CudaBackward, ScratchWithinBound) {
  MOBA_SKIP_WITHOUT_GPU();
  Shape s;
  s.seqlens = {10000, 1, 0, 6383};
  s.hq = 8;
  s.hkv = 8;
  s.d = 128;
  s.dtype = DType::bf16;
  s.params = AttentionParams::moba_blocks(64, 3);
  Case c{s, make_inputs(s, 31), {}, {}, {}};
  c.fwd = run_forward(s, c.in, Backend::cpu);  // the saved state only (no yardsticks needed)
  int dev = 0, nsm = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&nsm, cudaDevAttrMultiProcessorCount, dev);
  const double T = double(s.total()), hq = s.hq, D = s.d, P = s.params.topk - 1, B = 64;
  const double batch = double(s.seqlens.size());
  const double E = T * hq * P;                                  // selection entries
  const double nkeys = (T / B + batch + 1) * s.hkv * P;        // list groups
  const double lists = 4 * E + 4 * (nkeys + 1) + 1 * E;        // lists, offsets, entry slots
  const double sort = 12 * E + 8 * E + (1 << 20);             // plan-time: keys, values, CUB
  const double partials = 4.0 * (2 * nsm) * 2 * 64 * D * 4;     // 4 x resident CTAs, 64-key tiles
  const double small = 32.0 * (1 << 20);  // items, tables (< 1 MiB here), pool rounding
  for (const bool det : {false, true}) {
    SCOPED_TRACE(det ? "deterministic" : "default");
    const double dq = 4 * T * hq * D * (det ? P : 1);          // fp32 dQ scratch (slot path: P)
    const double bound = 4 * T * hq + dq + lists + sort + partials + small;
    moba::cuda_workspace_peak_bytes(dev, true);
    gpu_backward(s, c.in, c.fwd, det, true);
    const double pool = double(moba::cuda_workspace_peak_bytes(dev));
    const double counted = double(moba::detail::bwd::last_backward_stats().peak_workspace_bytes);
    std::printf("[ info ] backward scratch %s: pool peak %.1f MiB, counted %.1f MiB, bound %.1f MiB "
                "(dQ scratch %.1f)\n", det ? "det" : "default", pool / 1048576, counted / 1048576,
                bound / 1048576, dq / 1048576);
    EXPECT_LE(pool, bound);
    EXPECT_LE(counted, bound);
    EXPECT_GE(counted, dq) << "the count misses the dQ scratch";
  }
}

// Blocks below 16 tokens are a named error on the GPU (docs/python.md).
TEST(CudaBackward, BlocksBelow16AreRejected) {
  MOBA_SKIP_WITHOUT_GPU();
  Shape s;
  s.seqlens = {64};
  s.hq = s.hkv = 1;
  s.d = 64;
  s.dtype = DType::bf16;
  s.params = AttentionParams::moba_blocks(8, 2);
  Inputs in = make_inputs(s, 5);
  try {
    gpu_forward(s, in);
    FAIL() << "expected moba::Error(invalid_argument)";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::invalid_argument) << e.what();
    EXPECT_NE(std::string(e.what()).find(">= 16"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace moba::testing
