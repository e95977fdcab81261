// MoA plans: JSON round trip, the accepted file forms, and named errors for bad plans.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>

#include "moba/moba.hpp"

namespace moba {
namespace {

void expect_plan_error(const std::string& json, const char* fragment) {
  try {
    MoaPlan::from_json(json);
    ADD_FAILURE() << "accepted: " << json;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

TEST(MoaPlan, RoundTripThroughAFile) {
  MoaPlan p;
  p.alphas = {{64, 128.5f}, {0, 1024}};
  p.betas = {{0.25f, 0}, {0.5f, 0.125f}};
  p.sink = 16;
  const auto path = (std::filesystem::temp_directory_path() / "moba_plan_test.json").string();
  p.save(path);
  const MoaPlan q = MoaPlan::load(path);
  std::remove(path.c_str());
  EXPECT_EQ(q.alphas, p.alphas);
  EXPECT_EQ(q.betas, p.betas);
  EXPECT_EQ(q.sink, 16);
  const MoaHeads h = q.layer(1);
  EXPECT_EQ(h.alpha, p.alphas[1]);
  EXPECT_EQ(h.sink, 16);
}

TEST(MoaPlan, AcceptsMoaProjectForms) {
  const MoaPlan nested = MoaPlan::from_json(R"({"plan": {"alphas": [[1, 2]], "betas": [[0.5, 0.25]]}})");
  EXPECT_EQ(nested.alphas[0][1], 2.f);
  EXPECT_EQ(nested.sink, 64);  // default sink
  const MoaPlan per_layer = MoaPlan::from_json(R"([{"alpha": [1, 2], "beta": [0, 1]}, {"alphas": [3, 4], "betas": [0, 0]}])");
  ASSERT_EQ(per_layer.num_layers(), 2);
  EXPECT_EQ(per_layer.betas[0][1], 1.f);
  EXPECT_EQ(per_layer.alphas[1][0], 3.f);
}

TEST(MoaPlan, ShapeChecks) {
  MoaPlan p = MoaPlan::from_json(R"({"alphas": [[1, 2], [3, 4]], "betas": [[0, 0], [0, 0]]})");
  EXPECT_NO_THROW(p.validate(2, 2));
  EXPECT_THROW(p.validate(3, 2), Error);
  EXPECT_THROW(p.validate(2, 4), Error);
  EXPECT_THROW(p.layer(2), Error);
}

TEST(MoaPlan, NamedErrors) {
  expect_plan_error(R"({"alphas": [[1, 2]], "betas": [[0]]})", "plan.betas[0]: expected 2 heads");
  expect_plan_error(R"({"alphas": [[1, null]], "betas": [[0, 0]]})", "plan.alphas[0][1]: expected a finite value");
  expect_plan_error(R"({"alphas": [[1, 2]], "betas": [[0, -1]]})", "plan.betas[0][1]: expected a finite value >= 0");
  expect_plan_error(R"({"alphas": [[1]], "betas": [[0]], )", "plan: expected valid JSON");
  expect_plan_error(R"({"betas": [[0]]})", "keys \"alphas\" and \"betas\"");
  expect_plan_error(R"({"alphas": [[1]], "betas": [[0], [1]]})", "plan.betas: expected 1 layers");
  expect_plan_error(R"({"alphas": [["a"]], "betas": [[0]]})", "plan.alphas[0]: expected numbers");
  EXPECT_THROW(MoaPlan::load("/nonexistent/plan.json"), Error);
}

}  // namespace
}  // namespace moba
