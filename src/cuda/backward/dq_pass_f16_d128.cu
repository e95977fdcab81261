// One instantiation per file (CI builds on 2 cores): dq pass, f16, head_dim 128.
#include "cuda/backward/dq_pass.cuh"

namespace moba::detail::bwd {
template <>
void launch_dq_pass<false, 128>(const DqPassArgs& a, int n_items, void* stream) {
  launch_dq_pass_impl<__half, 128>(a, n_items, stream);
}
}  // namespace moba::detail::bwd
