// A MoA plan: per layer, per head window parameters found by profiling (span = alpha + beta*N).
#pragma once

#include <string>
#include <vector>

#include "moba/params.hpp"

namespace moba {

struct MoaPlan {
  std::vector<std::vector<float>> alphas;  // [layer][head]
  std::vector<std::vector<float>> betas;   // [layer][head]
  int sink = 64;

  int num_layers() const { return static_cast<int>(alphas.size()); }
  // Throws moba::Error if layers/heads disagree, a value is NaN/inf, or alpha/beta < 0.
  // num_layers / num_heads < 0 skip that check.
  void validate(int num_layers = -1, int num_heads = -1) const;
  MoaHeads layer(int l) const;  // the heads of one layer, ready for AttentionParams

  // JSON: {"alphas": [[...], ...], "betas": [[...], ...], "sink": 64}. Also reads the MoA
  // project's files, which nest the lists under a top-level key or give one dict per layer.
  static MoaPlan from_json(const std::string& text);
  static MoaPlan load(const std::string& path);
  std::string to_json() const;
  void save(const std::string& path) const;
};

}  // namespace moba
