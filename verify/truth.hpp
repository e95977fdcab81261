// The fp64 truth every backend is checked against (the definition in docs/semantics.md):
// attention over a given selection's key sets, the gradients, the gate's block scores.
#pragma once

#include <cstdint>
#include <vector>

#include "problem.hpp"
#include "run.hpp"

namespace moba::verify {

struct Truth {
  std::vector<double> out;  // [T, hq, D]
  std::vector<double> lse;  // [hq, T]
};
// fp64 forward on the inputs' values over the key sets `selection` implies (MoBA: [T, hq,
// topk - 1], e.g. a fast backend's own choice; ignored otherwise). Threaded over tokens.
Truth truth_forward(const Problem& p, const Inputs& in, const std::vector<std::int32_t>& selection);

// fp64 gradients on the inputs' values: the reference backend (fp64 inside) on f32 copies, with
// `fwd`'s selection and lse as the saved state (the key sets are fixed, as in training).
BackwardResult truth_backward(const Problem& p, const Inputs& in, const ForwardResult& fwd);

// The reference backend's gate in the problem's dtype: the definition of the selection.
std::vector<std::int32_t> reference_selection(const Problem& p, Inputs& in);

// fp64 gate scores <q_t, mean_j> of every past block j of token t (0-based within sequence
// `seq`), query head h, with the block means docs/semantics.md defines (exact sum, fp32
// division, rounded to the dtype), and the scale of the rounding error a fast backend may make
// on each: sum_d |q_d mean_jd| and max_d |q_d mean_jd|.
struct BlockScores {
  std::vector<double> score, abs_sum, abs_max;
};
BlockScores block_scores(const Problem& p, const Inputs& in, int seq, int t, int h);

// The backward's D_t = <dout_t, out_t> uses the forward's out as stored in the dtype (as
// docs/semantics.md says fast backends do). That moves dS = P (dP - D) by -P dD_t, with
// dD_t = <dout_t, out_t - out_truth_t>, so dq_t moves by -scale dD_t sum_j P_tj k_j and dk_j
// by -scale sum_t P_tj dD_t q_t, exactly; these are the per-element sizes of those shifts.
// `out_rounded` is the correctly rounded out, so a wrong forward out cannot widen a tolerance.
struct GradientAllowance {
  std::vector<double> dq, dk;
};
GradientAllowance rounded_out_allowance(const Problem& p, const Inputs& in,
                                        const HostTensor& out_rounded, const Truth& truth,
                                        const std::vector<std::int32_t>& selection);

}  // namespace moba::verify
