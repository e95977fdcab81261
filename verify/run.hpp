// Forward and backward of a problem on a host backend (reference or cpu) through the public
// API, outputs poisoned first so an element a backend forgets to write shows up as an error.
#pragma once

#include <cstdint>
#include <vector>

#include "moba/moba.hpp"
#include "problem.hpp"

namespace moba::verify {

struct ForwardResult {
  HostTensor out;                       // like q
  std::vector<float> lse;               // [hq, T]
  std::vector<std::int32_t> selection;  // [T, hq, topk - 1] (MoBA; empty otherwise)
};

struct BackwardResult {
  HostTensor dq, dk, dv;
};

ForwardResult run_forward(const Problem& p, Inputs& in, const RunOptions& options);
// Uses fwd.out / fwd.lse / fwd.selection as the saved forward state.
BackwardResult run_backward(const Problem& p, Inputs& in, ForwardResult& fwd,
                            const RunOptions& options);

inline RunOptions on(Backend b, int threads = 0) {
  RunOptions o;
  o.backend = b;
  o.num_threads = threads;
  return o;
}
inline ForwardResult run_forward(const Problem& p, Inputs& in, Backend b, int threads = 0) {
  return run_forward(p, in, on(b, threads));
}
inline BackwardResult run_backward(const Problem& p, Inputs& in, ForwardResult& fwd, Backend b,
                                   int threads = 0) {
  return run_backward(p, in, fwd, on(b, threads));
}

// The MoBA gate alone on a host backend: [T, hq, topk - 1].
std::vector<std::int32_t> run_gate(const Problem& p, Inputs& in, const RunOptions& options);

}  // namespace moba::verify
