// CUDA entry of paged_attention_backward (core/paged_backward.hpp): fills the kernel arguments
// from the validated PagedProblem and launches on the caller's stream. Nothing here reads
// device memory or synchronises: host-side cu_seqlens / slots are uploaded with a
// stream-ordered copy, device-side ones are used as they are.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "core/paged_backward.hpp"
#include "core/validate.hpp"
#include "cuda/common/check.hpp"
#include "cuda/common/workspace.hpp"
#include "cuda/paged/paged_backward_params.hpp"

namespace moba::detail {

using namespace moba::cuda;
using namespace moba::cuda::paged;

namespace {

void check_supported(const PagedProblem& p, const RunOptions& o) {
  const Problem& b = p.base;
  if (b.dtype != DType::bf16 && b.dtype != DType::f16)
    fail(ErrorKind::unsupported, "cuda backend: paged_attention_backward supports dtypes bf16 and f16, got " +
                                     dtype_name(b.dtype) + " (use the cpu backend for f32)");
  if (b.head_dim != 64 && b.head_dim != 128)
    invalid("q", "head_dim 64 or 128 on the cuda backend", std::to_string(b.head_dim));
  if (b.mode == Mode::moba && b.past_k() > kMaxPast)
    fail(ErrorKind::unsupported, "cuda backend: paged_attention_backward supports topk <= " +
                                     std::to_string(kMaxPast + 1) + ", got " + std::to_string(b.topk));
  if (b.mode == Mode::moa && b.hq > kMaxHeads)
    fail(ErrorKind::unsupported, "cuda backend: paged MoA backward supports <= " + std::to_string(kMaxHeads) +
                                     " query heads, got " + std::to_string(b.hq));
  if (o.deterministic)
    fail(ErrorKind::unsupported,
         "cuda backend: paged_attention_backward sums dK/dV with float atomics (not bit-reproducible); "
         "deterministic = true needs the cpu backend in this version");
}

template <class F>
void by_dtype(DType t, F&& f) {
  if (t == DType::bf16) f(__nv_bfloat16{});
  else f(__half{});
}

}  // namespace

void cuda_paged_attention_backward(const PagedProblem& p, const PagedOutputs& io, const Operand& dout,
                                   const Operand& dq, const float* lse, void* dk_pages, void* dv_pages,
                                   DType grad_dtype, const RunOptions& o) {
  check_supported(p, o);
  const Problem& b = p.base;
  const cudaStream_t s = stream_of(o);
  Workspace ws(s);
  const std::int64_t n = std::int64_t(p.cache.num_pages) * p.cache.page_size * b.head_dim;
  const bool f32 = grad_dtype == DType::f32;
  float* dk = f32 ? static_cast<float*>(dk_pages) : ws.alloc<float>(std::size_t(n), "dK page accumulator");
  float* dv = f32 ? static_cast<float*>(dv_pages) : ws.alloc<float>(std::size_t(n), "dV page accumulator");
  MOBA_CUDA_CHECK(cudaMemsetAsync(dk, 0, sizeof(float) * std::size_t(n), s));
  MOBA_CUDA_CHECK(cudaMemsetAsync(dv, 0, sizeof(float) * std::size_t(n), s));

  BackwardArgs a;
  a.cu = b.cu_seqlens_dev ? b.cu_seqlens_dev : ws.upload(b.cu_seqlens, "cu_seqlens");
  if (!p.slots.empty()) a.slots = ws.upload(std::vector<int>(p.slots.begin(), p.slots.end()), "slots");
  else a.slots = p.slots_dev;
  a.seq_lens = p.cache.seq_lens;
  a.batch = b.batch;
  a.total = b.total;
  a.k_pages = p.cache.k_pages;
  a.v_pages = p.cache.v_pages;
  a.table = p.cache.page_table;
  a.page_size = p.cache.page_size;
  a.pages_per_seq = p.cache.pages_per_seq;
  a.num_pages = p.cache.num_pages;
  a.q = io.q.data, a.q_tok = io.q.token_stride, a.q_head = io.q.head_stride;
  a.out = io.out.data, a.o_tok = io.out.token_stride, a.o_head = io.out.head_stride;
  a.dout = dout.data, a.do_tok = dout.token_stride, a.do_head = dout.head_stride;
  a.dq = dq.data, a.dq_tok = dq.token_stride, a.dq_head = dq.head_stride;
  a.lse = lse;
  a.dk = dk;
  a.dv = dv;
  a.hq = b.hq;
  a.hkv = b.hkv;
  a.group = b.group();
  a.head_chunks = (b.group() + kMaxGroup - 1) / kMaxGroup;
  a.kind = b.mode == Mode::moba ? Kind::moba : b.mode == Mode::moa ? Kind::moa : Kind::full;
  a.block_size = b.block_size;
  a.past_k = b.past_k();
  a.selection = io.selection;
  a.own_block = p.include_own_block;
  a.scale = b.scale;
  a.sink = b.moa_sink;
  for (int h = 0; h < b.hq && b.mode == Mode::moa; ++h) {
    a.alpha[h] = b.moa_alpha[h];
    a.beta[h] = b.moa_beta[h];
  }
  by_dtype(b.dtype, [&](auto tag) { launch_backward<decltype(tag)>(a, b.head_dim, s); });
  MOBA_CUDA_LAUNCH_CHECK();
  if (!f32) {
    by_dtype(b.dtype, [&](auto tag) {
      launch_to_dtype<decltype(tag)>(dk, dk_pages, n, s);
      launch_to_dtype<decltype(tag)>(dv, dv_pages, n, s);
    });
    MOBA_CUDA_LAUNCH_CHECK();
  }
}

}  // namespace moba::detail
