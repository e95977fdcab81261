// One MoBA forward on the CPU through the installed library; prints a checksum.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include <moba/moba.hpp>

int main() {
  // Two sequences (300 and 200 tokens) packed along the token axis, flash-attn varlen style.
  std::vector<std::int32_t> cu_seqlens{0, 300, 500};
  const std::int64_t total = 500, hq = 4, hkv = 2, d = 64;  // GQA: 2 query heads per KV head
  std::vector<float> q(total * hq * d), k(total * hkv * d), v(total * hkv * d);
  for (std::size_t i = 0; i < q.size(); ++i) q[i] = std::sin(0.37f * float(i));
  for (std::size_t i = 0; i < k.size(); ++i) k[i] = std::cos(0.11f * float(i));
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = std::sin(0.05f * float(i) + 1.f);

  // MoBA: blocks of 64 keys, each query keeps its own block plus the 2 best past blocks.
  const auto params = moba::AttentionParams::moba_blocks(/*block_size=*/64, /*topk=*/3);
  std::vector<float> out(q.size()), lse(hq * total);
  std::vector<std::int32_t> selection(total * hq * (params.topk - 1));

  using moba::DType;
  using moba::TensorView;
  const moba::Device cpu = moba::Device::cpu();
  moba::RunOptions options;
  options.backend = moba::Backend::cpu;
  try {
    moba::attention_forward(
        TensorView::contiguous(q.data(), DType::f32, cpu, {total, hq, d}),
        TensorView::contiguous(k.data(), DType::f32, cpu, {total, hkv, d}),
        TensorView::contiguous(v.data(), DType::f32, cpu, {total, hkv, d}),
        TensorView::contiguous(cu_seqlens.data(), DType::i32, cpu, {3}), params,
        TensorView::contiguous(out.data(), DType::f32, cpu, {total, hq, d}),
        TensorView::contiguous(lse.data(), DType::f32, cpu, {hq, total}),
        TensorView::contiguous(selection.data(), DType::i32, cpu, {total, hq, params.topk - 1}),
        options);
  } catch (const moba::Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }

  double checksum = 0;
  for (float x : out) checksum += x;
  for (float x : lse) checksum += 1e-3 * x;
  long chosen = 0;
  for (std::int32_t s : selection) chosen += s >= 0;
  std::printf("%s\nmoba forward: out checksum %.6f, %ld past blocks chosen\n",
              moba::build_info().c_str(), checksum, chosen);
  return 0;
}
