// One backend's results against the fp64 truth, with the tolerances of compare.hpp: what
// `moba check` reports per case and what the backend test suites assert.
#pragma once

#include <string>
#include <vector>

#include "compare.hpp"
#include "run.hpp"
#include "selection_check.hpp"
#include "truth.hpp"

namespace moba::verify {

struct ForwardCheck {
  SelectionReport selection;  // MoBA: against the reference gate, near ties allowed
  Truth truth;                // fp64 over the backend's own key sets
  Verdict out, lse;
  bool ok() const { return selection.ok() && out.ok() && lse.ok(); }
  std::string explain() const;  // the failing parts, one per line
};

// `got`: the backend's forward of `in` (its selection decides the key sets of the truth, so a
// near-tie choice is judged on the keys it chose). The same-dtype reference's error is that of
// the truth rounded once to the output's dtype (what the reference backend stores).
ForwardCheck check_forward(const Problem& p, Inputs& in, const ForwardResult& got);

struct BackwardCheck {
  Verdict dq, dk, dv;
  bool ok() const { return dq.ok() && dk.ok() && dv.ok(); }
  std::string explain() const;
};

// `got`: the backend's backward from the saved state `fwd_state` (whose selection fixes the key
// sets), `truth`: check_forward's truth on that selection. The same-dtype reference runs on the
// correctly rounded forward state; f16/bf16 dq and dk get rounded_out_allowance on top.
BackwardCheck check_backward(const Problem& p, Inputs& in, const ForwardResult& fwd_state,
                             const Truth& truth, const BackwardResult& got,
                             const RunOptions& reference_options = {});

}  // namespace moba::verify
