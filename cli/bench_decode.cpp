// `moba bench --decode`: decode-step time over a paged KV cache (moba/kv_cache.hpp) for full,
// MoBA and MoA, per context length and batch size, with the bytes each step must read and the
// rate it reads them at (decode is bandwidth bound), and the speedup over full decode.
#include "bench_decode.hpp"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <memory>
#include <random>

#include <fmt/ranges.h>

#include <fmt/format.h>

#include "backend_choice.hpp"
#include "cli_error.hpp"
#include "device.hpp"
#include "moba/moba.hpp"
#include "plot.hpp"
#include "table.hpp"

namespace moba::cli {

namespace {

using Clock = std::chrono::steady_clock;

DType parse_dtype(const std::string& s) {
  if (s == "f32") return DType::f32;
  if (s == "f16") return DType::f16;
  return DType::bf16;
}

// One tensor of the cache or of a step, in host memory or on the GPU.
class Buffer {
 public:
  Buffer(bool cuda, std::size_t bytes) : cuda_(cuda) {
    if (cuda) dev_ = DeviceBuffer(bytes);
    else host_.assign(bytes, 0);
  }
  void* data() { return cuda_ ? dev_.get() : static_cast<void*>(host_.data()); }
  void upload(const std::vector<std::uint8_t>& h) {
    if (cuda_) dev_.upload(h.data(), h.size());
    else std::copy(h.begin(), h.end(), host_.begin());
  }

 private:
  bool cuda_;
  DeviceBuffer dev_;
  std::vector<std::uint8_t> host_;
};

TensorView view(Buffer& b, DType t, bool cuda, const std::vector<std::int64_t>& shape) {
  TensorView v;
  v.data = b.data();
  v.dtype = t;
  v.device = cuda ? Device::cuda(0) : Device::cpu();
  v.ndim = static_cast<int>(shape.size());
  std::int64_t st = 1;
  for (int d = v.ndim - 1; d >= 0; --d) {
    v.shape[d] = shape[d];
    v.stride[d] = st;
    st *= shape[d];
  }
  return v;
}

std::int64_t numel(const std::vector<std::int64_t>& s) {
  std::int64_t n = 1;
  for (auto x : s) n *= x;
  return s.empty() ? 0 : n;
}

std::vector<std::uint8_t> random_values(DType t, std::int64_t n, std::mt19937& rng) {
  std::normal_distribution<float> dist;
  std::vector<std::uint8_t> out(std::size_t(n) * dtype_size(t));
  for (std::int64_t i = 0; i < n; ++i) {
    const float x = dist(rng);
    if (t == DType::f32) std::memcpy(&out[i * 4], &x, 4);
    else {
      const std::uint16_t h = t == DType::bf16 ? float_to_bf16(x) : float_to_f16(x);
      std::memcpy(&out[i * 2], &h, 2);
    }
  }
  return out;
}

struct Point {
  int context, batch;
  std::string mode;
  int block_size;
  double ms, bytes;
  double speedup;
};

// A cache of `batch` random sequences of `context` tokens and one decode step's timing per mode.
std::vector<Point> run_point(const DecodeBenchOptions& o, bool cuda, int context, int batch,
                             const Table& table, const RunOptions& run) {
  const DType dt = parse_dtype(o.dtype);
  const std::size_t es = dtype_size(dt);
  const int hkv = o.kv_heads, D = o.head_dim, block = std::max(1, context / o.block_count);
  KVCacheConfig c;
  c.dtype = dt;
  c.num_q_heads = o.heads;
  c.num_kv_heads = hkv;
  c.head_dim = D;
  c.page_size = o.page_size;
  c.max_rows = batch;
  c.max_seqlen = context + 1;
  c.num_pages = batch * hkv * ((context + 1 + o.page_size - 1) / o.page_size);
  c.block_size = block;
  const KVCacheShapes sh = kv_cache_shapes(c);
  Buffer k(cuda, numel(sh.k_pages) * es), v(cuda, numel(sh.v_pages) * es), table_b(cuda, numel(sh.page_table) * 4),
      lens(cuda, numel(sh.seq_lens) * 4), means(cuda, numel(sh.block_means) * es), sums(cuda, numel(sh.block_sums) * 8);
  PagedKV kv;
  kv.k_pages = view(k, dt, cuda, sh.k_pages);
  kv.v_pages = view(v, dt, cuda, sh.v_pages);
  kv.page_table = view(table_b, DType::i32, cuda, sh.page_table);
  kv.seq_lens = view(lens, DType::i32, cuda, sh.seq_lens);
  kv.block_means = view(means, dt, cuda, sh.block_means);
  kv.block_sums = view(sums, DType::f64, cuda, sh.block_sums);
  PagedKVCache cache(c, kv);
  std::vector<int> slots(batch);
  for (int b = 0; b < batch; ++b) slots[b] = b;
  // Fill in chunks (random keys; values reuse the keys: the time does not depend on them).
  std::mt19937 rng(1234u + unsigned(context));
  const int chunk = std::min(context, std::max(1, (1 << 22) / (batch * hkv * D)));
  const auto chunk_values = random_values(dt, std::int64_t(batch) * chunk * hkv * D, rng);
  Buffer chunk_buf(cuda, chunk_values.size());
  chunk_buf.upload(chunk_values);
  for (int done = 0; done < context;) {
    const int n = std::min(chunk, context - done);
    std::vector<int> cu(batch + 1);
    for (int b = 0; b <= batch; ++b) cu[b] = b * n;
    const TensorView kn = view(chunk_buf, dt, cuda, {std::int64_t(batch) * n, hkv, D});
    cache.append(kn, kn, TensorView::contiguous(cu.data(), DType::i32, Device::cpu(), {batch + 1}), slots, run);
    done += n;
  }
  // One decode query per sequence (its token is the last one cached).
  Buffer q(cuda, std::size_t(batch) * o.heads * D * es), out(cuda, std::size_t(batch) * o.heads * D * es),
      lse(cuda, std::size_t(batch) * o.heads * 4), sel(cuda, std::size_t(batch) * o.heads * std::max(o.topk - 1, 1) * 4);
  q.upload(random_values(dt, std::int64_t(batch) * o.heads * D, rng));
  std::vector<int> cu_q(batch + 1);
  for (int b = 0; b <= batch; ++b) cu_q[b] = b;
  const TensorView cuv = TensorView::contiguous(cu_q.data(), DType::i32, Device::cpu(), {batch + 1});
  std::vector<Point> points;
  double full_ms = 0;
  for (const std::string& mode : o.modes) {
    AttentionParams p;
    double bytes = 0;
    const double row_bytes = double(hkv) * D * es;  // one position of one layer's K (or V)
    if (mode == "full") {
      p = AttentionParams::full();
      bytes = 2.0 * batch * context * row_bytes;
    } else if (mode == "moba") {
      p = AttentionParams::moba_blocks(block, o.topk);
      const int blocks = context / block;
      bytes = batch * (2.0 * std::min(o.topk * block, context) * row_bytes + blocks * row_bytes);
    } else {
      MoaHeads h;
      h.alpha.assign(std::size_t(o.heads), o.moa_alpha);
      h.beta.assign(std::size_t(o.heads), o.moa_beta);
      h.sink = o.sink;
      p = AttentionParams::moa_heads(h);
      const double w = std::min<double>(context, std::floor(o.moa_alpha + o.moa_beta * context) + o.sink);
      bytes = 2.0 * batch * w * row_bytes;
    }
    const int past = mode == "moba" ? o.topk - 1 : 0;
    const TensorView qv = view(q, dt, cuda, {batch, o.heads, D}), ov = view(out, dt, cuda, {batch, o.heads, D});
    const TensorView lv = view(lse, DType::f32, cuda, {o.heads, batch});
    const TensorView sv = mode == "moba" ? view(sel, DType::i32, cuda, {batch, o.heads, past}) : TensorView{};
    auto step = [&] {
      cache.attend(qv, cuv, slots, p, ov, lv, sv, run);
      if (cuda) cuda_synchronize();
    };
    step();  // warm-up
    std::vector<double> times;
    for (int r = 0; r < o.repeats; ++r) {
      const auto t0 = Clock::now();
      step();
      times.push_back(std::chrono::duration<double>(Clock::now() - t0).count() * 1e3);
    }
    std::sort(times.begin(), times.end());
    const double ms = times[times.size() / 2];
    if (mode == "full") full_ms = ms;
    Point pt{context, batch, mode, mode == "moba" ? block : 0, ms, bytes, full_ms > 0 ? full_ms / ms : 0};
    points.push_back(pt);
    fmt::print("{}\n", table.row({fmt::format("{}", context), fmt::format("{}", batch), mode,
                                  pt.block_size ? fmt::format("{}", pt.block_size) : "-",
                                  fmt::format("{:.3f}", ms), fmt::format("{:.1f}", bytes / 1e6),
                                  fmt::format("{:.1f}", bytes / (ms * 1e6)),
                                  pt.speedup > 0 ? fmt::format("{:.2f}x", pt.speedup) : "-"}));
    std::fflush(stdout);
  }
  return points;
}

// Step time against N (log-log) and speedup over full, one curve per (mode, batch).
void plot_decode(const std::string& png, const DecodeBenchOptions& o, const std::vector<Point>& points) {
  std::string script;
  std::vector<std::string> times, speedups;
  const char* colors[] = {"#444444", "#d62728", "#1f77b4"};
  const char* modes[] = {"full", "moba", "moa"};
  for (int m = 0; m < 3; ++m)
    for (std::size_t bi = 0; bi < o.batches.size(); ++bi) {
      const int b = o.batches[bi];
      std::string block;
      for (const Point& p : points)
        if (p.mode == modes[m] && p.batch == b) block += fmt::format("{} {} {}\n", p.context, p.ms, p.speedup);
      if (block.empty()) continue;
      const std::string name = fmt::format("{}_b{}", modes[m], b);
      script += fmt::format("${} << EOD\n{}EOD\n", name, block);
      const std::string style = fmt::format("with linespoints lw 2 pt {} ps 1.3 lc rgb '{}' title '{} batch {}'",
                                            5 + 2 * int(bi), colors[m], modes[m], b);
      times.push_back(fmt::format("${} using 1:2 {}", name, style));
      if (m > 0) speedups.push_back(fmt::format("${} using 1:3 {}", name, style));
    }
  script += "set terminal png size 1400,560 noenhanced\n";
  script += fmt::format("set output '{}'\n", png);
  script += "set multiplot layout 1,2 title 'moba bench --decode'\nset grid\nset key top left\n"
            "set logscale x 2\nset format x '%.0f'\nset xlabel 'cached tokens per sequence N'\n";
  script += "set logscale y 10\nset ylabel 'decode step (ms)'\nset title 'time per decode step'\n";
  script += "plot " + fmt::format("{}", fmt::join(times, ", ")) + "\n";
  script += "unset logscale y\nset yrange [0:*]\nset ylabel 'speedup over full'\nset title 'speedup over full decode'\n";
  speedups.push_back("1 with lines lc rgb '#999999' dt 3 notitle");
  script += "plot " + fmt::format("{}", fmt::join(speedups, ", ")) + "\nunset multiplot\n";
  FILE* gp = popen("gnuplot", "w");
  if (!gp) throw CliError("could not start gnuplot");
  std::fwrite(script.data(), 1, script.size(), gp);
  if (pclose(gp) != 0) throw CliError(fmt::format("gnuplot failed to draw '{}'", png));
}

}  // namespace

int run_decode_bench(const DecodeBenchOptions& o) {
  const Backend backend = choose_backend(o.backend);
  if (backend == Backend::reference)
    throw CliError("--decode times the cpu or cuda backend (the paged path has no fp64 reference backend)");
  const bool cuda = backend == Backend::cuda;
  if (!o.plot.empty()) check_plot_possible(o.plot);
  if (o.heads % o.kv_heads != 0)
    throw CliError(fmt::format("--kv-heads {} must divide --heads {}", o.kv_heads, o.heads));
  std::vector<int> contexts = o.contexts;
  if (contexts.empty()) contexts = cuda ? std::vector<int>{32768, 131072} : std::vector<int>{4096, 16384};
  RunOptions run;
  run.num_threads = o.threads;
  run.backend = backend;
  fmt::print("moba bench --decode: backend {}, {} heads / {} KV heads, head_dim {}, {}, page {}; MoBA {} "
             "blocks top-{}, MoA window floor({} + {}*N) + sink {}\n",
             backend_name(backend), o.heads, o.kv_heads, o.head_dim, o.dtype, o.page_size, o.block_count,
             o.topk, o.moa_alpha, o.moa_beta, o.sink);
  fmt::print("time: median of {} decode steps (one new token per sequence; MoBA includes its gate); "
             "MB = K/V (and means) a step must read; GB/s = MB / time; speedup = full / time\n\n",
             o.repeats);
  const Table table({{"N", 8}, {"batch", 5}, {"mode", 5, true}, {"block", 6}, {"ms", 9}, {"MB", 9},
                     {"GB/s", 8}, {"speedup", 7}});
  fmt::print("{}\n", table.header());
  std::vector<Point> all;
  const auto start = Clock::now();
  for (int n : contexts)
    for (int b : o.batches) {
      const auto pts = run_point(o, cuda, n, b, table, run);
      all.insert(all.end(), pts.begin(), pts.end());
    }
  fmt::print("{}\n", table.rule());
  fmt::print("moba bench --decode: {} points in {:.1f} s\n", all.size(),
             std::chrono::duration<double>(Clock::now() - start).count());
  if (!o.csv.empty()) {
    std::ofstream f(o.csv);
    if (!f) throw CliError("cannot write the CSV file " + o.csv);
    f << "context,batch,mode,block_size,step_ms,bytes,gb_per_s,speedup\n";
    for (const Point& p : all)
      f << p.context << ',' << p.batch << ',' << p.mode << ',' << p.block_size << ',' << p.ms << ','
        << p.bytes << ',' << p.bytes / (p.ms * 1e6) << ',' << p.speedup << '\n';
    fmt::print("wrote {}\n", o.csv);
  }
  if (!o.plot.empty()) {
    plot_decode(o.plot, o, all);
    fmt::print("wrote {}\n", o.plot);
  }
  return 0;
}

}  // namespace moba::cli
