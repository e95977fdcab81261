// moba::Error: every failure the library reports. Messages name the argument and what was
// expected, e.g. "moba: k: expected dtype bf16 (same as q), got f16".
#pragma once

#include <stdexcept>
#include <string>

namespace moba {

enum class ErrorKind {
  invalid_argument,  // a bad shape, dtype, device, stride or parameter value
  unsupported,       // valid input this backend/build cannot run (e.g. no CUDA backend)
  out_of_memory,     // a device or host allocation failed
  backend_failure,   // a CUDA/runtime error that is not the caller's fault
};

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message)
      : std::runtime_error("moba: " + message), kind_(kind) {}
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

}  // namespace moba
