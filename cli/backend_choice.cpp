#include "backend_choice.hpp"

#include "cli_error.hpp"
#include "device.hpp"
#include "moba/attention.hpp"

namespace moba::cli {

const std::vector<std::string>& backend_names() {
  static const std::vector<std::string> names{"cpu", "cuda", "reference"};
  return names;
}

std::string backend_name(Backend b) {
  switch (b) {
    case Backend::reference: return "reference";
    case Backend::cpu: return "cpu";
    case Backend::cuda: return "cuda";
    case Backend::automatic: return "automatic";
  }
  return "?";
}

namespace {
const BackendInfo* find(const std::vector<BackendInfo>& all, const std::string& name) {
  for (const auto& b : all)
    if (name == b.name) return &b;
  return nullptr;
}
}  // namespace

Backend choose_backend(const std::string& name) {
  const std::vector<BackendInfo> all = backends();
  std::string chosen = name;
  if (chosen.empty()) {
    const BackendInfo* cuda = find(all, "cuda");
    chosen = cuda && cuda->available && cuda_runtime_linked() ? "cuda" : "cpu";
  }
  const BackendInfo* info = find(all, chosen);
  if (!info) throw CliError("backend '" + chosen + "' is unknown to this library");
  if (!info->compiled) throw CliError("backend " + chosen + " is not compiled into this build: " + info->detail);
  if (!info->available) throw CliError("backend " + chosen + " is not usable here: " + info->detail);
  if (chosen == "cuda") return Backend::cuda;
  if (chosen == "reference") return Backend::reference;
  return Backend::cpu;
}

}  // namespace moba::cli
