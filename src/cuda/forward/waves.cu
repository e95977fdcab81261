#include "cuda/forward/waves.hpp"

#include <algorithm>

#include <cub/device/device_scan.cuh>

#include "cuda/forward/onepass_plan.hpp"
#include "cuda/forward/work_item.cuh"

namespace moba::cuda {

namespace {

struct SelArgs {
  const std::int32_t* sel;
  int total, hq, past_k, batch, num_blocks;
  const int* cu;
  const int* blk_off;
  const int* tile128_off;  // with op_flag: rows of one-pass tiles have no wave entries
  const int* op_flag;
};

// Entry (tok, h, s) of the selection, one thread each: y = h * past_k + s (blockIdx.y, strided
// past the grid's 65535 limit) and consecutive threads take consecutive tokens, so a warp
// shares (h, s) and lanes whose tokens chose the same block fall into one bucket. Counting and scattering are warp-aggregated (one
// atomic per distinct bucket in the warp): buckets of few blocks (64 blocks x heads x slots)
// are a few KB of counters that would otherwise serialise millions of atomics on a handful of
// L2 slices (ncu: 0.34 ms of a 7 ms forward at 128K, 5% SM busy).
struct Entry {
  long long bucket;  // -1: no entry (token out of range, unused slot, nothing planned)
  int tok;
};

__device__ __forceinline__ Entry entry_of(const SelArgs& a, int y) {
  Entry e{-1, int(blockIdx.x * blockDim.x + threadIdx.x)};
  if (e.tok >= a.total) return e;
  const int h = y / a.past_k, s = y - h * a.past_k;
  const int j = a.sel[((long long)e.tok * a.hq + h) * a.past_k + s];
  if (j < 0) return e;
  const int seq = ws_last_le(a.cu, 0, a.batch, e.tok);
  if (a.op_flag && onepass_row(a.op_flag, a.tile128_off, a.batch, a.hq, seq, e.tok - a.cu[seq], h))
    return e;  // computed in one pass by its tile
  const int gb = a.blk_off[seq] + j;
  // Never true for a selection the gate wrote; keeps the lists in bounds when it wrote nothing
  // (a cu_seqlens found invalid on the device plans no tiles, the output is poisoned after).
  if (gb >= a.num_blocks) return e;
  e.bucket = ((long long)s * a.hq + h) * a.num_blocks + gb;
  return e;
}

// The lanes sharing this lane's bucket, and this lane's rank among them.
struct Group {
  unsigned lanes;
  int rank, size;
  bool leader;
};

__device__ __forceinline__ Group group_of(long long bucket) {
  const unsigned lanes = __match_any_sync(0xffffffffu, bucket);
  const unsigned lane = threadIdx.x & 31u;
  Group g;
  g.lanes = lanes;
  g.rank = __popc(lanes & ((1u << lane) - 1u));
  g.size = __popc(lanes);
  g.leader = g.rank == 0;
  return g;
}

__global__ void count_kernel(SelArgs a, int* cnt) {
  for (int y = blockIdx.y; y < a.hq * a.past_k; y += gridDim.y) {
    const Entry e = entry_of(a, y);
    const Group g = group_of(e.bucket);
    if (e.bucket >= 0 && g.leader) atomicAdd(cnt + e.bucket, g.size);
  }
}

// cnt holds the counts on entry; each group takes the top g.size free places of its bucket.
__global__ void scatter_kernel(SelArgs a, int* cnt, const int* off, int* rows) {
  for (int y = blockIdx.y; y < a.hq * a.past_k; y += gridDim.y) {
    const Entry e = entry_of(a, y);
    const Group g = group_of(e.bucket);
    int top = 0;
    if (e.bucket >= 0 && g.leader) top = atomicSub(cnt + e.bucket, g.size);
    top = __shfl_sync(0xffffffffu, top, __ffs(g.lanes) - 1);
    if (e.bucket >= 0) rows[off[e.bucket] + top - g.size + g.rank] = e.tok;
  }
}

__global__ void tile_count_kernel(const int* off, int* tcnt, long long nb, int tile_rows) {
  for (long long b = blockIdx.x * (long long)blockDim.x + threadIdx.x; b <= nb;
       b += (long long)gridDim.x * blockDim.x)
    tcnt[b] = b < nb ? (off[b + 1] - off[b] + tile_rows - 1) / tile_rows : 0;
}

// One thread per bucket writes its tiles' entries of tile_bucket.
__global__ void tile_bucket_kernel(const int* btile_off, int* tile_bucket, long long nb) {
  for (long long b = blockIdx.x * (long long)blockDim.x + threadIdx.x; b < nb;
       b += (long long)gridDim.x * blockDim.x)
    for (int t = btile_off[b]; t < btile_off[b + 1]; ++t) tile_bucket[t] = int(b);
}

void exclusive_scan(const int* in, int* out, long long n, Workspace& ws) {
  std::size_t bytes = 0;
  MOBA_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, bytes, in, out, n, ws.stream()));
  void* tmp = ws.alloc_bytes(bytes, "MoBA work-list scan");
  MOBA_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(tmp, bytes, in, out, n, ws.stream()));
}

int grid_for(long long n) {
  const long long b = (n + 255) / 256;
  return int(b < 65536 ? (b > 0 ? b : 1) : 65536);
}

}  // namespace

WaveLists build_wave_lists(const std::int32_t* sel, int total, int hq, int past_k,
                           const int* cu, int batch, const int* blk_off, int num_blocks,
                           Workspace& ws, int tile_rows, const int* tile128_off,
                           const int* op_flag) {
  WaveLists w;
  w.num_buckets = (long long)past_k * hq * num_blocks;
  const long long nsel = (long long)total * hq * past_k;
  const long long nb1 = w.num_buckets + 1;
  int* cnt = ws.alloc<int>(nb1, "MoBA bucket counts");
  w.bucket_off = ws.alloc<int>(nb1, "MoBA bucket offsets");
  w.btile_off = ws.alloc<int>(nb1, "MoBA tile offsets");
  int* tcnt = ws.alloc<int>(nb1, "MoBA tile counts");
  w.rows = ws.alloc<int>(nsel > 0 ? nsel : 1, "MoBA row lists");
  MOBA_CUDA_CHECK(cudaMemsetAsync(cnt, 0, nb1 * sizeof(int), ws.stream()));
  SelArgs a{sel, total, hq, past_k, batch, num_blocks, cu, blk_off, tile128_off, op_flag};
  const dim3 entry_grid(unsigned((total + 255) / 256), unsigned(std::min(hq * past_k, 65535)));
  if (nsel > 0) {
    count_kernel<<<entry_grid, 256, 0, ws.stream()>>>(a, cnt);
    MOBA_CUDA_LAUNCH_CHECK();
  }
  exclusive_scan(cnt, w.bucket_off, nb1, ws);
  if (nsel > 0) {
    scatter_kernel<<<entry_grid, 256, 0, ws.stream()>>>(a, cnt, w.bucket_off, w.rows);
    MOBA_CUDA_LAUNCH_CHECK();
  }
  tile_count_kernel<<<grid_for(nb1), 256, 0, ws.stream()>>>(w.bucket_off, tcnt, w.num_buckets, tile_rows);
  MOBA_CUDA_LAUNCH_CHECK();
  exclusive_scan(tcnt, w.btile_off, nb1, ws);
  // tiles = sum of ceil(count_b / tile_rows) <= nsel / tile_rows + (non-empty buckets)
  const long long tile_bound = nsel / tile_rows + std::min<long long>(w.num_buckets, nsel) + 1;
  w.tile_bucket = ws.alloc<int>(tile_bound, "MoBA tile buckets");
  tile_bucket_kernel<<<grid_for(w.num_buckets), 256, 0, ws.stream()>>>(w.btile_off, w.tile_bucket,
                                                                      w.num_buckets);
  MOBA_CUDA_LAUNCH_CHECK();
  return w;
}

}  // namespace moba::cuda
