#include "cuda/backward/row_tensor_map.hpp"

#include "cuda/forward/tensor_map.hpp"

namespace moba::detail::bwd {

RowTensorMaps make_row_tensor_maps(const void* q, std::int64_t q_ts, std::int64_t q_hs, const void* dout,
                                   std::int64_t do_ts, std::int64_t do_hs, int tokens, int heads,
                                   int head_dim, bool bf16) {
  // boxes of 64 tokens (a row tile); false (cp.async instead) where the encoder is missing or
  // refuses a layout
  RowTensorMaps m{};
  m.valid = tokens > 0 &&
            cuda::encode_operand_map(m.q, m.q_token_dim, q, q_ts, q_hs, tokens, heads, head_dim, bf16,
                                     64) == CUDA_SUCCESS &&
            cuda::encode_operand_map(m.dout, m.do_token_dim, dout, do_ts, do_hs, tokens, heads,
                                     head_dim, bf16, 64) == CUDA_SUCCESS;
  return m;
}

}  // namespace moba::detail::bwd
