// Argument checks at the API boundary. Each failure throws moba::Error(invalid_argument)
// with the argument's name and what was expected.
#pragma once

#include <string>

#include "core/problem.hpp"
#include "moba/error.hpp"
#include "moba/params.hpp"
#include "moba/tensor.hpp"

namespace moba::detail {

[[noreturn]] void fail(ErrorKind kind, const std::string& message);
[[noreturn]] void invalid(const std::string& arg, const std::string& expected,
                          const std::string& got);

// Checks q, k, cu_seqlens and params; returns the problem with the host copy of cu_seqlens.
// A cu_seqlens on the GPU is copied to the host on `cuda_stream` (RunOptions::cuda_stream)
// and checked, unless `read_device_cu_seqlens` is false: then Problem::cu_seqlens stays empty,
// max_seqlen is the bound `total`, and the backend plans from the device copy (no host sync;
// the CUDA forward checks it on the device).
Problem make_problem(const TensorView& q, const TensorView& k, const TensorView& cu_seqlens,
                     const AttentionParams& params, void* cuda_stream = nullptr,
                     bool read_device_cu_seqlens = true);

// The backend that will run, after checking it can run on the tensors' device and head dim.
Backend resolve_backend(const Problem& p, const RunOptions& o);

// A [tokens, heads, dim] operand shaped like `like` (same dtype and device).
Operand check_operand(const char* name, const TensorView& t, const TensorView& like,
                      const char* like_name);
float* check_lse(const char* name, const TensorView& lse, const Problem& p);
std::int32_t* check_selection(const char* name, const TensorView& sel, const Problem& p);

}  // namespace moba::detail
