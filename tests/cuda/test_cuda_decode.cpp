// CUDA paged decode / chunked prefill (src/cuda/decode) against the one-shot prefill in fp64:
// the same random shapes, chunk plans and checks as tests/cpu/test_cpu_paged.cpp, with the cache
// in GPU memory. Also: the block means the GPU maintains equal the recomputed ones exactly, a
// decode step (append + gate + attention) captured in a CUDA graph replays to the eager result,
// and a long context exercises the split-KV merge. Skips without a GPU.
// MOBA_CUDA_DECODE_SHAPES=<n> sets the number of random shapes (default 80).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <memory>

#include "../cpu/paged_check.hpp"
#include "cuda_test_util.hpp"

namespace moba::testing {
namespace {

int shape_count() {
  const char* e = std::getenv("MOBA_CUDA_DECODE_SHAPES");
  return e ? std::max(1, std::atoi(e)) : 80;
}

// A cache whose storage lives on the GPU.
struct GpuCache {
  KVCacheConfig c;
  KVCacheShapes shapes;
  std::unique_ptr<DevBuf> k, v, table, lens, means, sums;
  PagedKV view;
  std::unique_ptr<PagedKVCache> cache;

  explicit GpuCache(const KVCacheConfig& cfg) : c(cfg), shapes(kv_cache_shapes(cfg)) {
    auto numel = [](const std::vector<std::int64_t>& s) {
      std::int64_t n = 1;
      for (auto x : s) n *= x;
      return s.empty() ? std::int64_t(0) : n;
    };
    const std::size_t es = dtype_size(c.dtype);
    k = std::make_unique<DevBuf>(numel(shapes.k_pages) * es);
    v = std::make_unique<DevBuf>(numel(shapes.v_pages) * es);
    table = std::make_unique<DevBuf>(numel(shapes.page_table) * 4);
    lens = std::make_unique<DevBuf>(numel(shapes.seq_lens) * 4);
    auto view_of = [](void* p, DType t, const std::vector<std::int64_t>& s) {
      TensorView x;
      x.data = p;
      x.dtype = t;
      x.device = Device::cuda(0);
      x.ndim = int(s.size());
      std::int64_t st = 1;
      for (int d = x.ndim - 1; d >= 0; --d) {
        x.shape[d] = s[d];
        x.stride[d] = st;
        st *= s[d];
      }
      return x;
    };
    view.k_pages = view_of(k->p, c.dtype, shapes.k_pages);
    view.v_pages = view_of(v->p, c.dtype, shapes.v_pages);
    view.page_table = view_of(table->p, DType::i32, shapes.page_table);
    view.seq_lens = view_of(lens->p, DType::i32, shapes.seq_lens);
    if (c.block_size > 0) {
      means = std::make_unique<DevBuf>(numel(shapes.block_means) * es);
      sums = std::make_unique<DevBuf>(numel(shapes.block_sums) * 8);
      view.block_means = view_of(means->p, c.dtype, shapes.block_means);
      view.block_sums = view_of(sums->p, DType::f64, shapes.block_sums);
    }
    cache = std::make_unique<PagedKVCache>(c, view);
  }
};

Fed gpu_feed(const Shape& s, const Inputs& in, const FeedPlan& plan, std::vector<double>* means_out = nullptr) {
  const int batch = static_cast<int>(s.seqlens.size()), K = std::max(s.params.topk - 1, 0);
  const KVCacheConfig c = feed_cache_config(s, plan);
  GpuCache gc(c);
  const std::vector<int> slot = feed_slots(c, batch);
  Fed r = empty_fed(s);
  RunOptions o;
  o.backend = Backend::cuda;
  for (const FeedStep& st : feed_steps(plan, in.cu, slot)) {
    const HostTensor k = gather_rows(in.k, st.cu_src, st.from, st.n), v = gather_rows(in.v, st.cu_src, st.from, st.n),
                     q = gather_rows(in.q, st.cu_src, st.from, st.n);
    const std::int64_t tq = st.cu.back();
    DevBuf dk(k.bytes.size()), dv(v.bytes.size()), dq(q.bytes.size()), dout(q.bytes.size());
    DevBuf dl(std::size_t(s.hq) * tq * 4), ds(std::size_t(tq) * s.hq * K * 4);
    dk.up(k.bytes.data());
    dv.up(v.bytes.data());
    dq.up(q.bytes.data());
    std::vector<int> cu = st.cu;
    TensorView cu_view = TensorView::contiguous(cu.data(), DType::i32, Device::cpu(), {std::int64_t(cu.size())});
    gc.cache->append(dev_view(dk.p, s.dtype, {tq, s.hkv, s.d}), dev_view(dv.p, s.dtype, {tq, s.hkv, s.d}), cu_view, st.slots, o);
    TensorView sel_view = s.params.mode == Mode::moba ? dev_view(ds.p, DType::i32, {tq, s.hq, K}) : TensorView{};
    gc.cache->attend(dev_view(dq.p, s.dtype, {tq, s.hq, s.d}), cu_view, st.slots, s.params,
                     dev_view(dout.p, s.dtype, {tq, s.hq, s.d}), dev_view(dl.p, DType::f32, {s.hq, tq}), sel_view, o);
    if (cudaDeviceSynchronize() != cudaSuccess) throw std::runtime_error("decode kernels failed");
    HostTensor out(s.dtype, {tq, s.hq, s.d});
    std::vector<float> lse(std::size_t(s.hq) * tq);
    std::vector<std::int32_t> sel(std::size_t(tq) * s.hq * K);
    dout.down(out.bytes.data());
    dl.down(lse.data());
    if (K > 0) ds.down(sel.data());
    scatter_step(r, s, st, in.cu, out, lse, sel);
    r.max_used_pages = std::max(r.max_used_pages, gc.cache->used_pages());
  }
  if (means_out && c.block_size > 0) {  // the means of the rows, in the packed order of slots
    HostTensor m(s.dtype, gc.shapes.block_means);
    gc.means->down(m.bytes.data());
    means_out->clear();
    for (int b = 0; b < batch; ++b)
      for (int g = 0; g < s.hkv; ++g)
        for (int j = 0; j < s.seqlens[b] / c.block_size; ++j)
          for (int d = 0; d < s.d; ++d)
            means_out->push_back(m.get(((std::int64_t(slot[b]) * s.hkv + g) * gc.shapes.block_means[2] + j) * s.d + d));
  }
  return r;
}

TEST(CudaDecode, ChunkedDecodeMatchesOneShotPrefill) {
  MOBA_SKIP_WITHOUT_GPU();
  std::mt19937 rng(77);
  RandomShapeOptions opt;
  opt.max_len = 300;
  opt.dtypes = {DType::bf16, DType::f16};
  int near_ties = 0, shapes = 0, tensor_core_shapes = 0;
  double worst = 0;
  for (int iter = 0; iter < shape_count(); ++iter) {
    const Shape s = random_shape(rng, opt);
    tensor_core_shapes += s.hq / s.hkv >= 2;  // single heads take the CUDA-core kernel
    Inputs in = make_inputs(s, 900 + iter);
    FeedPlan plan = random_plan(rng, s);
    plan.max_seqlen_extra = iter % 3 == 0 ? 8192 : 0;  // more splits than keys: empty splits
    std::vector<double> means;
    const Fed fed = gpu_feed(s, in, plan, &means);
    check_against_prefill(s, in, fed, near_ties, worst);
    if (s.params.mode == Mode::moba) {  // exact incremental means
      std::size_t at = 0;
      const int B = s.params.block_size;
      for (std::size_t b = 0; b < s.seqlens.size(); ++b)
        for (int g = 0; g < s.hkv; ++g)
          for (int j = 0; j < s.seqlens[b] / B; ++j)
            for (int d = 0; d < s.d; ++d, ++at) {
              double sum = 0;
              for (int x = j * B; x < (j + 1) * B; ++x) sum += in.k.get((std::int64_t(in.cu[b] + x) * s.hkv + g) * s.d + d);
              ASSERT_EQ(means[at], detail::round_to(s.dtype, float(sum) / float(B))) << s.str();
            }
    }
    ++shapes;
    if (::testing::Test::HasFailure()) {
      std::printf("failing shape %s page %d evict %d\n", s.str().c_str(), plan.page_size, plan.moa_evict);
      break;
    }
  }
  std::printf("[ cuda paged ] %d shapes (%d on the tensor-core kernel), worst err/allowed %.3f, near-tie selection differences %d\n",
              shapes, tensor_core_shapes, worst, near_ties);
}

// More query heads per KV head than one CTA serves (kMaxGroup = 8): the group is split into
// head chunks, each reading the pages once.
TEST(CudaDecode, WideQueryGroups) {
  MOBA_SKIP_WITHOUT_GPU();
  for (Mode mode : {Mode::full, Mode::moba, Mode::moa}) {
    const Shape s = wide_query_group_shape(mode);
    Inputs in = make_inputs(s, 11);
    const FeedPlan plan = wide_query_group_plan();
    int near_ties = 0;
    double worst = 0;
    check_against_prefill(s, in, gpu_feed(s, in, plan), near_ties, worst);
  }
}

// Decode steps of long contexts (split-KV across many CTAs, LSE combine) against fp64 truth for
// the decode rows (the prompts are covered by the random shapes above), on both attention
// kernels in one process: GQA groups of 2, 4 and 8 (MQA) take the tensor-core kernel, single
// heads the CUDA-core one (kMmaMinGroup = 2 in src/cuda/decode/decode_params.hpp).
struct GroupCase {
  int hq, hkv, d;
  DType dtype;
};

TEST(CudaDecode, LongContextDecodeRows) {
  MOBA_SKIP_WITHOUT_GPU();
  for (const GroupCase gcase : {GroupCase{8, 2, 128, DType::bf16}, GroupCase{4, 2, 128, DType::bf16},
                                GroupCase{8, 1, 64, DType::f16}})
  for (Mode mode : {Mode::full, Mode::moba, Mode::moa}) {
    Shape s;
    s.seqlens = {20000, 7001};
    s.hq = gcase.hq, s.hkv = gcase.hkv, s.d = gcase.d, s.dtype = gcase.dtype;
    if (mode == Mode::full) s.params = AttentionParams::full();
    // 625 blocks of 32 for the MQA case: the gate's split scoring (score and select launches)
    if (mode == Mode::moba) s.params = gcase.hkv == 1 ? AttentionParams::moba_blocks(32, 6) : AttentionParams::moba_blocks(512, 4);
    if (mode == Mode::moa) {
      MoaHeads heads{{}, {}, 64};
      for (int i = 0; i < s.hq; ++i) heads.alpha.push_back(i % 2 ? 64.f : 1000.f + 100.f * i), heads.beta.push_back(i % 2 ? 0.5f : 0.1f);  // windows differ inside a CTA
      s.params = AttentionParams::moa_heads(heads);
    }
    Inputs in = make_inputs(s, 5);
    FeedPlan plan;
    plan.page_size = 16;
    plan.chunks = {{19990, 1, 9}, {7000, 1}};
    const Fed fed = gpu_feed(s, in, plan);
    const detail::Problem p = problem_of(s);
    const int K = p.past_k();
    const std::vector<double> q = in.q.as_double(), k = in.k.as_double(), v = in.v.as_double();
    std::vector<double> got, want;
    double lse_err = 0;
    for (int b = 0; b < 2; ++b)
      for (int t = plan.chunks[b][0]; t < s.seqlens[b]; ++t)
        for (int h = 0; h < s.hq; ++h) {
          const std::int64_t tok = in.cu[b] + t, row = tok * s.hq + h;
          const std::int32_t* sel = K > 0 ? fed.selection.data() + row * K : nullptr;
          if (K > 0)
            EXPECT_TRUE(selection_within_near_tie(block_scores(s, in, b, t, h), sel, K)) << "token " << t;
          const int g = h / (s.hq / s.hkv);
          std::vector<int> keys;
          detail::for_each_visible_range(p, fed.chunk_end[tok], t, h, sel, [&](int lo, int hi) {
            for (int j = lo; j < hi; ++j) keys.push_back(in.cu[b] + j);
          });
          std::vector<double> w(keys.size());
          double mx = -INFINITY, sum = 0;
          for (std::size_t i = 0; i < keys.size(); ++i) {
            double dot = 0;
            for (int d = 0; d < s.d; ++d) dot += q[row * s.d + d] * k[(std::size_t(keys[i]) * s.hkv + g) * s.d + d];
            mx = std::max(mx, w[i] = dot * p.scale);
          }
          for (double& x : w) sum += (x = std::exp(x - mx));
          for (int d = 0; d < s.d; ++d) {
            double o = 0;
            for (std::size_t i = 0; i < keys.size(); ++i) o += w[i] / sum * v[(std::size_t(keys[i]) * s.hkv + g) * s.d + d];
            want.push_back(o);
            got.push_back(fed.out.get(row * s.d + d));
          }
          lse_err = std::max(lse_err, std::fabs(fed.lse[std::size_t(h) * s.total() + tok] - (mx + std::log(sum))));
        }
    const double err = rel_l2(got, want);
    const double allowed = 2 * rel_l2(rounded(want, s.dtype), want) + 1e-5;
    EXPECT_LE(err, allowed) << "mode " << int(mode) << " " << s.str();
    EXPECT_LE(lse_err, 1e-3) << "mode " << int(mode) << " " << s.str();
    std::printf("[ long context, mode %d, hq %d / hkv %d, D %d, %s kernel ] err/allowed %.3f, lse err %.2e\n",
                int(mode), s.hq, s.hkv, s.d, s.hq / s.hkv >= 2 ? "tensor-core" : "cuda-core", err / allowed, lse_err);
  }
}

// append + gate + attention of a decode step captured in a CUDA graph (device cu_seqlens and
// slots; global capture mode, as torch.cuda.graph uses): the capture fails if anything
// synchronises with the host; replays give the eager results. Groups of 1 (CUDA-core kernel) and
// 4 (tensor-core kernel).
TEST(CudaDecode, DecodeStepIsGraphCapturable) {
  MOBA_SKIP_WITHOUT_GPU();
  for (const int hq : {2, 8}) {
    const int hkv = 2, D = 64, B = 32, prompt = 100, steps = 6;
    KVCacheConfig c;
    c.dtype = DType::bf16;
    c.num_q_heads = hq;
    c.num_kv_heads = hkv;
    c.head_dim = D;
    c.page_size = 16;
    c.max_rows = 2;
    c.max_seqlen = 256;
    c.num_pages = 2 * hkv * 16;
    c.block_size = B;
    std::mt19937 rng(3);
    HostTensor k(DType::bf16, {2 * (prompt + steps), hkv, D}), v(k.dtype, k.shape), q(DType::bf16, {2 * steps, hq, D});
    k.fill_normal(rng);
    v.fill_normal(rng);
    q.fill_normal(rng);
    const AttentionParams params = AttentionParams::moba_blocks(B, 3);
    auto run = [&](bool graph) {
      GpuCache gc(c);
      RunOptions o;
      o.backend = Backend::cuda;
      cudaStream_t stream;
      cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
      o.cuda_stream = stream;
      // The prompts, eagerly.
      DevBuf pk(std::size_t(2) * prompt * hkv * D * 2), pv(pk.bytes);
      std::vector<std::uint8_t> hk(pk.bytes), hv(pk.bytes);
      for (int b = 0; b < 2; ++b) {
        std::memcpy(&hk[std::size_t(b) * prompt * hkv * D * 2], &k.bytes[std::size_t(b) * (prompt + steps) * hkv * D * 2], std::size_t(prompt) * hkv * D * 2);
        std::memcpy(&hv[std::size_t(b) * prompt * hkv * D * 2], &v.bytes[std::size_t(b) * (prompt + steps) * hkv * D * 2], std::size_t(prompt) * hkv * D * 2);
      }
      pk.up(hk.data());
      pv.up(hv.data());
      std::vector<int> cu_p{0, prompt, 2 * prompt};
      gc.cache->append(dev_view(pk.p, DType::bf16, {2 * prompt, hkv, D}), dev_view(pv.p, DType::bf16, {2 * prompt, hkv, D}),
                       TensorView::contiguous(cu_p.data(), DType::i32, Device::cpu(), {3}), {0, 1}, o);
      // Decode buffers with device cu_seqlens / slots.
      std::vector<int> cu{0, 1, 2}, slots{0, 1};
      DevBuf dcu(12), dslots(8), dk(2 * hkv * D * 2), dv(dk.bytes), dq(2 * hq * D * 2), dout(dq.bytes), dl(2 * hq * 4), ds(2 * hq * 2 * 4);
      dcu.up(cu.data());
      dslots.up(slots.data());
      const TensorView cuv = dev_view(dcu.p, DType::i32, {3}), slotv = dev_view(dslots.p, DType::i32, {2});
      std::vector<std::uint8_t> outs;
      cudaGraphExec_t exec = nullptr;
      for (int t = 0; t < steps; ++t) {
        std::vector<std::uint8_t> sk(dk.bytes), sv(dk.bytes), sq(dq.bytes);
        for (int b = 0; b < 2; ++b) {
          std::memcpy(&sk[std::size_t(b) * hkv * D * 2], &k.bytes[(std::size_t(b) * (prompt + steps) + prompt + t) * hkv * D * 2], hkv * D * 2);
          std::memcpy(&sv[std::size_t(b) * hkv * D * 2], &v.bytes[(std::size_t(b) * (prompt + steps) + prompt + t) * hkv * D * 2], hkv * D * 2);
          std::memcpy(&sq[std::size_t(b) * hq * D * 2], &q.bytes[(std::size_t(b) * steps + t) * hq * D * 2], hq * D * 2);
        }
        dk.up(sk.data());
        dv.up(sv.data());
        dq.up(sq.data());
        gc.cache->reserve({1, 1}, {0, 1}, o);  // host bookkeeping, outside the graph
        auto step = [&] {
          kv_append(dev_view(dk.p, DType::bf16, {2, hkv, D}), dev_view(dv.p, DType::bf16, {2, hkv, D}), cuv, gc.view, B, slotv, o);
          const TensorView selv = dev_view(ds.p, DType::i32, {2, hq, 2});
          paged_moba_gate(dev_view(dq.p, DType::bf16, {2, hq, D}), cuv, gc.view, params, selv, slotv, o);
          PagedAttentionArgs args;
          args.slots = slotv;
          args.selection = selv;
          paged_attention(dev_view(dq.p, DType::bf16, {2, hq, D}), cuv, gc.view, params, args,
                          dev_view(dout.p, DType::bf16, {2, hq, D}), dev_view(dl.p, DType::f32, {hq, 2}), o);
        };
        if (!graph) {
          step();
        } else {
          if (!exec) {
            cudaGraph_t g;
            EXPECT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), cudaSuccess);
            step();
            EXPECT_EQ(cudaStreamEndCapture(stream, &g), cudaSuccess);
            EXPECT_EQ(cudaGraphInstantiate(&exec, g, 0), cudaSuccess);
            cudaGraphDestroy(g);
          }
          EXPECT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
        }
        EXPECT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
        std::vector<std::uint8_t> o_host(dout.bytes);
        dout.down(o_host.data());
        outs.insert(outs.end(), o_host.begin(), o_host.end());
      }
      if (exec) cudaGraphExecDestroy(exec);
      cudaStreamDestroy(stream);
      return outs;
    };
    const auto eager = run(false);
    const auto graphed = run(true);
    EXPECT_EQ(eager, graphed) << "hq " << hq;
  }
}

}  // namespace
}  // namespace moba::testing
