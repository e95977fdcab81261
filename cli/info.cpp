// `moba info`: what this build is and what it can run here.
#include <cstdlib>
#include <thread>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "commands.hpp"
#include "device.hpp"
#include "moba/moba.hpp"
#include "table.hpp"

namespace moba::cli {

namespace {

int run_info() {
  fmt::print("{}\n", build_info());
  fmt::print("version {}\n\n", MOBA_VERSION_STRING);

  const Table table({{"backend", 9, true}, {"compiled", 8, true}, {"available", 9, true},
                     {"detail", 50, true}});
  fmt::print("{}\n", table.header());
  for (const BackendInfo& b : backends())
    fmt::print("{}\n", table.row({b.name, b.compiled ? "yes" : "no", b.available ? "yes" : "no",
                                  b.detail}));

  std::string problem;
  const std::vector<CudaDevice> devices = cuda_devices(&problem);
  fmt::print("\nCUDA devices: ");
  if (devices.empty()) {
    fmt::print("none: {}\n", problem.empty() ? "no device found" : problem);
  } else {
    fmt::print("{}\n", devices.size());
    for (const CudaDevice& d : devices)
      fmt::print("  cuda:{}  {}  sm_{}{}  {} SMs  {:.1f} GiB\n", d.index, d.name, d.sm_major,
                 d.sm_minor, d.multiprocessors, d.memory_gib);
  }

  fmt::print("\nCPU threads: {} hardware threads (what the cpu backend uses by default, "
             "RunOptions::num_threads = 0; `moba check/bench --threads N` sets it)\n",
             std::thread::hardware_concurrency());
  if (const char* omp = std::getenv("OMP_NUM_THREADS")) fmt::print("OMP_NUM_THREADS={}\n", omp);
  return 0;
}

}  // namespace

CommandRun add_info_command(CLI::App& app) {
  app.add_subcommand("info", "Show version, build flags, backends, CUDA devices and threads");
  return [] { return run_info(); };
}

}  // namespace moba::cli
