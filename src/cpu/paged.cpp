// CPU decode / chunked prefill over a paged KV cache (moba/paged_attention.hpp).
//
// Work unit = (sequence, KV head, tile of up to kRowTile query rows). A unit gathers the key
// ranges every (row, query head of the group) sees, takes their union and walks it in
// segments that never cross a page: each segment's K/V is converted to fp32 once and then
// serves every row and head that sees any of it (GQA: one read per KV head). Scores run in
// base 2 on pre-scaled queries with an online softmax in fp32. When there are fewer units
// than threads (decode of a small batch over a long context) the union is split into parts
// computed in parallel and merged by log-sum-exp (split-KV), in a fixed order.
//
// Every cache entry a call reads is checked (page ids resident and in range, lengths, MoBA
// selections); a violation is reported as a named moba::Error after the parallel region.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "core/dtype.hpp"
#include "core/paged.hpp"
#include "core/validate.hpp"
#include "core/visibility.hpp"
#include "cpu/top_blocks.hpp"

namespace moba::detail {

namespace {

constexpr int kRowTile = 16;   // query rows of one unit
constexpr int kSegment = 64;   // keys converted at once (within one page)
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

int threads_of(const RunOptions& o) { return o.num_threads > 0 ? o.num_threads : omp_get_max_threads(); }

// n elements of dtype t at `src` (element offset `at`) as fp32.
void to_float(const void* src, std::int64_t at, DType t, int n, float* dst) {
  switch (t) {
    case DType::f32: std::memcpy(dst, static_cast<const float*>(src) + at, sizeof(float) * n); return;
    case DType::bf16: {
      const auto* s = static_cast<const std::uint16_t*>(src) + at;
      for (int i = 0; i < n; ++i) {
        const std::uint32_t u = std::uint32_t(s[i]) << 16;
        std::memcpy(dst + i, &u, 4);
      }
      return;
    }
    case DType::f16: {
      const auto* s = static_cast<const std::uint16_t*>(src) + at;
      for (int i = 0; i < n; ++i) dst[i] = f16_to_float(s[i]);
      return;
    }
    default: return;
  }
}

float dot(const float* a, const float* b, int n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// First error raised inside a parallel region; thrown once the region has ended.
class ErrorSlot {
 public:
  void set(const std::string& arg, const std::string& expected, const std::string& got) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!has_) { has_ = true; arg_ = arg; expected_ = expected; got_ = got; }
  }
  bool has() const { return has_; }
  void rethrow() const { if (has_) invalid(arg_, expected_, got_); }

 private:
  std::mutex mu_;
  bool has_ = false;
  std::string arg_, expected_, got_;
};

std::string num(std::int64_t x) { return std::to_string(x); }

// One query sequence: its cache row, cached length N and its query rows.
struct Seq {
  int row, len, n, q0;
};

std::vector<Seq> query_sequences(const PagedProblem& p) {
  std::vector<Seq> seqs(p.base.batch);
  for (int b = 0; b < p.base.batch; ++b) {
    Seq& s = seqs[b];
    s.row = p.cache_row(b);
    s.len = p.cache.seq_lens[s.row];
    s.q0 = p.base.cu_seqlens[b];
    s.n = p.base.cu_seqlens[b + 1] - s.q0;
    if (s.len < s.n || s.len > p.cache.pages_per_seq * p.cache.page_size)
      invalid("kv.seq_lens[" + num(s.row) + "]",
              "a length in [" + num(s.n) + ", " + num(std::int64_t(p.cache.pages_per_seq) * p.cache.page_size) +
                  "] (the sequence's " + num(s.n) + " query rows are its last tokens; the page table holds " +
                  num(std::int64_t(p.cache.pages_per_seq) * p.cache.page_size) + " positions)",
              num(s.len));
  }
  return seqs;
}

struct Range { int begin, end; };

// Key ranges of the row at position t (sequence length N), query head h. MoBA selections are
// checked here: a used slot must name a completed past block.
bool visible_ranges(const PagedProblem& p, int N, int t, int h, const std::int32_t* sel,
                    std::vector<Range>& out, ErrorSlot& err, std::int64_t token) {
  const Problem& b = p.base;
  if (b.mode != Mode::moba) {
    for_each_visible_range(b, N, t, h, nullptr, [&](int x, int y) { out.push_back({x, y}); });
    return true;
  }
  const int B = b.block_size, own = t / B;
  for (int s = 0; s < b.past_k(); ++s) {
    const int j = sel[s];
    if (j == -1) continue;
    if (j < 0 || j >= own) {
      err.set("selection[" + num(token) + ", " + num(h) + ", " + num(s) + "]",
              "-1 or a completed past block in [0, " + num(own) + ")", num(j));
      return false;
    }
    if (std::find(sel, sel + s, j) != sel + s) continue;  // a repeated slot counts once
    out.push_back({j * B, (j + 1) * B});
  }
  if (p.include_own_block) out.push_back({own * B, t + 1});
  return true;
}

// Online-softmax state of one (row, head), base 2.
struct State {
  float m = -INFINITY, l = 0.f;
};

struct Unit {
  int seq, g, r0, r1;          // sequence, KV head, query rows [r0, r1) of the sequence
  std::vector<Range> segments;  // the union of its rows' keys, cut at pages and kSegment
  std::vector<int> range_offset;  // per (row, head) into ranges
  std::vector<Range> ranges;
  std::int64_t keys = 0;
  int splits = 1;
};

class PagedAttention {
 public:
  PagedAttention(const PagedProblem& p, const PagedOutputs& io, const RunOptions& o)
      : p_(p), io_(io), threads_(threads_of(o)), D_(p.base.head_dim), G_(p.base.group()) {}

  void run() {
    seqs_ = query_sequences(p_);
    plan();
    err_.rethrow();
    const std::size_t stride = std::size_t(D_) + 2;
    std::vector<std::size_t> part_base(units_.size() + 1, 0);
    for (std::size_t u = 0; u < units_.size(); ++u)
      part_base[u + 1] = part_base[u] + std::size_t(units_[u].splits) * rows_of(units_[u]) * stride;
    parts_.assign(part_base.back(), 0.f);
    std::vector<std::pair<int, int>> work;
    for (std::size_t u = 0; u < units_.size(); ++u)
      for (int s = 0; s < units_[u].splits; ++s) work.push_back({int(u), s});
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads_)
    for (std::size_t w = 0; w < work.size(); ++w) {
      const Unit& u = units_[work[w].first];
      compute(u, work[w].second, &parts_[part_base[work[w].first] + std::size_t(work[w].second) * rows_of(u) * stride]);
    }
    err_.rethrow();
#pragma omp parallel for schedule(dynamic, 4) num_threads(threads_)
    for (std::size_t u = 0; u < units_.size(); ++u) finish(units_[u], &parts_[part_base[u]]);
  }

 private:
  int rows_of(const Unit& u) const { return (u.r1 - u.r0) * G_; }

  // Units, their key ranges and unions, and how many parts each union is split into.
  void plan() {
    for (int b = 0; b < p_.base.batch; ++b)
      for (int g = 0; g < p_.base.hkv; ++g)
        for (int r = 0; r < seqs_[b].n; r += kRowTile)
          units_.push_back(Unit{b, g, r, std::min(seqs_[b].n, r + kRowTile), {}, {}, {}, 0, 1});
#pragma omp parallel for schedule(dynamic, 4) num_threads(threads_)
    for (std::size_t u = 0; u < units_.size(); ++u) gather(units_[u]);
    if (err_.has()) return;
    // Split-KV: aim at ~2 parts per thread overall, parts of >= 512 keys.
    const std::size_t want = std::size_t(2) * threads_;
    if (units_.size() >= want) return;
    for (Unit& u : units_) {
      const std::int64_t by_threads = std::int64_t((want + units_.size() - 1) / units_.size());
      const std::int64_t by_keys = std::max<std::int64_t>(1, u.keys / 512);
      u.splits = static_cast<int>(std::max<std::int64_t>(1, std::min(by_threads, by_keys)));
      u.splits = std::min<int>(u.splits, static_cast<int>(std::max<std::size_t>(1, u.segments.size())));
    }
  }

  void gather(Unit& u) {
    const Seq& s = seqs_[u.seq];
    std::vector<Range> all;
    for (int r = u.r0; r < u.r1; ++r) {
      const int t = s.len - s.n + r;
      const std::int64_t token = s.q0 + r;
      for (int hh = 0; hh < G_; ++hh) {
        const int h = u.g * G_ + hh;
        u.range_offset.push_back(static_cast<int>(u.ranges.size()));
        const std::int32_t* sel = io_.selection ? io_.selection + (token * p_.base.hq + h) * p_.base.past_k() : nullptr;
        if (!visible_ranges(p_, s.len, t, h, sel, u.ranges, err_, token)) return;
      }
    }
    u.range_offset.push_back(static_cast<int>(u.ranges.size()));
    all = u.ranges;
    std::sort(all.begin(), all.end(), [](const Range& a, const Range& b) { return a.begin < b.begin; });
    const int P = p_.cache.page_size;
    int i = 0;
    while (i < static_cast<int>(all.size())) {
      int b = all[i].begin, e = all[i].end;
      for (++i; i < static_cast<int>(all.size()) && all[i].begin <= e; ++i) e = std::max(e, all[i].end);
      for (int pos = b; pos < e;) {
        const int stop = std::min({e, (pos / P + 1) * P, pos + kSegment});
        if (!resident(s.row, u.g, pos)) return;
        u.segments.push_back({pos, stop});
        u.keys += stop - pos;
        pos = stop;
      }
    }
  }

  bool resident(int row, int g, int pos) {
    const int i = pos / p_.cache.page_size;
    const int page = p_.cache.page_table[p_.cache.table_index(row, g, i)];
    if (page >= 0 && page < p_.cache.num_pages) return true;
    err_.set("kv.page_table[" + num(row) + ", " + num(g) + ", " + num(i) + "]",
             "a resident page id in [0, " + num(p_.cache.num_pages) + ") for key position " + num(pos),
             num(page));
    return false;
  }

  const void* page_data(const void* pages, int row, int g, int pos) const {
    const int page = p_.cache.page_table[p_.cache.table_index(row, g, pos / p_.cache.page_size)];
    const std::int64_t at = (std::int64_t(page) * p_.cache.page_size + pos % p_.cache.page_size) * D_;
    return static_cast<const char*>(pages) + at * dtype_size(p_.base.dtype);
  }

  // Part `split` of the unit's union: writes (m, l, acc[D]) per (row, head) to `part`.
  void compute(const Unit& u, int split, float* part) {
    const Seq& s = seqs_[u.seq];
    const int R = rows_of(u);
    const std::size_t nseg = u.segments.size();
    const std::size_t seg_begin = nseg * split / u.splits, seg_end = nseg * (split + 1) / u.splits;
    std::vector<float> q(std::size_t(R) * D_), acc(std::size_t(R) * D_, 0.f);
    std::vector<State> st(R);
    const float qscale = p_.base.scale * kLog2e;
    for (int r = 0; r < R; ++r) {
      const std::int64_t token = s.q0 + u.r0 + r / G_;
      const int h = u.g * G_ + r % G_;
      to_float(io_.q.data, token * io_.q.token_stride + h * io_.q.head_stride, p_.base.dtype, D_, &q[std::size_t(r) * D_]);
      for (int d = 0; d < D_; ++d) q[std::size_t(r) * D_ + d] *= qscale;
    }
    std::vector<float> kbuf(std::size_t(kSegment) * D_), vbuf(kbuf.size()), sc(kSegment);
    for (std::size_t si = seg_begin; si < seg_end; ++si) {
      const Range seg = u.segments[si];
      const int n = seg.end - seg.begin;
      to_float(page_data(p_.cache.k_pages, s.row, u.g, seg.begin), 0, p_.base.dtype, n * D_, kbuf.data());
      to_float(page_data(p_.cache.v_pages, s.row, u.g, seg.begin), 0, p_.base.dtype, n * D_, vbuf.data());
      for (int r = 0; r < R; ++r)
        for (int k = u.range_offset[r]; k < u.range_offset[r + 1]; ++k) {
          const int a = std::max(seg.begin, u.ranges[k].begin), c = std::min(seg.end, u.ranges[k].end);
          if (a < c) update(&q[std::size_t(r) * D_], a - seg.begin, c - seg.begin, kbuf.data(), vbuf.data(),
                            sc.data(), st[r], &acc[std::size_t(r) * D_]);
        }
    }
    for (int r = 0; r < R; ++r) {
      float* o = part + std::size_t(r) * (D_ + 2);
      o[0] = st[r].m;
      o[1] = st[r].l;
      std::memcpy(o + 2, &acc[std::size_t(r) * D_], sizeof(float) * D_);
    }
  }

  // Keys [a, c) of the converted segment into one (row, head)'s online softmax.
  void update(const float* q, int a, int c, const float* kbuf, const float* vbuf, float* sc,
              State& st, float* acc) const {
    float mx = st.m;
    for (int j = a; j < c; ++j) {
      sc[j] = dot(q, kbuf + std::size_t(j) * D_, D_);
      mx = std::max(mx, sc[j]);
    }
    if (mx > st.m) {
      const float alpha = std::exp2(st.m - mx);  // 0 when the state was empty
      st.l *= alpha;
#pragma omp simd
      for (int d = 0; d < D_; ++d) acc[d] *= alpha;
      st.m = mx;
    }
    for (int j = a; j < c; ++j) {
      const float pj = std::exp2(sc[j] - st.m);
      st.l += pj;
      const float* vj = vbuf + std::size_t(j) * D_;
#pragma omp simd
      for (int d = 0; d < D_; ++d) acc[d] += pj * vj[d];
    }
  }

  // Merges the unit's parts in order and writes out / lse.
  void finish(const Unit& u, const float* parts) {
    const Seq& s = seqs_[u.seq];
    const int R = rows_of(u);
    const std::size_t stride = std::size_t(D_) + 2;
    std::vector<float> acc(D_);
    for (int r = 0; r < R; ++r) {
      float M = -INFINITY;
      for (int k = 0; k < u.splits; ++k) {
        const float* x = parts + (std::size_t(k) * R + r) * stride;
        if (x[1] > 0.f) M = std::max(M, x[0]);
      }
      float L = 0.f;
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int k = 0; k < u.splits; ++k) {
        const float* x = parts + (std::size_t(k) * R + r) * stride;
        if (!(x[1] > 0.f)) continue;
        const float w = std::exp2(x[0] - M);
        L += w * x[1];
        for (int d = 0; d < D_; ++d) acc[d] += w * x[2 + d];
      }
      const std::int64_t token = s.q0 + u.r0 + r / G_;
      const int h = u.g * G_ + r % G_;
      const float inv = L > 0.f ? 1.f / L : 0.f;
      for (int d = 0; d < D_; ++d)
        store_from_float(io_.out.data, token * io_.out.token_stride + h * io_.out.head_stride + d, p_.base.dtype,
                         acc[d] * inv);
      io_.lse[std::int64_t(h) * p_.base.total + token] = L > 0.f ? (M + std::log2(L)) * kLn2 : -INFINITY;
    }
  }

  const PagedProblem& p_;
  const PagedOutputs& io_;
  const int threads_, D_, G_;
  std::vector<Seq> seqs_;
  std::vector<Unit> units_;
  std::vector<float> parts_;
  ErrorSlot err_;
};


}  // namespace

void cpu_paged_attention(const PagedProblem& p, const PagedOutputs& io, const RunOptions& o) {
  PagedAttention(p, io, o).run();
}

void cpu_paged_gate(const PagedProblem& p, const Operand& q, std::int32_t* selection,
                    const RunOptions& o) {
  const int K = p.base.past_k(), D = p.base.head_dim, B = p.base.block_size, G = p.base.group();
  if (K == 0) return;
  const std::vector<Seq> seqs = query_sequences(p);
  for (const Seq& s : seqs)  // every block a row may score must fit the means
    if (s.len > 0 && (s.len - 1) / B > p.cache.max_blocks)
      invalid("kv.block_means", "room for the " + num((s.len - 1) / B) + " completed blocks of row " + num(s.row),
              num(p.cache.max_blocks) + " blocks");
  std::vector<std::pair<int, int>> rows;  // (sequence, query row)
  for (int b = 0; b < p.base.batch; ++b)
    for (int r = 0; r < seqs[b].n; ++r) rows.push_back({b, r});
  const std::size_t elem = dtype_size(p.base.dtype);
#pragma omp parallel num_threads(threads_of(o))
  {
    std::vector<float> qf(D), mean(D), scores;
    std::vector<int> best(K);
    std::vector<float> best_score(K);
#pragma omp for schedule(dynamic, 8)
    for (std::size_t i = 0; i < rows.size(); ++i) {
      const Seq& s = seqs[rows[i].first];
      const int r = rows[i].second, t = s.len - s.n + r, own = t / B;
      const std::int64_t token = s.q0 + r;
      for (int h = 0; h < p.base.hq; ++h) {
        std::int32_t* out = selection + (token * p.base.hq + h) * K;
        std::fill(out, out + K, -1);
        if (own == 0) continue;
        to_float(q.data, token * q.token_stride + h * q.head_stride, p.base.dtype, D, qf.data());
        scores.resize(own);
        const char* means = static_cast<const char*>(p.cache.block_means) +
                            (std::int64_t(s.row) * p.base.hkv + h / G) * p.cache.max_blocks * D * elem;
        for (int j = 0; j < own; ++j) {
          to_float(means, std::int64_t(j) * D, p.base.dtype, D, mean.data());
          scores[j] = dot(qf.data(), mean.data(), D);
        }
        const int kept = cpu::top_blocks(scores.data(), own, K, best.data(), best_score.data());
        std::copy(best.begin(), best.begin() + kept, out);
      }
    }
  }
}

void cpu_kv_append(const PagedProblem& p, const AppendInputs& in, const RunOptions& o) {
  const int D = p.base.head_dim, P = p.cache.page_size, B = in.block_size;
  const std::int64_t capacity = std::int64_t(p.cache.pages_per_seq) * P;
  std::vector<int> row(p.base.batch), len(p.base.batch), n(p.base.batch);
  // Every check before the first write: a failed append leaves the cache unchanged.
  for (int b = 0; b < p.base.batch; ++b) {
    row[b] = p.cache_row(b);
    len[b] = p.cache.seq_lens[row[b]];
    n[b] = p.base.cu_seqlens[b + 1] - p.base.cu_seqlens[b];
    if (len[b] < 0 || len[b] + std::int64_t(n[b]) > capacity)
      invalid("kv.seq_lens[" + num(row[b]) + "]",
              "room for " + num(n[b]) + " more positions (the page table holds " + num(capacity) + ")",
              "length " + num(len[b]));
    if (B > 0 && (len[b] + n[b]) / B > p.cache.max_blocks)
      invalid("kv.block_means", "room for " + num((len[b] + n[b]) / B) + " completed blocks of row " + num(row[b]),
              num(p.cache.max_blocks) + " blocks");
    for (int g = 0; g < p.base.hkv; ++g)
      for (int pos = len[b]; pos < len[b] + n[b]; pos = (pos / P + 1) * P) {
        const int page = p.cache.page_table[p.cache.table_index(row[b], g, pos / P)];
        if (page < 0 || page >= p.cache.num_pages)
          invalid("kv.page_table[" + num(row[b]) + ", " + num(g) + ", " + num(pos / P) + "]",
                  "a page id in [0, " + num(p.cache.num_pages) + ") assigned for position " + num(pos), num(page));
      }
  }
  const std::size_t elem = dtype_size(p.base.dtype);
#pragma omp parallel for collapse(2) schedule(dynamic, 1) num_threads(threads_of(o))
  for (int b = 0; b < p.base.batch; ++b)
    for (int g = 0; g < p.base.hkv; ++g) {
      double* sums = B > 0 ? p.cache.block_sums + (std::int64_t(row[b]) * p.base.hkv + g) * D : nullptr;
      for (int i = 0; i < n[b]; ++i) {
        const int pos = len[b] + i;
        const std::int64_t token = p.base.cu_seqlens[b] + i;
        const int page = p.cache.page_table[p.cache.table_index(row[b], g, pos / P)];
        const std::int64_t dst = (std::int64_t(page) * P + pos % P) * D;
        const std::int64_t ks = token * in.k.token_stride + g * in.k.head_stride;
        const std::int64_t vs = token * in.v.token_stride + g * in.v.head_stride;
        std::memcpy(static_cast<char*>(p.cache.k_pages) + dst * elem, static_cast<const char*>(in.k.data) + ks * elem, D * elem);
        std::memcpy(static_cast<char*>(p.cache.v_pages) + dst * elem, static_cast<const char*>(in.v.data) + vs * elem, D * elem);
        if (!sums) continue;
        for (int d = 0; d < D; ++d) sums[d] += load_as_float(in.k.data, ks + d, p.base.dtype);
        if ((pos + 1) % B != 0) continue;
        // The block is complete: its mean exactly as the one-shot gate computes it.
        const std::int64_t m = ((std::int64_t(row[b]) * p.base.hkv + g) * p.cache.max_blocks + pos / B) * D;
        for (int d = 0; d < D; ++d) {
          store_from_float(p.cache.block_means, m + d, p.base.dtype, static_cast<float>(sums[d]) / static_cast<float>(B));
          sums[d] = 0.0;
        }
      }
    }
  for (int b = 0; b < p.base.batch; ++b) p.cache.seq_lens[row[b]] = len[b] + n[b];
}

void cpu_merge_states(int total, int heads, int head_dim, DType dtype, const Operand& out_a,
                      const float* lse_a, const Operand& out_b, const float* lse_b,
                      const Operand& out, float* lse, const RunOptions& o) {
#pragma omp parallel for collapse(2) num_threads(threads_of(o))
  for (int t = 0; t < total; ++t)
    for (int h = 0; h < heads; ++h) {
      const std::int64_t li = std::int64_t(h) * total + t;
      const float la = lse_a[li], lb = lse_b[li];
      const float m = std::max(la, lb);
      const float wa = la == -INFINITY ? 0.f : std::exp(la - m);
      const float wb = lb == -INFINITY ? 0.f : std::exp(lb - m);
      const float sum = wa + wb;
      for (int d = 0; d < head_dim; ++d) {
        const float a = load_as_float(out_a.data, t * out_a.token_stride + h * out_a.head_stride + d, dtype);
        const float b = load_as_float(out_b.data, t * out_b.token_stride + h * out_b.head_stride + d, dtype);
        store_from_float(out.data, t * out.token_stride + h * out.head_stride + d, dtype,
                         sum > 0.f ? (wa * a + wb * b) / sum : 0.f);
      }
      lse[li] = sum > 0.f ? m + std::log(sum) : -INFINITY;
    }
}

}  // namespace moba::detail
