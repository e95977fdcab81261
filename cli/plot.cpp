#include "plot.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <sstream>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "bench_report.hpp"
#include "cli_error.hpp"
#include "verify_types.hpp"

namespace moba::cli {

namespace {

bool on_path(const std::string& program) {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    const std::string candidate = (dir.empty() ? "." : dir) + "/" + program;
    if (access(candidate.c_str(), X_OK) == 0) return true;
  }
  return false;
}

// pngcairo draws nicer text; gnuplot builds without cairo only have png.
std::string png_terminal() {
  FILE* p = popen("gnuplot -e 'set terminal pngcairo' 2>&1", "r");
  if (!p) return "png";
  std::string out;
  char buf[256];
  while (std::fgets(buf, sizeof buf, p)) out += buf;
  const int status = pclose(p);
  return status == 0 && out.find("unknown") == std::string::npos ? "pngcairo" : "png";
}

std::string quoted(const std::string& s) {  // a gnuplot single-quoted string
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("''") : std::string(1, c);
  return q + "'";
}

}  // namespace

void check_plot_possible(const std::string& png) {
  if (!on_path("gnuplot"))
    throw CliError("--plot needs gnuplot, which is not on PATH (Debian: apt-get install gnuplot-nox)");
  check_writable(png, "plot");
}

void plot_bench(const std::string& png, const BenchSetup& setup,
                const std::vector<BenchPoint>& points) {
  check_plot_possible(png);
  std::string script;
  const Mode modes[] = {Mode::full, Mode::moba, Mode::moa};
  auto value = [](double x) { return x > 0 ? fmt::format("{}", x) : std::string("NaN"); };
  // One data block per mode: N fwd_ms fwd_speedup bwd_ms bwd_speedup
  for (Mode m : modes) {
    script += fmt::format("${} << EOD\n", mode_name(m));
    for (const BenchPoint& p : points)
      if (p.mode == m)
        script += fmt::format("{} {} {} {} {}\n", p.n, p.fwd_ms, value(p.fwd_speedup),
                              value(p.bwd_ms), value(p.bwd_speedup));
    script += "EOD\n";
  }
  // gnuplot fails on a curve without a single point, so only curves with data are drawn.
  auto has = [&](Mode m, double BenchPoint::*field) {
    for (const BenchPoint& p : points)
      if (p.mode == m && p.*field > 0) return true;
    return false;
  };
  const char* colors[] = {"#444444", "#d62728", "#1f77b4"};

  script += fmt::format("set terminal {} size 1400,560 noenhanced\n", png_terminal());
  script += fmt::format("set output {}\n", quoted(png));
  script += fmt::format("set multiplot layout 1,2 title {}\n",
                        quoted("moba bench: " + setup.describe()));
  script += "set grid\nset key top left\nset logscale x 2\nset format x '%.0f'\n"
            "set xlabel 'sequence length N (tokens)'\n";

  // Left: time against N, log-log.
  script += "set logscale y 10\nset ylabel 'time (ms)'\nset title 'time per call'\n";
  std::vector<std::string> curves;
  for (int i = 0; i < 3; ++i) {
    if (!has(modes[i], &BenchPoint::fwd_ms)) continue;
    const std::string name = mode_name(modes[i]);
    curves.push_back(fmt::format("${} using 1:2 with linespoints lw 2 pt 7 lc rgb '{}' title '{} fwd'",
                                 name, colors[i], name));
    if (has(modes[i], &BenchPoint::bwd_ms))
      curves.push_back(fmt::format("${} using 1:4 with linespoints lw 2 dt 2 pt 5 lc rgb '{}' title '{} bwd'",
                                   name, colors[i], name));
  }
  script += "plot " + fmt::format("{}", fmt::join(curves, ", \\\n     ")) + "\n";

  // Right: speedup over full at the same N.
  script += "unset logscale y\nset yrange [0:*]\nset ylabel 'speedup over full'\n"
            "set title 'speedup over full attention'\n";
  curves.clear();
  for (int i = 1; i < 3; ++i) {
    const std::string name = mode_name(modes[i]);
    if (has(modes[i], &BenchPoint::fwd_speedup))
      curves.push_back(fmt::format("${} using 1:3 with linespoints lw 2 pt 7 lc rgb '{}' title '{} fwd'",
                                 name, colors[i], name));
    if (has(modes[i], &BenchPoint::bwd_speedup))
      curves.push_back(fmt::format("${} using 1:5 with linespoints lw 2 dt 2 pt 5 lc rgb '{}' title '{} bwd'",
                                   name, colors[i], name));
  }
  curves.push_back("1 with lines lc rgb '#999999' dt 3 notitle");
  script += "plot " + fmt::format("{}", fmt::join(curves, ", \\\n     ")) + "\n";
  script += "unset multiplot\n";

  FILE* gp = popen("gnuplot", "w");
  if (!gp) throw CliError("could not start gnuplot");
  std::fwrite(script.data(), 1, script.size(), gp);
  const int status = pclose(gp);
  struct stat st {};
  if (status != 0 || stat(png.c_str(), &st) != 0 || st.st_size == 0)
    throw CliError(fmt::format("gnuplot failed to draw '{}' (exit status {})", png, status));
}

}  // namespace moba::cli
