// Planning of the CUDA backward on the device: the row lists, the key-major items (with their
// splits) and the dQ items, built by a few small kernels and CUB calls whose sizes come from
// the shapes alone (total tokens, batch, heads, block size, top-k). Nothing is copied back to
// the host and nothing waits on the stream, so forward + backward capture in one CUDA graph, and
// a replay plans anew from the lengths and selection then in the buffers.
//
// The sequence tables (validated cu_seqlens, 64-row tile offsets, MoA windows, invalid flag)
// are the forward's (forward/seq_tables.hpp); a host cu_seqlens is uploaded and planned the
// same way, so both give the same plan.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "cuda/backward/bwd_plan.hpp"
#include "cuda/common/workspace.hpp"

namespace moba::detail::bwd {

// Scratch bytes held at once (the plan's and the passes').
struct Meter {
  std::size_t now = 0, peak = 0;
  void add(std::size_t b) { peak = peak > (now += b) ? peak : now; }
  void sub(std::size_t b) { now -= b; }
};

struct PlanRequest {
  int total = 0, batch = 0, hq = 0, hkv = 0;
  bool moba = false, moa = false;
  int block_size = 0;  // MoBA
  int past = 0;        // selection slots P (MoBA top-k - 1)
  int key_tile = 64;   // keys per key-major tile (64 or 128)
  int slots = 132;     // resident key-pass CTAs (split rule)
  bool dq_items = true;      // plan the dQ pass (not in the all-atomic variant)
  bool listed_waves = false; // deterministic mode: plan the per-slot dQ waves
  bool list_slots = false;   // deterministic slot path: each list entry's selection slot
  const int* cu_dev = nullptr;             // cu_seqlens on the device (caller's or uploaded)
  bool cu_from_caller_gpu = false;         // keep the invalid flag (the host did not check it)
  const std::int32_t* selection = nullptr; // [total, hq, past]
  int moa_sink = 0;
  const std::vector<float>* moa_alpha = nullptr;  // per query head
  const std::vector<float>* moa_beta = nullptr;
};

// Builds the plan on `ws`'s stream. Arrays the passes read live in `ws`; sort and scan buffers
// in `tmp` (freed by the caller before the passes; *tmp_bytes says how much of `mem` they are).
// MoA windows of (head h, sequence b) are returned in *moa_window ([hq * batch], device) when
// req.moa.
BackwardPlan plan_backward(const PlanRequest& req, cuda::Workspace& ws, cuda::Workspace& tmp,
                           Meter& mem, std::size_t& tmp_bytes, const int** moa_window);

}  // namespace moba::detail::bwd
