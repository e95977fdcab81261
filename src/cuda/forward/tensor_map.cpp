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

// heads_inner: dimensions (D, heads, tokens), else (D, tokens, heads); strides ascending.
CUtensorMap encode(const KvOperand& x, int tokens, int heads, int head_dim, bool bf16,
                   bool heads_inner, const char* name) {
  auto fn = encode_fn();
  if (!fn)
    throw Error(ErrorKind::unsupported,
                "cuda backend: the driver offers no cuTensorMapEncodeTiled (TMA), needed by "
                "CudaOptions::forward_kernel = sm90_warp_specialized");
  const cuuint64_t es = 2;
  const cuuint64_t ts = cuuint64_t(x.token_stride) * es;
  // a single head: the stride past all tokens (its coordinate is always 0)
  const cuuint64_t hs = heads > 1 ? cuuint64_t(x.head_stride) * es : ts * cuuint64_t(tokens);
  cuuint64_t dims[3] = {cuuint64_t(head_dim), 0, 0};
  cuuint64_t strides[2];
  cuuint32_t box[3] = {64, 1, 1};
  if (heads_inner) {
    dims[1] = cuuint64_t(heads);
    dims[2] = cuuint64_t(tokens);
    strides[0] = hs;
    strides[1] = ts;
    box[2] = 128;
  } else {
    dims[1] = cuuint64_t(tokens);
    dims[2] = cuuint64_t(heads);
    strides[0] = ts;
    strides[1] = hs;
    box[1] = 128;
  }
  const cuuint32_t estr[3] = {1, 1, 1};
  CUtensorMap m;
  const CUresult r =
      fn(&m, bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 3,
         const_cast<void*>(x.data), dims, strides, box, estr, CU_TENSOR_MAP_INTERLEAVE_NONE,
         CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
         CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
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

KvTensorMaps make_kv_tensor_maps(const KvOperand& k, const KvOperand& v, int tokens, int heads,
                                 int head_dim, bool bf16) {
  // heads inside tokens (the usual [tokens, heads, D]) unless the strides say otherwise; a
  // single head sits outside, after the tokens
  const bool k_inner = heads > 1 && k.head_stride < k.token_stride;
  const bool v_inner = heads > 1 && v.head_stride < v.token_stride;
  KvTensorMaps m{};
  m.k = encode(k, tokens, heads, head_dim, bf16, k_inner, "k");
  m.v = encode(v, tokens, heads, head_dim, bf16, v_inner, "v");
  m.k_token_dim = k_inner ? 2 : 1;
  m.v_token_dim = v_inner ? 2 : 1;
  return m;
}

}  // namespace moba::cuda
