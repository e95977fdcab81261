// The subcommands of `moba`. Each adds itself to the CLI11 app with its options and returns
// the function that runs it once the command line is parsed; that returns the exit status.
#pragma once

#include <functional>

namespace CLI {
class App;
}

namespace moba::cli {

using CommandRun = std::function<int()>;

CommandRun add_info_command(CLI::App& app);   // info.cpp
CommandRun add_check_command(CLI::App& app);  // check.cpp
CommandRun add_bench_command(CLI::App& app);  // bench.cpp

}  // namespace moba::cli
