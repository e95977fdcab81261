// The `moba` command-line tool: a thin client of the public API (include/moba/).
// Exit status: 0 success, 1 `moba check` found a failing case, 2 an error (bad arguments,
// an error reported by the library, a missing tool or file).
#include <cstdio>
#include <map>
#include <new>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "cli_error.hpp"
#include "commands.hpp"
#include "moba/moba.hpp"

int main(int argc, char** argv) {
  using namespace moba::cli;
  CLI::App app{"moba: trainable sparse attention (full causal, MoBA, MoA) on CPU and CUDA.\n"
               "Inspect the build, check a backend against the fp64 reference, benchmark modes.",
               "moba"};
  app.require_subcommand(1);
  app.set_version_flag("--version", MOBA_VERSION_STRING);
  std::map<std::string, CommandRun> commands;
  commands["info"] = add_info_command(app);
  commands["check"] = add_check_command(app);
  commands["bench"] = add_bench_command(app);

  if (argc > 1 && argv[1][0] != '-' && !commands.count(argv[1])) {
    fmt::print(stderr, "error: unknown command '{}' (commands: info, check, bench; see moba --help)\n",
               argv[1]);
    return 2;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);  // prints help, or the error and a hint
    return code == 0 ? 0 : 2;
  }

  try {
    for (auto& [name, run] : commands)
      if (app.got_subcommand(name)) return run();
  } catch (const moba::Error& e) {
    std::fflush(stdout);
    fmt::print(stderr, "error: {}\n", e.what());
    return 2;
  } catch (const CliError& e) {
    std::fflush(stdout);
    fmt::print(stderr, "error: {}\n", e.what());
    return 2;
  } catch (const std::bad_alloc&) {
    std::fflush(stdout);
    fmt::print(stderr, "error: moba: out of host memory\n");
    return 2;
  }
  return 2;
}
