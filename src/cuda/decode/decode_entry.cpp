// CUDA entry points of the paged decode / chunked prefill (core/paged.hpp): fill the kernel
// arguments from the validated PagedProblem and launch on the caller's stream. Nothing here
// reads device memory or synchronises: host-side cu_seqlens / slots are uploaded with a
// stream-ordered copy, device-side ones are used as they are (the CUDA-graph path).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "core/paged.hpp"
#include "core/validate.hpp"
#include "cuda/common/check.hpp"
#include "cuda/common/workspace.hpp"
#include "cuda/decode/decode_params.hpp"

namespace moba::detail {

using namespace moba::cuda;
using namespace moba::cuda::decode;

namespace {

void check_supported(const Problem& p, const char* what) {
  if (p.dtype != DType::bf16 && p.dtype != DType::f16)
    fail(ErrorKind::unsupported, std::string("cuda backend: ") + what + " supports dtypes bf16 and f16, got " +
                                     dtype_name(p.dtype) + " (use the cpu backend for f32)");
  if (p.head_dim != 64 && p.head_dim != 128)
    invalid("q", "head_dim 64 or 128 on the cuda backend", std::to_string(p.head_dim));
}

// Device copies of cu_seqlens / slots (or the caller's device pointers as they are).
Rows device_rows(const PagedProblem& p, Workspace& ws) {
  Rows r;
  r.cu = p.base.cu_seqlens_dev ? p.base.cu_seqlens_dev : ws.upload(p.base.cu_seqlens, "cu_seqlens");
  if (!p.slots.empty()) r.slots = ws.upload(std::vector<int>(p.slots.begin(), p.slots.end()), "slots");
  else r.slots = p.slots_dev;
  r.seq_lens = p.cache.seq_lens;
  r.batch = p.base.batch;
  r.total = p.base.total;
  return r;
}

int head_chunks(const Problem& p) { return (p.group() + kMaxGroup - 1) / kMaxGroup; }

int sm_count() {
  int dev = 0, n = 0;
  MOBA_CUDA_CHECK(cudaGetDevice(&dev));
  MOBA_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
  return n;
}

// Splits per (row, head chunk). The key count a CTA walks lives on the device, so the host
// sizes by the most a row can see (MoBA: the union of a head chunk's selected blocks and the own
// block): splits of at least kMinSplitKeys keys, and the fewest splits whose grid fills the
// resident CTA slots of the device in whole waves (>= 85%), else the best filling.
constexpr std::int64_t kMinSplitKeys = 256;

int choose_splits(const PagedProblem& p, int ctas, int resident) {
  std::int64_t max_keys = std::int64_t(p.cache.pages_per_seq) * p.cache.page_size;
  if (p.base.mode == Mode::moba) {
    const std::int64_t blocks = std::int64_t(std::min(p.base.group(), kMaxGroup)) * p.base.past_k() + 1;
    max_keys = std::min<std::int64_t>(max_keys, blocks * p.base.block_size);
  }
  const std::int64_t by_keys = std::clamp<std::int64_t>(max_keys / kMinSplitKeys, 1, kMaxSplits);
  ctas = std::max(ctas, 1);
  resident = std::max(resident, 1);
  int best = 1;
  double best_fill = 0;
  for (std::int64_t s = 1; s <= by_keys; ++s) {
    const std::int64_t grid = ctas * s, waves = (grid + resident - 1) / resident;
    const double fill = double(grid) / double(waves * resident);
    if (fill > best_fill + 1e-9) best = int(s), best_fill = fill;
    if (fill >= 0.85 || waves > 8) break;
  }
  return best;
}

template <class F>
void by_dtype(DType t, F&& f) {
  if (t == DType::bf16) f(__nv_bfloat16{});
  else f(__half{});
}

}  // namespace

void cuda_paged_attention(const PagedProblem& p, const PagedOutputs& io, const RunOptions& o) {
  check_supported(p.base, "paged attention");
  if (p.base.mode == Mode::moba && p.base.past_k() > kMaxPast)
    fail(ErrorKind::unsupported, "cuda backend: paged attention supports topk <= " + std::to_string(kMaxPast + 1) +
                                     ", got " + std::to_string(p.base.topk));
  if (p.base.mode == Mode::moa && p.base.hq > kMaxHeads)
    fail(ErrorKind::unsupported, "cuda backend: paged MoA supports <= " + std::to_string(kMaxHeads) + " query heads");
  if (p.base.total == 0) return;
  const cudaStream_t s = stream_of(o);
  Workspace ws(s);
  AttentionArgs a;
  a.rows = device_rows(p, ws);
  a.pages.k = p.cache.k_pages;
  a.pages.v = p.cache.v_pages;
  a.pages.table = p.cache.page_table;
  a.pages.page_size = p.cache.page_size;
  a.pages.pages_per_seq = p.cache.pages_per_seq;
  a.pages.num_pages = p.cache.num_pages;
  a.q = io.q.data;
  a.q_tok = io.q.token_stride;
  a.q_head = io.q.head_stride;
  a.out = io.out.data;
  a.o_tok = io.out.token_stride;
  a.o_head = io.out.head_stride;
  a.lse = io.lse;
  a.hq = p.base.hq;
  a.hkv = p.base.hkv;
  a.group = p.base.group();
  a.head_chunks = head_chunks(p.base);
  a.kind = p.base.mode == Mode::moba ? Kind::moba : p.base.mode == Mode::moa ? Kind::moa : Kind::full;
  a.block_size = p.base.block_size;
  a.past_k = p.base.past_k();
  a.selection = io.selection;
  a.own_block = p.include_own_block;
  a.scale_log2 = p.base.scale * 1.4426950408889634f;
  a.sink = p.base.moa_sink;
  for (int h = 0; h < p.base.hq && p.base.mode == Mode::moa; ++h) {
    a.alpha[h] = p.base.moa_alpha[h];
    a.beta[h] = p.base.moa_beta[h];
  }
  int per_sm = 1;
  by_dtype(p.base.dtype, [&](auto tag) { per_sm = resident_attention_ctas<decltype(tag)>(a.group, p.base.head_dim); });
  a.splits = choose_splits(p, p.base.total * p.base.hkv * a.head_chunks, per_sm * sm_count());
  if (a.splits > 1)
    a.partial = ws.alloc<float>(std::size_t(a.splits) * p.base.total * p.base.hq * (p.base.head_dim + 2),
                                "split-KV partial results");
  by_dtype(p.base.dtype, [&](auto tag) { launch_attention<decltype(tag)>(a, p.base.head_dim, s); });
  MOBA_CUDA_LAUNCH_CHECK();
}

void cuda_paged_gate(const PagedProblem& p, const Operand& q, std::int32_t* selection,
                     const RunOptions& o) {
  check_supported(p.base, "the paged gate");
  if (p.base.past_k() > kMaxPast)
    fail(ErrorKind::unsupported, "cuda backend: the paged gate supports topk <= " + std::to_string(kMaxPast + 1) +
                                     ", got " + std::to_string(p.base.topk));
  if (p.base.total == 0 || p.base.past_k() == 0) return;
  const cudaStream_t s = stream_of(o);
  Workspace ws(s);
  GateArgs a;
  a.rows = device_rows(p, ws);
  a.q = q.data;
  a.q_tok = q.token_stride;
  a.q_head = q.head_stride;
  a.means = p.cache.block_means;
  a.max_blocks = p.cache.max_blocks;
  a.hq = p.base.hq;
  a.hkv = p.base.hkv;
  a.group = p.base.group();
  a.head_chunks = head_chunks(p.base);
  a.block_size = p.base.block_size;
  a.past_k = p.base.past_k();
  a.scores = ws.alloc<float>(std::size_t(p.base.total) * p.base.hq * std::max(a.max_blocks, 1), "gate scores");
  a.selection = selection;
  a.smem_blocks = a.max_blocks <= kGateSmemBlocks ? a.max_blocks : 0;
  // Few (row, head chunk) CTAs over many blocks (long contexts, small blocks): split the scoring
  // so the means are read by enough SMs.
  const std::int64_t gate_ctas = std::int64_t(p.base.total) * p.base.hkv * a.head_chunks;
  const std::int64_t want = (std::int64_t(2) * sm_count() + gate_ctas - 1) / gate_ctas;
  const std::int64_t by_blocks = (a.max_blocks + kGateBlocksPerCta - 1) / kGateBlocksPerCta;
  a.score_splits = static_cast<int>(std::clamp<std::int64_t>(std::min(want, by_blocks), 1, 65535));
  by_dtype(p.base.dtype, [&](auto tag) { launch_gate<decltype(tag)>(a, p.base.head_dim, s); });
  MOBA_CUDA_LAUNCH_CHECK();
}

void cuda_kv_append(const PagedProblem& p, const AppendInputs& in, const RunOptions& o) {
  check_supported(p.base, "kv_append");
  const cudaStream_t s = stream_of(o);
  Workspace ws(s);
  AppendArgs a;
  a.rows = device_rows(p, ws);
  a.seq_lens_out = p.cache.seq_lens;
  a.k = in.k.data;
  a.v = in.v.data;
  a.k_tok = in.k.token_stride;
  a.k_head = in.k.head_stride;
  a.v_tok = in.v.token_stride;
  a.v_head = in.v.head_stride;
  a.k_pages = p.cache.k_pages;
  a.v_pages = p.cache.v_pages;
  a.table = p.cache.page_table;
  a.page_size = p.cache.page_size;
  a.pages_per_seq = p.cache.pages_per_seq;
  a.num_pages = p.cache.num_pages;
  a.hkv = p.base.hkv;
  a.block_size = in.block_size;
  a.block_sums = p.cache.block_sums;
  a.means = p.cache.block_means;
  a.max_blocks = p.cache.max_blocks;
  by_dtype(p.base.dtype, [&](auto tag) { launch_append<decltype(tag)>(a, p.base.head_dim, s); });
  MOBA_CUDA_LAUNCH_CHECK();
}

void cuda_merge_states(int total, int heads, int head_dim, DType dtype, const Operand& out_a,
                       const float* lse_a, const Operand& out_b, const float* lse_b,
                       const Operand& out, float* lse, const RunOptions& o) {
  if (dtype != DType::bf16 && dtype != DType::f16)
    fail(ErrorKind::unsupported, "cuda backend: merge_attention_states supports bf16 and f16, got " + dtype_name(dtype));
  if (total == 0 || heads == 0) return;
  MergeArgs a;
  a.a = out_a.data;
  a.b = out_b.data;
  a.out = out.data;
  a.a_tok = out_a.token_stride, a.a_head = out_a.head_stride;
  a.b_tok = out_b.token_stride, a.b_head = out_b.head_stride;
  a.o_tok = out.token_stride, a.o_head = out.head_stride;
  a.lse_a = lse_a, a.lse_b = lse_b, a.lse = lse;
  a.total = total, a.heads = heads, a.head_dim = head_dim;
  by_dtype(dtype, [&](auto tag) { launch_merge<decltype(tag)>(a, stream_of(o)); });
  MOBA_CUDA_LAUNCH_CHECK();
}

void cuda_copy_to_device(void* dst, const void* src, std::size_t bytes, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  MOBA_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s));
  MOBA_CUDA_CHECK(cudaStreamSynchronize(s));  // the source is the cache's host mirror
}

}  // namespace moba::detail
