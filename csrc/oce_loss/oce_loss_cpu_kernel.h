// Blocked CPU kernels of the fused OCE loss (no torch here), instantiated by oce_loss_cpu.cpp once for the
// baseline ISA and once inside functions compiled for AVX2+FMA.
//
// Anchors are processed in blocks of about kPairsPerBlock pairs, in three passes over small arrays:
//   1. the Philox words of the block (anchor draws, then one draw per 4 references), across lanes;
//   2. per pair: disk index, reference pixel, e_i - e_j and its squared norm (gathers, scalar);
//   3. the nonlinearity with a polynomial exp (branch-free, vectorised), then the loss sum or the
//      gradient weights; the backward pass finally scatters the gradients (scalar).
// The offsets are read from a channels-last copy of the image (a pixel's D offsets adjacent), and the
// gradient is accumulated channels-last, so each gather / scatter touches one cache line.
// The pairs, and the per-pair math (oce_loss_math.h), are those of the generic kernels.
#pragma once

#include <cstdint>

#include "../common/cpu_math.h"
#include "oce_loss_math.h"

namespace cellulus_fast {
namespace oce {
namespace cpu {

using ::cellulus_fast::cpu::exp_poly;
using ::cellulus_fast::cpu::expm1_nonpositive;

constexpr int kLanes = ::cellulus_fast::cpu::kPhiloxLanes;  // Philox counters per vector step
constexpr uint32_t kPairsPerBlock = 256;  // pairs per block (anchors per block: kPairsPerBlock / R, >= 1)

inline uint32_t anchors_per_block(uint32_t num_references) {
  return num_references >= kPairsPerBlock ? 1u : kPairsPerBlock / num_references;
}

inline uint32_t round_up_lanes(uint32_t n) { return (n + kLanes - 1) / kLanes * kLanes; }

// Entry e of the lattice-disk table g.disk: the offset o as T, and the step from a pixel's first element
// to its reference's in the channels-last image, D (o . stride).
template <int D, typename T>
struct DiskEntry {
  T o[D];
  int64_t step;
};

// One image, channels-last: offset channel c of pixel p at r[p * D + c].
template <int D, typename T>
struct StagedImage {
  const T* r;
  Grid<D> g;
  const DiskEntry<D, T>* disk;  // g.disk_size entries
};

// Scratch arrays of one block; sizes for `nb` anchors per block and R references (see Scratch::size).
template <typename T>
struct Scratch {
  uint32_t* counter;      // round_up_lanes(nb * Q) Philox counters (c0 or c2 of the draw)
  uint32_t* counter2;     // same size
  uint32_t* words;        // 4 x round_up_lanes(nb * Q) words; Q = ceil(R / 4)
  int64_t* anchor;        // nb anchor pixel indices
  T* r_anchor;            // nb x D anchor offsets
  int64_t* reference;     // nb x R reference element offsets (pixel index x D)
  T* diff;                // D x (nb x R) e_i - e_j
  T* sq;                  // nb x R squared distances
  T* weight;              // nb x R pair values (forward) or gradient weights (backward)
};

// Draws the pairs of anchors a0 .. a0 + n - 1 of image b and fills the scratch arrays (diff and reference
// only when kGradient).
template <int D, typename T, bool kGradient, typename Isa>
CF_ALWAYS_INLINE void draw_block(const StagedImage<D, T>& im, const LossParams& p, uint32_t b, uint32_t a0,
                                 uint32_t n, const Scratch<T>& s) {
  const uint32_t R = p.num_references, Q = (R + 3) / 4;
  const size_t P = static_cast<size_t>(n) * R;
  // Anchor draws: counter (a, b, 0, kStreamAnchor).
  const uint32_t anchor_lanes = round_up_lanes(n);
  for (uint32_t l = 0; l < anchor_lanes; ++l) {
    s.counter[l] = a0 + l;
    s.counter2[l] = 0u;
  }
  Isa::philox(p.seed, s.counter, b, s.counter2, kStreamAnchor, anchor_lanes, s.words);
  for (uint32_t l = 0; l < n; ++l) {
    int64_t coord[D];
    anchor_from_words<D>(s.words + 4 * l, im.g, coord);
    const int64_t i = pixel_index<D>(im.g, coord);
    s.anchor[l] = i;
    for (int c = 0; c < D; ++c) s.r_anchor[l * D + c] = im.r[i * D + c];
  }
  // Reference draws: counter (a, b, q, kStreamReference) gives the words of references 4q .. 4q + 3, so the
  // words of anchor l are words[4 Q l .. 4 Q l + R).
  const uint32_t reference_lanes = round_up_lanes(n * Q);
  for (uint32_t l = 0, t = 0; l < n; ++l) {
    for (uint32_t q = 0; q < Q; ++q, ++t) {
      s.counter[t] = a0 + l;
      s.counter2[t] = q;
    }
  }
  for (uint32_t t = n * Q; t < reference_lanes; ++t) s.counter[t] = s.counter2[t] = 0u;
  Isa::philox(p.seed, s.counter, b, s.counter2, kStreamReference, reference_lanes, s.words);
  for (uint32_t l = 0; l < n; ++l) {
    const int64_t i = s.anchor[l] * D;  // element offsets from here on
    const T* r_i = s.r_anchor + l * D;
    const uint32_t* words = s.words + 4 * Q * l;
    T* sq = s.sq + static_cast<size_t>(l) * R;
    int64_t* reference = s.reference + static_cast<size_t>(l) * R;
    T* diff = s.diff + static_cast<size_t>(l) * R;
    for (uint32_t k = 0; k < R; ++k) {
      const DiskEntry<D, T>& entry = im.disk[disk_index<D>(im.g, words[k])];
      const int64_t j = i + entry.step;
      T d[D];
      sq[k] = embedding_difference<D, T>(r_i, im.r + j, entry.o, d);
      if (kGradient) {
        reference[k] = j;
        for (int c = 0; c < D; ++c) diff[c * P + k] = d[c];
      }
    }
  }
}

// Sum of the pair values sigma(sq[0 .. P)), in double (fixed order: 8 interleaved partial sums).
template <typename T>
CF_ALWAYS_INLINE double sum_pair_values(const T* sq, T* value, uint32_t P, T inv_tau, int nonlinearity) {
  if (nonlinearity == kSigmoid) {
    for (uint32_t q = 0; q < P; ++q) value[q] = sigmoid_from_exp<T>(exp_poly(-sq[q] * inv_tau));
  } else {
    // -expm1(-x), as the generic and CUDA kernels compute it (1 - exp(-x) loses all digits for small x).
    for (uint32_t q = 0; q < P; ++q) {
      const T x = -sq[q] * inv_tau;
      value[q] = -expm1_nonpositive(x, exp_poly(x));
    }
  }
  double partial[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  uint32_t q = 0;
  for (; q + 8 <= P; q += 8) {
    for (int l = 0; l < 8; ++l) partial[l] += static_cast<double>(value[q + l]);
  }
  for (int l = 0; q < P; ++q, ++l) partial[l] += static_cast<double>(value[q]);
  return ((partial[0] + partial[1]) + (partial[2] + partial[3])) + ((partial[4] + partial[5]) + (partial[6] + partial[7]));
}

// Loss of anchors [a_begin, a_end) of image b (pair terms and regulariser), as anchor_loss summed.
template <int D, typename T, typename Isa>
CF_ALWAYS_INLINE double forward_anchors(const StagedImage<D, T>& im, const LossParams& p, uint32_t b,
                                        uint32_t a_begin, uint32_t a_end, const Scratch<T>& s) {
  const uint32_t R = p.num_references, nb = anchors_per_block(R);
  const T inv_tau = static_cast<T>(p.inv_tau);
  double total = 0.0;
  for (uint32_t a0 = a_begin; a0 < a_end; a0 += nb) {
    const uint32_t n = a_end - a0 < nb ? a_end - a0 : nb;
    draw_block<D, T, false, Isa>(im, p, b, a0, n, s);
    total += sum_pair_values<T>(s.sq, s.weight, n * R, inv_tau, p.nonlinearity);
    for (uint32_t l = 0; l < n; ++l) {
      total += p.lambda_reg * static_cast<double>(norm<D, T>(s.r_anchor + l * D)) * R;
    }
  }
  return total;
}

// Adds the gradient of `scale` x (loss of anchors [0, A) of image b) to `grad` (channels-last, like im.r),
// as anchor_gradient does per anchor.
template <int D, typename T, typename Isa>
CF_ALWAYS_INLINE void backward_image(const StagedImage<D, T>& im, const LossParams& p, uint32_t b, T scale,
                                     T* grad, const Scratch<T>& s) {
  const uint32_t R = p.num_references, nb = anchors_per_block(R);
  const T inv_tau = static_cast<T>(p.inv_tau), two_scale = T(2) * scale;
  const T reg_scale = scale * static_cast<T>(p.lambda_reg) * static_cast<T>(R);
  for (uint32_t a0 = 0; a0 < p.num_anchors; a0 += nb) {
    const uint32_t n = p.num_anchors - a0 < nb ? p.num_anchors - a0 : nb;
    const uint32_t P = n * R;
    draw_block<D, T, true, Isa>(im, p, b, a0, n, s);
    if (p.nonlinearity == kSigmoid) {
      for (uint32_t q = 0; q < P; ++q) {
        s.weight[q] = two_scale * pair_slope_from_exp<T>(exp_poly(-s.sq[q] * inv_tau), inv_tau, kSigmoid);
      }
    } else {
      for (uint32_t q = 0; q < P; ++q) {
        s.weight[q] = two_scale * pair_slope_from_exp<T>(exp_poly(-s.sq[q] * inv_tau), inv_tau, kGaussian);
      }
    }
    for (int c = 0; c < D; ++c) {
      T* diff = s.diff + c * P;
      for (uint32_t q = 0; q < P; ++q) diff[q] *= s.weight[q];  // now the gradient w.r.t. r_i of the pair
    }
    for (uint32_t l = 0; l < n; ++l) {
      const T* r_i = s.r_anchor + l * D;
      const T norm_i = norm<D, T>(r_i);
      // d||r|| / dr = r / ||r||; the subgradient 0 is used at r = 0.
      const T reg = norm_i > T(0) ? reg_scale / norm_i : T(0);
      T grad_i[D];
      for (int c = 0; c < D; ++c) grad_i[c] = reg * r_i[c];
      const T* g = s.diff + static_cast<size_t>(l) * R;
      const int64_t* reference = s.reference + static_cast<size_t>(l) * R;
      if (p.detach_reference) {
        for (uint32_t k = 0; k < R; ++k) {
          for (int c = 0; c < D; ++c) grad_i[c] += g[c * P + k];
        }
      } else {
        for (uint32_t k = 0; k < R; ++k) {
          T* grad_j = grad + reference[k];
          for (int c = 0; c < D; ++c) {
            grad_i[c] += g[c * P + k];
            grad_j[c] -= g[c * P + k];
          }
        }
      }
      T* grad_anchor = grad + s.anchor[l] * D;
      for (int c = 0; c < D; ++c) grad_anchor[c] += grad_i[c];
    }
  }
}

}  // namespace cpu
}  // namespace oce
}  // namespace cellulus_fast
