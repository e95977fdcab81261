// paged_attention_backward (moba/paged_attention_backward.hpp): checks every view once and
// hands the validated problem to the backend of the tensors' device (src/cpu/paged_backward.cpp,
// src/cuda/paged/). Nothing here reads GPU memory: a GPU call stays free of host syncs.
#include <string>

#include "core/paged.hpp"
#include "core/paged_backward.hpp"
#include "core/validate.hpp"
#include "moba/paged_attention_backward.hpp"

namespace moba {

using namespace detail;

namespace {

std::string num(std::int64_t x) { return std::to_string(x); }

void check_same_shape(const char* name, const TensorView& t, const TensorView& like, const char* like_name) {
  for (int d = 0; d < like.ndim; ++d)
    if (t.ndim != like.ndim || t.shape[d] != like.shape[d])
      invalid(name, "shape " + like.shape_str() + " (same as " + like_name + ")", "shape " + t.shape_str());
}

}  // namespace

void paged_attention_backward(const TensorView& q, const TensorView& cu_seqlens_q, const PagedKV& kv,
                              const AttentionParams& params, const PagedAttentionArgs& args,
                              const TensorView& out, const TensorView& lse, const TensorView& dout,
                              TensorView dq, TensorView dk_pages, TensorView dv_pages,
                              const RunOptions& options) {
  if (q.ndim != 3) invalid("q", "3 dimensions [total_q, num_q_heads, head_dim]", "shape " + q.shape_str());
  if (kv.page_table.ndim != 3)
    invalid("kv.page_table", "3 dimensions [rows, num_kv_heads, pages_per_seq]", "shape " + kv.page_table.shape_str());
  const int hkv = static_cast<int>(kv.page_table.shape[1]);
  if (hkv < 1 || q.shape[1] % hkv != 0)
    invalid("q", "num_q_heads a multiple of the cache's num_kv_heads = " + num(hkv), "shape " + q.shape_str());
  const bool on_gpu = q.device.type == DeviceType::cuda;
  if (!on_gpu && cu_seqlens_q.device.type != DeviceType::cpu)
    invalid("cu_seqlens", "device cpu (q is on the cpu)", device_name(cu_seqlens_q.device));
  TensorView k_like = q;  // make_problem checks q, params and cu_seqlens; k is a stand-in
  k_like.shape[1] = hkv;
  PagedProblem p;
  // On the GPU a device cu_seqlens is read by the kernel, never copied back.
  p.base = make_problem(q, k_like, cu_seqlens_q, params, options.cuda_stream, !on_gpu);
  // Host tensors run the CPU backend (any head_dim, as before); GPU tensors (or an explicit
  // backend = cuda) go through the common backend check.
  Backend backend = Backend::cpu;
  if (on_gpu || options.backend == Backend::cuda) {
    RunOptions ro = options;
    if (ro.backend == Backend::reference) ro.backend = Backend::cpu;  // no fp64 paged path
    Problem device_only = p.base;  // the paged kernels take any MoBA block size
    device_only.mode = Mode::full;
    backend = resolve_backend(device_only, ro);
  }
  p.cache = check_paged_cache(kv, p.base.dtype, p.base.device, hkv, p.base.head_dim);
  p.include_own_block = args.include_own_block;
  if (!args.slots.empty_view() && args.slots.device.type != DeviceType::cpu) {
    check_paged_view("args.slots", args.slots, 1, "[batch]", DType::i32, p.base.device);
    if (args.slots.shape[0] != p.base.batch)
      invalid("args.slots", "int32 [batch] = [" + num(p.base.batch) + "]", "shape " + args.slots.shape_str());
    p.slots_dev = static_cast<const std::int32_t*>(args.slots.data);
  } else if (!args.slots.empty_view()) {
    if (args.slots.ndim != 1 || args.slots.shape[0] != p.base.batch)
      invalid("args.slots", "int32 [batch] = [" + num(p.base.batch) + "]", "shape " + args.slots.shape_str());
    check_paged_view("args.slots", args.slots, 1, "[batch]", DType::i32, Device::cpu());
    const auto* s = static_cast<const std::int32_t*>(args.slots.data);
    p.slots.assign(s, s + p.base.batch);
    for (int b = 0; b < p.base.batch; ++b)
      if (p.slots[b] < 0 || p.slots[b] >= p.cache.rows)
        invalid("args.slots[" + num(b) + "]", "a cache row in [0, " + num(p.cache.rows) + ")", num(p.slots[b]));
  } else if (p.base.batch > p.cache.rows) {
    invalid("args.slots", "a slot per sequence when the batch (" + num(p.base.batch) +
                              ") exceeds the cache rows (" + num(p.cache.rows) + ")", "none");
  }
  PagedOutputs io;
  io.q = Operand{q.data, q.stride[0], q.stride[1]};
  io.out = check_operand("out", out, q, "q");
  io.selection = check_selection("args.selection", args.selection, p.base);
  const float* l = check_lse("lse", lse, p.base);
  const Operand d_out = check_operand("dout", dout, q, "q");
  const Operand d_q = check_operand("dq", dq, q, "q");
  const DType gd = dk_pages.dtype;
  if (gd != DType::f32 && gd != p.base.dtype)
    invalid("dk_pages", "dtype f32 or " + dtype_name(p.base.dtype) + " (q's)", dtype_name(gd));
  check_paged_view("dk_pages", dk_pages, 3, "[num_pages, page_size, head_dim]", gd, p.base.device);
  check_paged_view("dv_pages", dv_pages, 3, "[num_pages, page_size, head_dim]", gd, p.base.device);
  check_same_shape("dk_pages", dk_pages, kv.k_pages, "kv.k_pages");
  check_same_shape("dv_pages", dv_pages, kv.k_pages, "kv.k_pages");
  if (backend == Backend::cuda)
    cuda_paged_attention_backward(p, io, d_out, d_q, l, dk_pages.data, dv_pages.data, gd, options);
  else
    cpu_paged_attention_backward(p, io, d_out, d_q, l, dk_pages.data, dv_pages.data, gd, options);
}

}  // namespace moba
