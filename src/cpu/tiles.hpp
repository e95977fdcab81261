// Conversion between the storage dtypes and the fp32 tiles the micro-kernels read. K and V of
// one KV head are converted once per call (not once per query tile), into the layouts the
// kernels want: "panels" (16 keys transposed, [D][16], for the q.k dot products) and "rows"
// (row-major [token][D], for the P.V style products).
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "core/dtype.hpp"
#include "core/problem.hpp"
#include "cpu/microkernels.hpp"

namespace moba::detail::cpu {

// dst[0..D) = mul * x[offset .. offset + D) converted to fp32.
inline void load_row(DType t, const void* base, std::int64_t offset, float* dst, int D, float mul) {
  switch (t) {
    case DType::f32: {
      const float* s = static_cast<const float*>(base) + offset;
      for (int d = 0; d < D; ++d) dst[d] = s[d] * mul;
      break;
    }
    case DType::bf16: {
      const std::uint16_t* s = static_cast<const std::uint16_t*>(base) + offset;
      for (int d = 0; d < D; ++d) dst[d] = bits_to_float(std::uint32_t(s[d]) << 16) * mul;
      break;
    }
    case DType::f16: {
      const std::uint16_t* s = static_cast<const std::uint16_t*>(base) + offset;
      int d = 0;
#ifdef __F16C__
      for (; d + 8 <= D; d += 8)
        _mm256_storeu_ps(dst + d, _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128(
                                                    reinterpret_cast<const __m128i*>(s + d))),
                                                _mm256_set1_ps(mul)));
#endif
      for (; d < D; ++d) dst[d] = f16_to_float(s[d]) * mul;
      break;
    }
    default: break;
  }
}

// x[offset .. offset + D) = src * mul rounded to dtype (round-to-nearest-even, once).
inline void store_row(DType t, void* base, std::int64_t offset, const float* src, int D, float mul) {
  for (int d = 0; d < D; ++d) store_from_float(base, offset + d, t, src[d] * mul);
}

inline std::int64_t elem(const Operand& x, std::int64_t token, int head) {
  return token * x.token_stride + head * x.head_stride;
}

// Where each sequence's keys sit in the packed panel buffer (padded to whole panels).
struct PanelLayout {
  std::vector<std::int64_t> seq_panel;  // batch + 1: first panel of each sequence
  std::vector<int> panel_seq;           // the sequence of each panel
  explicit PanelLayout(const Problem& p) {
    seq_panel.assign(p.batch + 1, 0);
    for (int b = 0; b < p.batch; ++b) {
      const int len = p.cu_seqlens[b + 1] - p.cu_seqlens[b];
      seq_panel[b + 1] = seq_panel[b] + (len + kPanel - 1) / kPanel;
      panel_seq.insert(panel_seq.end(), seq_panel[b + 1] - seq_panel[b], b);
    }
  }
  std::int64_t panels() const { return seq_panel.back(); }
};

// K or V of KV head `head`, every sequence, as [panel][D][16] at `out`; keys past a sequence's
// end are 0. Called by every thread of an enclosing parallel region (an orphaned `omp for`,
// no barrier: the caller puts one before the packs are read). Fewer barriers matter: on a
// loaded machine each one waits for a descheduled thread.
// The 16 keys are converted into 16 fp32 rows, then transposed in 8 x 8 blocks (AVX2; a scalar
// loop elsewhere): the scalar transpose was ~7% of a 32K MoBA forward.
inline void transpose_to_panel(const float* rows, int D, float* panel) {
#ifdef MOBA_CPU_AVX2
  for (int d0 = 0; d0 < D; d0 += 8)
    for (int k0 = 0; k0 < kPanel; k0 += 8) {
      __m256 r[8], t[8];
      for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(rows + (k0 + i) * D + d0);
      for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
      }
      for (int i = 0; i < 8; i += 4) {
        r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
      }
      // r[0..3]: columns d0+0..3 of keys k0..k0+3 (low half) and d0+4..7 (high half); r[4..7]: keys k0+4..7.
      for (int i = 0; i < 4; ++i) {
        _mm256_storeu_ps(panel + (d0 + i) * kPanel + k0, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
        _mm256_storeu_ps(panel + (d0 + i + 4) * kPanel + k0, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
      }
    }
#else
  for (int d = 0; d < D; ++d)
    for (int kk = 0; kk < kPanel; ++kk) panel[d * kPanel + kk] = rows[kk * D + d];
#endif
}

inline void pack_panels(const Problem& p, const PanelLayout& lay, const Operand& x, int head, float* out) {
  const int D = p.head_dim;
  std::vector<float> rows(std::size_t(kPanel) * D);
#pragma omp for schedule(static) nowait
  for (std::int64_t pi = 0; pi < lay.panels(); ++pi) {
    const int b = lay.panel_seq[pi];
    const int begin = p.cu_seqlens[b], len = p.cu_seqlens[b + 1] - begin;
    const int k0 = int(pi - lay.seq_panel[b]) * kPanel;
    for (int kk = 0; kk < kPanel; ++kk) {
      float* row = rows.data() + std::size_t(kk) * D;
      if (k0 + kk < len) load_row(p.dtype, x.data, elem(x, begin + k0 + kk, head), row, D, 1.f);
      else std::fill(row, row + D, 0.f);
    }
    transpose_to_panel(rows.data(), D, out + pi * D * kPanel);
  }
}

// K or V of KV head `head` "sliced", [D/16][total][16] fp32 at `out`: token t's columns
// d0..d0+16 at out + d0 * total + t * 16 (see rows_axpy). Orphaned `omp for`, nowait.
inline std::ptrdiff_t slice_stride(const Problem& p) { return std::ptrdiff_t(p.total) * kPanel; }
inline void pack_slices(const Problem& p, const Operand& x, int head, float* out) {
  const int D = p.head_dim;
  const std::ptrdiff_t ss = slice_stride(p);
  std::vector<float> row(D);
#pragma omp for schedule(static) nowait
  for (int t = 0; t < p.total; ++t) {
    load_row(p.dtype, x.data, elem(x, t, head), row.data(), D, 1.f);
    for (int d0 = 0; d0 < D; d0 += kPanel)
      std::copy(row.begin() + d0, row.begin() + d0 + kPanel, out + d0 / kPanel * ss + std::ptrdiff_t(t) * kPanel);
  }
}

// Threads for a call: RunOptions::num_threads (0 = all), but no more than the work can feed.
// Each parallel region ends in a barrier; on a tiny problem (or a loaded machine, where a
// barrier waits for a descheduled thread) those cost more than the work, so we give every
// thread at least ~8 MFLOP of attention (about a millisecond).
inline int thread_count(const Problem& p, const RunOptions& o) {
  const int most = o.num_threads > 0 ? o.num_threads : omp_get_max_threads();
  double pairs = 0;  // (query, key) pairs, an upper bound per mode
  for (int b = 0; b < p.batch; ++b) {
    const double len = p.cu_seqlens[b + 1] - p.cu_seqlens[b];
    double keys = (len + 1) / 2;
    if (p.mode == Mode::moba) keys = std::min(keys, double(p.topk) * p.block_size);
    pairs += len * keys;
  }
  const double flops = pairs * p.hq * 4.0 * p.head_dim;
  const int fed = static_cast<int>(flops / 8e6) + 1;
  return std::max(1, std::min(most, fed));
}

}  // namespace moba::detail::cpu
