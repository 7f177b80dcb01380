// Per-element math of flat-kernel mean-shift (scikit-learn's MeanShift semantics), shared by the CPU and
// CUDA kernels. Points are bucketed in a uniform grid of cubic cells with side >= bandwidth, sorted by cell
// (stable, so index order within a cell); a ball of radius `bandwidth` around any position then lies in
// the 3^D cells around the position's cell.
#pragma once

#include <cstdint>

#include "../common/macros.h"

namespace cellulus_fast {
namespace ms {

// Arithmetic of the distance tests and means, rounded identically on host and device: nvcc would contract
// a + b * c into an FMA (one rounding instead of two), which can flip a distance test at the bandwidth and
// make CPU and CUDA modes differ in the last bit (and with them the merging of identical modes).
CF_HD double dadd(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
CF_HD double dmul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

// Whether v is finite (neither NaN nor +-inf), without <cmath> (host and device alike).
CF_HD bool finite(double v) { return v - v == 0.0; }

template <int D, typename T>
CF_HD bool all_finite(const T* x) {
  for (int d = 0; d < D; ++d) {
    if (!finite(static_cast<double>(x[d]))) return false;
  }
  return true;
}

template <int D>
struct CellGrid {
  double origin[D];     // lower corner of cell (0, ..., 0)
  double cell;          // side of a cell (>= bandwidth)
  int64_t dims[D];      // cells per axis
  const int64_t* start; // start[c] .. start[c + 1]: sorted positions of the points of linear cell c; points
                        // with a non-finite coordinate are sorted after start[cells] and never visited
  // Optional (mean_shift_modes): per non-empty cell c, at row start[c] (D values each): the sum of its points
  // (added in sorted order from 0, as shift_seed adds them) and the corners of their bounding box.
  const double* cell_sum = nullptr;
  const double* cell_lo = nullptr;
  const double* cell_hi = nullptr;
};

CF_HD int64_t floor_to_int(double v) {  // v must be finite and within the int64 range
  const int64_t t = static_cast<int64_t>(v);
  return (static_cast<double>(t) > v) ? t - 1 : t;
}

// Linear cell of point x for the sorting of build_grid: its cell clamped to the grid (points lie inside it
// up to rounding), or `cells` (past every cell, never visited) for a point with a non-finite coordinate.
template <int D, typename T>
CF_HD int64_t point_cell(const CellGrid<D>& g, const T* x, int64_t cells) {
  int64_t linear = 0;
  for (int d = 0; d < D; ++d) {
    const double xd = static_cast<double>(x[d]);
    if (!finite(xd)) return cells;
    const double v = (xd - g.origin[d]) / g.cell;
    const int64_t c = v < 0.0 ? 0 : (v >= static_cast<double>(g.dims[d]) ? g.dims[d] - 1 : floor_to_int(v));
    linear = linear * g.dims[d] + c;
  }
  return linear;
}

// Visits every linear cell of the 3^D block around the cell of `x` that lies in the grid, in increasing
// order, calling visit(c). Nothing for an x with a NaN coordinate or whose block misses the grid.
template <int D, typename T, typename Visit>
CF_HD void for_each_nearby_cell(const CellGrid<D>& g, const T* x, Visit visit) {
  int64_t lo[D], hi[D];
  for (int d = 0; d < D; ++d) {
    const double v = (static_cast<double>(x[d]) - g.origin[d]) / g.cell;
    // The block [c - 1, c + 1], c = floor(v), meets [0, dims) iff -1 <= v < dims + 1; this test is false for
    // NaN, and keeps floor_to_int from values outside the int64 range.
    if (!(v >= -1.0 && v < static_cast<double>(g.dims[d]) + 1.0)) return;
    const int64_t c = floor_to_int(v);
    lo[d] = c - 1 > 0 ? c - 1 : 0;
    hi[d] = c + 1 < g.dims[d] - 1 ? c + 1 : g.dims[d] - 1;
  }
  int64_t idx[D];
  for (int d = 0; d < D; ++d) idx[d] = lo[d];
  while (true) {
    int64_t linear = 0;
    for (int d = 0; d < D; ++d) linear = linear * g.dims[d] + idx[d];
    visit(linear);
    int d = D - 1;
    while (d >= 0 && idx[d] == hi[d]) {
      idx[d] = lo[d];
      --d;
    }
    if (d < 0) return;
    ++idx[d];
  }
}

// Visits every point (sorted position s) in the 3^D cells around `x`, calling visit(s).
template <int D, typename T, typename Visit>
CF_HD void for_each_nearby(const CellGrid<D>& g, const T* x, Visit visit) {
  for_each_nearby_cell<D, T>(g, x, [&](int64_t c) {
    for (int64_t s = g.start[c]; s < g.start[c + 1]; ++s) visit(s);
  });
}

template <int D, typename A, typename B>
CF_HD double squared_distance(const A* a, const B* b) {
  double sq = 0.0;
  for (int d = 0; d < D; ++d) {
    const double diff = static_cast<double>(a[d]) - static_cast<double>(b[d]);
    sq = dadd(sq, dmul(diff, diff));
  }
  return sq;
}

// Sum and bounding box of the points of cell c (see CellGrid::cell_sum), written at row start[c].
template <int D, typename T>
CF_HD void cell_stats(const T* sorted_points, const int64_t* start, int64_t c, double* sum, double* lo,
                      double* hi) {
  const int64_t s0 = start[c], s1 = start[c + 1];
  if (s0 == s1) return;
  double total[D], low[D], high[D];
  for (int d = 0; d < D; ++d) {
    total[d] = 0.0;
    low[d] = high[d] = static_cast<double>(sorted_points[s0 * D + d]);
  }
  for (int64_t s = s0; s < s1; ++s) {
    for (int d = 0; d < D; ++d) {
      const double v = static_cast<double>(sorted_points[s * D + d]);
      total[d] = dadd(total[d], v);
      low[d] = v < low[d] ? v : low[d];
      high[d] = v > high[d] ? v : high[d];
    }
  }
  for (int d = 0; d < D; ++d) {
    sum[s0 * D + d] = total[d];
    lo[s0 * D + d] = low[d];
    hi[s0 * D + d] = high[d];
  }
}

// Whether every point of the (non-empty) cell whose rows start at s0 is within the ball: the bounding-box
// corner farthest from `mean` is. Exact for the rounded test of squared_distance: per axis the corner's
// coordinate is a point's, and rounding is monotonic, so no point's rounded distance exceeds the corner's.
template <int D, typename T>
CF_HD bool cell_within(const CellGrid<D>& g, int64_t s0, const T* mean, double radius_sq) {
  double corner[D];
  for (int d = 0; d < D; ++d) {
    const double m = static_cast<double>(mean[d]);
    const double lo = g.cell_lo[s0 * D + d], hi = g.cell_hi[s0 * D + d];
    corner[d] = (m - lo > hi - m) ? lo : hi;
  }
  return squared_distance<D, double, T>(corner, mean) <= radius_sq;
}

struct SeedResult {
  int64_t count;       // points within bandwidth of the last position the mean was taken at (0: dropped)
  int64_t iterations;  // completed iterations, as scikit-learn counts them
};

// Moves `mean` (in: the seed, out: the mode) as scikit-learn's _mean_shift_single_seed does: repeatedly to
// the mean of the points within `bandwidth` (distance <= bandwidth), until it moves by <= 1e-3 * bandwidth
// or max_iter iterations are completed.
// The sum is taken cell by cell (cells in increasing order, the points of a cell in sorted order, each cell's
// part from 0), so a cell lying wholly inside the ball adds its precomputed sum (g.cell_sum, the same
// additions), bit for bit what the point-by-point loop would add: the mean is a function of the set of points
// within reach, whatever shortcut was taken. This bounds the cost of collapsed embeddings (every point within
// one bandwidth: each step then costs 3^D cells, not every point). A seed with a NaN coordinate finds nothing.
template <int D, typename T>
CF_HD SeedResult shift_seed(const T* sorted_points, const CellGrid<D>& g, double bandwidth, int64_t max_iter,
                            T* mean) {
  const double radius_sq = dmul(bandwidth, bandwidth);
  const double stop = dmul(1e-3, bandwidth);
  const double stop_sq = dmul(stop, stop);
  SeedResult result{0, 0};
  while (true) {
    double sum[D];
    for (int d = 0; d < D; ++d) sum[d] = 0.0;
    int64_t count = 0;
    for_each_nearby_cell<D, T>(g, mean, [&](int64_t c) {
      const int64_t s0 = g.start[c], s1 = g.start[c + 1];
      if (s0 == s1) return;
      if (g.cell_sum != nullptr && cell_within<D, T>(g, s0, mean, radius_sq)) {
        for (int d = 0; d < D; ++d) sum[d] = dadd(sum[d], g.cell_sum[s0 * D + d]);
        count += s1 - s0;
        return;
      }
      double part[D];
      for (int d = 0; d < D; ++d) part[d] = 0.0;
      int64_t n = 0;
      for (int64_t s = s0; s < s1; ++s) {
        const T* p = sorted_points + s * D;
        if (squared_distance<D, T, T>(p, mean) <= radius_sq) {
          for (int d = 0; d < D; ++d) part[d] = dadd(part[d], static_cast<double>(p[d]));
          ++n;
        }
      }
      if (n == 0) return;
      for (int d = 0; d < D; ++d) sum[d] = dadd(sum[d], part[d]);
      count += n;
    });
    if (count == 0) {  // no point within reach (a far seed, or a mean in a hole): scikit-learn drops it
      result.count = 0;
      return result;
    }
    T next[D];
    for (int d = 0; d < D; ++d) next[d] = static_cast<T>(sum[d] / static_cast<double>(count));
    const double moved = squared_distance<D, T, T>(next, mean);
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
    const double sq = squared_distance<D, T, T>(sorted_centers + s * D, x);
    // ties go to the lower centre index, as in a full argmin scan
    if (best < 0 || sq < best_d || (sq == best_d && order[s] < best)) {
      best = order[s];
      best_d = sq;
    }
  });
  *best_sq = best_d;
  return best;
}

// Index of the nearest centre by a full scan (-1 if every distance is NaN).
template <int D, typename T>
CF_HD int64_t nearest_scan(const T* x, const T* centers, int64_t num_centers, double* best_sq) {
  int64_t best = -1;
  double best_d = 0.0;
  for (int64_t c = 0; c < num_centers; ++c) {
    const double sq = squared_distance<D, T, T>(centers + c * D, x);
    if (!(sq == sq)) continue;  // a centre with a NaN coordinate is never the nearest
    if (best < 0 || sq < best_d) {
      best = c;
      best_d = sq;
    }
  }
  *best_sq = best_d;
  return best;
}

// Label of point x: the nearest centre within `radius_sq` (searched in the grid of the centres), else with
// cluster_all the nearest of all, else -1. A point with a non-finite coordinate gets -1 (on every device).
template <int D, typename T>
CF_HD int64_t nearest_label(const T* x, const T* sorted_centers, const int64_t* order, const CellGrid<D>& g,
                            const T* centers, int64_t num_centers, double radius_sq, bool cluster_all) {
  if (!all_finite<D, T>(x)) return -1;
  double sq;
  const int64_t best = nearest_nearby<D, T>(x, sorted_centers, order, g, &sq);
  if (best >= 0 && sq <= radius_sq) return best;
  return cluster_all ? nearest_scan<D, T>(x, centers, num_centers, &sq) : -1;
}

}  // namespace ms
}  // namespace cellulus_fast
