#include "session.hpp"

#include <cmath>
#include <random>

namespace moba::cli {

Inputs random_inputs(const Problem& p, unsigned seed, double q_stddev) {
  std::mt19937 rng(seed);
  const std::int64_t T = p.total();
  Inputs in{HostTensor(p.dtype, {T, p.hq, p.head_dim}), HostTensor(p.dtype, {T, p.hkv, p.head_dim}),
            HostTensor(p.dtype, {T, p.hkv, p.head_dim}), HostTensor(p.dtype, {T, p.hq, p.head_dim})};
  in.q.fill_normal(rng, q_stddev);
  in.k.fill_normal(rng, 1.0);
  in.v.fill_normal(rng, 1.0);
  in.dout.fill_normal(rng, 1.0);
  return in;
}

Inputs convert_inputs(const Inputs& in, DType dtype) {
  return {in.q.converted(dtype), in.k.converted(dtype), in.v.converted(dtype),
          in.dout.converted(dtype)};
}

Session::Session(const Problem& p, const Inputs& in, Backend backend, const RunOptions& options)
    : problem_(p), backend_(backend), options_(options), on_cuda_(backend == Backend::cuda) {
  options_.backend = backend;
  const std::int64_t T = p.total();
  q_ = stage(in.q);
  k_ = stage(in.k);
  v_ = stage(in.v);
  dout_ = stage(in.dout);
  const std::vector<std::int32_t> cu = p.cu_seqlens();
  HostTensor cu_host(DType::i32, {std::int64_t(cu.size())});
  for (std::size_t i = 0; i < cu.size(); ++i) cu_host.set(std::int64_t(i), cu[i]);
  cu_ = stage(std::move(cu_host));

  // Outputs start poisoned, so an element a backend forgets to write shows up as an error.
  auto poisoned = [](DType t, std::vector<std::int64_t> shape, double value) {
    HostTensor x(t, std::move(shape));
    x.fill(value);
    return x;
  };
  out_ = stage(poisoned(p.dtype, {T, p.hq, p.head_dim}, NAN));
  lse_ = stage(poisoned(DType::f32, {p.hq, T}, NAN));
  selection_ = stage(poisoned(DType::i32, {T, p.hq, p.selection_slots()}, -7));
  dq_ = stage(poisoned(p.dtype, {T, p.hq, p.head_dim}, NAN));
  dk_ = stage(poisoned(p.dtype, {T, p.hkv, p.head_dim}, NAN));
  dv_ = stage(poisoned(p.dtype, {T, p.hkv, p.head_dim}, NAN));
}

Session::Slot Session::stage(HostTensor host) {
  Slot s;
  s.host = std::move(host);
  s.view = s.host.view();
  if (on_cuda_) {
    s.device = DeviceBuffer(s.host.bytes());
    s.device.upload(s.host.data(), s.host.bytes());
    s.view.data = s.device.get();
    s.view.device = Device::cuda(0);
  }
  return s;
}

void Session::fetch(Slot& s) {
  if (on_cuda_) s.device.download(s.host.data(), s.host.bytes());
}

void Session::store(Slot& s, const HostTensor& value) {
  s.host = value;
  if (on_cuda_)
    s.device.upload(s.host.data(), s.host.bytes());
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
  store(lse_, state.lse);
  store(selection_, state.selection);
}

ForwardResult Session::forward_result() {
  synchronize();
  fetch(out_);
  fetch(lse_);
  fetch(selection_);
  return {out_.host, lse_.host, selection_.host};
}

BackwardResult Session::backward_result() {
  synchronize();
  fetch(dq_);
  fetch(dk_);
  fetch(dv_);
  return {dq_.host, dk_.host, dv_.host};
}

}  // namespace moba::cli
