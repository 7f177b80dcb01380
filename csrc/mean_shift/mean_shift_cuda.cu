// CUDA kernels of mean-shift: one thread per seed (modes) and one per point (nearest centre), over the
// per-element math of mean_shift_math.h and the points sorted by grid cell. Every double operation of the
// distance tests and means is rounded as on the CPU (dadd / dmul: no FMA contraction), so the modes, and
// with them the merging of identical modes and the labels, equal the CPU kernels' bit for bit. The greedy de-duplication is
// sequential by nature and runs the CPU kernel on the (few) candidate centres.
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "mean_shift_setup.h"

namespace cellulus_fast {
namespace ms {
namespace {

constexpr int kThreads = 128;

int64_t blocks_for(int64_t work) { return std::max<int64_t>(1, (work + kThreads - 1) / kThreads); }

template <int D, typename T>
__global__ void keys_kernel(const T* __restrict__ points, int64_t n, CellGrid<D> g, int64_t cells,
                            int64_t* __restrict__ keys) {
  const int64_t i = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  if (i < n) keys[i] = point_cell<D, T>(g, points + i * D, cells);
}

template <int D, typename T>
__global__ void stats_kernel(const T* __restrict__ sorted, CellGrid<D> g, int64_t cells, double* sum, double* lo,
                             double* hi) {
  const int64_t c = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  if (c < cells) cell_stats<D, T>(sorted, g.start, c, sum, lo, hi);
}

// The per-point steps of build_grid on the GPU: the same functions of mean_shift_math.h as on the CPU (cell
// keys in double, no ATen division, which CUDA computes as a multiplication by the reciprocal).
at::Tensor cell_keys_cuda(const at::Tensor& points, const GridData& grid) {
  const at::Tensor x = points.contiguous();
  const int64_t n = x.size(0);
  at::Tensor keys = at::empty({n}, x.options().dtype(at::kLong));
  if (n == 0) return keys;
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cell_keys_cuda", [&] {
    dispatch_dims(x.size(1), [&](auto dims) {
      constexpr int D = decltype(dims)::value;
      const CellGrid<D> g = grid.view<D>();  // (start not built yet: not read)
      keys_kernel<D, scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(x.data_ptr<scalar_t>(), n, g, grid.cells,
                                                                        keys.data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return keys;
}

void cell_stats_cuda(GridData& grid) {
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(grid.sorted.scalar_type(), "cell_stats_cuda", [&] {
    dispatch_dims(grid.sorted.size(1), [&](auto dims) {
      constexpr int D = decltype(dims)::value;
      const CellGrid<D> g = grid.view<D>();
      stats_kernel<D, scalar_t><<<blocks_for(grid.cells), kThreads, 0, stream>>>(
          grid.sorted.data_ptr<scalar_t>(), g, grid.cells, const_cast<double*>(g.cell_sum),
          const_cast<double*>(g.cell_lo), const_cast<double*>(g.cell_hi));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

GridData grid_cuda(const at::Tensor& points, double bandwidth, bool with_stats = false) {
  return build_grid(points, bandwidth, with_stats, cell_keys_cuda, cell_stats_cuda);
}

template <int D, typename T>
__global__ void modes_kernel(const T* __restrict__ sorted, CellGrid<D> g, double bandwidth, int64_t max_iter,
                             int64_t num_seeds, T* __restrict__ modes, int64_t* __restrict__ counts,
                             int64_t* __restrict__ iterations) {
  const int64_t s = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  if (s >= num_seeds) return;
  T mean[D];
  for (int d = 0; d < D; ++d) mean[d] = modes[s * D + d];
  const SeedResult r = shift_seed<D, T>(sorted, g, bandwidth, max_iter, mean);
  for (int d = 0; d < D; ++d) modes[s * D + d] = mean[d];
  counts[s] = r.count;
  iterations[s] = r.iterations;
}

template <int D, typename T>
__global__ void nearest_kernel(const T* __restrict__ points, int64_t n, const T* __restrict__ sorted,
                               const int64_t* __restrict__ order, CellGrid<D> g, const T* __restrict__ centers,
                               int64_t k, double radius_sq, bool cluster_all, int64_t* __restrict__ labels) {
  const int64_t i = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  if (i >= n) return;
  labels[i] = nearest_label<D, T>(points + i * D, sorted, order, g, centers, k, radius_sq, cluster_all);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mean_shift_modes_cuda(const at::Tensor& points_in,
                                                                     const at::Tensor& seeds_in, double bandwidth,
                                                                     int64_t max_iter) {
  check_modes_args(points_in, seeds_in, bandwidth, max_iter);
  const c10::cuda::CUDAGuard guard(points_in.device());
  const at::Tensor points = points_in.contiguous();
  at::Tensor modes = seeds_in.to(points.options()).contiguous().clone();
  const int64_t num_seeds = modes.size(0);
  at::Tensor counts = at::empty({num_seeds}, points.options().dtype(at::kLong));
  at::Tensor iterations = at::empty({num_seeds}, points.options().dtype(at::kLong));
  if (num_seeds == 0) return {modes, counts, iterations};
  const GridData grid = grid_cuda(points, bandwidth, /*with_stats=*/true);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "mean_shift_modes_cuda", [&] {
    dispatch_dims(points.size(1), [&](auto dims) {
      constexpr int D = decltype(dims)::value;
      modes_kernel<D, scalar_t><<<blocks_for(num_seeds), kThreads, 0, stream>>>(
          grid.sorted.data_ptr<scalar_t>(), grid.view<D>(), bandwidth, max_iter, num_seeds,
          modes.data_ptr<scalar_t>(), counts.data_ptr<int64_t>(), iterations.data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {modes, counts, iterations};
}

at::Tensor mean_shift_dedup_cuda(const at::Tensor& centers, double bandwidth) {
  static const auto cpu_op = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow("cellulus_fast::mean_shift_dedup", "")
                                 .typed<at::Tensor(const at::Tensor&, double)>();
  return cpu_op.call(centers.cpu(), bandwidth).to(centers.device());
}

at::Tensor nearest_center_cuda(const at::Tensor& points_in, const at::Tensor& centers_in, double bandwidth,
                               bool cluster_all) {
  check_nearest_args(points_in, centers_in, bandwidth);
  const c10::cuda::CUDAGuard guard(points_in.device());
  const at::Tensor points = points_in.contiguous();
  const at::Tensor centers = centers_in.to(points.options()).contiguous();
  const int64_t n = points.size(0);
  at::Tensor labels = at::empty({n}, points.options().dtype(at::kLong));
  if (n == 0) return labels;
  const GridData grid = grid_cuda(centers, bandwidth);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "nearest_center_cuda", [&] {
    dispatch_dims(points.size(1), [&](auto dims) {
      constexpr int D = decltype(dims)::value;
      nearest_kernel<D, scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
          points.data_ptr<scalar_t>(), n, grid.sorted.data_ptr<scalar_t>(), grid.order.data_ptr<int64_t>(),
          grid.view<D>(), centers.data_ptr<scalar_t>(), centers.size(0), bandwidth * bandwidth, cluster_all,
          labels.data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return labels;
}

}  // namespace

TORCH_LIBRARY_IMPL(cellulus_fast, CUDA, m) {
  m.impl("mean_shift_modes", &mean_shift_modes_cuda);
  m.impl("mean_shift_dedup", &mean_shift_dedup_cuda);
  m.impl("nearest_center", &nearest_center_cuda);
}

}  // namespace ms
}  // namespace cellulus_fast
