// One attention problem (the sequences of a batch, head counts, head dim, dtype, what attention
// to compute), random problems covering what backends get wrong, and their random inputs.
// Shared by the GoogleTest suites (tests/) and `moba check` (cli/).
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "host_tensor.hpp"
#include "moba/params.hpp"
#include "moba/tensor.hpp"

namespace moba::verify {

struct Problem {
  std::vector<int> seqlens;
  int hq = 4, hkv = 4;
  int d = 64;  // head dim
  DType dtype = DType::bf16;
  AttentionParams params = AttentionParams::moba_blocks(64, 3);

  int total() const;
  int max_seqlen() const;
  std::vector<int> cu_seqlens() const;
  int selection_slots() const;  // MoBA: topk - 1 (0 otherwise)

  std::string shape_str() const;  // "b=3 T=517 hq=8/2 d=64 bf16"
  std::string mode_str() const;   // "full", "moba B=32 k=3", "moa sink=16"
  std::string str() const;        // everything, for reproducing a failure
};
using Shape = Problem;  // the tests' name

std::string mode_name(Mode m);

struct RandomProblemOptions {
  int max_len = 300;  // longest sequence
  int max_batch = 4;
  std::vector<int> head_dims{64, 128};
  std::vector<DType> dtypes{DType::f32, DType::f16, DType::bf16};
  std::vector<Mode> modes{Mode::full, Mode::moba, Mode::moa};
  std::vector<int> block_sizes{16, 32, 64, 50};  // MoBA
  bool allow_empty_sequences = true;
  // Upper bound on full-causal pairs x heads x head_dim (0: none); keeps an fp64 reference's
  // time bounded. Heads shrink first, then lengths.
  double max_work = 0;
};
using RandomShapeOptions = RandomProblemOptions;

// Covers odd lengths, lengths not a multiple of the block, single blocks, topk = 1 and topk
// beyond the number of blocks, empty and length-1 sequences, GQA 1/2/4/8 and MQA, MoA windows
// shorter than the sink and longer than N, per-KV-head MoA plans, custom softmax scales.
Problem random_problem(std::mt19937& rng, const RandomProblemOptions& o = {});
inline Problem random_shape(std::mt19937& rng, const RandomProblemOptions& o = {}) {
  return random_problem(rng, o);
}

// Case `index` of a run seeded by `seed` (`moba check`): the same pair always gives the same
// case. Modes cycle full/moba/moa and dtypes over consecutive indices (o.modes / o.dtypes are
// the cycles), so modes x dtypes consecutive cases cover every combination.
struct RandomCase {
  Problem problem;
  double q_stddev = 1.0;  // > 1 makes sharper softmaxes
  unsigned input_seed = 0;
};
RandomCase random_case(int index, unsigned seed, const RandomProblemOptions& o);

// q [T, hq, D], k and v [T, hkv, D], dout like q, all in the problem's dtype; cu_seqlens.
struct Inputs {
  HostTensor q, k, v, dout;
  std::vector<int> cu;
};
// Normal(0, 1) values (q scaled by q_stddev) in the problem's dtype.
Inputs make_inputs(const Problem& p, std::uint32_t seed, double q_stddev = 1.0);
// The same values in another dtype (e.g. f32 copies of bf16 inputs for a precise reference).
Inputs convert(const Inputs& in, DType dtype);

}  // namespace moba::verify
