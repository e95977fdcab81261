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
  bad(name, "dtype f32, f16, bf16 or i32", s);
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

moba::RunOptions make_options(const std::string& backend, std::uintptr_t stream,
                              bool deterministic, int num_threads) {
  moba::RunOptions o;
  o.backend = parse_backend(backend);
  o.cuda_stream = reinterpret_cast<void*>(stream);
  o.deterministic = deterministic;
  o.num_threads = num_threads;
  return o;
}

// Arguments shared by every compute entry point, keyword-only on the Python side.
#define MOBA_PARAM_ARGS                                                                         \
  py::kw_only(), py::arg("mode"), py::arg("block_size") = 0, py::arg("topk") = 0,             \
      py::arg("softmax_scale") = 0.0, py::arg("alpha") = std::vector<float>{},                \
      py::arg("beta") = std::vector<float>{}, py::arg("sink") = 64, py::arg("backend") = "auto", \
      py::arg("cuda_stream") = 0, py::arg("deterministic") = false, py::arg("num_threads") = 0

void forward(py::handle q, py::handle k, py::handle v, py::handle cu, py::handle out,
             py::handle lse, py::handle selection, const std::string& mode, int block_size,
             int topk, double scale, std::vector<float> alpha, std::vector<float> beta,
             int sink, const std::string& backend, std::uintptr_t stream, bool deterministic,
             int num_threads) {
  const auto qv = to_view(q), kv = to_view(k), vv = to_view(v), cv = to_view(cu);
  const auto ov = to_view(out), lv = to_view(lse), sv = to_view(selection);
  const auto params = make_params(mode, block_size, topk, scale, std::move(alpha),
                                  std::move(beta), sink);
  const auto options = make_options(backend, stream, deterministic, num_threads);
  py::gil_scoped_release nogil;
  moba::attention_forward(qv, kv, vv, cv, params, ov, lv, sv, options);
}

void backward(py::handle q, py::handle k, py::handle v, py::handle out, py::handle lse,
              py::handle dout, py::handle cu, py::handle selection, py::handle dq,
              py::handle dk, py::handle dv, const std::string& mode, int block_size, int topk,
              double scale, std::vector<float> alpha, std::vector<float> beta, int sink,
              const std::string& backend, std::uintptr_t stream, bool deterministic,
              int num_threads) {
  const auto qv = to_view(q), kv = to_view(k), vv = to_view(v), ov = to_view(out);
  const auto lv = to_view(lse), dov = to_view(dout), cv = to_view(cu), sv = to_view(selection);
  const auto dqv = to_view(dq), dkv = to_view(dk), dvv = to_view(dv);
  const auto params = make_params(mode, block_size, topk, scale, std::move(alpha),
                                  std::move(beta), sink);
  const auto options = make_options(backend, stream, deterministic, num_threads);
  py::gil_scoped_release nogil;
  moba::attention_backward(qv, kv, vv, ov, lv, dov, cv, params, sv, dqv, dkv, dvv, options);
}

void gate(py::handle q, py::handle k, py::handle cu, py::handle selection,
          const std::string& mode, int block_size, int topk, double scale,
          std::vector<float> alpha, std::vector<float> beta, int sink, const std::string& backend,
          std::uintptr_t stream, bool deterministic, int num_threads) {
  const auto qv = to_view(q), kv = to_view(k), cv = to_view(cu), sv = to_view(selection);
  const auto params = make_params(mode, block_size, topk, scale, std::move(alpha),
                                  std::move(beta), sink);
  const auto options = make_options(backend, stream, deterministic, num_threads);
  py::gil_scoped_release nogil;
  moba::moba_gate(qv, kv, cv, params, sv, options);
}

}  // namespace

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
