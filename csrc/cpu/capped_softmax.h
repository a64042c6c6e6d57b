// Soft-capped softmax over rows of fp32 logits, in place, for the CPU
// attention kernel (spacetime_attention_cpu.cpp).
//
// Per row of n logits y (already multiplied by scale / cap):
//   z = cap * tanh(y), or NEG where the key is masked;
//   p = exp(z - max z) / sum(exp(z - max z)),  lse = max z + log(sum).
//
// Why not ATen's tanh and softmax: at VideoPrism-B's space axis ATen's tanh
// (SLEEF, 1 ulp) took 25 of the kernel's 71 ms a layer on a 2-core AVX2 VM,
// nearly the GEMMs' 30. Here the row is read once for the cap and the max,
// once for the exponentials and once to normalize, with a tanh of at most
// 1.4 ulp and an exp of 0.9 ulp (csrc/test/test_capped_softmax.cpp measures
// both against double, ctest runs it), branch-free on 8 lanes with AVX2 and
// FMA where the CPU has them.
// The scalar loop finishes every row's last n % 8 logits, and whole rows on a
// CPU without AVX2.
//
// NaN logits make the row's sum NaN, so the whole row comes out NaN, as the
// reference's softmax does. Logits are bounded by the cap, so exp's input is
// never above 0 except through a NaN.

#pragma once

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define VPENGINE_HAVE_AVX2_PATH 1
#endif

namespace vpengine::capped {

// The reference's NEG, -0.7 * float32 max, rounded once from double as
// masked_fill rounds the reference's Python float.
constexpr float kNeg = static_cast<float>(-0.7 * static_cast<double>(FLT_MAX));
// tanh(y) = y + y^3 * P(y^2) below this |y|, 1 - 2 / (1 + exp(2|y|)) above:
// the series' error grows and the formula's cancellation shrinks with |y|,
// and both are about 1.5 ulp here.
constexpr float kSeriesEnd = 0.55f;
// Taylor coefficients of tanh(y) = y + sum_k c_k y^(2k+1), k = 1..8
// (2^2n (2^2n - 1) B_2n / (2n)!); the next term is below 1e-9 relative at 0.55.
constexpr float kTanhSeries[8] = {-3.33333333333333333e-01f, 1.33333333333333333e-01f, -5.39682539682539683e-02f,
                                  2.18694885361552028e-02f,  -8.86323552990219657e-03f, 3.59212803657248102e-03f,
                                  -1.45583438705131827e-03f, 5.90027440945585981e-04f};
// exp(x) flushes to 0 below this (2^-126), as the masked keys' NEG - max needs.
constexpr float kExpMin = -87.3365448f;

inline float tanh_scalar(float y) {
  const float a = std::fabs(y);
  float t;
  if (a < kSeriesEnd) {
    const float y2 = a * a;
    float acc = kTanhSeries[7];
    for (int k = 6; k >= 0; --k) acc = std::fma(acc, y2, kTanhSeries[k]);
    t = std::fma(a * y2, acc, a);
  } else {
    // std::min keeps a NaN (its first argument); std::fmin would drop it.
    t = 1.0f - 2.0f / (1.0f + std::exp(std::min(2.0f * a, 88.0f)));
  }
  return std::copysign(t, y);  // NaN stays NaN
}

// z = cap * tanh(y) (or NEG where masked) in place, tanh(y) to th when not
// null (the backward's 1 - tanh^2); returns the max of z and m.
inline float cap_row_scalar(float* z, int64_t n, float cap, const bool* masked, float* th, float m) {
  for (int64_t j = 0; j < n; ++j) {
    const float t = tanh_scalar(z[j]);
    if (th != nullptr) th[j] = t;
    const float v = (masked != nullptr && masked[j]) ? kNeg : cap * t;
    z[j] = v;
    m = std::fmax(m, v);
  }
  return m;
}

inline float exp_row_scalar(float* z, int64_t n, float m, float sum) {
  for (int64_t j = 0; j < n; ++j) {
    const float x = z[j] - m;
    const float e = x < kExpMin ? 0.0f : std::exp(x);
    z[j] = e;
    sum += e;
  }
  return sum;
}

#ifdef VPENGINE_HAVE_AVX2_PATH
#define VPENGINE_AVX2 __attribute__((target("avx2,fma")))

// exp on 8 lanes: x = n ln2 + r with |r| <= ln2 / 2 (ln2 in two parts, so r
// is exact), e^r by its Taylor series to r^7 (truncation 5e-9), times 2^n
// built in the exponent bits. Inputs below kExpMin give 0; NaN stays NaN.
VPENGINE_AVX2 inline __m256 exp8(__m256 x) {
  const __m256 lo = _mm256_set1_ps(kExpMin);
  const __m256 keep = _mm256_cmp_ps(x, lo, _CMP_NLT_UQ);  // x >= lo, or NaN
  const __m256 xc = _mm256_max_ps(lo, x);                    // NaN passes (2nd operand)
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), xc);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.42860682030941723e-6f), r);
  __m256 p = _mm256_set1_ps(1.0f / 5040);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(bits)), keep);
}

VPENGINE_AVX2 inline __m256 tanh8(__m256 y) {
  const __m256 sign = _mm256_and_ps(y, _mm256_set1_ps(-0.0f));
  const __m256 a = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), y);
  const __m256 y2 = _mm256_mul_ps(a, a);
  __m256 acc = _mm256_set1_ps(kTanhSeries[7]);
  for (int k = 6; k >= 0; --k) acc = _mm256_fmadd_ps(acc, y2, _mm256_set1_ps(kTanhSeries[k]));
  const __m256 series = _mm256_fmadd_ps(_mm256_mul_ps(a, y2), acc, a);
  const __m256 e = exp8(_mm256_min_ps(_mm256_set1_ps(88.0f), _mm256_add_ps(a, a)));
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 formula = _mm256_sub_ps(one, _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(one, e)));
  const __m256 small = _mm256_cmp_ps(a, _mm256_set1_ps(kSeriesEnd), _CMP_LT_OQ);
  // NaN lanes: not "small", and exp8 kept them NaN through the formula.
  return _mm256_or_ps(_mm256_blendv_ps(formula, series, small), sign);
}

VPENGINE_AVX2 inline float hmax8(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

VPENGINE_AVX2 inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Returns the row's lse; the row holds the probabilities.
VPENGINE_AVX2 inline float softmax_row_avx2(float* z, int64_t n, float cap, const bool* masked, float* th) {
  const int64_t nv = n - n % 8;
  const __m256 vcap = _mm256_set1_ps(cap);
  const __m256 vneg = _mm256_set1_ps(kNeg);
  __m256 vmax = vneg;
  for (int64_t j = 0; j < nv; j += 8) {
    const __m256 t = tanh8(_mm256_loadu_ps(z + j));
    if (th != nullptr) _mm256_storeu_ps(th + j, t);
    __m256 v = _mm256_mul_ps(vcap, t);
    if (masked != nullptr) {
      // 8 bools -> a lane mask: each byte to a 32-bit lane, nonzero -> all ones.
      const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(masked + j)));
      const __m256 drop = _mm256_castsi256_ps(_mm256_cmpgt_epi32(b, _mm256_setzero_si256()));
      v = _mm256_blendv_ps(v, vneg, drop);
    }
    _mm256_storeu_ps(z + j, v);
    vmax = _mm256_max_ps(vmax, v);
  }
  const float m = cap_row_scalar(z + nv, n - nv, cap, masked ? masked + nv : nullptr, th ? th + nv : nullptr, hmax8(vmax));
  const __m256 vm = _mm256_set1_ps(m);
  __m256 vsum = _mm256_setzero_ps();
  for (int64_t j = 0; j < nv; j += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(z + j), vm));
    _mm256_storeu_ps(z + j, e);
    vsum = _mm256_add_ps(vsum, e);
  }
  const float sum = exp_row_scalar(z + nv, n - nv, m, hsum8(vsum));
  const __m256 inv = _mm256_set1_ps(1.0f / sum);
  for (int64_t j = 0; j < nv; j += 8) _mm256_storeu_ps(z + j, _mm256_mul_ps(_mm256_loadu_ps(z + j), inv));
  for (int64_t j = nv; j < n; ++j) z[j] *= 1.0f / sum;
  return m + std::log(sum);
}

inline bool cpu_has_avx2() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}
#endif

// Overwrites the row of n logits y = s / cap with softmax(cap * tanh(y)),
// masked keys dropped, and returns its lse. th (n floats, or null) receives
// tanh(y).
inline float softmax_row(float* z, int64_t n, float cap, const bool* masked, float* th = nullptr) {
#ifdef VPENGINE_HAVE_AVX2_PATH
  if (cpu_has_avx2()) return softmax_row_avx2(z, n, cap, masked, th);
#endif
  const float m = cap_row_scalar(z, n, cap, masked, th, kNeg);
  const float sum = exp_row_scalar(z, n, m, 0.0f);
  for (int64_t j = 0; j < n; ++j) z[j] *= 1.0f / sum;
  return m + std::log(sum);
}

}  // namespace vpengine::capped
