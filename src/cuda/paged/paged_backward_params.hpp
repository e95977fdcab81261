// Arguments of the CUDA paged backward (moba/paged_attention_backward.hpp). Plain C++ so the
// host entry (paged_backward_entry.cpp) fills them and paged_backward.cu launches with them.
// All lengths the kernel needs live in device memory (cu_seqlens, slots, seq_lens), so a
// launch never waits for the host.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace moba::cuda::paged {

constexpr int kThreads = 128;   // threads of every backward CTA
constexpr int kTile = 32;       // keys per tile
constexpr int kMaxGroup = 8;    // query heads of one KV head served by one CTA
constexpr int kMaxPast = 64;    // MoBA: topk - 1
constexpr int kMaxRanges = kMaxGroup * kMaxPast + 2;
constexpr int kMaxHeads = 256;  // MoA: query heads whose windows fit the launch parameters

enum class Kind : int { full = 0, moba = 1, moa = 2 };

struct BackwardArgs {
  // Query rows: sequence b is cu[b] .. cu[b+1]-1 and reads cache row slots[b] (nullptr: b).
  const int* cu = nullptr;
  const int* slots = nullptr;
  const int* seq_lens = nullptr;
  int batch = 0, total = 0;
  // Pages.
  const void* k_pages = nullptr;
  const void* v_pages = nullptr;
  const int* table = nullptr;  // [rows, hkv, pages_per_seq]
  int page_size = 0, pages_per_seq = 0, num_pages = 0;
  // Operands [total, hq, D] (element strides; the last axis contiguous) and lse [hq, total].
  const void* q = nullptr;
  const void* out = nullptr;
  const void* dout = nullptr;
  void* dq = nullptr;
  std::int64_t q_tok = 0, q_head = 0, o_tok = 0, o_head = 0, do_tok = 0, do_head = 0,
               dq_tok = 0, dq_head = 0;
  const float* lse = nullptr;
  // fp32 page-shaped accumulators [num_pages, page_size, D], zeroed before the launch.
  float* dk = nullptr;
  float* dv = nullptr;
  int hq = 0, hkv = 0, group = 0, head_chunks = 1;
  Kind kind = Kind::full;
  int block_size = 0, past_k = 0;
  const int* selection = nullptr;  // [total, hq, past_k]
  bool own_block = true;
  float scale = 0.f;
  int sink = 0;
  float alpha[kMaxHeads] = {}, beta[kMaxHeads] = {};
};

// One instantiation per dtype and head dim (paged_backward.cu): D is 64 or 128.
template <class T>
void launch_backward(const BackwardArgs& a, int head_dim, cudaStream_t s);
// dst (T) = src (fp32), n elements.
template <class T>
void launch_to_dtype(const float* src, void* dst, std::int64_t n, cudaStream_t s);

}  // namespace moba::cuda::paged
