// Introspection of the CUDA backward for benchmarks and tests (not public API).
#pragma once

#include <cstddef>
#include <utility>
#include <vector>

namespace moba::detail::bwd {

struct BackwardStats {
  std::size_t peak_workspace_bytes = 0;  // largest scratch held at once by the last call
  int key_items = 0;                     // key-major CTAs launched
  int split_tiles = 0;                   // key tiles whose rows were split over several CTAs
  int dq_waves = 0;                      // query-major dQ launches (1 + slots in det. mode)
  long long list_entries = 0;            // (row, past block) pairs in the per-block lists
  // CudaOptions::collect_timing: (stage, milliseconds since the previous mark), in call order
  std::vector<std::pair<const char*, double>> stage_ms;
};

// What the last cuda_backward call on this thread did.
BackwardStats last_backward_stats();

}  // namespace moba::detail::bwd
