// CPU MoBA gate (docs/semantics.md, "Gate"). Block means exactly as the reference (fp64 sum in
// key order -> fp32 divide -> round to dtype); scores <q_t, mean_j> for all blocks of a row
// tile at once with the same 6x16 panel kernel as the attention (the means packed as panels of
// 16 blocks), accumulated in fp32; then a per-row top-(k-1) with ties going to the earlier
// block. fp32 scores may order two blocks differently from the fp64 reference only when their
// scores agree to ~1e-6 relative (the tests check exactly that).
#include <algorithm>
#include <vector>

#include "core/backends.hpp"
#include "cpu/microkernels.hpp"
#include "cpu/tiles.hpp"
#include "cpu/top_blocks.hpp"
#include "cpu/work.hpp"

namespace moba::detail {

namespace cpu {
namespace {


template <int D>
void gate(const Problem& p, const Operand& q, const Operand& k, std::int32_t* selection, int threads) {
  const int B = p.block_size, K = p.past_k();
  // Means of full blocks, per sequence packed as panels of 16 blocks ([panel][D][16]).
  std::vector<std::int64_t> seq_panel(p.batch + 1, 0);
  std::vector<std::pair<int, int>> blocks;  // (sequence, block)
  for (int b = 0; b < p.batch; ++b) {
    const int nfull = (p.cu_seqlens[b + 1] - p.cu_seqlens[b]) / B;
    seq_panel[b + 1] = seq_panel[b] + (nfull + kPanel - 1) / kPanel;
    for (int j = 0; j < nfull; ++j) blocks.push_back({b, j});
  }
  // Means of every KV head first, then all row tiles of all heads: one barrier between.
  const std::size_t head_means = std::size_t(seq_panel.back()) * D * kPanel;
  aligned_vector<float> means(head_means * p.hkv, 0.f);
  std::vector<Unit> units;
  for (int b = 0; b < p.batch; ++b) {
    const int len = p.cu_seqlens[b + 1] - p.cu_seqlens[b];
    for (int h = 0; h < p.hq; ++h)
      for (int r0 = 0; r0 < len; r0 += kRowTile) units.push_back({b, h, r0, std::min(r0 + kRowTile, len)});
  }
  const std::int64_t nmeans = std::int64_t(blocks.size()) * p.hkv;
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> row(D);
    std::vector<double> sum(D);
#pragma omp for schedule(static)
    for (std::int64_t bi = 0; bi < nmeans; ++bi) {
      const int g = int(bi / std::int64_t(blocks.size()));
      const auto [b, j] = blocks[bi % blocks.size()];
      std::fill(sum.begin(), sum.end(), 0.0);
      for (int t = j * B; t < (j + 1) * B; ++t) {
        load_row(p.dtype, k.data, elem(k, p.cu_seqlens[b] + t, g), row.data(), D, 1.f);
        for (int d = 0; d < D; ++d) sum[d] += row[d];
      }
      float* panel = means.data() + g * head_means + (seq_panel[b] + j / kPanel) * D * kPanel;
      for (int d = 0; d < D; ++d)
        panel[d * kPanel + j % kPanel] = round_to(p.dtype, static_cast<float>(sum[d]) / static_cast<float>(B));
    }
    std::vector<float> qrows(std::size_t(kRowTile) * D), scores, best_score(K);
    std::vector<int> best(K);
    const float* qp[kRowTile];
    for (int r = 0; r < kRowTile; ++r) qp[r] = qrows.data() + std::size_t(r) * D;
#pragma omp for schedule(dynamic, 1)
    for (std::size_t ui = 0; ui < units.size(); ++ui) {
      const Unit& u = units[ui];
      const int begin = p.cu_seqlens[u.seq], rows = u.r1 - u.r0, g = u.h / p.group();
      const int max_own = (u.r1 - 1) / B;  // blocks 0 .. max_own-1 are someone's past
      const int ncols = (max_own + kPanel - 1) / kPanel * kPanel;
      if (ncols > 0) {
        for (int r = 0; r < rows; ++r) load_row(p.dtype, q.data, elem(q, begin + u.r0 + r, u.h), qrows.data() + std::size_t(r) * D, D, 1.f);
        scores.resize(std::size_t(rows) * ncols);
        for (int c = 0; c < ncols; c += kPanel)
          panel_dot_rows<D>(rows, qp, means.data() + g * head_means + (seq_panel[u.seq] + c / kPanel) * D * kPanel,
                            scores.data() + c, ncols);
      }
      for (int r = 0; r < rows; ++r) {
        const int t = u.r0 + r, own = t / B;
        std::int32_t* out = selection + (std::int64_t(begin + t) * p.hq + u.h) * K;
        const int kept = top_blocks(scores.data() + std::size_t(r) * ncols, own, K, best.data(), best_score.data());
        for (int s = 0; s < K; ++s) out[s] = s < kept ? best[s] : -1;
      }
    }
  }
}

}  // namespace
}  // namespace cpu

void cpu_gate(const Problem& p, const Operand& q, const Operand& k, std::int32_t* selection,
              const RunOptions& o) {
  if (p.past_k() == 0 || p.total == 0) return;
  const int threads = cpu::thread_count(p, o);
  if (p.head_dim == 64) cpu::gate<64>(p, q, k, selection, threads);
  else cpu::gate<128>(p, q, k, selection, threads);
}

}  // namespace moba::detail
