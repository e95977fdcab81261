// `moba check`: random problems of every kind on one backend against the fp64 reference,
// forward and backward, with a pass/fail table. Exit status 1 when any case fails.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "backend_choice.hpp"
#include "commands.hpp"
#include "compare.hpp"
#include "random_problem.hpp"
#include "selection_check.hpp"
#include "session.hpp"
#include "table.hpp"

namespace moba::cli {

namespace {

struct CheckOptions {
  std::string backend;
  int cases = 30;
  unsigned seed = 1;
  int max_len = 0;  // 0: the backend's default
  int only_case = -1;
  int threads = 0;
  bool deterministic = false;
  bool inject_fault = false;
  bool verbose = false;
};

struct CaseResult {
  std::vector<Verdict> verdicts;  // out, lse, then dq, dk, dv when the backward ran
  SelectionReport selection;
  std::int64_t masked_rows = 0;  // forward rows left out (selection differs, see below)
  std::string unsupported;       // what the backend said it does not support (not a failure)
  bool ok() const {
    for (const auto& v : verdicts)
      if (!v.ok()) return false;
    return selection.ok();
  }
};

// Multiplies one row of a [T, H, D] result by 1.01: a small wrong answer the check must catch.
void perturb_last_row(HostTensor& x) {
  const auto& s = x.shape();
  if (s.size() != 3 || s[0] == 0) return;
  const std::int64_t row = ((s[0] - 1) * s[1]) * s[2];
  for (std::int64_t d = 0; d < s[2]; ++d) x.set(row + d, x.get(row + d) * 1.01);
}

// Forward rows (token, head) whose result is compared: for MoBA, those where the backend, the
// same-dtype reference and the f32 truth all chose the same blocks (a near-tie choice gives a
// different, equally valid key set; the backward below is compared on the backend's choice).
std::vector<char> forward_row_mask(const Problem& p, const ForwardResult& got,
                                   const ForwardResult& ref, const ForwardResult& truth,
                                   std::int64_t& masked) {
  const std::int64_t rows = std::int64_t(p.total()) * p.hq;
  std::vector<char> keep(std::size_t(rows), 1);
  masked = 0;
  if (p.selection_slots() == 0) return keep;
  const auto a = rows_differ(got.selection, ref.selection, p.selection_slots());
  const auto b = rows_differ(truth.selection, ref.selection, p.selection_slots());
  for (std::int64_t r = 0; r < rows; ++r)
    if (a[std::size_t(r)] || b[std::size_t(r)]) {
      keep[std::size_t(r)] = 0;
      ++masked;
    }
  return keep;
}

// Row mask [T, H] expanded to elements of [T, H, D] and to the lse layout [H, T].
std::vector<char> expand_rows(const std::vector<char>& rows, int d) {
  std::vector<char> out;
  out.reserve(rows.size() * std::size_t(d));
  for (char r : rows) out.insert(out.end(), std::size_t(d), r);
  return out;
}
std::vector<char> transpose_rows(const std::vector<char>& rows, int tokens, int heads) {
  std::vector<char> out(rows.size());
  for (int t = 0; t < tokens; ++t)
    for (int h = 0; h < heads; ++h)
      out[std::size_t(h) * tokens + t] = rows[std::size_t(t) * heads + h];
  return out;
}

// The backward's D_t = <dout_t, out_t> uses the forward's out as stored in the dtype (as
// docs/semantics.md says fast backends do). That moves dS = P (dP - D) by -P dD_t, with
// dD_t = <dout_t, out_t - out_truth_t>, so dq_t moves by -scale dD_t sum_j P_tj k_j and dk_j by
// -scale sum_t P_tj dD_t q_t, exactly. Both come from the reference: sum_j P_tj k_j is the
// forward with v := k, sum_t P_tj x_t is the backward's dv with dout := x. `out_rounded` is the
// correctly rounded out (the same-dtype reference's), so a wrong forward out cannot widen the
// backward's tolerance. With f32 inputs the shift is fp32 noise and is left out.
struct GradientAllowance {
  std::vector<double> dq, dk;
};

GradientAllowance rounded_out_allowance(const Problem& p32, const Inputs& in32,
                                        const HostTensor& out_rounded, const ForwardResult& truth,
                                        const HostTensor& selection, const RunOptions& run) {
  const int T = p32.total(), H = p32.hq, D = p32.head_dim;
  const double scale = p32.params.softmax_scale != 0.f ? p32.params.softmax_scale : 1.0 / std::sqrt(double(D));
  std::vector<double> dD(std::size_t(T) * H, 0.0);
  HostTensor shifted_dout(DType::f32, {T, H, D});
  for (std::int64_t r = 0; r < std::int64_t(T) * H; ++r) {
    double s = 0;
    for (int d = 0; d < D; ++d)
      s += in32.dout.get(r * D + d) * (out_rounded.get(r * D + d) - truth.out.get(r * D + d));
    dD[std::size_t(r)] = s;
    for (int d = 0; d < D; ++d) shifted_dout.set(r * D + d, s * in32.q.get(r * D + d));
  }

  GradientAllowance a;
  Session kbar_run(p32, Inputs{in32.q, in32.k, in32.k, in32.dout}, Backend::reference, run);
  kbar_run.forward();
  const HostTensor kbar = kbar_run.forward_result().out;
  a.dq.resize(std::size_t(kbar.numel()));
  for (std::int64_t i = 0; i < kbar.numel(); ++i)
    a.dq[std::size_t(i)] = std::fabs(scale * dD[std::size_t(i / D)] * kbar.get(i));

  Session spread(p32, Inputs{in32.q, in32.k, in32.v, shifted_dout}, Backend::reference, run);
  spread.set_forward_state({truth.out, truth.lse, selection});
  spread.backward();
  const HostTensor dv = spread.backward_result().dv;
  a.dk.resize(std::size_t(dv.numel()));
  for (std::int64_t i = 0; i < dv.numel(); ++i) a.dk[std::size_t(i)] = std::fabs(scale * dv.get(i));
  return a;
}

CaseResult run_case(const RandomCase& c, Backend backend, const CheckOptions& o) {
  const Problem& p = c.problem;
  RunOptions run;
  run.num_threads = o.threads;
  run.deterministic = o.deterministic;
  const Inputs in = random_inputs(p, c.input_seed, c.q_stddev);

  // The backend under test. A part it reports as unsupported (ErrorKind::unsupported) is left
  // out and reported; every other error stops the check.
  CaseResult r;
  Session tested(p, in, backend, run);
  ForwardResult fwd;
  BackwardResult bwd;
  bool have_backward = true;
  try {
    tested.forward();
    fwd = tested.forward_result();
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::unsupported) throw;
    r.unsupported = e.what();
    return r;
  }
  try {
    tested.backward();
    bwd = tested.backward_result();
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::unsupported) throw;
    r.unsupported = e.what();
    have_backward = false;
  }
  if (o.inject_fault) {
    perturb_last_row(fwd.out);
    perturb_last_row(bwd.dq);
  }

  // The reference on the same inputs in their dtype: the semantic selection, and the error
  // that rounding outputs to the dtype costs.
  Session reference(p, in, Backend::reference, run);
  reference.forward();
  const ForwardResult fwd_ref = reference.forward_result();

  // The truth: the reference on f32 copies (identical to the above for f32 inputs).
  Problem p32 = p;
  p32.dtype = DType::f32;
  const bool same = p.dtype == DType::f32;
  std::unique_ptr<Session> truth_session;
  const Inputs in32 = same ? Inputs{} : convert_inputs(in, DType::f32);
  if (!same) truth_session = std::make_unique<Session>(p32, in32, Backend::reference, run);
  Session& truth = same ? reference : *truth_session;
  if (!same) truth.forward();
  const ForwardResult fwd_truth = same ? fwd_ref : truth.forward_result();

  if (p.params.mode == Mode::moba)
    r.selection = compare_selection(p, in.q, in.k, fwd.selection, fwd_ref.selection);
  const std::vector<char> rows = forward_row_mask(p, fwd, fwd_ref, fwd_truth, r.masked_rows);
  r.verdicts.push_back(judge("out", p.dtype, Quantity::output, fwd.out.to_double(),
                             fwd_ref.out.to_double(), fwd_truth.out.to_double(),
                             expand_rows(rows, p.head_dim)));
  r.verdicts.push_back(judge("lse", p.dtype, Quantity::lse, fwd.lse.to_double(),
                             fwd_ref.lse.to_double(), fwd_truth.lse.to_double(),
                             transpose_rows(rows, p.total(), p.hq)));

  if (!have_backward) return r;

  // Backward on the backend's own selection (gradients hold the selection fixed).
  reference.set_forward_state({fwd_ref.out, fwd_ref.lse, fwd.selection});
  reference.backward();
  const BackwardResult bwd_ref = reference.backward_result();
  BackwardResult bwd_truth = bwd_ref;
  GradientAllowance allow;
  if (!same) {
    truth.set_forward_state({fwd_truth.out, fwd_truth.lse, fwd.selection});
    truth.backward();
    bwd_truth = truth.backward_result();
    allow = rounded_out_allowance(p32, in32, fwd_ref.out, fwd_truth, fwd.selection, run);
  }
  r.verdicts.push_back(judge("dq", p.dtype, Quantity::output, bwd.dq.to_double(),
                             bwd_ref.dq.to_double(), bwd_truth.dq.to_double(), {}, allow.dq));
  r.verdicts.push_back(judge("dk", p.dtype, Quantity::output, bwd.dk.to_double(),
                             bwd_ref.dk.to_double(), bwd_truth.dk.to_double(), {}, allow.dk));
  r.verdicts.push_back(judge("dv", p.dtype, Quantity::output, bwd.dv.to_double(),
                             bwd_ref.dv.to_double(), bwd_truth.dv.to_double()));
  return r;
}

std::string error_cell(const Verdict& v) {
  return fmt::format("{:.1e}{}", v.error.rel_l2, v.ok() ? " " : "!");
}

std::string shorten(const std::string& s, std::size_t n) {
  return s.size() <= n ? s : s.substr(0, n - 3) + "...";
}

int run_check(const CheckOptions& o) {
  const Backend backend = choose_backend(o.backend);
  RandomProblemOptions gen;
  switch (backend) {
    case Backend::cuda:  // bf16/f16 kernels, blocks of 64
      gen.dtypes = {DType::f16, DType::bf16};
      gen.max_len = 640;
      gen.block_sizes = {64, 128};
      break;
    case Backend::reference:
      gen.max_len = 128;
      gen.head_dims = {16, 40, 64};
      break;
    default: break;
  }
  if (o.max_len > 0) {
    // Longer sequences: let the reference take longer rather than losing all heads.
    gen.max_work *= std::max(1.0, double(o.max_len) * o.max_len / (double(gen.max_len) * gen.max_len));
    gen.max_len = o.max_len;
  }

  const int first = o.only_case >= 0 ? o.only_case : 0;
  const int last = o.only_case >= 0 ? o.only_case + 1 : o.cases;
  fmt::print("moba check: {} backend against the fp64 reference (truth: the reference on f32 "
             "copies), cases {}..{}, seed {}, max-len {}{}\n",
             backend_name(backend), first, last - 1, o.seed, gen.max_len,
             o.inject_fault ? ", INJECTED FAULT" : "");
  fmt::print("errors: rel_l2 vs the truth; '!' = over tolerance (2 x same-dtype reference error "
             "+ floor); sel: rows choosing other blocks than the reference (~ near ties)\n\n");
  const Table table({{"case", 4}, {"shape", 30, true}, {"mode", 15, true}, {"out", 8},
                     {"lse", 8}, {"dq", 8}, {"dk", 8}, {"dv", 8}, {"sel", 7}, {"result", 6}});
  fmt::print("{}\n", table.header());
  std::fflush(stdout);

  const auto start = std::chrono::steady_clock::now();
  int passed = 0, failed = 0, partial = 0;
  std::vector<std::string> unsupported;
  std::int64_t sel_rows = 0, sel_ties = 0;
  std::vector<std::string> failures;
  for (int i = first; i < last; ++i) {
    const RandomCase c = random_case(i, o.seed, gen);
    CaseResult r;
    try {
      r = run_case(c, backend, o);
    } catch (const Error&) {
      std::fflush(stdout);
      fmt::print(stderr, "moba check: case {} ({}) stopped with an error:\n", i, c.problem.detail_str());
      throw;
    }
    (r.ok() ? passed : failed) += 1;
    if (!r.unsupported.empty()) {
      ++partial;
      if (std::find(unsupported.begin(), unsupported.end(), r.unsupported) == unsupported.end())
        unsupported.push_back(r.unsupported);
    }
    sel_rows += r.selection.rows;
    sel_ties += r.selection.near_ties;
    std::string sel = "-";
    if (c.problem.params.mode == Mode::moba) {
      const auto bad = r.selection.differ - r.selection.near_ties;
      sel = bad ? fmt::format("{}!", bad) : r.selection.near_ties ? fmt::format("{}~", r.selection.near_ties) : "0";
    }
    std::vector<std::string> cells{std::to_string(i), c.problem.shape_str(), c.problem.mode_str()};
    for (const auto& v : r.verdicts) cells.push_back(error_cell(v));
    while (cells.size() < 8) cells.push_back("n/a");
    cells.push_back(sel);
    cells.push_back(r.ok() ? (r.unsupported.empty() ? "PASS" : "PASS*") : "FAIL");
    fmt::print("{}\n", table.row(cells));
    if (o.verbose) {
      fmt::print("      {}\n      rel_l2/tol:", c.problem.detail_str());
      for (const auto& v : r.verdicts)
        fmt::print(" {} {:.2e}/{:.2e}", v.name, v.error.rel_l2, v.tol.rel_l2);
      fmt::print("; rel_max/tol:");
      for (const auto& v : r.verdicts)
        fmt::print(" {} {:.2e}/{:.2e}", v.name, v.error.rel_max, v.tol.rel_max);
      fmt::print("; forward rows left out (selection differs): {}\n", r.masked_rows);
    }
    std::fflush(stdout);
    if (!r.ok()) {
      std::string why;
      for (const auto& v : r.verdicts)
        if (!v.ok()) why += "\n    " + v.explain();
      if (!r.selection.ok())
        why += fmt::format("\n    selection: {} rows differ beyond near ties, first: {}",
                           r.selection.differ - r.selection.near_ties, r.selection.first_error);
      failures.push_back(fmt::format("case {}: {}{}\n    reproduce: moba check --backend {} --seed {} --case {}",
                                     i, c.problem.detail_str(), why, backend_name(backend), o.seed, i));
    }
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  fmt::print("{}\n", table.rule());
  for (const auto& f : failures) fmt::print("FAIL {}\n", f);
  if (partial) {
    fmt::print("PASS* / n/a: {} case(s) ran only in part; the backend reported as unsupported:\n", partial);
    for (const auto& u : unsupported) fmt::print("  {}\n", shorten(u, 300));
  }
  if (sel_rows)
    fmt::print("selection: {} of {} MoBA rows chose differently at near-equal scores ({:.4f}%)\n",
               sel_ties, sel_rows, 100.0 * sel_ties / sel_rows);
  fmt::print("moba check: {} of {} cases passed on the {} backend ({:.1f} s){}\n", passed,
             passed + failed, backend_name(backend), seconds, failed ? " -- FAILED" : "");
  return failed ? 1 : 0;
}

}  // namespace

CommandRun add_check_command(CLI::App& app) {
  auto o = std::make_shared<CheckOptions>();
  CLI::App* cmd = app.add_subcommand(
      "check", "Run random problems of every mode on a backend against the fp64 reference");
  cmd->footer(
      "Run random problems on a backend and compare forward (out, lse, MoBA selection) and "
      "backward (dq, dk, dv) with the fp64 reference backend. Cases cycle full/MoBA/MoA and "
      "f32/f16/bf16 and draw GQA/MQA head ratios, varlen batches (empty, length-1 and odd "
      "sequences), MoBA block sizes and topk (1 up to beyond the number of blocks), MoA "
      "windows and sinks, custom softmax scales and sharp softmaxes.\n"
      "Truth: the reference on f32 copies of the inputs. A result passes when its rel_l2 and "
      "rel_max errors are within 2x the error of the reference run in the same dtype plus a "
      "floor (f32 5e-5, f16 6e-5, bf16 5e-4 rel_l2; lse 1e-5), plus for f16/bf16 dq and dk the "
      "exact shift from taking D = <dout, out> with out rounded to the dtype. MoBA selections "
      "must equal the "
      "reference's except at near-equal gate scores. Exit status: 0 all passed, 1 a case "
      "failed, 2 an error.\n");
  cmd->add_option("--backend", o->backend, "Backend under test (default: cuda if usable, else cpu)")
      ->check(CLI::IsMember(backend_names()));
  cmd->add_option("--cases", o->cases, "Number of random cases")->check(CLI::Range(1, 1000000))->capture_default_str();
  cmd->add_option("--seed", o->seed, "Random seed (cases are reproducible from seed and index)")->capture_default_str();
  cmd->add_option("--max-len", o->max_len,
                  "Longest sequence (default: cpu 256, cuda 640, reference 128)")
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--case", o->only_case, "Run only case number I of this seed")->check(CLI::NonNegativeNumber);
  cmd->add_option("--threads", o->threads, "CPU threads (0: all hardware threads)")->check(CLI::NonNegativeNumber)->capture_default_str();
  cmd->add_flag("--deterministic", o->deterministic, "Run the backward without float atomics");
  cmd->add_flag("--inject-fault", o->inject_fault,
                "Scale one row of the backend's out and dq by 1.01 before comparing, to see "
                "the check fail (exit status 1)");
  cmd->add_flag("-v,--verbose", o->verbose, "Print every case's full shape and parameters");
  return [o] { return run_check(*o); };
}

}  // namespace moba::cli
