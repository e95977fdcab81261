// Backward of paged_attention (moba/paged_attention.hpp): the gradients of attention over a
// given set of K/V pages with an external MoBA selection. Context parallelism needs it: a rank
// attends over its own pages plus pages fetched from other ranks, and the gradients of the
// fetched pages go back to their owners (python/moba/distributed.py).
//
// The key set of every query row is exactly the forward's (same views, same selection, same
// include_own_block), so with the forward's out and lse the result is the exact gradient of
// docs/semantics.md "Backward" for those key sets:
//   dq [total_q, num_q_heads, head_dim]      q's dtype
//   dk_pages, dv_pages [num_pages, page_size, head_dim]   f32 or q's dtype; every element is
//                      written: the sum over all rows (of all cache rows and query heads) that
//                      see a position, 0 where none does. Pages shared by several cache rows
//                      receive the sum of all of them.
// Arithmetic is fp32. CPU: deterministic (fixed summation order). CUDA (bf16/f16, head_dim 64
// or 128, on the caller's stream, no host sync): dq in a fixed order, dK/dV summed with fp32
// atomics (not bit-reproducible); RunOptions::deterministic = true is refused there
// (ErrorKind::unsupported). Device contents (lengths, page ids, selections) are trusted on the
// GPU as by paged_attention: keys on a non-resident page are skipped, not checked.
#pragma once

#include "moba/paged_attention.hpp"
#include "moba/params.hpp"
#include "moba/tensor.hpp"

namespace moba {

void paged_attention_backward(const TensorView& q, const TensorView& cu_seqlens_q,
                              const PagedKV& kv, const AttentionParams& params,
                              const PagedAttentionArgs& args, const TensorView& out,
                              const TensorView& lse, const TensorView& dout, TensorView dq,
                              TensorView dk_pages, TensorView dv_pages,
                              const RunOptions& options = {});

}  // namespace moba
