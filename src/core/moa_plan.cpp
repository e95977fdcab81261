// MoA plans: validation and JSON I/O (nlohmann::json stays private to this file).
#include "moba/moa_plan.hpp"

#include <fstream>
#include <sstream>

#include <cmath>
#include <limits>

#include <nlohmann/json.hpp>

#include "core/validate.hpp"

namespace moba {

using detail::invalid;
using json = nlohmann::json;

void MoaPlan::validate(int want_layers, int want_heads) const {
  if (alphas.size() != betas.size())
    invalid("plan.betas", std::to_string(alphas.size()) + " layers (same as alphas)",
            std::to_string(betas.size()) + " layers");
  if (want_layers >= 0 && num_layers() != want_layers)
    invalid("plan", std::to_string(want_layers) + " layers", std::to_string(num_layers()) + " layers");
  if (sink < 0) invalid("plan.sink", "a sink size >= 0", std::to_string(sink));
  for (int l = 0; l < num_layers(); ++l) {
    const std::string at = "[" + std::to_string(l) + "]";
    if (alphas[l].size() != betas[l].size())
      invalid("plan.betas" + at, std::to_string(alphas[l].size()) + " heads (same as alphas" + at + ")",
              std::to_string(betas[l].size()) + " heads");
    if (want_heads >= 0 && static_cast<int>(alphas[l].size()) != want_heads)
      invalid("plan.alphas" + at, std::to_string(want_heads) + " heads", std::to_string(alphas[l].size()) + " heads");
    for (std::size_t h = 0; h < alphas[l].size(); ++h) {
      const std::string ah = at + "[" + std::to_string(h) + "]";
      if (!std::isfinite(alphas[l][h]) || alphas[l][h] < 0)
        invalid("plan.alphas" + ah, "a finite value >= 0", std::to_string(alphas[l][h]));
      if (!std::isfinite(betas[l][h]) || betas[l][h] < 0)
        invalid("plan.betas" + ah, "a finite value >= 0", std::to_string(betas[l][h]));
    }
  }
}

MoaHeads MoaPlan::layer(int l) const {
  if (l < 0 || l >= num_layers())
    invalid("layer", "an index in [0, " + std::to_string(num_layers()) + ")", std::to_string(l));
  return MoaHeads{alphas[l], betas[l], sink};
}

namespace {

// A JSON number as a float; values beyond float's range would convert to an undefined value.
float to_float(const json& x, const std::string& what) {
  const double v = x.get<double>();
  if (std::fabs(v) > double(std::numeric_limits<float>::max()))
    invalid(what, "numbers within float range", std::to_string(v));
  return static_cast<float>(v);
}

std::vector<float> floats(const json& j, const std::string& what) {
  if (j.is_number()) return {to_float(j, what)};
  if (!j.is_array()) invalid(what, "a list of numbers", j.type_name());
  std::vector<float> out;
  for (const auto& x : j) {
    if (x.is_null()) {  // JSON has no NaN/inf; writers emit null for them
      out.push_back(NAN);
      continue;
    }
    if (!x.is_number()) invalid(what, "numbers", x.type_name());
    out.push_back(to_float(x, what));
  }
  return out;
}

std::vector<std::vector<float>> layers(const json& j, const std::string& what) {
  if (!j.is_array()) invalid(what, "a list of per-layer lists", j.type_name());
  std::vector<std::vector<float>> out;
  for (std::size_t l = 0; l < j.size(); ++l) out.push_back(floats(j[l], what + "[" + std::to_string(l) + "]"));
  return out;
}

const json* find_key(const json& j, std::initializer_list<const char*> names) {
  for (const char* n : names)
    if (j.contains(n)) return &j.at(n);
  return nullptr;
}

}  // namespace

MoaPlan MoaPlan::from_json(const std::string& text) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {  // parse_error, or out_of_range for e.g. 1e999
    invalid("plan", "valid JSON", e.what());
  }
  MoaPlan plan;
  // The MoA project nests its plan one level down ({"plan": {...}}) or lists one object per
  // layer ([{"alphas": [...], "betas": [...]}, ...]); accept those as well as our own form.
  if (j.is_object() && !find_key(j, {"alphas", "alpha"}) && j.size() == 1 && j.begin()->is_object()) j = *j.begin();
  if (j.is_array()) {
    for (std::size_t l = 0; l < j.size(); ++l) {
      const std::string at = "plan[" + std::to_string(l) + "]";
      const json* a = j[l].is_object() ? find_key(j[l], {"alphas", "alpha"}) : nullptr;
      const json* b = j[l].is_object() ? find_key(j[l], {"betas", "beta"}) : nullptr;
      if (!a || !b) invalid(at, "an object with \"alphas\" and \"betas\"", j[l].dump().substr(0, 80));
      plan.alphas.push_back(floats(*a, at + ".alphas"));
      plan.betas.push_back(floats(*b, at + ".betas"));
    }
  } else if (j.is_object()) {
    const json* a = find_key(j, {"alphas", "alpha"});
    const json* b = find_key(j, {"betas", "beta"});
    if (!a || !b) invalid("plan", "keys \"alphas\" and \"betas\"", j.dump().substr(0, 80));
    plan.alphas = layers(*a, "plan.alphas");
    plan.betas = layers(*b, "plan.betas");
    if (const json* s = find_key(j, {"sink", "sink_size"})) {
      const bool integral = s->is_number_integer() ||
                            (s->is_number_float() && std::trunc(s->get<double>()) == s->get<double>());
      if (!integral || s->get<double>() < 0 || s->get<double>() > std::numeric_limits<int>::max())
        invalid("plan.sink", "an integer >= 0", s->dump().substr(0, 80));
      plan.sink = static_cast<int>(s->get<double>());
    }
  } else {
    invalid("plan", "a JSON object or list", j.type_name());
  }
  plan.validate();
  return plan;
}

MoaPlan MoaPlan::load(const std::string& path) {
  std::ifstream in(path);
  if (!in) invalid("path", "a readable MoA plan file", "'" + path + "'");
  std::stringstream ss;
  ss << in.rdbuf();
  return from_json(ss.str());
}

std::string MoaPlan::to_json() const {
  validate();
  json j;
  j["alphas"] = alphas;
  j["betas"] = betas;
  j["sink"] = sink;
  return j.dump(2);
}

void MoaPlan::save(const std::string& path) const {
  const std::string text = to_json();
  std::ofstream out(path);
  if (!out) invalid("path", "a writable file", "'" + path + "'");
  out << text << '\n';
}

}  // namespace moba
