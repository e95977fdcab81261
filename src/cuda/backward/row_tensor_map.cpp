#include "cuda/backward/row_tensor_map.hpp"

#include <cudaTypedefs.h>
#include <cuda_runtime.h>

namespace moba::detail::bwd {

namespace {

PFN_cuTensorMapEncodeTiled_v12000 encode_fn() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q) !=
            cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
      f = nullptr;
    (void)cudaGetLastError();
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

// One operand; false when the encoder is missing or refuses it. Dimensions ordered by stride
// (heads inside tokens for the usual [tokens, heads, D]); a single head sits outside the tokens.
bool encode(CUtensorMap& m, int& token_dim, const void* data, std::int64_t ts_el, std::int64_t hs_el, int tokens,
            int heads, int head_dim, bool bf16) {
  auto fn = encode_fn();
  if (!fn || tokens <= 0) return false;
  const bool heads_inner = heads > 1 && hs_el < ts_el;
  const cuuint64_t es = 2;
  const cuuint64_t ts = cuuint64_t(ts_el) * es;
  const cuuint64_t hs = heads > 1 ? cuuint64_t(hs_el) * es : ts * cuuint64_t(tokens);
  cuuint64_t dims[3] = {cuuint64_t(head_dim), 0, 0};
  cuuint64_t strides[2];
  cuuint32_t box[3] = {64, 1, 1};
  if (heads_inner) {
    dims[1] = cuuint64_t(heads);
    dims[2] = cuuint64_t(tokens);
    strides[0] = hs;
    strides[1] = ts;
    box[2] = 64;
  } else {
    dims[1] = cuuint64_t(tokens);
    dims[2] = cuuint64_t(heads);
    strides[0] = ts;
    strides[1] = hs;
    box[1] = 64;
  }
  token_dim = heads_inner ? 2 : 1;
  const cuuint32_t estr[3] = {1, 1, 1};
  return fn(&m, bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 3, const_cast<void*>(data),
            dims, strides, box, estr, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

}  // namespace

RowTensorMaps make_row_tensor_maps(const void* q, std::int64_t q_ts, std::int64_t q_hs, const void* dout,
                                   std::int64_t do_ts, std::int64_t do_hs, int tokens, int heads,
                                   int head_dim, bool bf16) {
  RowTensorMaps m{};
  m.valid = encode(m.q, m.q_token_dim, q, q_ts, q_hs, tokens, heads, head_dim, bf16) &&
            encode(m.dout, m.do_token_dim, dout, do_ts, do_hs, tokens, heads, head_dim, bf16);
  return m;
}

}  // namespace moba::detail::bwd
