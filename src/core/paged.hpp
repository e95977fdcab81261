// The validated paged problem every backend's decode / chunked-prefill path receives
// (public API: moba/paged_attention.hpp, moba/kv_cache.hpp). Built once in paged_api.cpp.
#pragma once

#include <cstdint>
#include <vector>

#include "core/problem.hpp"
#include "moba/paged_attention.hpp"
#include "moba/params.hpp"
#include "moba/tensor.hpp"

namespace moba::detail {

// Shapes and raw pointers of a paged cache (k/v pages, page table, seq lens and MoBA means).
struct PagedCache {
  void* k_pages = nullptr;       // [num_pages, page_size, D] contiguous
  void* v_pages = nullptr;
  const std::int32_t* page_table = nullptr;  // [rows, hkv, pages_per_seq] contiguous
  std::int32_t* seq_lens = nullptr;          // [rows]
  void* block_means = nullptr;   // [rows, hkv, max_blocks, D] contiguous (MoBA)
  double* block_sums = nullptr;  // [rows, hkv, D] (kv_append)
  int num_pages = 0, page_size = 0, pages_per_seq = 0, rows = 0, max_blocks = 0;

  int hkv = 0;

  std::int64_t table_index(int row, int head, int page) const {
    return (std::int64_t(row) * hkv + head) * pages_per_seq + page;
  }
};

// Checks shared by the paged entry points (paged_api.cpp defines them): a contiguous view of
// rank `ndim`, `dtype` on `device`; and a whole cache (k/v pages, page table, seq lens) against
// the queries' dtype, device, KV heads and head_dim.
void check_paged_view(const char* name, const TensorView& t, int ndim, const char* layout,
                      DType dtype, Device device);
PagedCache check_paged_cache(const PagedKV& kv, DType dtype, Device device, int hkv, int head_dim);

// Query side of a paged call. `base` carries dtype, device, heads, head_dim, mode and the
// resolved parameters; base.total / base.batch / base.cu_seqlens describe the query rows
// (cu_seqlens is a host copy only when the caller's lives on the host; on the GPU the
// device pointer base.cu_seqlens_dev is used and nothing is copied).
struct PagedProblem {
  Problem base;
  PagedCache cache;
  std::vector<int> slots;                 // host copy (host callers); empty = identity
  const std::int32_t* slots_dev = nullptr;  // caller's device pointer (GPU callers)
  bool include_own_block = true;
  int cache_row(int b) const { return slots.empty() ? b : slots[b]; }
};

struct PagedOutputs {
  Operand q, out;
  float* lse = nullptr;                    // [hq, total_q]
  const std::int32_t* selection = nullptr;  // MoBA input, [total_q, hq, past_k]
};

struct AppendInputs {
  Operand k, v;  // [n_total, hkv, D]
  int block_size = 0;
};

// CPU backend (src/cpu/paged.cpp). Each checks the cache contents it reads (page ids, lengths,
// selections) before writing anything, and throws a named error when they are invalid.
void cpu_paged_gate(const PagedProblem& p, const Operand& q, std::int32_t* selection,
                    const RunOptions& o);
void cpu_paged_attention(const PagedProblem& p, const PagedOutputs& io, const RunOptions& o);
void cpu_kv_append(const PagedProblem& p, const AppendInputs& in, const RunOptions& o);
void cpu_merge_states(int total, int heads, int head_dim, DType dtype, const Operand& out_a,
                      const float* lse_a, const Operand& out_b, const float* lse_b,
                      const Operand& out, float* lse, const RunOptions& o);

// CUDA backend (src/cuda/decode/); stubs that throw `unsupported` when not compiled. Device
// contents (page ids, lengths) are trusted there: no host synchronisation.
void cuda_paged_gate(const PagedProblem& p, const Operand& q, std::int32_t* selection,
                     const RunOptions& o);
void cuda_paged_attention(const PagedProblem& p, const PagedOutputs& io, const RunOptions& o);
void cuda_kv_append(const PagedProblem& p, const AppendInputs& in, const RunOptions& o);
void cuda_merge_states(int total, int heads, int head_dim, DType dtype, const Operand& out_a,
                       const float* lse_a, const Operand& out_b, const float* lse_b,
                       const Operand& out, float* lse, const RunOptions& o);
// Host -> device copy ordered on `stream` (the cache's page-table mirror).
void cuda_copy_to_device(void* dst, const void* src, std::size_t bytes, void* stream);

}  // namespace moba::detail
