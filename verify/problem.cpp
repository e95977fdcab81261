#include "problem.hpp"

#include <algorithm>
#include <sstream>

namespace moba::verify {

int Problem::total() const {
  int t = 0;
  for (int l : seqlens) t += l;
  return t;
}

int Problem::max_seqlen() const {
  return seqlens.empty() ? 0 : *std::max_element(seqlens.begin(), seqlens.end());
}

std::vector<int> Problem::cu_seqlens() const {
  std::vector<int> cu{0};
  for (int l : seqlens) cu.push_back(cu.back() + l);
  return cu;
}

int Problem::selection_slots() const {
  return params.mode == Mode::moba ? std::max(params.topk - 1, 0) : 0;
}

std::string mode_name(Mode m) {
  switch (m) {
    case Mode::full: return "full";
    case Mode::moba: return "moba";
    case Mode::moa: return "moa";
  }
  return "?";
}

std::string Problem::shape_str() const {
  std::ostringstream os;
  os << "b=" << seqlens.size() << " T=" << total() << " hq=" << hq << "/" << hkv << " d=" << d
     << " " << dtype_name(dtype);
  return os.str();
}

std::string Problem::mode_str() const {
  std::ostringstream os;
  switch (params.mode) {
    case Mode::full: os << "full"; break;
    case Mode::moba: os << "moba B=" << params.block_size << " k=" << params.topk; break;
    case Mode::moa: os << "moa sink=" << params.moa.sink; break;
  }
  return os.str();
}

std::string Problem::str() const {
  std::ostringstream os;
  os << "seqlens=[";
  for (std::size_t i = 0; i < seqlens.size(); ++i) os << (i ? "," : "") << seqlens[i];
  os << "] hq=" << hq << " hkv=" << hkv << " d=" << d << " dtype=" << dtype_name(dtype)
     << " mode=" << mode_str();
  if (params.mode == Mode::moa) {
    os << " alpha/beta=";
    for (std::size_t h = 0; h < params.moa.alpha.size(); ++h)
      os << (h ? "," : "") << params.moa.alpha[h] << "/" << params.moa.beta[h];
  }
  if (params.softmax_scale != 0.f) os << " scale=" << params.softmax_scale;
  return os.str();
}

namespace {

double full_causal_work(const Problem& p) {
  double pairs = 0;
  for (int len : p.seqlens) pairs += double(len) * (len + 1) / 2;
  return pairs * p.hq * p.d;
}

// Fewer heads first, then shorter sequences, until the work bound holds.
void bound_work(Problem& p, double max_work) {
  while (max_work > 0 && full_causal_work(p) > max_work) {
    if (p.hq > p.hkv) {
      p.hq /= 2;
    } else if (p.hkv > 1) {
      p.hkv /= 2;
      p.hq /= 2;
    } else {
      for (int& len : p.seqlens)
        if (len > 1) len = std::max(2, static_cast<int>(len * 0.7));
    }
  }
}

}  // namespace

Problem random_problem(std::mt19937& rng, const RandomProblemOptions& o) {
  auto uni = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  auto pick = [&](const auto& v) {
    return v[std::uniform_int_distribution<std::size_t>(0, v.size() - 1)(rng)];
  };
  Problem s;
  const int batch = uni(1, o.max_batch);
  for (int b = 0; b < batch; ++b) {
    const int r = uni(0, 9);
    if (r == 0 && o.allow_empty_sequences) s.seqlens.push_back(0);
    else if (r == 1) s.seqlens.push_back(1);
    else s.seqlens.push_back(uni(2, std::max(2, o.max_len)));
  }
  if (s.total() == 0) s.seqlens.push_back(uni(1, o.max_len));
  s.hkv = pick(std::vector<int>{1, 1, 2, 4});
  s.hq = s.hkv * pick(std::vector<int>{1, 2, 4, 8});
  s.d = pick(o.head_dims);
  s.dtype = pick(o.dtypes);
  bound_work(s, o.max_work);
  const int maxlen = s.max_seqlen();
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
      const bool per_kv = uni(0, 1) == 1;  // one pair per KV head or per query head
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

RandomCase random_case(int index, unsigned seed, const RandomProblemOptions& o) {
  std::mt19937 rng(seed * 1000003u + static_cast<unsigned>(index) * 7919u + 17u);
  RandomProblemOptions one = o;
  one.modes = {o.modes[std::size_t(index) % o.modes.size()]};
  one.dtypes = {o.dtypes[std::size_t(index) / o.modes.size() % o.dtypes.size()]};
  RandomCase c;
  c.problem = random_problem(rng, one);
  c.q_stddev = std::uniform_int_distribution<int>(0, 3)(rng) == 0 ? 4.0 : 1.0;
  c.input_seed = static_cast<unsigned>(rng());
  return c;
}

Inputs make_inputs(const Problem& p, std::uint32_t seed, double q_stddev) {
  std::mt19937 rng(seed);
  const std::int64_t T = p.total();
  Inputs in;
  in.q = HostTensor(p.dtype, {T, p.hq, p.d});
  in.k = HostTensor(p.dtype, {T, p.hkv, p.d});
  in.v = HostTensor(p.dtype, {T, p.hkv, p.d});
  in.dout = HostTensor(p.dtype, {T, p.hq, p.d});
  in.q.fill_normal(rng, q_stddev);
  in.k.fill_normal(rng);
  in.v.fill_normal(rng);
  in.dout.fill_normal(rng);
  in.cu = p.cu_seqlens();
  return in;
}

Inputs convert(const Inputs& in, DType t) {
  return {in.q.converted(t), in.k.converted(t), in.v.converted(t), in.dout.converted(t), in.cu};
}

}  // namespace moba::verify
