#include "cuda/forward/onepass_plan.hpp"

#include <climits>

#include <cub/device/device_scan.cuh>

#include "cuda/common/check.hpp"

namespace moba::cuda {

namespace {

constexpr int kPlanWarps = 4;  // dense items per CTA (one warp each)
constexpr int kTileRows = 128;

__device__ __forceinline__ int warp_min(int x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = min(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

// One warp per dense item: lane l holds the selections of rows l, l + 32, l + 64, l + 96 of the
// tile (the first n slots are the valid ones). The union comes out sorted by repeated warp
// minima above the last one taken (at most kOnePassMaxUnion + 1 rounds, then it is too large);
// lane u keeps union block u. Then each row's mask: bit u where the row chose union block u.
__global__ void __launch_bounds__(kPlanWarps * 32)
    onepass_plan_kernel(const AttnParams a, const std::int32_t* sel, float factor, OnePassPlan op) {
  constexpr int kMax = kOnePassMaxUnion;
  constexpr int kRowsPerLane = kTileRows / 32;
  const int lane = threadIdx.x & 31;
  const long long dense = (long long)a.tile_off[a.batch] * a.hq;
  for (long long d = (long long)blockIdx.x * kPlanWarps + (threadIdx.x >> 5); d < dense;
       d += (long long)gridDim.x * kPlanWarps) {
    WorkTile w;
    dense_rows<kTileRows>(a, int(d), w);
    const int jown = w.t0 / a.block_size;
    const int n = min(a.past_k, jown);
    if (n == 0) continue;  // no past blocks: the own-block pass is these rows' only pass
    int union_size = kMax + 1;
    int my_u = INT_MAX;
    int v[kRowsPerLane][kMax];
    if (n <= kMax) {
      const int seq_begin = a.cu[w.seq];
#pragma unroll
      for (int q = 0; q < kRowsPerLane; ++q) {
        const int r = lane + 32 * q;
        const std::int64_t e0 =
            (std::int64_t(seq_begin + w.t0 + r) * a.hq + w.h) * std::int64_t(a.past_k);
#pragma unroll
        for (int s = 0; s < kMax; ++s) {
          int x = r < w.nrows && s < n ? sel[e0 + s] : INT_MAX;
          v[q][s] = x >= 0 && x < jown ? x : INT_MAX;  // only blocks the gate can have chosen
        }
      }
      int last = -1;
      union_size = 0;
      for (int it = 0; it <= kMax; ++it) {
        int mn = INT_MAX;
#pragma unroll
        for (int q = 0; q < kRowsPerLane; ++q)
#pragma unroll
          for (int s = 0; s < kMax; ++s)
            if (v[q][s] > last && v[q][s] < mn) mn = v[q][s];
        mn = warp_min(mn);
        if (mn == INT_MAX) break;
        if (it == kMax) {
          union_size = kMax + 1;  // too many: not one pass
          break;
        }
        if (lane == it) my_u = mn;
        last = mn;
        union_size = it + 1;
      }
    }
    const bool one = onepass_accept(union_size, n, factor);
    if (lane == 0) {
      if (op.counts.statistics) {
        atomicAdd(op.counts.dev + 2, 1);
        if (one) atomicAdd(op.counts.dev + 3, union_size);
      }
      op.flags[d] = one ? 1 : 0;
    }
    if (!one) continue;
    int* u_out = op.unions + d * kOnePassUnionStride;
    if (lane == 0) u_out[0] = union_size;
    if (lane < union_size) u_out[1 + lane] = my_u;
#pragma unroll
    for (int q = 0; q < kRowsPerLane; ++q) {
      unsigned mask = 0;
      for (int u = 0; u < union_size; ++u) {
        const int blk = __shfl_sync(0xffffffffu, my_u, u);
#pragma unroll
        for (int s = 0; s < kMax; ++s)
          if (v[q][s] == blk) mask |= 1u << u;
      }
      op.masks[d * kTileRows + lane + 32 * q] = std::uint16_t(mask);
    }
  }
}

// Stable compaction of the dense items into the one-pass list and the own-pass list (both keep
// the dense order: longest tiles first), and the two counts.
__global__ void onepass_split_kernel(const AttnParams a, OnePassPlan op, const int* pos) {
  const long long dense = (long long)a.tile_off[a.batch] * a.hq;
  for (long long d = blockIdx.x * (long long)blockDim.x + threadIdx.x; d < dense;
       d += (long long)gridDim.x * blockDim.x) {
    const int f = op.flags[d], p = pos[d];
    if (f) op.items[p] = int(d);
    else op.own_items[d - p] = int(d);
    if (d == dense - 1) {
      op.counts.dev[0] = p + f;
      op.counts.dev[1] = int(dense) - (p + f);
    }
  }
}

int grid_for(long long n, int per_cta) {
  const long long b = (n + per_cta - 1) / per_cta;
  return int(b < 65536 ? (b > 0 ? b : 1) : 65536);
}

}  // namespace

OnePassPlan plan_one_pass(const AttnParams& a, const std::int32_t* sel, long long dense_bound,
                          float factor, bool statistics, Workspace& ws) {
  OnePassPlan op;
  op.counts.statistics = statistics;
  const long long nb = dense_bound > 0 ? dense_bound : 1;
  op.counts.dev = ws.alloc<int>(4, "MoBA one-pass counts");
  op.flags = ws.alloc<int>(nb, "MoBA one-pass flags");
  op.items = ws.alloc<int>(nb, "MoBA one-pass items");
  op.own_items = ws.alloc<int>(nb, "MoBA own-pass items");
  op.unions = ws.alloc<int>(nb * kOnePassUnionStride, "MoBA one-pass unions");
  op.masks = ws.alloc<std::uint16_t>(nb * kTileRows, "MoBA one-pass row masks");
  int* pos = ws.alloc<int>(nb, "MoBA one-pass positions");
  MOBA_CUDA_CHECK(cudaMemsetAsync(op.counts.dev, 0, 4 * sizeof(int), ws.stream()));
  MOBA_CUDA_CHECK(cudaMemsetAsync(op.flags, 0, nb * sizeof(int), ws.stream()));
  onepass_plan_kernel<<<grid_for(nb, kPlanWarps), kPlanWarps * 32, 0, ws.stream()>>>(a, sel, factor, op);
  MOBA_CUDA_LAUNCH_CHECK();
  std::size_t bytes = 0;
  MOBA_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, bytes, op.flags, pos, nb, ws.stream()));
  void* tmp = ws.alloc_bytes(bytes, "MoBA one-pass scan");
  MOBA_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(tmp, bytes, op.flags, pos, nb, ws.stream()));
  onepass_split_kernel<<<grid_for(nb, 256), 256, 0, ws.stream()>>>(a, op, pos);
  MOBA_CUDA_LAUNCH_CHECK();
  return op;
}

}  // namespace moba::cuda
