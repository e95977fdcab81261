// Shared by the paged-cache tests of every backend: random chunk plans, the result of feeding a
// shape through a cache, and its check against the one-shot prefill in fp64 (see
// tests/cpu/test_cpu_paged.cpp for the semantics being checked).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "core/dtype.hpp"
#include "moba/kv_cache.hpp"
#include "test_support.hpp"

namespace moba::testing {

constexpr double kFloorForward = 1e-5;

// Relative size of a near-tie: fp32 accumulation of D products can move a gate score by about
// D * 2^-24 * sum|terms| in the worst case (7.6e-6 relative for D = 128); both sides of a
// comparison may err, so 2e-5 * sum|terms| bounds every legitimate disagreement.
constexpr double kNearTie = 2e-5;

// True when `chosen` (a fast backend's ascending slots, -1 padded) is a correct top-k of the fp64
// scores (verify::block_scores) up to near-ties: right count, and no unchosen block beats a
// chosen one by more than the fp32 tolerance.
inline bool selection_within_near_tie(const BlockScores& sc, const std::int32_t* chosen, int slots) {
  const int own = static_cast<int>(sc.score.size());
  const int keep = std::min(slots, own);
  std::vector<bool> in(own, false);
  for (int i = 0; i < slots; ++i) {
    const int j = chosen[i];
    if (i < keep) {
      if (j < 0 || j >= own || in[j] || (i > 0 && j <= chosen[i - 1])) return false;
      in[j] = true;
    } else if (j != -1) {
      return false;
    }
  }
  for (int x = 0; x < own; ++x)
    for (int y = 0; y < own; ++y)
      if (!in[x] && in[y]) {
        const double tol = kNearTie * std::max(sc.abs_sum[x], sc.abs_sum[y]);
        if (sc.score[x] > sc.score[y] + tol) return false;
      }
  return true;
}

// Each value rounded to dtype once: the error of a result that is exact up to its final store.
inline std::vector<double> rounded(const std::vector<double>& x, DType t) {
  std::vector<double> r(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) r[i] = detail::round_to(t, static_cast<float>(x[i]));
  return r;
}

// fp64 forward over fixed key sets (MoBA: the given selection): out [T, hq, D], lse [hq, T].
inline void exact_forward(const Shape& s, const Inputs& in, const std::vector<std::int32_t>& sel,
                          std::vector<double>& out, std::vector<double>& lse) {
  Truth t = truth_forward(s, in, sel);
  out = std::move(t.out);
  lse = std::move(t.lse);
}

// Tokens [from, from + n) of every sequence, packed (rows of a [T, H, D] host tensor).
inline HostTensor gather_rows(const HostTensor& x, const std::vector<int>& cu, const std::vector<int>& from,
                       const std::vector<int>& n) {
  const std::int64_t row = x.shape[1] * x.shape[2];
  const std::size_t es = dtype_size(x.dtype);
  const std::int64_t total = std::accumulate(n.begin(), n.end(), std::int64_t(0));
  HostTensor y(x.dtype, {total, x.shape[1], x.shape[2]});
  std::int64_t at = 0;
  for (std::size_t b = 0; b < n.size(); ++b) {
    std::memcpy(&y.bytes[at * row * es], &x.bytes[(cu[b] + from[b]) * row * es], n[b] * row * es);
    at += n[b];
  }
  return y;
}

struct Fed {
  HostTensor out;                     // [T, hq, D] in the shape's packed layout
  std::vector<float> lse;             // [hq, T]
  std::vector<std::int32_t> selection;  // [T, hq, topk - 1]
  std::vector<int> chunk_end;         // per token: the sequence length after its chunk
  int max_used_pages = 0;
};

struct FeedPlan {
  int page_size = 16;
  bool moa_evict = false;
  int max_chunk = 1;
  std::vector<std::vector<int>> chunks;  // per sequence: chunk sizes summing to its length
  int threads = 1;
  int max_seqlen_extra = 0;  // cache capacity beyond the longest sequence (split-KV)
};

// 16 query heads per KV head (more than one GPU CTA serves), every mode, fed in the chunks of
// wide_query_group_plan (prompt, decode steps, chunked prefill; an empty first chunk): the
// wide-group case both backends' tests run.
inline Shape wide_query_group_shape(Mode mode) {
  Shape s;
  s.seqlens = {300, 77};
  s.hq = 32, s.hkv = 2, s.d = 64, s.dtype = DType::f16;
  if (mode == Mode::full) s.params = AttentionParams::full();
  if (mode == Mode::moba) s.params = AttentionParams::moba_blocks(32, 3);
  if (mode == Mode::moa) {
    MoaHeads h;
    h.sink = 8;
    for (int i = 0; i < s.hq; ++i) h.alpha.push_back(float(4 + 5 * i)), h.beta.push_back(0.05f * (i % 4));
    s.params = AttentionParams::moa_heads(h);
  }
  return s;
}

inline FeedPlan wide_query_group_plan() {
  FeedPlan plan;
  plan.page_size = 16;
  plan.chunks = {{200, 1, 1, 98}, {0, 70, 7}};
  return plan;
}

// The cache a plan feeds a shape into: every sequence fits, rows scattered over 2 * batch + 1
// (feed_slots), MoBA means kept when the shape is MoBA.
inline KVCacheConfig feed_cache_config(const Shape& s, const FeedPlan& plan) {
  const int batch = static_cast<int>(s.seqlens.size());
  KVCacheConfig c;
  c.dtype = s.dtype;
  c.num_q_heads = s.hq;
  c.num_kv_heads = s.hkv;
  c.head_dim = s.d;
  c.page_size = plan.page_size;
  c.max_rows = 2 * batch + 1;
  c.max_seqlen = std::max(1, *std::max_element(s.seqlens.begin(), s.seqlens.end())) + plan.max_seqlen_extra;
  c.num_pages = 0;
  for (int len : s.seqlens) c.num_pages += (len + c.page_size - 1) / c.page_size * s.hkv;
  c.num_pages = std::max(c.num_pages, 1);
  c.block_size = s.params.mode == Mode::moba ? s.params.block_size : 0;
  c.moa_evict = plan.moa_evict;
  c.moa = s.params.moa;
  c.max_chunk = plan.max_chunk;
  return c;
}

// Cache row of each sequence: scattered, from the last row down.
inline std::vector<int> feed_slots(const KVCacheConfig& c, int batch) {
  std::vector<int> slot(batch);
  for (int b = 0; b < batch; ++b) slot[b] = c.max_rows - 1 - 2 * b;
  return slot;
}

// One step of a plan: the sequences that get a chunk, where in the sequence it starts, its
// length, its cache row, the chunk offsets (cu_seqlens of the step) and the sequences' offsets
// in the packed inputs.
struct FeedStep {
  std::vector<int> seqs, from, n, slots, cu{0}, cu_src;
};

inline std::vector<FeedStep> feed_steps(const FeedPlan& plan, const std::vector<int>& in_cu,
                                        const std::vector<int>& slot) {
  const int batch = static_cast<int>(plan.chunks.size());
  std::size_t steps = 0;
  for (const auto& ch : plan.chunks) steps = std::max(steps, ch.size());
  std::vector<int> done(batch, 0);
  std::vector<FeedStep> out;
  for (std::size_t step = 0; step < steps; ++step) {
    FeedStep st;
    for (int b = 0; b < batch; ++b) {
      if (step >= plan.chunks[b].size()) continue;
      st.seqs.push_back(b);
      st.from.push_back(done[b]);
      st.n.push_back(plan.chunks[b][step]);
      st.slots.push_back(slot[b]);
      st.cu.push_back(st.cu.back() + st.n.back());
      st.cu_src.push_back(in_cu[b]);
      done[b] += plan.chunks[b][step];
    }
    if (!st.seqs.empty()) out.push_back(std::move(st));
  }
  return out;
}

// A Fed for the shape, every output poisoned until a step writes it.
inline Fed empty_fed(const Shape& s) {
  const std::int64_t T = s.total();
  const int K = std::max(s.params.topk - 1, 0);
  Fed r;
  r.out = HostTensor(s.dtype, {T, s.hq, s.d});
  r.out.fill(0.0);
  r.lse.assign(std::size_t(s.hq) * T, 0.f);
  r.selection.assign(std::size_t(T) * s.hq * K, -5);
  r.chunk_end.assign(T, 0);
  return r;
}

// A step's results (out [tq, hq, D], lse [hq, tq], selection [tq, hq, K]) into r's packed layout.
inline void scatter_step(Fed& r, const Shape& s, const FeedStep& st, const std::vector<int>& in_cu,
                         const HostTensor& out, const std::vector<float>& lse,
                         const std::vector<std::int32_t>& sel) {
  const std::int64_t T = s.total(), tq = st.cu.back();
  const int K = std::max(s.params.topk - 1, 0);
  const std::size_t es = dtype_size(s.dtype), row = std::size_t(s.hq) * s.d;
  for (std::size_t i = 0; i < st.seqs.size(); ++i) {
    const int b = st.seqs[i];
    for (int j = 0; j < st.n[i]; ++j) {
      const std::int64_t src = st.cu[i] + j, dst = in_cu[b] + st.from[i] + j;
      std::memcpy(&r.out.bytes[dst * row * es], &out.bytes[src * row * es], row * es);
      for (int h = 0; h < s.hq; ++h) r.lse[std::size_t(h) * T + dst] = lse[std::size_t(h) * tq + src];
      if (K > 0) std::copy_n(&sel[src * s.hq * K], s.hq * K, &r.selection[dst * s.hq * K]);
      r.chunk_end[dst] = st.from[i] + st.n[i];
    }
  }
}

inline FeedPlan random_plan(std::mt19937& rng, const Shape& s) {
  auto uni = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  FeedPlan f;
  f.page_size = std::vector<int>{1, 3, 16, 64}[uni(0, 3)];
  f.moa_evict = s.params.mode == Mode::moa && uni(0, 1) == 1;
  f.max_chunk = uni(1, 8);
  f.threads = uni(0, 3) == 0 ? 3 : 1;
  for (int len : s.seqlens) {
    std::vector<int> c;
    int left = len;
    while (left > 0) {
      int n;
      const int r = uni(0, 9);
      if (c.empty() && r < 5) n = uni(1, left);       // a prompt
      else if (r < 6) n = 0;                           // this sequence sits out a step
      else if (r < 9 || f.moa_evict) n = 1;            // decode
      else n = uni(1, left);                           // another chunk
      if (f.moa_evict && !c.empty()) n = std::min(n, f.max_chunk);
      n = std::min(n, left);
      c.push_back(n);
      left -= n;
    }
    f.chunks.push_back(c);
  }
  return f;
}

// Truth for each token: the one-shot prefill (fp64) of its sequence up to its chunk's end, on
// the selection the cache's gate made (MoBA). Sequences of the truth problem are those prefixes.
inline void check_against_prefill(const Shape& s, Inputs& in, const Fed& fed, int& near_ties, double& worst) {
  Shape ps = s;
  ps.seqlens.clear();
  std::vector<int> src_seq, src_from, src_len;  // per prefix: source sequence, rows [from, len)
  for (std::size_t b = 0; b < s.seqlens.size(); ++b) {
    const int len = s.seqlens[b];
    if (s.params.mode != Mode::moa) {
      ps.seqlens.push_back(len);
      src_seq.push_back(int(b)), src_from.push_back(0), src_len.push_back(len);
      continue;
    }
    for (int t = 0; t < len;) {  // one prefix per chunk
      const int end = fed.chunk_end[in.cu[b] + t];
      ps.seqlens.push_back(end);
      src_seq.push_back(int(b)), src_from.push_back(t), src_len.push_back(end);
      t = end;
    }
  }
  const int K = std::max(s.params.topk - 1, 0);
  Inputs pin;
  pin.cu = ps.cu_seqlens();
  std::vector<int> zeros(ps.seqlens.size(), 0), starts;
  for (int b : src_seq) starts.push_back(in.cu[b]);
  pin.q = gather_rows(in.q, starts, zeros, ps.seqlens);
  pin.k = gather_rows(in.k, starts, zeros, ps.seqlens);
  pin.v = gather_rows(in.v, starts, zeros, ps.seqlens);
  const int PT = ps.total();
  std::vector<std::int32_t> sel(std::size_t(PT) * s.hq * K, -1);
  auto src_token = [&](std::size_t i, int t) { return in.cu[src_seq[i]] + t; };
  if (K > 0) {
    for (std::size_t i = 0; i < ps.seqlens.size(); ++i)
      for (int t = 0; t < ps.seqlens[i]; ++t)
        std::copy_n(&fed.selection[std::size_t(src_token(i, t)) * s.hq * K], s.hq * K,
                    &sel[std::size_t(pin.cu[i] + t) * s.hq * K]);
    // The gate's choice against the reference gate: equal except at fp32 near-ties.
    const std::vector<std::int32_t> ref = reference_selection(ps, pin);
    for (std::size_t i = 0; i < ps.seqlens.size(); ++i)
      for (int t = src_from[i]; t < src_len[i]; ++t)
        for (int h = 0; h < s.hq; ++h) {
          const std::size_t at = (std::size_t(pin.cu[i] + t) * s.hq + h) * K;
          if (std::equal(sel.begin() + at, sel.begin() + at + K, ref.begin() + at)) continue;
          ++near_ties;
          EXPECT_TRUE(selection_within_near_tie(block_scores(ps, pin, int(i), t, h), sel.data() + at, K))
              << s.str() << " token " << t << " head " << h;
        }
  }
  std::vector<double> out, lse;
  exact_forward(ps, pin, sel, out, lse);
  // Compare the rows each prefix stands for.
  std::vector<double> fast_rows, true_rows;
  double lse_err = 0, lse_max = 0;
  const std::size_t row = std::size_t(s.hq) * s.d;
  for (std::size_t i = 0; i < ps.seqlens.size(); ++i)
    for (int t = src_from[i]; t < src_len[i]; ++t) {
      const std::int64_t pt = pin.cu[i] + t, st = src_token(i, t);
      for (std::size_t e = 0; e < row; ++e) {
        fast_rows.push_back(fed.out.get(st * row + e));
        true_rows.push_back(out[pt * row + e]);
      }
      for (int h = 0; h < s.hq; ++h) {
        lse_err = std::max(lse_err, std::fabs(double(fed.lse[std::size_t(h) * s.total() + st]) - lse[std::size_t(h) * PT + pt]));
        lse_max = std::max(lse_max, std::fabs(lse[std::size_t(h) * PT + pt]));
      }
    }
  const double err = rel_l2(fast_rows, true_rows);
  const double allowed = 2 * rel_l2(rounded(true_rows, s.dtype), true_rows) + kFloorForward;
  EXPECT_LE(err, allowed) << s.str();
  EXPECT_LE(lse_err, 2e-5 * (1 + lse_max)) << s.str();
  worst = std::max(worst, err / allowed);
}


}  // namespace moba::testing
