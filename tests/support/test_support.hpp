// Shared test machinery: random problems of every kind, host tensors in any dtype, and one call
// to run forward/backward through the public API on a chosen backend.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "moba/moba.hpp"

namespace moba::testing {

// A host tensor stored in its dtype; values are always readable as double.
struct HostTensor {
  DType dtype = DType::f32;
  std::vector<std::int64_t> shape;
  std::vector<std::uint8_t> bytes;

  HostTensor() = default;
  HostTensor(DType t, std::vector<std::int64_t> s);
  std::int64_t numel() const;
  TensorView view();  // contiguous, on the host
  double get(std::int64_t i) const;
  void set(std::int64_t i, double v);  // rounds to dtype
  std::vector<double> as_double() const;
  void fill_normal(std::mt19937& rng, double stddev = 1.0);
  void fill(double v);
};

struct Shape {
  std::vector<int> seqlens;
  int hq = 4, hkv = 4, d = 64;
  DType dtype = DType::bf16;
  AttentionParams params = AttentionParams::moba_blocks(64, 3);
  int total() const;
  std::vector<int> cu_seqlens() const;
  std::string str() const;  // a readable one-liner for failure messages
};

struct RandomShapeOptions {
  int max_len = 300;             // longest sequence
  int max_batch = 4;
  std::vector<int> head_dims{64, 128};
  std::vector<DType> dtypes{DType::f32, DType::f16, DType::bf16};
  std::vector<Mode> modes{Mode::full, Mode::moba, Mode::moa};
  std::vector<int> block_sizes{16, 32, 64, 50};  // MoBA
  bool allow_empty_sequences = true;
};
// Covers odd lengths, lengths not a multiple of the block, single blocks, topk beyond the number
// of blocks, topk = 1, empty and length-1 sequences, GQA 1/2/4/8 and MQA, MoA windows shorter
// than the sink and longer than N.
Shape random_shape(std::mt19937& rng, const RandomShapeOptions& o = {});

struct Inputs {
  HostTensor q, k, v, dout;
  std::vector<int> cu;
};
Inputs make_inputs(const Shape& s, std::uint32_t seed);
// The same values in another dtype (e.g. f32 copies of bf16 inputs for a precise reference).
Inputs convert(const Inputs& in, DType t);

struct ForwardResult {
  HostTensor out;
  std::vector<float> lse;           // [hq, total]
  std::vector<std::int32_t> selection;  // [total, hq, topk-1] (MoBA)
};
ForwardResult run_forward(const Shape& s, Inputs& in, Backend b, int threads = 0);

struct BackwardResult {
  HostTensor dq, dk, dv;
};
// Uses fwd.out / fwd.lse / fwd.selection as the saved forward state.
BackwardResult run_backward(const Shape& s, Inputs& in, ForwardResult& fwd, Backend b,
                            int threads = 0);

// ||a - b|| / max(||b||, tiny), over all elements.
double rel_l2(const std::vector<double>& a, const std::vector<double>& b);
double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b);

}  // namespace moba::testing
