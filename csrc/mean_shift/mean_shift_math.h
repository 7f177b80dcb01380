// Per-element math of flat-kernel mean-shift (scikit-learn's MeanShift semantics), shared by the CPU and
// CUDA kernels. Points are bucketed in a uniform grid of cubic cells with side >= bandwidth, sorted by cell
// (stable, so index order within a cell); a ball of radius `bandwidth` around any position then lies in
// the 3^D cells around the position's cell.
#pragma once

#include <cstdint>

#include "../common/macros.h"

namespace cellulus_fast {
namespace ms {

template <int D>
struct CellGrid {
  double origin[D];     // lower corner of cell (0, ..., 0)
  double cell;          // side of a cell (>= bandwidth)
  int64_t dims[D];      // cells per axis
  const int64_t* start; // start[c] .. start[c + 1]: sorted positions of the points of linear cell c
};

CF_HD int64_t floor_to_int(double v) {
  const int64_t t = static_cast<int64_t>(v);
  return (static_cast<double>(t) > v) ? t - 1 : t;
}

// Visits every point (sorted position s) in the 3^D cells around `x`, calling visit(s).
template <int D, typename T, typename Visit>
CF_HD void for_each_nearby(const CellGrid<D>& g, const T* x, Visit visit) {
  int64_t lo[D], hi[D];
  for (int d = 0; d < D; ++d) {
    const int64_t c = floor_to_int((static_cast<double>(x[d]) - g.origin[d]) / g.cell);
    lo[d] = c - 1 > 0 ? c - 1 : 0;
    hi[d] = c + 1 < g.dims[d] - 1 ? c + 1 : g.dims[d] - 1;
    if (lo[d] > hi[d]) return;  // the 3^D block lies outside the grid: no point is within reach
  }
  int64_t idx[D];
  for (int d = 0; d < D; ++d) idx[d] = lo[d];
  while (true) {
    int64_t linear = 0;
    for (int d = 0; d < D; ++d) linear = linear * g.dims[d] + idx[d];
    for (int64_t s = g.start[linear]; s < g.start[linear + 1]; ++s) visit(s);
    int d = D - 1;
    while (d >= 0 && idx[d] == hi[d]) {
      idx[d] = lo[d];
      --d;
    }
    if (d < 0) return;
    ++idx[d];
  }
}

template <int D, typename T>
CF_HD double squared_distance(const T* a, const T* b) {
  double sq = 0.0;
  for (int d = 0; d < D; ++d) {
    const double diff = static_cast<double>(a[d]) - static_cast<double>(b[d]);
    sq += diff * diff;
  }
  return sq;
}

struct SeedResult {
  int64_t count;       // points within bandwidth of the last position the mean was taken at (0: dropped)
  int64_t iterations;  // completed iterations, as scikit-learn counts them
};

// Moves `mean` (in: the seed, out: the mode) as scikit-learn's _mean_shift_single_seed does: repeatedly to
// the mean of the points within `bandwidth` (distance <= bandwidth), until it moves by <= 1e-3 * bandwidth
// or max_iter iterations are completed.
template <int D, typename T>
CF_HD SeedResult shift_seed(const T* sorted_points, const CellGrid<D>& g, double bandwidth, int64_t max_iter,
                            T* mean) {
  const double radius_sq = bandwidth * bandwidth;
  const double stop_sq = (1e-3 * bandwidth) * (1e-3 * bandwidth);
  SeedResult result{0, 0};
  while (true) {
    double sum[D];
    for (int d = 0; d < D; ++d) sum[d] = 0.0;
    int64_t count = 0;
    for_each_nearby<D, T>(g, mean, [&](int64_t s) {
      const T* p = sorted_points + s * D;
      if (squared_distance<D, T>(p, mean) <= radius_sq) {
        for (int d = 0; d < D; ++d) sum[d] += static_cast<double>(p[d]);
        ++count;
      }
    });
    if (count == 0) {  // no point within reach (a far seed, or a mean in a hole): scikit-learn drops it
      result.count = 0;
      return result;
    }
    T next[D];
    for (int d = 0; d < D; ++d) next[d] = static_cast<T>(sum[d] / static_cast<double>(count));
    const double moved = squared_distance<D, T>(next, mean);
    for (int d = 0; d < D; ++d) mean[d] = next[d];
    result.count = count;
    if (moved <= stop_sq || result.iterations == max_iter) return result;
    ++result.iterations;
  }
}

// Index (into the unsorted centres) and squared distance of the centre nearest to `x` among those in the
// 3^D cells around it; index -1 if there is none there. A hit within `bandwidth` is the global nearest
// (every centre within bandwidth lies in those cells); otherwise the caller falls back to a full scan.
template <int D, typename T>
CF_HD int64_t nearest_nearby(const T* x, const T* sorted_centers, const int64_t* order, const CellGrid<D>& g,
                             double* best_sq) {
  int64_t best = -1;
  double best_d = 0.0;
  for_each_nearby<D, T>(g, x, [&](int64_t s) {
    const double sq = squared_distance<D, T>(sorted_centers + s * D, x);
    // ties go to the lower centre index, as in a full argmin scan
    if (best < 0 || sq < best_d || (sq == best_d && order[s] < best)) {
      best = order[s];
      best_d = sq;
    }
  });
  *best_sq = best_d;
  return best;
}

template <int D, typename T>
CF_HD int64_t nearest_scan(const T* x, const T* centers, int64_t num_centers, double* best_sq) {
  int64_t best = -1;
  double best_d = 0.0;
  for (int64_t c = 0; c < num_centers; ++c) {
    const double sq = squared_distance<D, T>(centers + c * D, x);
    if (best < 0 || sq < best_d) {
      best = c;
      best_d = sq;
    }
  }
  *best_sq = best_d;
  return best;
}

}  // namespace ms
}  // namespace cellulus_fast
