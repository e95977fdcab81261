// Plain-data description of the MoBA gate launches (block means, then fused score + top-k),
// shared by the host planner (src/cuda/forward/forward.cpp) and gate_kernel.cuh.
#pragma once

#include <cstdint>

namespace moba::cuda {

struct GateParams {
  const void* q;
  const void* k;
  std::int64_t q_ts, q_hs, k_ts, k_hs;
  void* means;            // [num_blocks, hkv, D] in the input dtype
  std::int32_t* sel;      // [total, hq, past_k]
  int hq, hkv, group, block_size, past_k, batch;
  const int* cu;          // [batch + 1]
  const int* tile_off;    // [batch + 1] prefix of ceil(len / 64); tile_off[batch] = tiles
  int num_tiles;          // CTAs of the top-k grid: tile_off[batch], or a bound of it
  const int* blk_off;     // [batch + 1] prefix of full blocks; blk_off[batch] = blocks
  int num_blocks;         // blocks of the means: blk_off[batch], or a bound of it
  int list_k;             // top-k list length held in shared memory: past_k, or 0 when no row
                          // has more than past_k past blocks (every tile then selects all)
  int sm90;               // 1: past_k <= 16 runs on the sm_90a warpgroup-MMA kernel
                          // (gate_topk_sm90.cuh), 0: mma.sync (past_k <= 8) or shared-memory lists
};

// Largest past_k the fused top-k keeps in shared memory (64 rows x past_k x 8 bytes); larger
// values work only when no row has more past blocks than past_k.
constexpr int kGateMaxPastK = 255;

// One instantiation per (dtype, head_dim); defined in gate_<dtype>_d<D>.cu.
// sums_ws: num_blocks * hkv * D doubles of scratch for the block sums.
template <class T, int D>
void launch_gate(const GateParams& p, void* sums_ws, void* stream);

// Whether GateParams::sm90 = 1 can run: a compute capability 9.0 device, sm_90a code in this
// build and a driver that encodes TMA tensor maps. Defined beside launch_gate.
template <class T, int D>
bool gate_sm90_available();

}  // namespace moba::cuda
