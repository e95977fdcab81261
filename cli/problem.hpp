// One attention problem: the sequences of a batch, head counts, head dim, dtype and what
// attention to compute. `check` draws them at random, `bench` builds them from its options.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "moba/params.hpp"
#include "moba/tensor.hpp"

namespace moba::cli {

struct Problem {
  std::vector<int> seqlens;
  int hq = 4, hkv = 4, head_dim = 128;
  DType dtype = DType::bf16;
  AttentionParams params = AttentionParams::full();

  int total() const;
  int max_seqlen() const;
  std::vector<std::int32_t> cu_seqlens() const;
  int selection_slots() const;  // MoBA: topk - 1 (0 otherwise)

  std::string shape_str() const;   // "b=3 T=517 hq=8/2 d=64 bf16"
  std::string mode_str() const;    // "full", "moba B=32 k=3", "moa sink=16"
  std::string detail_str() const;  // everything, for reproducing a failure
};

std::string mode_name(Mode m);

}  // namespace moba::cli
