// What the influence backends receive (include/moba/influence.hpp): the validated operands, a
// distance -> bin table and the output sums, [measure][query head][sink flag][bin] in fp64.
#pragma once

#include <cstddef>
#include <vector>

#include "core/problem.hpp"
#include "moba/influence.hpp"
#include "moba/params.hpp"

namespace moba::detail {

struct Influence {
  Operand q, k, v, out, dout;
  const float* lse = nullptr;          // [hq, total]
  std::vector<int> bin_of_distance;    // max_seqlen entries
  int bins = 1;
  int sink = 0;
  double* sums = nullptr;              // kInfluenceMeasures * hq * 2 * bins, zeroed

  std::size_t at(int hq, int measure, int h, int sink_flag, int bin) const {
    return ((std::size_t(measure) * hq + h) * 2 + sink_flag) * bins + bin;
  }
};

void reference_influence(const Problem& p, const Influence& f);
void cpu_influence(const Problem& p, const Influence& f, const RunOptions& o);

}  // namespace moba::detail
