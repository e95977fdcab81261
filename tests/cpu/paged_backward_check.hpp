// Shared by the paged-backward tests of every backend (tests/cpu/test_cpu_paged_backward.cpp,
// tests/cuda/test_cuda_paged_backward.cpp): K/V of a shape scattered over shuffled pages, page
// gradients back in the packed layout, and the l2 norms of the tolerances.
#pragma once

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "paged_check.hpp"  // the verification library (test_support.hpp)

namespace moba::testing {

constexpr double kFloorBackward = 3e-5;

inline double l2(const std::vector<double>& a) {
  double s = 0;
  for (double x : a) s += x * x;
  return std::sqrt(s);
}
inline double l2_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += std::isnan(a[i] - b[i]) ? INFINITY : (a[i] - b[i]) * (a[i] - b[i]);
  return std::sqrt(s);
}

// K/V of a packed batch scattered over pages: page of (sequence b, KV head g, page i) is
// ids[(b * hkv + g) * pages_per_seq + i], a shuffled permutation (plus unused pages).
struct Paged {
  int page_size = 16, pages_per_seq = 1, num_pages = 0, rows = 1;  // rows: cache rows (>= 1)
  HostTensor k, v;
  std::vector<std::int32_t> table, lens;
  PagedKV view;  // host views of k, v, table, lens (so a Paged is not copied)

  Paged(const Paged&) = delete;
  Paged& operator=(const Paged&) = delete;

  Paged(const Shape& s, const Inputs& in, int page, std::mt19937& rng) : page_size(page) {
    const int batch = static_cast<int>(s.seqlens.size()), D = s.d;
    const int longest = std::max(1, *std::max_element(s.seqlens.begin(), s.seqlens.end()));
    pages_per_seq = (longest + page - 1) / page;
    rows = std::max(batch, 1);
    num_pages = batch * s.hkv * pages_per_seq + 3;  // a few pages nobody uses
    std::vector<std::int32_t> ids(num_pages);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng);
    k = HostTensor(s.dtype, {num_pages, page, D});
    v = HostTensor(s.dtype, {num_pages, page, D});
    k.fill(0.0);
    v.fill(0.0);
    table.assign(std::size_t(rows) * s.hkv * pages_per_seq, -1);
    lens.assign(rows, 0);
    for (int b = 0; b < batch; ++b) {
      lens[b] = s.seqlens[b];
      for (int g = 0; g < s.hkv; ++g)
        for (int i = 0; i < pages_per_seq; ++i) {
          const std::size_t e = (std::size_t(b) * s.hkv + g) * pages_per_seq + i;
          if (i * page < s.seqlens[b]) table[e] = ids[e];
        }
      for (int t = 0; t < s.seqlens[b]; ++t)
        for (int g = 0; g < s.hkv; ++g) {
          const std::int64_t page_id = table[(std::size_t(b) * s.hkv + g) * pages_per_seq + t / page];
          for (int d = 0; d < D; ++d) {
            const std::int64_t src = (std::int64_t(in.cu[b] + t) * s.hkv + g) * D + d;
            const std::int64_t dst = (page_id * page + t % page) * D + d;
            k.set(dst, in.k.get(src));
            v.set(dst, in.v.get(src));
          }
        }
    }
    view.k_pages = k.view();
    view.v_pages = v.view();
    view.page_table = TensorView::contiguous(table.data(), DType::i32, Device::cpu(),
                                             {rows, s.hkv, pages_per_seq});
    view.seq_lens = TensorView::contiguous(lens.data(), DType::i32, Device::cpu(), {rows});
  }

  // Page gradients back in the packed [total, hkv, D] layout.
  std::vector<double> unpage(const Shape& s, const Inputs& in, const HostTensor& pages) const {
    std::vector<double> x(std::size_t(s.total()) * s.hkv * s.d, 0.0);
    for (std::size_t b = 0; b < s.seqlens.size(); ++b)
      for (int t = 0; t < s.seqlens[b]; ++t)
        for (int g = 0; g < s.hkv; ++g) {
          const std::int64_t page_id = table[(b * s.hkv + g) * pages_per_seq + t / page_size];
          for (int d = 0; d < s.d; ++d)
            x[(std::size_t(in.cu[b] + t) * s.hkv + g) * s.d + d] =
                pages.get((page_id * page_size + t % page_size) * s.d + d);
        }
    return x;
  }
};

}  // namespace moba::testing
