// Hand-written AVX2+FMA kernels of the fused OCE loss for the training case: float32, 2-D.
//
// Lanes run over anchors, the loop over references: one Philox call gives 4 references to each of 8
// anchors, whose offsets stay in registers. Per group of 8 anchors the kernels
//   1. draw the disk-table indices of all R references (vectorised Philox and multiply-shift);
//   2. fetch, per pair and with scalar loads (gathers are slow on several x86 CPUs), r_j + o from the
//      channels-last image and the table (o the lattice offset, so e_i - e_j = r_i - (r_j + o));
//   3. evaluate the nonlinearity on 8 pairs per vector and sum the loss, scatter the gradients (pair by
//      pair, so that anchors sharing a reference are handled exactly), or both in the same pass.
// Step 3 reads what step 2 wrote only after the whole group: a vector load right after narrower stores to
// the same bytes would stall. The pairs are those of oce_loss_math.h (same Philox counters, same
// uniform_below, same table order); only the rounding order of the sums differs from the other kernels.
// Included by oce_loss_cpu.cpp on x86 only; every function here must run only where AVX2 and FMA are.
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "../common/cpu_math.h"
#include "oce_loss_math.h"

namespace cellulus_fast {
namespace oce {
namespace cpu {
namespace avx2 {

// Entry of the lattice-disk table: the offset o as floats (loaded with one 16-byte load) and the distance in
// bytes from a pixel's offsets to its reference's in the channels-last image, 8 (o_0 W + o_1). (Byte
// offsets throughout the per-pair loop save the address arithmetic of indices.)
struct alignas(16) DiskEntry2d {
  float o[2];
  int64_t step;
};

// One float32 image, channels-last: offset channel c of pixel p at r[2 p + c].
struct Image2d {
  const float* r;
  int32_t width;
  int32_t margin;
  uint32_t extent0, extent1;  // anchor range per axis: size - 2 * margin
  const DiskEntry2d* disk;
  uint32_t disk_size;
};

// The kernels index elements, the table in bytes and the pairs of a group (8 R) with 32-bit integers.
inline bool fits_2d(const Grid<2>& g, uint32_t num_references) {
  return 2 * g.channel_stride < (int64_t{1} << 31) && g.disk_size < (uint32_t{1} << 27) &&
         num_references < (uint32_t{1} << 26);
}

// Two floats as the low half of a vector, and back, through memcpy: GCC's _mm_load_sd / _mm_store_sd
// dereference a double*, which must not alias floats; memcpy compiles to the same single vmovsd.
CF_TARGET_AVX2 CF_ALWAYS_INLINE __m128 load2(const float* p) {
  double bits;
  std::memcpy(&bits, p, sizeof(bits));
  return _mm_castpd_ps(_mm_set_sd(bits));
}
CF_TARGET_AVX2 CF_ALWAYS_INLINE void store2(float* p, __m128 v) {
  const double bits = _mm_cvtsd_f64(_mm_castps_pd(v));
  std::memcpy(p, &bits, sizeof(bits));
}

using ::cellulus_fast::cpu::mulhi_epu32;
using ::cellulus_fast::cpu::philox8;
using ::cellulus_fast::cpu::philox_keys;
using ::cellulus_fast::cpu::PhiloxKeys;

// Philox words of the counters (c0[lane], c1, c2, c3).
CF_TARGET_AVX2 CF_ALWAYS_INLINE void philox8(const PhiloxKeys& keys, __m256i c0, uint32_t c1, uint32_t c2,
                                             uint32_t c3, __m256i* w) {
  philox8(keys, c0, _mm256_set1_epi32(static_cast<int>(c1)), _mm256_set1_epi32(static_cast<int>(c2)),
          _mm256_set1_epi32(static_cast<int>(c3)), w);
}

// exp_poly of cpu_math.h for x <= 0, 8 lanes (same clamping, reduction and polynomial).
CF_TARGET_AVX2 CF_ALWAYS_INLINE __m256 exp8_nonpositive(__m256 x) {
  x = _mm256_max_ps(_mm256_set1_ps(-87.0f), x);  // this operand order keeps a NaN x (maxps returns x then)
  const __m256 round = _mm256_set1_ps(12582912.0f);
  const __m256 t = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), round);
  const __m256 n = _mm256_sub_ps(t, round);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  // bits(t) = bits(round) + n, so the scale 2^n has exponent field n + 127.
  const __m256i scale = _mm256_slli_epi32(
      _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(0x4B400000 - 127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(scale));
}

// -expm1(x) for x <= 0 given e = exp8_nonpositive(x), 8 lanes: expm1_nonpositive of cpu_math.h (the same
// polynomial and switch point, so the lanes equal the blocked kernels' scalar code up to FMA contraction).
CF_TARGET_AVX2 CF_ALWAYS_INLINE __m256 minus_expm1_8(__m256 x, __m256 e) {
  __m256 p = _mm256_set1_ps(1.0f / 40320.0f);
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(1.0f / 5040.0f));
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(1.0f / 720.0f));
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(1.0f / 120.0f));
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(1.0f / 24.0f));
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(1.0f / 6.0f));
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(0.5f));
  const __m256 small = _mm256_fmadd_ps(_mm256_mul_ps(p, x), x, x);  // expm1(x) for |x| < 0.5
  const __m256 one = _mm256_set1_ps(1.0f);
  // x > -0.5 is false for NaN (ordered compare), which then takes 1 - e = NaN.
  const __m256 use_small = _mm256_cmp_ps(x, _mm256_set1_ps(-::cellulus_fast::cpu::kExpm1SwitchF), _CMP_GT_OQ);
  return _mm256_blendv_ps(_mm256_sub_ps(one, e), _mm256_sub_ps(_mm256_setzero_ps(), small), use_small);
}

// 8 (x, y) float pairs held interleaved in v0 (pairs 0-3) and v1 (pairs 4-7), as a vector of x and one of y.
CF_TARGET_AVX2 CF_ALWAYS_INLINE void deinterleave(__m256 v0, __m256 v1, __m256& x, __m256& y) {
  // shuffle_ps works per 128-bit half: lanes come out as 0 1 4 5 | 2 3 6 7; permute4x64 restores the order.
  x = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(v0, v1, 0x88)), 0xD8));
  y = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(v0, v1, 0xDD)), 0xD8));
}

// The same for the pairs stored at p (32-byte aligned).
CF_TARGET_AVX2 CF_ALWAYS_INLINE void deinterleave(const float* p, __m256& x, __m256& y) {
  deinterleave(_mm256_load_ps(p), _mm256_load_ps(p + 8), x, y);
}

// The inverse: x and y lanes 0..7 stored interleaved at p.
CF_TARGET_AVX2 CF_ALWAYS_INLINE void interleave(__m256 x, __m256 y, float* p) {
  const __m256 lo = _mm256_unpacklo_ps(x, y), hi = _mm256_unpackhi_ps(x, y);  // pairs 0 1 4 5, 2 3 6 7
  _mm256_store_ps(p, _mm256_permute2f128_ps(lo, hi, 0x20));
  _mm256_store_ps(p + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
}

// Anchors a0 .. a0 + 7 of image b (lanes past `n` repeat anchor a0 + n - 1 and are masked by the callers).
struct AnchorLanes {
  __m256i counter;  // anchor index (Philox counter c0)
  __m256 r0, r1;    // offsets
  __m256 valid;     // all-ones in lanes < n
  alignas(32) int32_t element[8];  // index of the pixel's first element in Image2d::r
};

CF_TARGET_AVX2 CF_ALWAYS_INLINE void load_anchors(const Image2d& im, const PhiloxKeys& keys, uint32_t b,
                                                  uint32_t a0, uint32_t n, AnchorLanes& a) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  a.counter = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(a0)),
                               _mm256_min_epu32(lane, _mm256_set1_epi32(static_cast<int>(n - 1))));
  a.valid = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), lane));
  __m256i w[4];
  philox8(keys, a.counter, b, 0u, kStreamAnchor, w);
  const __m256i margin = _mm256_set1_epi32(im.margin);
  const __m256i extent0 = _mm256_set1_epi32(static_cast<int>(im.extent0));
  const __m256i extent1 = _mm256_set1_epi32(static_cast<int>(im.extent1));
  const __m256i y = _mm256_add_epi32(margin, mulhi_epu32(w[0], extent0));  // anchor_from_words
  const __m256i x = _mm256_add_epi32(margin, mulhi_epu32(w[1], extent1));
  const __m256i pixel = _mm256_add_epi32(_mm256_mullo_epi32(y, _mm256_set1_epi32(im.width)), x);
  _mm256_store_si256(reinterpret_cast<__m256i*>(a.element), _mm256_add_epi32(pixel, pixel));
  // Two 8-byte loads per 128-bit half, no store-and-reload.
  __m128 q[4];
  for (int h = 0; h < 4; ++h) {
    const __m64* high = reinterpret_cast<const __m64*>(im.r + a.element[2 * h + 1]);
    q[h] = _mm_loadh_pi(load2(im.r + a.element[2 * h]), high);
  }
  deinterleave(_mm256_set_m128(q[1], q[0]), _mm256_set_m128(q[3], q[2]), a.r0, a.r1);
}

// Scratch of one group: pair (reference k, lane l) at position t = 8 k + l.
struct PairBlock {
  uint32_t* index;   // 8 R_4 byte offsets of table entries (R_4: R rounded up to a multiple of 4)
  float* shifted;    // 16 R: r_j + o, interleaved
  int64_t* element;  // 8 R: byte offset of r_j in the image (gradient passes only)
};

// Floats of scratch for R references (pair_block aligns it to 32 bytes).
inline size_t pair_block_floats(uint32_t R) { return 8 * static_cast<size_t>((R + 3) / 4 * 4) + 32 * R + 8; }

inline PairBlock pair_block(float* buffer, uint32_t R) {
  float* base = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(buffer) + 31) & ~uintptr_t{31});
  PairBlock pb;
  pb.index = reinterpret_cast<uint32_t*>(base);
  pb.shifted = base + 8 * static_cast<size_t>((R + 3) / 4 * 4);
  pb.element = reinterpret_cast<int64_t*>(pb.shifted + 16 * static_cast<size_t>(R));
  return pb;
}

// Steps 1 and 2 for the R references of the anchor lanes `a`.
template <bool kElements>
CF_TARGET_AVX2 CF_ALWAYS_INLINE void load_pairs(const Image2d& im, const PhiloxKeys& keys, uint32_t b,
                                                const AnchorLanes& a, uint32_t R, const PairBlock& pb) {
  const __m256i size = _mm256_set1_epi32(static_cast<int>(im.disk_size));
  for (uint32_t k0 = 0; k0 < R; k0 += 4) {
    __m256i w[4];
    philox8(keys, a.counter, b, k0 / 4, kStreamReference, w);
    for (uint32_t k = 0; k < 4; ++k) {
      const __m256i entry = _mm256_slli_epi32(mulhi_epu32(w[k], size), 4);  // byte offset of the table entry
      _mm256_store_si256(reinterpret_cast<__m256i*>(pb.index + 8 * (k0 + k)), entry);
    }
  }
  // Locals, so that the compiler need not reload them after every store through pb.
  const char* __restrict r = reinterpret_cast<const char*>(im.r);
  const char* __restrict disk = reinterpret_cast<const char*>(im.disk);
  const uint32_t* __restrict index = pb.index;
  float* __restrict shifted = pb.shifted;
  int64_t* __restrict element = pb.element;
  int64_t anchor[8];  // byte offsets of the anchors' offsets
  for (int l = 0; l < 8; ++l) anchor[l] = int64_t{4} * a.element[l];
  for (uint32_t t = 0; t < 8 * R; t += 8) {
    for (int l = 0; l < 8; ++l) {
      const char* entry = disk + index[t + l];
      const int64_t j = anchor[l] + reinterpret_cast<const DiskEntry2d*>(entry)->step;
      const __m128 r_j = load2(reinterpret_cast<const float*>(r + j));
      const __m128 o = _mm_load_ps(reinterpret_cast<const float*>(entry));
      store2(shifted + 2 * (t + l), _mm_add_ps(r_j, o));
      if (kElements) element[t + l] = j;
    }
  }
}

// e_i - e_j = r_i - (r_j + o) of the 8 pairs of reference k, and its squared norm.
struct PairLanes {
  __m256 d0, d1, sq;
};

CF_TARGET_AVX2 CF_ALWAYS_INLINE PairLanes pair_lanes(const AnchorLanes& a, const PairBlock& pb, uint32_t k) {
  __m256 s0, s1;
  deinterleave(pb.shifted + 16 * k, s0, s1);
  PairLanes q;
  q.d0 = _mm256_sub_ps(a.r0, s0);
  q.d1 = _mm256_sub_ps(a.r1, s1);
  q.sq = _mm256_fmadd_ps(q.d1, q.d1, _mm256_mul_ps(q.d0, q.d0));
  return q;
}

CF_TARGET_AVX2 CF_ALWAYS_INLINE __m256 norm8(__m256 r0, __m256 r1) {
  return _mm256_sqrt_ps(_mm256_fmadd_ps(r1, r1, _mm256_mul_ps(r0, r0)));
}

// Adds the 8 float lanes of v to the two double accumulators (lanes 0-3, 4-7).
CF_TARGET_AVX2 CF_ALWAYS_INLINE void accumulate(__m256 v, __m256d& lo, __m256d& hi) {
  lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
  hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
}

// One pass over anchors [a_begin, a_end) of image b: with kLoss it returns their loss (pair terms and
// regulariser, as anchor_loss summed), with kGrad it adds the gradient of `scale` x that loss to `grad`
// (channels-last, like im.r), as anchor_gradient does per anchor. The loss is summed in the same order
// whatever kGrad, and the gradient likewise whatever kLoss, so the one-pass loss-and-gradient of
// oce_loss_and_grad equals the forward's loss and the backward's gradient bit for bit.
template <int kNonlinearity, bool kDetach, bool kLoss, bool kGrad>
CF_TARGET_AVX2 CF_ALWAYS_INLINE double anchors_impl(const Image2d& im, const LossParams& p, uint32_t b,
                                                    uint32_t a_begin, uint32_t a_end, float scale, float* grad,
                                                    float* buffer) {
  // Pair values are summed in float over at most kFlush references of a lane, then in double.
  constexpr uint32_t kFlush = 32;
  const __m256 minus_inv_tau = _mm256_set1_ps(-static_cast<float>(p.inv_tau));
  const __m256 one = _mm256_set1_ps(1.0f);
  // d sigma / d sq times 2 scale (d sq / d diff = 2 diff).
  const __m256 slope_scale = _mm256_set1_ps(2.0f * scale * static_cast<float>(p.inv_tau));
  const __m256 reg_scale = _mm256_set1_ps(scale * static_cast<float>(p.lambda_reg) *
                                          static_cast<float>(p.num_references));
  PhiloxKeys keys;
  philox_keys(p.seed, keys);
  __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
  __m256d reg_lo = _mm256_setzero_pd(), reg_hi = _mm256_setzero_pd();
  AnchorLanes a;
  const PairBlock pb = pair_block(buffer, p.num_references);
  float* g = pb.shifted;  // r_j + o of pair k, once used, is overwritten by its gradient w.r.t. r_i
  alignas(32) float g_anchor[16];
  for (uint32_t a0 = a_begin; a0 < a_end; a0 += 8) {
    const uint32_t n = a_end - a0 < 8 ? a_end - a0 : 8;
    load_anchors(im, keys, b, a0, n, a);
    const __m256 norm = norm8(a.r0, a.r1);
    if (kLoss) accumulate(_mm256_and_ps(norm, a.valid), reg_lo, reg_hi);
    __m256 grad_i0 = _mm256_setzero_ps(), grad_i1 = _mm256_setzero_ps();
    if (kGrad) {
      // d||r|| / dr = r / ||r||; the subgradient 0 is used at r = 0.
      const __m256 reg = _mm256_and_ps(_mm256_div_ps(reg_scale, norm),
                                       _mm256_cmp_ps(norm, _mm256_setzero_ps(), _CMP_GT_OQ));
      grad_i0 = _mm256_mul_ps(reg, a.r0);
      grad_i1 = _mm256_mul_ps(reg, a.r1);
    }
    load_pairs<kGrad && !kDetach>(im, keys, b, a, p.num_references, pb);
    for (uint32_t k0 = 0; k0 < p.num_references; k0 += kFlush) {
      const uint32_t k_end = p.num_references - k0 < kFlush ? p.num_references : k0 + kFlush;
      __m256 sum = _mm256_setzero_ps();
      for (uint32_t k = k0; k < k_end; ++k) {
        const PairLanes q = pair_lanes(a, pb, k);
        const __m256 x = _mm256_mul_ps(q.sq, minus_inv_tau);
        const __m256 e = exp8_nonpositive(x);
        // e is p 2^n (exp8_nonpositive), an exact product: whether the compiler contracts 1 + e or 1 - e into
        // an FMA (which may differ between instantiations, with e's other uses) does not change the loss.
        __m256 value, slope;
        if (kNonlinearity == kSigmoid) {
          value = _mm256_div_ps(one, _mm256_add_ps(one, e));
          slope = _mm256_mul_ps(e, _mm256_mul_ps(value, value));  // s (1 - s) = e s^2, no cancellation
        } else {
          value = kLoss ? minus_expm1_8(x, e) : e;  // (unused without kLoss)
          slope = e;
        }
        if (kLoss) sum = _mm256_add_ps(sum, value);
        if (kGrad) {
          const __m256 w = _mm256_and_ps(_mm256_mul_ps(slope, slope_scale), a.valid);
          const __m256 d0 = _mm256_mul_ps(w, q.d0), d1 = _mm256_mul_ps(w, q.d1);
          grad_i0 = _mm256_add_ps(grad_i0, d0);
          grad_i1 = _mm256_add_ps(grad_i1, d1);
          if (!kDetach) interleave(d0, d1, g + 16 * k);
        }
      }
      if (kLoss) accumulate(_mm256_and_ps(sum, a.valid), lo, hi);
    }
    if (!kGrad) continue;
    if (!kDetach) {
      // Pair by pair (masked lanes hold zeros), so two pairs with the same reference both count. The
      // restrict pointers tell the compiler that the gradient does not overlap the scratch it reads.
      char* __restrict base = reinterpret_cast<char*>(grad);
      const float* __restrict pair = g;
      const int64_t* __restrict element = pb.element;
      const uint32_t pairs = 8 * p.num_references;  // a local: the stores below could alias p for all GCC knows
      for (uint32_t t = 0; t < pairs; ++t) {
        // Both channels of grad_j in one 8-byte access (grad has the layout of im.r).
        float* grad_j = reinterpret_cast<float*>(base + element[t]);
        store2(grad_j, _mm_sub_ps(load2(grad_j), load2(pair + 2 * t)));
      }
    }
    interleave(grad_i0, grad_i1, g_anchor);
    for (uint32_t l = 0; l < n; ++l) {
      float* grad_i = grad + a.element[l];
      grad_i[0] += g_anchor[2 * l];
      grad_i[1] += g_anchor[2 * l + 1];
    }
  }
  if (!kLoss) return 0.0;
  alignas(32) double sum[4], reg[4];
  _mm256_store_pd(sum, _mm256_add_pd(lo, hi));
  _mm256_store_pd(reg, _mm256_add_pd(reg_lo, reg_hi));
  const double pairs = (sum[0] + sum[1]) + (sum[2] + sum[3]);
  const double norms = (reg[0] + reg[1]) + (reg[2] + reg[3]);
  return pairs + p.lambda_reg * p.num_references * norms;
}

// The loss of anchors [a_begin, a_end) of image b. `buffer`: pair_block_floats(R) floats of scratch.
CF_TARGET_AVX2 inline double forward_anchors(const Image2d& im, const LossParams& p, uint32_t b,
                                             uint32_t a_begin, uint32_t a_end, float* buffer) {
  if (p.nonlinearity == kSigmoid) {
    return anchors_impl<kSigmoid, false, true, false>(im, p, b, a_begin, a_end, 0.0f, nullptr, buffer);
  }
  return anchors_impl<kGaussian, false, true, false>(im, p, b, a_begin, a_end, 0.0f, nullptr, buffer);
}

template <bool kLoss, bool kDetach>
CF_TARGET_AVX2 inline double gradient_anchors_impl(const Image2d& im, const LossParams& p, uint32_t b,
                                                   uint32_t a_begin, uint32_t a_end, float scale, float* grad,
                                                   float* buffer) {
  if (p.nonlinearity == kSigmoid) {
    return anchors_impl<kSigmoid, kDetach, kLoss, true>(im, p, b, a_begin, a_end, scale, grad, buffer);
  }
  return anchors_impl<kGaussian, kDetach, kLoss, true>(im, p, b, a_begin, a_end, scale, grad, buffer);
}

// Adds the gradient of `scale` x (loss of anchors [a_begin, a_end) of image b) to `grad`; with `with_loss`
// also returns that loss (as forward_anchors would), else 0. `buffer`: pair_block_floats(R) floats.
CF_TARGET_AVX2 inline double gradient_anchors(const Image2d& im, const LossParams& p, uint32_t b,
                                              uint32_t a_begin, uint32_t a_end, float scale, float* grad,
                                              float* buffer, bool with_loss) {
  if (with_loss) {
    if (p.detach_reference) return gradient_anchors_impl<true, true>(im, p, b, a_begin, a_end, scale, grad, buffer);
    return gradient_anchors_impl<true, false>(im, p, b, a_begin, a_end, scale, grad, buffer);
  }
  if (p.detach_reference) return gradient_anchors_impl<false, true>(im, p, b, a_begin, a_end, scale, grad, buffer);
  return gradient_anchors_impl<false, false>(im, p, b, a_begin, a_end, scale, grad, buffer);
}

}  // namespace avx2
}  // namespace cpu
}  // namespace oce
}  // namespace cellulus_fast
