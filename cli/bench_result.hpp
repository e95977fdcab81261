// What `moba bench` measured: one point per (sequence length, mode), and the setup they share.
#pragma once

#include <string>
#include <vector>

#include "moba/params.hpp"
#include "moba/tensor.hpp"

namespace moba::cli {

struct BenchSetup {
  std::string backend;
  DType dtype = DType::bf16;
  int batch = 1, heads = 4, kv_heads = 4, head_dim = 128;
  int block_count = 64, topk = 3;
  float moa_alpha = 0, moa_beta = 0;
  int sink = 64;
  int repeats = 3;
  bool backward = false;
  std::string describe() const;  // one line for titles and headers
};

struct BenchPoint {
  int n = 0;  // tokens per sequence
  Mode mode = Mode::full;
  int block_size = 0;         // MoBA
  double keys_per_query = 0;  // average visible keys per (token, head)
  double fwd_ms = 0, fwd_gflops = 0, fwd_speedup = 0;  // speedup: full's time / this time
  double bwd_ms = 0, bwd_gflops = 0, bwd_speedup = 0;  // with --backward (0: not run)
};

}  // namespace moba::cli
