// CUDA backward: dQ, dK, dV of full causal, MoBA and MoA attention from dout and the forward's
// out, lse and selection (the gate is never recomputed). MoA runs the causal machinery with
// the window + sink rule as the mask (bwd_plan.hpp says which rows and keys each item visits).
//
// Steps, all on the caller's stream:
//  1. D_t = <dout_t, out_t> (fp32, [hq, total]).
//  2. MoBA: per-(past block, KV head, selection slot) lists of the rows (t * hq + h) that chose
//     the block: one entry per selection slot, keyed and stably radix-sorted (CUB), so the
//     order inside a list is fixed (token, then head) and runs are bit-identical. The list
//     offsets come back to the host (one small copy + stream sync) to plan the work.
//  3. Query-major dQ pass (dq_pass.cuh) over the causal rows: one CTA per 64-token tile and
//     head recomputes S and dP over the keys of its own block (full mode: all earlier keys) and
//     keeps dQ in registers. No atomics; it stores dQ (to the output when nothing is listed).
//  4. Key-major pass (key_pass.cuh): one CTA per 128-key tile (64 when MoBA blocks are not a
//     multiple of 128) and KV head holds dK, dV in
//     registers over every row tile that sees the tile: the causal rows of its own block (full
//     mode: every later row) and the listed rows of its block. CTAs are launched longest
//     first; a key tile with many more row tiles than the average is split over several CTAs
//     whose fp32 partials a small kernel sums in a fixed order.
//     Default mode: the listed rows' dQ is added there by fp32 atomics into a [total, hq, D]
//     scratch (after step 3 stored the causal part), then scaled and rounded to the output.
//     Deterministic mode: no float atomics anywhere. The key pass skips dQ; the dQ pass runs
//     once more per selection slot over the listed rows, each launch touching every row at
//     most once, so dQ is summed in a fixed order.
// Workspace: D (4 B per row and head), the lists (4 B per selection entry, plus sort buffers
// freed before the main passes), the fp32 dQ scratch (not needed in full mode or when no
// past block is selected)
// and, for split key tiles, 2 * (64 or 128) * D floats per extra CTA.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <cub/device/device_radix_sort.cuh>
#include <cstdint>
#include <vector>

#include "core/backends.hpp"
#include "core/validate.hpp"
#include "cuda/backward/bwd_plan.hpp"
#include "cuda/backward/bwd_stats.hpp"
#include "cuda/backward/sm90_key_pass.hpp"
#include "cuda/common/check.hpp"
#include "cuda/common/dtype.cuh"
#include "cuda/common/workspace.hpp"

namespace moba::detail {
namespace bwd {
namespace {

thread_local BackwardStats g_stats;

// D_t = <dout_t, out_t>, one warp per (token, head).
template <class T>
__global__ void dt_kernel(const T* out, std::int64_t o_ts, std::int64_t o_hs, const T* dout,
                          std::int64_t d_ts, std::int64_t d_hs, int total, int hq, int D,
                          float* dt) {
  const std::int64_t row = std::int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (row >= std::int64_t(total) * hq) return;
  const int t = static_cast<int>(row / hq), h = static_cast<int>(row % hq);
  const T* o = out + t * o_ts + h * o_hs;
  const T* d = dout + t * d_ts + h * d_hs;
  float acc = 0.f;
  for (int i = lane * 2; i < D; i += 64) {
    const float2 a = cuda::Dt<T>::unpack(*reinterpret_cast<const std::uint32_t*>(o + i));
    const float2 b = cuda::Dt<T>::unpack(*reinterpret_cast<const std::uint32_t*>(d + i));
    acc += a.x * b.x + a.y * b.y;
  }
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, m);
  if (lane == 0) dt[std::int64_t(h) * total + t] = acc;
}

// One entry per selection slot: key (past block, KV head, slot) or `nkeys` when unused.
__global__ void entries_kernel(const std::int32_t* sel, int total, int hq, int group, int hkv,
                               int P, int B, const int* cu, int batch, const int* blk_base,
                               unsigned nkeys, unsigned* keys, int* vals) {
  const std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= std::int64_t(total) * hq * P) return;
  const int s = static_cast<int>(i % P);
  const std::int64_t row = i / P;
  const int t = static_cast<int>(row / hq), h = static_cast<int>(row % hq);
  int lo = 0, hi = batch;  // cu[lo] <= t < cu[hi]
  while (hi - lo > 1) {
    const int mid = (lo + hi) >> 1;
    if (cu[mid] <= t) lo = mid;
    else hi = mid;
  }
  const int own = (t - cu[lo]) / B;
  const int j = sel[i];
  unsigned key = nkeys;
  if (j >= 0 && j < own) key = (unsigned(blk_base[lo] + j) * hkv + h / group) * P + s;
  keys[i] = key;
  vals[i] = static_cast<int>(row);
}

// off[k] = first position of key k in the sorted keys (k = 0 .. nkeys).
__global__ void offsets_kernel(const unsigned* keys, int n, unsigned nkeys, int* off) {
  const unsigned k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k > nkeys) return;
  int lo = 0, hi = n;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (keys[mid] < k) lo = mid + 1;
    else hi = mid;
  }
  off[k] = lo;
}

struct SplitTile {
  int key_start, key_len, g, slot_begin, n_slots;
};

// Sums the fp32 partials of split key tiles in slot order and writes dK, dV.
template <class T>
__global__ void reduce_partials_kernel(const SplitTile* tiles, const float* partial, int KT, int D, T* dk,
                                       std::int64_t dk_ts, std::int64_t dk_hs, T* dv,
                                       std::int64_t dv_ts, std::int64_t dv_hs) {
  const SplitTile st = tiles[blockIdx.x];
  for (int e = threadIdx.x; e < KT * D; e += blockDim.x) {
    const int key = e / D, d = e % D;
    if (key >= st.key_len) continue;
    float sk = 0.f, sv = 0.f;
    for (int s = 0; s < st.n_slots; ++s) {
      const float* base = partial + std::int64_t(st.slot_begin + s) * 2 * KT * D;
      sk += base[e];
      sv += base[KT * D + e];
    }
    const std::int64_t tok = st.key_start + key;
    dk[tok * dk_ts + st.g * dk_hs + d] = cuda::Dt<T>::from_float(sk);
    dv[tok * dv_ts + st.g * dv_hs + d] = cuda::Dt<T>::from_float(sv);
  }
}

// dq = scale * acc, rounded to the dtype.
template <class T>
__global__ void convert_dq_kernel(const float* acc, int total, int hq, int D, float scale, T* dq,
                                  std::int64_t ts, std::int64_t hs) {
  const std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int half = D / 2;
  if (i >= std::int64_t(total) * hq * half) return;
  const std::int64_t row = i / half;
  const int d = static_cast<int>(i % half) * 2;
  const int t = static_cast<int>(row / hq), h = static_cast<int>(row % hq);
  const float2 v = *reinterpret_cast<const float2*>(acc + row * D + d);
  *reinterpret_cast<std::uint32_t*>(dq + t * ts + h * hs + d) = cuda::Dt<T>::pack(v.x * scale, v.y * scale);
}

int ceil_div(long long a, long long b) { return static_cast<int>((a + b - 1) / b); }

// Tracks the scratch bytes held at once.
struct Meter {
  std::size_t now = 0, peak = 0;
  void add(std::size_t b) { peak = std::max(peak, now += b); }
  void sub(std::size_t b) { now -= b; }
};

void key_pass(bool bf16, int D, const KeyPassArgs& a, int n, cudaStream_t s) {
  if (bf16) D == 64 ? launch_key_pass<true, 64>(a, n, s) : launch_key_pass<true, 128>(a, n, s);
  else D == 64 ? launch_key_pass<false, 64>(a, n, s) : launch_key_pass<false, 128>(a, n, s);
  MOBA_CUDA_LAUNCH_CHECK();
}
// Which key pass runs (CudaOptions::backward_kernel): the sm_90a wgmma kernel only when asked
// for (it throws where it cannot run); `automatic` stays on mma.sync for now.
bool use_sm90_key_pass(bool bf16, int D, const CudaOptions& o) {
  if (o.backward_kernel != CudaOptions::BackwardKernel::sm90_wgmma) return false;
  const bool ok = bf16 ? (D == 64 ? sm90_key_pass_available<true, 64>() : sm90_key_pass_available<true, 128>())
                       : (D == 64 ? sm90_key_pass_available<false, 64>() : sm90_key_pass_available<false, 128>());
  if (!ok)
    fail(ErrorKind::unsupported,
         "cuda backend: CudaOptions::backward_kernel = sm90_wgmma needs a compute capability 9.0 "
         "device and a build with sm_90a code (MOBA_CUDA_GENCODE); use automatic or sm80_mma_sync");
  return true;
}
void key_pass_sm90(bool bf16, int D, const KeyPassArgs& a, int n, cudaStream_t s) {
  if (bf16) D == 64 ? launch_sm90_key_pass<true, 64>(a, n, s) : launch_sm90_key_pass<true, 128>(a, n, s);
  else D == 64 ? launch_sm90_key_pass<false, 64>(a, n, s) : launch_sm90_key_pass<false, 128>(a, n, s);
  MOBA_CUDA_LAUNCH_CHECK();
}
void dq_pass(bool bf16, int D, const DqPassArgs& a, int n, cudaStream_t s) {
  if (bf16) D == 64 ? launch_dq_pass<true, 64>(a, n, s) : launch_dq_pass<true, 128>(a, n, s);
  else D == 64 ? launch_dq_pass<false, 64>(a, n, s) : launch_dq_pass<false, 128>(a, n, s);
  MOBA_CUDA_LAUNCH_CHECK();
}

bool aligned_operand(const Operand& x) {
  return reinterpret_cast<std::uintptr_t>(x.data) % 16 == 0 && x.token_stride % 8 == 0 &&
         x.head_stride % 8 == 0;
}

struct DeviceGuard {
  int prev = -1;
  explicit DeviceGuard(int dev) {
    MOBA_CUDA_CHECK(cudaGetDevice(&prev));
    if (prev != dev) MOBA_CUDA_CHECK(cudaSetDevice(dev));
    else prev = -1;
  }
  ~DeviceGuard() {
    if (prev >= 0) (void)cudaSetDevice(prev);
  }
};

template <class T>
void run_backward(const Problem& p, const Backward& w, const RunOptions& o) {
  const cudaStream_t stream = cuda::stream_of(o);
  const bool det = o.deterministic;
  const bool bf16 = p.dtype == DType::bf16;
  const int D = p.head_dim, hq = p.hq, hkv = p.hkv, G = p.group(), total = p.total;
  const bool moba = p.mode == Mode::moba;
  const int B = moba ? p.block_size : 64;
  const int P = moba ? p.past_k() : 0;
  const bool moa = p.mode == Mode::moa;
  const bool any_block = moba && B % 64 != 0;  // MoBA blocks that 64-key tiles do not align with
  const int vis = moa ? kVisMoa : (any_block ? kVisBlocks : kVisCausal);
  std::vector<int> win;  // MoA: window of (head h, sequence b) at [h * batch + b]
  if (moa) {
    win.resize(std::size_t(hq) * p.batch);
    for (int h = 0; h < hq; ++h)
      for (int b = 0; b < p.batch; ++b)
        win[std::size_t(h) * p.batch + b] = p.moa_window(h, p.cu_seqlens[b + 1] - p.cu_seqlens[b]);
  }
  // MoA: the rows that see a key tile [kp0, kp0 + n) of sequence b, KV head g, end before
  // position kp0 + n - 1 + (widest window of the group), or at the end when the tile starts in
  // the sink (sink keys are seen by every later row).
  auto moa_rows_end = [&](int b, int g, int kp0, int n, int len) {
    if (kp0 < p.moa_sink) return len;
    int wmax = 1;
    for (int h = g * G; h < (g + 1) * G; ++h) wmax = std::max(wmax, win[std::size_t(h) * p.batch + b]);
    return static_cast<int>(std::min<long long>(len, static_cast<long long>(kp0) + n - 1 + wmax));
  };
  BackwardStats stats;
  Meter mem;
  // Measurement variants (CudaOptions): every dQ by atomics in the key pass; per-stage times.
  const bool all_atomic = !det && o.cuda.backward_dq_all_atomic;
  const bool timing = o.cuda.collect_timing;
  const bool sm90 = use_sm90_key_pass(bf16, D, o.cuda);
  auto last_mark = std::chrono::steady_clock::now();
  auto mark = [&](const char* what) {
    if (!timing) return;
    MOBA_CUDA_CHECK(cudaStreamSynchronize(stream));
    const auto now = std::chrono::steady_clock::now();
    stats.stage_ms.push_back({what, std::chrono::duration<double, std::milli>(now - last_mark).count()});
    last_mark = now;
  };
  if (timing) {  // the stages below are timed from here, after the work queued before the call
    MOBA_CUDA_CHECK(cudaStreamSynchronize(stream));
    last_mark = std::chrono::steady_clock::now();
  }

  int dev = 0, nsm = 132;
  MOBA_CUDA_CHECK(cudaGetDevice(&dev));
  MOBA_CUDA_CHECK(cudaDeviceGetAttribute(&nsm, cudaDevAttrMultiProcessorCount, dev));

  // MoBA blocks of each sequence, numbered globally.
  std::vector<int> blk_base(p.batch + 1, 0);
  for (int b = 0; b < p.batch; ++b)
    blk_base[b + 1] = blk_base[b] + ceil_div(p.cu_seqlens[b + 1] - p.cu_seqlens[b], B);
  const long long nblk = blk_base[p.batch];

  cuda::Workspace ws(stream);
  float* dt = ws.alloc<float>(std::size_t(total) * hq, "D = rowsum(dout * out)");
  mem.add(std::size_t(total) * hq * 4);
  {
    const std::int64_t rows = std::int64_t(total) * hq;
    dt_kernel<T><<<ceil_div(rows, 8), 256, 0, stream>>>(
        static_cast<const T*>(w.out.data), w.out.token_stride, w.out.head_stride,
        static_cast<const T*>(w.dout.data), w.dout.token_stride, w.dout.head_stride, total, hq, D, dt);
    MOBA_CUDA_LAUNCH_CHECK();
  }
  mark("D");

  // Per-block row lists (MoBA with past blocks).
  int* list = nullptr;
  std::vector<int> off;  // [nkeys + 1]
  if (P > 0) {
    const long long E = static_cast<long long>(total) * hq * P;
    const long long nkeys = nblk * hkv * P;
    if (E >= (1ll << 31) || nkeys >= (1ll << 31) || static_cast<long long>(total) * hq >= (1ll << 31))
      fail(ErrorKind::unsupported, "cuda backend: backward supports at most 2^31 selection entries (total * hq * (topk - 1)), got " + std::to_string(E));
    list = ws.alloc<int>(E, "per-block row lists");
    mem.add(E * 4);
    cuda::Workspace tmp(stream);
    int* cu_d = tmp.upload(p.cu_seqlens, "cu_seqlens");
    int* base_d = tmp.upload(blk_base, "block offsets");
    unsigned* keys_in = tmp.alloc<unsigned>(E, "list sort keys");
    unsigned* keys_out = tmp.alloc<unsigned>(E, "list sort keys");
    int* vals_in = tmp.alloc<int>(E, "list sort values");
    int* off_d = tmp.alloc<int>(nkeys + 1, "list offsets");
    std::size_t tmp_bytes = 0;
    int end_bit = 1;
    while ((1ull << end_bit) <= static_cast<unsigned long long>(nkeys)) ++end_bit;
    MOBA_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, tmp_bytes, keys_in, keys_out, vals_in, list,
                                                    static_cast<int>(E), 0, end_bit, stream));
    void* sort_tmp = tmp.alloc_bytes(tmp_bytes, "list sort");
    mem.add(E * 12 + tmp_bytes + (nkeys + 1) * 4 + (p.batch + 1) * 8);
    entries_kernel<<<ceil_div(E, 256), 256, 0, stream>>>(w.selection, total, hq, G, hkv, P, B, cu_d, p.batch,
                                                         base_d, static_cast<unsigned>(nkeys), keys_in, vals_in);
    MOBA_CUDA_LAUNCH_CHECK();
    MOBA_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(sort_tmp, tmp_bytes, keys_in, keys_out, vals_in, list,
                                                    static_cast<int>(E), 0, end_bit, stream));
    offsets_kernel<<<ceil_div(nkeys + 1, 256), 256, 0, stream>>>(keys_out, static_cast<int>(E),
                                                                static_cast<unsigned>(nkeys), off_d);
    MOBA_CUDA_LAUNCH_CHECK();
    off.resize(nkeys + 1);
    MOBA_CUDA_CHECK(cudaMemcpyAsync(off.data(), off_d, (nkeys + 1) * sizeof(int), cudaMemcpyDeviceToHost, stream));
    MOBA_CUDA_CHECK(cudaStreamSynchronize(stream));
    mem.sub(E * 12 + tmp_bytes + (nkeys + 1) * 4 + (p.batch + 1) * 8);
    stats.list_entries = off[nkeys];
  }
  const bool has_lists = P > 0 && off.back() > 0;
  mark("lists");

  // Key-major items: one per (key tile, KV head), split when far above the average. Tiles are
  // 128 keys (NG = 2) unless MoBA blocks are not a multiple of 128. A key tile never crosses a
  // MoBA block: each block is cut into tiles from its start (the last one partial when the
  // block size is not a multiple of the tile), so every row of a tile sees it by one rule.
  const bool ng1 = o.cuda.backward_key_tile == 64;  // 64-key tiles always (measurements)
  const int NG = (!ng1 && (!moba || B % 128 == 0)) ? 2 : 1, KT = 64 * NG;
  struct Tile {
    KeyItem it;
    int n;
  };
  std::vector<Tile> tiles;
  long long row_tiles = 0;
  for (int b = 0; b < p.batch; ++b) {
    const int begin = p.cu_seqlens[b], len = p.cu_seqlens[b + 1] - begin;
    const int region = moba ? B : std::max(len, 1);  // a MoBA block, else the whole sequence
    for (int ks = 0; ks < len; ks += std::min(KT, region - ks % region)) {
      const int j = ks / B;
      const int region_end = std::min(len, (ks / region + 1) * region);
      KeyItem it{};
      it.key_start = begin + ks;
      it.key_len = std::min(KT, region_end - ks);
      it.impl_begin = it.key_start;
      it.impl_end = begin + (moba ? region_end : len);
      it.partial = -1;
      it.seq = b;
      it.sink_end = begin + (moa ? p.moa_sink : 0);
      for (int g = 0; g < hkv; ++g) {
        it.g = g;
        if (moa) it.impl_end = begin + moa_rows_end(b, g, ks, it.key_len, len);
        const int n_impl = ceil_div(it.impl_end - it.impl_begin, 64) * G;
        it.list_begin = it.list_len = 0;
        if (P > 0) {
          const long long kb = ((blk_base[b] + j) * static_cast<long long>(hkv) + g) * P;
          it.list_begin = off[kb];
          it.list_len = off[kb + P] - off[kb];
        }
        const int n = n_impl + ceil_div(it.list_len, 64);
        tiles.push_back({it, n});
        row_tiles += n;
      }
    }
  }
  const int slots = NG == 1 ? 2 * nsm : nsm;  // resident CTAs
  const int cap = std::max(16, ceil_div(row_tiles, 2ll * slots));
  std::vector<KeyItem> items;
  std::vector<SplitTile> splits;
  int n_partials = 0;
  for (const Tile& t : tiles) {
    KeyItem it = t.it;
    if (t.n <= cap) {
      it.rt_begin = 0;
      it.rt_end = t.n;
      items.push_back(it);
      continue;
    }
    const int k = ceil_div(t.n, cap), chunk = ceil_div(t.n, k);
    splits.push_back({it.key_start, it.key_len, it.g, n_partials, 0});
    for (int r = 0; r < t.n; r += chunk) {
      it.rt_begin = r;
      it.rt_end = std::min(t.n, r + chunk);
      it.partial = n_partials++;
      ++splits.back().n_slots;
      items.push_back(it);
    }
  }
  std::stable_sort(items.begin(), items.end(), [](const KeyItem& a, const KeyItem& b) {
    return a.rt_end - a.rt_begin > b.rt_end - b.rt_begin;
  });
  stats.key_items = static_cast<int>(items.size());
  stats.split_tiles = static_cast<int>(splits.size());

  // Query-major dQ items. Wave 0 (both modes): the causal part per (64-token tile, head); MoA:
  // the sink's key tiles, then the window's (one range when they meet).
  // Waves 1 + s (deterministic mode): the rows of selection slot s, per (block, KV head).
  std::vector<DqItem> dq_items;
  std::vector<std::pair<int, int>> waves;  // (first item, count)
  if (!all_atomic) {
    for (int b = 0; b < p.batch; ++b) {
      const int begin = p.cu_seqlens[b], len = p.cu_seqlens[b + 1] - begin;
      for (int qt = 0; qt * 64 < len; ++qt) {
        const int rows = std::min(64, len - qt * 64);
        if (moa) {
          for (int h = 0; h < hq; ++h) {
            const int wh = win[std::size_t(h) * p.batch + b];
            int first = std::max(0, qt * 64 - wh + 1) / 64;
            int sink_tiles = ceil_div(p.moa_sink, 64);
            if (sink_tiles >= first) first = sink_tiles = 0;
            dq_items.push_back({begin + first * 64, qt - first + 1, 1, h / G, h, begin + qt * 64, rows,
                                sink_tiles, begin, wh});
          }
          continue;
        }
        if (any_block) {  // keys from the own block of the tile's first row, masked per row
          const int lo = (qt * 64 / B) * B;
          for (int h = 0; h < hq; ++h)
            dq_items.push_back({begin + lo, ceil_div(qt * 64 + rows - lo, 64), 1, h / G, h, begin + qt * 64, rows,
                                0, begin, 0, 0});
          continue;
        }
        const int first = moba ? (qt * 64 / B) * (B / 64) : 0;
        for (int h = 0; h < hq; ++h)
          dq_items.push_back({begin + first * 64, qt - first + 1, 1, h / G, h, begin + qt * 64, rows});
      }
    }
    std::stable_sort(dq_items.begin(), dq_items.end(), [](const DqItem& a, const DqItem& b) {
      return a.n_key_tiles + a.sink_tiles > b.n_key_tiles + b.sink_tiles;
    });
    waves.push_back({0, static_cast<int>(dq_items.size())});
    for (int s = 0; s < P && has_lists && det; ++s) {
      const int first = static_cast<int>(dq_items.size());
      for (int b = 0; b < p.batch; ++b) {
        const int begin = p.cu_seqlens[b];
        for (int j = 0; j < blk_base[b + 1] - blk_base[b]; ++j)
          for (int g = 0; g < hkv; ++g) {
            const long long k = ((blk_base[b] + j) * static_cast<long long>(hkv) + g) * P + s;
            for (int e = off[k]; e < off[k + 1]; e += 64)
              dq_items.push_back({begin + j * B, ceil_div(B, 64), 0, g, -1, e, std::min(64, off[k + 1] - e),
                                  0, begin, 0, begin + (j + 1) * B});
          }
      }
      if (static_cast<int>(dq_items.size()) > first)
        waves.push_back({first, static_cast<int>(dq_items.size()) - first});
    }
  }
  stats.dq_waves = static_cast<int>(waves.size());

  // Scratch for the passes.
  KeyItem* items_d = ws.upload(items, "backward work items");
  mem.add(items.size() * sizeof(KeyItem));
  float* partial = nullptr;
  SplitTile* splits_d = nullptr;
  if (n_partials > 0) {
    partial = ws.alloc<float>(std::size_t(n_partials) * 2 * KT * D, "split dK/dV partials");
    splits_d = ws.upload(splits, "split tiles");
    mem.add(std::size_t(n_partials) * 2 * KT * D * 4 + splits.size() * sizeof(SplitTile));
  }
  float* dq_acc = nullptr;
  const bool need_acc = all_atomic || has_lists;
  if (need_acc) {
    dq_acc = ws.alloc<float>(std::size_t(total) * hq * D, "fp32 dQ accumulator");
    mem.add(std::size_t(total) * hq * D * 4);
    if (all_atomic) MOBA_CUDA_CHECK(cudaMemsetAsync(dq_acc, 0, std::size_t(total) * hq * D * 4, stream));
  }
  const int* win_d = nullptr;
  if (moa) {
    win_d = ws.upload(win, "MoA windows");
    mem.add(win.size() * sizeof(int));
  }
  DqItem* dq_items_d = nullptr;
  if (!dq_items.empty()) {
    dq_items_d = ws.upload(dq_items, "dQ work items");
    mem.add(dq_items.size() * sizeof(DqItem));
  }
  mark("plan+alloc");

  Operands op{w.q.data, w.k.data, w.v.data, w.dout.data, w.dq.data, w.dk.data, w.dv.data,
              w.q.token_stride, w.q.head_stride, w.k.token_stride, w.k.head_stride,
              w.v.token_stride, w.v.head_stride, w.dout.token_stride, w.dout.head_stride,
              w.dq.token_stride, w.dq.head_stride, w.dk.token_stride, w.dk.head_stride,
              w.dv.token_stride, w.dv.head_stride};
  const float scale_log2 = p.scale * 1.4426950408889634f;
  auto wave = [&](std::size_t i) {
    DqPassArgs da{op, w.lse, dt, list, dq_items_d + waves[i].first, dq_acc,
                  i == 0 ? (has_lists ? kDqStoreAcc : kDqStoreOut) : kDqAddAcc,
                  total, hq, G, p.scale, scale_log2, moa ? p.moa_sink : 0,
                  vis, B};
    dq_pass(bf16, D, da, waves[i].second, stream);
  };

  // Causal rows' dQ first (it stores; the listed rows' contributions are added after it).
  if (!waves.empty()) wave(0);
  mark("dq causal");
  // dK, dV; in the default mode also the listed rows' dQ (all rows' with MOBA_BWD_DQ=atomic).
  KeyPassArgs ka{op, w.lse, dt, list, items_d, det ? nullptr : dq_acc, all_atomic ? 0 : 1, partial,
                 total, hq, G, p.scale, scale_log2, NG, win_d, p.batch, vis};
  ka.dq_bulk = sm90 && o.cuda.backward_dq_bulk_reduce && ka.dq_acc != nullptr ? 1 : 0;
  if (sm90) key_pass_sm90(bf16, D, ka, static_cast<int>(items.size()), stream);
  else key_pass(bf16, D, ka, static_cast<int>(items.size()), stream);
  if (!splits.empty()) {
    reduce_partials_kernel<T><<<static_cast<int>(splits.size()), 256, 0, stream>>>(
        splits_d, partial, KT, D, static_cast<T*>(w.dk.data), w.dk.token_stride, w.dk.head_stride,
        static_cast<T*>(w.dv.data), w.dv.token_stride, w.dv.head_stride);
    MOBA_CUDA_LAUNCH_CHECK();
  }
  mark("key pass");
  for (std::size_t i = 1; i < waves.size(); ++i) wave(i);
  mark("dq listed");
  if (need_acc) {
    const std::int64_t n = std::int64_t(total) * hq * (D / 2);
    convert_dq_kernel<T><<<ceil_div(n, 256), 256, 0, stream>>>(dq_acc, total, hq, D, p.scale,
                                                               static_cast<T*>(w.dq.data),
                                                               w.dq.token_stride, w.dq.head_stride);
    MOBA_CUDA_LAUNCH_CHECK();
  }
  mark("convert");
  stats.peak_workspace_bytes = mem.peak;
  g_stats = stats;
}

}  // namespace

BackwardStats last_backward_stats() { return g_stats; }

}  // namespace bwd

void cuda_backward(const Problem& p, const Backward& w, const RunOptions& o) {
  if (o.cuda.backward_key_tile != 0 && o.cuda.backward_key_tile != 64)
    invalid("CudaOptions::backward_key_tile", "0 (automatic) or 64",
            std::to_string(o.cuda.backward_key_tile));
  for (const Operand* x : {&w.q, &w.k, &w.v, &w.out, &w.dout, &w.dq, &w.dk, &w.dv})
    if (!bwd::aligned_operand(*x))
      fail(ErrorKind::unsupported,
           "cuda backend: backward needs 16-byte aligned rows (data pointers aligned to 16 bytes, "
           "token and head strides multiples of 8 elements)");
  if (p.dtype != DType::bf16 && p.dtype != DType::f16)
    fail(ErrorKind::unsupported, "cuda backend: backward supports bf16 and f16 (got " + dtype_name(p.dtype) + ")");
  if (p.total == 0) return;
  bwd::DeviceGuard guard(p.device.index);
  if (p.dtype == DType::bf16) bwd::run_backward<__nv_bfloat16>(p, w, o);
  else bwd::run_backward<__half>(p, w, o);
}

}  // namespace moba::detail
