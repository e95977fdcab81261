// Errors of the tool itself (a missing program, an unwritable file, an impossible request).
// main() prints them like moba::Error and exits with status 2.
#pragma once

#include <stdexcept>
#include <string>

namespace moba::cli {

class CliError : public std::runtime_error {
 public:
  explicit CliError(const std::string& message) : std::runtime_error("moba: " + message) {}
};

}  // namespace moba::cli
