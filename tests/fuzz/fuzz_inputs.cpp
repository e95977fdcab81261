// A bounded random driver (no libFuzzer needed) for the library's input boundary: every input
// must end in a result or a named moba::Error, never a crash, a hang or another exception.
// CI runs it in the normal build and in an AddressSanitizer + UBSan build (scripts/test_all.sh).
//
//   fuzz_inputs json  N SEED   MoaPlan::from_json on N random and mutated JSON texts; whatever
//                              loads must validate, expand per layer and round-trip to_json.
//   fuzz_inputs calls N SEED   moba_gate / attention_forward / attention_backward on N valid
//                              small problems broken in 0-3 random ways (ranks, shapes, strides,
//                              dtypes, devices, null pointers, cu_seqlens, parameters, options).
//
// Every view the library may legitimately read is backed by memory covering all the elements
// its shape and strides address (the library trusts pointers), so a crash is the library's.
// Exit status 1 and the case number on the first input that ends otherwise.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "moba/moba.hpp"

namespace {

using Rng = std::mt19937_64;

int uniform(Rng& rng, int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }
bool chance(Rng& rng, double p) { return std::uniform_real_distribution<double>(0, 1)(rng) < p; }
template <class T>
T pick(Rng& rng, const std::vector<T>& v) {
  return v[std::uniform_int_distribution<std::size_t>(0, v.size() - 1)(rng)];
}

// ---- MoaPlan JSON -----------------------------------------------------------------------

std::string random_number(Rng& rng) {
  static const std::vector<std::string> odd = {
      "0", "-0", "1e308", "-1e308", "1e999", "NaN", "Infinity", "-1", "3.5", "1e-320",
      "123456789012345678901234567890", "-2147483649", "2147483648", "0.0001", "64", "1.", ".5"};
  if (chance(rng, 0.3)) return pick(rng, odd);
  return std::to_string(std::uniform_real_distribution<double>(-10, 300)(rng));
}

std::string random_json(Rng& rng, int depth) {
  const int kind = depth > 4 ? uniform(rng, 0, 2) : uniform(rng, 0, 6);
  switch (kind) {
    case 0: return random_number(rng);
    case 1: return pick(rng, std::vector<std::string>{"null", "true", "false", "\"x\"", "\"\""});
    case 2: return std::to_string(uniform(rng, -5, 200));
    case 3:
    case 4: {
      std::string s = "[";
      const int n = uniform(rng, 0, 5);
      for (int i = 0; i < n; ++i) s += (i ? "," : "") + random_json(rng, depth + 1);
      return s + "]";
    }
    default: {
      static const std::vector<std::string> keys = {"alphas", "betas", "sink", "alpha", "beta",
                                                    "plan", "layers", "moa", "x", ""};
      std::string s = "{";
      const int n = uniform(rng, 0, 4);
      for (int i = 0; i < n; ++i)
        s += (i ? "," : "") + ("\"" + pick(rng, keys) + "\":") + random_json(rng, depth + 1);
      return s + "}";
    }
  }
}

std::string plausible_plan(Rng& rng) {
  const int layers = uniform(rng, 0, 3), heads = uniform(rng, 0, 4);
  auto lists = [&] {
    std::string s = "[";
    for (int l = 0; l < layers; ++l) {
      s += l ? ",[" : "[";
      const int h_here = chance(rng, 0.1) ? uniform(rng, 0, 5) : heads;
      for (int h = 0; h < h_here; ++h) s += (h ? "," : "") + random_number(rng);
      s += "]";
    }
    return s + "]";
  };
  std::string plan = "{\"alphas\":" + lists() + ",\"betas\":" + lists();
  if (chance(rng, 0.7)) plan += ",\"sink\":" + (chance(rng, 0.5) ? std::to_string(uniform(rng, -3, 100)) : random_json(rng, 3));
  plan += "}";
  if (chance(rng, 0.2)) plan = "{\"" + pick(rng, std::vector<std::string>{"plan", "moa", "x"}) + "\":" + plan + "}";
  return plan;
}

std::string mutate(Rng& rng, std::string s) {
  const int edits = uniform(rng, 1, 4);
  for (int e = 0; e < edits && !s.empty(); ++e) {
    const std::size_t at = std::uniform_int_distribution<std::size_t>(0, s.size() - 1)(rng);
    switch (uniform(rng, 0, 4)) {
      case 0: s[at] = static_cast<char>(uniform(rng, 0, 255)); break;
      case 1: s.erase(at, std::size_t(uniform(rng, 1, 8))); break;
      case 2: s.insert(at, pick(rng, std::vector<std::string>{"[", "]", "{", "}", ",", "\"", "-", "9e9", "\\u0000", ":"})); break;
      case 3: s.resize(at); break;
      default: s.insert(at, s.substr(at, std::size_t(uniform(rng, 1, 20)))); break;
    }
  }
  return s;
}

// Loads a text; what loads must behave like a valid plan. False: refused with a moba::Error.
bool json_case(const std::string& text) {
  moba::MoaPlan plan;
  try {
    plan = moba::MoaPlan::from_json(text);
  } catch (const moba::Error&) {
    return false;
  }
  plan.validate();  // from_json promises a valid plan: an Error here escapes as a failure
  for (int l = 0; l < plan.num_layers(); ++l) {
    const moba::MoaHeads h = plan.layer(l);
    if (h.alpha.size() != h.beta.size()) throw std::logic_error("layer with unequal alpha/beta");
  }
  const moba::MoaPlan again = moba::MoaPlan::from_json(plan.to_json());
  if (again.alphas != plan.alphas || again.betas != plan.betas || again.sink != plan.sink)
    throw std::logic_error("to_json/from_json round trip changed the plan");
  return true;
}

// ---- argument validation ----------------------------------------------------------------

// Memory behind one view: covers every element its shape and strides address.
struct Backed {
  moba::TensorView view;
  std::vector<std::uint64_t> storage;
};

constexpr std::int64_t kMaxElements = std::int64_t(1) << 20;

// The element offsets [lo, hi] a view addresses. `refused`: its rank or a size is not one any
// call accepts (negative, or beyond what the other operands can match), so the library must
// refuse it before reading. `too_far`: valid sizes whose strides reach further than the memory
// a test can give (the library would rightly read there; such cases are not run).
enum class Span { ok, refused, too_far };
Span span_of(const moba::TensorView& t, std::int64_t& lo, std::int64_t& hi) {
  lo = hi = 0;
  if (t.ndim < 0 || t.ndim > moba::TensorView::kMaxDims) return Span::refused;
  for (int d = 0; d < t.ndim; ++d)
    if (t.shape[d] < 0 || t.shape[d] > kMaxElements) return Span::refused;
  for (int d = 0; d < t.ndim; ++d)
    if (t.shape[d] == 0) return Span::ok;
  for (int d = 0; d < t.ndim; ++d) {
    const long double reach = static_cast<long double>(t.stride[d]) * (t.shape[d] - 1);
    if (std::fabs(reach) > kMaxElements) return Span::too_far;
    (reach < 0 ? lo : hi) += static_cast<std::int64_t>(reach);
  }
  return hi - lo < kMaxElements ? Span::ok : Span::too_far;
}

std::size_t element_size(moba::DType t) {
  switch (t) {
    case moba::DType::f16:
    case moba::DType::bf16: return 2;
    default: return 4;
  }
}

// Points the view at fresh memory covering its span (or at a small block when it has no valid
// span, which the library must refuse), filled with random bits of the dtype.
// Returns false for a view reaching too far to back (the case is then not run).
bool back(Backed& b, Rng& rng, bool keep_null) {
  std::int64_t lo = 0, hi = 0;
  const Span span = span_of(b.view, lo, hi);
  if (span == Span::too_far) return false;
  const bool ok = span == Span::ok;
  const std::size_t es = element_size(b.view.dtype);
  const std::size_t bytes = ok ? std::size_t(hi - lo + 1) * es : 64;
  b.storage.assign(bytes / 8 + 2, 0);
  auto* base = reinterpret_cast<unsigned char*>(b.storage.data());
  std::uint64_t state = rng();  // a cheap generator: filling dominates the time under ASan
  auto normal = [&state](Rng&) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<float>(static_cast<std::int64_t>(state >> 40) - (1 << 23)) / float(1 << 22);
  };
  for (std::size_t i = 0; i + es <= bytes; i += es) {
    if (b.view.dtype == moba::DType::f32) {
      const float x = chance(rng, 0.001) ? NAN : normal(rng);
      std::memcpy(base + i, &x, 4);
    } else if (es == 2) {
      const std::uint16_t x = b.view.dtype == moba::DType::bf16 ? moba::float_to_bf16(normal(rng))
                                                                : moba::float_to_f16(normal(rng));
      std::memcpy(base + i, &x, 2);
    } else {
      const std::int32_t x = uniform(rng, -2, 12);
      std::memcpy(base + i, &x, 4);
    }
  }
  if (!(keep_null && b.view.data == nullptr)) b.view.data = base + (ok ? std::size_t(-lo) * es : 0);
  return true;
}

struct Call {
  int which = 0;  // 0 gate, 1 forward, 2 backward
  moba::AttentionParams params;
  moba::RunOptions options;
  // q k v cu out lse sel dout dq dk dv
  Backed t[11];
};
enum { Q, K, V, CU, OUT, LSE, SEL, DOUT, DQ, DK, DV };
const char* kNames[] = {"q", "k", "v", "cu_seqlens", "out", "lse", "selection", "dout", "dq", "dk", "dv"};

// A valid small problem.
Call valid_call(Rng& rng) {
  Call c;
  c.which = uniform(rng, 0, 2);
  std::vector<int> lens(std::size_t(uniform(rng, 1, 3)));
  int T = 0;
  for (int& l : lens) T += (l = chance(rng, 0.2) ? uniform(rng, 0, 1) : uniform(rng, 2, 40));
  const int hkv = pick(rng, std::vector<int>{1, 2}), hq = hkv * pick(rng, std::vector<int>{1, 2, 4});
  const int d = pick(rng, std::vector<int>{64, 128, 16, 40});
  const moba::DType dt = pick(rng, std::vector<moba::DType>{moba::DType::f32, moba::DType::f16, moba::DType::bf16});
  switch (c.which == 0 ? 1 : uniform(rng, 0, 2)) {
    case 0: c.params = moba::AttentionParams::full(); break;
    case 1: c.params = moba::AttentionParams::moba_blocks(pick(rng, std::vector<int>{4, 16, 64}), uniform(rng, 1, 5)); break;
    default: {
      moba::MoaHeads h;
      for (int i = 0; i < hq; ++i) {
        h.alpha.push_back(float(uniform(rng, 0, 50)));
        h.beta.push_back(0.1f * float(uniform(rng, 0, 5)));
      }
      h.sink = uniform(rng, 0, 8);
      c.params = moba::AttentionParams::moa_heads(h);
    }
  }
  const int slots = c.params.mode == moba::Mode::moba ? std::max(c.params.topk - 1, 0) : 0;
  auto set = [&](int i, moba::DType t, std::initializer_list<std::int64_t> shape) {
    c.t[i].view = moba::TensorView::contiguous(reinterpret_cast<void*>(16), t, moba::Device::cpu(), shape);
  };
  set(Q, dt, {T, hq, d});
  set(K, dt, {T, hkv, d});
  set(V, dt, {T, hkv, d});
  set(CU, moba::DType::i32, {std::int64_t(lens.size()) + 1});
  set(OUT, dt, {T, hq, d});
  set(LSE, moba::DType::f32, {hq, T});
  set(SEL, moba::DType::i32, {T, hq, slots});
  if (c.params.mode != moba::Mode::moba) c.t[SEL].view = moba::TensorView{};
  set(DOUT, dt, {T, hq, d});
  set(DQ, dt, {T, hq, d});
  set(DK, dt, {T, hkv, d});
  set(DV, dt, {T, hkv, d});
  for (Backed& b : c.t)
    if (!b.view.empty_view()) back(b, rng, false);
  std::vector<std::int32_t> cu{0};
  for (int l : lens) cu.push_back(cu.back() + l);
  std::memcpy(c.t[CU].view.data, cu.data(), cu.size() * 4);
  c.options.backend = moba::Backend::cpu;
  c.options.num_threads = uniform(rng, 0, 2);
  return c;
}

const std::vector<std::int64_t> kOddSizes = {-1, 0, 1, 2, 3, 5, 63, 64, 65, 96, 128, 129, 4096,
                                              std::int64_t(1) << 31, std::int64_t(1) << 40,
                                              std::numeric_limits<std::int64_t>::max(),
                                              std::numeric_limits<std::int64_t>::min()};

// One random way to break a call; a view it changes is backed again at once. False when that
// view reaches beyond the memory a test can give (the case is then not run).
bool break_one(Call& c, Rng& rng) {
  const int i = uniform(rng, 0, 10);
  moba::TensorView& t = c.t[i].view;
  switch (uniform(rng, 0, 12)) {
    case 0: t.ndim = uniform(rng, -1, 5); break;
    case 1: if (t.ndim > 0 && t.ndim <= 4) t.shape[uniform(rng, 0, t.ndim - 1)] = pick(rng, kOddSizes); break;
    case 2: if (t.ndim > 0 && t.ndim <= 4) t.stride[uniform(rng, 0, t.ndim - 1)] = pick(rng, std::vector<std::int64_t>{-1, 0, 2, 3, -64, 1 << 12, std::int64_t(1) << 40}); break;
    case 3: t.dtype = static_cast<moba::DType>(uniform(rng, 0, 3)); break;
    case 4: t.device = chance(rng, 0.5) ? moba::Device::cuda(uniform(rng, 0, 2)) : moba::Device{moba::DeviceType::cpu, uniform(rng, -1, 2)}; break;
    case 5: t.data = nullptr; break;
    case 6: t = moba::TensorView{}; break;
    case 7: {  // cu_seqlens values
      moba::TensorView& cu = c.t[CU].view;
      if (cu.data && cu.ndim == 1 && cu.dtype == moba::DType::i32 && cu.shape[0] > 0 && cu.stride[0] == 1 && cu.shape[0] <= kMaxElements) {
        auto* p = static_cast<std::int32_t*>(cu.data);
        p[uniform(rng, 0, int(cu.shape[0]) - 1)] = static_cast<std::int32_t>(pick(rng, std::vector<std::int64_t>{-1, 0, 1, 7, 39, 41, 1000, 2147483647, -2147483647 - 1}));
      }
      return true;
    }
    case 8: c.params.block_size = int(pick(rng, std::vector<std::int64_t>{-1, 0, 1, 3, 64, 1 << 30, 2147483647})); return true;
    case 9: c.params.topk = int(pick(rng, std::vector<std::int64_t>{-5, 0, 1, 2, 100, 2147483647})); return true;
    case 10: c.params.softmax_scale = pick(rng, std::vector<float>{NAN, INFINITY, -1.f, 0.f, 1e30f, 1e-30f}); return true;
    case 11: {
      auto& m = c.params.moa;
      const int n = uniform(rng, 0, 9);
      m.alpha.assign(std::size_t(n), pick(rng, std::vector<float>{0.f, 5.f, -1.f, NAN, INFINITY, 1e30f}));
      m.beta.assign(std::size_t(chance(rng, 0.8) ? n : uniform(rng, 0, 9)), pick(rng, std::vector<float>{0.f, 0.5f, -0.5f, NAN, 1e30f}));
      m.sink = int(pick(rng, std::vector<std::int64_t>{-1, 0, 3, 2147483647}));
      if (chance(rng, 0.3)) c.params.mode = pick(rng, std::vector<moba::Mode>{moba::Mode::full, moba::Mode::moba, moba::Mode::moa});
      return true;
    }
    default:
      c.options.backend = pick(rng, std::vector<moba::Backend>{moba::Backend::automatic, moba::Backend::reference, moba::Backend::cpu, moba::Backend::cuda});
      c.options.num_threads = uniform(rng, -2, 3);
      c.options.deterministic = chance(rng, 0.5);
      return true;
  }
  return back(c.t[i], rng, true);
}

void run_call(Call& c) {
  auto v = [&](int i) { return c.t[i].view; };
  switch (c.which) {
    case 0: moba::moba_gate(v(Q), v(K), v(CU), c.params, v(SEL), c.options); break;
    case 1: moba::attention_forward(v(Q), v(K), v(V), v(CU), c.params, v(OUT), v(LSE), v(SEL), c.options); break;
    default:
      moba::attention_backward(v(Q), v(K), v(V), v(OUT), v(LSE), v(DOUT), v(CU), c.params, v(SEL),
                               v(DQ), v(DK), v(DV), c.options);
  }
}

std::string describe(const Call& c) {
  std::string s = std::string(c.which == 0 ? "moba_gate" : c.which == 1 ? "attention_forward" : "attention_backward") +
                  " mode " + std::to_string(int(c.params.mode)) + " block " + std::to_string(c.params.block_size) +
                  " topk " + std::to_string(c.params.topk);
  for (int i = 0; i < 11; ++i) {
    const moba::TensorView& t = c.t[i].view;
    s += std::string("\n  ") + kNames[i] + ": ndim " + std::to_string(t.ndim) + " dtype " + std::to_string(int(t.dtype)) +
         " device " + std::to_string(int(t.device.type)) + ":" + std::to_string(t.device.index) + (t.data ? "" : " null");
    if (t.ndim >= 0 && t.ndim <= 4)
      for (int d = 0; d < t.ndim; ++d) s += " " + std::to_string(t.shape[d]) + "/" + std::to_string(t.stride[d]);
  }
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4 || (std::string(argv[1]) != "json" && std::string(argv[1]) != "calls")) {
    std::fprintf(stderr, "usage: fuzz_inputs json|calls N SEED\n");
    return 2;
  }
  const std::string what = argv[1];
  const long n = std::atol(argv[2]);
  const unsigned long seed = std::strtoul(argv[3], nullptr, 10);
  long errors = 0, results = 0, skipped = 0;
  for (long i = 0; i < n; ++i) {
    Rng rng(seed * 1000003ul + static_cast<unsigned long>(i));
    std::string input;
    try {
      if (what == "json") {
        input = chance(rng, 0.5) ? plausible_plan(rng) : random_json(rng, 0);
        if (chance(rng, 0.5)) input = mutate(rng, input);
        (json_case(input) ? results : errors) += 1;
      } else {
        Call c = valid_call(rng);
        const int breaks = uniform(rng, 0, 3);
        bool runnable = true;
        for (int b = 0; b < breaks && runnable; ++b) runnable = break_one(c, rng);
        if (!runnable) {
          ++skipped;
          continue;
        }
        input = describe(c);
        try {
          run_call(c);
          ++results;
        } catch (const moba::Error&) {
          ++errors;
        }
      }
    } catch (const moba::Error& e) {  // json: a plan that loaded failed afterwards
      std::fprintf(stderr, "case %ld (seed %lu): a loaded plan failed afterwards: %s\ninput: %s\n", i, seed,
                   e.what(), input.c_str());
      return 1;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "case %ld (seed %lu): not a moba::Error: %s\ninput: %s\n", i, seed, e.what(), input.c_str());
      return 1;
    }
  }
  std::printf("fuzz_inputs %s: %ld inputs (seed %lu): %ld results, %ld moba::Error", what.c_str(), n,
              seed, results, errors);
  if (what == "calls") std::printf(", %ld not run (strides beyond the memory a test gives)", skipped);
  std::printf("\n");
  return 0;
}
