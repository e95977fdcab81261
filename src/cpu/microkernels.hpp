// Register-blocked fp32 micro-kernels. Both keep a 6 x 16 block of the result in 12 vector
// registers (6 rows x 2 vectors of 8 lanes), the classic AVX2 sgemm shape: per step 2 vector
// loads + 6 broadcasts feed 12 FMAs, so the FMA units, not the loads, are the limit.
// Rows are passed as pointer arrays: the MoBA gather (the rows of a query block that chose a
// key block) is then free, with no copying of query or accumulator rows.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <new>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>
#endif

#include "cpu/simd.hpp"

namespace moba::detail::cpu {

constexpr int kPanel = 16;  // keys per packed panel: two vectors
constexpr int kMaxRows = 6;  // rows per register block

// s[r][0..16) = sum_d a_r[d] * panel[d][0..16) for R rows. `panel` is D x 16 keys stored
// d-major (keys transposed), so each d step loads the 16 keys' values as two vectors.
template <int D, int R>
inline void panel_dot(const float* const* a, const float* panel, float* s, std::ptrdiff_t lds) {
  vf acc0[R], acc1[R];
  const float* ar[R];
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) {
    acc0[r] = vzero();
    acc1[r] = vzero();
    ar[r] = a[r];
  }
#pragma GCC unroll 4
  for (int d = 0; d < D; ++d) {
    const vf k0 = vload(panel + d * kPanel), k1 = vload(panel + d * kPanel + kLanes);
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      const vf x = vset1(ar[r][d]);
      acc0[r] = vfma(x, k0, acc0[r]);
      acc1[r] = vfma(x, k1, acc1[r]);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) {
    vstore(s + r * lds, acc0[r]);
    vstore(s + r * lds + kLanes, acc1[r]);
  }
}

// Any number of rows: blocks of 6, then one block of the remainder.
template <int D>
inline void panel_dot_rows(int rows, const float* const* a, const float* panel, float* s,
                           std::ptrdiff_t lds) {
  int r = 0;
  for (; r + kMaxRows <= rows; r += kMaxRows) panel_dot<D, kMaxRows>(a + r, panel, s + r * lds, lds);
  switch (rows - r) {
    case 1: panel_dot<D, 1>(a + r, panel, s + r * lds, lds); break;
    case 2: panel_dot<D, 2>(a + r, panel, s + r * lds, lds); break;
    case 3: panel_dot<D, 3>(a + r, panel, s + r * lds, lds); break;
    case 4: panel_dot<D, 4>(a + r, panel, s + r * lds, lds); break;
    case 5: panel_dot<D, 5>(a + r, panel, s + r * lds, lds); break;
    default: break;
  }
}

// c_i[d0..d0+16) = cscale_i * c_i[..] + sum_{j<n} A(i, j) * B(j, d0..d0+16) for R rows i, where
// A(i, j) = a[i * sai + j * saj]. With sai = row stride this is P.V (or dS.K); with sai = 1 it
// is the transposed product P^T.dO (or dS^T.Q) of the backward. cscale may be null (= 1): the
// online-softmax rescale of the accumulator is folded into the load.
// B(j, d0..d0+16) is at b[j] + (d0 / 16) * bss: bss = 16 for row-major rows (b[j] + d0), or the
// slice stride of a "sliced" layout [D/16][rows][16], where the 16-column slices of consecutive
// rows are consecutive 64-byte lines. Row-major rows 512 bytes apart (D = 128) map to only 8 of
// the 64 L1 sets, so a 64-key slice pass conflicted with itself; sliced, it is one 4 KiB stream.
template <int R>
inline void rows_axpy(int n, const float* a, std::ptrdiff_t sai, std::ptrdiff_t saj,
                      const float* const* b, std::ptrdiff_t bofs, float* const* c, int d0, const float* cscale) {
  vf acc0[R], acc1[R];
#pragma GCC unroll 6
  for (int i = 0; i < R; ++i) {
    acc0[i] = vload(c[i] + d0);
    acc1[i] = vload(c[i] + d0 + kLanes);
    if (cscale) {
      const vf sc = vset1(cscale[i]);
      acc0[i] = acc0[i] * sc;
      acc1[i] = acc1[i] * sc;
    }
  }
#pragma GCC unroll 2
  for (int j = 0; j < n; ++j) {
    const float* bj = b[j] + bofs;
    const vf b0 = vload(bj), b1 = vload(bj + kLanes);
    const float* aj = a + j * saj;
#pragma GCC unroll 6
    for (int i = 0; i < R; ++i) {
      const vf x = vset1(aj[i * sai]);
      acc0[i] = vfma(x, b0, acc0[i]);
      acc1[i] = vfma(x, b1, acc1[i]);
    }
  }
#pragma GCC unroll 6
  for (int i = 0; i < R; ++i) {
    vstore(c[i] + d0, acc0[i]);
    vstore(c[i] + d0 + kLanes, acc1[i]);
  }
}

// All `rows` rows of c and all D columns, blocked 6 rows x 16 columns. Column slices outermost:
// the n rows of b are then read as one 16-column (64-byte) slice each, n * 64 bytes that stay
// in L1 while every 6-row block of c passes over them.
template <int D>
inline void rows_axpy_all(int rows, int n, const float* a, std::ptrdiff_t sai, std::ptrdiff_t saj,
                          const float* const* b, std::ptrdiff_t bss, float* const* c, const float* cscale) {
  for (int d0 = 0; d0 < D; d0 += kPanel) {
    const std::ptrdiff_t bofs = d0 / kPanel * bss;
    for (int r = 0; r < rows; r += kMaxRows) {
      const int m = rows - r < kMaxRows ? rows - r : kMaxRows;
      const float* ar = a + r * sai;
      const float* sc = cscale ? cscale + r : nullptr;
      switch (m) {
        case 6: rows_axpy<6>(n, ar, sai, saj, b, bofs, c + r, d0, sc); break;
        case 5: rows_axpy<5>(n, ar, sai, saj, b, bofs, c + r, d0, sc); break;
        case 4: rows_axpy<4>(n, ar, sai, saj, b, bofs, c + r, d0, sc); break;
        case 3: rows_axpy<3>(n, ar, sai, saj, b, bofs, c + r, d0, sc); break;
        case 2: rows_axpy<2>(n, ar, sai, saj, b, bofs, c + r, d0, sc); break;
        default: rows_axpy<1>(n, ar, sai, saj, b, bofs, c + r, d0, sc); break;
      }
    }
  }
}

// 64-byte aligned fp32 storage: a 16-float slice of an aligned row is one cache line, not two.
template <class T>
struct CacheAligned {
  using value_type = T;
  CacheAligned() = default;
  template <class U>
  CacheAligned(const CacheAligned<U>&) {}
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64))); }
  void deallocate(T* p, std::size_t) { ::operator delete(p, std::align_val_t(64)); }
  bool operator==(const CacheAligned&) const { return true; }
  bool operator!=(const CacheAligned&) const { return false; }
};
template <class T>
using aligned_vector = std::vector<T, CacheAligned<T>>;

// The packed K/V copies of a call (fp32, every head: 128 MiB each for K and V at 32K tokens,
// H = 4, D = 128). Left uninitialised, since the packs write every element (a std::vector
// zero-filled them first: a memset of the whole buffer, on top of the kernel clearing each page
// at its first touch), 2 MiB aligned and, on Linux, marked MADV_HUGEPAGE: 2 MiB pages where
// transparent huge pages are enabled ("madvise" or "always"), so one fault per 2 MiB instead of
// per 4 KiB, and the key tiles MoBA jumps between stay within the TLB's reach.
class PackBuffer {
 public:
  // Below 4 MiB (small problems) plain 64-byte alignment: a huge page would be faulted in and
  // cleared whole, 2 MiB, however little of it the call uses.
  explicit PackBuffer(std::size_t n) : n_(n) {
    constexpr std::size_t kHuge = std::size_t(2) << 20;
    const bool huge = n * sizeof(float) >= 2 * kHuge;
    const std::size_t align = huge ? kHuge : 64;
    const std::size_t bytes = (std::max<std::size_t>(n, 1) * sizeof(float) + align - 1) / align * align;
    p_ = static_cast<float*>(std::aligned_alloc(align, bytes));
    if (!p_) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (huge) madvise(p_, bytes, MADV_HUGEPAGE);  // advice only: failure changes nothing
#endif
  }
  ~PackBuffer() { std::free(p_); }
  PackBuffer(const PackBuffer&) = delete;
  PackBuffer& operator=(const PackBuffer&) = delete;
  float* data() { return p_; }
  const float* data() const { return p_; }
  std::size_t size() const { return n_; }

 private:
  float* p_ = nullptr;
  std::size_t n_ = 0;
};

}  // namespace moba::detail::cpu
