// PagedKVCache: host bookkeeping of a paged KV cache (moba/kv_cache.hpp). Pages are assigned
// from a free list before kv_append writes into them; every check runs before the first
// change, so a refused append leaves the cache exactly as it was.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "core/backends.hpp"
#include "core/paged.hpp"
#include "core/validate.hpp"
#include "moba/kv_cache.hpp"

namespace moba {

using namespace detail;

namespace {

std::string num(std::int64_t x) { return std::to_string(x); }

int ceil_div(std::int64_t a, std::int64_t b) { return static_cast<int>((a + b - 1) / b); }

void check_config(const KVCacheConfig& c) {
  auto positive = [](const char* name, std::int64_t v) {
    if (v < 1) invalid(std::string("config.") + name, "a value >= 1", num(v));
  };
  positive("num_kv_heads", c.num_kv_heads);
  positive("head_dim", c.head_dim);
  positive("page_size", c.page_size);
  positive("num_pages", c.num_pages);
  positive("max_rows", c.max_rows);
  positive("max_seqlen", c.max_seqlen);
  if (c.block_size < 0) invalid("config.block_size", "a block size >= 0 (0: no MoBA means)", num(c.block_size));
  if (c.dtype != DType::f32 && c.dtype != DType::f16 && c.dtype != DType::bf16)
    invalid("config.dtype", "f32, f16 or bf16", dtype_name(c.dtype));
  if (c.moa_evict) {
    positive("num_q_heads", c.num_q_heads);
    if (c.num_q_heads % c.num_kv_heads != 0)
      invalid("config.num_q_heads", "a multiple of num_kv_heads = " + num(c.num_kv_heads), num(c.num_q_heads));
    const auto per_head = [&](const char* name, const std::vector<float>& xs) {
      if (int(xs.size()) != c.num_q_heads && int(xs.size()) != c.num_kv_heads)
        invalid(std::string("config.moa.") + name, "one value per query head (" + num(c.num_q_heads) +
                                                       ") or per KV head (" + num(c.num_kv_heads) + ")",
                num(xs.size()) + " values");
      for (float x : xs)
        if (!std::isfinite(x) || x < 0) invalid(std::string("config.moa.") + name, "finite values >= 0", std::to_string(x));
    };
    per_head("alpha", c.moa.alpha);
    per_head("beta", c.moa.beta);
    if (c.moa.sink < 0) invalid("config.moa.sink", "a sink >= 0", num(c.moa.sink));
    positive("max_chunk", c.max_chunk);
  }
}

std::vector<std::int64_t> shape_of(const TensorView& t) {
  return std::vector<std::int64_t>(t.shape, t.shape + t.ndim);
}

std::string shape_str(const std::vector<std::int64_t>& s) {
  std::string out = "[";
  for (std::size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + num(s[i]);
  return out + "]";
}

void expect_shape(const char* name, const TensorView& t, const std::vector<std::int64_t>& shape) {
  if (shape_of(t) != shape) invalid(name, "shape " + shape_str(shape) + " (kv_cache_shapes)", "shape " + t.shape_str());
}

// MoA window of a head for a sequence of n tokens (docs/semantics.md).
int window(float alpha, float beta, std::int64_t n) {
  const double span = std::floor(double(alpha) + double(beta) * double(n));
  if (span < 1.0) return 1;
  return span > double(n) ? static_cast<int>(std::max<std::int64_t>(n, 1)) : static_cast<int>(span);
}

}  // namespace

KVCacheShapes kv_cache_shapes(const KVCacheConfig& c) {
  check_config(c);
  KVCacheShapes s;
  const std::int64_t pages_per_seq = ceil_div(c.max_seqlen, c.page_size);
  s.k_pages = {c.num_pages, c.page_size, c.head_dim};
  s.v_pages = s.k_pages;
  s.page_table = {c.max_rows, c.num_kv_heads, pages_per_seq};
  s.seq_lens = {c.max_rows};
  if (c.block_size > 0) {
    s.block_means = {c.max_rows, c.num_kv_heads, std::max<std::int64_t>(1, c.max_seqlen / c.block_size), c.head_dim};
    s.block_sums = {c.max_rows, c.num_kv_heads, c.head_dim};
  }
  return s;
}

PagedKVCache::PagedKVCache(const KVCacheConfig& config, const PagedKV& tensors)
    : config_(config), tensors_(tensors) {
  const KVCacheShapes s = kv_cache_shapes(config);
  expect_shape("tensors.k_pages", tensors.k_pages, s.k_pages);
  expect_shape("tensors.v_pages", tensors.v_pages, s.v_pages);
  expect_shape("tensors.page_table", tensors.page_table, s.page_table);
  expect_shape("tensors.seq_lens", tensors.seq_lens, s.seq_lens);
  if (config.block_size > 0) {
    expect_shape("tensors.block_means", tensors.block_means, s.block_means);
    expect_shape("tensors.block_sums", tensors.block_sums, s.block_sums);
  }
  const Device dev = tensors.k_pages.device;
  for (const TensorView* t : {&tensors.v_pages, &tensors.page_table, &tensors.seq_lens})
    if (t->device != dev) invalid("tensors", "every tensor on " + device_name(dev), device_name(t->device));
  if (tensors.k_pages.dtype != config.dtype || tensors.v_pages.dtype != config.dtype)
    invalid("tensors.k_pages", "dtype " + dtype_name(config.dtype) + " (config.dtype)", dtype_name(tensors.k_pages.dtype));
  pages_per_seq_ = static_cast<int>(s.page_table[2]);
  table_.assign(std::size_t(config.max_rows) * config.num_kv_heads * pages_per_seq_, -1);
  lens_.assign(config.max_rows, 0);
  free_.resize(config.num_pages);
  for (int i = 0; i < config.num_pages; ++i) free_[i] = config.num_pages - 1 - i;  // page 0 first
  publish({}, {});
}

int PagedKVCache::seq_len(int slot) const {
  if (slot < 0 || slot >= config_.max_rows) invalid("slot", "a cache row in [0, " + num(config_.max_rows) + ")", num(slot));
  return lens_[slot];
}

// The first position KV head `head` of a row must keep (besides its sink) while the row grows
// to new_len in this append and by up to max_chunk tokens per later append.
int PagedKVCache::first_needed_position(int row, int head, int new_len) const {
  const int len = lens_[row];
  const int G = config_.num_q_heads / config_.num_kv_heads;
  int keep = new_len;
  for (int hh = 0; hh < G; ++hh) {
    const int h = head * G + hh;
    const bool per_q = int(config_.moa.alpha.size()) == config_.num_q_heads;
    const float a = config_.moa.alpha[per_q ? h : head];
    const float b = config_.moa.beta[int(config_.moa.beta.size()) == config_.num_q_heads ? h : head];
    const int now = len + 1 - window(a, b, new_len);                         // this append's rows
    const int later = new_len + 1 - window(a, b, std::int64_t(new_len) + config_.max_chunk);
    keep = std::min({keep, now, later});
  }
  (void)row;
  return std::max(keep, 0);
}

void PagedKVCache::append(const TensorView& k_new, const TensorView& v_new,
                          const TensorView& cu_seqlens_new, const std::vector<int>& slots,
                          const RunOptions& options) {
  // Shapes first.
  if (k_new.ndim != 3 || k_new.shape[1] != config_.num_kv_heads || k_new.shape[2] != config_.head_dim)
    invalid("k_new", "shape [new_tokens, " + num(config_.num_kv_heads) + ", " + num(config_.head_dim) +
                         "] (the cache's KV heads and head_dim)", "shape " + k_new.shape_str());
  if (k_new.dtype != config_.dtype) invalid("k_new", "dtype " + dtype_name(config_.dtype) + " (the cache's)", dtype_name(k_new.dtype));
  if (k_new.device != tensors_.k_pages.device)
    invalid("k_new", "device " + device_name(tensors_.k_pages.device) + " (the cache's)", device_name(k_new.device));
  if (v_new.ndim != 3 || shape_of(v_new) != shape_of(k_new) || v_new.dtype != k_new.dtype || v_new.device != k_new.device)
    invalid("v_new", "shape " + k_new.shape_str() + ", dtype and device of k_new",
            dtype_name(v_new.dtype) + " " + v_new.shape_str() + " on " + device_name(v_new.device));
  for (const TensorView* t : {&k_new, &v_new})
    if (t->ndim == 3 && t->shape[2] > 1 && t->stride[2] != 1)
      invalid(t == &k_new ? "k_new" : "v_new", "the last dimension contiguous", "stride " + num(t->stride[2]));
  if (cu_seqlens_new.ndim != 1 || cu_seqlens_new.dtype != DType::i32 || cu_seqlens_new.shape[0] != std::int64_t(slots.size()) + 1)
    invalid("cu_seqlens_new", "int32 [batch + 1] with batch = slots.size() = " + num(slots.size()),
            dtype_name(cu_seqlens_new.dtype) + " " + cu_seqlens_new.shape_str());
  std::vector<std::int32_t> cu(slots.size() + 1);
  if (cu_seqlens_new.device.type == DeviceType::cpu)
    std::copy_n(static_cast<const std::int32_t*>(cu_seqlens_new.data), cu.size(), cu.begin());
  else
    cuda_copy_to_host(cu.data(), cu_seqlens_new.data, cu.size() * sizeof(std::int32_t), options.cuda_stream);
  if (cu[0] != 0 || cu.back() != k_new.shape[0])
    invalid("cu_seqlens_new", "0 first and new_tokens = " + num(k_new.shape[0]) + " last", "[" + num(cu[0]) + " .. " + num(cu.back()) + "]");
  std::vector<int> counts(slots.size());
  for (std::size_t b = 0; b < slots.size(); ++b) {
    counts[b] = cu[b + 1] - cu[b];
    if (counts[b] < 0) invalid("cu_seqlens_new", "non-decreasing values", "a decrease at " + num(b + 1));
  }
  reserve(counts, slots, options);
  std::vector<std::int32_t> slot_ids(slots.begin(), slots.end());
  const TensorView slot_view = TensorView::contiguous(slot_ids.data(), DType::i32, Device::cpu(), {std::int64_t(slot_ids.size())});
  const TensorView cu_view = TensorView::contiguous(cu.data(), DType::i32, Device::cpu(), {std::int64_t(cu.size())});
  kv_append(k_new, v_new, cu_view, tensors_, config_.block_size, slot_view, options);
}

void PagedKVCache::reserve(const std::vector<int>& new_tokens, const std::vector<int>& slots,
                           const RunOptions& options) {
  if (new_tokens.size() != slots.size())
    invalid("new_tokens", "one count per slot (" + num(slots.size()) + ")", num(new_tokens.size()) + " counts");
  std::vector<std::int32_t> cu(slots.size() + 1, 0);
  for (std::size_t b = 0; b < slots.size(); ++b) {
    if (new_tokens[b] < 0) invalid("new_tokens[" + num(b) + "]", "a count >= 0", num(new_tokens[b]));
    cu[b + 1] = cu[b] + new_tokens[b];
  }
  std::vector<char> seen(config_.max_rows, 0);
  for (std::size_t b = 0; b < slots.size(); ++b) {
    const int r = slots[b];
    if (r < 0 || r >= config_.max_rows)
      invalid("slots[" + num(b) + "]", "a cache row in [0, " + num(config_.max_rows) + ")", num(r));
    if (seen[r]++) invalid("slots[" + num(b) + "]", "distinct cache rows", "row " + num(r) + " twice");
    const int n = cu[b + 1] - cu[b];
    if (std::int64_t(lens_[r]) + n > config_.max_seqlen)
      invalid("slots[" + num(b) + "]", "room for " + num(n) + " more tokens in row " + num(r) + " (length " +
                                           num(lens_[r]) + ", max_seqlen " + num(config_.max_seqlen) + ")",
              "a sequence of " + num(std::int64_t(lens_[r]) + n) + " tokens");
  }
  // Plan: pages to free (MoA: outside the sink and every window) and pages to assign.
  const int P = config_.page_size, H = config_.num_kv_heads;
  std::vector<std::pair<int, int>> to_free;  // (table entry, page)
  std::vector<std::int64_t> to_assign;      // table entries
  for (std::size_t b = 0; b < slots.size(); ++b) {
    const int r = slots[b], len = lens_[r], new_len = len + cu[b + 1] - cu[b];
    if (new_len == len) continue;
    for (int g = 0; g < H; ++g) {
      const std::int64_t base = (std::int64_t(r) * H + g) * pages_per_seq_;
      if (config_.moa_evict) {
        const int keep = first_needed_position(r, g, new_len);
        // This append's rows need every key from their window start: it must be resident.
        int need_from = new_len;
        const int G = config_.num_q_heads / H;
        for (int hh = 0; hh < G; ++hh) {
          const int h = g * G + hh;
          const float a = config_.moa.alpha[int(config_.moa.alpha.size()) == config_.num_q_heads ? h : g];
          const float be = config_.moa.beta[int(config_.moa.beta.size()) == config_.num_q_heads ? h : g];
          need_from = std::min(need_from, std::max(0, len + 1 - window(a, be, new_len)));
        }
        for (int pos = std::max(need_from, config_.moa.sink) / P * P; pos < len; pos += P)
          if (table_[base + pos / P] < 0)
            invalid("k_new", "at most max_chunk = " + num(config_.max_chunk) + " new tokens per row after MoA pages were freed (row " +
                                 num(r) + ", KV head " + num(g) + " needs position " + num(std::max(pos, need_from)) + ", freed)",
                    num(new_len - len) + " new tokens");
        for (int i = 0; i < pages_per_seq_; ++i) {
          const int page = table_[base + i];
          if (page >= 0 && std::int64_t(i) * P >= config_.moa.sink && std::int64_t(i + 1) * P <= keep)
            to_free.push_back({int(base + i), page});
        }
      }
      for (int i = len / P; i < ceil_div(new_len, P); ++i)
        if (table_[base + i] < 0) to_assign.push_back(base + i);
    }
  }
  if (to_assign.size() > free_.size() + to_free.size())
    fail(ErrorKind::out_of_memory, "kv cache full: the append needs " + num(to_assign.size()) + " new pages, " +
                                       num(free_.size() + to_free.size()) + " are free (num_pages = " +
                                       num(config_.num_pages) + "); release rows or allocate more pages");
  // Commit.
  for (auto [entry, page] : to_free) {
    table_[entry] = -1;
    free_.push_back(page);
  }
  for (std::int64_t e : to_assign) {
    table_[e] = free_.back();
    free_.pop_back();
  }
  publish(options, std::vector<int>(slots.begin(), slots.end()));
  for (std::size_t b = 0; b < slots.size(); ++b) lens_[slots[b]] += cu[b + 1] - cu[b];
}

void PagedKVCache::attend(const TensorView& q, const TensorView& cu_seqlens_q,
                          const std::vector<int>& slots, const AttentionParams& params,
                          TensorView out, TensorView lse, TensorView selection,
                          const RunOptions& options) const {
  if (params.mode == Mode::moba && params.block_size != config_.block_size)
    invalid("params.block_size", "the cache's block_size = " + num(config_.block_size) + " (its block means)",
            num(params.block_size));
  if (params.mode == Mode::moa && config_.moa_evict &&
      (params.moa.alpha != config_.moa.alpha || params.moa.beta != config_.moa.beta || params.moa.sink != config_.moa.sink))
    invalid("params.moa", "the plan the cache evicts by (config.moa)", "a different plan");
  if (params.mode == Mode::full && config_.moa_evict)
    invalid("params.mode", "Mode::moa for a cache that frees pages outside MoA windows", "Mode::full");
  for (std::size_t b = 0; b < slots.size(); ++b)
    if (slots[b] < 0 || slots[b] >= config_.max_rows)
      invalid("slots[" + num(b) + "]", "a cache row in [0, " + num(config_.max_rows) + ")", num(slots[b]));
  std::vector<std::int32_t> slot_ids(slots.begin(), slots.end());
  const TensorView slot_view = TensorView::contiguous(slot_ids.data(), DType::i32, Device::cpu(), {std::int64_t(slot_ids.size())});
  PagedAttentionArgs args;
  args.slots = slot_view;
  if (params.mode == Mode::moba) {
    paged_moba_gate(q, cu_seqlens_q, tensors_, params, selection, slot_view, options);
    args.selection = selection;
  }
  paged_attention(q, cu_seqlens_q, tensors_, params, args, out, lse, options);
}

void PagedKVCache::release(int slot) {
  seq_len(slot);  // range check
  const std::int64_t base = std::int64_t(slot) * config_.num_kv_heads * pages_per_seq_;
  for (std::int64_t i = base; i < base + std::int64_t(config_.num_kv_heads) * pages_per_seq_; ++i)
    if (table_[i] >= 0) {
      free_.push_back(table_[i]);
      table_[i] = -1;
    }
  lens_[slot] = 0;
  publish({}, {slot});
}

void PagedKVCache::reset() {
  for (std::size_t i = 0; i < table_.size(); ++i)
    if (table_[i] >= 0) {
      free_.push_back(table_[i]);
      table_[i] = -1;
    }
  std::fill(lens_.begin(), lens_.end(), 0);
  publish({}, {});
}

// Copies the rows of the host page table that changed (all when `rows` is empty) and the
// lengths into the cache's views (host: plain copies; GPU: copies ordered on the caller's
// stream). Rows of length 0 restart their running block sums at zero.
void PagedKVCache::publish(const RunOptions& options, const std::vector<int>& rows) {
  std::vector<int> all;
  if (rows.empty()) {
    all.resize(config_.max_rows);
    for (int r = 0; r < config_.max_rows; ++r) all[r] = r;
  }
  const std::vector<int>& which = rows.empty() ? all : rows;
  const bool host = tensors_.page_table.device.type == DeviceType::cpu;
  auto copy = [&](void* dst, const void* src, std::size_t bytes) {
    if (host) std::memcpy(dst, src, bytes);
    else cuda_copy_to_device(dst, src, bytes, options.cuda_stream);
  };
  const std::size_t row_entries = std::size_t(config_.num_kv_heads) * pages_per_seq_;
  for (int r : which)
    copy(static_cast<std::int32_t*>(tensors_.page_table.data) + r * row_entries, table_.data() + r * row_entries,
         row_entries * sizeof(std::int32_t));
  copy(tensors_.seq_lens.data, lens_.data(), lens_.size() * sizeof(std::int32_t));
  if (config_.block_size == 0) return;
  const std::size_t per_row = std::size_t(config_.num_kv_heads) * config_.head_dim;
  const std::vector<double> zeros(per_row, 0.0);
  for (int r : which)
    if (lens_[r] == 0) copy(static_cast<double*>(tensors_.block_sums.data) + r * per_row, zeros.data(), per_row * sizeof(double));
}

}  // namespace moba
