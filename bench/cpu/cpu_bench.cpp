// moba_cpu_bench: times the CPU backend's dense (full causal) and MoBA attention, forward and
// forward+backward, at H = 4, D = 128, bf16, 64 blocks per sequence (block = N / 64), top-3,
// and an OpenBLAS sgemm of the dense forward's FLOPs in the same run.
//
// FLOPs counted are the ones the problem needs, not what a kernel happens to do:
//   forward   4 * D per visible (query, key) pair   (q.k and p.v, 2 * D each)
//   backward  2.5x the forward on top               (q.k recompute, dout.v, dv, dk, dq: 5 of the
//                                                    forward's 2 products = 2.5x)
// Visible pairs: full causal N (N + 1) / 2 per head; MoBA counted from the selection the forward
// returned (own block causally + B per chosen past block).
//
// Usage: moba_cpu_bench [--max-n N] [--min-n N] [--threads T] [--reps R] [--cpu-time 1] [--dense-only 1] [--fwd-only 1] [--moba-only 1]
//   --cpu-time 1: time with the process CPU clock instead of the wall clock. Meant for
//                 --threads 1 on a shared machine: time while descheduled is not counted, so
//                 A/B comparisons of the kernels survive other people's load (OpenMP spin-waits
//                 would be counted with more threads).
//   --dense-only 1: skip MoBA (its columns print 0).  --fwd-only 1: skip the backwards.
//   --moba-only 1: skip dense and sgemm (for profiling MoBA).
#include <cblas.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "moba/moba.hpp"

namespace {

using Clock = std::chrono::steady_clock;
bool g_cpu_time = false;

double now_seconds() {
  if (g_cpu_time) {
    timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
  }
  return std::chrono::duration<double>(Clock::now().time_since_epoch()).count();
}

std::uint16_t to_bf16(float f) {  // round to nearest even
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return std::uint16_t(u >> 16);
}

std::vector<std::uint16_t> random_bf16(std::size_t n, std::mt19937& rng) {
  std::normal_distribution<float> dist(0.f, 1.f);
  std::vector<std::uint16_t> x(n);
  for (auto& v : x) v = to_bf16(dist(rng));
  return x;
}

// Best wall time of `reps` runs (the first run also warms caches and page tables).
double best_seconds(int reps, const std::function<void()>& f) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const double t0 = now_seconds();
    f();
    best = std::min(best, now_seconds() - t0);
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  int max_n = 32768, min_n = 1024, threads = 0, reps = 0;
  bool dense_only = false, fwd_only = false, moba_only = false;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    const int v = std::atoi(argv[i + 1]);
    if (a == "--max-n") max_n = v;
    else if (a == "--min-n") min_n = v;
    else if (a == "--threads") threads = v;
    else if (a == "--reps") reps = v;
    else if (a == "--cpu-time") g_cpu_time = v != 0;
    else if (a == "--dense-only") dense_only = v != 0;
    else if (a == "--fwd-only") fwd_only = v != 0;
    else if (a == "--moba-only") moba_only = v != 0;
    else { std::fprintf(stderr, "unknown flag %s\n", a.c_str()); return 2; }
  }
  const int H = 4, D = 128, blocks = 64, topk = 3;
  moba::RunOptions opt;
  opt.backend = moba::Backend::cpu;
  opt.num_threads = threads;
  if (threads > 0) openblas_set_num_threads(threads);
  std::printf("# %s; threads %s; OpenBLAS %s\n", moba::build_info().c_str(),
              threads > 0 ? std::to_string(threads).c_str() : "all", openblas_get_config());
  std::printf("| N | dense fwd ms | dense fwd GFLOP/s | dense fwd+bwd ms | dense fwd+bwd GFLOP/s | "
              "MoBA fwd ms | MoBA fwd GFLOP/s | MoBA fwd+bwd ms | MoBA fwd+bwd GFLOP/s | "
              "MoBA speedup fwd | MoBA speedup fwd+bwd | sgemm GFLOP/s | dense fwd / sgemm | load |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  std::fflush(stdout);
  std::mt19937 rng(42);
  for (int N = min_n; N <= max_n; N *= 2) {
    const int r = reps > 0 ? reps : (N <= 4096 ? 5 : N <= 8192 ? 3 : 1);
    const std::size_t elems = std::size_t(N) * H * D;
    auto q = random_bf16(elems, rng), k = random_bf16(elems, rng), v = random_bf16(elems, rng),
         dout = random_bf16(elems, rng);
    std::vector<std::uint16_t> out(elems), dq(elems), dk(elems), dv(elems), out_m(elems);
    std::vector<float> lse(std::size_t(H) * N), lse_m(lse.size());  // _m: MoBA's forward results
    std::vector<int> cu{0, N};
    const int B = N / blocks;
    std::vector<std::int32_t> sel(std::size_t(N) * H * (topk - 1));
    using moba::DType;
    auto view = [&](void* p, DType t, std::initializer_list<std::int64_t> s) {
      return moba::TensorView::contiguous(p, t, moba::Device::cpu(), s);
    };
    const auto tq = view(q.data(), DType::bf16, {N, H, D}), tk = view(k.data(), DType::bf16, {N, H, D}),
               tv = view(v.data(), DType::bf16, {N, H, D}), tdo = view(dout.data(), DType::bf16, {N, H, D});
    const auto tout = view(out.data(), DType::bf16, {N, H, D}), tlse = view(lse.data(), DType::f32, {H, N}),
               tcu = view(cu.data(), DType::i32, {2}), tsel = view(sel.data(), DType::i32, {N, H, topk - 1});
    const auto tdq = view(dq.data(), DType::bf16, {N, H, D}), tdk = view(dk.data(), DType::bf16, {N, H, D}),
               tdv = view(dv.data(), DType::bf16, {N, H, D});

    const auto full = moba::AttentionParams::full(), mb = moba::AttentionParams::moba_blocks(B, topk);
    const auto tout_m = view(out_m.data(), DType::bf16, {N, H, D}), tlse_m = view(lse_m.data(), DType::f32, {H, N});
    auto fwd = [&](const moba::AttentionParams& p, const moba::TensorView& s) {
      const bool m = s.data != nullptr;
      moba::attention_forward(tq, tk, tv, tcu, p, m ? tout_m : tout, m ? tlse_m : tlse, s, opt);
    };
    auto bwd = [&](const moba::AttentionParams& p, const moba::TensorView& s) {
      const bool m = s.data != nullptr;
      moba::attention_backward(tq, tk, tv, m ? tout_m : tout, m ? tlse_m : tlse, tdo, tcu, p, s, tdq, tdk, tdv, opt);
    };
    // sgemm of the dense forward's FLOPs: square, side a multiple of 64.
    const double dense_pairs = double(H) * N * (N + 1.0) / 2, dense_flops = 4.0 * D * dense_pairs;
    const int side = std::max(64, int(std::lround(std::cbrt(dense_flops / 2) / 64)) * 64);
    std::vector<float> a(std::size_t(side) * side), b(a.size()), c(a.size());
    std::normal_distribution<float> nd;
    for (auto& x : a) x = nd(rng);
    for (auto& x : b) x = nd(rng);
    auto sgemm = [&] {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, side, side, side, 1.f, a.data(), side, b.data(), side, 0.f, c.data(), side);
    };
    if (!moba_only) sgemm();  // warm-up (threads, page faults)
    // Dense forward, sgemm and MoBA forward alternate (dense, sgemm, MoBA, dense, ...), best of
    // each, so both ratios (dense / sgemm, dense / MoBA) compare numbers taken under the same
    // machine load; on a shared machine, timing all of one and then all of the other made the
    // ratios depend on when each was sampled.
    const int sr = N <= 8192 ? 3 : 1;
    double dense_fwd = 1e30, gemm = 1e30, moba_fwd = dense_only ? 0 : 1e30;
    for (int i = 0; i < std::max(r, moba_only ? 0 : sr); ++i) {
      if (!moba_only && i < r) dense_fwd = std::min(dense_fwd, best_seconds(1, [&] { fwd(full, {}); }));
      if (!moba_only && i < sr) gemm = std::min(gemm, best_seconds(1, sgemm));
      if (!dense_only && i < r) moba_fwd = std::min(moba_fwd, best_seconds(1, [&] { fwd(mb, tsel); }));
    }
    const double dense_both = fwd_only || moba_only ? 0 : dense_fwd + best_seconds(r, [&] { bwd(full, {}); });
    const double moba_both = dense_only || fwd_only ? 0 : moba_fwd + best_seconds(r, [&] { bwd(mb, tsel); });

    double moba_pairs = 0;
    for (int t = 0; t < N; ++t)
      for (int h = 0; h < H; ++h) {
        moba_pairs += t - (t / B) * B + 1;
        for (int s = 0; s < topk - 1; ++s) moba_pairs += sel[(std::size_t(t) * H + h) * (topk - 1) + s] >= 0 ? B : 0;
      }
    const double moba_flops = 4.0 * D * moba_pairs;
    const double gemm_rate = 2.0 * side * side * double(side) / gemm / 1e9;
    const double dense_rate = dense_flops / dense_fwd / 1e9;
    double load = -1;  // 1-minute load average when the row is printed (shared machine)
    if (FILE* f = std::fopen("/proc/loadavg", "r")) {
      if (std::fscanf(f, "%lf", &load) != 1) load = -1;
      std::fclose(f);
    }
    std::printf("| %d | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.2fx | %.2fx | %.1f | %.0f%% | %.1f |\n", N,
                dense_fwd * 1e3, dense_rate, dense_both * 1e3, 3.5 * dense_flops / dense_both / 1e9,
                moba_fwd * 1e3, moba_flops / moba_fwd / 1e9, moba_both * 1e3, 3.5 * moba_flops / moba_both / 1e9,
                dense_fwd / moba_fwd, dense_both / moba_both, gemm_rate, 100 * dense_rate / gemm_rate, load);
    std::fflush(stdout);
  }
  return 0;
}
