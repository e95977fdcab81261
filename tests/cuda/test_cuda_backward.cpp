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
// compute-sanitizer runs.
#include <cstdlib>

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
  o.modes = {Mode::full, Mode::moba, Mode::moba};
  o.block_sizes = {64, 128, 192};
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
                            bool deterministic, bool cu_on_device) {
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

void check_against_truth(const Case& c, const BackwardResult& g, const char* what) {
  const char* names[3] = {"dq", "dk", "dv"};
  const HostTensor* gs[3] = {&g.dq, &g.dk, &g.dv};
  const HostTensor* ts[3] = {&c.truth.dq, &c.truth.dk, &c.truth.dv};
  const HostTensor* es[3] = {&c.emul.dq, &c.emul.dk, &c.emul.dv};
  for (int i = 0; i < 3; ++i) {
    const std::vector<double> t = ts[i]->as_double();
    const double eg = rel_err(gs[i]->as_double(), t), ee = rel_err(es[i]->as_double(), t);
    if (ee > 1e-4) g_worst_ratio = std::max(g_worst_ratio, eg / ee);
    EXPECT_LE(eg, 2.0 * ee + 1e-5) << what << " " << names[i] << ": gpu err " << eg
                                   << " vs emulated low-precision err " << ee << " | " << c.shape.str();
  }
}

bool same_bits(const BackwardResult& a, const BackwardResult& b) {
  return a.dq.bytes == b.dq.bytes && a.dk.bytes == b.dk.bytes && a.dv.bytes == b.dv.bytes;
}

void run_case(const Case& c, int idx) {
  const BackwardResult fast = gpu_backward(c.shape, c.in, c.fwd, false, idx % 2 == 1);
  check_against_truth(c, fast, "default");
  const BackwardResult d1 = gpu_backward(c.shape, c.in, c.fwd, true, idx % 2 == 0);
  check_against_truth(c, d1, "deterministic");
  const BackwardResult d2 = gpu_backward(c.shape, c.in, c.fwd, true, idx % 2 == 1);
  EXPECT_TRUE(same_bits(d1, d2)) << "deterministic mode not bit-identical on repeat | " << c.shape.str();
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

TEST(CudaBackward, MoaIsUnsupported) {
  MOBA_SKIP_WITHOUT_GPU();
  Shape s;
  s.seqlens = {64};
  s.hq = s.hkv = 1;
  s.d = 64;
  MoaHeads h;
  h.alpha = {16.f};
  h.beta = {0.f};
  s.params = AttentionParams::moa_heads(h);
  Inputs in = make_inputs(s, 5);
  ForwardResult f = run_forward(s, in, Backend::reference);
  try {
    gpu_backward(s, in, f, false, false);
    FAIL() << "expected moba::Error(unsupported)";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::unsupported) << e.what();
    EXPECT_NE(std::string(e.what()).find("MoA"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace moba::testing
