// The CUDA forward with cu_seqlens on the GPU plans on the device (no device-to-host copy, no
// host synchronisation), so it can be captured in a CUDA graph. Checked here:
//  - capture + replay writes exactly the bits of an eager call (every forward kernel path);
//  - the graph reads the lengths at replay time: new lengths written into the same cu_seqlens
//    buffer give the eager result of the new lengths;
//  - a cu_seqlens that is not valid (checked on the device) gives NaN, not a crash.
// The backward plans on the device too, so a whole training step (forward + backward) captures:
//  - replay gives the eager call's bits (deterministic mode: every output; default mode: all but
//    the dQ of MoBA rows that chose past blocks, summed by fp32 atomics in a free order);
//  - after new values of q, k, v, dout and new lengths are written into the same buffers, a
//    replay gives the eager result of the new inputs (new selection, new plan).
#include "cuda_test_util.hpp"

namespace moba::testing {
namespace {

struct DeviceProblem {
  Shape s;
  Inputs in;
  DevBuf q, k, v, out, lse, sel, cu, dout, dq, dk, dv;
  int past;
  DeviceProblem(const Shape& shape, std::uint32_t seed)
      : s(shape),
        in(make_inputs(shape, seed)),
        q(in.q.bytes.size()),
        k(in.k.bytes.size()),
        v(in.v.bytes.size()),
        out(in.q.bytes.size()),
        lse(std::size_t(shape.total()) * shape.hq * 4),
        sel(std::size_t(shape.total()) * shape.hq * std::max(shape.params.topk - 1, 1) * 4),
        cu(in.cu.size() * 4),
        dout(in.q.bytes.size()),
        dq(in.q.bytes.size()),
        dk(in.k.bytes.size()),
        dv(in.v.bytes.size()),
        past(shape.params.mode == Mode::moba ? std::max(shape.params.topk - 1, 0) : 0) {
    q.up(in.q.bytes.data());
    k.up(in.k.bytes.data());
    v.up(in.v.bytes.data());
    cu.up(in.cu.data());
    dout.up(in.dout.bytes.data());
    settle();
  }
  // New values of q, k, v and dout (same shapes) in the same buffers.
  void set_values(std::uint32_t seed) {
    const Inputs fresh = make_inputs(s, seed);
    in.q = fresh.q;
    in.k = fresh.k;
    in.v = fresh.v;
    in.dout = fresh.dout;
    q.up(in.q.bytes.data());
    k.up(in.k.bytes.data());
    v.up(in.v.bytes.data());
    dout.up(in.dout.bytes.data());
    settle();
  }
  // The copies and memsets here run on the legacy default stream, which a non-blocking stream
  // does not wait for: finish them before work on the test's stream reads the buffers.
  static void settle() {
    if (cudaDeviceSynchronize() != cudaSuccess) throw std::runtime_error("cudaDeviceSynchronize failed");
  }
  void set_cu(const std::vector<int>& c) {
    cu.up(c.data());
    settle();
  }
  void poison() {
    for (DevBuf* b : {&out, &lse, &sel, &dq, &dk, &dv})
      if (cudaMemset(b->p, 0xff, b->bytes) != cudaSuccess) throw std::runtime_error("cudaMemset failed");
    settle();
  }
  void forward(cudaStream_t stream, CudaOptions::ForwardKernel kernel) {
    const std::int64_t T = s.total();
    RunOptions o;
    o.backend = Backend::cuda;
    o.cuda_stream = stream;
    o.cuda.forward_kernel = kernel;
    TensorView selv;
    if (s.params.mode == Mode::moba) selv = dev_view(sel.p, DType::i32, {T, s.hq, past});
    attention_forward(dev_view(q.p, s.dtype, {T, s.hq, s.d}), dev_view(k.p, s.dtype, {T, s.hkv, s.d}),
                      dev_view(v.p, s.dtype, {T, s.hkv, s.d}),
                      dev_view(cu.p, DType::i32, {std::int64_t(in.cu.size())}), s.params,
                      dev_view(out.p, s.dtype, {T, s.hq, s.d}), dev_view(lse.p, DType::f32, {s.hq, T}),
                      selv, o);
  }
  // Backward from this problem's out, lse and selection (as a training step's would).
  void backward(cudaStream_t stream, bool deterministic, const CudaOptions& cuda) {
    const std::int64_t T = s.total();
    RunOptions o;
    o.backend = Backend::cuda;
    o.cuda_stream = stream;
    o.deterministic = deterministic;
    o.cuda = cuda;
    TensorView selv;
    if (s.params.mode == Mode::moba) selv = dev_view(sel.p, DType::i32, {T, s.hq, past});
    attention_backward(dev_view(q.p, s.dtype, {T, s.hq, s.d}), dev_view(k.p, s.dtype, {T, s.hkv, s.d}),
                       dev_view(v.p, s.dtype, {T, s.hkv, s.d}), dev_view(out.p, s.dtype, {T, s.hq, s.d}),
                       dev_view(lse.p, DType::f32, {s.hq, T}), dev_view(dout.p, s.dtype, {T, s.hq, s.d}),
                       dev_view(cu.p, DType::i32, {std::int64_t(in.cu.size())}), s.params, selv,
                       dev_view(dq.p, s.dtype, {T, s.hq, s.d}), dev_view(dk.p, s.dtype, {T, s.hkv, s.d}),
                       dev_view(dv.p, s.dtype, {T, s.hkv, s.d}), o);
  }
  // dq | dk | dv, as host tensors
  std::vector<HostTensor> grads() const {
    const std::int64_t T = s.total();
    std::vector<HostTensor> g{HostTensor(s.dtype, {T, s.hq, s.d}), HostTensor(s.dtype, {T, s.hkv, s.d}),
                              HostTensor(s.dtype, {T, s.hkv, s.d})};
    dq.down(g[0].bytes.data());
    dk.down(g[1].bytes.data());
    dv.down(g[2].bytes.data());
    return g;
  }
  // out | lse | selection, as bytes
  std::vector<unsigned char> results() const {
    std::vector<unsigned char> r(out.bytes + lse.bytes + (past > 0 ? sel.bytes : 0));
    out.down(r.data());
    lse.down(r.data() + out.bytes);
    if (past > 0) sel.down(r.data() + out.bytes + lse.bytes);
    return r;
  }
};

struct Stream {
  cudaStream_t s = nullptr;
  Stream() {
    if (cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) != cudaSuccess)
      throw std::runtime_error("cudaStreamCreate failed");
  }
  ~Stream() { cudaStreamDestroy(s); }
};

struct Graph {
  cudaGraph_t g = nullptr;
  cudaGraphExec_t exec = nullptr;
  ~Graph() {
    if (exec) cudaGraphExecDestroy(exec);
    if (g) cudaGraphDestroy(g);
  }
};

Shape shape_of(std::vector<int> lens, int hq, int hkv, int d, DType t, AttentionParams params) {
  Shape s;
  s.seqlens = std::move(lens);
  s.hq = hq;
  s.hkv = hkv;
  s.d = d;
  s.dtype = t;
  s.params = std::move(params);
  return s;
}

std::vector<Shape> graph_shapes() {
  MoaHeads moa;
  moa.alpha = {40.f, 300.f};
  moa.beta = {0.1f, 0.f};
  moa.sink = 16;
  return {
      shape_of({300, 0, 1, 517}, 4, 2, 64, DType::bf16, AttentionParams::full()),
      shape_of({700, 1, 390}, 4, 1, 128, DType::f16, AttentionParams::moba_blocks(64, 3)),
      // block 128 on random data: every tile with past blocks runs in one pass on the sm_90a
      // kernel (unions <= 8 blocks), and a mix of one-pass and wave tiles (unions grow with the
      // position; test_cuda_onepass.cpp asserts both from the statistics)
      shape_of({1100, 0, 900}, 2, 2, 128, DType::bf16, AttentionParams::moba_blocks(128, 5)),
      shape_of({2600, 1}, 2, 1, 64, DType::f16, AttentionParams::moba_blocks(128, 3)),
      shape_of({1000, 200}, 4, 2, 64, DType::bf16, AttentionParams::moa_heads(moa)),
  };
}

TEST(CudaGraph, ForwardCaptureReplaysEagerAndReadsNewLengths) {
  MOBA_SKIP_WITHOUT_GPU();
  for (const Shape& s : graph_shapes()) {
    for (const auto kernel : forward_kernels()) {
      SCOPED_TRACE(s.str() + " " + kernel_name(kernel));
      DeviceProblem dp(s, 31);
      Stream st;
      dp.poison();
      dp.forward(st.s, kernel);
      CUDA_OK(cudaStreamSynchronize(st.s));
      const std::vector<unsigned char> eager = dp.results();

      Graph g;
      dp.poison();
      CUDA_OK(cudaStreamBeginCapture(st.s, cudaStreamCaptureModeGlobal));
      try {
        dp.forward(st.s, kernel);
      } catch (...) {
        cudaGraph_t broken = nullptr;
        (void)cudaStreamEndCapture(st.s, &broken);
        if (broken) cudaGraphDestroy(broken);
        throw;
      }
      CUDA_OK(cudaStreamEndCapture(st.s, &g.g));
      CUDA_OK(cudaGraphInstantiate(&g.exec, g.g, 0));
      for (int rep = 0; rep < 2; ++rep) {
        dp.poison();
        CUDA_OK(cudaGraphLaunch(g.exec, st.s));
        CUDA_OK(cudaStreamSynchronize(st.s));
        EXPECT_TRUE(dp.results() == eager) << "replay " << rep << " differs from the eager call";
      }

      // New lengths (same total and batch) in the same buffer: the graph must plan them anew.
      std::vector<int> cu2 = dp.in.cu;
      const int batch = int(cu2.size()) - 1;
      for (int b = 1; b < batch; ++b) cu2[b] = int(std::int64_t(b) * s.total() / batch);
      dp.set_cu(cu2);
      dp.poison();
      dp.forward(st.s, kernel);
      CUDA_OK(cudaStreamSynchronize(st.s));
      const std::vector<unsigned char> eager2 = dp.results();
      dp.poison();
      CUDA_OK(cudaGraphLaunch(g.exec, st.s));
      CUDA_OK(cudaStreamSynchronize(st.s));
      EXPECT_TRUE(dp.results() == eager2) << "replay with new lengths differs from the eager call";
      // and the eager result of the new lengths is the host-cu_seqlens result (checked against
      // fp64 truth elsewhere)
      Shape s2 = s;
      for (int b = 0; b < batch; ++b) s2.seqlens[b] = cu2[b + 1] - cu2[b];
      Inputs in2 = dp.in;
      in2.cu = cu2;
      const GpuRun host = gpu_forward(s2, in2, false, kernel);
      std::vector<unsigned char> host_bytes(host.out.bytes.begin(), host.out.bytes.end());
      EXPECT_TRUE(std::equal(host_bytes.begin(), host_bytes.end(), eager2.begin()))
          << "device-planned output differs from the host-planned one";
      if (HasFailure()) return;
    }
  }
}

// The backward variants a training step may run (CudaOptions and deterministic mode).
struct BackwardVariant {
  const char* name;
  bool deterministic;
  CudaOptions cuda;
};
std::vector<BackwardVariant> backward_variants() {
  std::vector<BackwardVariant> v(4);
  v[0] = {"default", false, {}};
  v[1] = {"deterministic", true, {}};
  v[2] = {"64-key tiles", false, {}};
  v[2].cuda.backward_key_tile = 64;
  v[3] = {"all-atomic dQ", false, {}};
  v[3].cuda.backward_dq_all_atomic = true;
  return v;
}

// Forward + backward, as one training step, on `stream`.
void training_step(DeviceProblem& dp, cudaStream_t stream, const BackwardVariant& bv) {
  dp.forward(stream, CudaOptions::ForwardKernel::automatic);
  dp.backward(stream, bv.deterministic, bv.cuda);
}

struct StepResult {
  std::vector<unsigned char> fwd;
  std::vector<HostTensor> grads;  // dq, dk, dv
};
StepResult step_result(const DeviceProblem& dp) { return {dp.results(), dp.grads()}; }

// dq is bit-exact unless fp32 atomics sum it (default mode: the rows that chose a past MoBA
// block; all-atomic: every row); then replays may round differently, by about one ulp.
bool dq_exact(const Shape& s, const BackwardVariant& bv) {
  if (bv.deterministic) return true;
  if (bv.cuda.backward_dq_all_atomic) return false;
  return !(s.params.mode == Mode::moba && s.params.topk > 1);
}

void expect_same_step(const Shape& s, const BackwardVariant& bv, const StepResult& got, const StepResult& want,
                      const std::string& what) {
  EXPECT_TRUE(got.fwd == want.fwd) << what << ": forward outputs differ from the eager step";
  EXPECT_TRUE(got.grads[1].bytes == want.grads[1].bytes) << what << ": dk differs from the eager step";
  EXPECT_TRUE(got.grads[2].bytes == want.grads[2].bytes) << what << ": dv differs from the eager step";
  if (dq_exact(s, bv)) {
    EXPECT_TRUE(got.grads[0].bytes == want.grads[0].bytes) << what << ": dq differs from the eager step";
    return;
  }
  const HostTensor& a = got.grads[0];
  const HostTensor& b = want.grads[0];
  double sum2 = 0;
  for (std::int64_t i = 0; i < b.numel(); ++i) sum2 += double(b.get(i)) * b.get(i);
  const double rms = std::sqrt(sum2 / double(std::max<std::int64_t>(b.numel(), 1)));
  for (std::int64_t i = 0; i < a.numel(); ++i) {
    const double x = a.get(i), y = b.get(i);
    ASSERT_FALSE(std::isnan(x)) << what << ": dq[" << i << "] is NaN (eager " << y << ")";
    ASSERT_LE(std::fabs(x - y), 1.6e-2 * std::fabs(y) + 1e-3 * rms)
        << what << ": dq[" << i << "] " << x << " vs eager " << y << " (beyond rounding of fp32 atomics)";
  }
}

std::vector<Shape> step_shapes() {
  std::vector<Shape> v = graph_shapes();
  // MoBA blocks not a multiple of 64 (64-key tiles, masked per row), GQA
  v.push_back(shape_of({333, 1, 0, 420}, 4, 2, 64, DType::f16, AttentionParams::moba_blocks(80, 3)));
  // blocks of 48 top-3 and 128 top-2: the deterministic slot path (listed dQ stored per slot by
  // the key pass, read back by the dQ pass), blocks under 64 tokens and 128-key tiles
  v.push_back(shape_of({260, 1, 0, 301}, 4, 2, 128, DType::bf16, AttentionParams::moba_blocks(48, 3)));
  v.push_back(shape_of({700, 1, 390}, 2, 1, 64, DType::f16, AttentionParams::moba_blocks(128, 2)));
  return v;
}

TEST(CudaGraph, TrainingStepCaptureReplaysEagerAndReadsNewInputs) {
  MOBA_SKIP_WITHOUT_GPU();
  for (const Shape& s : step_shapes()) {
    for (const BackwardVariant& bv : backward_variants()) {
      SCOPED_TRACE(s.str() + " | backward " + bv.name);
      DeviceProblem dp(s, 41);
      Stream st;
      dp.poison();
      training_step(dp, st.s, bv);
      CUDA_OK(cudaStreamSynchronize(st.s));
      const StepResult eager = step_result(dp);

      Graph g;
      dp.poison();
      CUDA_OK(cudaStreamBeginCapture(st.s, cudaStreamCaptureModeGlobal));
      try {
        training_step(dp, st.s, bv);
      } catch (...) {
        cudaGraph_t broken = nullptr;
        (void)cudaStreamEndCapture(st.s, &broken);
        if (broken) cudaGraphDestroy(broken);
        throw;
      }
      CUDA_OK(cudaStreamEndCapture(st.s, &g.g));
      CUDA_OK(cudaGraphInstantiate(&g.exec, g.g, 0));
      for (int rep = 0; rep < 2; ++rep) {
        dp.poison();
        CUDA_OK(cudaGraphLaunch(g.exec, st.s));
        CUDA_OK(cudaStreamSynchronize(st.s));
        expect_same_step(s, bv, step_result(dp), eager, "replay " + std::to_string(rep));
      }

      // New values and new lengths (same total and batch) in the same buffers: the replay must
      // gate, plan and differentiate them anew.
      std::vector<int> cu2 = dp.in.cu;
      const int batch = int(cu2.size()) - 1;
      for (int b = 1; b < batch; ++b) cu2[b] = int(std::int64_t(b) * s.total() / batch);
      dp.set_cu(cu2);
      dp.set_values(97);
      dp.poison();
      training_step(dp, st.s, bv);
      CUDA_OK(cudaStreamSynchronize(st.s));
      const StepResult eager2 = step_result(dp);
      EXPECT_FALSE(eager2.grads[1].bytes == eager.grads[1].bytes) << "new inputs left dk unchanged";
      dp.poison();
      CUDA_OK(cudaGraphLaunch(g.exec, st.s));
      CUDA_OK(cudaStreamSynchronize(st.s));
      expect_same_step(s, bv, step_result(dp), eager2, "replay with new inputs");
      if (HasFailure()) return;
    }
  }
}

TEST(CudaGraph, InvalidDeviceCuSeqlensGivesNaN) {
  MOBA_SKIP_WITHOUT_GPU();
  const std::vector<std::vector<int>> bad = {{0, 300, 200, 517}, {5, 300, 400, 517}, {0, 300, 400, 500}};
  for (Mode mode : {Mode::full, Mode::moba}) {
    const Shape s = shape_of({300, 100, 117}, 2, 1, 64, DType::bf16,
                             mode == Mode::full ? AttentionParams::full() : AttentionParams::moba_blocks(64, 2));
    DeviceProblem dp(s, 3);
    for (const auto& cu : bad) {
      dp.set_cu(cu);
      dp.poison();
      CUDA_OK(cudaMemset(dp.out.p, 0, dp.out.bytes));
      CUDA_OK(cudaMemset(dp.lse.p, 0, dp.lse.bytes));
      dp.forward(nullptr, CudaOptions::ForwardKernel::automatic);
      CUDA_OK(cudaDeviceSynchronize());
      HostTensor out(s.dtype, {s.total(), s.hq, s.d});
      std::vector<float> lse(std::size_t(s.total()) * s.hq);
      dp.out.down(out.bytes.data());
      dp.lse.down(lse.data());
      for (std::int64_t i = 0; i < out.numel(); ++i) ASSERT_TRUE(std::isnan(out.get(i))) << "out[" << i << "]";
      for (std::size_t i = 0; i < lse.size(); ++i) ASSERT_TRUE(std::isnan(lse[i])) << "lse[" << i << "]";
      // the backward plans from the same bad cu_seqlens: NaN gradients, not a crash
      for (bool det : {false, true}) {
        for (DevBuf* b : {&dp.dq, &dp.dk, &dp.dv}) CUDA_OK(cudaMemset(b->p, 0, b->bytes));
        dp.backward(nullptr, det, CudaOptions{});
        CUDA_OK(cudaDeviceSynchronize());
        const std::vector<HostTensor> g = dp.grads();
        for (int t = 0; t < 3; ++t)
          for (std::int64_t i = 0; i < g[t].numel(); ++i)
            ASSERT_TRUE(std::isnan(g[t].get(i))) << "gradient " << t << " [" << i << "], deterministic " << det;
      }
    }
  }
}

}  // namespace
}  // namespace moba::testing
