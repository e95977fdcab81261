// moba._C: pybind11 bindings of the public C++ API without any torch C++ type.
//
// A tensor crosses this boundary as a plain tuple
//     (name, data_ptr, dtype, device_type, device_index, shape, strides)
// with dtype one of "f32" "f16" "bf16" "i32", device_type "cpu" or "cuda", strides in
// elements; None stands for an absent (empty) view. The Python side (moba/_core.py) builds
// these tuples from torch tensors and allocates every output, so the extension never owns
// memory and works with any torch build. moba::Error becomes a Python exception of the kind
// it names; compute runs with the GIL released.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "bindings_common.hpp"
#include "moba/moba.hpp"

namespace py = pybind11;

namespace {

// The class raised for ErrorKind::out_of_memory; the Python package installs one that derives
// from both torch.OutOfMemoryError and MemoryError (moba._core). Owned reference.
PyObject* g_oom_error = nullptr;

[[noreturn]] void bad(const std::string& name, const std::string& expected,
                      const std::string& got) {
  throw moba::Error(moba::ErrorKind::invalid_argument,
                    name + ": expected " + expected + ", got " + got);
}

moba::DType parse_dtype(const std::string& name, const std::string& s) {
  if (s == "f32") return moba::DType::f32;
  if (s == "f16") return moba::DType::f16;
  if (s == "bf16") return moba::DType::bf16;
  if (s == "i32") return moba::DType::i32;
  if (s == "f64") return moba::DType::f64;
  bad(name, "dtype f32, f16, bf16, i32 or f64", s);
}

moba::TensorView to_view(const py::handle& obj) {
  moba::TensorView t;
  if (obj.is_none()) return t;  // an empty view
  const auto tup = py::reinterpret_borrow<py::tuple>(obj);
  if (tup.size() != 7)
    throw moba::Error(moba::ErrorKind::invalid_argument,
                      "internal: a tensor description is a 7-tuple");
  const auto name = tup[0].cast<std::string>();
  t.data = reinterpret_cast<void*>(tup[1].cast<std::uintptr_t>());
  t.dtype = parse_dtype(name, tup[2].cast<std::string>());
  const auto dev = tup[3].cast<std::string>();
  const int index = tup[4].cast<int>();
  if (dev == "cpu")
    t.device = moba::Device::cpu();
  else if (dev == "cuda")
    t.device = moba::Device::cuda(index);
  else
    bad(name, "a cpu or cuda tensor", "device " + dev);
  const auto shape = tup[5].cast<std::vector<std::int64_t>>();
  const auto stride = tup[6].cast<std::vector<std::int64_t>>();
  if (shape.size() != stride.size())
    throw moba::Error(moba::ErrorKind::invalid_argument,
                      "internal: " + name + " shape and strides differ in length");
  if (shape.size() > static_cast<std::size_t>(moba::TensorView::kMaxDims)) {
    std::string s = "[";
    for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    bad(name, "at most " + std::to_string(moba::TensorView::kMaxDims) + " dimensions",
        "shape " + s + "]");
  }
  t.ndim = static_cast<int>(shape.size());
  for (int d = 0; d < t.ndim; ++d) {
    t.shape[d] = shape[d];
    t.stride[d] = stride[d];
  }
  return t;
}

moba::Backend parse_backend(const std::string& s) {
  if (s == "auto" || s == "automatic") return moba::Backend::automatic;
  if (s == "reference") return moba::Backend::reference;
  if (s == "cpu") return moba::Backend::cpu;
  if (s == "cuda") return moba::Backend::cuda;
  bad("backend", "one of auto, reference, cpu, cuda", "'" + s + "'");
}

moba::AttentionParams make_params(const std::string& mode, int block_size, int topk,
                                  double softmax_scale, std::vector<float> alpha,
                                  std::vector<float> beta, int sink) {
  moba::AttentionParams p;
  if (mode == "full") {
    p = moba::AttentionParams::full();
  } else if (mode == "moba") {
    p = moba::AttentionParams::moba_blocks(block_size, topk);
  } else if (mode == "moa") {
    p = moba::AttentionParams::moa_heads(moba::MoaHeads{std::move(alpha), std::move(beta), sink});
  } else {
    bad("mode", "one of full, moba, moa", "'" + mode + "'");
  }
  p.softmax_scale = static_cast<float>(softmax_scale);
  return p;
}

moba::CudaOptions::ForwardKernel parse_cuda_kernel(const std::string& s) {
  using K = moba::CudaOptions::ForwardKernel;
  if (s == "auto") return K::automatic;
  if (s == "sm90_wgmma") return K::sm90_wgmma;
  if (s == "sm80_mma_sync") return K::sm80_mma_sync;
  if (s == "sm90_warp_specialized") return K::sm90_warp_specialized;
  bad("cuda_kernel", "one of auto, sm90_wgmma, sm80_mma_sync, sm90_warp_specialized",
      "'" + s + "'");
}

moba::RunOptions make_options(const std::string& backend, std::uintptr_t stream,
                              bool deterministic, int num_threads,
                              const std::string& cuda_kernel = "auto") {
  moba::RunOptions o;
  o.backend = parse_backend(backend);
  o.cuda_stream = reinterpret_cast<void*>(stream);
  o.deterministic = deterministic;
  o.num_threads = num_threads;
  o.cuda.forward_kernel = parse_cuda_kernel(cuda_kernel);
  return o;
}

// Arguments shared by this file's compute entry points, keyword-only on the Python side: those
// of bindings_common.hpp plus the CUDA forward kernel choice.
#undef MOBA_PARAM_ARGS
#define MOBA_PARAM_ARGS                                                                         \
  py::kw_only(), py::arg("mode"), py::arg("block_size") = 0, py::arg("topk") = 0,             \
      py::arg("softmax_scale") = 0.0, py::arg("alpha") = std::vector<float>{},                \
      py::arg("beta") = std::vector<float>{}, py::arg("sink") = 64, py::arg("backend") = "auto", \
      py::arg("cuda_stream") = 0, py::arg("deterministic") = false, py::arg("num_threads") = 0, \
      py::arg("cuda_kernel") = "auto"

void forward(py::handle q, py::handle k, py::handle v, py::handle cu, py::handle out,
             py::handle lse, py::handle selection, const std::string& mode, int block_size,
             int topk, double scale, std::vector<float> alpha, std::vector<float> beta,
             int sink, const std::string& backend, std::uintptr_t stream, bool deterministic,
             int num_threads, const std::string& cuda_kernel) {
  const auto qv = to_view(q), kv = to_view(k), vv = to_view(v), cv = to_view(cu);
  const auto ov = to_view(out), lv = to_view(lse), sv = to_view(selection);
  const auto params = make_params(mode, block_size, topk, scale, std::move(alpha),
                                  std::move(beta), sink);
  const auto options = make_options(backend, stream, deterministic, num_threads, cuda_kernel);
  py::gil_scoped_release nogil;
  moba::attention_forward(qv, kv, vv, cv, params, ov, lv, sv, options);
}

void backward(py::handle q, py::handle k, py::handle v, py::handle out, py::handle lse,
              py::handle dout, py::handle cu, py::handle selection, py::handle dq,
              py::handle dk, py::handle dv, const std::string& mode, int block_size, int topk,
              double scale, std::vector<float> alpha, std::vector<float> beta, int sink,
              const std::string& backend, std::uintptr_t stream, bool deterministic,
              int num_threads, const std::string& cuda_kernel) {
  const auto qv = to_view(q), kv = to_view(k), vv = to_view(v), ov = to_view(out);
  const auto lv = to_view(lse), dov = to_view(dout), cv = to_view(cu), sv = to_view(selection);
  const auto dqv = to_view(dq), dkv = to_view(dk), dvv = to_view(dv);
  const auto params = make_params(mode, block_size, topk, scale, std::move(alpha),
                                  std::move(beta), sink);
  const auto options = make_options(backend, stream, deterministic, num_threads, cuda_kernel);
  py::gil_scoped_release nogil;
  moba::attention_backward(qv, kv, vv, ov, lv, dov, cv, params, sv, dqv, dkv, dvv, options);
}

void gate(py::handle q, py::handle k, py::handle cu, py::handle selection,
          const std::string& mode, int block_size, int topk, double scale,
          std::vector<float> alpha, std::vector<float> beta, int sink, const std::string& backend,
          std::uintptr_t stream, bool deterministic, int num_threads,
          const std::string& cuda_kernel) {
  const auto qv = to_view(q), kv = to_view(k), cv = to_view(cu), sv = to_view(selection);
  const auto params = make_params(mode, block_size, topk, scale, std::move(alpha),
                                  std::move(beta), sink);
  const auto options = make_options(backend, stream, deterministic, num_threads, cuda_kernel);
  py::gil_scoped_release nogil;
  moba::moba_gate(qv, kv, cv, params, sv, options);
}

// moba::attention_influence; returns the fp64 sums as a flat list
// [measure][query head][sink flag][bin].
std::vector<double> influence(py::handle q, py::handle k, py::handle v, py::handle out,
                              py::handle lse, py::handle dout, py::handle cu, double scale,
                              std::vector<int> edges, int sink, const std::string& backend,
                              int num_threads) {
  const auto qv = to_view(q), kv = to_view(k), vv = to_view(v), ov = to_view(out);
  const auto lv = to_view(lse), dov = to_view(dout), cv = to_view(cu);
  const auto options = make_options(backend, 0, false, num_threads);
  moba::InfluenceBins bins{std::move(edges), sink};
  py::gil_scoped_release nogil;
  return moba::attention_influence(qv, kv, vv, ov, lv, dov, cv, static_cast<float>(scale), bins,
                                   options);
}

}  // namespace

// The helpers above, for the other binding files (bindings_common.hpp).
namespace moba_py {
moba::TensorView to_view(const py::handle& obj) { return ::to_view(obj); }
moba::DType parse_dtype(const std::string& name, const std::string& s) { return ::parse_dtype(name, s); }
moba::AttentionParams make_params(const std::string& mode, int block_size, int topk,
                                  double softmax_scale, std::vector<float> alpha,
                                  std::vector<float> beta, int sink) {
  return ::make_params(mode, block_size, topk, softmax_scale, std::move(alpha), std::move(beta), sink);
}
moba::RunOptions make_options(const std::string& backend, std::uintptr_t stream,
                              bool deterministic, int num_threads) {
  return ::make_options(backend, stream, deterministic, num_threads);
}
}  // namespace moba_py

PYBIND11_MODULE(_C, m) {
  m.doc() = "moba C++ core (raw pointers in, no torch types); use the moba package instead";

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const moba::Error& e) {
      switch (e.kind()) {
        case moba::ErrorKind::invalid_argument:
          PyErr_SetString(PyExc_ValueError, e.what());
          break;
        case moba::ErrorKind::unsupported:
          PyErr_SetString(PyExc_NotImplementedError, e.what());
          break;
        case moba::ErrorKind::out_of_memory:
          PyErr_SetString(g_oom_error ? g_oom_error : PyExc_MemoryError, e.what());
          break;
        default:
          PyErr_SetString(PyExc_RuntimeError, e.what());
          break;
      }
    }
  });

  m.def(
      "set_out_of_memory_error",
      [](py::object cls) {
        PyObject* obj = cls.ptr();
        if (!PyExceptionClass_Check(obj)) throw py::type_error("expected an exception class");
        Py_INCREF(obj);
        Py_XDECREF(g_oom_error);
        g_oom_error = obj;
      },
      "The exception class raised when moba reports out_of_memory (default MemoryError).");

  m.def("forward", &forward, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("cu_seqlens"),
        py::arg("out"), py::arg("lse"), py::arg("selection"), MOBA_PARAM_ARGS,
        "moba::attention_forward on caller-allocated outputs.");
  m.def("backward", &backward, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"),
        py::arg("lse"), py::arg("dout"), py::arg("cu_seqlens"), py::arg("selection"),
        py::arg("dq"), py::arg("dk"), py::arg("dv"), MOBA_PARAM_ARGS,
        "moba::attention_backward on caller-allocated gradients.");
  m.def("gate", &gate, py::arg("q"), py::arg("k"), py::arg("cu_seqlens"), py::arg("selection"),
        MOBA_PARAM_ARGS, "moba::moba_gate: the MoBA block selection alone.");

  m.def("influence", &influence, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"),
        py::arg("lse"), py::arg("dout"), py::arg("cu_seqlens"), py::kw_only(),
        py::arg("softmax_scale") = 0.0, py::arg("edges"), py::arg("sink") = 64,
        py::arg("backend") = "auto", py::arg("num_threads") = 0,
        "moba::attention_influence: dS sums per query head by distance bin and sink flag.");

  m.def("backends", [] {
    py::list out;
    for (const auto& b : moba::backends()) {
      py::dict d;
      d["name"] = b.name;
      d["compiled"] = b.compiled;
      d["available"] = b.available;
      d["detail"] = b.detail;
      out.append(d);
    }
    return out;
  });
  m.def("build_info", &moba::build_info);
  m.def("cuda_workspace_peak_bytes", &moba::cuda_workspace_peak_bytes, py::arg("device"),
        py::arg("reset") = false);
  moba_py::bind_paged(m);  // paged KV cache, decode / chunked prefill (bindings_paged.cpp)
  moba_py::bind_context_parallel(m);  // paged gate / backward for moba.distributed (bindings_cp.cpp)
  m.attr("__version__") = MOBA_VERSION_STRING;

  py::class_<moba::MoaPlan>(m, "MoaPlan")
      .def(py::init<>())
      .def_readwrite("alphas", &moba::MoaPlan::alphas)
      .def_readwrite("betas", &moba::MoaPlan::betas)
      .def_readwrite("sink", &moba::MoaPlan::sink)
      .def_property_readonly("num_layers", &moba::MoaPlan::num_layers)
      .def("validate", &moba::MoaPlan::validate, py::arg("num_layers") = -1,
           py::arg("num_heads") = -1)
      .def(
          "layer",
          [](const moba::MoaPlan& p, int l) {
            const auto h = p.layer(l);
            return py::make_tuple(h.alpha, h.beta, h.sink);
          },
          py::arg("layer"))
      .def_static("from_json", &moba::MoaPlan::from_json, py::arg("text"))
      .def_static("load", &moba::MoaPlan::load, py::arg("path"))
      .def("to_json", &moba::MoaPlan::to_json)
      .def("save", &moba::MoaPlan::save, py::arg("path"));
}
