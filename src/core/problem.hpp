// The validated problem every backend receives: raw pointers, element strides and the
// resolved parameters. Built once at the API boundary (validate.cpp), so backends never
// re-check input and never see framework or view types.
#pragma once

#include <cstdint>
#include <vector>

#include "moba/params.hpp"
#include "moba/tensor.hpp"

namespace moba::detail {

// A [tokens, heads, dim] operand with the dim axis contiguous.
struct Operand {
  void* data = nullptr;
  std::int64_t token_stride = 0;  // elements
  std::int64_t head_stride = 0;   // elements
};

struct Problem {
  DType dtype = DType::bf16;
  Device device{};
  int total = 0;       // tokens of all sequences
  int batch = 0;
  int max_seqlen = 0;  // longest sequence
  int hq = 0, hkv = 0, head_dim = 0;
  int group() const { return hq / hkv; }  // query heads per KV head

  std::vector<int> cu_seqlens;  // host copy, batch + 1 entries

  Mode mode = Mode::full;
  int block_size = 0;  // MoBA
  int topk = 0;        // MoBA, own block included
  int past_k() const { return topk > 0 ? topk - 1 : 0; }  // selection slots per token
  float scale = 0.f;   // resolved softmax scale
  // MoA: per *query head* window parameters (KV-head plans already expanded).
  std::vector<float> moa_alpha, moa_beta;
  int moa_sink = 0;

  // MoA window length of query head h in a sequence of `seqlen` tokens (>= 1).
  int moa_window(int h, int seqlen) const;
};

struct Forward {
  Operand q, k, v, out;
  float* lse = nullptr;           // [hq, total]
  std::int32_t* selection = nullptr;  // [total, hq, past_k] contiguous, MoBA only
};

struct Backward {
  Operand q, k, v, out, dout, dq, dk, dv;
  const float* lse = nullptr;
  const std::int32_t* selection = nullptr;
};

}  // namespace moba::detail
