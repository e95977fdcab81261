// Built when the CUDA backend is not: the paged entry points on GPU tensors say so clearly.
#include "core/paged.hpp"
#include "core/paged_backward.hpp"
#include "core/validate.hpp"

namespace moba::detail {

namespace {
[[noreturn]] void absent() {
  fail(ErrorKind::unsupported, "the cuda backend was not compiled into this build (configure with nvcc present)");
}
}  // namespace

void cuda_paged_gate(const PagedProblem&, const Operand&, std::int32_t*, const RunOptions&) { absent(); }
void cuda_paged_attention(const PagedProblem&, const PagedOutputs&, const RunOptions&) { absent(); }
void cuda_kv_append(const PagedProblem&, const AppendInputs&, const RunOptions&) { absent(); }
void cuda_merge_states(int, int, int, DType, const Operand&, const float*, const Operand&, const float*,
                       const Operand&, float*, const RunOptions&) { absent(); }
void cuda_copy_to_device(void*, const void*, std::size_t, void*) { absent(); }
void cuda_paged_attention_backward(const PagedProblem&, const PagedOutputs&, const Operand&, const Operand&,
                                   const float*, void*, void*, DType, const RunOptions&) { absent(); }

}  // namespace moba::detail
