// CUDA backward: dQ, dK, dV of full causal, MoBA and MoA attention from dout and the forward's
// out, lse and selection (the gate is never recomputed). MoA runs the causal machinery with
// the window + sink rule as the mask (bwd_plan.hpp says which rows and keys each item visits).
//
// Steps, all on the caller's stream, with no device-to-host copy and no synchronisation (a
// training step captures in a CUDA graph):
//  1. D_t = <dout_t, out_t> (fp32, [hq, total]).
//  2. The plan, on the device (bwd_device_plan.hpp, BackwardPlan in bwd_plan.hpp). MoBA:
//     per-(past block, KV head, selection slot) lists of the rows (t * hq + h) that chose
//     the block: one entry per selection slot, keyed and stably radix-sorted (CUB), so the
//     order inside a list is fixed (token, then head) and runs are bit-identical. Then the
//     key-major items (with their splits) and the dQ items, longest first. Grids and scratch
//     are sized by bounds from the shapes; the kernels return at once past the device counts.
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
//     Deterministic mode: no float atomics anywhere. Slot path (a MoBA block is one key tile,
//     P <= kDetSlotMax, mma.sync key pass): the key pass stores each listed entry's whole dQ to
//     its selection slot's fp32 buffer, and step 3 runs after it, adding the row's valid slots
//     in slot order (no dQ scratch, no convert). Wave path (otherwise): the key pass skips dQ;
//     the dQ pass runs once more per selection slot over the listed rows, each launch touching
//     every row at most once, so dQ is summed in a fixed order.
// Workspace: D (4 B per row and head), the lists (4 B per selection entry, plus sort buffers
// freed before the main passes), the work items, the fp32 dQ scratch (MoBA with top-k > 1
// and the all-atomic variant; P of them on the deterministic slot path) and the split key
// tiles' partials: 2 * (64 or 128) * D floats
// per slot, min(4 * resident CTAs, row-tile bound / 8) slots (a bound: the host does not know
// how many tiles split).
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <cstdint>
#include <vector>

#include "core/backends.hpp"
#include "core/validate.hpp"
#include "cuda/backward/bwd_device_plan.hpp"
#include "cuda/backward/bwd_plan.hpp"
#include "cuda/backward/bwd_stats.hpp"
#include "cuda/backward/sm90_key_pass.hpp"
#include "cuda/backward/sm90_ws_key_pass.hpp"
#include "cuda/common/check.hpp"
#include "cuda/common/dtype.cuh"
#include "cuda/common/workspace.hpp"
#include "cuda/forward/seq_tables.hpp"

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

// Sums the fp32 partials of split key tiles in slot order and writes dK, dV.
template <class T>
__global__ void reduce_partials_kernel(const SplitTile* tiles, const int* n_tiles, const float* partial, int KT,
                                       int D, T* dk, std::int64_t dk_ts, std::int64_t dk_hs, T* dv,
                                       std::int64_t dv_ts, std::int64_t dv_hs) {
  if (int(blockIdx.x) >= *n_tiles) return;  // the grid is a bound
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

void key_pass(bool bf16, int D, const KeyPassArgs& a, int n, cudaStream_t s) {
  if (bf16) D == 64 ? launch_key_pass<true, 64>(a, n, s) : launch_key_pass<true, 128>(a, n, s);
  else D == 64 ? launch_key_pass<false, 64>(a, n, s) : launch_key_pass<false, 128>(a, n, s);
  MOBA_CUDA_LAUNCH_CHECK();
}
// Deterministic mode's slot path (bwd_plan.hpp): a MoBA block is one key tile (128 keys when
// blocks are a multiple of 128, else 64) and P <= kDetSlotMax; it runs on the mma.sync key pass.
bool det_slot_path_fits(const Problem& p, const CudaOptions& o) {
  if (p.mode != Mode::moba) return false;
  const int P = p.past_k(), B = p.block_size;
  const int KT = (o.backward_key_tile != 64 && B % 128 == 0) ? 128 : 64;
  return P > 0 && P <= kDetSlotMax && B <= KT;
}
// Which key pass runs (CudaOptions::backward_kernel). sm90_wgmma / sm90_warp_specialized: the
// sm_90a kernels (they throw where they cannot run). automatic: the sm_90a kernels where they
// can run, except deterministic calls that fit the slot path, which take mma.sync. Measured on
// the H200 (bench_backward.cpp, session 3, bench/results/h200-2026-11-29-session3/): default
// mode, the warp-specialised pass vs mma.sync: blocks of 64 top-3 0.339 / 0.954 / 3.387 vs
// 0.345 / 1.008 / 3.558 ms at 8K / 32K / 128K, (a) at 8K (blocks of 128) 0.408 vs 0.479 ms;
// deterministic, blocks of 64 top-3 at 128K: mma.sync's slot path 3.76 ms, the warp-specialised
// pass's per-slot dQ waves 6.83 ms.
bool use_sm90_key_pass(const Problem& p, bool bf16, int D, const CudaOptions& o, bool det) {
  using BK = CudaOptions::BackwardKernel;
  if (o.backward_kernel == BK::sm80_mma_sync) return false;
  const bool ok = bf16 ? (D == 64 ? sm90_key_pass_available<true, 64>() : sm90_key_pass_available<true, 128>())
                       : (D == 64 ? sm90_key_pass_available<false, 64>() : sm90_key_pass_available<false, 128>());
  if (o.backward_kernel == BK::automatic) return ok && !(det && det_slot_path_fits(p, o));
  if (!ok)
    fail(ErrorKind::unsupported,
         std::string("cuda backend: CudaOptions::backward_kernel = ") +
             (o.backward_kernel == BK::sm90_wgmma ? "sm90_wgmma" : "sm90_warp_specialized") +
             " needs a compute capability 9.0 device and a build with sm_90a code (MOBA_CUDA_GENCODE); "
             "use automatic or sm80_mma_sync");
  return true;
}
// Of the sm_90a passes (once use_sm90_key_pass said yes): the warp-specialised one unless
// sm90_wgmma was asked for (H200, 128K: full causal 308 vs 381 ms, (a) 24.5 vs 35.8 ms, blocks of
// 512 top-8 18.9 vs 28.4 ms of backward; bench/cuda/run_keypass_device.sh).
bool use_ws_key_pass(bool bf16, int D, const CudaOptions& o) {
  using BK = CudaOptions::BackwardKernel;
  if (o.backward_kernel == BK::sm90_wgmma) return false;
  const bool ok = bf16 ? (D == 64 ? sm90_ws_key_pass_available<true, 64>() : sm90_ws_key_pass_available<true, 128>())
                       : (D == 64 ? sm90_ws_key_pass_available<false, 64>() : sm90_ws_key_pass_available<false, 128>());
  if (!ok && o.backward_kernel == BK::sm90_warp_specialized)
    fail(ErrorKind::unsupported,
         "cuda backend: CudaOptions::backward_kernel = sm90_warp_specialized needs a compute capability 9.0 "
         "device and a build with sm_90a code (MOBA_CUDA_GENCODE); use automatic or sm80_mma_sync");
  return ok;
}
void key_pass_sm90_ws(bool bf16, int D, const KeyPassArgs& a, int n, bool row_tma, cudaStream_t s) {
  if (bf16)
    D == 64 ? launch_sm90_ws_key_pass<true, 64>(a, n, row_tma, s) : launch_sm90_ws_key_pass<true, 128>(a, n, row_tma, s);
  else
    D == 64 ? launch_sm90_ws_key_pass<false, 64>(a, n, row_tma, s) : launch_sm90_ws_key_pass<false, 128>(a, n, row_tma, s);
  MOBA_CUDA_LAUNCH_CHECK();
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

// Reads one device int (CudaOptions::collect_timing only: that mode synchronises anyway).
long long read_count(const int* d, cudaStream_t stream) {
  if (d == nullptr) return 0;
  int v = 0;
  MOBA_CUDA_CHECK(cudaMemcpyAsync(&v, d, sizeof(int), cudaMemcpyDeviceToHost, stream));
  MOBA_CUDA_CHECK(cudaStreamSynchronize(stream));
  return v;
}

template <class T>
void run_backward(const Problem& p, const Backward& w, const RunOptions& o) {
  const cudaStream_t stream = cuda::stream_of(o);
  const bool det = o.deterministic;
  const bool bf16 = p.dtype == DType::bf16;
  const int D = p.head_dim, hq = p.hq, G = p.group(), total = p.total;
  const bool moba = p.mode == Mode::moba;
  const int B = moba ? p.block_size : 64;
  const int P = moba ? p.past_k() : 0;
  const bool moa = p.mode == Mode::moa;
  const bool any_block = moba && B % 64 != 0;  // MoBA blocks that 64-key tiles do not align with
  const int vis = moa ? kVisMoa : (any_block ? kVisBlocks : kVisCausal);
  BackwardStats stats;
  Meter mem;
  // Measurement variants (CudaOptions): every dQ by atomics in the key pass; per-stage times.
  const bool all_atomic = !det && o.cuda.backward_dq_all_atomic;
  const bool timing = o.cuda.collect_timing;
  const bool sm90 = use_sm90_key_pass(p, bf16, D, o.cuda, det);
  const bool sm90_ws = sm90 && use_ws_key_pass(bf16, D, o.cuda);
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

  // The plan, on the device (bwd_device_plan.hpp). Key tiles are 128 keys (NG = 2) unless MoBA
  // blocks are not a multiple of 128 (or CudaOptions::backward_key_tile asks for 64). A key
  // tile never crosses a MoBA block: each block is cut into tiles from its start.
  const bool ng1 = o.cuda.backward_key_tile == 64;
  const int NG = (!ng1 && (!moba || B % 128 == 0)) ? 2 : 1, KT = 64 * NG;
  // Deterministic mode's slot path (bwd_plan.hpp): a block is one key tile, so the mma.sync key
  // pass computes each listed entry's dQ whole and stores it to its slot's buffer.
  const bool det_slots = det && det_slot_path_fits(p, o.cuda) && !sm90;
  BackwardPlan plan;
  const int* win_d = nullptr;
  {
    cuda::Workspace tmp(stream);  // sort and scan buffers, freed before the passes
    PlanRequest req;
    req.total = total;
    req.batch = p.batch;
    req.hq = hq;
    req.hkv = p.hkv;
    req.moba = moba;
    req.moa = moa;
    req.block_size = B;
    req.past = P;
    req.key_tile = KT;
    req.slots = NG == 1 ? 2 * nsm : nsm;  // resident key-pass CTAs
    req.dq_items = !all_atomic;
    req.listed_waves = det && !det_slots;
    req.list_slots = det_slots;
    // A host cu_seqlens (already checked) is uploaded and planned from like a GPU one.
    req.cu_from_caller_gpu = p.cu_seqlens.empty();
    req.cu_dev = req.cu_from_caller_gpu ? p.cu_seqlens_dev : tmp.upload(p.cu_seqlens, "cu_seqlens");
    req.selection = w.selection;
    req.moa_sink = moa ? p.moa_sink : 0;
    req.moa_alpha = &p.moa_alpha;
    req.moa_beta = &p.moa_beta;
    std::size_t tmp_bytes = 0;
    plan = plan_backward(req, ws, tmp, mem, tmp_bytes, &win_d);
    mem.sub(tmp_bytes);
  }
  stats.dq_waves = all_atomic ? 0 : 1 + (det && !det_slots ? P : 0);
  if (timing) {  // the counts, for the report (the plan itself never reads them on the host)
    stats.key_items = static_cast<int>(read_count(plan.n_key_items, stream));
    stats.split_tiles = static_cast<int>(read_count(plan.n_splits, stream));
    stats.list_entries = plan.list_off ? read_count(plan.list_off + plan.n_block_ids * p.hkv * P, stream) : 0;
  }
  mark("plan");

  // Scratch for the passes, sized by the plan's bounds.
  float* partial = nullptr;
  if (plan.max_partials > 0) {
    partial = ws.alloc<float>(std::size_t(plan.max_partials) * 2 * KT * D, "split dK/dV partials");
    mem.add(std::size_t(plan.max_partials) * 2 * KT * D * 4);
  }
  // With selection slots the listed rows' dQ is summed in fp32 (whether or not any row chose a
  // past block: the host does not know).
  float* dq_acc = nullptr;
  const bool need_acc = (all_atomic || P > 0) && !det_slots;
  const std::size_t acc_elems = std::size_t(total) * hq * D;
  if (need_acc) {
    dq_acc = ws.alloc<float>(acc_elems, "fp32 dQ accumulator");
    mem.add(acc_elems * 4);
    if (all_atomic) MOBA_CUDA_CHECK(cudaMemsetAsync(dq_acc, 0, acc_elems * 4, stream));
  }
  float* dq_slots = nullptr;  // deterministic slot path: P buffers, written by the key pass only
  if (det_slots) {
    dq_slots = ws.alloc<float>(acc_elems * P, "fp32 dQ of the listed entries per selection slot");
    mem.add(acc_elems * P * 4);
  }
  mark("alloc");

  Operands op{w.q.data, w.k.data, w.v.data, w.dout.data, w.dq.data, w.dk.data, w.dv.data,
              w.q.token_stride, w.q.head_stride, w.k.token_stride, w.k.head_stride,
              w.v.token_stride, w.v.head_stride, w.dout.token_stride, w.dout.head_stride,
              w.dq.token_stride, w.dq.head_stride, w.dk.token_stride, w.dk.head_stride,
              w.dv.token_stride, w.dv.head_stride};
  const float scale_log2 = p.scale * 1.4426950408889634f;
  auto wave = [&](const DqItem* items, const int* n_items, int max_items, int store) {
    DqPassArgs da{op, w.lse, dt, plan.list, items, store == kDqStoreOutSlots ? dq_slots : dq_acc, store, total, hq,
                  G, p.scale, scale_log2, moa ? p.moa_sink : 0, vis, B};
    da.n_items = n_items;
    if (store == kDqStoreOutSlots) {
      da.selection = w.selection;
      da.slots = P;
      da.slot_stride = static_cast<long long>(acc_elems);
    }
    dq_pass(bf16, D, da, max_items, stream);
  };

  // Causal rows' dQ first (it stores; the listed rows' contributions are added after it), except
  // in the slot path, where it runs last and adds the key pass's slot buffers.
  if (plan.dq_items && !det_slots)
    wave(plan.dq_items, plan.n_dq_items, plan.max_dq_items, P > 0 ? kDqStoreAcc : kDqStoreOut);
  mark("dq causal");
  // dK, dV; in the default mode also the listed rows' dQ (every row's with all-atomic dQ); in the
  // slot path the listed rows' dQ stored per slot.
  KeyPassArgs ka{op, w.lse, dt, plan.list, plan.key_items, det_slots ? dq_slots : (det ? nullptr : dq_acc),
                 all_atomic ? 0 : 1, partial, total, hq, G, p.scale, scale_log2, NG, win_d, p.batch, vis};
  ka.n_items = plan.n_key_items;
  if (det_slots) {
    ka.list_slot = plan.list_slot;
    ka.dq_slot_stride = static_cast<long long>(acc_elems);
  }
  ka.dq_bulk = sm90 && o.cuda.backward_dq_bulk_reduce && ka.dq_acc != nullptr ? 1 : 0;
  if (sm90_ws) key_pass_sm90_ws(bf16, D, ka, plan.max_key_items, o.cuda.backward_row_tma, stream);
  else if (sm90) key_pass_sm90(bf16, D, ka, plan.max_key_items, stream);
  else key_pass(bf16, D, ka, plan.max_key_items, stream);
  if (plan.max_splits > 0) {
    reduce_partials_kernel<T><<<plan.max_splits, 256, 0, stream>>>(
        plan.splits, plan.n_splits, partial, KT, D, static_cast<T*>(w.dk.data), w.dk.token_stride,
        w.dk.head_stride, static_cast<T*>(w.dv.data), w.dv.token_stride, w.dv.head_stride);
    MOBA_CUDA_LAUNCH_CHECK();
  }
  mark("key pass");
  if (det_slots) wave(plan.dq_items, plan.n_dq_items, plan.max_dq_items, kDqStoreOutSlots);
  for (int s = 0; plan.listed_items && s < P; ++s)
    wave(plan.listed_items + std::size_t(s) * plan.max_listed_items, plan.n_listed_items + s,
         plan.max_listed_items, kDqAddAcc);
  mark("dq listed");
  if (need_acc) {
    const std::int64_t n = std::int64_t(total) * hq * (D / 2);
    convert_dq_kernel<T><<<ceil_div(n, 256), 256, 0, stream>>>(dq_acc, total, hq, D, p.scale,
                                                               static_cast<T*>(w.dq.data),
                                                               w.dq.token_stride, w.dq.head_stride);
    MOBA_CUDA_LAUNCH_CHECK();
  }
  if (plan.invalid) {  // a GPU cu_seqlens that failed the device check: NaN gradients, as the forward
    cuda::poison_if_invalid(plan.invalid, w.dq.data, w.dq.token_stride, w.dq.head_stride, dt, total, hq, D, stream);
    cuda::poison_if_invalid(plan.invalid, w.dk.data, w.dk.token_stride, w.dk.head_stride, dt, total, p.hkv, D,
                            stream);
    cuda::poison_if_invalid(plan.invalid, w.dv.data, w.dv.token_stride, w.dv.head_stride, dt, total, p.hkv, D,
                            stream);
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
