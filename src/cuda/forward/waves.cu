#include "cuda/forward/waves.hpp"

#include <cub/device/device_scan.cuh>

#include "cuda/forward/work_item.cuh"

namespace moba::cuda {

namespace {

struct SelArgs {
  const std::int32_t* sel;
  int total, hq, past_k, batch, num_blocks;
  const int* cu;
  const int* blk_off;
};

// Bucket of selection entry i ([total, hq, past_k] flat), or -1 for an unused slot.
__device__ __forceinline__ long long bucket_of(const SelArgs& a, long long i, int& tok) {
  const int j = a.sel[i];
  if (j < 0) return -1;
  const long long per_tok = (long long)a.hq * a.past_k;
  tok = int(i / per_tok);
  const int rem = int(i - (long long)tok * per_tok);
  const int h = rem / a.past_k, s = rem - h * a.past_k;
  const int seq = ws_last_le(a.cu, 0, a.batch, tok);
  const int gb = a.blk_off[seq] + j;
  // Never true for a selection the gate wrote; keeps the lists in bounds when it wrote nothing
  // (a cu_seqlens found invalid on the device plans no tiles, the output is poisoned after).
  if (gb >= a.num_blocks) return -1;
  return ((long long)s * a.hq + h) * a.num_blocks + gb;
}

__global__ void count_kernel(SelArgs a, int* cnt, long long n) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)gridDim.x * blockDim.x) {
    int tok;
    const long long b = bucket_of(a, i, tok);
    if (b >= 0) atomicAdd(cnt + b, 1);
  }
}

__global__ void scatter_kernel(SelArgs a, int* cnt, const int* off, int* rows, long long n) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)gridDim.x * blockDim.x) {
    int tok;
    const long long b = bucket_of(a, i, tok);
    if (b >= 0) rows[off[b] + atomicSub(cnt + b, 1) - 1] = tok;
  }
}

__global__ void tile_count_kernel(const int* off, int* tcnt, long long nb, int tile_rows) {
  for (long long b = blockIdx.x * (long long)blockDim.x + threadIdx.x; b <= nb;
       b += (long long)gridDim.x * blockDim.x)
    tcnt[b] = b < nb ? (off[b + 1] - off[b] + tile_rows - 1) / tile_rows : 0;
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
                           Workspace& ws, int tile_rows) {
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
  SelArgs a{sel, total, hq, past_k, batch, num_blocks, cu, blk_off};
  if (nsel > 0) {
    count_kernel<<<grid_for(nsel), 256, 0, ws.stream()>>>(a, cnt, nsel);
    MOBA_CUDA_LAUNCH_CHECK();
  }
  exclusive_scan(cnt, w.bucket_off, nb1, ws);
  if (nsel > 0) {
    scatter_kernel<<<grid_for(nsel), 256, 0, ws.stream()>>>(a, cnt, w.bucket_off, w.rows, nsel);
    MOBA_CUDA_LAUNCH_CHECK();
  }
  tile_count_kernel<<<grid_for(nb1), 256, 0, ws.stream()>>>(w.bucket_off, tcnt, w.num_buckets, tile_rows);
  MOBA_CUDA_LAUNCH_CHECK();
  exclusive_scan(tcnt, w.btile_off, nb1, ws);
  return w;
}

}  // namespace moba::cuda
