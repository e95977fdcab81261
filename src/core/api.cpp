// Public entry points: validate, build the Problem, dispatch to a backend.
#include <sstream>

#include "core/backends.hpp"
#include "core/validate.hpp"
#include "moba/attention.hpp"
#include "moba/version.hpp"

namespace moba {

using namespace detail;

void moba_gate(const TensorView& q, const TensorView& k, const TensorView& cu_seqlens,
               const AttentionParams& params, TensorView selection, const RunOptions& options) {
  if (params.mode != Mode::moba) invalid("params.mode", "Mode::moba for moba_gate", "another mode");
  // A GPU cu_seqlens is not read back: the CUDA backend plans on the device (no host sync).
  const Problem p = make_problem(q, k, cu_seqlens, params, options.cuda_stream, false);
  const Backend b = resolve_backend(p, options);
  const Operand qo{q.data, q.stride[0], q.stride[1]}, ko{k.data, k.stride[0], k.stride[1]};
  std::int32_t* sel = check_selection("selection", selection, p);
  switch (b) {
    case Backend::reference: reference_gate(p, qo, ko, sel); break;
    case Backend::cuda: cuda_gate(p, qo, ko, sel, options); break;
    default: cpu_gate(p, qo, ko, sel, options); break;
  }
}

void attention_forward(const TensorView& q, const TensorView& k, const TensorView& v,
                       const TensorView& cu_seqlens, const AttentionParams& params,
                       TensorView out, TensorView lse, TensorView selection,
                       const RunOptions& options) {
  // A GPU cu_seqlens is not read back: the CUDA backend plans on the device (no host sync).
  const Problem p = make_problem(q, k, cu_seqlens, params, options.cuda_stream, false);
  const Backend b = resolve_backend(p, options);
  Forward f;
  f.q = Operand{q.data, q.stride[0], q.stride[1]};
  f.k = Operand{k.data, k.stride[0], k.stride[1]};
  f.v = check_operand("v", v, k, "k");
  f.out = check_operand("out", out, q, "q");
  f.lse = check_lse("lse", lse, p);
  f.selection = check_selection("selection", selection, p);
  switch (b) {
    case Backend::reference: reference_forward(p, f); break;
    case Backend::cuda: cuda_forward(p, f, options); break;
    default: cpu_forward(p, f, options); break;
  }
}

void attention_backward(const TensorView& q, const TensorView& k, const TensorView& v,
                        const TensorView& out, const TensorView& lse, const TensorView& dout,
                        const TensorView& cu_seqlens, const AttentionParams& params,
                        const TensorView& selection, TensorView dq, TensorView dk,
                        TensorView dv, const RunOptions& options) {
  // A GPU cu_seqlens is not read back: the CUDA backward plans on the device (no host sync, so a
  // training step can be captured in a CUDA graph).
  const Problem p = make_problem(q, k, cu_seqlens, params, options.cuda_stream, false);
  const Backend b = resolve_backend(p, options);
  Backward w;
  w.q = Operand{q.data, q.stride[0], q.stride[1]};
  w.k = Operand{k.data, k.stride[0], k.stride[1]};
  w.v = check_operand("v", v, k, "k");
  w.out = check_operand("out", out, q, "q");
  w.dout = check_operand("dout", dout, q, "q");
  w.dq = check_operand("dq", dq, q, "q");
  w.dk = check_operand("dk", dk, k, "k");
  w.dv = check_operand("dv", dv, k, "k");
  w.lse = check_lse("lse", lse, p);
  w.selection = check_selection("selection", selection, p);
  switch (b) {
    case Backend::reference: reference_backward(p, w); break;
    case Backend::cuda: cuda_backward(p, w, options); break;
    default: cpu_backward(p, w, options); break;
  }
}

std::vector<BackendInfo> backends() {
  std::vector<BackendInfo> out;
  out.push_back({"reference", true, true, "fp64 loops, any head_dim (definition of truth)"});
  out.push_back({"cpu", true, true, "tiled online softmax, multithreaded, SIMD"});
  const int n = cuda_device_count();
  out.push_back({"cuda", cuda_compiled(), n > 0, cuda_describe()});
  return out;
}

std::uint64_t cuda_workspace_peak_bytes(int device, bool reset) {
  if (device < 0 || device >= 64)
    fail(ErrorKind::invalid_argument,
         "cuda_workspace_peak_bytes: device " + std::to_string(device) + " is not 0..63");
  return detail::cuda_workspace_peak(device, reset);
}

std::string build_info() {
  std::ostringstream os;
  os << "moba " << MOBA_VERSION_STRING;
#if defined(__clang__)
  os << ", clang " << __clang_major__ << "." << __clang_minor__;
#elif defined(__GNUC__)
  os << ", gcc " << __GNUC__ << "." << __GNUC_MINOR__;
#endif
#if defined(__AVX512F__)
  os << ", simd avx512";
#elif defined(__AVX2__)
  os << ", simd avx2+fma";
#else
  os << ", simd sse2";
#endif
  os << ", cuda " << (cuda_compiled() ? "on" : "off");
#ifdef MOBA_CUDA_ARCHS
  os << " (archs " << MOBA_CUDA_ARCHS << ")";
#endif
  return os.str();
}

}  // namespace moba
