// CPU kernels of mean-shift: seeds in parallel (at::parallel_for), the greedy de-duplication of modes
// (sequential by nature), and nearest-centre assignment in parallel.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/ones.h>
#include <torch/library.h>

#include "mean_shift_setup.h"

namespace cellulus_fast {
namespace ms {
namespace {

// The per-point steps of build_grid on the CPU.
at::Tensor cell_keys_cpu(const at::Tensor& points, const GridData& grid) {
  const at::Tensor x = points.contiguous();
  const int64_t n = x.size(0);
  at::Tensor keys = at::empty({n}, x.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cell_keys_cpu", [&] {
    dispatch_dims(x.size(1), [&](auto dims) {
      constexpr int D = decltype(dims)::value;
      const CellGrid<D> g = grid.view<D>();
      const scalar_t* data = x.data_ptr<scalar_t>();
      int64_t* out = keys.data_ptr<int64_t>();
      at::parallel_for(0, n, 1 << 16, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) out[i] = point_cell<D, scalar_t>(g, data + i * D, grid.cells);
      });
    });
  });
  return keys;
}

void cell_stats_cpu(GridData& grid) {
  AT_DISPATCH_FLOATING_TYPES(grid.sorted.scalar_type(), "cell_stats_cpu", [&] {
    dispatch_dims(grid.sorted.size(1), [&](auto dims) {
      constexpr int D = decltype(dims)::value;
      const CellGrid<D> g = grid.view<D>();
      const scalar_t* sorted = grid.sorted.data_ptr<scalar_t>();
      double* sum = const_cast<double*>(g.cell_sum);
      double* lo = const_cast<double*>(g.cell_lo);
      double* hi = const_cast<double*>(g.cell_hi);
      at::parallel_for(0, grid.cells, 1 << 16, [&](int64_t begin, int64_t end) {
        for (int64_t c = begin; c < end; ++c) cell_stats<D, scalar_t>(sorted, g.start, c, sum, lo, hi);
      });
    });
  });
}

GridData grid_cpu(const at::Tensor& points, double bandwidth, bool with_stats = false) {
  return build_grid(points, bandwidth, with_stats, cell_keys_cpu, cell_stats_cpu);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mean_shift_modes_cpu(const at::Tensor& points_in,
                                                                    const at::Tensor& seeds_in, double bandwidth,
                                                                    int64_t max_iter) {
  check_modes_args(points_in, seeds_in, bandwidth, max_iter);
  const at::Tensor points = points_in.contiguous();
  at::Tensor modes = seeds_in.to(points.scalar_type()).contiguous().clone();
  const int64_t num_seeds = modes.size(0);
  at::Tensor counts = at::empty({num_seeds}, points.options().dtype(at::kLong));
  at::Tensor iterations = at::empty({num_seeds}, points.options().dtype(at::kLong));
  const GridData grid = grid_cpu(points, bandwidth, /*with_stats=*/true);
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "mean_shift_modes_cpu", [&] {
    dispatch_dims(points.size(1), [&](auto dims) {
      constexpr int D = decltype(dims)::value;
      const CellGrid<D> g = grid.view<D>();
      const scalar_t* sorted = grid.sorted.data_ptr<scalar_t>();
      scalar_t* mode = modes.data_ptr<scalar_t>();
      int64_t* count = counts.data_ptr<int64_t>();
      int64_t* iters = iterations.data_ptr<int64_t>();
      at::parallel_for(0, num_seeds, 16, [&](int64_t begin, int64_t end) {
        for (int64_t s = begin; s < end; ++s) {
          const SeedResult r = shift_seed<D, scalar_t>(sorted, g, bandwidth, max_iter, mode + s * D);
          count[s] = r.count;
          iters[s] = r.iterations;
        }
      });
    });
  });
  return {modes, counts, iterations};
}

// Centres sorted by decreasing priority; keeps a centre unless a kept, higher-priority centre lies within
// `bandwidth` of it (scikit-learn's post-processing).
at::Tensor mean_shift_dedup_cpu(const at::Tensor& centers_in, double bandwidth) {
  check_points(centers_in, "centers");
  check_bandwidth(bandwidth);
  const at::Tensor centers = centers_in.contiguous();
  const int64_t m = centers.size(0);
  at::Tensor keep = at::ones({m}, centers.options().dtype(at::kBool));
  const GridData grid = grid_cpu(centers, bandwidth);
  const double radius_sq = bandwidth * bandwidth;
  AT_DISPATCH_FLOATING_TYPES(centers.scalar_type(), "mean_shift_dedup_cpu", [&] {
    dispatch_dims(centers.size(1), [&](auto dims) {
      constexpr int D = decltype(dims)::value;
      const CellGrid<D> g = grid.view<D>();
      const scalar_t* sorted = grid.sorted.data_ptr<scalar_t>();
      const scalar_t* data = centers.data_ptr<scalar_t>();
      const int64_t* order = grid.order.data_ptr<int64_t>();
      bool* kept = keep.data_ptr<bool>();
      for (int64_t i = 0; i < m; ++i) {
        if (!kept[i]) continue;
        for_each_nearby<D, scalar_t>(g, data + i * D, [&](int64_t s) {
          if (order[s] != i && squared_distance<D, scalar_t, scalar_t>(sorted + s * D, data + i * D) <= radius_sq) {
            kept[order[s]] = false;
          }
        });
      }
    });
  });
  return keep;
}

at::Tensor nearest_center_cpu(const at::Tensor& points_in, const at::Tensor& centers_in, double bandwidth,
                              bool cluster_all) {
  check_nearest_args(points_in, centers_in, bandwidth);
  const at::Tensor points = points_in.contiguous();
  const at::Tensor centers = centers_in.to(points.scalar_type()).contiguous();
  const int64_t n = points.size(0), k = centers.size(0);
  at::Tensor labels = at::empty({n}, points.options().dtype(at::kLong));
  const GridData grid = grid_cpu(centers, bandwidth);
  const double radius_sq = bandwidth * bandwidth;
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "nearest_center_cpu", [&] {
    dispatch_dims(points.size(1), [&](auto dims) {
      constexpr int D = decltype(dims)::value;
      const CellGrid<D> g = grid.view<D>();
      const scalar_t* sorted = grid.sorted.data_ptr<scalar_t>();
      const scalar_t* all = centers.data_ptr<scalar_t>();
      const scalar_t* x = points.data_ptr<scalar_t>();
      const int64_t* order = grid.order.data_ptr<int64_t>();
      int64_t* out = labels.data_ptr<int64_t>();
      at::parallel_for(0, n, 256, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          out[i] = nearest_label<D, scalar_t>(x + i * D, sorted, order, g, all, k, radius_sq, cluster_all);
        }
      });
    });
  });
  return labels;
}

}  // namespace

TORCH_LIBRARY_IMPL(cellulus_fast, CPU, m) {
  m.impl("mean_shift_modes", &mean_shift_modes_cpu);
  m.impl("mean_shift_dedup", &mean_shift_dedup_cpu);
  m.impl("nearest_center", &nearest_center_cpu);
}

}  // namespace ms
}  // namespace cellulus_fast
