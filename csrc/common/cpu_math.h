// CPU-only building blocks written so that GCC/Clang auto-vectorise them (no intrinsics, no libm calls):
// a polynomial exp and Philox4x32-10 over several counters at once. Used by the CPU kernels, also in the
// translation-unit parts compiled for AVX2 (see oce_loss_cpu.cpp), so everything here is header-inline.
#pragma once

#include <cstdint>
#include <cstring>

#include "philox.h"

// AVX2 variants (runtime-dispatched by the callers) on x86 with GCC/Clang.
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define CF_X86_AVX2_KERNELS 1
#define CF_TARGET_AVX2 __attribute__((target("avx2,fma")))
#include <immintrin.h>
#endif

// Forced inlining: the callers compiled for AVX2 (target attribute) must get these inlined, since an
// out-of-line copy is compiled for the baseline ISA.
#if defined(__GNUC__)
#define CF_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define CF_ALWAYS_INLINE inline
#endif
#if defined(__GNUC__) && !defined(__clang__)
#define CF_NO_UNROLL _Pragma("GCC unroll 1")
#else
#define CF_NO_UNROLL
#endif

namespace cellulus_fast {
namespace cpu {

template <typename To, typename From>
CF_ALWAYS_INLINE To bits_as(From from) {
  static_assert(sizeof(To) == sizeof(From), "bits_as: size mismatch");
  To to;
  std::memcpy(&to, &from, sizeof(To));
  return to;
}

// exp(x) by Cody-Waite range reduction x = n ln2 + r, |r| <= ln2 / 2, a polynomial in r and a scale by
// 2^n built in the exponent bits. Branch-free (vectorises). Arguments are clamped to the range where
// 2^n is a normal number: exp_poly(x) = exp(-87) resp. exp(-708) for smaller x, so underflow gives a
// tiny positive value instead of 0 (and no denormals); large x saturate likewise.
// Accuracy: float <= 2 ulp (Cephes expf polynomial), double <= 2 ulp (degree-13 Taylor, |r| <= 0.35).
CF_ALWAYS_INLINE float exp_poly(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer in the low bits
  const float t = x * 1.44269504088896341f + kRound;
  const float n = t - kRound;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  // bits(t) = bits(kRound) + n for |n| < 2^22, so the scale's exponent field is (n + 127).
  const uint32_t scale = (bits_as<uint32_t>(t) - 0x4B400000u + 127u) << 23;
  return p * bits_as<float>(scale);
}

// (exp(r) - 1 - r) / r^2 by its Taylor series to degree 11 (terms 1/2! .. 1/13!), for |r| <= 0.35.
CF_ALWAYS_INLINE double exp_taylor_tail(double r) {
  double p = 1.0 / 6227020800.0;  // 1/13!
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  return p * r + 0.5;
}

CF_ALWAYS_INLINE double exp_poly(double x) {
  x = x < -708.0 ? -708.0 : x;
  x = x > 709.0 ? 709.0 : x;
  constexpr double kRound = 6755399441055744.0;  // 1.5 * 2^52
  const double t = x * 1.4426950408889634074 + kRound;
  const double n = t - kRound;
  double r = x - n * 6.93145751953125e-1;  // ln2 split in a high part exact in n * hi, and the rest
  r = r - n * 1.42860682030941723212e-6;
  double p = exp_taylor_tail(r);
  p = p * (r * r) + r + 1.0;
  const uint64_t scale = (bits_as<uint64_t>(t) - 0x4338000000000000ull + 1023ull) << 52;
  return p * bits_as<double>(scale);
}

// expm1(x) for x <= 0 given e = exp_poly(x): e - 1 where that is accurate (x <= -kExpm1Switch, where
// 1 - e >= 0.39 resp. 0.22, so the subtraction loses under 2 bits), else the Taylor series of expm1, whose
// truncation error there is below half an ulp (float: degree 8 on |x| < 0.5; double: degree 13 on
// |x| < 0.25). Branch-free (both computed, one selected), so it vectorises; NaN stays NaN.
constexpr float kExpm1SwitchF = 0.5f;
constexpr double kExpm1SwitchD = 0.25;

CF_ALWAYS_INLINE float expm1_small(float x) {
  float p = 1.0f / 40320.0f;  // 1/8!
  p = p * x + 1.0f / 5040.0f;
  p = p * x + 1.0f / 720.0f;
  p = p * x + 1.0f / 120.0f;
  p = p * x + 1.0f / 24.0f;
  p = p * x + 1.0f / 6.0f;
  p = p * x + 0.5f;
  return (p * x) * x + x;
}

CF_ALWAYS_INLINE double expm1_small(double x) { return (exp_taylor_tail(x) * x) * x + x; }

CF_ALWAYS_INLINE float expm1_nonpositive(float x, float e) {
  return x > -kExpm1SwitchF ? expm1_small(x) : e - 1.0f;
}

CF_ALWAYS_INLINE double expm1_nonpositive(double x, double e) {
  return x > -kExpm1SwitchD ? expm1_small(x) : e - 1.0;
}

// Philox4x32-10 of L counters (c0[l], c1, c2[l], c3) at once, bit-identical to philox4x32_10; the rounds
// run across the lanes so the compiler vectorises them (the lane loop must not be unrolled first, or GCC
// finds no loop left to vectorise). Word w of lane l is written to out[4 * l + w].
template <int L>
CF_ALWAYS_INLINE void philox4x32_10_lanes(uint64_t key, const uint32_t* c0, uint32_t c1, const uint32_t* c2,
                                          uint32_t c3, uint32_t* out) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  uint32_t x0[L], x1[L], x2[L], x3[L];
  for (int l = 0; l < L; ++l) {
    x0[l] = c0[l];
    x1[l] = c1;
    x2[l] = c2[l];
    x3[l] = c3;
  }
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  for (int round = 0; round < 10; ++round) {
    CF_NO_UNROLL
    for (int l = 0; l < L; ++l) {
      const uint32_t hi0 = mulhi32(kM0, x0[l]), lo0 = kM0 * x0[l];
      const uint32_t hi1 = mulhi32(kM1, x2[l]), lo1 = kM1 * x2[l];
      x0[l] = hi1 ^ x1[l] ^ k0;
      x2[l] = hi0 ^ x3[l] ^ k1;
      x1[l] = lo1;
      x3[l] = lo0;
    }
    k0 += kW0;
    k1 += kW1;
  }
  for (int l = 0; l < L; ++l) {
    out[4 * l + 0] = x0[l];
    out[4 * l + 1] = x1[l];
    out[4 * l + 2] = x2[l];
    out[4 * l + 3] = x3[l];
  }
}

// Instruction-set policies of the CPU kernels: philox(key, c0, c1, c2, c3, n, out) runs philox4x32_10_lanes
// over n counters, n a multiple of kPhiloxLanes.
constexpr int kPhiloxLanes = 8;

struct IsaDefault {
  static CF_ALWAYS_INLINE void philox(uint64_t key, const uint32_t* c0, uint32_t c1, const uint32_t* c2,
                                      uint32_t c3, uint32_t n, uint32_t* out) {
    for (uint32_t l = 0; l < n; l += kPhiloxLanes) {
      philox4x32_10_lanes<kPhiloxLanes>(key, c0 + l, c1, c2 + l, c3, out + 4 * l);
    }
  }
};

#if defined(CF_X86_AVX2_KERNELS)
// AVX2 Philox (must only run where AVX2 is available). GCC vectorises the 32x32 -> 64-bit products of
// philox4x32_10_lanes with many shuffles, so the rounds are spelled out: the high halves of the 8 products
// of a vector come from two _mm256_mul_epu32 (even and odd lanes) and a blend, the low halves from
// _mm256_mullo_epi32.

// High halves of the 8 products a * b (32 x 32 -> 64 bits); b must hold the same value in every lane.
CF_TARGET_AVX2 CF_ALWAYS_INLINE __m256i mulhi_epu32(__m256i a, __m256i b) {
  const __m256i even = _mm256_mul_epu32(a, b);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), b);
  return _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

// Round keys of Philox4x32-10 for one key, broadcast (computed once, used for many counters).
struct PhiloxKeys {
  __m256i k0[10], k1[10];
};

CF_TARGET_AVX2 CF_ALWAYS_INLINE void philox_keys(uint64_t key, PhiloxKeys& keys) {
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  for (int round = 0; round < 10; ++round) {
    keys.k0[round] = _mm256_set1_epi32(static_cast<int>(k0));
    keys.k1[round] = _mm256_set1_epi32(static_cast<int>(k1));
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
}

// Philox4x32-10 of the 8 counters (c0[lane], c1[lane], c2[lane], c3[lane]), bit-identical to philox4x32_10;
// the 4 words of each lane in w[0..3].
CF_TARGET_AVX2 CF_ALWAYS_INLINE void philox8(const PhiloxKeys& keys, __m256i c0, __m256i c1, __m256i c2,
                                             __m256i c3, __m256i* w) {
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(0xD2511F53u));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(0xCD9E8D57u));
  __m256i x0 = c0, x1 = c1, x2 = c2, x3 = c3;
  for (int round = 0; round < 10; ++round) {
    const __m256i hi0 = mulhi_epu32(x0, m0), lo0 = _mm256_mullo_epi32(x0, m0);
    const __m256i hi1 = mulhi_epu32(x2, m1), lo1 = _mm256_mullo_epi32(x2, m1);
    x0 = _mm256_xor_si256(_mm256_xor_si256(hi1, x1), keys.k0[round]);
    x2 = _mm256_xor_si256(_mm256_xor_si256(hi0, x3), keys.k1[round]);
    x1 = lo1;
    x3 = lo0;
  }
  w[0] = x0;
  w[1] = x1;
  w[2] = x2;
  w[3] = x3;
}

struct IsaAvx2 {
  // Not forced inline: the kernels calling it are inlined into AVX2 functions only after this call is
  // resolved, and GCC refuses to force AVX2 code into a baseline function (one call per block of pairs).
  // Words stored interleaved (out[4 l + w]) by a 4 x 8 transpose.
  CF_TARGET_AVX2 static inline void philox(uint64_t key, const uint32_t* c0, uint32_t c1, const uint32_t* c2,
                                           uint32_t c3, uint32_t n, uint32_t* out) {
    static_assert(kPhiloxLanes == 8, "IsaAvx2::philox works on 8 lanes");
    PhiloxKeys keys;
    philox_keys(key, keys);
    const __m256i v1 = _mm256_set1_epi32(static_cast<int>(c1)), v3 = _mm256_set1_epi32(static_cast<int>(c3));
    for (uint32_t l = 0; l < n; l += 8) {
      __m256i x[4];
      philox8(keys, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c0 + l)), v1,
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c2 + l)), v3, x);
      const __m256i t0 = _mm256_unpacklo_epi32(x[0], x[1]), t1 = _mm256_unpackhi_epi32(x[0], x[1]);
      const __m256i t2 = _mm256_unpacklo_epi32(x[2], x[3]), t3 = _mm256_unpackhi_epi32(x[2], x[3]);
      const __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);  // lanes 0|4, 1|5
      const __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);  // lanes 2|6, 3|7
      __m256i* o = reinterpret_cast<__m256i*>(out + 4 * l);
      _mm256_storeu_si256(o + 0, _mm256_permute2x128_si256(u0, u1, 0x20));
      _mm256_storeu_si256(o + 1, _mm256_permute2x128_si256(u2, u3, 0x20));
      _mm256_storeu_si256(o + 2, _mm256_permute2x128_si256(u0, u1, 0x31));
      _mm256_storeu_si256(o + 3, _mm256_permute2x128_si256(u2, u3, 0x31));
    }
  }
};
#endif

}  // namespace cpu
}  // namespace cellulus_fast
