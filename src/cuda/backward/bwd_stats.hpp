// Introspection of the CUDA backward for benchmarks and tests (not public API).
#pragma once

#include <cstddef>
#include <utility>
#include <vector>

namespace moba::detail::bwd {

struct BackwardStats {
  std::size_t peak_workspace_bytes = 0;  // largest scratch held at once by the last call
  // The plan lives on the device; these three counts are read back only with
  // CudaOptions::collect_timing (which synchronises anyway), else they stay 0.
  int key_items = 0;                     // key-major items (CTAs that do work)
  int split_tiles = 0;                   // key tiles whose rows were split over several CTAs
  long long list_entries = 0;            // (row, past block) pairs in the per-block lists
  int dq_waves = 0;                      // query-major dQ launches (1 + slots in det. mode)
  // CudaOptions::collect_timing: (stage, milliseconds since the previous mark), in call order
  std::vector<std::pair<const char*, double>> stage_ms;
};

// What the last cuda_backward call on this thread did.
BackwardStats last_backward_stats();

}  // namespace moba::detail::bwd
