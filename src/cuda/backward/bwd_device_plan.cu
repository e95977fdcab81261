#include "cuda/backward/bwd_device_plan.hpp"

#include <algorithm>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>
#include <string>

#include "core/validate.hpp"
#include "cuda/common/check.hpp"
#include "cuda/forward/seq_tables.hpp"

namespace moba::detail::bwd {
namespace {

constexpr int kThreads = 256;

__host__ __device__ __forceinline__ int cdiv(int a, int b) { return (a + b - 1) / b; }  // a >= 0
int grid_of(long long n) { return static_cast<int>(std::max(1ll, (n + kThreads - 1) / kThreads)); }

// Largest i in [0, n) with v[i] <= x, for v nondecreasing and v[0] <= x: the sequence (or
// group) that position x falls in, skipping empty ones.
__device__ int last_le(const int* v, int n, long long x) {
  int lo = 0, hi = n;
  while (hi - lo > 1) {
    const int mid = (lo + hi) >> 1;
    if (v[mid] <= x) lo = mid;
    else hi = mid;
  }
  return lo;
}

// Key-major tiles of a sequence of `len` tokens: each MoBA block (B > 0) is cut into tiles of
// KT keys from its start, the last one partial; without blocks the whole sequence is.
__device__ int key_tiles_of(int len, int B, int KT) {
  if (B == 0) return cdiv(len, KT);
  return (len / B) * cdiv(B, KT) + cdiv(len % B, KT);
}

// One CTA: koff[b] = key tiles of the sequences before b (koff[batch] = all of them).
__global__ void __launch_bounds__(kThreads) key_tile_offsets_kernel(const int* cu, int batch, int B, int KT,
                                                                    int* koff) {
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage scan_tmp;
  int carry = 0;
  for (int base = 0; base < batch; base += kThreads) {
    const int b = base + int(threadIdx.x);
    const int n = b < batch ? key_tiles_of(cu[b + 1] - cu[b], B, KT) : 0;
    int e, sum;
    Scan(scan_tmp).ExclusiveSum(n, e, sum);
    __syncthreads();
    if (b < batch) koff[b] = carry + e;
    carry += sum;
  }
  if (threadIdx.x == 0) koff[batch] = carry;
}

// Block id of block j of sequence b (see BackwardPlan::list).
__device__ __forceinline__ long long block_id(const int* cu, int b, int j, int B) {
  return static_cast<long long>(cu[b] / B) + j + b;
}

// One entry per selection slot: key (block id, KV head, slot) or `nkeys` when unused.
__global__ void entries_kernel(const std::int32_t* sel, int total, int hq, int group, int hkv, int P, int B,
                               const int* cu, int batch, const int* invalid, unsigned nkeys, unsigned* keys,
                               int* vals) {
  const std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= std::int64_t(total) * hq * P) return;
  const int s = static_cast<int>(i % P);
  const std::int64_t row = i / P;
  unsigned key = nkeys;
  if (*invalid == 0) {
    const int t = static_cast<int>(row / hq), h = static_cast<int>(row % hq);
    const int b = last_le(cu, batch, t);
    const int own = (t - cu[b]) / B;
    const int j = sel[i];
    if (j >= 0 && j < own) key = (unsigned(block_id(cu, b, j, B)) * hkv + h / group) * P + s;
  }
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

// slot[i] = selection slot of sorted entry i (its key modulo P); -1 for unused entries.
__global__ void list_slots_kernel(const unsigned* keys, long long n, unsigned nkeys, int P, signed char* slot) {
  const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const unsigned k = keys[i];
  slot[i] = k < nkeys ? static_cast<signed char>(k % unsigned(P)) : static_cast<signed char>(-1);
}

// A (key tile, KV head) before splitting: its item over all row tiles, n of them (0: unused).
struct KeyTile {
  KeyItem it;
  int n;
};

struct TileArgs {
  const int* cu;
  const int* koff;
  const int* win;       // MoA windows [hq * batch]
  const int* list_off;  // nullptr without lists
  int batch, hkv, group, B, KT, P, moa, moa_sink;
  long long positions;  // bound on (key tile, KV head) pairs: the grid
};

// MoA: the rows that see a key tile [kp0, kp0 + n) of sequence b, KV head g, end before
// position kp0 + n - 1 + (widest window of the group), or at the end when the tile starts in
// the sink (sink keys are seen by every later row).
__device__ int moa_rows_end(const TileArgs& a, int b, int g, int kp0, int n, int len) {
  if (kp0 < a.moa_sink) return len;
  int wmax = 1;
  for (int h = g * a.group; h < (g + 1) * a.group; ++h) wmax = max(wmax, a.win[std::int64_t(h) * a.batch + b]);
  return static_cast<int>(min(static_cast<long long>(len), static_cast<long long>(kp0) + n - 1 + wmax));
}

// One thread per (key tile, KV head), tile major: the item over all its rows, and the sum of
// row tiles (for the split rule).
__global__ void __launch_bounds__(kThreads) key_tiles_kernel(const TileArgs a, KeyTile* tiles,
                                                             unsigned long long* row_tiles) {
  using Reduce = cub::BlockReduce<long long, kThreads>;
  __shared__ typename Reduce::TempStorage red_tmp;
  const long long i = static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x;
  long long n_rows = 0;
  if (i < a.positions) {
    const int pos = static_cast<int>(i / a.hkv), g = static_cast<int>(i % a.hkv);
    KeyTile kt{};
    if (pos < a.koff[a.batch]) {
      const int b = last_le(a.koff, a.batch, pos), lt = pos - a.koff[b];
      const int begin = a.cu[b], len = a.cu[b + 1] - begin;
      int j = 0, ks, region_end;
      if (a.B > 0) {
        const int per_block = cdiv(a.B, a.KT);
        j = lt / per_block;
        ks = j * a.B + (lt % per_block) * a.KT;
        region_end = min(len, (j + 1) * a.B);
      } else {
        ks = lt * a.KT;
        region_end = len;
      }
      KeyItem& it = kt.it;
      it.key_start = begin + ks;
      it.key_len = min(a.KT, region_end - ks);
      it.g = g;
      it.impl_begin = it.key_start;
      it.impl_end = begin + (a.moa ? moa_rows_end(a, b, g, ks, it.key_len, len) : region_end);
      it.partial = -1;
      it.seq = b;
      it.sink_end = begin + (a.moa ? a.moa_sink : 0);
      const int n_impl = cdiv(it.impl_end - it.impl_begin, 64) * a.group;
      if (a.list_off != nullptr) {
        const long long kb = (block_id(a.cu, b, j, a.B) * a.hkv + g) * a.P;
        it.list_begin = a.list_off[kb];
        it.list_len = a.list_off[kb + a.P] - it.list_begin;
      }
      kt.n = n_impl + cdiv(it.list_len, 64);
      n_rows = kt.n;
    }
    tiles[i] = kt;
  }
  const long long sum = Reduce(red_tmp).Sum(n_rows);
  if (threadIdx.x == 0 && sum > 0) atomicAdd(row_tiles, static_cast<unsigned long long>(sum));
}

struct SplitCounts {
  int items, partials, splits;
};
struct AddCounts {
  __host__ __device__ SplitCounts operator()(const SplitCounts& x, const SplitCounts& y) const {
    return {x.items + y.items, x.partials + y.partials, x.splits + y.splits};
  }
};

// The split rule: a key tile with more than `cap` row tiles (cap: 16, or twice the average
// per resident CTA) is cut into chunks of equal size; each chunk's dK/dV goes to a partial slot.
__device__ int split_cap(unsigned long long row_tiles, int slots) {
  const unsigned long long per = (row_tiles + 2ull * slots - 1) / (2ull * slots);
  return static_cast<int>(max(16ull, per));
}
__device__ void split_shape(int n, int cap, int& chunk, int& count) {
  if (n <= cap) {
    chunk = n;
    count = 1;
    return;
  }
  const int k = cdiv(n, cap);
  chunk = cdiv(n, k);
  count = cdiv(n, chunk);
}

__global__ void split_counts_kernel(const KeyTile* tiles, long long positions, const unsigned long long* row_tiles,
                                    int slots, SplitCounts* counts) {
  const long long i = static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= positions) return;
  const int n = tiles[i].n;
  SplitCounts c{0, 0, 0};
  if (n > 0) {
    const int cap = split_cap(*row_tiles, slots);
    int chunk, count;
    split_shape(n, cap, chunk, count);
    c = n <= cap ? SplitCounts{1, 0, 0} : SplitCounts{count, count, 1};
  }
  counts[i] = c;
}

struct EmitArgs {
  const KeyTile* tiles;
  const SplitCounts* prefix;  // exclusive
  const unsigned long long* row_tiles;
  long long positions;
  int slots, max_items, max_splits, max_partials;
  KeyItem* items;       // unsorted, [max_items]
  unsigned* sizes;      // sort keys (row tiles of the item; 0 past the count), zeroed before
  int* order;           // sort values: positions 0 .. max_items - 1
  SplitTile* splits;
  int* n_items;
  int* n_splits;
};

// One thread per (key tile, KV head) position (and per item position for `order`): writes the
// tile's items at its prefix, in tile order, chunks in row order.
__global__ void emit_key_items_kernel(const EmitArgs a) {
  const long long i = static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x;
  if (i < a.max_items) a.order[i] = static_cast<int>(i);
  if (i >= a.positions) return;
  const KeyTile t = a.tiles[i];
  const SplitCounts p = a.prefix[i];
  if (i == a.positions - 1) {  // the totals: last prefix + last count
    int items = p.items, splits = p.splits;
    if (t.n > 0) {
      int chunk, count;
      const int cap = split_cap(*a.row_tiles, a.slots);
      split_shape(t.n, cap, chunk, count);
      items += t.n <= cap ? 1 : count;
      splits += t.n <= cap ? 0 : 1;
    }
    *a.n_items = min(items, a.max_items);
    *a.n_splits = min(splits, a.max_splits);
  }
  if (t.n == 0) return;
  const int cap = split_cap(*a.row_tiles, a.slots);
  KeyItem it = t.it;
  if (t.n <= cap) {
    if (p.items >= a.max_items) return;  // cannot happen (the bounds hold); never write past
    it.rt_begin = 0;
    it.rt_end = t.n;
    a.items[p.items] = it;
    a.sizes[p.items] = static_cast<unsigned>(t.n);
    return;
  }
  int chunk, count;
  split_shape(t.n, cap, chunk, count);
  if (p.items + count > a.max_items || p.partials + count > a.max_partials || p.splits >= a.max_splits) return;
  a.splits[p.splits] = SplitTile{it.key_start, it.key_len, it.g, p.partials, count};
  for (int c = 0; c < count; ++c) {
    it.rt_begin = c * chunk;
    it.rt_end = min(t.n, (c + 1) * chunk);
    it.partial = p.partials + c;
    a.items[p.items + c] = it;
    a.sizes[p.items + c] = static_cast<unsigned>(it.rt_end - it.rt_begin);
  }
}

template <class Item>
__global__ void gather_kernel(const Item* in, const int* order, const int* n, int max_n, Item* out) {
  const long long i = static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x;
  if (i < max_n && i < *n) out[i] = in[order[i]];
}

struct DqArgs {
  const int* cu;
  const int* toff;  // 64-row tiles per sequence (prefix)
  const int* win;
  int batch, hq, group, B, moba, moa, any_block, moa_sink, max_items;
};

// Wave 0 of the dQ pass: one item per (64-token tile, query head), tile major, over the keys
// the tile's rows see by the causal rule of the mode.
__global__ void dq_items_kernel(const DqArgs a, DqItem* items, unsigned* sizes, int* order, int* n_items) {
  const long long i = static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= a.max_items) return;
  order[i] = static_cast<int>(i);
  const long long n = static_cast<long long>(a.toff[a.batch]) * a.hq;
  if (i == 0) *n_items = static_cast<int>(min(n, static_cast<long long>(a.max_items)));
  if (i >= n) {
    sizes[i] = 0;
    return;
  }
  const int tile = static_cast<int>(i / a.hq), h = static_cast<int>(i % a.hq);
  const int b = last_le(a.toff, a.batch, tile), qt = tile - a.toff[b];
  const int begin = a.cu[b], len = a.cu[b + 1] - begin;
  const int rows = min(64, len - qt * 64);
  DqItem it{};
  it.diag = 1;
  it.g = h / a.group;
  it.head = h;
  it.row_begin = begin + qt * 64;
  it.row_len = rows;
  it.seq_begin = begin;
  if (a.moa) {
    const int wh = a.win[std::int64_t(h) * a.batch + b];
    int first = max(0, qt * 64 - wh + 1) / 64;
    int sink_tiles = cdiv(a.moa_sink, 64);
    if (sink_tiles >= first) first = sink_tiles = 0;
    it.key_start = begin + first * 64;
    it.n_key_tiles = qt - first + 1;
    it.sink_tiles = sink_tiles;
    it.seq_begin = begin;
    it.moa_w = wh;
  } else if (a.any_block) {  // keys from the own block of the tile's first row, masked per row
    const int lo = (qt * 64 / a.B) * a.B;
    it.key_start = begin + lo;
    it.n_key_tiles = cdiv(qt * 64 + rows - lo, 64);
    it.seq_begin = begin;
  } else {
    const int first = a.moba ? (qt * 64 / a.B) * (a.B / 64) : 0;
    it.key_start = begin + first * 64;
    it.n_key_tiles = qt - first + 1;
  }
  items[i] = it;
  sizes[i] = static_cast<unsigned>(it.n_key_tiles + it.sink_tiles);
}

struct ListedArgs {
  const int* cu;
  const int* off;  // list offsets [nkeys + 1]
  int batch, hkv, P, B;
  long long groups;   // block ids * hkv (keys of one slot)
  int max_per_wave;
};

// pieces[s * groups + kg] = 64-row pieces of the list of key kg * P + s (slot major), and 0 at
// the end (so the exclusive scan also gives each slot's total).
__global__ void listed_pieces_kernel(const ListedArgs a, int* pieces) {
  const long long i = static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x;
  const long long nkeys = a.groups * a.P;
  if (i > nkeys) return;
  if (i == nkeys) {
    pieces[i] = 0;
    return;
  }
  const int s = static_cast<int>(i / a.groups);
  const long long kg = i % a.groups, k = kg * a.P + s;
  pieces[i] = cdiv(a.off[k + 1] - a.off[k], 64);
}

// Wave 1 + s (deterministic mode): one item per 64 entries of a slot-s list, in (block, KV
// head) order; each wave touches every row at most once.
__global__ void listed_items_kernel(const ListedArgs a, const int* prefix, DqItem* items, int* n_items) {
  const long long q = static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x;
  if (q >= static_cast<long long>(a.max_per_wave) * a.P) return;
  const int s = static_cast<int>(q / a.max_per_wave), r = static_cast<int>(q % a.max_per_wave);
  const long long seg = s * a.groups;
  const int base = prefix[seg];
  const int n_s = min(prefix[seg + a.groups] - base, a.max_per_wave);
  if (r == 0) n_items[s] = n_s;
  if (r >= n_s) return;
  // the key of this piece: the last group of the slot whose first piece is <= base + r
  long long lo = seg, hi = seg + a.groups;
  while (hi - lo > 1) {
    const long long mid = (lo + hi) >> 1;
    if (prefix[mid] <= base + r) lo = mid;
    else hi = mid;
  }
  const int piece = base + r - prefix[lo];
  const long long kg = lo - seg, k = kg * a.P + s;
  const long long id = kg / a.hkv;
  const int g = static_cast<int>(kg % a.hkv);
  // the sequence of the block id: the last b with cu[b] / B + b <= id
  int bl = 0, bh = a.batch;
  while (bh - bl > 1) {
    const int mid = (bl + bh) >> 1;
    if (static_cast<long long>(a.cu[mid] / a.B) + mid <= id) bl = mid;
    else bh = mid;
  }
  const int begin = a.cu[bl];
  const int j = static_cast<int>(id - block_id(a.cu, bl, 0, a.B));
  const int e = a.off[k] + piece * 64;
  DqItem it{};
  it.key_start = begin + j * a.B;
  it.n_key_tiles = cdiv(a.B, 64);
  it.diag = 0;
  it.g = g;
  it.head = -1;
  it.row_begin = e;
  it.row_len = min(64, a.off[k + 1] - e);
  it.seq_begin = begin;
  it.key_end = begin + (j + 1) * a.B;
  items[static_cast<long long>(s) * a.max_per_wave + r] = it;
}

int bits_for(long long max_value) {
  int bits = 1;
  while (bits < 32 && (1ll << bits) <= max_value) ++bits;
  return bits;
}

void check_int_range(long long n, const char* what) {
  if (n >= (1ll << 31) - 1)
    fail(ErrorKind::unsupported, std::string("cuda backend: backward plan too large (") + what + ": " +
                                     std::to_string(n) + ", at most 2^31 - 2)");
}

// Sorts `n` items of `in` by `sizes` descending, stably (equal sizes keep their order), into
// `out` (the first *count of them).
template <class Item>
void sort_longest_first(const Item* in, unsigned* sizes, int* order, int n, int bits, const int* count,
                        Item* out, cuda::Workspace& tmp, std::size_t& tmp_bytes, Meter& mem,
                        cudaStream_t stream) {
  unsigned* sizes_out = tmp.alloc<unsigned>(n, "plan sort keys");
  int* order_out = tmp.alloc<int>(n, "plan sort order");
  std::size_t bytes = 0;
  MOBA_CUDA_CHECK(cub::DeviceRadixSort::SortPairsDescending(nullptr, bytes, sizes, sizes_out, order, order_out, n,
                                                            0, bits, stream));
  void* scratch = tmp.alloc_bytes(bytes, "plan sort");
  mem.add(std::size_t(n) * 8 + bytes);
  tmp_bytes += std::size_t(n) * 8 + bytes;
  MOBA_CUDA_CHECK(cub::DeviceRadixSort::SortPairsDescending(scratch, bytes, sizes, sizes_out, order, order_out, n,
                                                            0, bits, stream));
  gather_kernel<Item><<<grid_of(n), kThreads, 0, stream>>>(in, order_out, count, n, out);
  MOBA_CUDA_LAUNCH_CHECK();
}

}  // namespace

BackwardPlan plan_backward(const PlanRequest& r, cuda::Workspace& ws, cuda::Workspace& tmp, Meter& mem,
                           std::size_t& tmp_bytes, const int** moa_window) {
  auto scratch_bytes = [&](long long bytes) {  // held in `tmp`
    mem.add(static_cast<std::size_t>(bytes));
    tmp_bytes += static_cast<std::size_t>(bytes);
  };
  const cudaStream_t stream = ws.stream();
  const int G = r.hq / r.hkv, P = r.moba ? r.past : 0, B = r.moba ? r.block_size : 0, KT = r.key_tile;
  const long long total = r.total, nonempty = std::min<long long>(r.batch, r.total);
  BackwardPlan plan;

  // 1. Sequence tables (the forward's): validated cu, 64-row tile offsets, MoA windows, flag.
  cuda::SeqTableArgs sa{};
  sa.cu_in = r.cu_dev;
  sa.batch = r.batch;
  sa.total = r.total;
  sa.block_size = B;
  sa.hq = r.moa ? r.hq : 0;
  sa.moa_sink = r.moa_sink;
  if (sa.hq > cuda::kPlanMaxMoaHeads) {
    std::vector<float> ab(*r.moa_alpha);
    ab.insert(ab.end(), r.moa_beta->begin(), r.moa_beta->end());
    sa.moa_ab_dev = ws.upload(ab, "MoA window parameters");
  } else {
    for (int h = 0; h < sa.hq; ++h) {
      sa.moa_alpha[h] = (*r.moa_alpha)[h];
      sa.moa_beta[h] = (*r.moa_beta)[h];
    }
  }
  const std::int64_t n_tables = cuda::seq_tables_size(r.batch, sa.hq);
  int* tables = ws.alloc<int>(n_tables, "sequence tables");
  mem.add(n_tables * 4);
  cuda::build_seq_tables(sa, tables, stream);
  const int nb1 = r.batch + 1;
  const int* cu = tables;
  const int* toff = tables + nb1;
  const int* win = r.moa ? tables + 4 * nb1 : nullptr;
  const int* invalid = tables + n_tables - 1;
  if (r.cu_from_caller_gpu) plan.invalid = invalid;
  *moa_window = win;

  // 2. Key tiles per sequence.
  int* koff = ws.alloc<int>(nb1, "key tile offsets");
  mem.add(nb1 * 4);
  key_tile_offsets_kernel<<<1, kThreads, 0, stream>>>(cu, r.batch, B, KT, koff);
  MOBA_CUDA_LAUNCH_CHECK();

  // 3. Row lists (MoBA with past blocks): keyed entries, stably radix-sorted, then offsets.
  const long long E = total * r.hq * P;
  if (P > 0) {
    plan.n_block_ids = total / B + r.batch + 1;
    const long long nkeys = plan.n_block_ids * r.hkv * P;
    check_int_range(E, "selection entries total * hq * (topk - 1)");
    check_int_range(nkeys + 1, "list keys");
    int* list = ws.alloc<int>(E, "per-block row lists");
    int* off = ws.alloc<int>(nkeys + 1, "list offsets");
    mem.add((E + nkeys + 1) * 4);
    unsigned* keys_in = tmp.alloc<unsigned>(E, "list sort keys");
    unsigned* keys_out = tmp.alloc<unsigned>(E, "list sort keys");
    int* vals_in = tmp.alloc<int>(E, "list sort values");
    std::size_t bytes = 0;
    const int end_bit = bits_for(nkeys);
    MOBA_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, bytes, keys_in, keys_out, vals_in, list,
                                                    static_cast<int>(E), 0, end_bit, stream));
    void* scratch = tmp.alloc_bytes(bytes, "list sort");
    scratch_bytes(E * 12 + static_cast<long long>(bytes));
    entries_kernel<<<grid_of(E), kThreads, 0, stream>>>(r.selection, r.total, r.hq, G, r.hkv, P, B, cu, r.batch,
                                                        invalid, static_cast<unsigned>(nkeys), keys_in, vals_in);
    MOBA_CUDA_LAUNCH_CHECK();
    MOBA_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(scratch, bytes, keys_in, keys_out, vals_in, list,
                                                    static_cast<int>(E), 0, end_bit, stream));
    offsets_kernel<<<grid_of(nkeys + 1), kThreads, 0, stream>>>(keys_out, static_cast<int>(E),
                                                                static_cast<unsigned>(nkeys), off);
    MOBA_CUDA_LAUNCH_CHECK();
    if (r.list_slots) {
      signed char* slot = ws.alloc<signed char>(E, "list entry slots");
      mem.add(E);
      list_slots_kernel<<<grid_of(E), kThreads, 0, stream>>>(keys_out, E, static_cast<unsigned>(nkeys), P, slot);
      MOBA_CUDA_LAUNCH_CHECK();
      plan.list_slot = slot;
    }
    plan.list = list;
    plan.list_off = off;
  }

  // 4. Key-major items. Bounds: a sequence has at most len / KT + 1 tiles, plus one partial tile
  // per MoBA block when KT does not divide the block size; the splits use at most
  // min(4 * slots, row tiles / 8) partial slots (a split tile of n > cap row tiles gets
  // ceil(n / chunk) <= ceil(n / cap) < 2 n / cap of them, and cap >= max(16, row tiles / (2 slots))).
  const long long blocks_bound = B > 0 && B % KT != 0 ? total / B + nonempty : 0;
  const long long tiles_bound = total / KT + 1 + nonempty + blocks_bound;
  const long long positions = tiles_bound * r.hkv;
  long long row_tiles_bound = 4ll * r.slots * 16;  // full / MoA: the 4 * slots bound only
  long long max_item_rows = (total / 64 + 1) * G;
  if (B > 0) {
    const long long impl = (cdiv(B, 64) + 0ll) * G;
    row_tiles_bound = positions * (impl + 1) + cdiv(B, KT) * (E / 64) + 1;
    max_item_rows = impl + E / 64 + 1;
  }
  plan.max_partials = static_cast<int>(std::min<long long>(4ll * r.slots, row_tiles_bound / 8 + 1));
  plan.max_splits = plan.max_partials / 2 + 1;
  const long long max_items = positions + plan.max_partials;
  check_int_range(max_items, "key-major items");
  plan.max_key_items = static_cast<int>(max_items);
  {
    const TileArgs ta{cu, koff, win, plan.list_off, r.batch, r.hkv, G, B, KT, P, r.moa ? 1 : 0, r.moa_sink, positions};
    KeyTile* tiles = tmp.alloc<KeyTile>(positions, "key tiles");
    auto* row_tiles = tmp.alloc<unsigned long long>(1, "row tile count");
    auto* prefix = tmp.alloc<SplitCounts>(positions, "split prefix");
    auto* counts = tmp.alloc<SplitCounts>(positions, "split counts");
    KeyItem* unsorted = tmp.alloc<KeyItem>(max_items, "unsorted key items");
    unsigned* sizes = tmp.alloc<unsigned>(max_items, "key item sizes");
    int* order = tmp.alloc<int>(max_items, "key item order");
    scratch_bytes(positions * (sizeof(KeyTile) + 2 * sizeof(SplitCounts)) + max_items * (sizeof(KeyItem) + 8) + 8);
    KeyItem* items = ws.alloc<KeyItem>(max_items, "backward work items");
    auto* splits = ws.alloc<SplitTile>(plan.max_splits, "split tiles");
    int* counters = ws.alloc<int>(2 + 1 + std::max(P, 1), "plan counts");
    mem.add(max_items * sizeof(KeyItem) + plan.max_splits * sizeof(SplitTile) + 64);
    MOBA_CUDA_CHECK(cudaMemsetAsync(row_tiles, 0, sizeof(unsigned long long), stream));
    MOBA_CUDA_CHECK(cudaMemsetAsync(sizes, 0, std::size_t(max_items) * sizeof(unsigned), stream));
    key_tiles_kernel<<<grid_of(positions), kThreads, 0, stream>>>(ta, tiles, row_tiles);
    MOBA_CUDA_LAUNCH_CHECK();
    split_counts_kernel<<<grid_of(positions), kThreads, 0, stream>>>(tiles, positions, row_tiles, r.slots, counts);
    MOBA_CUDA_LAUNCH_CHECK();
    std::size_t bytes = 0;
    MOBA_CUDA_CHECK(cub::DeviceScan::ExclusiveScan(nullptr, bytes, counts, prefix, AddCounts{}, SplitCounts{0, 0, 0},
                                                   static_cast<int>(positions), stream));
    void* scratch = tmp.alloc_bytes(bytes, "split scan");
    scratch_bytes(static_cast<long long>(bytes));
    MOBA_CUDA_CHECK(cub::DeviceScan::ExclusiveScan(scratch, bytes, counts, prefix, AddCounts{}, SplitCounts{0, 0, 0},
                                                   static_cast<int>(positions), stream));
    EmitArgs ea{tiles, prefix, row_tiles, positions, r.slots, plan.max_key_items, plan.max_splits, plan.max_partials,
                unsorted, sizes, order, splits, counters, counters + 1};
    emit_key_items_kernel<<<grid_of(std::max(positions, max_items)), kThreads, 0, stream>>>(ea);
    MOBA_CUDA_LAUNCH_CHECK();
    sort_longest_first(unsorted, sizes, order, plan.max_key_items, bits_for(max_item_rows), counters, items, tmp,
                       tmp_bytes, mem, stream);
    plan.key_items = items;
    plan.n_key_items = counters;
    plan.splits = splits;
    plan.n_splits = counters + 1;

    // 5. dQ wave 0: (64-token tile, head) items, longest first.
    if (r.dq_items) {
      const long long dq_max = (total + 63 * nonempty) / 64 * r.hq + 1;
      check_int_range(dq_max, "dQ items");
      plan.max_dq_items = static_cast<int>(dq_max);
      DqItem* dq_unsorted = tmp.alloc<DqItem>(dq_max, "unsorted dQ items");
      unsigned* dq_sizes = tmp.alloc<unsigned>(dq_max, "dQ item sizes");
      int* dq_order = tmp.alloc<int>(dq_max, "dQ item order");
      DqItem* dq_items = ws.alloc<DqItem>(dq_max, "dQ work items");
      mem.add(dq_max * sizeof(DqItem));
      scratch_bytes(dq_max * (sizeof(DqItem) + 8));
      DqArgs da{cu, toff, win, r.batch, r.hq, G, B, r.moba ? 1 : 0, r.moa ? 1 : 0,
                (r.moba && B % 64 != 0) ? 1 : 0, r.moa_sink, plan.max_dq_items};
      dq_items_kernel<<<grid_of(dq_max), kThreads, 0, stream>>>(da, dq_unsorted, dq_sizes, dq_order, counters + 2);
      MOBA_CUDA_LAUNCH_CHECK();
      const long long max_key_tiles = total / 64 + 2 + (r.moa ? cdiv(r.moa_sink, 64) : 0);
      sort_longest_first(dq_unsorted, dq_sizes, dq_order, plan.max_dq_items, bits_for(max_key_tiles), counters + 2,
                         dq_items, tmp, tmp_bytes, mem, stream);
      plan.dq_items = dq_items;
      plan.n_dq_items = counters + 2;
    }

    // 6. dQ waves 1 + s (deterministic mode): 64-entry pieces of each slot's lists. A slot has
    // at most total * hq entries in at most min(groups, total * hq) non-empty lists.
    if (r.dq_items && r.listed_waves && P > 0) {
      const long long groups = plan.n_block_ids * r.hkv, nkeys = groups * P;
      const long long per_wave = total * r.hq / 64 + 1 + std::min(groups, total * r.hq);
      check_int_range(per_wave * P, "listed dQ items");
      plan.max_listed_items = static_cast<int>(per_wave);
      ListedArgs la{cu, plan.list_off, r.batch, r.hkv, P, B, groups, plan.max_listed_items};
      int* pieces = tmp.alloc<int>(nkeys + 1, "listed pieces");
      int* pieces_prefix = tmp.alloc<int>(nkeys + 1, "listed pieces prefix");
      DqItem* listed = ws.alloc<DqItem>(per_wave * P, "listed dQ items");
      mem.add(per_wave * P * sizeof(DqItem));
      scratch_bytes((nkeys + 1) * 8);
      listed_pieces_kernel<<<grid_of(nkeys + 1), kThreads, 0, stream>>>(la, pieces);
      MOBA_CUDA_LAUNCH_CHECK();
      std::size_t scan_bytes = 0;
      MOBA_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, scan_bytes, pieces, pieces_prefix,
                                                    static_cast<int>(nkeys + 1), stream));
      void* scan_tmp = tmp.alloc_bytes(scan_bytes, "listed scan");
      scratch_bytes(static_cast<long long>(scan_bytes));
      MOBA_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(scan_tmp, scan_bytes, pieces, pieces_prefix,
                                                    static_cast<int>(nkeys + 1), stream));
      listed_items_kernel<<<grid_of(per_wave * P), kThreads, 0, stream>>>(la, pieces_prefix, listed, counters + 3);
      MOBA_CUDA_LAUNCH_CHECK();
      plan.listed_items = listed;
      plan.n_listed_items = counters + 3;
    }
  }
  return plan;
}

}  // namespace moba::detail::bwd
