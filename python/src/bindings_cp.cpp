// moba._C: the entry points context parallelism (python/moba/distributed.py) adds to the
// paged ones of bindings_paged.cpp: the MoBA gate over given block means alone (the selection
// is planned before any page exists) and the backward of paged attention.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "bindings_common.hpp"
#include "moba/moba.hpp"

namespace py = pybind11;

namespace moba_py {

namespace {

moba::PagedKV paged_views(py::handle k_pages, py::handle v_pages, py::handle page_table,
                          py::handle seq_lens, py::handle block_means) {
  moba::PagedKV kv;
  kv.k_pages = to_view(k_pages);
  kv.v_pages = to_view(v_pages);
  kv.page_table = to_view(page_table);
  kv.seq_lens = to_view(seq_lens);
  kv.block_means = to_view(block_means);
  return kv;
}

void paged_gate(py::handle q, py::handle cu, py::handle k_pages, py::handle v_pages,
                py::handle page_table, py::handle seq_lens, py::handle block_means,
                py::handle selection, py::handle slots, const std::string& mode, int block_size,
                int topk, double scale, std::vector<float> alpha, std::vector<float> beta,
                int sink, const std::string& backend, std::uintptr_t stream, bool deterministic,
                int num_threads) {
  const auto qv = to_view(q), cv = to_view(cu), sv = to_view(selection), slv = to_view(slots);
  const auto kv = paged_views(k_pages, v_pages, page_table, seq_lens, block_means);
  const auto params = make_params(mode, block_size, topk, scale, std::move(alpha),
                                  std::move(beta), sink);
  const auto options = make_options(backend, stream, deterministic, num_threads);
  py::gil_scoped_release nogil;
  moba::paged_moba_gate(qv, cv, kv, params, sv, slv, options);
}

void paged_backward(py::handle q, py::handle cu, py::handle k_pages, py::handle v_pages,
                    py::handle page_table, py::handle seq_lens, py::handle selection,
                    py::handle slots, bool include_own_block, py::handle out, py::handle lse,
                    py::handle dout, py::handle dq, py::handle dk_pages, py::handle dv_pages,
                    const std::string& mode, int block_size, int topk, double scale,
                    std::vector<float> alpha, std::vector<float> beta, int sink,
                    const std::string& backend, std::uintptr_t stream, bool deterministic,
                    int num_threads) {
  const auto qv = to_view(q), cv = to_view(cu), ov = to_view(out), lv = to_view(lse);
  const auto dov = to_view(dout), dqv = to_view(dq), dkv = to_view(dk_pages), dvv = to_view(dv_pages);
  const auto kv = paged_views(k_pages, v_pages, page_table, seq_lens, py::none());
  moba::PagedAttentionArgs args;
  args.selection = to_view(selection);
  args.slots = to_view(slots);
  args.include_own_block = include_own_block;
  const auto params = make_params(mode, block_size, topk, scale, std::move(alpha),
                                  std::move(beta), sink);
  const auto options = make_options(backend, stream, deterministic, num_threads);
  py::gil_scoped_release nogil;
  moba::paged_attention_backward(qv, cv, kv, params, args, ov, lv, dov, dqv, dkv, dvv, options);
}

}  // namespace

void bind_context_parallel(py::module_& m) {
  m.def("paged_gate", &paged_gate, py::arg("q"), py::arg("cu_seqlens_q"), py::arg("k_pages"),
        py::arg("v_pages"), py::arg("page_table"), py::arg("seq_lens"), py::arg("block_means"),
        py::arg("selection"), py::arg("slots"), MOBA_PARAM_ARGS,
        "moba::paged_moba_gate alone: MoBA selection of query rows over given block means.");
  m.def("paged_backward", &paged_backward, py::arg("q"), py::arg("cu_seqlens_q"),
        py::arg("k_pages"), py::arg("v_pages"), py::arg("page_table"), py::arg("seq_lens"),
        py::arg("selection"), py::arg("slots"), py::arg("include_own_block"), py::arg("out"),
        py::arg("lse"), py::arg("dout"), py::arg("dq"), py::arg("dk_pages"), py::arg("dv_pages"),
        MOBA_PARAM_ARGS, "moba::paged_attention_backward on caller-allocated gradients.");
}

}  // namespace moba_py
