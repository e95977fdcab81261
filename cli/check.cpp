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
  std::vector<verify::Verdict> verdicts;  // out, lse, then dq, dk, dv when the backward ran
  verify::SelectionReport selection;
  std::string unsupported;  // what the backend said it does not support (not a failure)
  bool ok() const {
    for (const auto& v : verdicts)
      if (!v.ok()) return false;
    return selection.ok();
  }
};

// Multiplies one row of a [T, H, D] result by 1.01: a small wrong answer the check must catch.
void perturb_last_row(HostTensor& x) {
  const auto& s = x.shape;
  if (s.size() != 3 || s[0] == 0) return;
  const std::int64_t row = ((s[0] - 1) * s[1]) * s[2];
  for (std::int64_t d = 0; d < s[2]; ++d) x.set(row + d, x.get(row + d) * 1.01);
}

// The backend under test against the fp64 truth (verify/check.hpp: the same rules as the test
// suites). The forward is judged on the key sets of the backend's own selection, which must
// equal the reference gate's except at near ties; the backward on that selection too.
CaseResult run_case(const verify::RandomCase& c, Backend backend, const CheckOptions& o) {
  const Problem& p = c.problem;
  RunOptions run;
  run.num_threads = o.threads;
  run.deterministic = o.deterministic;
  Inputs in = verify::make_inputs(p, c.input_seed, c.q_stddev);

  // A part the backend reports as unsupported (ErrorKind::unsupported) is left out and
  // reported; every other error stops the check.
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

  const verify::ForwardCheck f = verify::check_forward(p, in, fwd);
  r.selection = f.selection;
  r.verdicts = {f.out, f.lse};
  if (!have_backward) return r;
  const verify::BackwardCheck b = verify::check_backward(p, in, fwd, f.truth, bwd, run);
  r.verdicts.insert(r.verdicts.end(), {b.dq, b.dk, b.dv});
  return r;
}

std::string error_cell(const verify::Verdict& v) {
  return fmt::format("{:.1e}{}", v.error.rel_l2, v.ok() ? " " : "!");
}

std::string shorten(const std::string& s, std::size_t n) {
  return s.size() <= n ? s : s.substr(0, n - 3) + "...";
}

int run_check(const CheckOptions& o) {
  const Backend backend = choose_backend(o.backend);
  verify::RandomProblemOptions gen;
  gen.max_len = 256;
  gen.block_sizes = {16, 32, 50, 64};
  gen.max_work = 3e7;  // keeps the fp64 truth of a case to about a second
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
  fmt::print("moba check: {} backend against the fp64 truth (on the inputs' values, over the "
             "backend's own MoBA selection), cases {}..{}, seed {}, max-len {}{}\n",
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
    const verify::RandomCase c = verify::random_case(i, o.seed, gen);
    CaseResult r;
    try {
      r = run_case(c, backend, o);
    } catch (const Error&) {
      std::fflush(stdout);
      fmt::print(stderr, "moba check: case {} ({}) stopped with an error:\n", i, c.problem.str());
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
      fmt::print("      {}\n      rel_l2/tol:", c.problem.str());
      for (const auto& v : r.verdicts)
        fmt::print(" {} {:.2e}/{:.2e}", v.name, v.error.rel_l2, v.tol.rel_l2);
      fmt::print("; rel_max/tol:");
      for (const auto& v : r.verdicts)
        fmt::print(" {} {:.2e}/{:.2e}", v.name, v.error.rel_max, v.tol.rel_max);
      fmt::print("\n");
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
                                     i, c.problem.str(), why, backend_name(backend), o.seed, i));
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
      "Truth: fp64 attention on the inputs' values over the key sets of the backend's own MoBA "
      "selection (the same rules as the test suites, verify/check.hpp). A result passes when "
      "its rel_l2 and "
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
  cmd->add_flag("-v,--verbose", o->verbose, "Print every case's full shape and parameters, and each error next to its "
                "tolerance (rel_l2 and rel_max)");
  return [o] { return run_check(*o); };
}

}  // namespace moba::cli
