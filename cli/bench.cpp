// `moba bench`: full vs MoBA vs MoA over doubling sequence lengths on one backend; a table of
// time, GFLOP/s on the work each mode really does, and speedup over full; optional CSV and plot.
#include <algorithm>
#include <chrono>
#include <memory>
#include <sstream>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "backend_choice.hpp"
#include "bench_decode.hpp"
#include "bench_report.hpp"
#include "cli_error.hpp"
#include "commands.hpp"
#include "plot.hpp"
#include "progress.hpp"
#include "session.hpp"
#include "work_count.hpp"

namespace moba::cli {

namespace {

struct BenchOptions {
  std::string backend;
  int min_len = 0, max_len = 0;  // 0: the backend's default
  int batch = 1, heads = 4, kv_heads = 0, head_dim = 128;
  std::string dtype = "bf16";
  int block_count = 64, topk = 3;
  float moa_alpha = 128, moa_beta = 0.03125f;
  int sink = 64;
  std::vector<std::string> modes{"full", "moba", "moa"};
  bool backward = false;
  int repeats = 3;
  int threads = 0;
  double time_budget = 90;
  std::string plot, csv;
  bool no_progress = false;
  bool decode = false;  // --decode: bench_decode.cpp
  std::vector<int> contexts, batches{1, 8};
  int page_size = 16;
};

int run_decode(const BenchOptions& o, const CLI::App& cmd) {
  DecodeBenchOptions d;
  d.backend = o.backend;
  d.contexts = o.contexts;
  d.batches = o.batches;
  d.kv_heads = o.kv_heads > 0 ? o.kv_heads : o.heads;
  d.heads = o.heads;
  if (cmd.count("--heads") == 0) d.heads = 32, d.kv_heads = o.kv_heads > 0 ? o.kv_heads : 8;
  d.head_dim = o.head_dim;
  d.dtype = o.dtype;
  d.block_count = o.block_count;
  d.topk = o.topk;
  d.moa_alpha = o.moa_alpha;
  d.moa_beta = cmd.count("--moa-beta") ? o.moa_beta : 0.5f;  // MoA at ~50% density by default
  d.sink = o.sink;
  d.modes = o.modes;
  d.page_size = o.page_size;
  d.repeats = std::max(o.repeats, 5);
  d.threads = o.threads;
  d.csv = o.csv;
  d.plot = o.plot;
  return run_decode_bench(d);
}

using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

DType parse_dtype(const std::string& s) {
  if (s == "f32") return DType::f32;
  if (s == "f16") return DType::f16;
  return DType::bf16;
}

Problem make_problem(const BenchOptions& o, const BenchSetup& s, Backend backend, int n, Mode mode,
                     bool& rounded_block) {
  Problem p;
  p.seqlens.assign(std::size_t(s.batch), n);
  p.hq = s.heads;
  p.hkv = s.kv_heads;
  p.d = s.head_dim;
  p.dtype = s.dtype;
  switch (mode) {
    case Mode::full: p.params = AttentionParams::full(); break;
    case Mode::moba: {
      int block = std::max(1, n / s.block_count);
      if (backend == Backend::cuda && block % 64 != 0) {  // the cuda backend's block granularity
        block = (block + 63) / 64 * 64;
        rounded_block = true;
      }
      p.params = AttentionParams::moba_blocks(block, s.topk);
      break;
    }
    case Mode::moa: {
      MoaHeads heads;
      heads.alpha.assign(std::size_t(s.heads), o.moa_alpha);
      heads.beta.assign(std::size_t(s.heads), o.moa_beta);
      heads.sink = o.sink;
      p.params = AttentionParams::moa_heads(heads);
      break;
    }
  }
  return p;
}

// Seconds of one call, after synchronizing the device.
template <class F>
double timed(Session& s, F&& call) {
  s.synchronize();
  const auto t0 = Clock::now();
  call();
  s.synchronize();
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

int run_bench(const BenchOptions& o) {
  const Backend backend = choose_backend(o.backend);
  const bool cuda = backend == Backend::cuda;
  const int min_len = o.min_len > 0 ? o.min_len : cuda ? 4096 : 1024;
  const int max_len = o.max_len > 0 ? o.max_len : cuda ? 131072 : 32768;
  if (min_len > max_len)
    throw CliError(fmt::format("--min-len {} is larger than --max-len {}", min_len, max_len));
  const int kv_heads = o.kv_heads > 0 ? o.kv_heads : o.heads;
  if (o.heads % kv_heads != 0)
    throw CliError(fmt::format("--kv-heads {} must divide --heads {}", kv_heads, o.heads));
  if (o.block_count > min_len)
    throw CliError(fmt::format("--block-count {} is larger than --min-len {}: blocks would be "
                               "shorter than one token", o.block_count, min_len));
  if (!o.plot.empty()) check_plot_possible(o.plot);
  if (!o.csv.empty()) check_writable(o.csv, "CSV");

  BenchSetup setup;
  setup.backend = backend_name(backend);
  setup.dtype = parse_dtype(o.dtype);
  setup.batch = o.batch;
  setup.heads = o.heads;
  setup.kv_heads = kv_heads;
  setup.head_dim = o.head_dim;
  setup.block_count = o.block_count;
  setup.topk = o.topk;
  setup.moa_alpha = o.moa_alpha;
  setup.moa_beta = o.moa_beta;
  setup.sink = o.sink;
  setup.repeats = o.repeats;
  setup.backward = o.backward;

  std::vector<int> lengths;
  for (long n = min_len; n <= max_len; n *= 2) lengths.push_back(static_cast<int>(n));
  std::vector<Mode> modes;
  for (Mode m : {Mode::full, Mode::moba, Mode::moa})
    if (std::find(o.modes.begin(), o.modes.end(), mode_name(m)) != o.modes.end()) modes.push_back(m);

  RunOptions run;
  run.num_threads = o.threads;

  // One short call per mode before any output, so a problem the backend refuses (e.g. a head
  // dim it does not support) fails before the table starts.
  bool rounded_probe = false;
  for (Mode m : modes) {
    Problem p = make_problem(o, setup, backend, min_len, m, rounded_probe);
    p.seqlens = {std::min(min_len, std::max(64, p.params.block_size))};
    Session probe(p, verify::make_inputs(p, 1u), backend, run);
    probe.forward();
    probe.synchronize();
  }

  fmt::print("moba bench: {}\n", setup.describe());
  fmt::print("time: median of {} call(s) after a warm-up; GFLOP/s counts only visible (query, key) "
             "pairs (4*D flops each forward, 2.5x that backward); speedup = full's time / time\n\n",
             o.repeats);
  const Table table = bench_table(o.backward);
  fmt::print("{}\n", table.header());
  std::fflush(stdout);

  // Progress in units of flops, each call counted (warm-up included).
  bool rounded_block = false;
  double planned = 0;
  for (int n : lengths)
    for (Mode m : modes) {
      const Problem p = make_problem(o, setup, backend, n, m, rounded_block);
      planned += (o.repeats + 1) * (forward_flops(p) + (o.backward ? backward_flops(p) : 0));
    }
  ProgressBar progress(planned, !o.no_progress);

  std::vector<BenchPoint> points;
  const auto start = Clock::now();
  double last_length_s = 0;
  int skipped_from = 0;
  std::vector<std::string> unsupported;
  for (std::size_t li = 0; li < lengths.size(); ++li) {
    const int n = lengths[li];
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    // Work grows about 4x per doubling (all three modes are quadratic at a fixed block count).
    if (li > 0 && o.time_budget > 0 && elapsed + 4 * last_length_s > o.time_budget) {
      skipped_from = n;
      break;
    }
    const auto length_start = Clock::now();
    double full_fwd = 0, full_bwd = 0;
    for (Mode m : modes) {
      const Problem p = make_problem(o, setup, backend, n, m, rounded_block);
      progress.show(fmt::format("N={} {}", n, mode_name(m)));
      const Inputs in = verify::make_inputs(p, 1234u + static_cast<unsigned>(n));
      Session s(p, in, backend, run);
      const double f_flops = forward_flops(p), b_flops = backward_flops(p);

      s.forward();  // warm-up (threads, caches, lazy CUDA setup)
      bool backward = o.backward;
      if (backward) {
        try {
          s.backward();
        } catch (const Error& e) {  // e.g. a backend without this mode's backward
          if (e.kind() != ErrorKind::unsupported) throw;
          backward = false;
          if (std::find(unsupported.begin(), unsupported.end(), e.what()) == unsupported.end())
            unsupported.push_back(e.what());
        }
      }
      s.synchronize();
      progress.advance(f_flops + (o.backward ? b_flops : 0));
      std::vector<double> fwd_s, bwd_s;
      for (int r = 0; r < o.repeats; ++r) {
        fwd_s.push_back(timed(s, [&] { s.forward(); }));
        if (backward) bwd_s.push_back(timed(s, [&] { s.backward(); }));
        progress.advance(f_flops + (o.backward ? b_flops : 0));
      }

      BenchPoint pt;
      pt.n = n;
      pt.mode = m;
      pt.block_size = p.params.block_size;
      pt.keys_per_query = visible_pairs(p) / (double(p.total()) * p.hq);
      pt.fwd_ms = 1e3 * median(fwd_s);
      pt.fwd_gflops = f_flops / (pt.fwd_ms * 1e6);
      if (m == Mode::full) full_fwd = pt.fwd_ms;
      pt.fwd_speedup = full_fwd > 0 ? full_fwd / pt.fwd_ms : 0;
      if (backward) {
        pt.bwd_ms = 1e3 * median(bwd_s);
        pt.bwd_gflops = b_flops / (pt.bwd_ms * 1e6);
        if (m == Mode::full) full_bwd = pt.bwd_ms;
        pt.bwd_speedup = full_bwd > 0 ? full_bwd / pt.bwd_ms : 0;
      }
      points.push_back(pt);
      progress.clear();
      fmt::print("{}\n", bench_row(table, pt, o.backward));
      std::fflush(stdout);
    }
    last_length_s = std::chrono::duration<double>(Clock::now() - length_start).count();
  }
  progress.clear();

  const double total_s = std::chrono::duration<double>(Clock::now() - start).count();
  fmt::print("{}\n", table.rule());
  if (rounded_block)
    fmt::print("note: MoBA block sizes rounded up to a multiple of 64 (the cuda backend's granularity)\n");
  for (const auto& u : unsupported) fmt::print("note: backward n/a: {}\n", u);
  if (skipped_from)
    fmt::print("note: stopped before N={} to stay within --time-budget {} s (the next length "
               "would take ~4x the last); raise --time-budget or set it to 0 for all lengths\n",
               skipped_from, o.time_budget);
  fmt::print("moba bench: {} point{} in {:.1f} s\n", points.size(), points.size() == 1 ? "" : "s",
             total_s);
  if (!o.csv.empty()) {
    write_csv(o.csv, setup, points);
    fmt::print("wrote {}\n", o.csv);
  }
  if (!o.plot.empty()) {
    plot_bench(o.plot, setup, points);
    fmt::print("wrote {}\n", o.plot);
  }
  return 0;
}

}  // namespace

CommandRun add_bench_command(CLI::App& app) {
  auto o = std::make_shared<BenchOptions>();
  CLI::App* cmd = app.add_subcommand("bench", "Time full vs MoBA vs MoA attention over sequence lengths");
  cmd->footer(
      "Time full causal, MoBA and MoA attention on one backend for sequence lengths doubling "
      "from --min-len to --max-len. MoBA cuts each sequence into --block-count blocks (block "
      "size N / block-count) and keeps --topk of them per query; MoA gives every head the "
      "window floor(alpha + beta*N) plus --sink first tokens. Inputs are random normal. "
      "Lengths stop early when the next one would not fit in --time-budget.\n");
  cmd->add_option("--backend", o->backend, "Backend to time (default: cuda if usable, else cpu)")
      ->check(CLI::IsMember(backend_names()));
  cmd->add_option("--min-len", o->min_len, "Shortest sequence (default: cpu 1024, cuda 4096)")->check(CLI::Range(1, 1 << 24));
  cmd->add_option("--max-len", o->max_len, "Longest sequence (default: cpu 32768, cuda 131072)")->check(CLI::Range(1, 1 << 24));
  cmd->add_option("--batch", o->batch, "Sequences per batch (all of length N)")->check(CLI::Range(1, 4096))->capture_default_str();
  cmd->add_option("--heads", o->heads, "Query heads (--decode: 32 unless given)")->check(CLI::Range(1, 1024))->capture_default_str();
  cmd->add_option("--kv-heads", o->kv_heads, "KV heads, dividing --heads (default: --heads; --decode without --heads: 8)")->check(CLI::Range(1, 1024));
  cmd->add_option("--head-dim", o->head_dim, "Head dimension (64 or 128 on cpu/cuda)")->check(CLI::Range(1, 1024))->capture_default_str();
  cmd->add_option("--dtype", o->dtype, "Input dtype")->check(CLI::IsMember({"f32", "f16", "bf16"}))->capture_default_str();
  cmd->add_option("--block-count", o->block_count, "MoBA blocks per sequence (at most --min-len)")->check(CLI::Range(1, 1 << 20))->capture_default_str();
  cmd->add_option("--topk", o->topk, "MoBA blocks per query, own block included")->check(CLI::Range(1, 1 << 20))->capture_default_str();
  cmd->add_option("--moa-alpha", o->moa_alpha, "MoA window: alpha in floor(alpha + beta*N)")->check(CLI::NonNegativeNumber)->capture_default_str();
  cmd->add_option("--moa-beta", o->moa_beta, "MoA window: beta in floor(alpha + beta*N) (--decode: 0.5 unless given)")->check(CLI::NonNegativeNumber)->capture_default_str();
  cmd->add_option("--sink", o->sink, "MoA attention sink: first tokens every query sees")->check(CLI::NonNegativeNumber)->capture_default_str();
  cmd->add_option("--modes", o->modes, "Modes to time (speedups need full)")
      ->check(CLI::IsMember({"full", "moba", "moa"}))->delimiter(',')->capture_default_str();
  cmd->add_flag("--backward", o->backward, "Time the backward too");
  cmd->add_option("--repeats", o->repeats, "Timed calls per point (after one warm-up; --decode: at least 5)")->check(CLI::Range(1, 1000))->capture_default_str();
  cmd->add_option("--threads", o->threads, "CPU threads (0: all hardware threads)")->check(CLI::NonNegativeNumber)->capture_default_str();
  cmd->add_option("--time-budget", o->time_budget, "Seconds; skip lengths that would go past it (0: no limit)")->check(CLI::NonNegativeNumber)->capture_default_str();
  cmd->add_option("--plot", o->plot, "Draw time vs N and speedup into this PNG (needs gnuplot)");
  cmd->add_option("--csv", o->csv, "Write the results to this CSV file");
  cmd->add_flag("--no-progress", o->no_progress, "No progress bar on stderr (it shows only on a terminal)");
  cmd->add_flag("--decode", o->decode, "Time one decode step over a paged KV cache instead (see --contexts, --batches)");
  cmd->add_option("--contexts", o->contexts, "--decode: cached tokens per sequence (default: cpu 4096,16384; cuda 32768,131072)")
      ->check(CLI::Range(1, 1 << 24))->delimiter(',');
  cmd->add_option("--batches", o->batches, "--decode: sequences per step")->check(CLI::Range(1, 4096))->delimiter(',')->capture_default_str();
  cmd->add_option("--page-size", o->page_size, "--decode: positions per KV-cache page")->check(CLI::Range(1, 4096))->capture_default_str();
  return [o, cmd] { return o->decode ? run_decode(*o, *cmd) : run_bench(*o); };
}

}  // namespace moba::cli
