// Times the CUDA MoBA gate's pieces and its top-k kernel variants side by side, and compares on
// the GPU the blocks they select (the mma.sync variants' fp32 scores are the same mma chains, so
// any difference between them is a defect; the wgmma kernel sums each score in another order,
// so it may differ from them on near ties only, which test_cuda_gate checks against fp64):
//   means      block means (launch_block_means)
//   smem       gate_topk_kernel: 64-row CTAs, shared-memory lists (the kernel before issue 11)
//   sm80 regs  gate_topk_regs_kernel, 128-row CTAs (CudaOptions::gate_kernel = sm80_mma_sync)
//   sm90 wgmma gate_topk_sm90_kernel, 128-row CTAs, TMA-fed warpgroup MMA (gate_kernel =
//              sm90_wgmma, the automatic choice on sm_90a); "n/a" where it cannot run
// (256-row CTAs of the mma.sync kernel measured 2-8% slower than 128-row ones on the H200:
// bench/results/h200-2026-11-29-session2/gate_variants.md; the wgmma kernel's 192/256-row
// CTAs spill registers.) TFLOP/s: the causal score work (rows x past blocks x 2 D) per ms.
// Settings: (d) FlashMoBA's (fp16, 16 heads, batch 2 x N, D 128, block 128, top-8) at 8K-512K
// and (a) (bf16, 8 heads, one sequence, 64 blocks of N / 64, top-3) at 8K-128K. Medians of 7
// CUDA-event-timed calls after one warm-up. Usage: moba_cuda_gate_bench [--quick] (8K, 32K).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "cuda/gate/gate_kernel.cuh"
#include "bench_cuda.hpp"

namespace {

using moba::cuda::GateParams;

struct Setting {
  const char* name;
  int heads, batch, topk;
  bool bf16;
  int block_size(long long n) const { return bf16 ? int(n / 64) : 128; }
};

template <int KR, class T>
void run(const Setting& st, long long n, cudaEvent_t e0, cudaEvent_t e1) {
  constexpr int D = 128;
  const int H = st.heads, K = st.topk - 1, B = st.block_size(n);
  const long long total = n * st.batch;
  const std::size_t bytes = std::size_t(total) * H * D * sizeof(T);
  void *q, *k, *means, *sums;
  int* dev_plan;
  CK(cudaMalloc(&q, bytes));
  CK(cudaMalloc(&k, bytes));
  const long long nblocks = (n / B) * st.batch;
  CK(cudaMalloc(&means, std::max<long long>(nblocks, 1) * H * D * sizeof(T)));
  CK(cudaMalloc(&sums, std::max<long long>(nblocks, 1) * H * D * sizeof(double)));
  fill_normal<<<1024, 256>>>(static_cast<T*>(q), total * H * D, 21);
  fill_normal<<<1024, 256>>>(static_cast<T*>(k), total * H * D, 22);
  CK(cudaGetLastError());
  std::vector<int> plan;  // cu, tile_off, blk_off: [batch + 1] each
  for (int b = 0; b <= st.batch; ++b) plan.push_back(int(b * n));
  for (int b = 0; b <= st.batch; ++b) plan.push_back(int(b * ((n + 63) / 64)));
  for (int b = 0; b <= st.batch; ++b) plan.push_back(int(b * (n / B)));
  CK(cudaMalloc(&dev_plan, plan.size() * 4));
  CK(cudaMemcpy(dev_plan, plan.data(), plan.size() * 4, cudaMemcpyHostToDevice));
  const std::size_t sel_n = std::size_t(total) * H * K;
  std::int32_t* sel[3];  // smem, sm80 regs, sm90 wgmma
  for (auto& s : sel) CK(cudaMalloc(&s, sel_n * 4));

  GateParams p{};
  p.q = q;
  p.k = k;
  p.q_ts = p.k_ts = std::int64_t(H) * D;
  p.q_hs = p.k_hs = D;
  p.means = means;
  p.hq = p.hkv = H;
  p.group = 1;
  p.block_size = B;
  p.past_k = K;
  p.batch = st.batch;
  p.cu = dev_plan;
  p.tile_off = dev_plan + (st.batch + 1);
  p.blk_off = dev_plan + 2 * (st.batch + 1);
  p.num_tiles = plan[2 * st.batch + 1];
  p.num_blocks = int(nblocks);
  p.list_k = K;
  const cudaStream_t s0 = nullptr;

  const double t_means = median_event_ms([&] { moba::cuda::launch_block_means<T, D>(p, sums, s0); }, 7, e0, e1);
  GateParams ps = p, p2 = p, p9 = p;
  ps.sel = sel[0], p2.sel = sel[1], p9.sel = sel[2];
  const bool sm90 = moba::cuda::gate_sm90_available<T, D>();
  const double t_smem = median_event_ms([&] { moba::cuda::launch_topk_smem<T, D>(ps, s0); }, 7, e0, e1);
  const double t_regs = median_event_ms([&] { moba::cuda::launch_topk_regs<T, D, KR, 2>(p2, s0); }, 7, e0, e1);
  const double t_sm90 =
      sm90 ? median_event_ms([&] { moba::cuda::launch_topk_sm90<T, D, KR, moba::cuda::kSm90GateTiles>(p9, s0); }, 7, e0, e1)
           : 0.0;
  CK(cudaDeviceSynchronize());

  std::vector<std::int32_t> a(sel_n), b(sel_n), c(sel_n);
  CK(cudaMemcpy(a.data(), sel[0], sel_n * 4, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(b.data(), sel[1], sel_n * 4, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(c.data(), sel[2], sel_n * 4, cudaMemcpyDeviceToHost));
  long long d_regs = 0, d_sm90 = 0;
  for (std::size_t r = 0; r < sel_n; r += K) {
    d_regs += std::memcmp(&a[r], &b[r], K * 4) != 0;
    d_sm90 += std::memcmp(&a[r], &c[r], K * 4) != 0;
  }
  // scored work: rows x past blocks x 2 D per head (causal)
  double pairs = 0;
  for (long long t = 0; t < n; ++t) pairs += double(t / B);
  const double flops = pairs * 2.0 * D * H * st.batch;
  char sm90_cols[96];
  if (sm90)
    std::snprintf(sm90_cols, sizeof sm90_cols, "%.3f | %.0f | %.2fx", t_sm90, flops / t_sm90 * 1e-9,
                  t_regs / t_sm90);
  else
    std::snprintf(sm90_cols, sizeof sm90_cols, "n/a | n/a | n/a");
  std::printf("| %s | %lldK | %.3f | %.3f | %.3f | %.0f | %s | %lld / %s |\n", st.name, n / 1024, t_means,
              t_smem, t_regs, flops / t_regs * 1e-9, sm90_cols, d_regs,
              sm90 ? std::to_string(d_sm90).c_str() : "n/a");
  std::fflush(stdout);
  for (void* x : {q, k, means, sums}) CK(cudaFree(x));
  CK(cudaFree(dev_plan));
  for (auto& s : sel) CK(cudaFree(s));
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  int dev_count = 0;
  if (cudaGetDeviceCount(&dev_count) != cudaSuccess || dev_count == 0) {
    std::printf("no CUDA device: nothing to time\n");
    return 0;
  }
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  std::printf("| setting | N | means ms | top-k ms: smem (old) | sm80 regs ms | sm80 TFLOP/s | "
              "sm90 wgmma ms | sm90 TFLOP/s | sm90 speedup | rows differing from smem: sm80 / sm90 |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|\n");
  const Setting d{"(d) fp16 16 heads batch 2, B=128, top-8", 16, 2, 8, false};
  const Setting a{"(a) bf16 8 heads, 64 blocks, top-3", 8, 1, 3, true};
  const std::vector<long long> ns = quick ? std::vector<long long>{8192, 32768}
                                          : std::vector<long long>{8192, 32768, 131072, 524288};
  for (long long n : ns) run<8, __half>(d, n, e0, e1);
  for (long long n : ns)
    if (n <= 131072) run<4, __nv_bfloat16>(a, n, e0, e1);
  return 0;
}
