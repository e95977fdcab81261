// TEMPORARY while the fast CPU backend is written: routes to the reference so the tree builds.
#include "core/backends.hpp"

namespace moba::detail {
void cpu_gate(const Problem& p, const Operand& q, const Operand& k, std::int32_t* s, const RunOptions&) { reference_gate(p, q, k, s); }
void cpu_forward(const Problem& p, const Forward& f, const RunOptions&) { reference_forward(p, f); }
void cpu_backward(const Problem& p, const Backward& b, const RunOptions&) { reference_backward(p, b); }
}  // namespace moba::detail
