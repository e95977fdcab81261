// Host side of the CUDA forward and gate: plans the launches from the validated Problem and
// dispatches (dtype, head_dim) once to the compiled instantiations.
//   full / MoA : one dense launch (64-row tiles x heads, longest tiles first)
//   MoBA       : gate (block means, fused score + top-k), the own block (dense, causal), then
//                one gathered launch per selection slot (core/... semantics: each row sees its
//                own block causally plus exactly its selected blocks, one exact softmax)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "core/backends.hpp"
#include "core/validate.hpp"
#include "cuda/common/workspace.hpp"
#include "cuda/forward/attn_params.hpp"
#include "cuda/forward/onepass_plan.hpp"
#include "cuda/forward/seq_tables.hpp"
#include "cuda/forward/tensor_map.hpp"
#include "cuda/forward/waves.hpp"
#include "cuda/gate/gate_params.hpp"

namespace moba::detail {

using namespace moba::cuda;

namespace {

class DeviceGuard {
 public:
  explicit DeviceGuard(int dev) {
    MOBA_CUDA_CHECK(cudaGetDevice(&prev_));
    if (prev_ != dev) MOBA_CUDA_CHECK(cudaSetDevice(dev));
    changed_ = prev_ != dev;
  }
  ~DeviceGuard() {
    if (changed_) (void)cudaSetDevice(prev_);
  }

 private:
  int prev_ = 0;
  bool changed_ = false;
};

void check_supported(const Problem& p, const char* what) {
  if (p.dtype != DType::bf16 && p.dtype != DType::f16)
    fail(ErrorKind::unsupported, std::string("cuda backend: ") + what +
                                     " supports dtypes bf16 and f16, got " + dtype_name(p.dtype) +
                                     " (use the cpu backend for f32)");
  if (p.head_dim != 64 && p.head_dim != 128)
    invalid("q", "head_dim 64 or 128 on the cuda backend", std::to_string(p.head_dim));
  if (p.mode == Mode::moba && p.block_size < kMinCudaBlockSize)
    invalid("block_size", "a block size >= " + std::to_string(kMinCudaBlockSize) + " on the cuda backend",
            std::to_string(p.block_size));
}

// The kernels move rows in 16-byte pieces (cp.async): rows must start 16-byte aligned.
void check_aligned(const char* name, const Operand& x) {
  const auto addr = reinterpret_cast<std::uintptr_t>(x.data);
  if (addr % 16 != 0)
    invalid(name, "a 16-byte aligned data pointer on the cuda backend",
            "address ending in 0x" + std::to_string(addr % 16));
  if (x.token_stride % 8 != 0 || x.head_stride % 8 != 0)
    invalid(name, "token and head strides that are multiples of 8 elements on the cuda backend",
            "strides " + std::to_string(x.token_stride) + ", " + std::to_string(x.head_stride));
}

// Per-sequence tables (seq_tables.hpp has the layout): built on the host and uploaded when
// cu_seqlens is on the host; built on the device when it is on the GPU (no host sync: the
// counts below are then bounds from total and batch, and the kernels read the exact totals
// from the tables).
struct Plan {
  bool exact = true;  // counts are exact (host cu_seqlens) or bounds (device planning)
  int num_tiles = 0, num_blocks = 0, num_tiles128 = 0;
  const int* cu = nullptr;
  const int* tile_off = nullptr;
  const int* blk_off = nullptr;
  const int* tile128_off = nullptr;  // 128-row tiles (sm_90a path)
  const int* moa_window = nullptr;
  const int* invalid = nullptr;  // device planning: 1 when cu_seqlens was not valid
};

void point_into(Plan& pl, const Problem& p, const int* dev) {
  const int nb1 = p.batch + 1;
  pl.cu = dev;
  pl.tile_off = dev + nb1;
  pl.blk_off = dev + 2 * nb1;
  pl.tile128_off = dev + 3 * nb1;
  pl.moa_window = p.mode == Mode::moa ? dev + 4 * nb1 : nullptr;
}

Plan plan_on_host(const Problem& p, Workspace& ws) {
  Plan pl;
  const int nb1 = p.batch + 1;
  std::vector<int> host(std::size_t(4) * nb1 + (p.mode == Mode::moa ? std::size_t(p.hq) * p.batch : 0), 0);
  int* cu = host.data();
  int* toff = cu + nb1;
  int* boff = toff + nb1;
  int* t128 = boff + nb1;
  for (int b = 0; b <= p.batch; ++b) cu[b] = p.cu_seqlens[b];
  for (int b = 0; b < p.batch; ++b) {
    const int len = p.cu_seqlens[b + 1] - p.cu_seqlens[b];
    toff[b + 1] = toff[b] + (len + 63) / 64;
    boff[b + 1] = boff[b] + (p.mode == Mode::moba ? len / p.block_size : 0);
    t128[b + 1] = t128[b] + (len + 127) / 128;
  }
  if (p.mode == Mode::moa) {
    int* win = t128 + nb1;
    for (int h = 0; h < p.hq; ++h)
      for (int b = 0; b < p.batch; ++b)
        win[h * p.batch + b] = p.moa_window(h, p.cu_seqlens[b + 1] - p.cu_seqlens[b]);
  }
  pl.num_tiles = toff[p.batch];
  pl.num_blocks = boff[p.batch];
  pl.num_tiles128 = t128[p.batch];
  point_into(pl, p, ws.upload(host, "sequence tables"));
  return pl;
}

Plan plan_on_device(const Problem& p, Workspace& ws) {
  Plan pl;
  pl.exact = false;
  const int moa_heads = p.mode == Mode::moa ? p.hq : 0;
  SeqTableArgs a{};
  a.cu_in = p.cu_seqlens_dev;
  a.batch = p.batch;
  a.total = p.total;
  a.block_size = p.mode == Mode::moba ? p.block_size : 0;
  a.hq = moa_heads;
  a.moa_sink = p.moa_sink;
  if (moa_heads > kPlanMaxMoaHeads) {  // too many for the kernel parameters: one small upload
    std::vector<float> ab(p.moa_alpha);
    ab.insert(ab.end(), p.moa_beta.begin(), p.moa_beta.end());
    a.moa_ab_dev = ws.upload(ab, "MoA window parameters");
  } else {
    for (int h = 0; h < moa_heads; ++h) {
      a.moa_alpha[h] = p.moa_alpha[h];
      a.moa_beta[h] = p.moa_beta[h];
    }
  }
  int* dev = ws.alloc<int>(seq_tables_size(p.batch, moa_heads), "sequence tables");
  build_seq_tables(a, dev, ws.stream());
  point_into(pl, p, dev);
  pl.invalid = dev + seq_tables_size(p.batch, moa_heads) - 1;
  // Bounds: a sequence of len tokens has ceil(len / 64) <= len / 64 + 63 / 64 tiles, and at most
  // min(batch, total) sequences are non-empty.
  const std::int64_t nonempty = std::min<std::int64_t>(p.batch, p.total);
  pl.num_tiles = int((std::int64_t(p.total) + 63 * nonempty) / 64);
  pl.num_tiles128 = int((std::int64_t(p.total) + 127 * nonempty) / 128);
  pl.num_blocks = p.mode == Mode::moba ? p.total / p.block_size : 0;
  return pl;
}

Plan make_plan(const Problem& p, Workspace& ws) {
  return p.cu_seqlens.empty() ? plan_on_device(p, ws) : plan_on_host(p, ws);
}

// Most past blocks any row has (a bound without the host lengths).
int max_past_blocks(const Problem& p) {
  if (p.cu_seqlens.empty()) return p.total > 0 ? (p.total - 1) / p.block_size : 0;
  int max_own = 0;
  for (int b = 0; b < p.batch; ++b) {
    const int len = p.cu_seqlens[b + 1] - p.cu_seqlens[b];
    if (len > 0) max_own = std::max(max_own, (len - 1) / p.block_size);
  }
  return max_own;
}

// Rows whose selection slot s is valid (positions t >= (s + 1) * block_size), over all heads;
// a bound without the host lengths (sum of max(0, len - c) <= max(0, total - c)).
long long rows_with_slot(const Problem& p, int s) {
  const long long first = (long long)(s + 1) * p.block_size;
  long long rows = 0;
  if (p.cu_seqlens.empty()) {
    rows = std::max(0LL, (long long)p.total - first);
  } else {
    for (int b = 0; b < p.batch; ++b)
      rows += std::max(0LL, (long long)(p.cu_seqlens[b + 1] - p.cu_seqlens[b]) - first);
  }
  return rows * p.hq;
}

template <class F>
void dispatch(const Problem& p, F&& f) {
  if (p.dtype == DType::bf16) {
    if (p.head_dim == 64) f(static_cast<__nv_bfloat16*>(nullptr), std::integral_constant<int, 64>());
    else f(static_cast<__nv_bfloat16*>(nullptr), std::integral_constant<int, 128>());
  } else {
    if (p.head_dim == 64) f(static_cast<__half*>(nullptr), std::integral_constant<int, 64>());
    else f(static_cast<__half*>(nullptr), std::integral_constant<int, 128>());
  }
}

// Which attention kernel runs (CudaOptions::forward_kernel). The warp-specialised sm_90a kernel
// (ws_kernel.cuh) needs sm_90a code in the build, a compute capability 9.0 device and a driver
// that encodes TMA tensor maps.
bool ws_available(const Problem& p) {
  bool on = false;
#if defined(MOBA_HAVE_SM90A)
  dispatch(p, [&](auto* t, auto d) {
    using T = std::remove_pointer_t<decltype(t)>;
    on = ws_attention_available<T, decltype(d)::value>();
  });
#else
  (void)p;
#endif
  return on;
}

enum class Engine { sm80, sm90_ws };

Engine pick_engine(const Problem& p, const CudaOptions& o) {
  switch (o.forward_kernel) {
    case CudaOptions::ForwardKernel::sm80_mma_sync:
      return Engine::sm80;
    case CudaOptions::ForwardKernel::sm90_wgmma:  // the removed lock-step kernel's name: an alias
    case CudaOptions::ForwardKernel::sm90_warp_specialized:
      if (!ws_available(p))
        fail(ErrorKind::unsupported,
             "cuda backend: CudaOptions::forward_kernel = sm90_warp_specialized (or its alias "
             "sm90_wgmma) needs a compute capability 9.0 device, a build with sm_90a code "
             "(MOBA_CUDA_GENCODE) and a driver with TMA tensor maps; use automatic or "
             "sm80_mma_sync");
      return Engine::sm90_ws;
    case CudaOptions::ForwardKernel::automatic:
      break;
  }
  // Faster than the lock-step sm_90a wgmma kernel it replaced on every forward row of the H200
  // run of 2026-11-29 (dense 1.2-1.6x, MoBA 1.0-1.5x; bench/results/cuda-h200-2026-11-29.md),
  // where it also passed every forward test and compute-sanitizer.
  return ws_available(p) ? Engine::sm90_ws : Engine::sm80;
}

// Calls f with the launch kind as a compile-time constant: each kernel is instantiated per kind
// (its visibility functor compiled in), none switches on the kind at run time.
template <class F>
void with_kind(int kind, F&& f) {
  switch (kind) {
    case kDenseFull: f(std::integral_constant<int, kDenseFull>()); break;
    case kDenseMobaOwn: f(std::integral_constant<int, kDenseMobaOwn>()); break;
    case kDenseMoa: f(std::integral_constant<int, kDenseMoa>()); break;
    case kMobaOnePass: f(std::integral_constant<int, kMobaOnePass>()); break;
    default: f(std::integral_constant<int, kGatherWave>()); break;
  }
}

void run_gate(const Problem& p, const Plan& pl, const Operand& q, const Operand& k,
              std::int32_t* selection, const CudaOptions& o, Workspace& ws) {
  if (p.past_k() == 0 || p.total == 0) return;
  const int max_own = max_past_blocks(p);
  const bool scoring = max_own > p.past_k();
  if (scoring && p.past_k() > kGateMaxPastK)
    fail(ErrorKind::unsupported, "cuda backend: topk - 1 = " + std::to_string(p.past_k()) +
                                     " exceeds the gate's limit of " +
                                     std::to_string(kGateMaxPastK) + " (a sequence has " +
                                     std::to_string(max_own) + " past blocks to choose from" +
                                     (p.cu_seqlens.empty() ? ", a bound from total tokens: "
                                                             "cu_seqlens is on the GPU)" : ")"));
  GateParams g{};
  g.q = q.data;
  g.k = k.data;
  g.q_ts = q.token_stride;
  g.q_hs = q.head_stride;
  g.k_ts = k.token_stride;
  g.k_hs = k.head_stride;
  g.means = ws.alloc_bytes(std::size_t(std::max(pl.num_blocks, 1)) * p.hkv * p.head_dim * 2,
                           "MoBA block means");
  g.sel = selection;
  g.hq = p.hq;
  g.hkv = p.hkv;
  g.group = p.group();
  g.block_size = p.block_size;
  g.past_k = p.past_k();
  g.batch = p.batch;
  g.cu = pl.cu;
  g.tile_off = pl.tile_off;
  g.num_tiles = pl.num_tiles;
  g.blk_off = pl.blk_off;
  g.num_blocks = pl.num_blocks;
  g.list_k = scoring ? p.past_k() : 0;
  void* sums = ws.alloc_bytes(std::size_t(std::max(pl.num_blocks, 1)) * p.hkv * p.head_dim * 8,
                              "MoBA block sums");
  dispatch(p, [&](auto* t, auto d) {
    using T = std::remove_pointer_t<decltype(t)>;
    constexpr int D = decltype(d)::value;
    // the score kernel of the register top-k range (CudaOptions::gate_kernel). automatic takes
    // mma.sync: on the H200 the wgmma kernel was 0.74-0.99x of it from 8K to 128K and 1.04x at
    // (d) 512K (bench/results/h200-2026-11-29-session3/gate.md): the top-k lists, not the MMA,
    // bound the gate.
    const bool sm90_ok = o.gate_kernel == CudaOptions::GateKernel::sm90_wgmma &&
                         gate_sm90_available<T, D>();
    if (o.gate_kernel == CudaOptions::GateKernel::sm90_wgmma && !sm90_ok)
      fail(ErrorKind::unsupported,
           "cuda backend: CudaOptions::gate_kernel = sm90_wgmma needs a compute capability 9.0 "
           "device, a build with sm_90a code (MOBA_CUDA_GENCODE) and a driver with TMA tensor "
           "maps; use automatic or sm80_mma_sync");
    g.sm90 = sm90_ok ? 1 : 0;
    launch_gate<T, D>(g, sums, ws.stream());
  });
}

// CudaOptions::forward_stats: the one-pass plan's device counters (OnePassCounts), copied back
// after a stream sync (a debug statistic; zeros when no one-pass plan ran).
void report_forward_stats(CudaForwardStats* stats, const int* counts_dev, Workspace& ws) {
  if (!stats) return;
  *stats = CudaForwardStats{};
  if (!counts_dev) return;
  int c[4] = {0, 0, 0, 0};
  MOBA_CUDA_CHECK(cudaMemcpyAsync(c, counts_dev, sizeof(c), cudaMemcpyDeviceToHost, ws.stream()));
  MOBA_CUDA_CHECK(cudaStreamSynchronize(ws.stream()));
  stats->moba_tiles = c[2];
  stats->one_pass_tiles = c[0];
  stats->union_blocks = c[3];
}

void run_attention(const Problem& p, const Forward& f, const RunOptions& o, const Plan& pl,
                   Workspace& ws) {
  AttnParams a{};
  a.q = f.q.data;
  a.k = f.k.data;
  a.v = f.v.data;
  a.out = f.out.data;
  a.q_ts = f.q.token_stride;
  a.q_hs = f.q.head_stride;
  a.k_ts = f.k.token_stride;
  a.k_hs = f.k.head_stride;
  a.v_ts = f.v.token_stride;
  a.v_hs = f.v.head_stride;
  a.o_ts = f.out.token_stride;
  a.o_hs = f.out.head_stride;
  a.lse = f.lse;
  a.total = p.total;
  a.hq = p.hq;
  a.group = p.group();
  a.scale_log2 = p.scale * 1.4426950408889634f;
  a.block_size = p.block_size;
  a.past_k = p.past_k();
  a.batch = p.batch;
  a.cu = pl.cu;
  a.tile_off = pl.tile_off;
  a.blk_off = pl.blk_off;
  a.num_blocks = pl.num_blocks;
  a.moa_window = pl.moa_window;
  a.moa_sink = p.moa_sink;

  const Engine engine = pick_engine(p, o.cuda);
  const bool hop = engine == Engine::sm90_ws;  // 128-row tiles
  const int tile_rows = hop ? 128 : 64;
  if (hop) a.tile_off = pl.tile128_off;
  const int dense_tiles = hop ? pl.num_tiles128 : pl.num_tiles;
  KvTensorMaps maps{};
  if (engine == Engine::sm90_ws)
    maps = make_kv_tensor_maps({f.k.data, f.k.token_stride, f.k.head_stride},
                               {f.v.data, f.v.token_stride, f.v.head_stride}, p.total, p.hkv,
                               p.head_dim, p.dtype == DType::bf16);
  auto launch = [&](int gx, int gy) {
    dispatch(p, [&](auto* t, auto d) {
      using T = std::remove_pointer_t<decltype(t)>;
      constexpr int D = decltype(d)::value;
      with_kind(a.kind, [&](auto kind) {
        constexpr int K = decltype(kind)::value;
        if (engine == Engine::sm90_ws)
          launch_attention_ws_kind<T, D, K>(a, maps, gx, gy, o.cuda.forward_persistent, ws.stream());
        else if constexpr (K != kMobaOnePass)  // one pass: sm_90a only (never planned on sm_80)
          launch_attention_kind<T, D, K>(a, gx, gy, ws.stream());
      });
    });
  };

  if (p.mode != Mode::moba) {
    a.kind = p.mode == Mode::full ? kDenseFull : kDenseMoa;
    launch(dense_tiles, p.hq);
    return;
  }

  // MoBA
  run_gate(p, pl, f.q, f.k, f.selection, o.cuda, ws);
  const bool any_past = p.past_k() > 0 && pl.num_blocks > 0;
  if (any_past) {
    const long long nsel = (long long)p.total * p.hq * p.past_k();
    if (nsel >= (1LL << 31) - 1)
      fail(ErrorKind::unsupported, "cuda backend: total * hq * (topk - 1) = " +
                                       std::to_string(nsel) + " selection entries exceed 2^31");
    a.acc = ws.alloc<float>(std::size_t(p.total) * p.hq * p.head_dim, "MoBA running output");
    a.mrow = ws.alloc<float>(std::size_t(p.total) * p.hq, "MoBA running max");
    a.lrow = ws.alloc<float>(std::size_t(p.total) * p.hq, "MoBA running sum");
  }
  // MoBA in one pass (onepass_plan.hpp): tiles whose rows' choices have a small union merge
  // everything on chip; the own-block pass and the waves skip their rows.
  const float factor = o.cuda.moba_one_pass_factor;
  if (!(factor >= 0.f) || std::isinf(factor))
    invalid("CudaOptions::moba_one_pass_factor", "a finite factor >= 0 (0 picks the default)",
            std::to_string(factor));
  const bool one_pass = hop && any_past && o.cuda.moba_one_pass && p.block_size % 128 == 0;
  OnePassPlan op;
  if (one_pass) {
    op = plan_one_pass(a, f.selection, (long long)dense_tiles * p.hq,
                       factor > 0.f ? factor : onepass_default_factor(p.block_size),
                       o.cuda.forward_stats != nullptr, ws);
    use_one_pass(a, op);
  }
  a.kind = kDenseMobaOwn;
  launch(dense_tiles, p.hq);
  if (one_pass) {
    a.kind = kMobaOnePass;
    launch(dense_tiles, p.hq);
  }
  report_forward_stats(o.cuda.forward_stats, one_pass ? op.counts.dev : nullptr, ws);
  if (!any_past) return;

  const WaveLists w = build_wave_lists(f.selection, p.total, p.hq, p.past_k(), pl.cu, p.batch,
                                       pl.blk_off, pl.num_blocks, ws, tile_rows,
                                       one_pass ? pl.tile128_off : nullptr,
                                       one_pass ? op.flags : nullptr);
  a.kind = kGatherWave;
  a.rows = w.rows;
  a.bucket_off = w.bucket_off;
  a.btile_off = w.btile_off;
  a.tile_bucket = w.tile_bucket;
  for (int s = 0; s < p.past_k(); ++s) {
    const long long rows_s = rows_with_slot(p, s);
    if (rows_s == 0) break;
    const long long buckets = (long long)p.hq * pl.num_blocks;
    const long long bound = rows_s / tile_rows + std::min(buckets, rows_s) + 1;
    a.wave = s;
    a.bucket_begin = int((long long)s * buckets);
    a.bucket_end = int((long long)(s + 1) * buckets);
    launch(int(std::min<long long>(bound, 0x7fffffffLL)), 1);
  }
}

}  // namespace

void cuda_forward(const Problem& p, const Forward& f, const RunOptions& o) {
  check_supported(p, "attention_forward");
  check_aligned("q", f.q);
  check_aligned("k", f.k);
  check_aligned("v", f.v);
  check_aligned("out", f.out);
  if (p.total == 0) return;
  DeviceGuard guard(p.device.index);
  Workspace ws(stream_of(o));
  const Plan pl = make_plan(p, ws);
  run_attention(p, f, o, pl, ws);
  if (pl.invalid)  // device-planned: a cu_seqlens that failed the device check gives NaN
    poison_if_invalid(pl.invalid, f.out.data, f.out.token_stride, f.out.head_stride, f.lse,
                      p.total, p.hq, p.head_dim, ws.stream());
}

void cuda_gate(const Problem& p, const Operand& q, const Operand& k, std::int32_t* selection,
               const RunOptions& o) {
  check_supported(p, "moba_gate");
  check_aligned("q", q);
  check_aligned("k", k);
  if (p.total == 0 || p.past_k() == 0) return;
  DeviceGuard guard(p.device.index);
  Workspace ws(stream_of(o));
  const Plan pl = make_plan(p, ws);
  run_gate(p, pl, q, k, selection, o.cuda, ws);
}

}  // namespace moba::detail
