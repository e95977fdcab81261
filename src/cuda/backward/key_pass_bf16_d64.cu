// One instantiation per file (CI builds on 2 cores): key pass, bf16, head_dim 64.
#include "cuda/backward/key_pass.cuh"

namespace moba::detail::bwd {
template <>
void launch_key_pass<true, 64>(const KeyPassArgs& a, int n_items, void* stream) {
  launch_key_pass_impl<__nv_bfloat16, 64>(a, n_items, stream);
}
}  // namespace moba::detail::bwd
