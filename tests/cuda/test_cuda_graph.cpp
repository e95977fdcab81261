// The CUDA forward with cu_seqlens on the GPU plans on the device (no device-to-host copy, no
// host synchronisation), so it can be captured in a CUDA graph. Checked here:
//  - capture + replay writes exactly the bits of an eager call (every forward kernel path);
//  - the graph reads the lengths at replay time: new lengths written into the same cu_seqlens
//    buffer give the eager result of the new lengths;
//  - a cu_seqlens that is not valid (checked on the device) gives NaN, not a crash.
#include "cuda_test_util.hpp"

namespace moba::testing {
namespace {

struct DeviceProblem {
  Shape s;
  Inputs in;
  DevBuf q, k, v, out, lse, sel, cu;
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
        past(shape.params.mode == Mode::moba ? std::max(shape.params.topk - 1, 0) : 0) {
    q.up(in.q.bytes.data());
    k.up(in.k.bytes.data());
    v.up(in.v.bytes.data());
    cu.up(in.cu.data());
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
    for (DevBuf* b : {&out, &lse, &sel})
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
      shape_of({1100, 0, 900}, 2, 2, 128, DType::bf16, AttentionParams::moba_blocks(128, 5)),
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
    }
  }
}

}  // namespace
}  // namespace moba::testing
