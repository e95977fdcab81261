// Attention over a paged KV cache: the page-table entry point shared by decoding, chunked
// prefill and context parallelism. Stateless: every call reads the views it is given and
// writes only its outputs, so on the GPU it runs on the caller's stream, never synchronises
// the host and can be captured in a CUDA graph (all sizes it needs live in the views).
//
// Paged layout (FlashInfer / vLLM style, one page table per sequence and KV head):
//   k_pages, v_pages  [num_pages, page_size, head_dim]  q's dtype; a page holds page_size
//                     consecutive positions of ONE KV head of one sequence
//   page_table        int32 [rows, num_kv_heads, pages_per_seq]: entry [r, g, i] is the page
//                     holding positions i*page_size .. i*page_size+page_size-1 of KV head g of
//                     cache row r, or -1 when that page is not resident (MoA evicted it)
//   seq_lens          int32 [rows]: positions cached in row r (keys 0 .. seq_lens[r]-1)
//   block_means       MoBA only, q's dtype [rows, num_kv_heads, max_blocks, head_dim]: the key
//                     mean of every *completed* block, the exact value the one-shot gate uses
//                     (docs/semantics.md "Gate"); rows of unfinished blocks are never read
// Queries: q [total_q, num_q_heads, head_dim], cut into sequences by cu_seqlens_q (int32
// [batch + 1]); query sequence b reads cache row slots[b] (slots int32 [batch]; empty view =
// identity) and its rows are the LAST tokens of that row: row i of a sequence with n query
// rows sits at position seq_lens[slot] - n + i. Keys a row sees follow docs/semantics.md with
// the sequence length N = seq_lens[slot] (the length so far; MoA's window uses this N).
#pragma once

#include "moba/params.hpp"
#include "moba/tensor.hpp"

namespace moba {

// The paged K/V a call reads (views only; the caller owns the memory).
struct PagedKV {
  TensorView k_pages, v_pages;  // [num_pages, page_size, head_dim]
  TensorView page_table;        // int32 [rows, num_kv_heads, pages_per_seq]
  TensorView seq_lens;          // int32 [rows]
  TensorView block_means;       // MoBA gate: [rows, num_kv_heads, max_blocks, head_dim]
  TensorView block_sums;        // kv_append only (moba/kv_cache.hpp): f64 [rows, num_kv_heads,
                                // head_dim], exact running key sums of each row's unfinished block
};

// Optional inputs of paged_attention.
struct PagedAttentionArgs {
  TensorView slots;  // int32 [batch]: cache row of query sequence b; empty = row b
  // MoBA: the selection to use, int32 [total_q, num_q_heads, topk - 1] (past block indices,
  // ascending or not, -1 = unused slot), e.g. from paged_moba_gate or from another rank.
  // A selected block must be a completed past block of the row (index < own block) and its
  // pages resident; a block named in several slots counts once.
  TensorView selection;
  // MoBA: include the row's own block causally (iB .. t). Off, a row sees only its selected
  // blocks; a row that sees no key gets out = 0 and lse = -inf, so partial results from
  // several calls (or ranks) merge exactly with merge_attention_states.
  bool include_own_block = true;
};

// MoBA gate over the cached block means: for each query row, the topk - 1 highest-scoring
// completed past blocks (ties to the earlier block), exactly the one-shot prefill's rule.
// Writes selection int32 [total_q, num_q_heads, topk - 1] (ascending, -1 = unused).
void paged_moba_gate(const TensorView& q, const TensorView& cu_seqlens_q, const PagedKV& kv,
                     const AttentionParams& params, TensorView selection,
                     const TensorView& slots = {}, const RunOptions& options = {});

// Attention of the query rows over the paged keys their mode makes visible (full: every
// position up to the row; MoBA: args.selection plus, by default, the own block; MoA: the
// head's sink and window). Writes out [total_q, num_q_heads, head_dim] (q's dtype) and
// lse f32 [num_q_heads, total_q] (natural log of the softmax denominator; -inf if no key).
// Query heads of one KV head are served from one read of the pages they share.
void paged_attention(const TensorView& q, const TensorView& cu_seqlens_q, const PagedKV& kv,
                     const AttentionParams& params, const PagedAttentionArgs& args,
                     TensorView out, TensorView lse, const RunOptions& options = {});

// Merges two partial attentions over disjoint key sets into the attention over their union:
//   lse = log(exp(lse_a) + exp(lse_b)),  out = out_a * exp(lse_a - lse) + out_b * exp(lse_b - lse)
// out_* [total, heads, head_dim] (one dtype), lse_* f32 [heads, total]. out/lse may alias
// out_a/lse_a. Rows with both lse = -inf give out = 0, lse = -inf.
void merge_attention_states(const TensorView& out_a, const TensorView& lse_a,
                            const TensorView& out_b, const TensorView& lse_b, TensorView out,
                            TensorView lse, const RunOptions& options = {});

}  // namespace moba
