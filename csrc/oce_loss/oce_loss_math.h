// Per-pair math of the fused OCE loss, shared by the CPU and CUDA kernels (and the C++ unit tests).
//
// Pair p = (anchor a, reference k) of image b is generated from Philox keyed by the seed, so forward,
// backward and `sample_pairs` regenerate exactly the same pairs on any device and thread layout:
//   anchor a    : counter (a, b, 0, kStreamAnchor)          -> one coordinate per spatial dim
//   reference k : counter (a, b, k, kStreamReference + 4*t) -> candidate offset, attempt t
// Reference offsets are drawn uniformly among the integer lattice offsets o with 0 < ||o||_2 <= kappa by
// rejection from the cube [-m, m]^D, m = floor(kappa).
#pragma once

#include <cmath>
#include <cstdint>

#include "../common/macros.h"
#include "../common/philox.h"

namespace cellulus_fast {
namespace oce {

constexpr int kMaxDims = 3;
constexpr uint32_t kStreamAnchor = 0;
constexpr uint32_t kStreamReference = 1;
// After this many rejected candidates the offset falls back to (1, 0, ...). The acceptance rate is at
// least 6/27 (3-D, kappa = 1), so the fallback has probability < 1e-7 there and < 1e-16 at kappa = 10.
constexpr int kMaxAttempts = 64;

enum Nonlinearity : int { kSigmoid = 0, kGaussian = 1 };

// Geometry of one image of the (B, D, *spatial) offset tensor.
template <int D>
struct Grid {
  int64_t size[D];     // spatial extent per axis
  int64_t stride[D];   // element stride per spatial axis (contiguous layout)
  int64_t channel_stride;  // = number of pixels
  int margin;          // floor(kappa): anchors lie in [margin, size - margin)
  float kappa_sq;
};

template <int D>
CF_HD void sample_anchor(uint64_t seed, uint32_t image, uint32_t anchor, const Grid<D>& g, int64_t* coord) {
  const Words4 r = philox4x32_10(seed, anchor, image, 0u, kStreamAnchor);
  for (int d = 0; d < D; ++d) {
    const uint32_t extent = static_cast<uint32_t>(g.size[d] - 2 * g.margin);
    coord[d] = g.margin + static_cast<int64_t>(uniform_below(r.v[d], extent));
  }
}

template <int D>
CF_HD void sample_offset(uint64_t seed, uint32_t image, uint32_t anchor, uint32_t ref, const Grid<D>& g,
                         int* offset) {
  const uint32_t width = static_cast<uint32_t>(2 * g.margin + 1);
  for (int attempt = 0; attempt < kMaxAttempts; ++attempt) {
    const Words4 r = philox4x32_10(seed, anchor, image, ref, kStreamReference + 4u * attempt);
    int sq = 0;
    for (int d = 0; d < D; ++d) {
      offset[d] = static_cast<int>(uniform_below(r.v[d], width)) - g.margin;
      sq += offset[d] * offset[d];
    }
    if (sq > 0 && static_cast<float>(sq) <= g.kappa_sq) return;
  }
  for (int d = 0; d < D; ++d) offset[d] = d == 0 ? 1 : 0;
}

CF_HD float exp_(float x) { return expf(x); }
CF_HD double exp_(double x) { return exp(x); }
CF_HD float expm1_(float x) { return expm1f(x); }
CF_HD double expm1_(double x) { return expm1(x); }
CF_HD float sqrt_(float x) { return sqrtf(x); }
CF_HD double sqrt_(double x) { return sqrt(x); }

template <int D>
CF_HD int64_t pixel_index(const Grid<D>& g, const int64_t* coord) {
  int64_t index = 0;
  for (int d = 0; d < D; ++d) index += coord[d] * g.stride[d];
  return index;
}

// sigma(sq) for sq = ||e_i - e_j||^2.
template <typename T>
CF_HD T pair_value(T sq, T inv_tau, int nonlinearity) {
  if (nonlinearity == kSigmoid) return T(1) / (T(1) + exp_(-sq * inv_tau));
  return -expm1_(-sq * inv_tau);
}

// d sigma / d sq.
template <typename T>
CF_HD T pair_slope(T sq, T inv_tau, int nonlinearity) {
  if (nonlinearity == kSigmoid) {
    const T s = T(1) / (T(1) + exp_(-sq * inv_tau));
    return s * (T(1) - s) * inv_tau;
  }
  return exp_(-sq * inv_tau) * inv_tau;
}

// Loads the D offset channels of pixel `index` of one image.
template <int D, typename T>
CF_HD void load_offset(const T* image, const Grid<D>& g, int64_t index, T* r) {
  for (int c = 0; c < D; ++c) r[c] = image[c * g.channel_stride + index];
}

// e_i - e_j = (x_i + r_i) - (x_j + r_j) = r_i - r_j - o with o = x_j - x_i. Writes it to `diff`,
// returns its squared norm.
template <int D, typename T>
CF_HD T embedding_difference(const T* r_i, const T* r_j, const int* o, T* diff) {
  T sq = T(0);
  for (int c = 0; c < D; ++c) {
    diff[c] = (r_i[c] - r_j[c]) - static_cast<T>(o[c]);
    sq += diff[c] * diff[c];
  }
  return sq;
}

template <int D, typename T>
CF_HD T norm(const T* r) {
  T sq = T(0);
  for (int c = 0; c < D; ++c) sq += r[c] * r[c];
  return sqrt_(sq);
}

struct LossParams {
  double inv_tau;
  double lambda_reg;
  int nonlinearity;
  bool detach_reference;
  uint64_t seed;
  uint32_t num_anchors;
  uint32_t num_references;
};

// Loss of all references of one anchor (pair terms plus num_references regulariser terms), in double.
template <int D, typename T>
CF_HD double anchor_loss(const T* image, const Grid<D>& g, const LossParams& p, uint32_t b, uint32_t a) {
  int64_t xi[D];
  sample_anchor<D>(p.seed, b, a, g, xi);
  const int64_t i = pixel_index<D>(g, xi);
  T r_i[D];
  load_offset<D, T>(image, g, i, r_i);
  double total = p.lambda_reg * static_cast<double>(norm<D, T>(r_i)) * p.num_references;
  for (uint32_t k = 0; k < p.num_references; ++k) {
    int o[D];
    sample_offset<D>(p.seed, b, a, k, g, o);
    int64_t j = i;
    for (int d = 0; d < D; ++d) j += o[d] * g.stride[d];
    T r_j[D], diff[D];
    load_offset<D, T>(image, g, j, r_j);
    const T sq = embedding_difference<D, T>(r_i, r_j, o, diff);
    total += static_cast<double>(pair_value<T>(sq, static_cast<T>(p.inv_tau), p.nonlinearity));
  }
  return total;
}

// Gradient of `scale` x (loss of one anchor) w.r.t. the offsets, handed to `add(index, channel, value)`
// (a plain add on the CPU, an atomic add on the GPU).
template <int D, typename T, typename Add>
CF_HD void anchor_gradient(const T* image, const Grid<D>& g, const LossParams& p, uint32_t b, uint32_t a,
                           T scale, Add add) {
  int64_t xi[D];
  sample_anchor<D>(p.seed, b, a, g, xi);
  const int64_t i = pixel_index<D>(g, xi);
  T r_i[D], grad_i[D];
  load_offset<D, T>(image, g, i, r_i);
  const T n = norm<D, T>(r_i);
  // d||r|| / dr = r / ||r||; the subgradient 0 is used at r = 0.
  const T reg = n > T(0) ? scale * static_cast<T>(p.lambda_reg) * static_cast<T>(p.num_references) / n : T(0);
  for (int c = 0; c < D; ++c) grad_i[c] = reg * r_i[c];
  for (uint32_t k = 0; k < p.num_references; ++k) {
    int o[D];
    sample_offset<D>(p.seed, b, a, k, g, o);
    int64_t j = i;
    for (int d = 0; d < D; ++d) j += o[d] * g.stride[d];
    T r_j[D], diff[D];
    load_offset<D, T>(image, g, j, r_j);
    const T sq = embedding_difference<D, T>(r_i, r_j, o, diff);
    const T w = T(2) * scale * pair_slope<T>(sq, static_cast<T>(p.inv_tau), p.nonlinearity);
    for (int c = 0; c < D; ++c) {
      grad_i[c] += w * diff[c];
      if (!p.detach_reference) add(j, c, -w * diff[c]);
    }
  }
  for (int c = 0; c < D; ++c) add(i, c, grad_i[c]);
}

}  // namespace oce
}  // namespace cellulus_fast
