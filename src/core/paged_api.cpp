// Public paged entry points (moba/paged_attention.hpp, kv_append): check every view once,
// build the PagedProblem, dispatch to the backend of the tensors' device. Nothing here reads
// device memory, so GPU calls stay free of host synchronisation.
#include <string>

#include "core/backends.hpp"
#include "core/paged.hpp"
#include "core/validate.hpp"
#include "moba/kv_cache.hpp"
#include "moba/paged_attention.hpp"

namespace moba {

using namespace detail;

void detail::check_paged_view(const char* name, const TensorView& t, int ndim, const char* layout,
                              DType dtype, Device device) {
  if (t.ndim != ndim) invalid(name, std::to_string(ndim) + " dimensions " + layout, "shape " + t.shape_str());
  if (t.data == nullptr && t.numel() != 0) invalid(name, "a non-null data pointer", "nullptr");
  if (t.dtype != dtype) invalid(name, "dtype " + dtype_name(dtype), dtype_name(t.dtype));
  if (t.device != device) invalid(name, "device " + device_name(device), device_name(t.device));
  if (!t.is_contiguous()) invalid(name, "a contiguous tensor", "non-contiguous strides");
}

namespace {

std::string num(std::int64_t x) { return std::to_string(x); }

void check_dim(const char* name, const TensorView& t, int d, std::int64_t expected,
               const std::string& what) {
  if (t.shape[d] != expected)
    invalid(name, "shape[" + num(d) + "] = " + num(expected) + " (" + what + ")", "shape " + t.shape_str());
}

void check_means(PagedCache& c, const PagedKV& kv, DType dtype, Device device, int head_dim) {
  check_paged_view("kv.block_means", kv.block_means, 4, "[rows, num_kv_heads, max_blocks, head_dim]", dtype, device);
  check_dim("kv.block_means", kv.block_means, 0, c.rows, "rows of kv.page_table");
  check_dim("kv.block_means", kv.block_means, 1, c.hkv, "num_kv_heads");
  check_dim("kv.block_means", kv.block_means, 3, head_dim, "head_dim");
  c.block_means = kv.block_means.data;
  c.max_blocks = static_cast<int>(kv.block_means.shape[2]);
}

// Batch-to-row map: host copy for host tensors, device pointer otherwise.
void set_slots(PagedProblem& p, const TensorView& slots) {
  if (slots.empty_view()) {
    if (p.base.batch > p.cache.rows)
      invalid("slots", "a slot per sequence when the batch (" + num(p.base.batch) +
                           ") exceeds the cache rows (" + num(p.cache.rows) + ")", "none");
    return;
  }
  if (slots.ndim != 1 || slots.shape[0] != p.base.batch)
    invalid("slots", "int32 [batch] = [" + num(p.base.batch) + "]", "shape " + slots.shape_str());
  if (slots.dtype != DType::i32) invalid("slots", "dtype i32", dtype_name(slots.dtype));
  if (!slots.is_contiguous()) invalid("slots", "a contiguous tensor", "non-contiguous strides");
  if (slots.device.type == DeviceType::cpu) {
    const auto* s = static_cast<const std::int32_t*>(slots.data);
    p.slots.assign(s, s + p.base.batch);
    for (int b = 0; b < p.base.batch; ++b)
      if (p.slots[b] < 0 || p.slots[b] >= p.cache.rows)
        invalid("slots[" + num(b) + "]", "a cache row in [0, " + num(p.cache.rows) + ")", num(p.slots[b]));
  } else {
    if (slots.device != p.base.device)
      invalid("slots", "device cpu or " + device_name(p.base.device), device_name(slots.device));
    p.slots_dev = static_cast<const std::int32_t*>(slots.data);
  }
}

// The query side: dtype, heads, parameters, cu_seqlens (read on the host only when it lives
// there; on the GPU the kernels read it).
Problem query_problem(const TensorView& q, const TensorView& cu_seqlens_q, int hkv,
                      const AttentionParams& params) {
  if (q.ndim != 3) invalid("q", "3 dimensions [total_q, num_q_heads, head_dim]", "shape " + q.shape_str());
  if (hkv < 1 || q.shape[1] % hkv != 0)
    invalid("q", "num_q_heads a multiple of the cache's num_kv_heads = " + num(hkv), "shape " + q.shape_str());
  // make_problem checks q, the parameters and cu_seqlens; a stand-in key view with the
  // cache's KV heads (never read) and, for device cu_seqlens, a host stand-in [0, total]
  // keep it from copying anything back from the GPU.
  TensorView k_like = q;
  k_like.shape[1] = hkv;
  const bool host_cu = cu_seqlens_q.device.type == DeviceType::cpu;
  std::int32_t whole[2] = {0, static_cast<std::int32_t>(q.shape[0])};
  const TensorView cu_stand_in = TensorView::contiguous(whole, DType::i32, Device::cpu(), {2});
  if (!host_cu) {
    if (cu_seqlens_q.ndim != 1 || cu_seqlens_q.shape[0] < 1)
      invalid("cu_seqlens", "int32 [batch + 1]", "shape " + cu_seqlens_q.shape_str());
    if (cu_seqlens_q.dtype != DType::i32) invalid("cu_seqlens", "dtype i32", dtype_name(cu_seqlens_q.dtype));
    if (cu_seqlens_q.device != q.device)
      invalid("cu_seqlens", "device cpu or " + device_name(q.device), device_name(cu_seqlens_q.device));
  }
  Problem p = make_problem(q, k_like, host_cu ? cu_seqlens_q : cu_stand_in, params);
  if (!host_cu) {
    p.batch = static_cast<int>(cu_seqlens_q.shape[0] - 1);
    p.cu_seqlens.clear();
    p.cu_seqlens_dev = static_cast<const int*>(cu_seqlens_q.data);
  }
  return p;
}

Backend pick_backend(const Problem& p, const RunOptions& o) {
  RunOptions ro = o;
  if (ro.backend == Backend::reference) ro.backend = Backend::cpu;  // no fp64 paged path
  Problem device_only = p;  // the paged kernels take any MoBA block size
  device_only.mode = Mode::full;
  return resolve_backend(device_only, ro);
}

PagedProblem make_paged(const TensorView& q, const TensorView& cu_seqlens_q, const PagedKV& kv,
                        const AttentionParams& params, const TensorView& slots) {
  PagedProblem p;
  const int hkv = kv.page_table.ndim == 3 ? static_cast<int>(kv.page_table.shape[1]) : 0;
  if (kv.page_table.ndim != 3)
    invalid("kv.page_table", "3 dimensions [rows, num_kv_heads, pages_per_seq]", "shape " + kv.page_table.shape_str());
  p.base = query_problem(q, cu_seqlens_q, hkv, params);
  p.cache = check_paged_cache(kv, p.base.dtype, p.base.device, hkv, p.base.head_dim);
  set_slots(p, slots);
  return p;
}

}  // namespace

// k/v pages, page table and seq lens, checked against the query's dtype, device and heads.
PagedCache detail::check_paged_cache(const PagedKV& kv, DType dtype, Device device, int hkv,
                                     int head_dim) {
  check_paged_view("kv.k_pages", kv.k_pages, 3, "[num_pages, page_size, head_dim]", dtype, device);
  check_paged_view("kv.v_pages", kv.v_pages, 3, "[num_pages, page_size, head_dim]", dtype, device);
  for (int d = 0; d < 3; ++d) check_dim("kv.v_pages", kv.v_pages, d, kv.k_pages.shape[d], "same as kv.k_pages");
  check_dim("kv.k_pages", kv.k_pages, 2, head_dim, "head_dim of the queries / new keys");
  if (kv.k_pages.shape[1] < 1) invalid("kv.k_pages", "page_size >= 1", "shape " + kv.k_pages.shape_str());
  check_paged_view("kv.page_table", kv.page_table, 3, "[rows, num_kv_heads, pages_per_seq]", DType::i32, device);
  check_dim("kv.page_table", kv.page_table, 1, hkv, "num_kv_heads");
  check_paged_view("kv.seq_lens", kv.seq_lens, 1, "[rows]", DType::i32, device);
  check_dim("kv.seq_lens", kv.seq_lens, 0, kv.page_table.shape[0], "rows of kv.page_table");
  PagedCache c;
  c.k_pages = kv.k_pages.data;
  c.v_pages = kv.v_pages.data;
  c.page_table = static_cast<const std::int32_t*>(kv.page_table.data);
  c.seq_lens = static_cast<std::int32_t*>(kv.seq_lens.data);
  c.num_pages = static_cast<int>(kv.k_pages.shape[0]);
  c.page_size = static_cast<int>(kv.k_pages.shape[1]);
  c.rows = static_cast<int>(kv.page_table.shape[0]);
  c.pages_per_seq = static_cast<int>(kv.page_table.shape[2]);
  c.hkv = hkv;
  return c;
}


void paged_moba_gate(const TensorView& q, const TensorView& cu_seqlens_q, const PagedKV& kv,
                     const AttentionParams& params, TensorView selection, const TensorView& slots,
                     const RunOptions& options) {
  if (params.mode != Mode::moba) invalid("params.mode", "Mode::moba for paged_moba_gate", "another mode");
  PagedProblem p = make_paged(q, cu_seqlens_q, kv, params, slots);
  check_means(p.cache, kv, p.base.dtype, p.base.device, p.base.head_dim);
  const Backend b = pick_backend(p.base, options);
  std::int32_t* sel = check_selection("selection", selection, p.base);
  const Operand qo{q.data, q.stride[0], q.stride[1]};
  if (b == Backend::cuda) cuda_paged_gate(p, qo, sel, options);
  else cpu_paged_gate(p, qo, sel, options);
}

void paged_attention(const TensorView& q, const TensorView& cu_seqlens_q, const PagedKV& kv,
                     const AttentionParams& params, const PagedAttentionArgs& args,
                     TensorView out, TensorView lse, const RunOptions& options) {
  PagedProblem p = make_paged(q, cu_seqlens_q, kv, params, args.slots);
  p.include_own_block = args.include_own_block;
  const Backend b = pick_backend(p.base, options);
  PagedOutputs io;
  io.q = Operand{q.data, q.stride[0], q.stride[1]};
  io.out = check_operand("out", out, q, "q");
  io.lse = check_lse("lse", lse, p.base);
  io.selection = check_selection("args.selection", args.selection, p.base);
  if (b == Backend::cuda) cuda_paged_attention(p, io, options);
  else cpu_paged_attention(p, io, options);
}

void kv_append(const TensorView& k_new, const TensorView& v_new, const TensorView& cu_seqlens_new,
               const PagedKV& kv, int block_size, const TensorView& slots,
               const RunOptions& options) {
  if (k_new.ndim != 3) invalid("k_new", "3 dimensions [new_tokens, num_kv_heads, head_dim]", "shape " + k_new.shape_str());
  if (kv.page_table.ndim != 3 || kv.page_table.shape[1] != k_new.shape[1])
    invalid("kv.page_table", "[rows, num_kv_heads, pages_per_seq] with num_kv_heads = " +
                                 num(k_new.shape[1]) + " (heads of k_new)", "shape " + kv.page_table.shape_str());
  if (block_size < 0) invalid("block_size", "a block size >= 0 (0: no block means)", num(block_size));
  PagedProblem p = make_paged(k_new, cu_seqlens_new, kv, AttentionParams::full(), slots);
  if (block_size > 0) {
    check_means(p.cache, kv, p.base.dtype, p.base.device, p.base.head_dim);
    check_paged_view("kv.block_sums", kv.block_sums, 3, "[rows, num_kv_heads, head_dim]", DType::f64, p.base.device);
    check_dim("kv.block_sums", kv.block_sums, 0, p.cache.rows, "rows of kv.page_table");
    check_dim("kv.block_sums", kv.block_sums, 1, p.cache.hkv, "num_kv_heads");
    check_dim("kv.block_sums", kv.block_sums, 2, p.base.head_dim, "head_dim");
    p.cache.block_sums = static_cast<double*>(kv.block_sums.data);
  }
  if (p.slots.size() > 1) {  // two sequences writing one row would race
    std::vector<char> seen(p.cache.rows, 0);
    for (int b = 0; b < p.base.batch; ++b)
      if (seen[p.slots[b]]++) invalid("slots[" + num(b) + "]", "distinct cache rows", "row " + num(p.slots[b]) + " twice");
  }
  AppendInputs in;
  in.k = Operand{k_new.data, k_new.stride[0], k_new.stride[1]};
  in.v = check_operand("v_new", v_new, k_new, "k_new");
  in.block_size = block_size;
  const Backend b = pick_backend(p.base, options);
  if (b == Backend::cuda) cuda_kv_append(p, in, options);
  else cpu_kv_append(p, in, options);
}

void merge_attention_states(const TensorView& out_a, const TensorView& lse_a,
                            const TensorView& out_b, const TensorView& lse_b, TensorView out,
                            TensorView lse, const RunOptions& options) {
  if (out_a.ndim != 3) invalid("out_a", "3 dimensions [total, heads, head_dim]", "shape " + out_a.shape_str());
  const Operand a = check_operand("out_a", out_a, out_a, "out_a");
  const Operand bo = check_operand("out_b", out_b, out_a, "out_a");
  const Operand o = check_operand("out", out, out_a, "out_a");
  Problem shape;
  shape.total = static_cast<int>(out_a.shape[0]);
  shape.hq = static_cast<int>(out_a.shape[1]);
  shape.device = out_a.device;
  const float* la = check_lse("lse_a", lse_a, shape);
  const float* lb = check_lse("lse_b", lse_b, shape);
  float* l = check_lse("lse", lse, shape);
  const int D = static_cast<int>(out_a.shape[2]);
  if (out_a.device.type == DeviceType::cuda)
    cuda_merge_states(shape.total, shape.hq, D, out_a.dtype, a, la, bo, lb, o, l, options);
  else
    cpu_merge_states(shape.total, shape.hq, D, out_a.dtype, a, la, bo, lb, o, l, options);
}

}  // namespace moba
