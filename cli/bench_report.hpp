// Printing and saving `moba bench` results: the table (row by row as points finish) and CSV.
#pragma once

#include <string>
#include <vector>

#include "bench_result.hpp"
#include "table.hpp"

namespace moba::cli {

Table bench_table(bool backward);
std::string bench_row(const Table& t, const BenchPoint& p, bool backward);

// Throws CliError if `path` cannot be written (checked before a long run starts).
void check_writable(const std::string& path, const char* what);
void write_csv(const std::string& path, const BenchSetup& setup,
               const std::vector<BenchPoint>& points);

}  // namespace moba::cli
