// Per-pair math of the fused OCE loss, shared by the CPU and CUDA kernels (and the C++ unit tests).
//
// Pair p = (anchor a, reference k) of image b is generated from Philox keyed by the seed, so forward,
// backward and `sample_pairs` regenerate exactly the same pairs on any device and thread layout:
//   anchor a         : word d of counter (a, b, 0, kStreamAnchor) -> coordinate along axis d
//   references 4q..4q+3 : words 0..3 of counter (a, b, q, kStreamReference) -> index into the lattice disk
// The lattice disk is the table of all integer offsets o with 0 < ||o||_2 <= kappa in lexicographic order
// (build_disk); a uniform index into it makes the reference uniform over the disk without rejection.
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

enum Nonlinearity : int { kSigmoid = 0, kGaussian = 1 };

// Geometry of one image of the (B, D, *spatial) offset tensor and the reference-offset table.
template <int D>
struct Grid {
  int64_t size[D];         // spatial extent per axis
  int64_t stride[D];       // element stride per spatial axis (contiguous layout)
  int64_t channel_stride;  // = number of pixels
  int margin;              // floor(kappa): anchors lie in [margin, size - margin)
  const int* disk;         // (disk_size, D) lattice offsets, see build_disk
  uint32_t disk_size;
};

// Number of integer offsets o in Z^D with 0 < ||o||^2 <= kappa^2; writes them (row-major, lexicographic in
// (o_0, ..., o_{D-1})) to `out` when it is not null.
// Host and device code (the CUDA kernels build the table on the GPU, see oce_loss_cuda.cu).
CF_HD uint32_t build_disk(double kappa, int D, int* out) {
  const int m = static_cast<int>(floor(kappa));
  const int width = 2 * m + 1;
  int total = 1;
  for (int d = 0; d < D; ++d) total *= width;
  uint32_t count = 0;
  for (int flat = 0; flat < total; ++flat) {
    int o[kMaxDims];
    int rest = flat, sq = 0;
    for (int d = D - 1; d >= 0; --d) {
      o[d] = rest % width - m;
      rest /= width;
      sq += o[d] * o[d];
    }
    if (sq == 0 || static_cast<double>(sq) > kappa * kappa) continue;
    if (out) {
      for (int d = 0; d < D; ++d) out[count * D + d] = o[d];
    }
    ++count;
  }
  return count;
}

// Anchor coordinate from the words of its Philox draw (word d -> axis d).
template <int D>
CF_HD void anchor_from_words(const uint32_t* words, const Grid<D>& g, int64_t* coord) {
  for (int d = 0; d < D; ++d) {
    const uint32_t extent = static_cast<uint32_t>(g.size[d] - 2 * g.margin);
    coord[d] = g.margin + static_cast<int64_t>(uniform_below(words[d], extent));
  }
}

template <int D>
CF_HD void sample_anchor(uint64_t seed, uint32_t image, uint32_t anchor, const Grid<D>& g, int64_t* coord) {
  const Words4 r = philox4x32_10(seed, anchor, image, 0u, kStreamAnchor);
  anchor_from_words<D>(r.v, g, coord);
}

// Random words for references 4q .. 4q+3 of an anchor.
CF_HD Words4 reference_words(uint64_t seed, uint32_t image, uint32_t anchor, uint32_t q) {
  return philox4x32_10(seed, anchor, image, q, kStreamReference);
}

// Index into the lattice-disk table of a reference drawn with `word`.
template <int D>
CF_HD uint32_t disk_index(const Grid<D>& g, uint32_t word) {
  return uniform_below(word, g.disk_size);
}

template <int D>
CF_HD const int* offset_from_word(const Grid<D>& g, uint32_t word) {
  return g.disk + static_cast<int64_t>(disk_index<D>(g, word)) * D;
}

// Offset of reference k of an anchor (single draw; the loops below share one Philox call per 4 references).
template <int D>
CF_HD const int* sample_offset(uint64_t seed, uint32_t image, uint32_t anchor, uint32_t k, const Grid<D>& g) {
  return offset_from_word<D>(g, reference_words(seed, image, anchor, k >> 2).v[k & 3]);
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

// sigma and d sigma / d sq are functions of x = sq * inv_tau >= 0 and e = exp(-x):
//   sigmoid  sigma = 1 / (1 + e)   slope = e / (1 + e)^2 * inv_tau  (= s (1 - s), without the cancellation
//                                   of 1 - s, which is 0 in float once e < 2^-24, i.e. x > ~17)
//   gaussian sigma = -expm1(-x)    slope = e * inv_tau               (1 - e would lose all digits for small x)
// The CPU kernels evaluate exp (and expm1 for small x) with vectorisable polynomials (common/cpu_math.h) and
// pass them in; the generic and CUDA kernels use the library functions (pair_value / pair_slope below).
template <typename T>
CF_HD T sigmoid_from_exp(T e) {
  return T(1) / (T(1) + e);
}

template <typename T>
CF_HD T pair_slope_from_exp(T e, T inv_tau, int nonlinearity) {
  if (nonlinearity == kSigmoid) {
    const T s = T(1) / (T(1) + e);
    return e * s * s * inv_tau;
  }
  return e * inv_tau;
}

// sigma(sq) for sq = ||e_i - e_j||^2.
template <typename T>
CF_HD T pair_value(T sq, T inv_tau, int nonlinearity) {
  if (nonlinearity == kSigmoid) return sigmoid_from_exp<T>(exp_(-sq * inv_tau));
  return -expm1_(-sq * inv_tau);
}

// d sigma / d sq.
template <typename T>
CF_HD T pair_slope(T sq, T inv_tau, int nonlinearity) {
  return pair_slope_from_exp<T>(exp_(-sq * inv_tau), inv_tau, nonlinearity);
}

// Loads the D offset channels of pixel `index` of one image.
template <int D, typename T>
CF_HD void load_offset(const T* image, const Grid<D>& g, int64_t index, T* r) {
  for (int c = 0; c < D; ++c) r[c] = image[c * g.channel_stride + index];
}

// e_i - e_j = (x_i + r_i) - (x_j + r_j) = r_i - r_j - o with o = x_j - x_i (int, or already converted to
// T). Writes it to `diff`, returns its squared norm.
template <int D, typename T, typename O>
CF_HD T embedding_difference(const T* r_i, const T* r_j, const O* o, T* diff) {
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

// Visits the references of anchor pixel i (offset r_i) of image b: visit(j, diff, sq) with j the reference
// pixel, diff = e_i - e_j and sq = ||diff||^2.
template <int D, typename T, typename Visit>
CF_HD void for_each_reference(const T* image, const Grid<D>& g, const LossParams& p, uint32_t b, uint32_t a,
                              int64_t i, const T* r_i, Visit visit) {
  Words4 words;
  for (uint32_t k = 0; k < p.num_references; ++k) {
    if ((k & 3) == 0) words = reference_words(p.seed, b, a, k >> 2);
    const int* o = offset_from_word<D>(g, words.v[k & 3]);
    int64_t j = i;
    for (int d = 0; d < D; ++d) j += o[d] * g.stride[d];
    T r_j[D], diff[D];
    load_offset<D, T>(image, g, j, r_j);
    const T sq = embedding_difference<D, T>(r_i, r_j, o, diff);
    visit(j, diff, sq);
  }
}

// Loss of all references of one anchor (pair terms plus num_references regulariser terms), in double.
template <int D, typename T>
CF_HD double anchor_loss(const T* image, const Grid<D>& g, const LossParams& p, uint32_t b, uint32_t a) {
  int64_t xi[D];
  sample_anchor<D>(p.seed, b, a, g, xi);
  const int64_t i = pixel_index<D>(g, xi);
  T r_i[D];
  load_offset<D, T>(image, g, i, r_i);
  double total = p.lambda_reg * static_cast<double>(norm<D, T>(r_i)) * p.num_references;
  for_each_reference<D, T>(image, g, p, b, a, i, r_i, [&](int64_t, const T*, T sq) {
    total += static_cast<double>(pair_value<T>(sq, static_cast<T>(p.inv_tau), p.nonlinearity));
  });
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
  for_each_reference<D, T>(image, g, p, b, a, i, r_i, [&](int64_t j, const T* diff, T sq) {
    const T w = T(2) * scale * pair_slope<T>(sq, static_cast<T>(p.inv_tau), p.nonlinearity);
    for (int c = 0; c < D; ++c) {
      grad_i[c] += w * diff[c];
      if (!p.detach_reference) add(j, c, -w * diff[c]);
    }
  });
  for (int c = 0; c < D; ++c) add(i, c, grad_i[c]);
}

}  // namespace oce
}  // namespace cellulus_fast
