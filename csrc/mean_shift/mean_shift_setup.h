// Host-side set-up shared by the CPU and CUDA mean-shift kernels: checks and the uniform cell grid,
// built with device-agnostic ATen ops (so it runs where the points are).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/argsort.h>
#include <ATen/ops/bincount.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "mean_shift_math.h"

namespace cellulus_fast {
namespace ms {

inline void check_points(const at::Tensor& points, const char* name) {
  TORCH_CHECK_VALUE(points.dim() == 2 && (points.size(1) == 2 || points.size(1) == 3), name,
                    " must have shape (N, D) with D in {2, 3}, got ", points.sizes());
  TORCH_CHECK_TYPE(points.scalar_type() == at::kFloat || points.scalar_type() == at::kDouble, name,
                   " must be float32 or float64, got ", points.scalar_type());
}

inline void check_bandwidth(double bandwidth) {
  TORCH_CHECK_VALUE(std::isfinite(bandwidth) && bandwidth > 0.0, "bandwidth must be finite and > 0, got ",
                    bandwidth);
}

// Argument checks of mean_shift_modes (CPU and CUDA kernels).
inline void check_modes_args(const at::Tensor& points, const at::Tensor& seeds, double bandwidth,
                             int64_t max_iter) {
  check_points(points, "points");
  check_points(seeds, "seeds");
  check_bandwidth(bandwidth);
  TORCH_CHECK_VALUE(seeds.size(1) == points.size(1), "seeds and points must have the same D");
  TORCH_CHECK_VALUE(max_iter >= 0, "max_iter must be >= 0, got ", max_iter);
}

// Argument checks of nearest_center (CPU and CUDA kernels).
inline void check_nearest_args(const at::Tensor& points, const at::Tensor& centers, double bandwidth) {
  check_points(points, "points");
  check_points(centers, "centers");
  check_bandwidth(bandwidth);
  TORCH_CHECK_VALUE(centers.size(1) == points.size(1), "centers and points must have the same D");
  TORCH_CHECK_VALUE(centers.size(0) > 0, "centers must not be empty");
}

// Points sorted by cell (stable), the permutation, and the cell start offsets.
struct GridData {
  at::Tensor sorted;  // (N, D), dtype of the points
  at::Tensor order;   // (N,) int64: sorted[s] = points[order[s]]
  at::Tensor start;   // (cells + 1,) int64
  double origin[3] = {0, 0, 0};
  double cell = 1.0;
  int64_t dims[3] = {1, 1, 1};

  template <int D>
  CellGrid<D> view() const {
    CellGrid<D> g;
    for (int d = 0; d < D; ++d) {
      g.origin[d] = origin[d];
      g.dims[d] = dims[d];
    }
    g.cell = cell;
    g.start = start.data_ptr<int64_t>();
    return g;
  }
};

// Cells of side just above `bandwidth` (doubled while the grid would have far more cells than points).
inline GridData build_grid(const at::Tensor& points, double bandwidth) {
  const int64_t n = points.size(0), dims = points.size(1);
  GridData grid;
  const at::Tensor as_double = points.to(at::kDouble);
  at::Tensor lo, hi;
  if (n > 0) {
    lo = std::get<0>(as_double.min(0)).cpu();
    hi = std::get<0>(as_double.max(0)).cpu();
  } else {
    lo = hi = at::zeros({dims}, at::kDouble);
  }
  grid.cell = bandwidth * (1.0 + 1e-6);  // a margin so rounding never puts a neighbour two cells away
  const double max_cells = std::max<double>(4.0 * static_cast<double>(n), 1 << 20);
  while (true) {
    double total = 1.0;
    for (int64_t d = 0; d < dims; ++d) {
      grid.origin[d] = lo.data_ptr<double>()[d];
      grid.dims[d] = static_cast<int64_t>(std::floor((hi.data_ptr<double>()[d] - grid.origin[d]) / grid.cell)) + 1;
      total *= static_cast<double>(grid.dims[d]);
    }
    if (total <= max_cells) break;
    grid.cell *= 2.0;
  }
  at::Tensor linear = at::zeros({n}, points.options().dtype(at::kLong));
  for (int64_t d = 0; d < dims; ++d) {
    // The same double arithmetic as floor_to_int((x - origin) / cell) in the kernels.
    at::Tensor c = as_double.select(1, d).sub(grid.origin[d]).div(grid.cell).floor().to(at::kLong);
    linear = linear.mul(grid.dims[d]).add(c.clamp(0, grid.dims[d] - 1));
  }
  int64_t cells = 1;
  for (int64_t d = 0; d < dims; ++d) cells *= grid.dims[d];
  grid.order = at::argsort(linear, /*stable=*/true);
  grid.sorted = points.index_select(0, grid.order).contiguous();
  grid.start = at::cat({at::zeros({1}, linear.options()), at::bincount(linear, {}, cells).cumsum(0)});
  return grid;
}

template <typename F>
void dispatch_dims(int64_t dims, F f) {
  if (dims == 2) {
    f(std::integral_constant<int, 2>());
  } else {
    f(std::integral_constant<int, 3>());
  }
}

}  // namespace ms
}  // namespace cellulus_fast
