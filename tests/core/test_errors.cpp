// Every bad argument gets a moba::Error that names it and says what was expected.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>

#include "test_support.hpp"

namespace moba::testing {
namespace {

// A valid MoBA call on the reference backend; each test breaks one thing.
struct Call {
  Shape s;
  Inputs in;
  HostTensor out;
  std::vector<float> lse;
  std::vector<std::int32_t> sel;
  TensorView q, k, v, o, l, selv, cu;
  AttentionParams params;
  RunOptions opts;

  Call() {
    s.seqlens = {5, 9};
    s.hq = 4;
    s.hkv = 2;
    s.d = 64;
    s.dtype = DType::bf16;
    s.params = AttentionParams::moba_blocks(4, 2);
    in = make_inputs(s, 1);
    const int T = s.total();
    out = HostTensor(s.dtype, {T, s.hq, s.d});
    lse.assign(std::size_t(T) * s.hq, 0.f);
    sel.assign(std::size_t(T) * s.hq * 1, 0);
    q = in.q.view();
    k = in.k.view();
    v = in.v.view();
    o = out.view();
    l = TensorView::contiguous(lse.data(), DType::f32, Device::cpu(), {s.hq, T});
    selv = TensorView::contiguous(sel.data(), DType::i32, Device::cpu(), {T, s.hq, 1});
    cu = TensorView::contiguous(in.cu.data(), DType::i32, Device::cpu(), {std::int64_t(in.cu.size())});
    params = s.params;
    opts.backend = Backend::reference;
  }
  void forward() { attention_forward(q, k, v, cu, params, o, l, selv, opts); }
};

// Runs f, expects a moba::Error of `kind` whose message contains every fragment.
void expect_error(const std::function<void()>& f, std::initializer_list<const char*> fragments,
                  ErrorKind kind = ErrorKind::invalid_argument) {
  try {
    f();
    ADD_FAILURE() << "no error thrown; expected one mentioning " << *fragments.begin();
  } catch (const Error& e) {
    EXPECT_EQ(static_cast<int>(e.kind()), static_cast<int>(kind)) << e.what();
    for (const char* frag : fragments) EXPECT_NE(std::string(e.what()).find(frag), std::string::npos) << e.what();
  }
}

TEST(Errors, ValidCallPasses) { Call c; EXPECT_NO_THROW(c.forward()); }

TEST(Errors, QueryRank) { Call c; c.q.ndim = 2; expect_error([&] { c.forward(); }, {"q:", "3 dimensions"}); }
TEST(Errors, QueryDtype) { Call c; c.q.dtype = DType::i32; expect_error([&] { c.forward(); }, {"q:", "f32, f16 or bf16"}); }
TEST(Errors, KeyDtypeMismatch) { Call c; c.k.dtype = DType::f16; expect_error([&] { c.forward(); }, {"k:", "bf16 (same as q)", "got f16"}); }
TEST(Errors, KeyDevice) { Call c; c.k.device = Device::cuda(0); expect_error([&] { c.forward(); }, {"k:", "device cpu"}); }
TEST(Errors, QueryLastDimNotContiguous) { Call c; c.q.stride[2] = 2; expect_error([&] { c.forward(); }, {"q:", "last dimension contiguous"}); }
TEST(Errors, NullData) { Call c; c.q.data = nullptr; expect_error([&] { c.forward(); }, {"q:", "non-null"}); }
TEST(Errors, KeyTokens) { Call c; c.k.shape[0] = 3; expect_error([&] { c.forward(); }, {"k:", "same tokens"}); }
TEST(Errors, KeyHeadDim) { Call c; c.k.shape[2] = 32; expect_error([&] { c.forward(); }, {"k:", "head_dim 64"}); }
TEST(Errors, HeadRatio) { Call c; c.k.shape[1] = 3; expect_error([&] { c.forward(); }, {"k:", "dividing num_q_heads", "head ratio"}); }
TEST(Errors, ValueShape) { Call c; c.v.shape[1] = 1; expect_error([&] { c.forward(); }, {"v:", "same as k"}); }
TEST(Errors, OutputShape) { Call c; c.o.shape[1] = 2; expect_error([&] { c.forward(); }, {"out:", "same as q"}); }
TEST(Errors, OutputDtype) { Call c; c.o.dtype = DType::f32; expect_error([&] { c.forward(); }, {"out:", "dtype bf16"}); }
TEST(Errors, LseShape) { Call c; c.l.shape[1] = 3; expect_error([&] { c.forward(); }, {"lse:", "shape [4, 14]"}); }
TEST(Errors, LseDtype) { Call c; c.l.dtype = DType::bf16; expect_error([&] { c.forward(); }, {"lse:", "dtype f32"}); }
TEST(Errors, SelectionMissing) { Call c; c.selv = TensorView{}; expect_error([&] { c.forward(); }, {"selection:", "int32"}); }
TEST(Errors, SelectionShape) { Call c; c.selv.shape[2] = 2; expect_error([&] { c.forward(); }, {"selection:", "topk - 1", "[14, 4, 1]"}); }

TEST(Errors, CuSeqlensDtype) { Call c; c.cu.dtype = DType::f32; expect_error([&] { c.forward(); }, {"cu_seqlens:", "i32"}); }
TEST(Errors, CuSeqlensEmpty) { Call c; c.cu.shape[0] = 0; expect_error([&] { c.forward(); }, {"cu_seqlens:", "at least 1 entry"}); }
TEST(Errors, CuSeqlensStart) { Call c; c.in.cu = {1, 5, 14}; expect_error([&] { c.forward(); }, {"cu_seqlens:", "cu_seqlens[0] == 0"}); }
TEST(Errors, CuSeqlensDecreasing) { Call c; c.in.cu = {0, 9, 5}; c.in.cu.push_back(14); c.cu.shape[0] = 4; c.cu.data = c.in.cu.data(); expect_error([&] { c.forward(); }, {"cu_seqlens:", "non-decreasing", "cu_seqlens[2] = 5"}); }
TEST(Errors, CuSeqlensLast) { Call c; c.in.cu = {0, 5, 13}; expect_error([&] { c.forward(); }, {"cu_seqlens:", "last value == total tokens = 14", "got 13"}); }

TEST(Errors, BlockSize) { Call c; c.params.block_size = 0; expect_error([&] { c.forward(); }, {"block_size:", "> 0"}); }
TEST(Errors, Topk) { Call c; c.params.topk = 0; expect_error([&] { c.forward(); }, {"topk:", "topk >= 1"}); }
TEST(Errors, SoftmaxScale) { Call c; c.params.softmax_scale = NAN; expect_error([&] { c.forward(); }, {"softmax_scale:", "finite"}); }

TEST(Errors, MoaHeadCount) {
  Call c;
  c.params = AttentionParams::moa_heads(MoaHeads{{1, 2, 3}, {0, 0, 0}, 4});
  expect_error([&] { c.forward(); }, {"moa.alpha:", "per query head (4) or per KV head (2)", "3 values"});
}
TEST(Errors, MoaNaN) {
  Call c;
  c.params = AttentionParams::moa_heads(MoaHeads{{1, NAN}, {0, 0}, 4});
  expect_error([&] { c.forward(); }, {"moa.alpha[1]:", "finite"});
}
TEST(Errors, MoaNegativeBeta) {
  Call c;
  c.params = AttentionParams::moa_heads(MoaHeads{{1, 1}, {0, -0.5f}, 4});
  expect_error([&] { c.forward(); }, {"moa.beta[1]:", ">= 0"});
}
TEST(Errors, MoaSink) {
  Call c;
  c.params = AttentionParams::moa_heads(MoaHeads{{1, 1}, {0, 0}, -1});
  expect_error([&] { c.forward(); }, {"moa.sink:", ">= 0"});
}

TEST(Errors, CpuBackendHeadDim) {
  Shape s;
  s.seqlens = {3};
  s.d = 96;
  s.hq = s.hkv = 1;
  s.params = AttentionParams::full();
  Inputs in = make_inputs(s, 2);
  expect_error([&] { run_forward(s, in, Backend::cpu); }, {"q:", "head_dim 64 or 128 on the cpu backend", "96"});
  EXPECT_NO_THROW(run_forward(s, in, Backend::reference));  // the reference takes any head_dim
}

TEST(Errors, CudaBackendOnHostTensors) {
  Call c;
  c.opts.backend = Backend::cuda;
  expect_error([&] { c.forward(); }, {"q:", "CUDA device"});
}

TEST(Errors, BackwardGradientShape) {
  Call c;
  c.forward();
  HostTensor dq(c.s.dtype, {c.s.total(), c.s.hq, c.s.d}), dk(c.s.dtype, {c.s.total(), c.s.hkv, c.s.d}),
      dv(c.s.dtype, {c.s.total(), c.s.hkv, c.s.d});
  TensorView dkv = dk.view();
  dkv.shape[1] = 4;
  expect_error([&] {
    attention_backward(c.q, c.k, c.v, c.o, c.l, c.in.dout.view(), c.cu, c.params, c.selv, dq.view(), dkv, dv.view(), c.opts);
  }, {"dk:", "same as k"});
}

TEST(Errors, GateNeedsMobaMode) {
  Call c;
  c.params = AttentionParams::full();
  expect_error([&] { moba_gate(c.q, c.k, c.cu, c.params, c.selv, c.opts); }, {"params.mode", "Mode::moba"});
}

// Each message reads "moba: ARG: expected ..., got ...", and a call that throws nothing fails.
TEST(Errors, MessagesStartWithLibraryName) {
  const std::function<void(Call&)> breakers[] = {
      [](Call& c) { c.params.topk = -3; },
      [](Call& c) { c.q.ndim = 2; },
      [](Call& c) { c.l.dtype = DType::bf16; },
      [](Call& c) { c.in.cu = {0, 5, 13}; },
  };
  const char* prefixes[] = {"moba: topk: expected", "moba: q: expected", "moba: lse: expected",
                            "moba: cu_seqlens: expected"};
  for (int i = 0; i < 4; ++i) {
    Call c;
    breakers[i](c);
    bool thrown = false;
    try {
      c.forward();
    } catch (const Error& e) {
      thrown = true;
      EXPECT_EQ(std::string(e.what()).rfind(prefixes[i], 0), 0u) << e.what();
      EXPECT_NE(std::string(e.what()).find(", got "), std::string::npos) << e.what();
    }
    EXPECT_TRUE(thrown) << "no moba::Error for the call expected to fail with " << prefixes[i];
  }
}

}  // namespace
}  // namespace moba::testing
