// wgmma (sm_90a) for the warp-specialised forward and the sm_90a backward key pass, through
// CuTe's GMMA atoms (CUTLASS 4.2, cute/arch/mma_sm90_gmma.hpp): m64nNk16, fp32 accumulate, for
// N = 64 and 128, bf16 / f16. d[] is the accumulator fragment, N/2 floats per thread:
// d[4j..4j+1] = row g, columns 8j + 2c..+1; d[4j+2..4j+3] = row g + 8 (g = lane / 4,
// c = lane % 4, rows offset by 16 x warp-in-group). `accumulate` 0 overwrites d (D = A B, CuTe's
// ScaleOut::Zero), 1 adds (D += A B). Above them, the swizzled tile layout, descriptors
// (cute::GmmaDescriptor) and fences (cute::warpgroup_*) they need.
// Shared-memory tiles use the 128-byte swizzle that wgmma reads natively: a tile of R rows x D
// columns (b16) is stored as D/64 column blocks of R rows x 128 bytes; the 16-byte piece c of
// row r sits at piece position c ^ (r & 7) (CuTe's Swizzle<3,4,3> on byte offsets, the
// GMMA::Layout_K_SW128_Atom). Q and K are K-major operands (S = Q K^T); V is the MN-major B
// operand of O += P V (P from registers, the S accumulator re-packed to b16).
// The kernels call these wrappers (fixed names and signatures) rather than CuTe directly: they
// address tiles by shared-memory byte address, as their producers write them.
#pragma once

#include <cstdint>
#include <utility>

#include <cute/arch/mma_sm90_desc.hpp>
#include <cute/arch/mma_sm90_gmma.hpp>
#include <cutlass/arch/barrier.h>

namespace moba::cuda::hopper {

namespace gmma = cute::SM90::GMMA;

// Byte offset of 16-byte piece cc (of D/8) in row r of a swizzled tile with `rows` rows.
__device__ __forceinline__ int swz(int r, int cc, int rows) {
  return (cc >> 3) * rows * 128 + r * 128 + (((cc & 7) ^ (r & 7)) << 4);
}

// wgmma shared-memory descriptor (cute::GmmaDescriptor's fields), 128-byte swizzle, base
// offset 0 (tiles start on 1024-byte boundaries). lbo/sbo in bytes; the fields hold them (and
// the address) in 16-byte units. Written with shifts into desc_: filling CuTe's 14-bit
// bitfield members instead compiles to the same work in another order (the SASS would differ).
__device__ __forceinline__ std::uint64_t make_desc(std::uint32_t addr, std::uint32_t lbo,
                                                   std::uint32_t sbo) {
  cute::GmmaDescriptor d;
  d.desc_ = std::uint64_t((addr & 0x3FFFF) >> 4)                  // start_address_, bits [0,14)
            | std::uint64_t((lbo >> 4) & 0x3FFF) << 16            // leading_byte_offset_, [16,30)
            | std::uint64_t((sbo >> 4) & 0x3FFF) << 32            // stride_byte_offset_, [32,46)
            | std::uint64_t(gmma::LayoutType::B128) << 62;        // layout_type_, [62,64)
  return d;
}

// A compiler-only fence: CUTLASS's fence/arrive/commit helpers carry no "memory" clobber, so
// the wrappers that relied on one (ordering plain shared-memory accesses around them) add it.
__device__ __forceinline__ void compiler_fence() { asm volatile("" ::: "memory"); }

__device__ __forceinline__ void wg_fence() { cute::warpgroup_arrive(); }
__device__ __forceinline__ void wg_commit() { cute::warpgroup_commit_batch(); }
template <int N>
__device__ __forceinline__ void wg_wait() {
  cute::warpgroup_wait<N>();
}
// This thread's generic-proxy shared-memory writes, made visible to the async proxy (wgmma, TMA).
__device__ __forceinline__ void fence_proxy_async() {
  compiler_fence();
  cutlass::arch::fence_view_async_shared();
  compiler_fence();
}
// Keeps the compiler from moving accesses of an accumulator across the async MMA window.
template <int N>
__device__ __forceinline__ void reg_fence(float* r) {
#pragma unroll
  for (int i = 0; i < N; ++i) cute::warpgroup_fence_operand(r[i]);
}

template <int N>
__device__ __forceinline__ void reg_fence_u(std::uint32_t* r) {
#pragma unroll
  for (int i = 0; i < N; ++i) cute::warpgroup_fence_operand(r[i]);
}

namespace detail {

// CuTe's atom for (dtype, N): SS reads A and B from shared memory, both K-major; RS reads A from
// registers (K-major, the only form wgmma has) and B from shared memory, MN-major (transposed).
template <bool kBf16, int N>
struct Gmma;
template <>
struct Gmma<true, 64> {
  using SS = gmma::MMA_64x64x16_F32BF16BF16_SS<gmma::Major::K, gmma::Major::K>;
  using RS = gmma::MMA_64x64x16_F32BF16BF16_RS<gmma::Major::K, gmma::Major::MN>;
};
template <>
struct Gmma<true, 128> {
  using SS = gmma::MMA_64x128x16_F32BF16BF16_SS<gmma::Major::K, gmma::Major::K>;
  using RS = gmma::MMA_64x128x16_F32BF16BF16_RS<gmma::Major::K, gmma::Major::MN>;
};
template <>
struct Gmma<false, 64> {
  using SS = gmma::MMA_64x64x16_F32F16F16_SS<gmma::Major::K, gmma::Major::K>;
  using RS = gmma::MMA_64x64x16_F32F16F16_RS<gmma::Major::K, gmma::Major::MN>;
};
template <>
struct Gmma<false, 128> {
  using SS = gmma::MMA_64x128x16_F32F16F16_SS<gmma::Major::K, gmma::Major::K>;
  using RS = gmma::MMA_64x128x16_F32F16F16_RS<gmma::Major::K, gmma::Major::MN>;
};

// The atoms take the accumulator as N/2 separate float references.
template <class Op, std::size_t... I>
__device__ __forceinline__ void ss(float* d, std::uint64_t da, std::uint64_t db, gmma::ScaleOut scale,
                                   std::index_sequence<I...>) {
  Op::fma(da, db, d[I]..., scale);
}
template <class Op, std::size_t... I>
__device__ __forceinline__ void rs(float* d, const std::uint32_t* a, std::uint64_t db, gmma::ScaleOut scale,
                                   std::index_sequence<I...>) {
  Op::fma(a[0], a[1], a[2], a[3], db, d[I]..., scale);
}

}  // namespace detail

// SS: A and B from shared memory (descriptors), both K-major.
template <bool kBf16, int N>
__device__ __forceinline__ void wgmma_ss(float* d, std::uint64_t da, std::uint64_t db, int accumulate) {
  detail::ss<typename detail::Gmma<kBf16, N>::SS>(d, da, db, static_cast<gmma::ScaleOut>(accumulate),
                                                  std::make_index_sequence<N / 2>{});
}
// SS, D = A B (scale-D zero): a first k-step; the earlier contents of d are not read. CuTe's
// atoms declare the accumulator read-write ("+f") even with ScaleOut::Zero, which would keep
// d's earlier values alive into the wgmma and changes the kernels' register allocation and
// SASS; the empty asm first declares d written (no instruction), as a write-only operand would.
template <bool kBf16, int N>
__device__ __forceinline__ void wgmma_ss_zero(float* d, std::uint64_t da, std::uint64_t db) {
#pragma unroll
  for (int i = 0; i < N / 2; ++i) asm volatile("" : "=f"(d[i]));
  detail::ss<typename detail::Gmma<kBf16, N>::SS>(d, da, db, gmma::ScaleOut::Zero,
                                                  std::make_index_sequence<N / 2>{});
}
// RS: A from registers (four b16x2 per thread), B from shared memory, B transposed (MN-major).
template <bool kBf16, int N>
__device__ __forceinline__ void wgmma_rs(float* d, const std::uint32_t* a, std::uint64_t db, int accumulate) {
  detail::rs<typename detail::Gmma<kBf16, N>::RS>(d, a, db, static_cast<gmma::ScaleOut>(accumulate),
                                                  std::make_index_sequence<N / 2>{});
}

}  // namespace moba::cuda::hopper
