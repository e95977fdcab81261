// Helpers of bindings.cpp shared with the other binding files (bindings_paged.cpp).
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

#include "moba/moba.hpp"

namespace moba_py {

moba::TensorView to_view(const pybind11::handle& obj);  // a 7-tuple or None
moba::DType parse_dtype(const std::string& name, const std::string& s);
moba::AttentionParams make_params(const std::string& mode, int block_size, int topk,
                                  double softmax_scale, std::vector<float> alpha,
                                  std::vector<float> beta, int sink);
moba::RunOptions make_options(const std::string& backend, std::uintptr_t stream,
                              bool deterministic, int num_threads);
void bind_paged(pybind11::module_& m);
void bind_context_parallel(pybind11::module_& m);

}  // namespace moba_py

#ifndef MOBA_PARAM_ARGS
#define MOBA_PARAM_ARGS                                                                         \
  py::kw_only(), py::arg("mode"), py::arg("block_size") = 0, py::arg("topk") = 0,             \
      py::arg("softmax_scale") = 0.0, py::arg("alpha") = std::vector<float>{},                \
      py::arg("beta") = std::vector<float>{}, py::arg("sink") = 64, py::arg("backend") = "auto", \
      py::arg("cuda_stream") = 0, py::arg("deterministic") = false, py::arg("num_threads") = 0
#endif
