// C++ test of csrc/cpu/capped_softmax.h, the CPU attention's fused cap and
// softmax (run by ctest; see CMakeLists.txt). It needs no libtorch.
//
// Checks, against double precision:
//  * tanh (scalar, and 8-lane AVX2 where the CPU has it) within 2.5 ulp over
//    a sweep of floats from 1e-30 to past saturation, both signs; NaN stays
//    NaN, -0 stays -0;
//  * exp (8-lane) within 1.5 ulp over [kExpMin, 0], 0 below it, NaN stays NaN;
//  * softmax_row against a double softmax of cap * tanh(y), rows of 1 to 40
//    logits (8-lane body and scalar tail), random key masks: probabilities,
//    their sum, lse and the tanh it hands the backward; an all-masked row is
//    uniform; one NaN logit makes the whole row NaN.
// Measured on a 2-core AVX2 VM: tanh 1.56 ulp, exp 0.94 ulp at most.

#include "../cpu/capped_softmax.h"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

namespace capped = vpengine::capped;

namespace {

int failures = 0;

void expect(bool ok, const char* what, double got, double want) {
  if (!ok && failures++ < 20) std::printf("FAIL %s: got %.9g, want %.9g\n", what, got, want);
}

// |got - exact| in units of the float spacing at exact.
double ulps(float got, double exact) {
  const float e = static_cast<float>(exact);
  const double spacing = std::nextafter(std::fabs(e), std::numeric_limits<float>::infinity()) - std::fabs(e);
  return std::fabs(static_cast<double>(got) - exact) / spacing;
}

#ifdef VPENGINE_HAVE_AVX2_PATH
// The 8-lane functions on arrays (intrinsics need a caller compiled for AVX2).
VPENGINE_AVX2 void tanh8_array(const float* in, float* out) { _mm256_storeu_ps(out, capped::tanh8(_mm256_loadu_ps(in))); }
VPENGINE_AVX2 void exp8_array(const float* in, float* out) { _mm256_storeu_ps(out, capped::exp8(_mm256_loadu_ps(in))); }
#endif

bool have_avx2() {
#ifdef VPENGINE_HAVE_AVX2_PATH
  return capped::cpu_has_avx2();
#else
  return false;
#endif
}

// Every 4099th positive float from 1e-30 to 20, and its negative.
std::vector<float> sweep() {
  std::vector<float> xs;
  uint32_t bits;
  const float lo = 1e-30f;
  std::memcpy(&bits, &lo, 4);
  for (float x = lo; x < 20.0f; bits += 4099, std::memcpy(&x, &bits, 4)) {
    xs.push_back(x);
    xs.push_back(-x);
  }
  return xs;
}

void test_tanh(const std::vector<float>& xs) {
  double worst = 0, worst8 = 0;
  for (size_t i = 0; i + 8 <= xs.size(); i += 8) {
    float lanes[8] = {0};
#ifdef VPENGINE_HAVE_AVX2_PATH
    if (have_avx2()) tanh8_array(&xs[i], lanes);
#endif
    for (int j = 0; j < 8; ++j) {
      const double exact = std::tanh(static_cast<double>(xs[i + j]));
      worst = std::max(worst, ulps(capped::tanh_scalar(xs[i + j]), exact));
      if (have_avx2()) worst8 = std::max(worst8, ulps(lanes[j], exact));
    }
  }
  std::printf("tanh: scalar %.2f ulp, avx2 %.2f ulp over %zu values\n", worst, worst8, xs.size());
  expect(worst <= 2.5, "tanh_scalar max ulp", worst, 2.5);
  expect(worst8 <= 2.5, "tanh8 max ulp", worst8, 2.5);
  expect(std::isnan(capped::tanh_scalar(std::nanf(""))), "tanh(NaN) is NaN", 0, 0);
  expect(std::signbit(capped::tanh_scalar(-0.0f)), "tanh(-0) is -0", 0, 0);
  expect(capped::tanh_scalar(std::numeric_limits<float>::infinity()) == 1.0f, "tanh(inf)", 0, 1);
}

void test_exp() {
#ifdef VPENGINE_HAVE_AVX2_PATH
  if (!have_avx2()) return;
  double worst = 0;
  float lanes[8];
  for (float x0 = capped::kExpMin; x0 <= 0.0f; x0 += 3.1e-4f) {
    float in[8];
    for (int j = 0; j < 8; ++j) in[j] = std::fmin(0.0f, x0 + j * 3.9e-5f);
    exp8_array(in, lanes);
    for (int j = 0; j < 8; ++j) worst = std::max(worst, ulps(lanes[j], std::exp(static_cast<double>(in[j]))));
  }
  std::printf("exp: avx2 %.2f ulp\n", worst);
  expect(worst <= 1.5, "exp8 max ulp", worst, 1.5);
  const float special[8] = {-88.0f, -1e30f, capped::kNeg, std::nanf(""), 0.0f, -0.0f, 1.0f, -87.0f};
  exp8_array(special, lanes);
  expect(lanes[0] == 0 && lanes[1] == 0 && lanes[2] == 0, "exp below kExpMin is 0", lanes[0], 0);
  expect(std::isnan(lanes[3]), "exp(NaN) is NaN", lanes[3], 0);
  expect(lanes[4] == 1 && lanes[5] == 1, "exp(0) is 1", lanes[4], 1);
#endif
}

void test_rows() {
  std::mt19937 gen(0);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::bernoulli_distribution drop(0.3);
  const float cap = 50.0f;
  for (int n = 1; n <= 40; ++n) {
    for (int trial = 0; trial < 20; ++trial) {
      const float spread = trial % 4 == 0 ? 0.01f : (trial % 4 == 1 ? 0.3f : (trial % 4 == 2 ? 2.0f : 20.0f));
      std::vector<float> y(n), th(n);
      std::vector<uint8_t> masked(n);
      bool any_kept = false;
      for (int j = 0; j < n; ++j) {
        y[j] = normal(gen) * spread;
        masked[j] = trial >= 10 && drop(gen);
        any_kept |= !masked[j];
      }
      const bool* mask = trial >= 10 ? reinterpret_cast<const bool*>(masked.data()) : nullptr;
      std::vector<double> z(n);
      double m = -std::numeric_limits<double>::infinity();
      for (int j = 0; j < n; ++j) {
        z[j] = (mask && mask[j]) ? static_cast<double>(capped::kNeg) : cap * std::tanh(static_cast<double>(y[j]));
        m = std::max(m, z[j]);
      }
      double sum = 0;
      for (int j = 0; j < n; ++j) sum += std::exp(z[j] - m);
      std::vector<float> row = y;
      const float lse = capped::softmax_row(row.data(), n, cap, mask, th.data());
      double total = 0;
      for (int j = 0; j < n; ++j) {
        const double p = std::exp(z[j] - m) / sum;
        // fp32's own bound: z = cap * tanh(y) carries cap * ~1.5 ulp(tanh),
        // up to 4.5e-6 at cap 50, and p = exp(z - max) twice that, relative.
        expect(std::fabs(row[j] - p) <= 2e-5 * p + 1e-30, "softmax_row probability", row[j], p);
        expect(std::fabs(th[j] - std::tanh(static_cast<double>(y[j]))) <= 3e-7, "softmax_row tanh", th[j],
               std::tanh(static_cast<double>(y[j])));
        total += row[j];
      }
      expect(std::fabs(total - 1.0) <= 1e-6, "probabilities sum to 1", total, 1.0);
      const double want_lse = m + std::log(sum);
      expect(std::fabs(lse - want_lse) <= 1e-6 * std::fabs(want_lse) + 2e-6 || !any_kept, "lse", lse, want_lse);
    }
    std::vector<float> row(n, 3.0f);
    std::vector<uint8_t> all(n, 1);
    capped::softmax_row(row.data(), n, cap, reinterpret_cast<const bool*>(all.data()));
    for (int j = 0; j < n; ++j) expect(std::fabs(row[j] - 1.0f / n) <= 1e-7f, "all masked: uniform", row[j], 1.0 / n);
    std::vector<float> bad(n, 0.5f);
    bad[n / 2] = std::nanf("");
    capped::softmax_row(bad.data(), n, cap, nullptr);
    for (int j = 0; j < n; ++j) expect(std::isnan(bad[j]), "a NaN logit: the row is NaN", bad[j], NAN);
  }
}

}  // namespace

int main() {
  std::printf("AVX2 path: %s\n", have_avx2() ? "yes" : "no (scalar only)");
  test_tanh(sweep());
  test_exp();
  test_rows();
  if (failures) {
    std::printf("%d failures\n", failures);
    return 1;
  }
  std::printf("capped_softmax: all checks passed\n");
  return 0;
}
