// The backends behind the public API. Each receives a validated Problem (core/problem.hpp).
#pragma once

#include <cstddef>
#include <string>

#include "core/problem.hpp"

namespace moba::detail {

// fp64 loops: the definition of truth (src/reference/).
void reference_gate(const Problem& p, const Operand& q, const Operand& k, std::int32_t* selection);
void reference_forward(const Problem& p, const Forward& f);
void reference_backward(const Problem& p, const Backward& b);

// Tiled, multithreaded, vectorised CPU backend (src/cpu/).
void cpu_gate(const Problem& p, const Operand& q, const Operand& k, std::int32_t* selection,
              const RunOptions& o);
void cpu_forward(const Problem& p, const Forward& f, const RunOptions& o);
void cpu_backward(const Problem& p, const Backward& b, const RunOptions& o);

// CUDA backend (src/cuda/), compiled when MOBA_WITH_CUDA is defined.
bool cuda_compiled();
int cuda_device_count();  // 0 when not compiled or no device
std::string cuda_describe();
std::uint64_t cuda_workspace_peak(int device, bool reset);  // 0 when not compiled or unused
// Synchronous copy ordered after the work already queued on `stream` (cudaStream_t).
void cuda_copy_to_host(void* dst, const void* src, std::size_t bytes, void* stream);
void cuda_gate(const Problem& p, const Operand& q, const Operand& k, std::int32_t* selection,
               const RunOptions& o);
void cuda_forward(const Problem& p, const Forward& f, const RunOptions& o);
void cuda_backward(const Problem& p, const Backward& b, const RunOptions& o);

}  // namespace moba::detail
