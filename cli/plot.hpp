// Plots `moba bench` results with gnuplot (a separate program, run through a pipe): time
// against N on log-log axes, and the speedup of each sparse mode over full attention.
#pragma once

#include <string>
#include <vector>

#include "bench_result.hpp"

namespace moba::cli {

// Throws CliError when gnuplot is not on PATH or `png` cannot be written, so a long bench
// does not run only to fail at the end.
void check_plot_possible(const std::string& png);
void plot_bench(const std::string& png, const BenchSetup& setup,
                const std::vector<BenchPoint>& points);

}  // namespace moba::cli
