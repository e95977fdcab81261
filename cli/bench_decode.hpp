// `moba bench --decode`: one decode step (a new token per sequence attending to a paged KV
// cache) for full, MoBA and MoA over context lengths and batch sizes (bench_decode.cpp).
#pragma once

#include <string>
#include <vector>

namespace moba::cli {

struct DecodeBenchOptions {
  std::string backend;
  std::vector<int> contexts;  // empty: the backend's default
  std::vector<int> batches{1, 8};
  int heads = 32, kv_heads = 8, head_dim = 128;
  std::string dtype = "bf16";
  int block_count = 64, topk = 3;
  float moa_alpha = 128, moa_beta = 0.5f;
  int sink = 64;
  std::vector<std::string> modes{"full", "moba", "moa"};
  int page_size = 16;
  int repeats = 5;
  int threads = 0;
  std::string csv, plot;
};

int run_decode_bench(const DecodeBenchOptions& o);

}  // namespace moba::cli
