#include "problem.hpp"

#include <algorithm>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace moba::cli {

int Problem::total() const {
  int t = 0;
  for (int l : seqlens) t += l;
  return t;
}

int Problem::max_seqlen() const {
  return seqlens.empty() ? 0 : *std::max_element(seqlens.begin(), seqlens.end());
}

std::vector<std::int32_t> Problem::cu_seqlens() const {
  std::vector<std::int32_t> cu{0};
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
  return fmt::format("b={} T={} hq={}/{} d={} {}", seqlens.size(), total(), hq, hkv, head_dim,
                     dtype_name(dtype));
}

std::string Problem::mode_str() const {
  switch (params.mode) {
    case Mode::full: return "full";
    case Mode::moba: return fmt::format("moba B={} k={}", params.block_size, params.topk);
    case Mode::moa: return fmt::format("moa sink={}", params.moa.sink);
  }
  return "?";
}

std::string Problem::detail_str() const {
  std::string s = fmt::format("seqlens=[{}] hq={} hkv={} d={} dtype={} mode={}",
                              fmt::join(seqlens, ","), hq, hkv, head_dim, dtype_name(dtype),
                              mode_str());
  if (params.mode == Mode::moa) {
    s += " alpha/beta=";
    for (std::size_t h = 0; h < params.moa.alpha.size(); ++h)
      s += fmt::format("{}{}/{}", h ? "," : "", params.moa.alpha[h], params.moa.beta[h]);
  }
  if (params.softmax_scale != 0.f) s += fmt::format(" scale={}", params.softmax_scale);
  return s;
}

}  // namespace moba::cli
