// The CPU backend's paged backward (src/cpu/paged_backward.cpp), called by
// src/core/paged_backward_api.cpp after every view is checked.
#pragma once

#include "core/paged.hpp"

namespace moba::detail {

// dq (q's dtype) and dk/dv pages (grad_dtype: f32 or q's dtype), see
// moba/paged_attention_backward.hpp. `lse` [hq, total_q] is the forward's.
void cpu_paged_attention_backward(const PagedProblem& p, const PagedOutputs& io,
                                  const Operand& dout, const Operand& dq, const float* lse,
                                  void* dk_pages, void* dv_pages, DType grad_dtype,
                                  const RunOptions& o);

// CUDA backend (src/cuda/paged/); a stub that throws `unsupported` when not compiled. Device
// contents (page ids, lengths, selections) are trusted: no host synchronisation.
void cuda_paged_attention_backward(const PagedProblem& p, const PagedOutputs& io,
                                   const Operand& dout, const Operand& dq, const float* lse,
                                   void* dk_pages, void* dv_pages, DType grad_dtype,
                                   const RunOptions& o);

}  // namespace moba::detail
