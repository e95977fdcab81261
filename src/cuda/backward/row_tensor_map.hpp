// TMA descriptors (CUtensorMap) of the backward's row operands Q and dO for the warp-specialised
// sm_90a key pass (sm90_ws_key_pass.cuh): each [tokens, heads, D] operand as a 3-D tensor with D
// innermost, a box of 64 columns (128 bytes) x 1 head x 64 tokens (one 64-row tile's column
// block), stored with the 128-byte swizzle wgmma reads. The forward's maps (tensor_map.hpp) have
// 128-token boxes for K and V; these are their row-tile counterpart, built the same way.
// Only the key pass's implicit row tiles (64 consecutive tokens of one head) are loaded through
// them; listed (MoBA) rows are gathered by cp.async, which a box cannot name.
#pragma once

#include <cuda.h>

#include <cstdint>

namespace moba::detail::bwd {

struct RowTensorMaps {
  CUtensorMap q;
  CUtensorMap dout;
  int q_token_dim;   // 1: coordinates (d, token, head); 2: (d, head, token)
  int do_token_dim;
  int valid;         // 0: no maps (the driver has no encoder or refused the layout): cp.async only
};

// Never throws: a layout or driver the encoder refuses leaves valid = 0 (the kernel then loads
// every row tile by cp.async, exactly as it loads the listed ones).
RowTensorMaps make_row_tensor_maps(const void* q, std::int64_t q_ts, std::int64_t q_hs, const void* dout,
                                   std::int64_t do_ts, std::int64_t do_hs, int tokens, int heads,
                                   int head_dim, bool bf16);

}  // namespace moba::detail::bwd
