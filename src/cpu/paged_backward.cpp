// CPU backward of attention over a paged KV cache (moba/paged_attention_backward.hpp).
//
// Two passes over the same key sets, each race-free and in a fixed order (deterministic):
//  1. dq: parallel over (query row, head) items; each walks its key ranges.
//  2. dk/dv: the items' ranges are cut at page boundaries and bucketed by physical page;
//     parallel over pages, each page's K/V converted to fp32 once and its gradients summed
//     over every (row, head) that sees it, so pages shared by several cache rows (or read
//     by several query heads of a group) need no atomics.
// Scores use the forward's lse (natural log) and D_t = <dout_t, out_t>; arithmetic is fp32.
#include <omp.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core/dtype.hpp"
#include "core/paged_backward.hpp"
#include "core/validate.hpp"
#include "core/visibility.hpp"

namespace moba::detail {

namespace {

struct Range { int begin, end; };

// One bucket entry: keys [a, c) of a page (offsets within the page) seen by item `item`.
struct Entry { std::int64_t item; int a, c; };

std::string num(std::int64_t x) { return std::to_string(x); }

void load_row(const void* base, std::int64_t at, DType t, int n, float* dst) {
  if (t == DType::f32) {
    std::memcpy(dst, static_cast<const float*>(base) + at, sizeof(float) * n);
    return;
  }
  for (int i = 0; i < n; ++i) dst[i] = load_as_float(base, at + i, t);
}

float dot(const float* a, const float* b, int n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

class PagedBackward {
 public:
  PagedBackward(const PagedProblem& p, const PagedOutputs& io, const Operand& dout, const Operand& dq,
                const float* lse, void* dk, void* dv, DType gd, const RunOptions& o)
      : p_(p), io_(io), dout_(dout), dq_(dq), lse_(lse), dk_(dk), dv_(dv), gd_(gd),
        threads_(o.num_threads > 0 ? o.num_threads : omp_get_max_threads()),
        D_(p.base.head_dim), hq_(p.base.hq), G_(p.base.group()), P_(p.cache.page_size) {}

  void run() {
    plan();
    prepare();
    dq_pass();
    dkv_pass();
  }

 private:
  // Key ranges of every (token, head) item and the cache row of every token; every selection
  // slot and every page a range touches is checked before anything is written.
  void plan() {
    const Problem& b = p_.base;
    const std::int64_t items = std::int64_t(b.total) * hq_;
    offset_.assign(items + 1, 0);
    token_row_.assign(b.total, 0);
    for (int s = 0; s < b.batch; ++s) {
      const int row = p_.cache_row(s), len = p_.cache.seq_lens[row];
      const int q0 = b.cu_seqlens[s], n = b.cu_seqlens[s + 1] - q0;
      const std::int64_t cap = std::int64_t(p_.cache.pages_per_seq) * P_;
      if (len < n || len > cap)
        invalid("kv.seq_lens[" + num(row) + "]",
                "a length in [" + num(n) + ", " + num(cap) + "] (the sequence's query rows are its last tokens)",
                num(len));
      for (int r = 0; r < n; ++r) {
        const int t = len - n + r;
        const std::int64_t token = q0 + r;
        token_row_[token] = row;
        for (int h = 0; h < hq_; ++h) {
          const std::int64_t it = token * hq_ + h;
          add_ranges(row, len, t, h, token);
          offset_[it + 1] = static_cast<std::int64_t>(ranges_.size());
        }
      }
    }
    // Tokens of no sequence (none when cu_seqlens covers q) keep empty range lists.
    for (std::int64_t i = 1; i <= items; ++i) offset_[i] = std::max(offset_[i], offset_[i - 1]);
  }

  void add_ranges(int row, int len, int t, int h, std::int64_t token) {
    const Problem& b = p_.base;
    const int g = h / G_;
    auto push = [&](int x, int y) {
      for (int pos = x; pos < y; pos = (pos / P_ + 1) * P_) {
        const int i = pos / P_;
        const int page = p_.cache.page_table[p_.cache.table_index(row, g, i)];
        if (page < 0 || page >= p_.cache.num_pages)
          invalid("kv.page_table[" + num(row) + ", " + num(g) + ", " + num(i) + "]",
                  "a resident page id in [0, " + num(p_.cache.num_pages) + ") for key position " + num(pos),
                  num(page));
      }
      ranges_.push_back({x, y});
    };
    if (b.mode != Mode::moba) {
      for_each_visible_range(b, len, t, h, nullptr, push);
      return;
    }
    const int B = b.block_size, own = t / B;
    const std::int32_t* sel = io_.selection + (token * hq_ + h) * b.past_k();
    for (int s = 0; s < b.past_k(); ++s) {
      const int j = sel[s];
      if (j == -1) continue;
      if (j < 0 || j >= own)
        invalid("args.selection[" + num(token) + ", " + num(h) + ", " + num(s) + "]",
                "-1 or a completed past block in [0, " + num(own) + ")", num(j));
      push(j * B, (j + 1) * B);
    }
    if (p_.include_own_block) push(own * B, t + 1);
  }

  const void* key_row(const void* pages, int row, int g, int pos) const {
    const int page = p_.cache.page_table[p_.cache.table_index(row, g, pos / P_)];
    const std::int64_t at = (std::int64_t(page) * P_ + pos % P_) * D_;
    return static_cast<const char*>(pages) + at * dtype_size(p_.base.dtype);
  }

  // fp32 copies of scale*q and dout, D_t = <dout, out> and the lse of every item.
  void prepare() {
    const Problem& b = p_.base;
    const std::int64_t items = std::int64_t(b.total) * hq_;
    qs_.assign(items * D_, 0.f);
    do_.assign(items * D_, 0.f);
    Dt_.assign(items, 0.f);
    L_.assign(items, 0.f);
#pragma omp parallel num_threads(threads_)
    {
      std::vector<float> o(D_);
#pragma omp for schedule(static)
      for (std::int64_t it = 0; it < items; ++it) {
        const std::int64_t token = it / hq_;
        const int h = static_cast<int>(it % hq_);
        float* q = &qs_[it * D_];
        float* d = &do_[it * D_];
        load_row(io_.q.data, token * io_.q.token_stride + h * io_.q.head_stride, b.dtype, D_, q);
        for (int x = 0; x < D_; ++x) q[x] *= b.scale;
        load_row(dout_.data, token * dout_.token_stride + h * dout_.head_stride, b.dtype, D_, d);
        load_row(io_.out.data, token * io_.out.token_stride + h * io_.out.head_stride, b.dtype, D_, o.data());
        Dt_[it] = dot(d, o.data(), D_);
        L_[it] = lse_[std::int64_t(h) * b.total + token];
      }
    }
  }

  void dq_pass() {
    const Problem& b = p_.base;
    const std::int64_t items = std::int64_t(b.total) * hq_;
#pragma omp parallel num_threads(threads_)
    {
      std::vector<float> k(D_), v(D_), acc(D_);
#pragma omp for schedule(dynamic, 16)
      for (std::int64_t it = 0; it < items; ++it) {
        const std::int64_t token = it / hq_;
        const int h = static_cast<int>(it % hq_), g = h / G_, row = token_row_[token];
        const float* q = &qs_[it * D_];
        const float* d = &do_[it * D_];
        std::fill(acc.begin(), acc.end(), 0.f);
        for (std::int64_t r = offset_[it]; r < offset_[it + 1]; ++r)
          for (int pos = ranges_[r].begin; pos < ranges_[r].end; ++pos) {
            load_row(key_row(p_.cache.k_pages, row, g, pos), 0, b.dtype, D_, k.data());
            load_row(key_row(p_.cache.v_pages, row, g, pos), 0, b.dtype, D_, v.data());
            const float pj = std::exp(dot(q, k.data(), D_) - L_[it]);
            const float ds = pj * (dot(d, v.data(), D_) - Dt_[it]);
#pragma omp simd
            for (int x = 0; x < D_; ++x) acc[x] += ds * k[x];
          }
        for (int x = 0; x < D_; ++x)
          store_from_float(dq_.data, token * dq_.token_stride + h * dq_.head_stride + x, b.dtype, b.scale * acc[x]);
      }
    }
  }

  void dkv_pass() {
    const Problem& b = p_.base;
    const std::int64_t items = std::int64_t(b.total) * hq_;
    const int pages = p_.cache.num_pages;
    // Bucket (item, keys within one page) by physical page, in item order.
    std::vector<std::int64_t> start(std::size_t(pages) + 1, 0);
    auto for_each_piece = [&](auto&& f) {
      for (std::int64_t it = 0; it < items; ++it) {
        const int g = static_cast<int>(it % hq_) / G_, row = token_row_[it / hq_];
        for (std::int64_t r = offset_[it]; r < offset_[it + 1]; ++r)
          for (int pos = ranges_[r].begin; pos < ranges_[r].end;) {
            const int stop = std::min(ranges_[r].end, (pos / P_ + 1) * P_);
            const int page = p_.cache.page_table[p_.cache.table_index(row, g, pos / P_)];
            f(page, Entry{it, pos % P_, pos % P_ + (stop - pos)});
            pos = stop;
          }
      }
    };
    for_each_piece([&](int page, const Entry&) { ++start[page + 1]; });
    for (int i = 0; i < pages; ++i) start[i + 1] += start[i];
    std::vector<Entry> entries(start[pages]);
    std::vector<std::int64_t> fill(start.begin(), start.end() - 1);
    for_each_piece([&](int page, const Entry& e) { entries[fill[page]++] = e; });

    const std::int64_t page_elems = std::int64_t(P_) * D_;
#pragma omp parallel num_threads(threads_)
    {
      std::vector<float> k(page_elems), v(page_elems), dk(page_elems), dv(page_elems);
#pragma omp for schedule(dynamic, 1)
      for (int page = 0; page < pages; ++page) {
        std::fill(dk.begin(), dk.end(), 0.f);
        std::fill(dv.begin(), dv.end(), 0.f);
        if (start[page] < start[page + 1]) {
          load_row(p_.cache.k_pages, page * page_elems, b.dtype, static_cast<int>(page_elems), k.data());
          load_row(p_.cache.v_pages, page * page_elems, b.dtype, static_cast<int>(page_elems), v.data());
        }
        for (std::int64_t e = start[page]; e < start[page + 1]; ++e) {
          const Entry& en = entries[e];
          const float* q = &qs_[en.item * D_];
          const float* d = &do_[en.item * D_];
          for (int j = en.a; j < en.c; ++j) {
            const float* kj = &k[std::int64_t(j) * D_];
            const float pj = std::exp(dot(q, kj, D_) - L_[en.item]);
            const float ds = pj * (dot(d, &v[std::int64_t(j) * D_], D_) - Dt_[en.item]);
            float* dkj = &dk[std::int64_t(j) * D_];
            float* dvj = &dv[std::int64_t(j) * D_];
#pragma omp simd
            for (int x = 0; x < D_; ++x) {
              dkj[x] += ds * q[x];  // q is pre-scaled: scale * ds * q
              dvj[x] += pj * d[x];
            }
          }
        }
        for (std::int64_t x = 0; x < page_elems; ++x) {
          store_from_float(dk_, page * page_elems + x, gd_, dk[x]);
          store_from_float(dv_, page * page_elems + x, gd_, dv[x]);
        }
      }
    }
  }

  const PagedProblem& p_;
  const PagedOutputs& io_;
  const Operand dout_, dq_;
  const float* lse_;
  void* dk_;
  void* dv_;
  const DType gd_;
  const int threads_, D_, hq_, G_, P_;
  std::vector<std::int64_t> offset_;
  std::vector<Range> ranges_;
  std::vector<int> token_row_;
  std::vector<float> qs_, do_, Dt_, L_;
};

}  // namespace

void cpu_paged_attention_backward(const PagedProblem& p, const PagedOutputs& io, const Operand& dout,
                                  const Operand& dq, const float* lse, void* dk_pages, void* dv_pages,
                                  DType grad_dtype, const RunOptions& o) {
  PagedBackward(p, io, dout, dq, lse, dk_pages, dv_pages, grad_dtype, o).run();
}

}  // namespace moba::detail
