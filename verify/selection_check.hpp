// Compares a backend's MoBA block selection with the reference's. docs/semantics.md
// ("Selection equality"): fast backends score blocks in fp32, so blocks whose exact scores are
// within fp32 rounding may be ordered differently. A differing row is allowed only when it is
// well formed (the right count of valid past blocks, ascending, then -1s) and every swapped
// pair of blocks has fp64 gate scores within that rounding: 1e-5 of sum_d |q_d m_d| (fp32 dot
// products and sums) plus, for f16/bf16, one ulp of a rounded block-mean element (the fp32
// block sum may land on the other side of a rounding boundary).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "problem.hpp"

namespace moba::verify {

struct SelectionReport {
  std::int64_t rows = 0;       // (token, head) rows that had past blocks to choose from
  std::int64_t differ = 0;     // rows whose selection differs from the reference
  std::int64_t near_ties = 0;  // of those, explained by near-equal scores
  std::string first_error;     // the first unexplained difference, readable
  bool ok() const { return differ == near_ties; }
};

// `got`, `want`: [T, hq, topk - 1] selections of `in`'s problem. With `allow_near_ties` false
// every difference is an error (e.g. exact ties, which any arithmetic must break alike).
SelectionReport compare_selection(const Problem& p, const Inputs& in,
                                  const std::vector<std::int32_t>& got,
                                  const std::vector<std::int32_t>& want,
                                  bool allow_near_ties = true);

// One flag per (token, head): 1 where the two selections differ.
std::vector<char> rows_differ(const std::vector<std::int32_t>& a,
                              const std::vector<std::int32_t>& b, int slots);

}  // namespace moba::verify
