// cu_seqlens may live on the GPU: the forward reads it (plans from it on the device) on the
// caller's stream, so a cu_seqlens written on a non-blocking stream just before the call is read
// correctly, and the result equals the one with cu_seqlens on the host.
#include "cuda_test_util.hpp"

namespace moba::testing {
namespace {

TEST(CudaCuSeqlens, DeviceCuSeqlensOnANonBlockingStream) {
  MOBA_SKIP_WITHOUT_GPU();
  Shape s;
  s.seqlens = {300, 0, 129, 640};
  s.hq = 4;
  s.hkv = 2;
  s.d = 128;
  s.dtype = DType::bf16;
  s.params = AttentionParams::moba_blocks(64, 3);
  Inputs in = make_inputs(s, 11);
  const std::int64_t T = s.total();
  const std::size_t qb = in.q.bytes.size(), kb = in.k.bytes.size();
  DevBuf q(qb), k(kb), v(kb), out_host_cu(qb), out_dev_cu(qb), lse(T * s.hq * 4), sel(T * s.hq * 2 * 4),
      cu(in.cu.size() * 4);
  q.up(in.q.bytes.data());
  k.up(in.k.bytes.data());
  v.up(in.v.bytes.data());
  CUDA_OK(cudaDeviceSynchronize());  // the uploads ran on the legacy stream, which the
                                     // non-blocking stream below does not wait for

  cudaStream_t stream;
  CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  RunOptions o;
  o.cuda_stream = stream;
  auto run = [&](const TensorView& cu_view, DevBuf& out) {
    attention_forward(dev_view(q.p, s.dtype, {T, s.hq, s.d}), dev_view(k.p, s.dtype, {T, s.hkv, s.d}),
                      dev_view(v.p, s.dtype, {T, s.hkv, s.d}), cu_view, s.params,
                      dev_view(out.p, s.dtype, {T, s.hq, s.d}), dev_view(lse.p, DType::f32, {s.hq, T}),
                      dev_view(sel.p, DType::i32, {T, s.hq, 2}), o);
  };
  run(TensorView::contiguous(in.cu.data(), DType::i32, Device::cpu(), {std::int64_t(in.cu.size())}), out_host_cu);

  // Write cu_seqlens on the stream right before the call: a copy that ignored the stream
  // could read the buffer before this lands.
  CUDA_OK(cudaMemsetAsync(cu.p, 0xff, cu.bytes, stream));
  CUDA_OK(cudaMemcpyAsync(cu.p, in.cu.data(), cu.bytes, cudaMemcpyHostToDevice, stream));
  run(dev_view(cu.p, DType::i32, {std::int64_t(in.cu.size())}), out_dev_cu);
  CUDA_OK(cudaStreamSynchronize(stream));

  std::vector<std::uint8_t> a(qb), b(qb);
  out_host_cu.down(a.data());
  out_dev_cu.down(b.data());
  EXPECT_EQ(a, b);
  CUDA_OK(cudaStreamDestroy(stream));
}

}  // namespace
}  // namespace moba::testing
