// Host-side set-up shared by the CPU and CUDA OCE-loss kernels: argument checks and kernel parameters.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <string>

#include "oce_loss_math.h"

namespace cellulus_fast {
namespace oce {

inline int parse_nonlinearity(c10::string_view name) {
  if (name == "sigmoid") return kSigmoid;
  if (name == "gaussian") return kGaussian;
  TORCH_CHECK_VALUE(false, "nonlinearity must be 'sigmoid' or 'gaussian', got '", std::string(name), "'");
  return kSigmoid;  // unreachable
}

inline bool parse_mean(c10::string_view reduction) {
  TORCH_CHECK_VALUE(reduction == "sum" || reduction == "mean", "reduction must be 'sum' or 'mean', got '",
                    std::string(reduction), "'");
  return reduction == "mean";
}

// Largest number of images, anchors per image or references per anchor (32-bit counters, kept signed).
constexpr int64_t kMaxCount = 2147483647;

// Positions whose kappa-disk lies inside the image (as a double: it may exceed any integer type's range).
inline double valid_positions(const at::Tensor& offsets, double kappa) {
  const int64_t margin = static_cast<int64_t>(std::floor(kappa));
  double valid = 1.0;
  for (int64_t d = 2; d < offsets.dim(); ++d) valid *= static_cast<double>(offsets.size(d) - 2 * margin);
  return valid;
}

// Checks (B, D, *spatial) with D spatial dims and every spatial size > 2 * floor(kappa).
inline void check_offsets(const at::Tensor& offsets, double density, double kappa, int64_t num_references) {
  TORCH_CHECK_VALUE(offsets.dim() == 4 || offsets.dim() == 5, "offsets must have shape (B, D, *spatial) with "
                    "2 or 3 spatial dims, got ", offsets.dim(), " dims");
  TORCH_CHECK_VALUE(offsets.size(1) == offsets.dim() - 2, "offsets must have D = number of spatial dims = ",
                    offsets.dim() - 2, " channels, got ", offsets.size(1));
  TORCH_CHECK_TYPE(offsets.scalar_type() == at::kFloat || offsets.scalar_type() == at::kDouble,
                   "offsets must be float32 or float64, got ", offsets.scalar_type());
  TORCH_CHECK_VALUE(density > 0.0 && density <= 1.0, "density must lie in (0, 1], got ", density);
  TORCH_CHECK_VALUE(kappa >= 1.0, "kappa must be >= 1, got ", kappa);
  TORCH_CHECK_VALUE(num_references >= 1, "num_references must be >= 1, got ", num_references);
  const int64_t margin = static_cast<int64_t>(std::floor(kappa));
  for (int64_t d = 2; d < offsets.dim(); ++d) {
    TORCH_CHECK_VALUE(offsets.size(d) > 2 * margin, "every spatial size of offsets must exceed 2 * kappa = ",
                      2 * margin, ", got ", offsets.sizes());
  }
  // The kernels number images, anchors and references with 32-bit Philox counters (LossParams).
  TORCH_CHECK_VALUE(num_references <= kMaxCount, "num_references must be <= 2^31 - 1, got ", num_references);
  TORCH_CHECK_VALUE(offsets.size(0) <= kMaxCount, "at most 2^31 - 1 images per batch, got ", offsets.size(0));
  const double anchors = std::floor(density * valid_positions(offsets, kappa));
  TORCH_CHECK_VALUE(anchors <= static_cast<double>(kMaxCount), "density x the anchor positions of an image gives ",
                    anchors, " anchors per image, more than the 2^31 - 1 supported: lower density or use smaller "
                    "images (offsets of shape ", offsets.sizes(), ")");
}

// Number of anchors per image: density x the positions whose kappa-disk lies inside the image, >= 1
// (<= kMaxCount once check_offsets passed).
inline int64_t num_anchors(const at::Tensor& offsets, double density, double kappa) {
  return std::max<int64_t>(1, static_cast<int64_t>(std::floor(density * valid_positions(offsets, kappa))));
}

// The lattice-disk table (see build_disk) as an int32 (M, D) CPU tensor. (The CUDA kernels build theirs on the
// GPU: see device_disk in oce_loss_cuda.cu.)
inline at::Tensor make_disk(double kappa, int dims) {
  const int64_t count = build_disk(kappa, dims, nullptr);
  at::Tensor disk = at::empty({count, dims}, at::TensorOptions().dtype(at::kInt));
  build_disk(kappa, dims, disk.data_ptr<int>());
  return disk;
}

// Kernel geometry of `offsets`; `disk` (from make_disk) must outlive the kernels using the result.
template <int D>
Grid<D> make_grid(const at::Tensor& offsets, double kappa, const at::Tensor& disk) {
  Grid<D> g;
  int64_t stride = 1;
  for (int d = D - 1; d >= 0; --d) {
    g.size[d] = offsets.size(d + 2);
    g.stride[d] = stride;
    stride *= g.size[d];
  }
  g.channel_stride = stride;
  g.margin = static_cast<int>(std::floor(kappa));
  g.disk = disk.data_ptr<int>();
  g.disk_size = static_cast<uint32_t>(disk.size(0));
  return g;
}

inline LossParams make_params(const at::Tensor& offsets, double density, double kappa, int64_t num_references,
                              double tau, double lambda_reg, c10::string_view nonlinearity,
                              bool detach_reference, int64_t seed) {
  check_offsets(offsets, density, kappa, num_references);
  TORCH_CHECK_VALUE(tau > 0.0, "tau must be > 0, got ", tau);
  TORCH_CHECK_VALUE(lambda_reg >= 0.0, "lambda_reg must be >= 0, got ", lambda_reg);
  LossParams p;
  p.inv_tau = 1.0 / tau;
  p.lambda_reg = lambda_reg;
  p.nonlinearity = parse_nonlinearity(nonlinearity);
  p.detach_reference = detach_reference;
  p.seed = static_cast<uint64_t>(seed);
  p.num_anchors = static_cast<uint32_t>(num_anchors(offsets, density, kappa));
  p.num_references = static_cast<uint32_t>(num_references);
  return p;
}

// Pairs in a batch of `batch` images, the divisor of reduction="mean".
inline double num_pairs(int64_t batch, const LossParams& p) {
  return static_cast<double>(batch) * p.num_anchors * p.num_references;
}

// Calls f(std::integral_constant<int, D>) for the number of spatial dims of `offsets`.
template <typename F>
void dispatch_dims(const at::Tensor& offsets, F f) {
  if (offsets.dim() == 4) {
    f(std::integral_constant<int, 2>());
  } else {
    f(std::integral_constant<int, 3>());
  }
}

}  // namespace oce
}  // namespace cellulus_fast
