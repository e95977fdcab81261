// Helpers for the CUDA backend tests: GPU presence, device buffers, forward and gate runs through
// the public API with device tensors (outputs poisoned first). The fp64 truth, the comparisons
// and the selection check are the verification library's (verify/, via test_support.hpp), the
// same as the CPU tests' and `moba check`'s.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "core/dtype.hpp"
#include "core/visibility.hpp"
#include "test_support.hpp"

namespace moba::testing {

inline bool gpu_present() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return n > 0;
}

#define MOBA_SKIP_WITHOUT_GPU()                                                              \
  do {                                                                                       \
    if (!::moba::testing::gpu_present())                                                     \
      GTEST_SKIP() << "no CUDA device (cudaGetDeviceCount is 0 or failed): the cuda backend " \
                      "tests are compiled but not run on this machine";                      \
  } while (0)

#define CUDA_OK(x) ASSERT_EQ((x), cudaSuccess) << #x

struct DevBuf {
  void* p = nullptr;
  std::size_t bytes = 0;
  explicit DevBuf(std::size_t n) : bytes(n) {
    if (cudaMalloc(&p, n ? n : 16) != cudaSuccess) throw std::runtime_error("cudaMalloc failed");
  }
  ~DevBuf() { cudaFree(p); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  void up(const void* h) {
    if (bytes && cudaMemcpy(p, h, bytes, cudaMemcpyHostToDevice) != cudaSuccess)
      throw std::runtime_error("cudaMemcpy H2D failed");
  }
  void down(void* h) const {
    if (bytes && cudaMemcpy(h, p, bytes, cudaMemcpyDeviceToHost) != cudaSuccess)
      throw std::runtime_error("cudaMemcpy D2H failed");
  }
};

inline TensorView dev_view(void* p, DType t, std::initializer_list<std::int64_t> shape) {
  return TensorView::contiguous(p, t, Device::cuda(0), shape);
}

struct GpuRun {
  HostTensor out;
  std::vector<float> lse;
  std::vector<std::int32_t> sel;
};

// CudaOptions::forward_persistent for the warp-specialised kernel; MOBA_CUDA_TEST_WS_PERSISTENT=0
// runs it with one CTA per tile instead (a test-harness switch to isolate the persistent loop).
inline bool ws_persistent() {
  const char* v = std::getenv("MOBA_CUDA_TEST_WS_PERSISTENT");
  return !(v && v[0] == '0');
}

// Forward on the GPU through the public API; out/lse/selection are poisoned before the call.
// `base`: other CUDA options (one-pass settings, statistics); kernel and persistence override it.
inline GpuRun gpu_forward(const Shape& s, const Inputs& in, bool cu_on_device = false,
                          CudaOptions::ForwardKernel kernel = CudaOptions::ForwardKernel::automatic,
                          const CudaOptions* base = nullptr) {
  const std::int64_t T = s.total();
  const int past = s.params.mode == Mode::moba ? std::max(s.params.topk - 1, 0) : 0;
  DevBuf q(in.q.bytes.size()), k(in.k.bytes.size()), v(in.v.bytes.size());
  DevBuf o(in.q.bytes.size()), l(std::size_t(T) * s.hq * 4), sl(std::size_t(T) * s.hq * past * 4);
  DevBuf cu(in.cu.size() * 4);
  q.up(in.q.bytes.data());
  k.up(in.k.bytes.data());
  v.up(in.v.bytes.data());
  cu.up(in.cu.data());
  GpuRun r;
  r.out = HostTensor(s.dtype, {T, s.hq, s.d});
  r.out.fill(NAN);
  r.lse.assign(std::size_t(T) * s.hq, NAN);
  r.sel.assign(std::size_t(T) * s.hq * past, -7);
  o.up(r.out.bytes.data());
  l.up(r.lse.data());
  sl.up(r.sel.data());
  std::vector<int> cu_host = in.cu;
  TensorView cuv = cu_on_device
                       ? dev_view(cu.p, DType::i32, {std::int64_t(in.cu.size())})
                       : TensorView::contiguous(cu_host.data(), DType::i32, Device::cpu(),
                                                {std::int64_t(in.cu.size())});
  TensorView selv;
  if (s.params.mode == Mode::moba) selv = dev_view(sl.p, DType::i32, {T, s.hq, past});
  RunOptions opt;
  opt.backend = Backend::cuda;
  if (base) opt.cuda = *base;
  opt.cuda.forward_kernel = kernel;
  opt.cuda.forward_persistent = ws_persistent();
  attention_forward(dev_view(q.p, s.dtype, {T, s.hq, s.d}), dev_view(k.p, s.dtype, {T, s.hkv, s.d}),
                    dev_view(v.p, s.dtype, {T, s.hkv, s.d}), cuv, s.params,
                    dev_view(o.p, s.dtype, {T, s.hq, s.d}), dev_view(l.p, DType::f32, {s.hq, T}),
                    selv, opt);
  if (cudaDeviceSynchronize() != cudaSuccess) throw std::runtime_error("kernel failed");
  o.down(r.out.bytes.data());
  l.down(r.lse.data());
  sl.down(r.sel.data());
  return r;
}

inline const char* kernel_name(CudaOptions::ForwardKernel k);

// The forward kernels this device runs: mma.sync always, the sm_90a ones where the device and
// the build allow (probed once: forcing one elsewhere throws moba::Error(unsupported)).
// MOBA_CUDA_TEST_KERNELS=name,name (kernel_name spellings) keeps only those: a test-harness
// switch to isolate one path on the GPU machine.
inline std::vector<CudaOptions::ForwardKernel> forward_kernels() {
  static const std::vector<CudaOptions::ForwardKernel> kernels = [] {
    const char* only = std::getenv("MOBA_CUDA_TEST_KERNELS");
    auto wanted = [&](CudaOptions::ForwardKernel k) {
      if (!only || !*only) return true;
      const std::string list = std::string(",") + only + ",";
      return list.find(std::string(",") + kernel_name(k) + ",") != std::string::npos;
    };
    std::vector<CudaOptions::ForwardKernel> k;
    if (wanted(CudaOptions::ForwardKernel::sm80_mma_sync))
      k.push_back(CudaOptions::ForwardKernel::sm80_mma_sync);
    Shape s;
    s.seqlens = {16};
    s.hq = s.hkv = 1;
    s.d = 128;
    s.dtype = DType::bf16;
    s.params = AttentionParams::full();
    // (sm90_wgmma is an alias of sm90_warp_specialized: testing it again would add nothing)
    for (auto kernel : {CudaOptions::ForwardKernel::sm90_warp_specialized}) {
      if (!wanted(kernel)) continue;
      try {
        gpu_forward(s, make_inputs(s, 1), false, kernel);
        k.push_back(kernel);
      } catch (const Error& e) {
        if (e.kind() != ErrorKind::unsupported) throw;
      }
    }
    if (k.empty()) {
      std::fprintf(stderr, "MOBA_CUDA_TEST_KERNELS=%s: none of these runs here; testing sm80_mma_sync\n", only);
      k.push_back(CudaOptions::ForwardKernel::sm80_mma_sync);
    }
    return k;
  }();
  return kernels;
}

inline const char* kernel_name(CudaOptions::ForwardKernel k) {
  switch (k) {
    case CudaOptions::ForwardKernel::sm90_wgmma: return "sm90_wgmma";
    case CudaOptions::ForwardKernel::sm80_mma_sync: return "sm80_mma_sync";
    case CudaOptions::ForwardKernel::sm90_warp_specialized: return "sm90_warp_specialized";
    default: return "automatic";
  }
}


// The GPU forward as the verification library's result type.
inline ForwardResult as_forward_result(const GpuRun& g) {
  ForwardResult r;
  r.out = g.out;
  r.lse = g.lse;
  r.selection = g.sel;
  return r;
}

// The MoBA gate alone on the GPU through the public API ([T, hq, topk - 1], poisoned first).
inline std::vector<std::int32_t> gpu_gate(
    const Shape& s, const Inputs& in, bool cu_on_device = false,
    CudaOptions::GateKernel gate_kernel = CudaOptions::GateKernel::automatic) {
  const std::int64_t T = s.total();
  const int past = s.selection_slots();
  DevBuf q(in.q.bytes.size()), k(in.k.bytes.size()), sl(std::size_t(T) * s.hq * past * 4);
  DevBuf cu(in.cu.size() * 4);
  q.up(in.q.bytes.data());
  k.up(in.k.bytes.data());
  cu.up(in.cu.data());
  std::vector<std::int32_t> sel(std::size_t(T) * s.hq * past, -7);
  sl.up(sel.data());
  std::vector<int> cu_host = in.cu;
  TensorView cuv = cu_on_device
                       ? dev_view(cu.p, DType::i32, {std::int64_t(in.cu.size())})
                       : TensorView::contiguous(cu_host.data(), DType::i32, Device::cpu(),
                                                {std::int64_t(in.cu.size())});
  RunOptions opt;
  opt.backend = Backend::cuda;
  opt.cuda.gate_kernel = gate_kernel;
  moba_gate(dev_view(q.p, s.dtype, {T, s.hq, s.d}), dev_view(k.p, s.dtype, {T, s.hkv, s.d}), cuv,
            s.params, dev_view(sl.p, DType::i32, {T, s.hq, past}), opt);
  if (cudaDeviceSynchronize() != cudaSuccess) throw std::runtime_error("gate kernel failed");
  sl.down(sel.data());
  return sel;
}

}  // namespace moba::testing
