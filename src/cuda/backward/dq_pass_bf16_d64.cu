// One instantiation per file (CI builds on 2 cores): dq pass, bf16, head_dim 64.
#include "cuda/backward/dq_pass.cuh"

namespace moba::detail::bwd {
template <>
void launch_dq_pass<true, 64>(const DqPassArgs& a, int n_items, void* stream) {
  launch_dq_pass_impl<__nv_bfloat16, 64>(a, n_items, stream);
}
}  // namespace moba::detail::bwd
