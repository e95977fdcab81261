// The public entry points. Layout is flash-attn's varlen layout; all sequences of a batch are
// packed along the token axis and cut by cu_seqlens:
//   q, out, dout, dq   [total, Hq, D]      k, v, dk, dv   [total, Hkv, D]
//   cu_seqlens         int32 [batch + 1], 0 = c[0] <= c[1] <= ... <= c[batch] = total
//   lse                f32 [Hq, total]     natural-log sum of exp(scale * q.k) over seen keys
//   selection          int32 [total, Hq, max(topk - 1, 0)]   MoBA only: the past blocks a
//                      token chose (block index within its sequence, ascending, -1 = unused)
// The last dimension must be contiguous; other strides are free. Hq % Hkv == 0 (GQA/MQA:
// query head h reads KV head h / (Hq / Hkv)). D is 64 or 128 (any D on the reference backend).
// q/k/v/out/dout share one dtype (f32, f16 or bf16); arithmetic is fp32 (fp64 on reference).
// Every function throws moba::Error on bad input, naming the argument and what was expected.
#pragma once

#include "moba/params.hpp"
#include "moba/tensor.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace moba {

// MoBA gate alone: writes `selection`. Useful for inspection and tests; the forward runs it.
void moba_gate(const TensorView& q, const TensorView& k, const TensorView& cu_seqlens,
               const AttentionParams& params, TensorView selection,
               const RunOptions& options = {});

// Forward. For MoBA `selection` is required (an output: the gate runs inside and the backward
// needs its choice); for full and MoA pass an empty TensorView{}.
void attention_forward(const TensorView& q, const TensorView& k, const TensorView& v,
                       const TensorView& cu_seqlens, const AttentionParams& params,
                       TensorView out, TensorView lse, TensorView selection,
                       const RunOptions& options = {});

// Backward: dq, dk, dv from dout and the forward's out, lse and (MoBA) selection. Gradients do
// not flow through the discrete block selection. dk/dv are summed over each query group.
void attention_backward(const TensorView& q, const TensorView& k, const TensorView& v,
                        const TensorView& out, const TensorView& lse, const TensorView& dout,
                        const TensorView& cu_seqlens, const AttentionParams& params,
                        const TensorView& selection, TensorView dq, TensorView dk,
                        TensorView dv, const RunOptions& options = {});

// Which backends this build has and can run now ("reference", "cpu", "cuda").
struct BackendInfo {
  const char* name;
  bool compiled;   // built into this library
  bool available;  // usable now (for cuda: a device is present)
  std::string detail;
};
std::vector<BackendInfo> backends();
std::string build_info();  // version, compiler, CUDA archs, SIMD flags

// GPU scratch of the CUDA backend: bytes in use at the high-water mark of moba's own
// stream-ordered memory pool on `device` since the pool was made or last reset (reset = true
// starts a new mark after reading). Scratch does not come from the caller's allocator, so this
// is what to add to e.g. torch.cuda.max_memory_allocated() for a call's peak. 0 when the CUDA
// backend is absent or the pool of that device was never used.
std::uint64_t cuda_workspace_peak_bytes(int device, bool reset = false);

}  // namespace moba
