// A paged KV cache for decoding and chunked prefill (layout: moba/paged_attention.hpp).
//
// Two layers:
//  * kv_append: a stateless kernel that writes new K/V in place into already assigned pages,
//    updates the MoBA block means incrementally and advances seq_lens. On the GPU it runs on
//    the caller's stream without host synchronisation (capturable with paged_attention).
//  * PagedKVCache: the host-side bookkeeping (a free list of pages, the page table and the
//    lengths of every row) that assigns pages before an append, checks every argument before
//    changing anything, and for MoA frees the pages that left every window of a KV head.
// The library never allocates the storage: the caller allocates the tensors kv_cache_shapes
// describes (on one device) and passes views of them.
//
// MoBA block means: a block's mean is written once, when its last token arrives, from an
// exact (fp64) running sum of its keys, divided in fp32 and rounded to the cache dtype: the
// very value the one-shot gate computes (docs/semantics.md), so decode selects the same
// blocks as prefill. Page size and block size are independent (any positive values).
#pragma once

#include <cstdint>
#include <vector>

#include "moba/paged_attention.hpp"
#include "moba/params.hpp"
#include "moba/tensor.hpp"

namespace moba {

// Writes sequence b's new tokens k_new/v_new [n_total, num_kv_heads, head_dim] (rows
// cu_seqlens_new[b] .. cu_seqlens_new[b+1]-1) at positions seq_lens[r] .. seq_lens[r]+n_b-1 of
// cache row r = slots[b] (empty slots = row b), into the pages page_table assigns (they must be
// resident); then seq_lens[r] += n_b. With block_size > 0 also updates kv.block_sums and
// writes kv.block_means for every block the new tokens complete.
void kv_append(const TensorView& k_new, const TensorView& v_new,
               const TensorView& cu_seqlens_new, const PagedKV& kv, int block_size,
               const TensorView& slots = {}, const RunOptions& options = {});

struct KVCacheConfig {
  DType dtype = DType::bf16;
  int num_q_heads = 0;   // query heads served by the cache (MoA plans are per query head)
  int num_kv_heads = 0;
  int head_dim = 0;
  int page_size = 16;    // positions per page
  int num_pages = 0;     // pages in the pool, shared by every row and KV head
  int max_rows = 1;      // sequences held at once (rows of the page table)
  int max_seqlen = 0;    // longest sequence a row may reach
  int block_size = 0;    // MoBA: keep block means when > 0
  // MoA per-head caches: when set, KV head g of a row keeps only the pages its query heads
  // can still see (the sink plus the longest window of the group); the others return to the
  // pool. A later append of up to max_chunk tokens stays exact; a longer one that would need
  // a freed page is refused with an error (before anything changes).
  bool moa_evict = false;
  MoaHeads moa;
  int max_chunk = 1;
};

// Shapes (row-major contiguous) of the tensors a cache with `config` needs.
struct KVCacheShapes {
  std::vector<std::int64_t> k_pages, v_pages;  // [num_pages, page_size, head_dim], dtype
  std::vector<std::int64_t> page_table;        // int32 [max_rows, num_kv_heads, pages_per_seq]
  std::vector<std::int64_t> seq_lens;          // int32 [max_rows]
  std::vector<std::int64_t> block_means;       // dtype [max_rows, num_kv_heads, max_blocks, head_dim]
  std::vector<std::int64_t> block_sums;        // f64 [max_rows, num_kv_heads, head_dim]
  // (block_means/block_sums are empty when block_size == 0)
};
KVCacheShapes kv_cache_shapes(const KVCacheConfig& config);

class PagedKVCache {
 public:
  // `tensors` views the caller's storage, shaped as kv_cache_shapes(config) says, all on one
  // device. page_table and seq_lens are (re)initialised here: every row empty.
  PagedKVCache(const KVCacheConfig& config, const PagedKV& tensors);

  // Appends sequence b's new tokens to row slots[b] (distinct rows): assigns pages, frees MoA
  // pages that left every window, then kv_append. Throws moba::Error and changes nothing when
  // a row is out of range or repeated, a shape or dtype does not match the cache, a row would
  // exceed max_seqlen, the pool has too few free pages, or (MoA) a needed page was freed.
  void append(const TensorView& k_new, const TensorView& v_new,
              const TensorView& cu_seqlens_new, const std::vector<int>& slots,
              const RunOptions& options = {});

  // The bookkeeping half of append, for callers that launch kv_append themselves (the torch
  // op, a CUDA graph): checks, frees and assigns pages for new_tokens[b] tokens of row
  // slots[b] and publishes the page table. kv_append(..., slots) must follow with exactly
  // these counts (it advances seq_lens); the host lengths already count them.
  void reserve(const std::vector<int>& new_tokens, const std::vector<int>& slots,
               const RunOptions& options = {});

  // Decode / chunked prefill: query sequence b holds the last n_b tokens of row slots[b]
  // (appended before). Computes out/lse as the one-shot prefill of the row's tokens would for
  // those rows; MoBA writes its selection (int32 [total_q, num_q_heads, topk - 1]); pass an
  // empty view for other modes.
  void attend(const TensorView& q, const TensorView& cu_seqlens_q, const std::vector<int>& slots,
              const AttentionParams& params, TensorView out, TensorView lse,
              TensorView selection, const RunOptions& options = {}) const;

  void release(int slot);  // frees every page of the row; its length becomes 0
  void reset();            // releases every row

  int seq_len(int slot) const;
  int free_pages() const { return static_cast<int>(free_.size()); }
  int used_pages() const { return config_.num_pages - free_pages(); }
  int pages_per_seq() const { return pages_per_seq_; }
  const KVCacheConfig& config() const { return config_; }
  const PagedKV& tensors() const { return tensors_; }
  // Host mirror of the page table (row-major [max_rows, num_kv_heads, pages_per_seq]).
  const std::vector<std::int32_t>& host_page_table() const { return table_; }

 private:
  int& entry(int row, int head, int page) {
    return table_[(std::size_t(row) * config_.num_kv_heads + head) * pages_per_seq_ + page];
  }
  int first_needed_position(int row, int head, int new_len) const;  // MoA retention
  // Host mirror -> page_table (the given rows; empty: all) and seq_lens views.
  void publish(const RunOptions& options, const std::vector<int>& rows);

  KVCacheConfig config_;
  PagedKV tensors_;
  int pages_per_seq_ = 0;
  std::vector<std::int32_t> table_;
  std::vector<std::int32_t> lens_;
  std::vector<std::int32_t> free_;  // page ids, popped from the back
};

}  // namespace moba
