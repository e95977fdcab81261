// Times the CUDA backend's MoBA gate and forward (and the dense causal path) through the public
// API. Method (see the device notes): inputs drawn on the GPU from a normal distribution, several
// input sets rotated when one set fits in L2, warm-up calls, then the median of timed repeats
// (CUDA events around each call). TFLOP/s counts only the work the selection requires:
// visible (query, key) pairs x 4 x head_dim (QK^T and PV), per head.
//   moba_cuda_bench            8K, 32K, 128K with 8 heads
//   moba_cuda_bench --long     adds 512K (2 heads) and 1M (1 head), MoBA only
//   moba_cuda_bench --quick    8K and 32K only
//   moba_cuda_bench --profile  32K, 8 heads: one call each of dense causal and MoBA B=4096
//                              top-12, untimed (for ncu / compute-sanitizer)
//   moba_cuda_bench --kernel K forward kernel: auto (default), sm80_mma_sync,
//                              sm90_warp_specialized (CudaOptions::forward_kernel; sm90_wgmma
//                              is accepted as its alias)
//   moba_cuda_bench --one-cta-per-tile  sm90_warp_specialized without persistent CTAs
//   moba_cuda_bench --flashmoba FlashMoBA's setting instead (fp16, 16 heads, batch 2 x N, block
//                              128, top-8) at 8K, 32K, 128K and 512K: config (d) of issue 11;
//                              the gate alone is timed too, with its share of the forward
//   moba_cuda_bench --coherent MoBA in one pass (CudaOptions::moba_one_pass): (a) 64 blocks
//                              top-3 bf16 8 heads at 8K/32K/128K and (d) block 128 top-8 fp16
//                              16 heads batch 2 at 8K/32K/128K, on coherent data (a query
//                              block's rows near one vector, key blocks with distinct means:
//                              neighbouring rows agree, as on real activations) and on random
//                              data: ms with one pass on and off, TFLOP/s on the selected work,
//                              the fraction of one-pass tiles and their mean union size
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "moba/moba.hpp"
#include "bench_cuda.hpp"

namespace {

struct Set {
  void *q, *k, *v;
};

struct Config {
  const char* name;
  moba::AttentionParams params;
  int d = 128;
};

double median(std::vector<float> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// visible pairs per head for 1 sequence of length n
double pairs(const moba::AttentionParams& p, long long n) {
  if (p.mode == moba::Mode::full) return double(n) * (n + 1) / 2;
  const int B = p.block_size, K = p.topk - 1;
  double s = 0;
  for (long long t = 0; t < n; ++t) {
    const long long own = t / B;
    s += double(t - own * B + 1) + double(std::min<long long>(K, own)) * B;
  }
  return s;
}

// Config (d) of issue 11, FlashMoBA's setting: fp16, 16 heads, batch 2 x N, D = 128, block
// 128, top-8, routing included (the forward runs the gate). One input set (4 GiB per operand
// at 512K: far beyond L2).
void run_flashmoba(const moba::RunOptions& run, cudaEvent_t e0, cudaEvent_t e1) {
  const int H = 16, D = 128, B = 2;
  const moba::AttentionParams params = moba::AttentionParams::moba_blocks(128, 8);
  std::printf("| N (x2 seqs) | H | config | fwd ms (gate incl.) | gate ms | gate share | TFLOP/s (selected work) |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  for (long long N : {8192LL, 32768LL, 131072LL, 524288LL}) {
    const long long T = B * N;
    const std::size_t bytes = std::size_t(T) * H * D * 2;
    void *q, *k, *v, *out, *lse, *sel;
    CK(cudaMalloc(&q, bytes));
    CK(cudaMalloc(&k, bytes));
    CK(cudaMalloc(&v, bytes));
    CK(cudaMalloc(&out, bytes));
    CK(cudaMalloc(&lse, std::size_t(T) * H * 4));
    CK(cudaMalloc(&sel, std::size_t(T) * H * 7 * 4));
    fill_normal<<<1024, 256>>>((__half*)q, T * H * D, 11);
    fill_normal<<<1024, 256>>>((__half*)k, T * H * D, 12);
    fill_normal<<<1024, 256>>>((__half*)v, T * H * D, 13);
    CK(cudaGetLastError());
    std::vector<int> cu{0, int(N), int(T)};
    const moba::TensorView cuv =
        moba::TensorView::contiguous(cu.data(), moba::DType::i32, moba::Device::cpu(), {3});
    auto view = [&](void* p) {
      return moba::TensorView::contiguous(p, moba::DType::f16, moba::Device::cuda(0), {T, H, D});
    };
    const moba::TensorView lv = moba::TensorView::contiguous(lse, moba::DType::f32, moba::Device::cuda(0), {H, T});
    const moba::TensorView sv = moba::TensorView::contiguous(sel, moba::DType::i32, moba::Device::cuda(0), {T, H, 7});
    auto fwd = [&]() { moba::attention_forward(view(q), view(k), view(v), cuv, params, view(out), lv, sv, run); };
    auto gate = [&]() { moba::moba_gate(view(q), view(k), cuv, params, sv, run); };
    auto time = [&](auto&& f) { return median_event_ms(f, 5, e0, e1); };
    const double ms = time(fwd), gms = time(gate);
    const double flops = B * pairs(params, N) * 4.0 * D * H;
    std::printf("| %lldK | %d | moba B=128 top8 fp16 batch 2 | %.3f | %.3f | %.0f%% | %.0f |\n", N / 1024,
                H, ms, gms, 100.0 * gms / ms, flops / ms * 1e-9);
    std::fflush(stdout);
    for (void* p : {q, k, v, out, lse, sel}) CK(cudaFree(p));
  }
}

// A standard normal from a counter-based hash of (i, seed) (fill_normal's).
__device__ float hash_normal(unsigned long long i, unsigned seed) {
  unsigned long long z = i * 0x9E3779B97F4A7C15ull + seed * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  const float u1 = ((z & 0xffffffu) + 1) / 16777217.f, u2 = ((z >> 24) & 0xffffffu) / 16777216.f;
  return sqrtf(-2.f * logf(u1)) * cospif(2.f * u2);
}

// Coherent [T, H, D] values: x = c(block of t, h, d) + eps * noise(t, h, d), block = the MoBA
// block of the token within its sequence (sequences of n tokens): queries with eps = 0.05
// (a block's rows near one vector), keys with eps = 1 (block means distinct).
template <class T>
__global__ void fill_coherent(T* x, long long total, int H, int D, long long n, int block,
                              float eps, unsigned seed) {
  const long long count = total * H * D;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < count;
       i += (long long)gridDim.x * blockDim.x) {
    const long long t = i / ((long long)H * D), hd = i - t * H * D;
    const long long blk = (t / n) * (n / block + 1) + (t % n) / block;  // global block id
    const float c = hash_normal((unsigned long long)(blk * H * D + hd), seed);
    x[i] = T(c + eps * hash_normal((unsigned long long)i, seed + 1000));
  }
}

// --coherent: one-pass on vs off per setting and data kind.
template <class Elem>
void run_coherent(moba::RunOptions run, cudaEvent_t e0, cudaEvent_t e1) {
  struct Setting { const char* name; long long n; int batch, h, block, topk; moba::DType dt; };
  const bool bf = std::is_same<Elem, __nv_bfloat16>::value;
  std::vector<Setting> settings;
  for (long long n : {8192LL, 32768LL, 131072LL}) {
    if (bf) settings.push_back({"(a) 64 blocks top3 bf16", n, 1, 8, int(n / 64), 3, moba::DType::bf16});
    else settings.push_back({"(d) B=128 top8 fp16 x2", n, 2, 16, 128, 8, moba::DType::f16});
  }
  const int D = 128;
  for (const Setting& st : settings) {
    const long long T = st.n * st.batch;
    const int H = st.h, past = st.topk - 1;
    const std::size_t bytes = std::size_t(T) * H * D * 2;
    void *q, *k, *v, *out, *lse, *sel;
    CK(cudaMalloc(&q, bytes));
    CK(cudaMalloc(&k, bytes));
    CK(cudaMalloc(&v, bytes));
    CK(cudaMalloc(&out, bytes));
    CK(cudaMalloc(&lse, std::size_t(T) * H * 4));
    CK(cudaMalloc(&sel, std::size_t(T) * H * past * 4));
    std::vector<int> cu;
    for (int b = 0; b <= st.batch; ++b) cu.push_back(int(b * st.n));
    const moba::TensorView cuv = moba::TensorView::contiguous(cu.data(), moba::DType::i32,
                                                              moba::Device::cpu(), {st.batch + 1});
    auto view = [&](void* p) {
      return moba::TensorView::contiguous(p, st.dt, moba::Device::cuda(0), {T, H, D});
    };
    const moba::TensorView lv = moba::TensorView::contiguous(lse, moba::DType::f32, moba::Device::cuda(0), {H, T});
    const moba::TensorView sv = moba::TensorView::contiguous(sel, moba::DType::i32, moba::Device::cuda(0), {T, H, past});
    const moba::AttentionParams params = moba::AttentionParams::moba_blocks(st.block, st.topk);
    for (bool coherent : {true, false}) {
      if (coherent) {
        fill_coherent<<<1024, 256>>>((Elem*)q, T, H, D, st.n, st.block, 0.05f, 21);
        fill_coherent<<<1024, 256>>>((Elem*)k, T, H, D, st.n, st.block, 1.0f, 22);
      } else {
        fill_normal<<<1024, 256>>>((Elem*)q, T * H * D, 21);
        fill_normal<<<1024, 256>>>((Elem*)k, T * H * D, 22);
      }
      fill_normal<<<1024, 256>>>((Elem*)v, T * H * D, 23);
      CK(cudaGetLastError());
      auto timed = [&](bool one_pass, moba::CudaForwardStats* stats) {
        moba::RunOptions r = run;
        r.cuda.moba_one_pass = one_pass;
        auto fwd = [&]() { moba::attention_forward(view(q), view(k), view(v), cuv, params, view(out), lv, sv, r); };
        const double ms = median_event_ms(fwd, 7, e0, e1);
        if (stats) {  // one more call that reports the plan (it synchronises: untimed)
          r.cuda.forward_stats = stats;
          moba::attention_forward(view(q), view(k), view(v), cuv, params, view(out), lv, sv, r);
        }
        return ms;
      };
      moba::CudaForwardStats stats;
      const double on = timed(true, &stats), off = timed(false, nullptr);
      const double flops = st.batch * pairs(params, st.n) * 4.0 * D * H;
      const double frac = stats.moba_tiles ? double(stats.one_pass_tiles) / stats.moba_tiles : 0.0;
      const double mean_u = stats.one_pass_tiles ? double(stats.union_blocks) / stats.one_pass_tiles : 0.0;
      std::printf("| %s | %lldK | %s | %.3f | %.3f | %.2fx | %.0f | %.0f | %.1f%% | %.2f |\n", st.name,
                  st.n / 1024, coherent ? "coherent" : "random", on, off, off / on, flops / on * 1e-9,
                  flops / off * 1e-9, 100.0 * frac, mean_u);
      std::fflush(stdout);
    }
    for (void* p : {q, k, v, out, lse, sel}) CK(cudaFree(p));
  }
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, lng = false, profile = false;
  moba::RunOptions run;
  const char* kernel = "auto";
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick")) quick = true;
    if (!std::strcmp(argv[i], "--long")) lng = true;
    if (!std::strcmp(argv[i], "--profile")) profile = true;
    if (!std::strcmp(argv[i], "--kernel") && i + 1 < argc) kernel = argv[++i];
  }
  bool flashmoba = false, coherent = false;
  for (int i = 1; i < argc; ++i)
    if (!std::strcmp(argv[i], "--flashmoba")) flashmoba = true;
    else if (!std::strcmp(argv[i], "--coherent")) coherent = true;
    else if (!std::strcmp(argv[i], "--one-cta-per-tile")) run.cuda.forward_persistent = false;
  using FK = moba::CudaOptions::ForwardKernel;
  if (!std::strcmp(kernel, "sm90_wgmma")) run.cuda.forward_kernel = FK::sm90_wgmma;
  else if (!std::strcmp(kernel, "sm80_mma_sync")) run.cuda.forward_kernel = FK::sm80_mma_sync;
  else if (!std::strcmp(kernel, "sm90_warp_specialized")) run.cuda.forward_kernel = FK::sm90_warp_specialized;
  else if (std::strcmp(kernel, "auto")) {
    std::fprintf(stderr, "--kernel: one of auto, sm90_wgmma, sm80_mma_sync, sm90_warp_specialized\n");
    return 2;
  }
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("# device: %s, %d SMs, L2 %d MB\n# %s\n# forward kernel: %s%s\n", prop.name,
              prop.multiProcessorCount, prop.l2CacheSize >> 20, moba::build_info().c_str(), kernel,
              run.cuda.forward_persistent ? "" : " (one CTA per tile)");
  const int D = 128;
  struct Size { long long n; int h; bool dense; };
  std::vector<Size> sizes = {{8192, 8, true}, {32768, 8, true}};
  if (profile) sizes = {{32768, 8, true}};
  if (!quick && !profile) sizes.push_back({131072, 8, true});
  if (lng) {
    sizes.push_back({524288, 2, false});
    sizes.push_back({1048576, 1, false});
  }

  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  if (flashmoba) {
    run_flashmoba(run, e0, e1);
    return 0;
  }
  if (coherent) {
    std::printf("| setting | N | data | one pass ms | waves ms (one pass off) | speedup | TFLOP/s one pass | "
                "TFLOP/s waves | one-pass tiles | mean union |\n");
    std::printf("|---|---|---|---|---|---|---|---|---|---|\n");
    run_coherent<__nv_bfloat16>(run, e0, e1);
    run_coherent<__half>(run, e0, e1);
    return 0;
  }
  std::printf("| N | H | config | fwd ms (gate incl.) | gate ms (share) | TFLOP/s (selected work) | dense/this |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  for (const Size& sz : sizes) {
    const long long N = sz.n;
    const int H = sz.h;
    const std::size_t bytes = std::size_t(N) * H * D * 2;
    const int nsets = int(std::min<long long>(4, std::max<long long>(1, (3LL * prop.l2CacheSize) / (3 * bytes) + 1)));
    std::vector<Set> sets(nsets);
    for (int i = 0; i < nsets; ++i) {
      CK(cudaMalloc(&sets[i].q, bytes));
      CK(cudaMalloc(&sets[i].k, bytes));
      CK(cudaMalloc(&sets[i].v, bytes));
      fill_normal<<<1024, 256>>>((__nv_bfloat16*)sets[i].q, N * H * D, 3 * i + 1);
      fill_normal<<<1024, 256>>>((__nv_bfloat16*)sets[i].k, N * H * D, 3 * i + 2);
      fill_normal<<<1024, 256>>>((__nv_bfloat16*)sets[i].v, N * H * D, 3 * i + 3);
      CK(cudaGetLastError());
    }
    void *out, *lse, *sel;
    CK(cudaMalloc(&out, bytes));
    CK(cudaMalloc(&lse, std::size_t(N) * H * 4));
    CK(cudaMalloc(&sel, std::size_t(N) * H * 11 * 4));
    std::vector<int> cu{0, int(N)};
    const moba::TensorView cuv =
        moba::TensorView::contiguous(cu.data(), moba::DType::i32, moba::Device::cpu(), {2});
    // (a) 64 blocks per sequence (block N/64), top-3; (b) block 4096, top-12; (c) block 512,
    // top-8. Dense first: the MoBA rows report their speedup over it.
    static char name_a[64];
    std::snprintf(name_a, sizeof name_a, "moba 64 blocks (B=%lld) top3", N / 64);
    const Config configs[] = {
        {"dense causal", moba::AttentionParams::full()},
        {name_a, moba::AttentionParams::moba_blocks(int(N / 64), 3)},
        {"moba B=4096 top12", moba::AttentionParams::moba_blocks(4096, 12)},
        {"moba B=512 top8", moba::AttentionParams::moba_blocks(512, 8)},
        {"dense causal D=64", moba::AttentionParams::full(), 64},
        {"moba B=512 top8 D=64", moba::AttentionParams::moba_blocks(512, 8), 64},
    };
    double dense_ms = 0;
    for (const Config& c : configs) {
      const bool is_dense = c.params.mode == moba::Mode::full;
      if (is_dense && !sz.dense) continue;
      if (c.d != D && !sz.dense) continue;  // D=64 rows only at the 8-head sizes
      const int Dc = c.d;
      const int past = is_dense ? 0 : c.params.topk - 1;
      auto view = [&](void* p) {
        return moba::TensorView::contiguous(p, moba::DType::bf16, moba::Device::cuda(0), {N, H, Dc});
      };
      const moba::TensorView ov = view(out);
      const moba::TensorView lv = moba::TensorView::contiguous(lse, moba::DType::f32, moba::Device::cuda(0), {H, N});
      moba::TensorView sv;
      if (!is_dense) sv = moba::TensorView::contiguous(sel, moba::DType::i32, moba::Device::cuda(0), {N, H, past});
      auto fwd = [&](int i) {
        const Set& s = sets[i % nsets];
        moba::attention_forward(view(s.q), view(s.k), view(s.v), cuv, c.params, ov, lv, sv, run);
      };
      auto gate = [&](int i) {
        const Set& s = sets[i % nsets];
        moba::moba_gate(view(s.q), view(s.k), cuv, c.params, sv, run);
      };
      if (profile) {
        if (std::strcmp(c.name, "dense causal") && std::strcmp(c.name, "moba B=4096 top12")) continue;
        fwd(0);
        CK(cudaDeviceSynchronize());
        std::printf("profiled %s\n", c.name);
        continue;
      }
      auto time = [&](auto&& f, double budget_ms) {
        for (int i = 0; i < 2; ++i) f(i);
        CK(cudaDeviceSynchronize());
        std::vector<float> ts;
        double spent = 0;
        for (int i = 0; i < 50 && (ts.size() < 5 || spent < budget_ms); ++i) {
          CK(cudaEventRecord(e0));
          f(i);
          CK(cudaEventRecord(e1));
          CK(cudaEventSynchronize(e1));
          float ms;
          CK(cudaEventElapsedTime(&ms, e0, e1));
          ts.push_back(ms);
          spent += ms;
        }
        return median(ts);
      };
      const double ms = time(fwd, 600.0);
      const double gms = is_dense ? 0.0 : time(gate, 200.0);
      if (is_dense && Dc == D) dense_ms = ms;
      const double flops = pairs(c.params, N) * 4.0 * Dc * H;
      char ratio[32] = "-", gtxt[32] = "-";
      if (dense_ms > 0 && Dc == D) std::snprintf(ratio, sizeof ratio, "%.1fx", dense_ms / ms);
      if (!is_dense) std::snprintf(gtxt, sizeof gtxt, "%.3f (%.0f%%)", gms, 100.0 * gms / ms);
      std::printf("| %lldK | %d | %s | %.3f | %s | %.0f | %s |\n", N / 1024, H, c.name, ms, gtxt,
                  flops / ms * 1e-9, ratio);
      std::fflush(stdout);
    }
    CK(cudaFree(out));
    CK(cudaFree(lse));
    CK(cudaFree(sel));
    for (auto& s : sets) {
      CK(cudaFree(s.q));
      CK(cudaFree(s.k));
      CK(cudaFree(s.v));
    }
  }
  return 0;
}
