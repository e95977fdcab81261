// moba._C: the paged KV cache and the decode / chunked-prefill entry points
// (moba/kv_cache.hpp, moba/paged_attention.hpp). Tensors cross as the 7-tuples of bindings.cpp;
// the cache's storage is allocated by the Python side (moba.kv_cache), never here.
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

moba::PagedKV paged_kv(py::handle k_pages, py::handle v_pages, py::handle page_table,
                       py::handle seq_lens, py::handle block_means, py::handle block_sums) {
  moba::PagedKV kv;
  kv.k_pages = to_view(k_pages);
  kv.v_pages = to_view(v_pages);
  kv.page_table = to_view(page_table);
  kv.seq_lens = to_view(seq_lens);
  kv.block_means = to_view(block_means);
  kv.block_sums = to_view(block_sums);
  return kv;
}

moba::KVCacheConfig make_config(const std::string& dtype, int num_q_heads, int num_kv_heads,
                                int head_dim, int page_size, int num_pages, int max_rows,
                                int max_seqlen, int block_size, bool moa_evict,
                                std::vector<float> alpha, std::vector<float> beta, int sink,
                                int max_chunk) {
  moba::KVCacheConfig c;
  c.dtype = parse_dtype("dtype", dtype);
  c.num_q_heads = num_q_heads;
  c.num_kv_heads = num_kv_heads;
  c.head_dim = head_dim;
  c.page_size = page_size;
  c.num_pages = num_pages;
  c.max_rows = max_rows;
  c.max_seqlen = max_seqlen;
  c.block_size = block_size;
  c.moa_evict = moa_evict;
  c.moa = moba::MoaHeads{std::move(alpha), std::move(beta), sink};
  c.max_chunk = max_chunk;
  return c;
}

#define MOBA_CONFIG_ARGS                                                                     \
  py::kw_only(), py::arg("dtype"), py::arg("num_q_heads"), py::arg("num_kv_heads"),        \
      py::arg("head_dim"), py::arg("page_size"), py::arg("num_pages"), py::arg("max_rows"), \
      py::arg("max_seqlen"), py::arg("block_size") = 0, py::arg("moa_evict") = false,       \
      py::arg("alpha") = std::vector<float>{}, py::arg("beta") = std::vector<float>{},      \
      py::arg("sink") = 64, py::arg("max_chunk") = 1

}  // namespace

void bind_paged(py::module_& m) {
  m.def(
      "kv_cache_shapes",
      [](const std::string& dtype, int hq, int hkv, int d, int page, int pages, int rows,
         int max_len, int block, bool evict, std::vector<float> a, std::vector<float> b, int sink,
         int max_chunk) {
        const auto s = moba::kv_cache_shapes(
            make_config(dtype, hq, hkv, d, page, pages, rows, max_len, block, evict, std::move(a),
                        std::move(b), sink, max_chunk));
        py::dict out;
        out["k_pages"] = s.k_pages;
        out["v_pages"] = s.v_pages;
        out["page_table"] = s.page_table;
        out["seq_lens"] = s.seq_lens;
        out["block_means"] = s.block_means;
        out["block_sums"] = s.block_sums;
        return out;
      },
      MOBA_CONFIG_ARGS, "Shapes of the tensors a paged KV cache with this configuration needs.");

  py::class_<moba::PagedKVCache>(m, "PagedKVCache")
      .def(py::init([](py::handle k_pages, py::handle v_pages, py::handle page_table,
                       py::handle seq_lens, py::handle block_means, py::handle block_sums,
                       const std::string& dtype, int hq, int hkv, int d, int page, int pages,
                       int rows, int max_len, int block, bool evict, std::vector<float> a,
                       std::vector<float> b, int sink, int max_chunk) {
             return new moba::PagedKVCache(
                 make_config(dtype, hq, hkv, d, page, pages, rows, max_len, block, evict,
                             std::move(a), std::move(b), sink, max_chunk),
                 paged_kv(k_pages, v_pages, page_table, seq_lens, block_means, block_sums));
           }),
           py::arg("k_pages"), py::arg("v_pages"), py::arg("page_table"), py::arg("seq_lens"),
           py::arg("block_means"), py::arg("block_sums"), MOBA_CONFIG_ARGS)
      .def(
          "reserve",
          [](moba::PagedKVCache& c, const std::vector<int>& new_tokens,
             const std::vector<int>& slots, std::uintptr_t stream) {
            moba::RunOptions o;
            o.cuda_stream = reinterpret_cast<void*>(stream);
            c.reserve(new_tokens, slots, o);
          },
          py::arg("new_tokens"), py::arg("slots"), py::arg("cuda_stream") = 0)
      .def("release", &moba::PagedKVCache::release, py::arg("slot"))
      .def("reset", &moba::PagedKVCache::reset)
      .def("seq_len", &moba::PagedKVCache::seq_len, py::arg("slot"))
      .def_property_readonly("free_pages", &moba::PagedKVCache::free_pages)
      .def_property_readonly("used_pages", &moba::PagedKVCache::used_pages)
      .def_property_readonly("pages_per_seq", &moba::PagedKVCache::pages_per_seq)
      .def("host_page_table", &moba::PagedKVCache::host_page_table);

  m.def(
      "kv_append",
      [](py::handle k, py::handle v, py::handle cu, py::handle slots, py::handle k_pages,
         py::handle v_pages, py::handle page_table, py::handle seq_lens, py::handle block_means,
         py::handle block_sums, int block_size, const std::string& backend, std::uintptr_t stream,
         int num_threads) {
        const auto kv = paged_kv(k_pages, v_pages, page_table, seq_lens, block_means, block_sums);
        const auto kview = to_view(k), vview = to_view(v), cview = to_view(cu), sview = to_view(slots);
        const auto o = make_options(backend, stream, false, num_threads);
        py::gil_scoped_release nogil;
        moba::kv_append(kview, vview, cview, kv, block_size, sview, o);
      },
      py::arg("k_new"), py::arg("v_new"), py::arg("cu_seqlens"), py::arg("slots"),
      py::arg("k_pages"), py::arg("v_pages"), py::arg("page_table"), py::arg("seq_lens"),
      py::arg("block_means"), py::arg("block_sums"), py::kw_only(), py::arg("block_size") = 0,
      py::arg("backend") = "auto", py::arg("cuda_stream") = 0, py::arg("num_threads") = 0,
      "moba::kv_append: new K/V into assigned pages, block means, seq_lens += n.");

  m.def(
      "paged_attention",
      [](py::handle q, py::handle cu, py::handle slots, py::handle k_pages, py::handle v_pages,
         py::handle page_table, py::handle seq_lens, py::handle block_means, py::handle selection,
         bool run_gate, bool include_own_block, py::handle out, py::handle lse,
         const std::string& mode, int block_size, int topk, double scale,
         std::vector<float> alpha, std::vector<float> beta, int sink, const std::string& backend,
         std::uintptr_t stream, bool deterministic, int num_threads) {
        const auto kv = paged_kv(k_pages, v_pages, page_table, seq_lens, block_means, py::none());
        const auto qv = to_view(q), cv = to_view(cu), sv = to_view(slots), selv = to_view(selection);
        const auto ov = to_view(out), lv = to_view(lse);
        const auto params = make_params(mode, block_size, topk, scale, std::move(alpha),
                                        std::move(beta), sink);
        const auto o = make_options(backend, stream, deterministic, num_threads);
        moba::PagedAttentionArgs args;
        args.slots = sv;
        args.selection = selv;
        args.include_own_block = include_own_block;
        py::gil_scoped_release nogil;
        if (run_gate && params.mode == moba::Mode::moba) moba::paged_moba_gate(qv, cv, kv, params, selv, sv, o);
        moba::paged_attention(qv, cv, kv, params, args, ov, lv, o);
      },
      py::arg("q"), py::arg("cu_seqlens"), py::arg("slots"), py::arg("k_pages"), py::arg("v_pages"),
      py::arg("page_table"), py::arg("seq_lens"), py::arg("block_means"), py::arg("selection"),
      py::arg("run_gate"), py::arg("include_own_block"), py::arg("out"), py::arg("lse"),
      MOBA_PARAM_ARGS,
      "moba::paged_moba_gate (run_gate, MoBA) then moba::paged_attention into out / lse.");

  m.def(
      "merge_states",
      [](py::handle out_a, py::handle lse_a, py::handle out_b, py::handle lse_b, py::handle out,
         py::handle lse, std::uintptr_t stream) {
        const auto a = to_view(out_a), la = to_view(lse_a), b = to_view(out_b), lb = to_view(lse_b);
        const auto o = to_view(out), l = to_view(lse);
        moba::RunOptions opt;
        opt.cuda_stream = reinterpret_cast<void*>(stream);
        py::gil_scoped_release nogil;
        moba::merge_attention_states(a, la, b, lb, o, l, opt);
      },
      py::arg("out_a"), py::arg("lse_a"), py::arg("out_b"), py::arg("lse_b"), py::arg("out"),
      py::arg("lse"), py::arg("cuda_stream") = 0, "moba::merge_attention_states.");
}

}  // namespace moba_py
