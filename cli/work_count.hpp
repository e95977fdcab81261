// How much attention a problem really computes: the number of visible (query, key) pairs over
// all query heads and tokens, by the key sets of docs/semantics.md. It depends only on the
// shape and parameters (a MoBA token always sees min(topk - 1, past blocks) full past blocks,
// whichever they are), so it is exact without running the gate.
#pragma once

#include "verify_types.hpp"

namespace moba::cli {

double visible_pairs(const Problem& p);

// Floating-point work: 4 * D per visible pair forward (QK^T and PV, a multiply-add each);
// the backward counts 2.5 times that (five matmuls against two).
double forward_flops(const Problem& p);
double backward_flops(const Problem& p);

}  // namespace moba::cli
