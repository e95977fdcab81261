#include "session.hpp"

#include <cmath>

namespace moba::cli {

Session::Session(const Problem& p, const Inputs& in, Backend backend, const RunOptions& options)
    : problem_(p), backend_(backend), options_(options), on_cuda_(backend == Backend::cuda) {
  options_.backend = backend;
  const std::int64_t T = p.total();
  q_ = stage(in.q);
  k_ = stage(in.k);
  v_ = stage(in.v);
  dout_ = stage(in.dout);
  HostTensor cu_host(DType::i32, {std::int64_t(in.cu.size())});
  for (std::size_t i = 0; i < in.cu.size(); ++i) cu_host.set(std::int64_t(i), in.cu[i]);
  cu_ = stage(std::move(cu_host));

  // Outputs start poisoned, so an element a backend forgets to write shows up as an error.
  auto poisoned = [](DType t, std::vector<std::int64_t> shape, double value) {
    HostTensor x(t, std::move(shape));
    x.fill(value);
    return x;
  };
  out_ = stage(poisoned(p.dtype, {T, p.hq, p.d}, NAN));
  lse_ = stage(poisoned(DType::f32, {p.hq, T}, NAN));
  selection_ = stage(poisoned(DType::i32, {T, p.hq, p.selection_slots()}, -7));
  dq_ = stage(poisoned(p.dtype, {T, p.hq, p.d}, NAN));
  dk_ = stage(poisoned(p.dtype, {T, p.hkv, p.d}, NAN));
  dv_ = stage(poisoned(p.dtype, {T, p.hkv, p.d}, NAN));
}

Session::Slot Session::stage(HostTensor host) {
  Slot s;
  s.host = std::move(host);
  s.view = s.host.view();
  if (on_cuda_) {
    s.device = DeviceBuffer(s.host.bytes.size());
    s.device.upload(s.host.data(), s.host.bytes.size());
    s.view.data = s.device.get();
    s.view.device = Device::cuda(0);
  }
  return s;
}

void Session::fetch(Slot& s) {
  if (on_cuda_) s.device.download(s.host.data(), s.host.bytes.size());
}

void Session::store(Slot& s, const HostTensor& value) {
  s.host = value;
  if (on_cuda_)
    s.device.upload(s.host.data(), s.host.bytes.size());
  else
    s.view = s.host.view();  // the copy may have moved the storage
}

void Session::forward() {
  const TensorView selection = problem_.params.mode == Mode::moba ? selection_.view : TensorView{};
  attention_forward(q_.view, k_.view, v_.view, cu_.view, problem_.params, out_.view, lse_.view,
                    selection, options_);
}

void Session::backward() {
  const TensorView selection = problem_.params.mode == Mode::moba ? selection_.view : TensorView{};
  attention_backward(q_.view, k_.view, v_.view, out_.view, lse_.view, dout_.view, cu_.view,
                     problem_.params, selection, dq_.view, dk_.view, dv_.view, options_);
}

void Session::synchronize() {
  if (on_cuda_) cuda_synchronize();
}

void Session::set_forward_state(const ForwardResult& state) {
  store(out_, state.out.converted(problem_.dtype));
  HostTensor lse = lse_.host, selection = selection_.host;
  for (std::size_t i = 0; i < state.lse.size(); ++i) lse.set(std::int64_t(i), state.lse[i]);
  for (std::size_t i = 0; i < state.selection.size(); ++i)
    selection.set(std::int64_t(i), state.selection[i]);
  store(lse_, lse);
  store(selection_, selection);
}

ForwardResult Session::forward_result() {
  synchronize();
  fetch(out_);
  fetch(lse_);
  fetch(selection_);
  ForwardResult r;
  r.out = out_.host;
  for (std::int64_t i = 0; i < lse_.host.numel(); ++i) r.lse.push_back(float(lse_.host.get(i)));
  for (std::int64_t i = 0; i < selection_.host.numel(); ++i)
    r.selection.push_back(std::int32_t(selection_.host.get(i)));
  return r;
}

BackwardResult Session::backward_result() {
  synchronize();
  fetch(dq_);
  fetch(dk_);
  fetch(dv_);
  return {dq_.host, dk_.host, dv_.host};
}

}  // namespace moba::cli
