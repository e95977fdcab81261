// Parameters of the paged decode / chunked-prefill kernels (src/cuda/decode/). Plain C++ so the
// host entry (decode_entry.cpp) fills them and the .cu files launch with them. All lengths the
// kernels need live in device memory (seq_lens, cu_seqlens, slots), so a launch never waits
// for the host and can be captured in a CUDA graph.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace moba::cuda::decode {

constexpr int kThreads = 128;   // threads of every attention / gate CTA
constexpr int kTile = 64;       // keys per tile
constexpr int kMaxGroup = 8;    // query heads of one KV head served by one CTA
constexpr int kMaxPast = 64;    // MoBA: topk - 1 supported by the decode kernels
constexpr int kMaxRanges = kMaxGroup * kMaxPast + 2;
constexpr int kMaxSplits = 1024;  // split-KV CTAs per (row, head chunk)
constexpr int kGateBlocksPerCta = 256;  // gate: blocks one scoring CTA takes when rows are few
constexpr int kGateSmemBlocks = 10240;  // gate: one head's scores staged in shared memory (40 KB + static < 48 KB)
constexpr int kMaxHeads = 256;  // MoA: query heads whose windows fit the launch parameters
// GQA groups of at least this many query heads take the tensor-core attention kernel
// (decode_mma.cuh: the heads are the rows of an m16 mma, rows past the group zero); single heads
// (MHA) the CUDA-core kernel. Measured on the H200 (bench_decode.py, 1M context, batch 8): a
// group of 2 read at 48% of HBM bandwidth on the CUDA-core kernel against 99% for a group of 4
// on the tensor-core one (the same bytes per mma), so groups of 2 moved to the tensor cores.
constexpr int kMmaMinGroup = 2;
constexpr bool uses_tensor_cores(int group) { return group >= kMmaMinGroup; }

enum class Kind : int { full = 0, moba = 1, moa = 2 };

// Where the query rows are and which cache row / position each belongs to.
struct Rows {
  const int* cu = nullptr;        // [batch + 1] query rows per sequence (device)
  const int* slots = nullptr;     // [batch] cache row per sequence; nullptr = identity
  const int* seq_lens = nullptr;  // [rows] cached length per cache row (after the append)
  int batch = 0;
  int total = 0;                  // query rows
};

struct Pages {
  const void* k = nullptr;         // [num_pages, page_size, D]
  const void* v = nullptr;
  const int* table = nullptr;      // [rows, hkv, pages_per_seq]
  int page_size = 0, pages_per_seq = 0, num_pages = 0;
};

struct AttentionArgs {
  Rows rows;
  Pages pages;
  const void* q = nullptr;
  std::int64_t q_tok = 0, q_head = 0;
  void* out = nullptr;
  std::int64_t o_tok = 0, o_head = 0;
  float* lse = nullptr;             // [hq, total]
  int hq = 0, hkv = 0, group = 0, head_chunks = 1;
  Kind kind = Kind::full;
  int block_size = 0, past_k = 0;
  const int* selection = nullptr;   // [total, hq, past_k]
  bool own_block = true;
  float scale_log2 = 0.f;           // softmax scale * log2(e)
  int sink = 0;
  float alpha[kMaxHeads] = {}, beta[kMaxHeads] = {};
  int splits = 1;
  float* partial = nullptr;         // [splits, total, hq, D + 2] when splits > 1
};

enum class GatePhase : int { both = 0, score = 1, select = 2 };

struct GateArgs {
  Rows rows;
  const void* q = nullptr;
  std::int64_t q_tok = 0, q_head = 0;
  const void* means = nullptr;      // [rows, hkv, max_blocks, D]
  int max_blocks = 0;
  int hq = 0, hkv = 0, group = 0, head_chunks = 1;
  int block_size = 0, past_k = 0;
  float* scores = nullptr;          // workspace [total, hq, max_blocks]
  int smem_blocks = 0;              // scores a CTA stages in shared memory for its top-k (0: none)
  int score_splits = 1;             // > 1: scoring CTAs per (row, head chunk), then a select launch
  GatePhase phase = GatePhase::both;
  int* selection = nullptr;         // [total, hq, past_k]
};

struct AppendArgs {
  Rows rows;                        // rows.total = new tokens; seq_lens before the append
  int* seq_lens_out = nullptr;      // the same array, advanced by the last kernel
  const void* k = nullptr;
  const void* v = nullptr;
  std::int64_t k_tok = 0, k_head = 0, v_tok = 0, v_head = 0;
  void* k_pages = nullptr;
  void* v_pages = nullptr;
  const int* table = nullptr;
  int page_size = 0, pages_per_seq = 0, num_pages = 0;
  int hkv = 0;
  int block_size = 0;               // 0: no means
  double* block_sums = nullptr;     // [rows, hkv, D]
  void* means = nullptr;            // [rows, hkv, max_blocks, D]
  int max_blocks = 0;
};

struct MergeArgs {
  const void* a = nullptr;
  const void* b = nullptr;
  void* out = nullptr;
  std::int64_t a_tok = 0, a_head = 0, b_tok = 0, b_head = 0, o_tok = 0, o_head = 0;
  const float* lse_a = nullptr;
  const float* lse_b = nullptr;
  float* lse = nullptr;
  int total = 0, heads = 0, head_dim = 0;
};

// One instantiation per dtype (decode_bf16.cu, decode_f16.cu); D is 64 or 128.
template <class T>
void launch_attention(const AttentionArgs& a, int head_dim, cudaStream_t s);
// Attention CTAs one SM holds at once for this group size and head dim (occupancy API; no
// stream operation), to size the split-KV grid in whole waves.
template <class T>
int resident_attention_ctas(int group, int head_dim);
template <class T>
void launch_gate(const GateArgs& a, int head_dim, cudaStream_t s);
template <class T>
void launch_append(const AppendArgs& a, int head_dim, cudaStream_t s);
template <class T>
void launch_merge(const MergeArgs& a, cudaStream_t s);

}  // namespace moba::cuda::decode
