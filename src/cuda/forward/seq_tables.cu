#include "cuda/forward/seq_tables.hpp"

#include <cub/block/block_scan.cuh>

namespace moba::cuda {

namespace {

constexpr int kPlanThreads = 256;

// Problem::moa_window (src/core/validate.cpp) on the device: the same fused multiply-add, so
// host and device plans agree bit for bit.
__device__ int moa_window_dev(float alpha, float beta, int seqlen) {
  const double span = floor(fma(double(beta), double(seqlen), double(alpha)));
  if (span < 1.0) return 1;
  return span > double(seqlen) ? max(seqlen, 1) : int(span);
}

__device__ __forceinline__ int ceil_div_pos(int len, int d) { return len > 0 ? (len - 1) / d + 1 : 0; }

// One CTA: checks cu_seqlens, then three block-wide prefix sums over the sequences, chunk by
// chunk with a running carry.
__global__ void __launch_bounds__(kPlanThreads) seq_tables_kernel(const SeqTableArgs a, int* tables) {
  using Scan = cub::BlockScan<int, kPlanThreads>;
  __shared__ typename Scan::TempStorage scan_tmp;
  const int nb1 = a.batch + 1;
  int* cu = tables;
  int* toff = cu + nb1;
  int* boff = toff + nb1;
  int* t128 = boff + nb1;
  int* win = t128 + nb1;
  int* invalid_flag = win + std::int64_t(a.hq) * a.batch;

  bool bad = false;
  for (int b = threadIdx.x; b <= a.batch; b += kPlanThreads) {
    const int c = a.cu_in[b];
    if (b == 0 && c != 0) bad = true;
    if (b == a.batch && c != a.total) bad = true;
    if (b < a.batch && a.cu_in[b + 1] < c) bad = true;
  }
  const bool invalid = __syncthreads_or(bad) != 0;

  int carry_t = 0, carry_b = 0, carry_t128 = 0;
  for (int base = 0; base < a.batch; base += kPlanThreads) {
    const int b = base + int(threadIdx.x);
    const int begin = b < a.batch && !invalid ? a.cu_in[b] : 0;
    const int len = b < a.batch && !invalid ? a.cu_in[b + 1] - begin : 0;
    const int n_t = ceil_div_pos(len, 64);
    const int n_b = a.block_size > 0 ? len / a.block_size : 0;
    const int n_t128 = ceil_div_pos(len, 128);
    int e_t, e_b, e_t128, sum_t, sum_b, sum_t128;
    Scan(scan_tmp).ExclusiveSum(n_t, e_t, sum_t);
    __syncthreads();
    Scan(scan_tmp).ExclusiveSum(n_b, e_b, sum_b);
    __syncthreads();
    Scan(scan_tmp).ExclusiveSum(n_t128, e_t128, sum_t128);
    __syncthreads();
    if (b < a.batch) {
      cu[b] = begin;
      toff[b] = carry_t + e_t;
      boff[b] = carry_b + e_b;
      t128[b] = carry_t128 + e_t128;
      for (int h = 0; h < a.hq; ++h) {
        const bool in_args = a.hq <= kPlanMaxMoaHeads;
        const float alpha = in_args ? a.moa_alpha[h] : a.moa_ab_dev[h];
        const float beta = in_args ? a.moa_beta[h] : a.moa_ab_dev[a.hq + h];
        win[std::int64_t(h) * a.batch + b] = moa_window_dev(alpha, beta, len);
      }
    }
    carry_t += sum_t;
    carry_b += sum_b;
    carry_t128 += sum_t128;
  }
  if (threadIdx.x == 0) {
    cu[a.batch] = invalid ? 0 : a.total;
    toff[a.batch] = carry_t;
    boff[a.batch] = carry_b;
    t128[a.batch] = carry_t128;
    *invalid_flag = invalid ? 1 : 0;
  }
}

__global__ void poison_kernel(const int* invalid, std::uint16_t* out, std::int64_t o_ts,
                              std::int64_t o_hs, float* lse, int total, int hq, int D) {
  if (*invalid == 0) return;
  const std::int64_t rows = std::int64_t(total) * hq;
  for (std::int64_t r = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; r < rows;
       r += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t t = r / hq;
    const int h = int(r - t * hq);
    std::uint16_t* o = out + t * o_ts + h * o_hs;
    for (int d = 0; d < D; ++d) o[d] = 0x7fff;  // NaN in bf16 and in f16
    lse[std::int64_t(h) * total + t] = __int_as_float(0x7fffffff);
  }
}

}  // namespace

void build_seq_tables(const SeqTableArgs& a, int* tables, cudaStream_t stream) {
  seq_tables_kernel<<<1, kPlanThreads, 0, stream>>>(a, tables);
  MOBA_CUDA_LAUNCH_CHECK();
}

void poison_if_invalid(const int* invalid, void* out, std::int64_t o_ts, std::int64_t o_hs,
                       float* lse, int total, int hq, int head_dim, cudaStream_t stream) {
  if (total == 0) return;
  // Few CTAs: in the common (valid) case each reads one flag and returns.
  poison_kernel<<<64, 256, 0, stream>>>(invalid, static_cast<std::uint16_t*>(out), o_ts, o_hs, lse,
                                        total, hq, head_dim);
  MOBA_CUDA_LAUNCH_CHECK();
}

}  // namespace moba::cuda
