#include "test_support.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <sstream>

#include "core/dtype.hpp"

namespace moba::testing {

using detail::load_as_float;
using detail::store_from_float;

HostTensor::HostTensor(DType t, std::vector<std::int64_t> s) : dtype(t), shape(std::move(s)) {
  bytes.assign(std::size_t(numel()) * dtype_size(t), 0);
}

std::int64_t HostTensor::numel() const {
  std::int64_t n = 1;
  for (auto x : shape) n *= x;
  return n;
}

TensorView HostTensor::view() {
  TensorView t;
  t.data = bytes.empty() ? reinterpret_cast<void*>(this) : bytes.data();  // non-null for empty
  t.dtype = dtype;
  t.device = Device::cpu();
  t.ndim = static_cast<int>(shape.size());
  std::int64_t st = 1;
  for (int d = t.ndim - 1; d >= 0; --d) {
    t.shape[d] = shape[d];
    t.stride[d] = st;
    st *= shape[d];
  }
  return t;
}

double HostTensor::get(std::int64_t i) const {
  if (dtype == DType::i32) return reinterpret_cast<const std::int32_t*>(bytes.data())[i];
  return load_as_float(bytes.data(), i, dtype);
}

void HostTensor::set(std::int64_t i, double v) {
  if (dtype == DType::i32) {
    reinterpret_cast<std::int32_t*>(bytes.data())[i] = static_cast<std::int32_t>(v);
    return;
  }
  store_from_float(bytes.data(), i, dtype, static_cast<float>(v));
}

std::vector<double> HostTensor::as_double() const {
  std::vector<double> out(numel());
  for (std::int64_t i = 0; i < numel(); ++i) out[i] = get(i);
  return out;
}

void HostTensor::fill_normal(std::mt19937& rng, double stddev) {
  std::normal_distribution<double> n(0.0, stddev);
  for (std::int64_t i = 0; i < numel(); ++i) set(i, n(rng));
}

void HostTensor::fill(double v) {
  for (std::int64_t i = 0; i < numel(); ++i) set(i, v);
}

int Shape::total() const {
  int t = 0;
  for (int l : seqlens) t += l;
  return t;
}

std::vector<int> Shape::cu_seqlens() const {
  std::vector<int> cu{0};
  for (int l : seqlens) cu.push_back(cu.back() + l);
  return cu;
}

std::string Shape::str() const {
  std::ostringstream os;
  os << "seqlens=[";
  for (std::size_t i = 0; i < seqlens.size(); ++i) os << (i ? "," : "") << seqlens[i];
  os << "] hq=" << hq << " hkv=" << hkv << " d=" << d << " dtype=" << dtype_name(dtype);
  switch (params.mode) {
    case Mode::full: os << " full"; break;
    case Mode::moba: os << " moba block=" << params.block_size << " topk=" << params.topk; break;
    case Mode::moa:
      os << " moa sink=" << params.moa.sink << " alpha/beta=";
      for (std::size_t h = 0; h < params.moa.alpha.size(); ++h)
        os << (h ? "," : "") << params.moa.alpha[h] << "/" << params.moa.beta[h];
      break;
  }
  if (params.softmax_scale != 0.f) os << " scale=" << params.softmax_scale;
  return os.str();
}

Shape random_shape(std::mt19937& rng, const RandomShapeOptions& o) {
  auto pick = [&](auto const& v) { return v[std::uniform_int_distribution<std::size_t>(0, v.size() - 1)(rng)]; };
  auto uni = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  Shape s;
  const int batch = uni(1, o.max_batch);
  for (int b = 0; b < batch; ++b) {
    const int r = uni(0, 9);
    if (r == 0 && o.allow_empty_sequences) s.seqlens.push_back(0);
    else if (r == 1) s.seqlens.push_back(1);
    else s.seqlens.push_back(uni(2, o.max_len));
  }
  if (s.total() == 0) s.seqlens.push_back(uni(1, o.max_len));
  s.hkv = pick(std::vector<int>{1, 1, 2, 4});
  const int group = pick(std::vector<int>{1, 2, 4, 8});
  s.hq = s.hkv * group;
  s.d = pick(o.head_dims);
  s.dtype = pick(o.dtypes);
  const int maxlen = *std::max_element(s.seqlens.begin(), s.seqlens.end());
  switch (pick(o.modes)) {
    case Mode::full: s.params = AttentionParams::full(); break;
    case Mode::moba: {
      const int block = pick(o.block_sizes);
      const int nblocks = (maxlen + block - 1) / block;
      s.params = AttentionParams::moba_blocks(block, uni(1, nblocks + 2));
      break;
    }
    case Mode::moa: {
      MoaHeads heads;
      heads.sink = pick(std::vector<int>{0, 4, 16, 64});
      const bool per_kv = uni(0, 1) == 1;
      for (int h = 0; h < (per_kv ? s.hkv : s.hq); ++h) {
        heads.alpha.push_back(static_cast<float>(uni(0, 2 * maxlen)));  // some beyond N
        heads.beta.push_back(uni(0, 2) == 0 ? 0.f : std::uniform_real_distribution<float>(0.f, 0.8f)(rng));
      }
      s.params = AttentionParams::moa_heads(heads);
      break;
    }
  }
  if (uni(0, 4) == 0) s.params.softmax_scale = std::uniform_real_distribution<float>(0.02f, 0.3f)(rng);
  return s;
}

Inputs make_inputs(const Shape& s, std::uint32_t seed) {
  std::mt19937 rng(seed);
  Inputs in;
  const std::int64_t T = s.total();
  in.q = HostTensor(s.dtype, {T, s.hq, s.d});
  in.k = HostTensor(s.dtype, {T, s.hkv, s.d});
  in.v = HostTensor(s.dtype, {T, s.hkv, s.d});
  in.dout = HostTensor(s.dtype, {T, s.hq, s.d});
  in.q.fill_normal(rng);
  in.k.fill_normal(rng);
  in.v.fill_normal(rng);
  in.dout.fill_normal(rng);
  in.cu = s.cu_seqlens();
  return in;
}

Inputs convert(const Inputs& in, DType t) {
  auto conv = [&](const HostTensor& x) {
    HostTensor y(t, x.shape);
    for (std::int64_t i = 0; i < x.numel(); ++i) y.set(i, x.get(i));
    return y;
  };
  return Inputs{conv(in.q), conv(in.k), conv(in.v), conv(in.dout), in.cu};
}

namespace {
TensorView cu_view(std::vector<int>& cu) {
  return TensorView::contiguous(cu.data(), DType::i32, Device::cpu(), {std::int64_t(cu.size())});
}
}  // namespace

ForwardResult run_forward(const Shape& s, Inputs& in, Backend b, int threads) {
  ForwardResult r;
  const std::int64_t T = s.total();
  r.out = HostTensor(s.dtype, {T, s.hq, s.d});
  r.out.fill(NAN);  // poison: every element must be written
  r.lse.assign(std::size_t(T) * s.hq, NAN);
  const int past = s.params.mode == Mode::moba ? std::max(s.params.topk - 1, 0) : 0;
  r.selection.assign(std::size_t(T) * s.hq * past, -7);
  TensorView lse = TensorView::contiguous(r.lse.data(), DType::f32, Device::cpu(), {s.hq, T});
  TensorView sel;
  if (s.params.mode == Mode::moba)
    sel = TensorView::contiguous(r.selection.empty() ? static_cast<void*>(&r) : r.selection.data(),
                                 DType::i32, Device::cpu(), {T, s.hq, past});
  RunOptions o;
  o.backend = b;
  o.num_threads = threads;
  attention_forward(in.q.view(), in.k.view(), in.v.view(), cu_view(in.cu), s.params, r.out.view(),
                    lse, sel, o);
  return r;
}

BackwardResult run_backward(const Shape& s, Inputs& in, ForwardResult& fwd, Backend b, int threads) {
  BackwardResult r;
  const std::int64_t T = s.total();
  r.dq = HostTensor(s.dtype, {T, s.hq, s.d});
  r.dk = HostTensor(s.dtype, {T, s.hkv, s.d});
  r.dv = HostTensor(s.dtype, {T, s.hkv, s.d});
  r.dq.fill(NAN);
  r.dk.fill(NAN);
  r.dv.fill(NAN);
  TensorView lse = TensorView::contiguous(fwd.lse.data(), DType::f32, Device::cpu(), {s.hq, T});
  TensorView sel;
  const int past = s.params.mode == Mode::moba ? std::max(s.params.topk - 1, 0) : 0;
  if (s.params.mode == Mode::moba)
    sel = TensorView::contiguous(fwd.selection.empty() ? static_cast<void*>(&fwd) : fwd.selection.data(),
                                 DType::i32, Device::cpu(), {T, s.hq, past});
  RunOptions o;
  o.backend = b;
  o.num_threads = threads;
  attention_backward(in.q.view(), in.k.view(), in.v.view(), fwd.out.view(), lse, in.dout.view(),
                     cu_view(in.cu), s.params, sel, r.dq.view(), r.dk.view(), r.dv.view(), o);
  return r;
}

double rel_l2(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double d = a[i] - b[i];
    num += std::isnan(d) ? INFINITY : d * d;
    den += b[i] * b[i];
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-30);
}

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double d = std::fabs(a[i] - b[i]);
    if (std::isnan(d)) return INFINITY;
    m = std::max(m, d);
  }
  return m;
}

}  // namespace moba::testing
