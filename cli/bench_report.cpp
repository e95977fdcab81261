#include "bench_report.hpp"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>

#include <fmt/format.h>

#include "cli_error.hpp"
#include "verify_types.hpp"

namespace moba::cli {

std::string BenchSetup::describe() const {
  return fmt::format("{} backend, {}, batch {}, heads {}/{}, head_dim {}, MoBA {} blocks top-{}, "
                     "MoA window {}+{}N sink {}",
                     backend, dtype_name(dtype), batch, heads, kv_heads, head_dim, block_count,
                     topk, moa_alpha, moa_beta, sink);
}

Table bench_table(bool backward) {
  std::vector<Table::Column> cols{{"N", 7}, {"mode", 5, true}, {"block", 6}, {"keys/q", 8},
                                  {"fwd ms", 10}, {"GFLOP/s", 8}, {"speedup", 7}};
  if (backward) {
    cols.push_back({"bwd ms", 10});
    cols.push_back({"GFLOP/s", 8});
    cols.push_back({"speedup", 7});
  }
  return Table(cols);
}

namespace {
std::string speedup_cell(double s) { return s > 0 ? fmt::format("{:.2f}x", s) : "-"; }
}  // namespace

std::string bench_row(const Table& t, const BenchPoint& p, bool backward) {
  std::vector<std::string> cells{std::to_string(p.n), mode_name(p.mode),
                                 p.mode == Mode::moba ? std::to_string(p.block_size) : "-",
                                 fmt::format("{:.1f}", p.keys_per_query),
                                 fmt::format("{:.3f}", p.fwd_ms),
                                 fmt::format("{:.1f}", p.fwd_gflops), speedup_cell(p.fwd_speedup)};
  if (backward && p.bwd_ms > 0) {
    cells.push_back(fmt::format("{:.3f}", p.bwd_ms));
    cells.push_back(fmt::format("{:.1f}", p.bwd_gflops));
    cells.push_back(speedup_cell(p.bwd_speedup));
  } else if (backward) {
    cells.insert(cells.end(), {"n/a", "n/a", "-"});
  }
  return t.row(cells);
}

void check_writable(const std::string& path, const char* what) {
  const bool existed = std::ifstream(path).good();
  {
    std::ofstream f(path, std::ios::app);
    if (!f)
      throw CliError(fmt::format("cannot write the {} file '{}': {}", what, path, std::strerror(errno)));
  }
  if (!existed) std::remove(path.c_str());
}

void write_csv(const std::string& path, const BenchSetup& s, const std::vector<BenchPoint>& points) {
  std::ofstream f(path);
  if (!f) throw CliError(fmt::format("cannot write the CSV file '{}': {}", path, std::strerror(errno)));
  f << "backend,dtype,batch,heads,kv_heads,head_dim,n,mode,block_size,topk,moa_alpha,moa_beta,"
       "sink,keys_per_query,fwd_ms,fwd_gflops,fwd_speedup,bwd_ms,bwd_gflops,bwd_speedup\n";
  for (const BenchPoint& p : points)
    f << fmt::format("{},{},{},{},{},{},{},{},{},{},{},{},{},{:.3f},{:.6f},{:.3f},{:.4f},{:.6f},{:.3f},{:.4f}\n",
                     s.backend, dtype_name(s.dtype), s.batch, s.heads, s.kv_heads, s.head_dim, p.n,
                     mode_name(p.mode), p.mode == Mode::moba ? p.block_size : 0,
                     p.mode == Mode::moba ? s.topk : 0, p.mode == Mode::moa ? s.moa_alpha : 0.f,
                     p.mode == Mode::moa ? s.moa_beta : 0.f, p.mode == Mode::moa ? s.sink : 0,
                     p.keys_per_query, p.fwd_ms, p.fwd_gflops, p.fwd_speedup, p.bwd_ms,
                     p.bwd_gflops, p.bwd_speedup);
  if (!f) throw CliError(fmt::format("writing the CSV file '{}' failed", path));
}

}  // namespace moba::cli
