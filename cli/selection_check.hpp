// Compares a backend's MoBA block selection with the reference's. docs/semantics.md
// ("Selection equality"): fast backends score blocks in fp32, so blocks whose exact scores are
// within fp32 rounding may be ordered differently. A differing row is allowed only when every
// swapped pair of blocks has fp64 gate scores within that rounding: 1e-5 of sum_d |q_d m_d|
// (fp32 dot products and sums) plus, for f16/bf16, one ulp of a rounded block-mean element
// (the fp32 block sum may land on the other side of a rounding boundary).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "host_tensor.hpp"
#include "problem.hpp"

namespace moba::cli {

struct SelectionReport {
  std::int64_t rows = 0;       // (token, head) rows that had past blocks to choose from
  std::int64_t differ = 0;     // rows whose selection differs from the reference
  std::int64_t near_ties = 0;  // of those, explained by near-equal scores
  std::string first_error;     // the first unexplained difference, readable
  bool ok() const { return differ == near_ties; }
};

// `q`, `k`: the inputs in the problem's dtype. `got`, `want`: i32 [T, hq, topk - 1].
SelectionReport compare_selection(const Problem& p, const HostTensor& q, const HostTensor& k,
                                  const HostTensor& got, const HostTensor& want);

// One flag per (token, head): 1 where the two selections differ.
std::vector<char> rows_differ(const HostTensor& a, const HostTensor& b, int slots);

}  // namespace moba::cli
