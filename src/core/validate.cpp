#include "core/validate.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <new>
#include <sstream>

#include "core/backends.hpp"

namespace moba::detail {

void fail(ErrorKind kind, const std::string& message) { throw Error(kind, message); }

void invalid(const std::string& arg, const std::string& expected, const std::string& got) {
  fail(ErrorKind::invalid_argument, arg + ": expected " + expected + ", got " + got);
}

namespace {

bool is_float_dtype(DType t) { return t == DType::f32 || t == DType::f16 || t == DType::bf16; }

void check_rank(const char* name, const TensorView& t, int ndim, const char* layout) {
  if (t.data == nullptr && t.numel() != 0) invalid(name, "a non-null data pointer", "nullptr");
  if (t.ndim != ndim)
    invalid(name, std::to_string(ndim) + " dimensions " + layout, "shape " + t.shape_str());
}

void check_last_contiguous(const char* name, const TensorView& t) {
  if (t.shape[t.ndim - 1] > 1 && t.stride[t.ndim - 1] != 1)
    invalid(name, "the last dimension contiguous (stride 1)",
            "stride " + std::to_string(t.stride[t.ndim - 1]));
}

void check_finite_list(const char* name, const std::vector<float>& xs) {
  for (std::size_t i = 0; i < xs.size(); ++i)
    if (!std::isfinite(xs[i]) || xs[i] < 0)
      invalid(std::string(name) + "[" + std::to_string(i) + "]", "a finite value >= 0",
              std::to_string(xs[i]));
}

std::vector<float> expand_heads(const char* name, const std::vector<float>& xs, int hq,
                                int hkv) {
  if (static_cast<int>(xs.size()) == hq) return xs;
  if (static_cast<int>(xs.size()) == hkv) {
    std::vector<float> out(hq);
    for (int h = 0; h < hq; ++h) out[h] = xs[h / (hq / hkv)];
    return out;
  }
  invalid(name, "one value per query head (" + std::to_string(hq) + ") or per KV head (" +
                    std::to_string(hkv) + ")",
          std::to_string(xs.size()) + " values");
}

// The host copy of cu_seqlens (one small stream-ordered copy when it lives on a GPU), checked.
void read_cu_seqlens(Problem& p, const TensorView& cu_seqlens, void* cuda_stream) {
  if (cu_seqlens.device.type == DeviceType::cpu) {
    const auto* c = static_cast<const std::int32_t*>(cu_seqlens.data);
    p.cu_seqlens.assign(c, c + p.batch + 1);
  } else {
    p.cu_seqlens_dev = static_cast<const int*>(cu_seqlens.data);
    cuda_copy_to_host(p.cu_seqlens.data(), cu_seqlens.data, sizeof(int) * (p.batch + 1), cuda_stream);
  }
  if (p.cu_seqlens[0] != 0) invalid("cu_seqlens", "cu_seqlens[0] == 0", std::to_string(p.cu_seqlens[0]));
  for (int b = 0; b < p.batch; ++b) {
    if (p.cu_seqlens[b + 1] < p.cu_seqlens[b])
      invalid("cu_seqlens", "non-decreasing values",
              "cu_seqlens[" + std::to_string(b + 1) + "] = " + std::to_string(p.cu_seqlens[b + 1]) +
                  " < cu_seqlens[" + std::to_string(b) + "] = " + std::to_string(p.cu_seqlens[b]));
    p.max_seqlen = std::max(p.max_seqlen, p.cu_seqlens[b + 1] - p.cu_seqlens[b]);
  }
  if (p.cu_seqlens[p.batch] != p.total)
    invalid("cu_seqlens", "last value == total tokens = " + std::to_string(p.total),
            std::to_string(p.cu_seqlens[p.batch]));
}

void check_params(Problem& p, const AttentionParams& params) {
  p.mode = params.mode;
  if (!std::isfinite(params.softmax_scale))
    invalid("softmax_scale", "a finite value (0 for 1/sqrt(head_dim))", std::to_string(params.softmax_scale));
  p.scale = params.softmax_scale != 0.f ? params.softmax_scale
                                        : static_cast<float>(1.0 / std::sqrt(double(p.head_dim)));
  if (p.mode == Mode::moba) {
    if (params.block_size <= 0) invalid("block_size", "a block size > 0", std::to_string(params.block_size));
    if (params.topk < 1) invalid("topk", "topk >= 1 (it counts the own block)", std::to_string(params.topk));
    p.block_size = params.block_size;
    p.topk = params.topk;
  } else if (p.mode == Mode::moa) {
    check_finite_list("moa.alpha", params.moa.alpha);
    check_finite_list("moa.beta", params.moa.beta);
    p.moa_alpha = expand_heads("moa.alpha", params.moa.alpha, p.hq, p.hkv);
    p.moa_beta = expand_heads("moa.beta", params.moa.beta, p.hq, p.hkv);
    if (params.moa.sink < 0) invalid("moa.sink", "a sink size >= 0", std::to_string(params.moa.sink));
    p.moa_sink = params.moa.sink;
  }
}

}  // namespace

Problem make_problem(const TensorView& q, const TensorView& k, const TensorView& cu_seqlens,
                     const AttentionParams& params, void* cuda_stream,
                     bool read_device_cu_seqlens) {
  check_rank("q", q, 3, "[total_tokens, num_q_heads, head_dim]");
  check_rank("k", k, 3, "[total_tokens, num_kv_heads, head_dim]");
  if (!is_float_dtype(q.dtype)) invalid("q", "dtype f32, f16 or bf16", dtype_name(q.dtype));
  if (k.dtype != q.dtype) invalid("k", "dtype " + dtype_name(q.dtype) + " (same as q)", dtype_name(k.dtype));
  if (k.device != q.device)
    invalid("k", "device " + device_name(q.device) + " (same as q)", device_name(k.device));
  check_last_contiguous("q", q);
  check_last_contiguous("k", k);
  if (k.shape[0] != q.shape[0])
    invalid("k", "shape[0] == q.shape[0] = " + std::to_string(q.shape[0]) + " (same tokens)",
            "shape " + k.shape_str());
  if (k.shape[2] != q.shape[2])
    invalid("k", "head_dim " + std::to_string(q.shape[2]) + " (same as q)", "shape " + k.shape_str());
  if (q.shape[2] < 1) invalid("q", "head_dim >= 1", "shape " + q.shape_str());
  if (q.shape[1] < 1) invalid("q", "at least one head", "shape " + q.shape_str());
  if (k.shape[1] < 1 || q.shape[1] % k.shape[1] != 0)
    invalid("k", "num_kv_heads dividing num_q_heads = " + std::to_string(q.shape[1]) +
                     " (head ratio for GQA/MQA)",
            std::to_string(k.shape[1]) + " heads");
  if (q.shape[0] >= (std::int64_t(1) << 31))
    invalid("q", "fewer than 2^31 tokens", std::to_string(q.shape[0]));
  if (q.shape[1] >= (std::int64_t(1) << 31) || q.shape[2] >= (std::int64_t(1) << 31))
    invalid("q", "fewer than 2^31 heads and head_dim", "shape " + q.shape_str());

  Problem p;
  p.dtype = q.dtype;
  p.device = q.device;
  p.total = static_cast<int>(q.shape[0]);
  p.hq = static_cast<int>(q.shape[1]);
  p.hkv = static_cast<int>(k.shape[1]);
  p.head_dim = static_cast<int>(q.shape[2]);

  // cu_seqlens: int32 [batch + 1], on the host or on the tensors' device.
  check_rank("cu_seqlens", cu_seqlens, 1, "[batch + 1]");
  if (cu_seqlens.dtype != DType::i32) invalid("cu_seqlens", "dtype i32", dtype_name(cu_seqlens.dtype));
  if (cu_seqlens.shape[0] < 1) invalid("cu_seqlens", "at least 1 entry (batch + 1)", "shape " + cu_seqlens.shape_str());
  if (!cu_seqlens.is_contiguous()) invalid("cu_seqlens", "a contiguous tensor", "stride " + std::to_string(cu_seqlens.stride[0]));
  if (cu_seqlens.device.type != DeviceType::cpu && cu_seqlens.device != q.device)
    invalid("cu_seqlens", "device cpu or " + device_name(q.device), device_name(cu_seqlens.device));
  if (cu_seqlens.shape[0] - 1 > std::numeric_limits<int>::max() - 1)
    invalid("cu_seqlens", "fewer than 2^31 - 1 sequences", "shape " + cu_seqlens.shape_str());
  p.batch = static_cast<int>(cu_seqlens.shape[0] - 1);
  if (cu_seqlens.device.type != DeviceType::cpu && !read_device_cu_seqlens) {
    p.cu_seqlens_dev = static_cast<const int*>(cu_seqlens.data);
    p.max_seqlen = p.total;  // a bound: the lengths stay on the device
  } else {
    try {
      p.cu_seqlens.resize(std::size_t(p.batch) + 1);
    } catch (const std::bad_alloc&) {
      fail(ErrorKind::out_of_memory, "cu_seqlens: no host memory for a copy of " +
                                         std::to_string(p.batch + 1LL) + " entries");
    }
    read_cu_seqlens(p, cu_seqlens, cuda_stream);
  }
  check_params(p, params);
  return p;
}

int Problem::moa_window(int h, int seqlen) const {
  // One fused multiply-add (one rounding): the CUDA planner computes the same on the device.
  const double span = std::floor(std::fma(double(moa_beta[h]), double(seqlen), double(moa_alpha[h])));
  if (span < 1.0) return 1;
  return span > double(seqlen) ? std::max(seqlen, 1) : static_cast<int>(span);
}

Backend resolve_backend(const Problem& p, const RunOptions& o) {
  Backend b = o.backend;
  if (b == Backend::automatic) b = p.device.type == DeviceType::cuda ? Backend::cuda : Backend::cpu;
  if (b == Backend::cuda) {
    if (p.device.type != DeviceType::cuda)
      invalid("q", "tensors on a CUDA device for the cuda backend", device_name(p.device));
    if (!cuda_compiled())
      fail(ErrorKind::unsupported, "the cuda backend was not compiled into this build (configure with nvcc present)");
    if (p.head_dim != 64 && p.head_dim != 128)
      invalid("q", "head_dim 64 or 128 on the cuda backend", std::to_string(p.head_dim));
    if (p.mode == Mode::moba && p.block_size < kMinCudaBlockSize)
      invalid("block_size", "a block size >= " + std::to_string(kMinCudaBlockSize) + " on the cuda backend",
              std::to_string(p.block_size));
  } else {
    if (p.device.type != DeviceType::cpu)
      invalid("q", std::string("tensors in host memory for the ") +
                       (b == Backend::reference ? "reference" : "cpu") + " backend",
              device_name(p.device));
    if (b == Backend::cpu && p.head_dim != 64 && p.head_dim != 128)
      invalid("q", "head_dim 64 or 128 on the cpu backend (the reference takes any)",
              std::to_string(p.head_dim));
  }
  return b;
}

Operand check_operand(const char* name, const TensorView& t, const TensorView& like,
                      const char* like_name) {
  check_rank(name, t, 3, "[total_tokens, heads, head_dim]");
  for (int d = 0; d < 3; ++d)
    if (t.shape[d] != like.shape[d])
      invalid(name, "shape " + like.shape_str() + " (same as " + like_name + ")", "shape " + t.shape_str());
  if (t.dtype != like.dtype)
    invalid(name, "dtype " + dtype_name(like.dtype) + " (same as " + like_name + ")", dtype_name(t.dtype));
  if (t.device != like.device)
    invalid(name, "device " + device_name(like.device) + " (same as " + like_name + ")", device_name(t.device));
  check_last_contiguous(name, t);
  return Operand{t.data, t.stride[0], t.stride[1]};
}

float* check_lse(const char* name, const TensorView& lse, const Problem& p) {
  check_rank(name, lse, 2, "[num_q_heads, total_tokens]");
  if (lse.dtype != DType::f32) invalid(name, "dtype f32", dtype_name(lse.dtype));
  if (lse.shape[0] != p.hq || lse.shape[1] != p.total)
    invalid(name, "shape [" + std::to_string(p.hq) + ", " + std::to_string(p.total) + "]", "shape " + lse.shape_str());
  if (lse.device != p.device) invalid(name, "device " + device_name(p.device), device_name(lse.device));
  if (!lse.is_contiguous()) invalid(name, "a contiguous tensor", "strides [" + std::to_string(lse.stride[0]) + ", " + std::to_string(lse.stride[1]) + "]");
  return static_cast<float*>(lse.data);
}

std::int32_t* check_selection(const char* name, const TensorView& sel, const Problem& p) {
  if (p.mode != Mode::moba) return nullptr;  // only MoBA has a selection
  if (sel.data == nullptr && sel.ndim == 0)
    invalid(name, "an int32 [total, num_q_heads, topk - 1] tensor for MoBA", "an empty view");
  check_rank(name, sel, 3, "[total_tokens, num_q_heads, topk - 1]");
  if (sel.dtype != DType::i32) invalid(name, "dtype i32", dtype_name(sel.dtype));
  if (sel.shape[0] != p.total || sel.shape[1] != p.hq || sel.shape[2] != p.past_k())
    invalid(name, "shape [" + std::to_string(p.total) + ", " + std::to_string(p.hq) + ", " + std::to_string(p.past_k()) + "] ([total, num_q_heads, topk - 1])",
            "shape " + sel.shape_str());
  if (sel.device != p.device) invalid(name, "device " + device_name(p.device), device_name(sel.device));
  if (!sel.is_contiguous()) invalid(name, "a contiguous tensor", "non-contiguous strides");
  return static_cast<std::int32_t*>(sel.data);
}

}  // namespace moba::detail
