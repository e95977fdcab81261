// What the CUDA benchmarks share: CK(call) stops the benchmark with the failing call, its error
// and where it is; median_event_ms times a call; fill_normal (CUDA sources only) draws standard normal inputs on the GPU from
// a counter-based hash, so every run and every benchmark sees the same values for a seed.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CK(x)                                                                                  \
  do {                                                                                         \
    cudaError_t e_ = (x);                                                                      \
    if (e_ != cudaSuccess) {                                                                   \
      std::fprintf(stderr, "%s failed: %s (%s:%d)\n", #x, cudaGetErrorString(e_), __FILE__,    \
                   __LINE__);                                                                  \
      std::exit(1);                                                                            \
    }                                                                                          \
  } while (0)

// The median of `reps` calls of f, each timed by CUDA events on the default stream, after one
// untimed warm-up call; in ms.
template <class F>
double median_event_ms(F&& f, int reps, cudaEvent_t e0, cudaEvent_t e1) {
  f();
  CK(cudaDeviceSynchronize());
  std::vector<float> ts;
  for (int i = 0; i < reps; ++i) {
    CK(cudaEventRecord(e0));
    f();
    CK(cudaEventRecord(e1));
    CK(cudaEventSynchronize(e1));
    float ms;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    ts.push_back(ms);
  }
  std::sort(ts.begin(), ts.end());
  return ts[ts.size() / 2];
}

#if defined(__CUDACC__)
template <class T>
__global__ void fill_normal(T* x, long long n, unsigned seed) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)gridDim.x * blockDim.x) {
    unsigned long long z = (unsigned long long)i * 0x9E3779B97F4A7C15ull + seed * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    const float u1 = ((z & 0xffffffu) + 1) / 16777217.f, u2 = ((z >> 24) & 0xffffffu) / 16777216.f;
    x[i] = T(sqrtf(-2.f * logf(u1)) * cospif(2.f * u2));
  }
}
#endif
