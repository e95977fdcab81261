#include "cuda/forward/tensor_map.hpp"

#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <string>

#include "moba/error.hpp"

namespace moba::cuda {

namespace {

// The driver entry point, looked up once through the runtime (no link against libcuda).
PFN_cuTensorMapEncodeTiled_v12000 encode_fn() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault,
                                         &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
      f = nullptr;
    (void)cudaGetLastError();
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

CUtensorMap encode(const KvOperand& x, int tokens, int heads, int head_dim, bool bf16,
                   int& token_dim, const char* name) {
  if (!encode_fn())
    throw Error(ErrorKind::unsupported,
                "cuda backend: the driver offers no cuTensorMapEncodeTiled (TMA), needed by "
                "CudaOptions::forward_kernel = sm90_warp_specialized");
  CUtensorMap m;
  const CUresult r = encode_operand_map(m, token_dim, x.data, x.token_stride, x.head_stride,
                                        tokens, heads, head_dim, bf16, 128);
  if (r != CUDA_SUCCESS)
    throw Error(ErrorKind::unsupported,
                std::string("cuda backend: cuTensorMapEncodeTiled rejected ") + name +
                    " (error " + std::to_string(int(r)) + ", token stride " +
                    std::to_string(x.token_stride) + ", head stride " +
                    std::to_string(x.head_stride) +
                    " elements); use CudaOptions::forward_kernel = sm80_mma_sync");
  return m;
}

}  // namespace

bool tensor_maps_available() { return encode_fn() != nullptr; }

CUresult encode_operand_map(CUtensorMap& m, int& token_dim, const void* data,
                            std::int64_t token_stride, std::int64_t head_stride, int tokens,
                            int heads, int head_dim, bool bf16, int box_tokens) {
  auto fn = encode_fn();
  if (!fn) return CUDA_ERROR_NOT_SUPPORTED;
  const bool heads_inner = heads > 1 && head_stride < token_stride;
  const cuuint64_t es = 2;
  const cuuint64_t ts = cuuint64_t(token_stride) * es;
  // a single head: the stride past all tokens (its coordinate is always 0)
  const cuuint64_t hs = heads > 1 ? cuuint64_t(head_stride) * es : ts * cuuint64_t(tokens);
  cuuint64_t dims[3] = {cuuint64_t(head_dim), 0, 0};
  cuuint64_t strides[2];
  cuuint32_t box[3] = {64, 1, 1};
  if (heads_inner) {
    dims[1] = cuuint64_t(heads);
    dims[2] = cuuint64_t(tokens);
    strides[0] = hs;
    strides[1] = ts;
    box[2] = cuuint32_t(box_tokens);
  } else {
    dims[1] = cuuint64_t(tokens);
    dims[2] = cuuint64_t(heads);
    strides[0] = ts;
    strides[1] = hs;
    box[1] = cuuint32_t(box_tokens);
  }
  token_dim = heads_inner ? 2 : 1;
  const cuuint32_t estr[3] = {1, 1, 1};
  return fn(&m, bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 3,
            const_cast<void*>(data), dims, strides, box, estr, CU_TENSOR_MAP_INTERLEAVE_NONE,
            CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
}

KvTensorMaps make_kv_tensor_maps(const KvOperand& k, const KvOperand& v, int tokens, int heads,
                                 int head_dim, bool bf16) {
  KvTensorMaps m{};
  m.k = encode(k, tokens, heads, head_dim, bf16, m.k_token_dim, "k");
  m.v = encode(v, tokens, heads, head_dim, bf16, m.v_token_dim, "v");
  return m;
}

}  // namespace moba::cuda
