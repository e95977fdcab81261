#include "check.hpp"

namespace moba::verify {

namespace {

void add_failure(std::string& s, const Verdict& v) {
  if (!v.ok()) s += (s.empty() ? "" : "\n") + v.explain();
}

}  // namespace

std::string ForwardCheck::explain() const {
  std::string s;
  if (!selection.ok())
    s = "selection: " + std::to_string(selection.differ - selection.near_ties) +
        " rows differ beyond near ties, first: " + selection.first_error;
  add_failure(s, out);
  add_failure(s, lse);
  return s;
}

std::string BackwardCheck::explain() const {
  std::string s;
  add_failure(s, dq);
  add_failure(s, dk);
  add_failure(s, dv);
  return s;
}

ForwardCheck check_forward(const Problem& p, Inputs& in, const ForwardResult& got) {
  ForwardCheck c;
  if (p.params.mode == Mode::moba)
    c.selection = compare_selection(p, in, got.selection, reference_selection(p, in));
  c.truth = truth_forward(p, in, got.selection);
  c.out = judge("out", p.dtype, Quantity::output, got.out.as_double(), rounded(c.truth.out, p.dtype),
                c.truth.out);
  c.lse = judge("lse", p.dtype, Quantity::lse, as_double(got.lse), rounded(c.truth.lse, DType::f32),
                c.truth.lse);
  return c;
}

BackwardCheck check_backward(const Problem& p, Inputs& in, const ForwardResult& fwd_state,
                             const Truth& truth, const BackwardResult& got,
                             const RunOptions& reference_options) {
  // The same-dtype reference, from the correctly rounded forward state on the same key sets.
  ForwardResult rounded_state;
  rounded_state.out = HostTensor(p.dtype, fwd_state.out.shape);
  for (std::size_t i = 0; i < truth.out.size(); ++i) rounded_state.out.set(std::int64_t(i), truth.out[i]);
  rounded_state.lse.assign(truth.lse.begin(), truth.lse.end());
  rounded_state.selection = fwd_state.selection;
  RunOptions ref = reference_options;
  ref.backend = Backend::reference;
  const BackwardResult reference = run_backward(p, in, rounded_state, ref);
  const BackwardResult exact = truth_backward(p, in, rounded_state);
  GradientAllowance allow;
  if (p.dtype != DType::f32)  // with f32 inputs the shift is fp32 noise
    allow = rounded_out_allowance(p, in, rounded_state.out, truth, fwd_state.selection);
  BackwardCheck c;
  c.dq = judge("dq", p.dtype, Quantity::output, got.dq.as_double(), reference.dq.as_double(),
               exact.dq.as_double(), {}, allow.dq);
  c.dk = judge("dk", p.dtype, Quantity::output, got.dk.as_double(), reference.dk.as_double(),
               exact.dk.as_double(), {}, allow.dk);
  c.dv = judge("dv", p.dtype, Quantity::output, got.dv.as_double(), reference.dv.as_double(),
               exact.dv.as_double());
  return c;
}

}  // namespace moba::verify
