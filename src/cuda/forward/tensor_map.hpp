// TMA descriptors (CUtensorMap) of K and V for the warp-specialised forward (ws_kernel.cuh).
// Each describes a [tokens, heads, D] operand with its element strides as a 3-D tensor whose
// innermost dimension is D; a box is 64 columns (128 bytes) x 1 head x 128 tokens, stored with
// the 128-byte swizzle that wgmma reads (the layout of hopper_wgmma.cuh's tiles). The two outer
// dimensions are ordered by stride (heads inner when head_stride < token_stride, the usual
// [tokens, heads, D] layout); `*_token_dim` says which coordinate is the token.
#pragma once

#include <cuda.h>

#include <cstdint>

namespace moba::cuda {

struct KvTensorMaps {
  CUtensorMap k;
  CUtensorMap v;
  int k_token_dim;  // 1: coordinates (d, token, head); 2: (d, head, token)
  int v_token_dim;
};

struct KvOperand {
  const void* data;
  std::int64_t token_stride, head_stride;  // elements
};

// Throws moba::Error(unsupported) when the driver has no tensor-map support or rejects the
// layout (strides must be multiples of 16 bytes, as the CUDA backend already requires).
KvTensorMaps make_kv_tensor_maps(const KvOperand& k, const KvOperand& v, int tokens, int heads,
                                 int head_dim, bool bf16);

// Whether the driver offers cuTensorMapEncodeTiled (probed once per process).
bool tensor_maps_available();

// One [tokens, heads, head_dim] 16-bit operand (element strides) as a 3-D tensor map: boxes of
// 64 columns (128 bytes, 128-byte swizzle) x `box_tokens` tokens x 1 head, the two outer
// dimensions ordered by stride (heads inside tokens when heads > 1 and head_stride <
// token_stride; a single head sits after the tokens). `token_dim` gets the token's coordinate
// (1: (d, token, head), 2: (d, head, token)). Returns the driver's result
// (CUDA_ERROR_NOT_SUPPORTED without an encoder). Used by the forward's K/V maps and the
// backward's row maps (src/cuda/backward/row_tensor_map.cpp).
CUresult encode_operand_map(CUtensorMap& m, int& token_dim, const void* data,
                            std::int64_t token_stride, std::int64_t head_stride, int tokens,
                            int heads, int head_dim, bool bf16, int box_tokens);

}  // namespace moba::cuda
