#include "run.hpp"

#include <cmath>

namespace moba::verify {

namespace {

TensorView cu_view(std::vector<int>& cu) {
  return TensorView::contiguous(cu.data(), DType::i32, Device::cpu(), {std::int64_t(cu.size())});
}

// A [T, hq, slots] selection view; a non-null pointer even when it has no elements.
TensorView selection_view(const Problem& p, std::vector<std::int32_t>& sel, void* fallback) {
  if (p.params.mode != Mode::moba) return {};
  return TensorView::contiguous(sel.empty() ? fallback : sel.data(), DType::i32, Device::cpu(),
                                {p.total(), p.hq, p.selection_slots()});
}

}  // namespace

ForwardResult run_forward(const Problem& p, Inputs& in, const RunOptions& options) {
  ForwardResult r;
  const std::int64_t T = p.total();
  r.out = HostTensor(p.dtype, {T, p.hq, p.d});
  r.out.fill(NAN);
  r.lse.assign(std::size_t(T) * p.hq, NAN);
  r.selection.assign(std::size_t(T) * p.hq * p.selection_slots(), -7);
  TensorView lse = TensorView::contiguous(r.lse.empty() ? static_cast<void*>(&r) : r.lse.data(),
                                          DType::f32, Device::cpu(), {p.hq, T});
  attention_forward(in.q.view(), in.k.view(), in.v.view(), cu_view(in.cu), p.params, r.out.view(),
                    lse, selection_view(p, r.selection, &r), options);
  return r;
}

BackwardResult run_backward(const Problem& p, Inputs& in, ForwardResult& fwd,
                            const RunOptions& options) {
  BackwardResult r;
  const std::int64_t T = p.total();
  r.dq = HostTensor(p.dtype, {T, p.hq, p.d});
  r.dk = HostTensor(p.dtype, {T, p.hkv, p.d});
  r.dv = HostTensor(p.dtype, {T, p.hkv, p.d});
  r.dq.fill(NAN);
  r.dk.fill(NAN);
  r.dv.fill(NAN);
  TensorView lse = TensorView::contiguous(fwd.lse.empty() ? static_cast<void*>(&r) : fwd.lse.data(),
                                          DType::f32, Device::cpu(), {p.hq, T});
  attention_backward(in.q.view(), in.k.view(), in.v.view(), fwd.out.view(), lse, in.dout.view(),
                     cu_view(in.cu), p.params, selection_view(p, fwd.selection, &r), r.dq.view(),
                     r.dk.view(), r.dv.view(), options);
  return r;
}

std::vector<std::int32_t> run_gate(const Problem& p, Inputs& in, const RunOptions& options) {
  std::vector<std::int32_t> sel(std::size_t(p.total()) * p.hq * p.selection_slots(), -7);
  int fallback = 0;
  moba_gate(in.q.view(), in.k.view(), cu_view(in.cu), p.params,
            TensorView::contiguous(sel.empty() ? static_cast<void*>(&fallback) : sel.data(),
                                   DType::i32, Device::cpu(), {p.total(), p.hq, p.selection_slots()}),
            options);
  return sel;
}

}  // namespace moba::verify
