// What attention to compute: full causal, MoBA (top-k of key blocks per query) or MoA
// (per-head sliding window + attention sink). docs/semantics.md is the exact definition.
#pragma once

#include <vector>

namespace moba {

enum class Mode { full, moba, moa };

// Per-head window of MoA for one layer: head h of a sequence of length N attends to the
// first `sink` tokens plus the last floor(alpha[h] + beta[h] * N) tokens up to itself.
// alpha/beta hold one value per query head, or one per KV head (shared by its query group).
struct MoaHeads {
  std::vector<float> alpha;
  std::vector<float> beta;
  int sink = 64;
};

struct AttentionParams {
  Mode mode = Mode::moba;
  int block_size = 0;          // MoBA: tokens per key block (moba_chunk_size)
  int topk = 0;                // MoBA: blocks kept per query, the own block included
  float softmax_scale = 0.0f;  // 0 means 1/sqrt(head_dim)
  MoaHeads moa;                // MoA only

  static AttentionParams full() {
    AttentionParams p;
    p.mode = Mode::full;
    return p;
  }
  static AttentionParams moba_blocks(int block_size, int topk) {
    AttentionParams p;
    p.mode = Mode::moba;
    p.block_size = block_size;
    p.topk = topk;
    return p;
  }
  static AttentionParams moa_heads(MoaHeads heads) {
    AttentionParams p;
    p.mode = Mode::moa;
    p.moa = std::move(heads);
    return p;
  }
};

// Where work runs. `automatic` picks the tensors' device: CUDA for GPU tensors, the fast
// CPU backend for host tensors. `reference` is the fp64 definition of truth (CPU only).
enum class Backend { automatic, reference, cpu, cuda };

// What a CUDA MoBA forward did (CudaOptions::forward_stats). Counts are over (128-row tile,
// head) pairs of the sm_90a warp-specialised kernel that have past blocks to visit.
struct CudaForwardStats {
  long long moba_tiles = 0;      // tiles with past blocks (the one-pass candidates)
  long long one_pass_tiles = 0;  // of those, the tiles that ran in one pass
  long long union_blocks = 0;    // sum of the one-pass tiles' union sizes (mean = / tiles)
};

// Settings of the CUDA backend. The defaults are the measured best; the other values exist so
// that one process (a test, a benchmark) can run and compare every kernel path.
struct CudaOptions {
  // Forward attention kernel. `automatic`: `sm90_warp_specialized` where it can run (the
  // measured fastest), else the sm_80 mma.sync kernel. `sm90_warp_specialized`: the sm_90a
  // kernel with a TMA producer warpgroup, mbarrier pipeline and two ping-ponged consumer
  // warpgroups; it needs a compute capability 9.0 device, a build with sm_90a code and a driver
  // that encodes TMA tensor maps. `sm90_wgmma`: an alias of `sm90_warp_specialized`, kept so
  // existing callers still run (it named an earlier lock-step sm_90a kernel, removed: the
  // warp-specialised one covers every shape it did and is faster on all of them). Asking for a
  // kernel where it cannot run throws moba::Error(unsupported); `sm80_mma_sync` runs on every
  // supported device.
  enum class ForwardKernel { automatic, sm90_wgmma, sm80_mma_sync, sm90_warp_specialized };
  ForwardKernel forward_kernel = ForwardKernel::automatic;
  // sm90_warp_specialized only: persistent CTAs (one per SM walking the tiles, the next tile's
  // loads overlapping this one's compute); false launches one CTA per tile. A measurement
  // variant.
  bool forward_persistent = true;
  // Backward key tiles: 0 picks (128 keys when MoBA blocks are a multiple of 128, else 64);
  // 64 forces 64-key tiles everywhere. Other values are an invalid_argument error.
  int backward_key_tile = 0;
  // Backward in the default (non-deterministic) mode: add every row's dQ by fp32 atomics in the
  // key pass, instead of the query-major pass for the causal rows. A measurement variant.
  bool backward_dq_all_atomic = false;
  // Backward key pass (dK, dV and the listed rows' dQ). `automatic`: `sm90_warp_specialized`
  // where it can run, except deterministic calls whose MoBA blocks fit one key tile with
  // topk - 1 <= 2 (deterministic mode's slot path runs on `sm80_mma_sync`, measured 1.8x
  // faster there on the H200), else `sm80_mma_sync`. `sm90_wgmma`: the sm_90a
  // warpgroup-MMA key pass (same work items, masks and outputs; deterministic mode supported:
  // it then adds no float atomics, like the mma.sync pass); it needs a compute capability 9.0
  // device and a build with sm_90a code, else moba::Error(unsupported).
  // `sm90_warp_specialized`: the same sm_90a pass warp-specialised (a producer warpgroup loads
  // K, V and every row tile into an mbarrier ring, TMA boxes for the implicit rows, cp.async for
  // gathered MoBA rows; the consumer warpgroups only compute); same requirements and errors as
  // `sm90_wgmma`; faster than it on every measured shape.
  enum class BackwardKernel { automatic, sm80_mma_sync, sm90_wgmma, sm90_warp_specialized };
  BackwardKernel backward_kernel = BackwardKernel::automatic;
  // sm90_wgmma / sm90_warp_specialized only: add each row's dQ (listed rows; every row with backward_dq_all_atomic) by
  // one bulk reduce-add per row from shared memory (the TMA unit) rather than per-thread fp32
  // atomics. A measurement variant (both are tested).
  bool backward_dq_bulk_reduce = true;
  // sm90_warp_specialized only: load the implicit row tiles (64 consecutive tokens of one head)
  // by TMA boxes; false gathers them by cp.async like the listed MoBA rows. A measurement
  // variant (both are tested).
  bool backward_row_tma = true;
  // MoBA forward on the sm_90a warp-specialised kernel, block sizes that are a multiple of 128:
  // a 128-row query tile whose rows' selected blocks have a small union U (U <= 16 and
  // U <= factor * the blocks each row selected) runs in one pass: the union blocks (each row
  // masked to the blocks it chose) and its own block in one online softmax, writing out/lse
  // directly; the other tiles run the own-block pass and the per-slot waves through the fp32
  // running state. false: every tile takes the waves. The factor 0 picks the break-even of
  // docs/architecture.md ("MoBA in one pass"), 1 + 286 / block_size; a negative or non-finite
  // factor is an invalid_argument error. The results agree within the dtype's rounding either
  // way (the order of the softmax merges differs). The sm_80 kernel always takes the waves.
  bool moba_one_pass = true;
  float moba_one_pass_factor = 0.0f;
  // When set, a MoBA forward fills it (counts of its one-pass plan) after synchronising the
  // stream: a debug statistic, not for CUDA-graph capture or production use.
  CudaForwardStats* forward_stats = nullptr;
  // MoBA gate's score + top-k kernel. `automatic`: `sm80_mma_sync` (as fast or faster on the
  // H200 at every measured shape but (d) 512K, where the wgmma kernel is 1.04x; see
  // docs/architecture.md, "The sm_90a gate"). `sm90_wgmma` (topk - 1 <= 16; above, the
  // shared-memory-list kernel runs): scores on sm_90a warpgroup MMA, the means streamed by TMA,
  // top-k lists in registers; it needs a compute capability 9.0 device, a build with sm_90a
  // code and a driver that encodes TMA tensor maps, else moba::Error(unsupported).
  // `sm80_mma_sync`: mma.sync scores, register lists for topk - 1 <= 8, shared memory above.
  // All select the same blocks (docs/semantics.md); they differ in speed only.
  enum class GateKernel { automatic, sm90_wgmma, sm80_mma_sync };
  GateKernel gate_kernel = GateKernel::automatic;
  // Backward: synchronise the stream after each stage and record the stage times (read by the
  // benchmarks through the backend's statistics). Slows the call; never for production use.
  bool collect_timing = false;
};

struct RunOptions {
  Backend backend = Backend::automatic;
  void* cuda_stream = nullptr;  // cudaStream_t; nullptr is the default stream
  bool deterministic = false;   // backward without float atomics (bit-identical repeats)
  int num_threads = 0;          // CPU backend; 0 means all hardware threads
  CudaOptions cuda;             // CUDA backend only; ignored by the others
};

}  // namespace moba
