// Host-side set-up shared by the CPU and CUDA mean-shift kernels: checks and the uniform cell grid, built
// with device-agnostic ATen ops and the per-point kernels of each device (so it runs where the points are).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/argsort.h>
#include <ATen/ops/bincount.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <limits>
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
  at::Tensor start;   // (cells + 1,) int64; the points with a non-finite coordinate come after start[cells]
  at::Tensor stats;   // (3, N, D) float64 cell sums and bounding boxes (with_stats), else undefined
  double origin[3] = {0, 0, 0};
  double cell = 1.0;
  int64_t dims[3] = {1, 1, 1};
  int64_t cells = 1;

  template <int D>
  CellGrid<D> view() const {
    CellGrid<D> g;
    for (int d = 0; d < D; ++d) {
      g.origin[d] = origin[d];
      g.dims[d] = dims[d];
    }
    g.cell = cell;
    g.start = start.defined() ? start.data_ptr<int64_t>() : nullptr;
    if (stats.defined()) {
      const double* base = stats.data_ptr<double>();
      const int64_t n = stats.size(1) * stats.size(2);
      g.cell_sum = base;
      g.cell_lo = base + n;
      g.cell_hi = base + 2 * n;
    }
    return g;
  }
};

// Cells of side just above `bandwidth` (doubled while the grid would have far more cells than points) over
// the bounding box of the finite points. The device kernels do the per-point work: keys(points, grid) returns
// the (N,) int64 linear cell of each point (point_cell: the same double arithmetic as the neighbour search,
// on CPU and GPU alike); stats(grid) fills grid.stats (cell_stats), when `with_stats`.
template <typename Keys, typename Stats>
GridData build_grid(const at::Tensor& points, double bandwidth, bool with_stats, Keys keys, Stats stats) {
  const int64_t n = points.size(0), dims = points.size(1);
  GridData grid;
  const at::Tensor as_double = points.to(at::kDouble);
  at::Tensor lo = at::zeros({dims}, at::kDouble), hi = at::zeros({dims}, at::kDouble);
  if (n > 0) {
    const at::Tensor finite = as_double.isfinite().all(1, /*keepdim=*/true);
    const double inf = std::numeric_limits<double>::infinity();
    lo = std::get<0>(as_double.masked_fill(finite.logical_not(), inf).min(0)).cpu();
    hi = std::get<0>(as_double.masked_fill(finite.logical_not(), -inf).max(0)).cpu();
    if (!std::isfinite(lo.data_ptr<double>()[0])) lo.zero_(), hi.zero_();  // no finite point
  }
  for (int64_t d = 0; d < dims; ++d) {
    TORCH_CHECK_VALUE(std::isfinite(hi.data_ptr<double>()[d] - lo.data_ptr<double>()[d]),
                      "the points span more than the float64 range along axis ", d, " (from ",
                      lo.data_ptr<double>()[d], " to ", hi.data_ptr<double>()[d], "): rescale them");
  }
  grid.cell = bandwidth * (1.0 + 1e-6);  // a margin so rounding never puts a neighbour two cells away
  const double max_cells = std::max<double>(4.0 * static_cast<double>(n), 1 << 20);
  while (true) {
    double total = 1.0;
    for (int64_t d = 0; d < dims; ++d) {
      grid.origin[d] = lo.data_ptr<double>()[d];
      const double span = std::floor((hi.data_ptr<double>()[d] - grid.origin[d]) / grid.cell) + 1.0;
      grid.dims[d] = span <= max_cells ? static_cast<int64_t>(span) : 0;  // (0: too many, doubled below)
      total *= span;
    }
    if (total <= max_cells) break;
    grid.cell *= 2.0;
  }
  grid.cells = 1;
  for (int64_t d = 0; d < dims; ++d) grid.cells *= grid.dims[d];
  const at::Tensor linear = keys(points, grid);
  grid.order = at::argsort(linear, /*stable=*/true);
  grid.sorted = points.index_select(0, grid.order).contiguous();
  grid.start = at::cat({at::zeros({1}, linear.options()), at::bincount(linear, {}, grid.cells + 1).cumsum(0)})
                   .narrow(0, 0, grid.cells + 1)
                   .contiguous();
  if (with_stats) {
    grid.stats = at::empty({3, n, dims}, points.options().dtype(at::kDouble));
    stats(grid);
  }
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
