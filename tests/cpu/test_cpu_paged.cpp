// Decode and chunked prefill over the paged KV cache (moba/kv_cache.hpp) against the one-shot
// prefill of the same tokens, in fp64 (docs/semantics.md).
//
// A random shape's sequences are fed to a PagedKVCache in random chunks (decode steps of one
// token, longer chunks, empty chunks, a batch of mixed lengths, rows mapped to scattered cache
// slots, every page size). Each chunk's rows must equal the rows of a one-shot prefill of the
// sequence up to the chunk's end: for full attention and MoBA (causal) that is the prefill of
// the whole sequence; MoA's window depends on the length N, which is the length after the chunk.
// Tolerances are those of the one-shot CPU tests (tests/cpu/test_cpu_attention.cpp).
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <numeric>

#include "paged_check.hpp"

namespace moba::testing {
namespace {

// The host storage of one cache.
struct CacheStorage {
  HostTensor k, v, means;
  std::vector<std::int32_t> table, lens;
  std::vector<double> sums;
  PagedKV view;

  explicit CacheStorage(const KVCacheConfig& c) {
    const KVCacheShapes s = kv_cache_shapes(c);
    k = HostTensor(c.dtype, s.k_pages);
    v = HostTensor(c.dtype, s.v_pages);
    table.assign(s.page_table[0] * s.page_table[1] * s.page_table[2], 7);
    lens.assign(s.seq_lens[0], 7);
    view.k_pages = k.view();
    view.v_pages = v.view();
    view.page_table = TensorView::contiguous(table.data(), DType::i32, Device::cpu(), {s.page_table[0], s.page_table[1], s.page_table[2]});
    view.seq_lens = TensorView::contiguous(lens.data(), DType::i32, Device::cpu(), {s.seq_lens[0]});
    if (c.block_size > 0) {
      means = HostTensor(c.dtype, s.block_means);
      means.fill(-3.0);  // never read before written
      sums.assign(s.block_sums[0] * s.block_sums[1] * s.block_sums[2], 123.0);
      view.block_means = means.view();
      view.block_sums = TensorView::contiguous(sums.data(), DType::f64, Device::cpu(), {s.block_sums[0], s.block_sums[1], s.block_sums[2]});
    }
  }
};

Fed feed(const Shape& s, const Inputs& in, const FeedPlan& plan) {
  const int batch = static_cast<int>(s.seqlens.size()), K = std::max(s.params.topk - 1, 0);
  const KVCacheConfig c = feed_cache_config(s, plan);
  CacheStorage storage(c);
  PagedKVCache cache(c, storage.view);
  const std::vector<int> slot = feed_slots(c, batch);
  Fed r = empty_fed(s);
  RunOptions o;
  o.num_threads = plan.threads;
  for (const FeedStep& st : feed_steps(plan, in.cu, slot)) {
    const HostTensor k = gather_rows(in.k, st.cu_src, st.from, st.n), v = gather_rows(in.v, st.cu_src, st.from, st.n);
    HostTensor q = gather_rows(in.q, st.cu_src, st.from, st.n);
    const std::int64_t tq = st.cu.back();
    std::vector<int> cu = st.cu;
    TensorView cu_view = TensorView::contiguous(cu.data(), DType::i32, Device::cpu(), {std::int64_t(cu.size())});
    HostTensor kk = k, vv = v;
    cache.append(kk.view(), vv.view(), cu_view, st.slots, o);
    HostTensor out(s.dtype, {tq, s.hq, s.d});
    std::vector<float> lse(std::size_t(s.hq) * tq + 1);
    std::vector<std::int32_t> sel(std::size_t(tq) * s.hq * K + 1);
    TensorView sel_view = s.params.mode == Mode::moba
                              ? TensorView::contiguous(sel.data(), DType::i32, Device::cpu(), {tq, s.hq, K})
                              : TensorView{};
    cache.attend(q.view(), cu_view, st.slots, s.params, out.view(),
                 TensorView::contiguous(lse.data(), DType::f32, Device::cpu(), {s.hq, tq}), sel_view, o);
    r.max_used_pages = std::max(r.max_used_pages, cache.used_pages());
    scatter_step(r, s, st, in.cu, out, lse, sel);
    for (std::size_t i = 0; i < st.seqs.size(); ++i)
      EXPECT_EQ(cache.seq_len(slot[st.seqs[i]]), st.from[i] + st.n[i]);
  }
  // Incremental block means against recomputed ones (exactly: same fp64 sums, same rounding).
  if (c.block_size > 0)
    for (int b = 0; b < batch; ++b)
      for (int g = 0; g < s.hkv; ++g)
        for (int j = 0; j < s.seqlens[b] / c.block_size; ++j)
          for (int d = 0; d < s.d; ++d) {
            double sum = 0;
            for (int x = j * c.block_size; x < (j + 1) * c.block_size; ++x)
              sum += in.k.get((std::int64_t(in.cu[b] + x) * s.hkv + g) * s.d + d);
            const double mean = detail::round_to(s.dtype, static_cast<float>(sum) / static_cast<float>(c.block_size));
            const std::int64_t at = ((std::int64_t(slot[b]) * s.hkv + g) * storage.means.shape[2] + j) * s.d + d;
            EXPECT_EQ(storage.means.get(at), mean) << s.str() << " block " << j;
          }
  return r;
}

TEST(CpuPaged, ChunkedDecodeMatchesOneShotPrefill) {
  std::mt19937 rng(2026);
  RandomShapeOptions opt;
  opt.max_len = 160;
  int near_ties = 0, shapes = 0;
  double worst = 0;
  for (int iter = 0; iter < 60; ++iter) {
    const Shape s = random_shape(rng, opt);
    Inputs in = make_inputs(s, 300 + iter);
    const FeedPlan plan = random_plan(rng, s);
    const Fed fed = feed(s, in, plan);
    check_against_prefill(s, in, fed, near_ties, worst);
    ++shapes;
    if (::testing::Test::HasFailure()) {
      std::printf("failing shape %s page %d evict %d\n", s.str().c_str(), plan.page_size, plan.moa_evict);
      break;
    }
  }
  std::printf("[ paged ] %d shapes, worst err/allowed %.3f, near-tie selection differences %d\n", shapes, worst, near_ties);
}

// A group of 16 query heads per KV head, every mode (the GPU splits such groups into chunks;
// tests/cuda/test_cuda_decode.cpp runs the same shapes).
TEST(CpuPaged, WideQueryGroups) {
  for (Mode mode : {Mode::full, Mode::moba, Mode::moa}) {
    const Shape s = wide_query_group_shape(mode);
    Inputs in = make_inputs(s, 11);
    const FeedPlan plan = wide_query_group_plan();
    int near_ties = 0;
    double worst = 0;
    check_against_prefill(s, in, feed(s, in, plan), near_ties, worst);
  }
}

// A small cache on which the error cases run.
struct SmallCache {
  KVCacheConfig c;
  std::unique_ptr<CacheStorage> storage;
  std::unique_ptr<PagedKVCache> cache;
  explicit SmallCache(int num_pages = 4, int block = 4) {
    c.dtype = DType::f32;
    c.num_q_heads = 4;
    c.num_kv_heads = 2;
    c.head_dim = 64;
    c.page_size = 4;
    c.num_pages = num_pages;
    c.max_rows = 2;
    c.max_seqlen = 16;
    c.block_size = block;
    storage = std::make_unique<CacheStorage>(c);
    cache = std::make_unique<PagedKVCache>(c, storage->view);
  }
  // Appends n random tokens (heads/dim overridable) to `row`.
  void append(int row, int n, int heads = 2, int dim = 64) {
    HostTensor k(DType::f32, {n, heads, dim}), v(DType::f32, {n, heads, dim});
    std::mt19937 rng(row * 31 + n);
    k.fill_normal(rng);
    v.fill_normal(rng);
    std::vector<int> cu{0, n};
    cache->append(k.view(), v.view(), TensorView::contiguous(cu.data(), DType::i32, Device::cpu(), {2}), {row});
  }
  // Everything the cache holds, to show a refused call changed nothing.
  std::vector<std::uint8_t> snapshot() const {
    std::vector<std::uint8_t> s(storage->k.bytes);
    s.insert(s.end(), storage->v.bytes.begin(), storage->v.bytes.end());
    s.insert(s.end(), storage->means.bytes.begin(), storage->means.bytes.end());
    auto add = [&](const void* p, std::size_t n) { s.insert(s.end(), (const std::uint8_t*)p, (const std::uint8_t*)p + n); };
    add(storage->table.data(), storage->table.size() * 4);
    add(storage->lens.data(), storage->lens.size() * 4);
    add(storage->sums.data(), storage->sums.size() * 8);
    add(cache->host_page_table().data(), cache->host_page_table().size() * 4);
    const int free_pages = cache->free_pages();
    add(&free_pages, 4);
    return s;
  }
};

template <class F>
void expect_error(F&& f, ErrorKind kind, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one mentioning '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_EQ(int(e.kind()), int(kind)) << e.what();
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(CpuPaged, BadArgumentsAreNamedAndLeaveTheCacheUnchanged) {
  SmallCache sc(4);
  sc.append(0, 5);  // 2 pages per KV head: the whole pool
  const auto before = sc.snapshot();
  expect_error([&] { sc.append(1, 1); }, ErrorKind::out_of_memory, "kv cache full");
  expect_error([&] { sc.append(0, 1, 3); }, ErrorKind::invalid_argument, "k_new");       // head mismatch
  expect_error([&] { sc.append(0, 1, 2, 128); }, ErrorKind::invalid_argument, "k_new");  // head_dim mismatch
  expect_error([&] { sc.append(2, 1); }, ErrorKind::invalid_argument, "slots[0]");       // row out of range
  expect_error([&] { sc.append(0, 12); }, ErrorKind::invalid_argument, "max_seqlen");   // beyond max_seqlen
  {
    HostTensor k(DType::f32, {2, 2, 64}), v(DType::f32, {2, 2, 64});
    std::vector<int> cu{0, 1, 2};
    expect_error([&] { sc.cache->append(k.view(), v.view(), TensorView::contiguous(cu.data(), DType::i32, Device::cpu(), {3}), {0, 0}); },
                 ErrorKind::invalid_argument, "distinct cache rows");
    HostTensor v16(DType::f16, {2, 2, 64});
    expect_error([&] { sc.cache->append(k.view(), v16.view(), TensorView::contiguous(cu.data(), DType::i32, Device::cpu(), {3}), {0, 1}); },
                 ErrorKind::invalid_argument, "v_new");
  }
  EXPECT_EQ(before, sc.snapshot());
  // Attention: query heads not a multiple of the cache's, more query rows than cached tokens,
  // a page id out of range in a hand-made page table.
  HostTensor q(DType::f32, {1, 3, 64}), out(DType::f32, {1, 3, 64});
  std::vector<float> lse(3);
  std::vector<int> cu{0, 1};
  const TensorView cuv = TensorView::contiguous(cu.data(), DType::i32, Device::cpu(), {2});
  expect_error([&] { sc.cache->attend(q.view(), cuv, {0}, AttentionParams::full(), out.view(),
                                      TensorView::contiguous(lse.data(), DType::f32, Device::cpu(), {3, 1}), {}); },
               ErrorKind::invalid_argument, "num_q_heads a multiple");
  HostTensor q4(DType::f32, {1, 4, 64}), out4(DType::f32, {1, 4, 64});
  std::vector<float> lse4(4);
  const TensorView lsev = TensorView::contiguous(lse4.data(), DType::f32, Device::cpu(), {4, 1});
  expect_error([&] { sc.cache->attend(q4.view(), cuv, {1}, AttentionParams::full(), out4.view(), lsev, {}); },
               ErrorKind::invalid_argument, "kv.seq_lens[1]");
  std::vector<std::int32_t> table(sc.storage->table);
  table[1] = 99;  // row 0, head 0, page 1 (positions 4..7): not a page of the pool
  PagedKV kv = sc.storage->view;
  kv.page_table.data = table.data();
  expect_error([&] { paged_attention(q4.view(), cuv, kv, AttentionParams::full(), {}, out4.view(), lsev); },
               ErrorKind::invalid_argument, "kv.page_table[0, 0, 1]");
  std::vector<std::int32_t> bad_sel(4, 1);  // position 4 is in block 1: block 1 is not past
  PagedAttentionArgs args;
  args.selection = TensorView::contiguous(bad_sel.data(), DType::i32, Device::cpu(), {1, 4, 1});
  expect_error([&] { paged_attention(q4.view(), cuv, sc.storage->view, AttentionParams::moba_blocks(4, 2), args, out4.view(), lsev); },
               ErrorKind::invalid_argument, "selection[0, 0, 0]");
  EXPECT_EQ(before, sc.snapshot());
  // After release the pages return.
  sc.cache->release(0);
  EXPECT_EQ(sc.cache->free_pages(), 4);
  EXPECT_EQ(sc.cache->seq_len(0), 0);
  sc.append(1, 5);
  EXPECT_EQ(sc.cache->free_pages(), 0);
}

// The page-table entry point used by context parallelism: the selected blocks alone and the
// own block alone, merged by LSE, give the whole MoBA row; a row with no key gives lse = -inf.
TEST(CpuPaged, SelectedBlocksAndOwnBlockMergeToTheFullRow) {
  SmallCache sc(16, 4);
  sc.append(0, 14);  // blocks 0..2 complete, own block 3 holds positions 12, 13
  HostTensor q(DType::f32, {2, 4, 64});
  std::mt19937 rng(5);
  q.fill_normal(rng);
  std::vector<int> cu{0, 2};
  const TensorView cuv = TensorView::contiguous(cu.data(), DType::i32, Device::cpu(), {2});
  const AttentionParams p = AttentionParams::moba_blocks(4, 3);
  std::vector<std::int32_t> sel(2 * 4 * 2);
  const TensorView selv = TensorView::contiguous(sel.data(), DType::i32, Device::cpu(), {2, 4, 2});
  paged_moba_gate(q.view(), cuv, sc.storage->view, p, selv);
  auto run = [&](bool own, HostTensor& out, std::vector<float>& lse) {
    out = HostTensor(DType::f32, {2, 4, 64});
    lse.assign(8, 0.f);
    PagedAttentionArgs a;
    a.selection = selv;
    a.include_own_block = own;
    paged_attention(q.view(), cuv, sc.storage->view, p, a, out.view(),
                    TensorView::contiguous(lse.data(), DType::f32, Device::cpu(), {4, 2}));
  };
  HostTensor whole, own_only, merged(DType::f32, {2, 4, 64});
  std::vector<float> lw, lo, lm(8);
  run(true, whole, lw);
  // Own block alone = MoBA with no selected block (all -1).
  std::vector<std::int32_t> none(sel.size(), -1);
  PagedAttentionArgs a;
  a.selection = TensorView::contiguous(none.data(), DType::i32, Device::cpu(), {2, 4, 2});
  own_only = HostTensor(DType::f32, {2, 4, 64});
  lo.assign(8, 0.f);
  paged_attention(q.view(), cuv, sc.storage->view, p, a, own_only.view(), TensorView::contiguous(lo.data(), DType::f32, Device::cpu(), {4, 2}));
  HostTensor sel_only;
  std::vector<float> ls;
  run(false, sel_only, ls);
  merge_attention_states(own_only.view(), TensorView::contiguous(lo.data(), DType::f32, Device::cpu(), {4, 2}), sel_only.view(),
                         TensorView::contiguous(ls.data(), DType::f32, Device::cpu(), {4, 2}), merged.view(),
                         TensorView::contiguous(lm.data(), DType::f32, Device::cpu(), {4, 2}));
  EXPECT_LT(max_abs_diff(merged.as_double(), whole.as_double()), 1e-5);
  for (int i = 0; i < 8; ++i) EXPECT_NEAR(lm[i], lw[i], 1e-5);
  // No selected block and no own block: nothing to see.
  a.include_own_block = false;
  paged_attention(q.view(), cuv, sc.storage->view, p, a, own_only.view(), TensorView::contiguous(lo.data(), DType::f32, Device::cpu(), {4, 2}));
  for (float x : lo) EXPECT_EQ(x, -INFINITY);
  for (double x : own_only.as_double()) EXPECT_EQ(x, 0.0);
}

// MoA per-head caches: a head keeps its sink and window; memory follows the plan's density
// and results stay exact (checked against prefill in the random test above as well).
TEST(CpuPaged, MoaCacheKeepsOnlySinkAndWindows) {
  Shape s;
  s.seqlens = {600};
  s.hq = 4, s.hkv = 2, s.d = 64, s.dtype = DType::bf16;
  MoaHeads heads;
  heads.sink = 16;
  heads.alpha = {32, 16};  // per KV head
  heads.beta = {0.0f, 0.1f};
  s.params = AttentionParams::moa_heads(heads);
  Inputs in = make_inputs(s, 9);
  FeedPlan plan;
  plan.page_size = 8;
  plan.moa_evict = true;
  plan.max_chunk = 4;
  plan.chunks = {std::vector<int>{100}};
  for (int t = 100; t < 600; t += 4) plan.chunks[0].push_back(4);
  const Fed fed = feed(s, in, plan);
  int near_ties = 0;
  double worst = 0;
  check_against_prefill(s, in, fed, near_ties, worst);
  // Steady state: per KV head sink (2 pages) + window + chunk + lookahead, in pages. Head 1's
  // window at 600 tokens is 16 + 60 = 76 positions. The peak is the 100-token prompt.
  const int full_pages = 2 * (600 / 8);
  EXPECT_LE(fed.max_used_pages, 2 * (100 / 8 + 2));
  EXPECT_LT(fed.max_used_pages, full_pages / 4);
  std::printf("[ moa ] peak pages %d vs %d for the full cache\n", fed.max_used_pages, full_pages);
}

}  // namespace
}  // namespace moba::testing
