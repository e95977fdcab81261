// moba_cuda_bwd_bench: times the CUDA backward (default and deterministic mode).
//
// bf16, D = 128, H = 8 (MHA), one sequence of N in {8K, 32K, 128K}; MoBA 64-token blocks top-3,
// MoBA 512-token blocks top-8, and full causal. The saved forward state comes from the CUDA
// forward when it runs (random inputs, so its selection is close to uniform over past blocks);
// otherwise from a synthetic uniform random selection with plausible lse/out (said in the
// output).
//
// FLOPs: the backward does 5 matrix products per visible (query, key) pair against the
// forward's 2: 2.5 x 4 * D per pair = 10 * D. Pairs are counted exactly from the selection.
// Time: median of CUDA-event-timed calls after one warm-up.
// Memory: the backward's own workspace at its peak (what it allocates beyond the caller's
// tensors), next to what a dense flash backward allocates (an fp32 dQ accumulator, 4 * N * H * D
// bytes, plus D), and the ratio of whole-call peaks (tensors + workspace).
// --kernel picks the key-pass kernel of every variant (CudaOptions::backward_kernel):
// automatic (default), sm80_mma_sync, sm90_wgmma or sm90_warp_specialized (the last two: sm_90a
// builds on compute capability 9.0).
// --dq-all-atomic: every dQ by fp32 atomics in the key pass (CudaOptions::backward_dq_all_atomic)
// in the non-deterministic variants, instead of the query-major dQ pass for the causal rows.
// --no-dq-bulk (sm90_wgmma): dQ rows by per-thread fp32 atomics instead of one bulk reduce-add
// per row (CudaOptions::backward_dq_bulk_reduce = false).
// With the stage times (stderr), the key pass's own TFLOP/s (its products over the pairs).
// --no-row-tma (sm90_warp_specialized): implicit row tiles by cp.async instead of TMA boxes
// (CudaOptions::backward_row_tma = false).
// --configs: which attention settings (b64, a = 64 blocks of N / 64 top-3, b512, full).
// Usage: moba_cuda_bwd_bench [--max-n 131072] [--kernel sm90_wgmma] [--dq-all-atomic] [--configs a,b512] [--out results.md]
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cuda/backward/bwd_stats.hpp"
#include "moba/moba.hpp"
#include "bench_cuda.hpp"

namespace {

std::uint16_t to_bf16(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<std::uint16_t>(u >> 16);
}

// Uniform values of unit variance, bf16, filled in parallel (fast enough for 128K x 8 x 128).
void fill_random(std::vector<std::uint16_t>& x, std::uint64_t seed) {
  const int nth = std::max(1u, std::min(16u, std::thread::hardware_concurrency()));
  std::vector<std::thread> pool;
  const std::size_t n = x.size();
  for (int w = 0; w < nth; ++w)
    pool.emplace_back([&, w]() {
      std::uint64_t s = seed * 0x9E3779B97F4A7C15ull + w + 1;
      for (std::size_t i = n * w / nth; i < n * (w + 1) / nth; ++i) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        const float u = float(s >> 40) / float(1 << 24);  // [0, 1)
        x[i] = to_bf16((u - 0.5f) * 3.4641016f);
      }
    });
  for (auto& t : pool) t.join();
}

struct Dev {
  void* p = nullptr;
  explicit Dev(std::size_t bytes) { CK(cudaMalloc(&p, std::max<std::size_t>(bytes, 16))); }
  ~Dev() { cudaFree(p); }
};

moba::TensorView view(void* p, moba::DType t, std::initializer_list<std::int64_t> s) {
  return moba::TensorView::contiguous(p, t, moba::Device::cuda(0), s);
}

struct Config {
  const char* name;
  moba::AttentionParams params;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  long max_n = 131072;
  std::string out_path, kernel_name = "automatic", config_tags = "b64,b512,full";
  bool dq_all_atomic = false, dq_bulk = true, row_tma = true;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--max-n") && i + 1 < argc) max_n = std::atol(argv[++i]);
    else if (!std::strcmp(argv[i], "--out") && i + 1 < argc) out_path = argv[++i];
    else if (!std::strcmp(argv[i], "--kernel") && i + 1 < argc) kernel_name = argv[++i];
    else if (!std::strcmp(argv[i], "--configs") && i + 1 < argc) config_tags = argv[++i];
    else if (!std::strcmp(argv[i], "--dq-all-atomic")) dq_all_atomic = true;
    else if (!std::strcmp(argv[i], "--no-dq-bulk")) dq_bulk = false;
    else if (!std::strcmp(argv[i], "--no-row-tma")) row_tma = false;
    else {
      std::fprintf(stderr, "usage: moba_cuda_bwd_bench [--max-n N] [--kernel automatic|sm80_mma_sync|sm90_wgmma|sm90_warp_specialized] [--dq-all-atomic] [--no-dq-bulk] [--no-row-tma] [--configs b64,a,b512,full] [--out file.md]\n");
      return 2;
    }
  }
  using BK = moba::CudaOptions::BackwardKernel;
  BK kernel = BK::automatic;
  if (kernel_name == "sm80_mma_sync") kernel = BK::sm80_mma_sync;
  else if (kernel_name == "sm90_wgmma") kernel = BK::sm90_wgmma;
  else if (kernel_name == "sm90_warp_specialized") kernel = BK::sm90_warp_specialized;
  else if (kernel_name != "automatic") {
    std::fprintf(stderr, "--kernel: expected automatic, sm80_mma_sync, sm90_wgmma or sm90_warp_specialized, got %s\n",
                 kernel_name.c_str());
    return 2;
  }
  int ndev = 0;
  if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
    std::printf("no CUDA device\n");
    return 0;
  }
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, 0));
  const int H = 8, D = 128;
  const moba::DType bf = moba::DType::bf16;
  // --configs picks (comma list of tags): b64 (blocks of 64, top-3), a (setting (a): 64 blocks
  // of N / 64 tokens, top-3), b512 (blocks of 512, top-8), full (causal); default b64,b512,full.
  auto config_wanted = [&](const char* tag) {
    return (std::string(",") + config_tags + ",").find(std::string(",") + tag + ",") != std::string::npos;
  };
  std::ostringstream md;
  md << "device: " << prop.name << " (" << prop.multiProcessorCount << " SMs), backward key pass: "
     << kernel_name << (dq_all_atomic ? ", every dQ by atomics in the key pass" : "")
     << (dq_bulk ? "" : ", dQ by per-thread atomics (no bulk reduce)")
     << (row_tma ? "" : ", implicit rows by cp.async (no TMA)") << "\n\n";
  md << "| N | attention | state | pairs/row | default ms | TFLOP/s | determ. ms | TFLOP/s | det/def | "
        "workspace MiB (det) | dense-flash extra MiB | peak ratio vs dense flash | 64-key tiles ms |\n";
  md << "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
  std::printf("%s", md.str().c_str());
  std::fflush(stdout);

  for (long N : {8192L, 32768L, 131072L}) {
    if (N > max_n) continue;
    const std::size_t nq = std::size_t(N) * H * D;
    std::vector<std::uint16_t> hbuf(nq);
    Dev q(nq * 2), k(nq * 2), v(nq * 2), dout(nq * 2), out(nq * 2), dq(nq * 2), dk(nq * 2), dv(nq * 2);
    Dev lse(std::size_t(N) * H * 4), cu(8);
    fill_random(hbuf, 1);
    CK(cudaMemcpy(q.p, hbuf.data(), nq * 2, cudaMemcpyHostToDevice));
    fill_random(hbuf, 2);
    CK(cudaMemcpy(k.p, hbuf.data(), nq * 2, cudaMemcpyHostToDevice));
    fill_random(hbuf, 3);
    CK(cudaMemcpy(v.p, hbuf.data(), nq * 2, cudaMemcpyHostToDevice));
    fill_random(hbuf, 4);
    CK(cudaMemcpy(dout.p, hbuf.data(), nq * 2, cudaMemcpyHostToDevice));
    std::vector<int> cuh = {0, int(N)};
    CK(cudaMemcpy(cu.p, cuh.data(), 8, cudaMemcpyHostToDevice));
    const auto cuv = view(cu.p, moba::DType::i32, {2});
    const auto T = std::int64_t(N);

    std::vector<Config> configs;
    if (config_wanted("b64")) configs.push_back({"moba B=64 top-3", moba::AttentionParams::moba_blocks(64, 3)});
    if (config_wanted("a")) configs.push_back({"moba 64 blocks top-3 (a)", moba::AttentionParams::moba_blocks(int(N / 64), 3)});
    if (config_wanted("b512")) configs.push_back({"moba B=512 top-8", moba::AttentionParams::moba_blocks(512, 8)});
    if (config_wanted("full")) configs.push_back({"full causal", moba::AttentionParams::full()});
    for (const Config& c : configs) {
      const bool is_moba = c.params.mode == moba::Mode::moba;
      const int past = is_moba ? c.params.topk - 1 : 0;
      Dev sel(std::size_t(N) * H * std::max(past, 1) * 4);
      const auto selv = is_moba ? view(sel.p, moba::DType::i32, {T, H, past}) : moba::TensorView{};
      std::string state = "cuda forward";
      try {
        moba::RunOptions fo;
        fo.backend = moba::Backend::cuda;
        moba::attention_forward(view(q.p, bf, {T, H, D}), view(k.p, bf, {T, H, D}), view(v.p, bf, {T, H, D}),
                                cuv, c.params, view(out.p, bf, {T, H, D}),
                                view(lse.p, moba::DType::f32, {H, T}), selv, fo);
        CK(cudaDeviceSynchronize());
      } catch (const moba::Error& e) {
        // Synthetic state: uniform random distinct past blocks, lse = log(#keys), random out.
        state = "synthetic";
        std::vector<float> l(std::size_t(N) * H);
        std::vector<std::int32_t> s(std::size_t(N) * H * past, -1);
        std::uint64_t r = 12345;
        auto rnd = [&]() { r ^= r << 13; r ^= r >> 7; r ^= r << 17; return r; };
        const int B = is_moba ? c.params.block_size : 1;
        for (long t = 0; t < N; ++t)
          for (int h = 0; h < H; ++h) {
            const int own = is_moba ? int(t / B) : 0;
            std::vector<int> pick;
            const int want = std::min(past, own);
            while (int(pick.size()) < want) {
              const int j = int(rnd() % std::uint64_t(own));
              if (std::find(pick.begin(), pick.end(), j) == pick.end()) pick.push_back(j);
            }
            std::sort(pick.begin(), pick.end());
            for (int x = 0; x < want; ++x) s[(std::size_t(t) * H + h) * past + x] = pick[x];
            const double keys = is_moba ? double(t % B + 1 + want * B) : double(t + 1);
            l[std::size_t(h) * N + t] = float(std::log(keys));
          }
        CK(cudaMemcpy(lse.p, l.data(), l.size() * 4, cudaMemcpyHostToDevice));
        if (past > 0) CK(cudaMemcpy(sel.p, s.data(), s.size() * 4, cudaMemcpyHostToDevice));
        fill_random(hbuf, 5);
        CK(cudaMemcpy(out.p, hbuf.data(), nq * 2, cudaMemcpyHostToDevice));
      }
      // Visible pairs, from the selection.
      double pairs = 0, listed_pairs = 0;  // listed: (row, key) pairs of selected past blocks
      if (is_moba) {
        std::vector<std::int32_t> s(std::size_t(N) * H * past);
        if (past > 0) CK(cudaMemcpy(s.data(), sel.p, s.size() * 4, cudaMemcpyDeviceToHost));
        const int B = c.params.block_size;
        for (long t = 0; t < N; ++t)
          for (int h = 0; h < H; ++h) {
            const int own = int(t / B);
            pairs += double(t % B + 1);
            for (int x = 0; x < past; ++x) {
              const int j = s[(std::size_t(t) * H + h) * past + x];
              if (j >= 0 && j < own) {
                pairs += B;
                listed_pairs += B;
              }
            }
          }
      } else {
        pairs = double(H) * double(N) * double(N + 1) / 2.0;
      }
      const double flops = 10.0 * D * pairs;
      // The key pass alone: S, dP, dV, dK over every pair (8 D), dQ over the listed pairs (2 D;
      // every pair with --dq-all-atomic). Its TFLOP/s is printed with the stage times.
      const double key_flops = 8.0 * D * pairs + 2.0 * D * (dq_all_atomic ? pairs : listed_pairs);

      // Variants: 0 default, 1 deterministic, 2 default with 64-key tiles everywhere
      // (CudaOptions::backward_key_tile = 64, for comparison with the 128-key tiles).
      double ms[3] = {0, 0, 0};
      std::size_t ws[3] = {0, 0, 0};
      for (int det = 0; det < 3; ++det) {
        moba::RunOptions o;
        o.backend = moba::Backend::cuda;
        o.deterministic = det == 1;
        o.cuda.backward_kernel = kernel;
        o.cuda.backward_dq_all_atomic = dq_all_atomic;
        o.cuda.backward_dq_bulk_reduce = dq_bulk;
        o.cuda.backward_row_tma = row_tma;
        if (det == 2) o.cuda.backward_key_tile = 64;
        auto call = [&]() {
          moba::attention_backward(view(q.p, bf, {T, H, D}), view(k.p, bf, {T, H, D}), view(v.p, bf, {T, H, D}),
                                   view(out.p, bf, {T, H, D}), view(lse.p, moba::DType::f32, {H, T}),
                                   view(dout.p, bf, {T, H, D}), cuv, c.params, selv, view(dq.p, bf, {T, H, D}),
                                   view(dk.p, bf, {T, H, D}), view(dv.p, bf, {T, H, D}), o);
        };
        cudaEvent_t e0, e1;
        CK(cudaEventCreate(&e0));
        CK(cudaEventCreate(&e1));
        std::vector<double> times;
        try {
          call();  // warm-up
          CK(cudaDeviceSynchronize());
          ws[det] = moba::detail::bwd::last_backward_stats().peak_workspace_bytes;
          double budget_ms = 1500, spent = 0;
          for (int rep = 0; rep < 15 && (rep < 3 || spent < budget_ms); ++rep) {
            CK(cudaEventRecord(e0));
            call();
            CK(cudaEventRecord(e1));
            CK(cudaEventSynchronize(e1));
            float t = 0;
            CK(cudaEventElapsedTime(&t, e0, e1));
            times.push_back(t);
            spent += t;
          }
          ms[det] = median(times);
          o.cuda.collect_timing = true;  // one more call, stage times to stderr
          call();
          o.cuda.collect_timing = false;
          std::fprintf(stderr, "[%ldK %s %s] stage ms:", N / 1024, c.name,
                       det == 1 ? "det" : (det == 2 ? "64-key tiles" : "default"));
          for (const auto& st : moba::detail::bwd::last_backward_stats().stage_ms) {
            std::fprintf(stderr, " %s %.3f", st.first, st.second);
            if (!std::strcmp(st.first, "key pass") && st.second > 0 && det != 1)
              std::fprintf(stderr, " (%.0f TFLOP/s)", key_flops / st.second * 1e-9);
          }
          std::fprintf(stderr, "\n");
        } catch (const moba::Error& e) {
          std::fprintf(stderr, "backward failed (%s, N=%ld): %s\n", c.name, N, e.what());
          ms[det] = NAN;
        }
        cudaEventDestroy(e0);
        cudaEventDestroy(e1);
      }
      // Whole-call peaks: tensors (q,k,v,out,dout,dq,dk,dv: 8 * nq * 2 bytes, lse, selection)
      // plus workspace; dense flash: the same tensors plus its fp32 dQ accumulator and D.
      const double tensors = 8.0 * nq * 2 + double(N) * H * 4;
      const double sel_bytes = double(N) * H * past * 4;
      const double flash_extra = double(nq) * 4 + double(N) * H * 4;
      const double ratio = (tensors + sel_bytes + double(std::max(ws[0], ws[1]))) / (tensors + flash_extra);
      char line[512];
      std::snprintf(line, sizeof line,
                    "| %ldK | %s | %s | %.0f | %.3f | %.0f | %.3f | %.0f | %.2fx | %.1f (%.1f) | %.1f | %.2f | %.3f |\n",
                    N / 1024, c.name, state.c_str(), pairs / (double(N) * H), ms[0], flops / ms[0] * 1e-9, ms[1],
                    flops / ms[1] * 1e-9, ms[1] / ms[0], ws[0] / 1048576.0, ws[1] / 1048576.0,
                    flash_extra / 1048576.0, ratio, ms[2]);
      md << line;
      std::printf("%s", line);
      std::fflush(stdout);
    }
  }
  if (!out_path.empty()) std::ofstream(out_path) << md.str();
  return 0;
}
