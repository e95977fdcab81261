// Built when the CUDA backend is not: every CUDA entry point says so clearly.
#include "core/backends.hpp"
#include "core/validate.hpp"

namespace moba::detail {

namespace {
[[noreturn]] void absent() {
  fail(ErrorKind::unsupported, "the cuda backend was not compiled into this build (configure with nvcc present)");
}
}  // namespace

bool cuda_compiled() { return false; }
int cuda_device_count() { return 0; }
std::string cuda_describe() { return "not compiled"; }
std::uint64_t cuda_workspace_peak(int, bool) { return 0; }
void cuda_copy_to_host(void*, const void*, std::size_t, void*) { absent(); }
void cuda_gate(const Problem&, const Operand&, const Operand&, std::int32_t*, const RunOptions&) { absent(); }
void cuda_forward(const Problem&, const Forward&, const RunOptions&) { absent(); }
void cuda_backward(const Problem&, const Backward&, const RunOptions&) { absent(); }

}  // namespace moba::detail
