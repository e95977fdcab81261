// A progress bar on stderr for long runs: fraction of the estimated work done, the current
// item and the time left. Drawn only on a terminal, so logs and pipes stay clean.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>

namespace moba::cli {

class ProgressBar {
 public:
  ProgressBar(double total_work, bool enabled)
      : total_(std::max(total_work, 1e-30)), enabled_(enabled && isatty(STDERR_FILENO)),
        start_(Clock::now()) {}
  ~ProgressBar() { clear(); }

  // Work of the item about to start is not yet done; call with its label before running it.
  void show(const std::string& label) {
    label_ = label;
    draw();
  }
  void advance(double work) {
    done_ = std::min(total_, done_ + work);
    draw();
  }
  void clear() {
    if (enabled_ && drawn_) std::fprintf(stderr, "\r%*s\r", last_width_, "");
    drawn_ = false;
  }

 private:
  using Clock = std::chrono::steady_clock;

  void draw() {
    if (!enabled_) return;
    constexpr int kBar = 30;
    const double f = done_ / total_;
    const int filled = static_cast<int>(f * kBar);
    const double elapsed = std::chrono::duration<double>(Clock::now() - start_).count();
    std::string eta = "";
    if (f > 0.02) eta = " ~" + std::to_string(static_cast<int>(elapsed * (1 - f) / f + 0.5)) + " s left";
    const std::string line = "[" + std::string(std::size_t(filled), '#') +
                             std::string(std::size_t(kBar - filled), '.') + "] " +
                             std::to_string(static_cast<int>(f * 100)) + "% " + label_ + eta;
    std::fprintf(stderr, "\r%-*s", last_width_, line.c_str());
    std::fflush(stderr);
    last_width_ = std::max(last_width_, static_cast<int>(line.size()));
    drawn_ = true;
  }

  double total_, done_ = 0;
  bool enabled_;
  bool drawn_ = false;
  int last_width_ = 0;
  std::string label_;
  Clock::time_point start_;
};

}  // namespace moba::cli
