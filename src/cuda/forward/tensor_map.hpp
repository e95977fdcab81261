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

}  // namespace moba::cuda
