// Random problems for `moba check`, covering what backends get wrong: every mode and dtype,
// MHA/GQA/MQA (1..8 query heads per KV head), varlen batches with empty, length-1 and odd
// sequences, lengths not a multiple of the block, topk = 1 and topk beyond the number of
// blocks, MoA windows shorter than the sink and longer than the sequence, per-KV-head MoA
// plans, custom softmax scales and peaked softmaxes (large q).
#pragma once

#include <vector>

#include "problem.hpp"

namespace moba::cli {

struct RandomProblemOptions {
  int max_len = 256;                            // longest sequence
  int max_batch = 4;
  std::vector<DType> dtypes{DType::f32, DType::f16, DType::bf16};  // what the backend supports
  std::vector<int> head_dims{64, 128};
  std::vector<int> block_sizes{16, 32, 50, 64}; // MoBA block sizes the backend supports
  // Upper bound on full-causal pairs x heads x head_dim per case: keeps the fp64 reference,
  // which runs four times per case, to about a second. Heads shrink first, then lengths.
  double max_work = 3e7;
};

struct RandomCase {
  Problem problem;
  double q_stddev = 1.0;  // > 1 makes sharper softmaxes
  unsigned input_seed = 0;
};

// Case `index` of a run seeded by `seed`: the same pair always gives the same case. Modes
// cycle full/moba/moa and dtypes (f32/f16/bf16) over consecutive indices, so 9 consecutive
// cases cover every combination.
RandomCase random_case(int index, unsigned seed, const RandomProblemOptions& o);

}  // namespace moba::cli
