// Attention influence: how much the loss would rise if single attention values were masked,
// summed per query head into histograms by query-key distance and sink membership. This is the
// profiling half of MoA (docs/semantics.md, "Attention influence"): a backward pass of dense
// causal attention that, instead of dK/dV, reduces dS = P * (dP - D) at the softmax input into
// a few sums per head, so no N x N matrix is ever held.
#pragma once

#include <vector>

#include "moba/params.hpp"
#include "moba/tensor.hpp"

namespace moba {

// How the (query t, key j <= t) pairs of a head are grouped.
struct InfluenceBins {
  // Ascending, first 0: bin b holds distances t - j in [edges[b], edges[b + 1]); the last bin
  // is open-ended. The MoA search puts an edge at every candidate window, so sums over the bins
  // beyond a window are exact.
  std::vector<int> distance_edges{0};
  int sink = 64;  // keys j < sink are summed apart (they are always kept by a MoA plan)
  int num_bins() const { return static_cast<int>(distance_edges.size()); }
};

// Layout of the sums attention_influence returns, fp64, contiguous:
//   [measure][query head][sink flag][bin]
//   measure 0: signed, sum of -dS (first-order loss increase from masking the entries)
//   measure 1: magnitude, sum of |dS|
//   sink flag 0: keys j >= sink, 1: keys j < sink
constexpr int kInfluenceMeasures = 2;

// Dense causal attention only (key set {0 .. t}). Inputs as attention_backward's: q, k, v,
// out, lse of the forward, dout = dL/dout. softmax_scale 0 means 1/sqrt(D). The reference
// backend recomputes P in fp64 and ignores out/lse; the CPU backend uses them. CUDA tensors
// raise ErrorKind::unsupported (the Python package has a chunked GPU path).
std::vector<double> attention_influence(const TensorView& q, const TensorView& k,
                                        const TensorView& v, const TensorView& out,
                                        const TensorView& lse, const TensorView& dout,
                                        const TensorView& cu_seqlens, float softmax_scale,
                                        const InfluenceBins& bins,
                                        const RunOptions& options = {});

}  // namespace moba
