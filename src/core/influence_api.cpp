// moba::attention_influence: validate, build the distance -> bin table, dispatch.
#include <string>

#include "core/influence.hpp"
#include "core/validate.hpp"
#include "moba/influence.hpp"

namespace moba {

using namespace detail;

namespace {

std::vector<int> bin_table(const InfluenceBins& bins, int max_seqlen) {
  const auto& e = bins.distance_edges;
  if (e.empty() || e[0] != 0)
    invalid("bins.distance_edges", "a list starting at 0",
            e.empty() ? std::string("an empty list") : "first edge " + std::to_string(e[0]));
  for (std::size_t i = 1; i < e.size(); ++i)
    if (e[i] <= e[i - 1])
      invalid("bins.distance_edges", "strictly ascending edges",
              "edge[" + std::to_string(i) + "] = " + std::to_string(e[i]) + " <= edge[" +
                  std::to_string(i - 1) + "] = " + std::to_string(e[i - 1]));
  std::vector<int> table(std::max(max_seqlen, 1));
  int bin = 0;
  for (int d = 0; d < static_cast<int>(table.size()); ++d) {
    while (bin + 1 < static_cast<int>(e.size()) && d >= e[bin + 1]) ++bin;
    table[d] = bin;
  }
  return table;
}

}  // namespace

std::vector<double> attention_influence(const TensorView& q, const TensorView& k,
                                        const TensorView& v, const TensorView& out,
                                        const TensorView& lse, const TensorView& dout,
                                        const TensorView& cu_seqlens, float softmax_scale,
                                        const InfluenceBins& bins, const RunOptions& options) {
  AttentionParams params = AttentionParams::full();
  params.softmax_scale = softmax_scale;
  const Problem p = make_problem(q, k, cu_seqlens, params, options.cuda_stream);
  if (p.device.type == DeviceType::cuda)
    fail(ErrorKind::unsupported,
         "moba: attention_influence: CUDA tensors are not supported by the C++ library (the "
         "Python package computes influence on GPUs in query chunks)");
  const Backend b = resolve_backend(p, options);
  if (bins.sink < 0) invalid("bins.sink", "a value >= 0", std::to_string(bins.sink));
  Influence f;
  f.q = Operand{q.data, q.stride[0], q.stride[1]};
  f.k = Operand{k.data, k.stride[0], k.stride[1]};
  f.v = check_operand("v", v, k, "k");
  f.out = check_operand("out", out, q, "q");
  f.dout = check_operand("dout", dout, q, "q");
  f.lse = check_lse("lse", lse, p);
  f.bin_of_distance = bin_table(bins, p.max_seqlen);
  f.bins = bins.num_bins();
  f.sink = bins.sink;
  std::vector<double> sums(std::size_t(kInfluenceMeasures) * p.hq * 2 * f.bins, 0.0);
  f.sums = sums.data();
  if (b == Backend::reference) reference_influence(p, f);
  else cpu_influence(p, f, options);
  return sums;
}

}  // namespace moba
