// Unit tests of the per-element kernel math shared by the CPU and CUDA kernels (no torch needed).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "check.h"
#include "common/cpu_math.h"
#include "mean_shift/mean_shift_math.h"
#include "oce_loss/oce_loss_math.h"
#if defined(CF_X86_AVX2_KERNELS)
#include "oce_loss/oce_loss_cpu_avx2.h"
#endif

using namespace cellulus_fast;

static void test_philox_known_answers() {
  // Known-answer vectors of Random123 (kat_vectors: philox4x32 10 rounds).
  Words4 zero = philox4x32_10(0, 0, 0, 0, 0);
  CHECK(zero.v[0] == 0x6627e8d5u && zero.v[1] == 0xe169c58du && zero.v[2] == 0xbc57ac4cu && zero.v[3] == 0x9b00dbd8u);
  Words4 ones = philox4x32_10(0xffffffffffffffffull, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu);
  CHECK(ones.v[0] == 0x408f276du && ones.v[1] == 0x41c83b0eu && ones.v[2] == 0xa20bc7c6u && ones.v[3] == 0x6d5451fdu);
}

#if defined(CF_X86_AVX2_KERNELS)
// The building blocks of the float32 2-D AVX2 kernels (run only where the CPU has AVX2 and FMA): the
// 8-lane Philox with hoisted round keys equals the scalar one; exp8_nonpositive is as accurate as exp_poly
// (same polynomial; FMA contraction may round differently) and clamps alike.
CF_TARGET_AVX2 static void test_avx2_kernel_blocks(uint64_t key) {
  oce::cpu::avx2::PhiloxKeys keys;
  oce::cpu::avx2::philox_keys(key, keys);
  const __m256i c0 = _mm256_setr_epi32(0, 1, 7, 1000, -1, 123456789, 42, -7);
  __m256i w[4];
  oce::cpu::avx2::philox8(keys, c0, 3u, 5u, 1u, w);
  alignas(32) uint32_t counters[8], words[4][8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(counters), c0);
  for (int k = 0; k < 4; ++k) _mm256_store_si256(reinterpret_cast<__m256i*>(words[k]), w[k]);
  for (int l = 0; l < 8; ++l) {
    const Words4 ref = philox4x32_10(key, counters[l], 3u, 5u, 1u);
    for (int k = 0; k < 4; ++k) CHECK(words[k][l] == ref.v[k]);
  }
  double worst = 0.0;
  for (int e = 0; e < 80000; e += 8) {
    alignas(32) float x[8], y[8];
    for (int l = 0; l < 8; ++l) x[l] = -87.0f * static_cast<float>(e + l) / 80000.0f;
    _mm256_store_ps(y, oce::cpu::avx2::exp8_nonpositive(_mm256_load_ps(x)));
    for (int l = 0; l < 8; ++l) {
      worst = std::fmax(worst, std::fabs(y[l] / std::exp(static_cast<double>(x[l])) - 1.0));
    }
    if (e == 0) CHECK(y[0] == 1.0f);
  }
  CHECK(worst < 2.5e-7);
  alignas(32) float tiny[8];
  _mm256_store_ps(tiny, oce::cpu::avx2::exp8_nonpositive(_mm256_set1_ps(-1e30f)));
  CHECK(tiny[0] == cpu::exp_poly(-87.0f) && tiny[0] > 0.0f);
  alignas(32) float nan[8];
  _mm256_store_ps(nan, oce::cpu::avx2::exp8_nonpositive(_mm256_set1_ps(std::nanf(""))));
  CHECK(std::isnan(nan[0]) && std::isnan(cpu::exp_poly(std::nanf(""))));
  // -expm1 of the gaussian, 8 lanes: a few ulp of std::expm1 from x = -1e-9 (collapsed embeddings) to -87.
  double worst_m = 0.0;
  for (int e = 0; e < 4000; e += 8) {
    alignas(32) float x[8], y[8];
    for (int l = 0; l < 8; ++l) x[l] = -std::pow(10.0f, -9.0f + 11.0f * static_cast<float>(e + l) / 4000.0f);
    const __m256 xv = _mm256_load_ps(x);
    _mm256_store_ps(y, oce::cpu::avx2::minus_expm1_8(xv, oce::cpu::avx2::exp8_nonpositive(xv)));
    for (int l = 0; l < 8; ++l) {
      const double want = -std::expm1(static_cast<double>(std::fmax(x[l], -87.0f)));
      worst_m = std::fmax(worst_m, std::fabs(y[l] / want - 1.0));
    }
  }
  CHECK(worst_m < 5e-7);
  _mm256_store_ps(nan, oce::cpu::avx2::minus_expm1_8(_mm256_set1_ps(std::nanf("")), _mm256_set1_ps(std::nanf(""))));
  CHECK(std::isnan(nan[0]));
}
#endif

// The vectorisable CPU Philox (portable and, where the CPU has it, AVX2) equals the scalar one.
static void test_philox_lanes() {
  constexpr uint32_t n = 24;
  uint32_t c0[n], c2[n], out[4 * n];
  for (uint32_t l = 0; l < n; ++l) {
    c0[l] = 0x9e3779b9u * l + 17u;
    c2[l] = l % 5 == 0 ? 0xffffffffu : l / 3;
  }
  const uint64_t key = 0x0123456789abcdefull;
  auto check = [&] {
    for (uint32_t l = 0; l < n; ++l) {
      const Words4 ref = philox4x32_10(key, c0[l], 42u, c2[l], 1u);
      for (int w = 0; w < 4; ++w) CHECK(out[4 * l + w] == ref.v[w]);
    }
  };
  cpu::IsaDefault::philox(key, c0, 42u, c2, 1u, n, out);
  check();
#if defined(CF_X86_AVX2_KERNELS)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    std::fill(out, out + 4 * n, 0u);
    cpu::IsaAvx2::philox(key, c0, 42u, c2, 1u, n, out);
    check();
    test_avx2_kernel_blocks(key);
  } else {
    std::printf("no AVX2: IsaAvx2::philox not tested\n");
  }
#endif
}

// exp_poly: relative error against std::exp (2 ulp), clamped outside the normal range.
static void test_exp_poly() {
  double worst_f = 0.0, worst_d = 0.0;
  for (int e = 0; e <= 200000; ++e) {
    const double x = -87.0 + 175.0 * e / 200000.0;
    const float xf = static_cast<float>(x);
    worst_f = std::fmax(worst_f, std::fabs(cpu::exp_poly(xf) / std::exp(static_cast<double>(xf)) - 1.0));
    const double xd = -708.0 + 1417.0 * e / 200000.0;
    worst_d = std::fmax(worst_d, std::fabs(cpu::exp_poly(xd) / std::exp(xd) - 1.0));
  }
  CHECK(worst_f < 2.5e-7);
  CHECK(worst_d < 5e-16);
  CHECK(cpu::exp_poly(0.0f) == 1.0f && cpu::exp_poly(0.0) == 1.0);
  CHECK(cpu::exp_poly(-1e30f) > 0.0f && cpu::exp_poly(-1e30f) < 1e-37f);
  CHECK(cpu::exp_poly(-1e300) > 0.0 && cpu::exp_poly(-1e300) < 1e-307);
  // expm1_nonpositive (the gaussian's -expm1 on the CPU fast paths): relative error of a few ulp from tiny x
  // (1 - exp(x) would lose every digit there) through the switch to the exp branch.
  double worst_mf = 0.0, worst_md = 0.0;
  for (int e = 0; e <= 20000; ++e) {
    const double x = -std::pow(10.0, -12.0 + 13.9 * e / 20000.0);
    const float xf = static_cast<float>(x);
    const double want_f = std::expm1(static_cast<double>(xf));
    worst_mf = std::fmax(worst_mf, std::fabs(cpu::expm1_nonpositive(xf, cpu::exp_poly(xf)) / want_f - 1.0));
    worst_md = std::fmax(worst_md, std::fabs(cpu::expm1_nonpositive(x, cpu::exp_poly(x)) / std::expm1(x) - 1.0));
  }
  CHECK(worst_mf < 5e-7);
  CHECK(worst_md < 1e-15);
  CHECK(cpu::expm1_nonpositive(0.0f, 1.0f) == 0.0f && cpu::expm1_nonpositive(0.0, 1.0) == 0.0);
}

// A 2-D grid whose disk table lives in `disk`.
static oce::Grid<2> grid2(int64_t h, int64_t w, double kappa, std::vector<int>& disk) {
  disk.resize(2 * oce::build_disk(kappa, 2, nullptr));
  oce::Grid<2> g;
  g.size[0] = h; g.size[1] = w; g.stride[0] = w; g.stride[1] = 1; g.channel_stride = h * w;
  g.margin = static_cast<int>(std::floor(kappa));
  g.disk_size = oce::build_disk(kappa, 2, disk.data());
  g.disk = disk.data();
  return g;
}

static void test_disk_table() {
  CHECK(oce::build_disk(10.0, 2, nullptr) == 316);  // lattice points with 0 < |o| <= 10 (Gauss circle: 317 - 1)
  CHECK(oce::build_disk(1.0, 3, nullptr) == 6);
  CHECK(oce::build_disk(1.5, 2, nullptr) == 8);
  std::vector<int> disk(3 * oce::build_disk(2.5, 3, nullptr));
  const uint32_t n = oce::build_disk(2.5, 3, disk.data());
  for (uint32_t e = 0; e < n; ++e) {
    const int* o = &disk[3 * e];
    const int sq = o[0] * o[0] + o[1] * o[1] + o[2] * o[2];
    CHECK(sq > 0 && sq <= 6);
    if (e) CHECK(std::lexicographical_compare(&disk[3 * (e - 1)], &disk[3 * e], o, o + 3));
  }
}

static void test_sampling_ranges() {
  std::vector<int> disk;
  const auto g = grid2(30, 41, 10.0, disk);
  for (uint32_t a = 0; a < 2000; ++a) {
    int64_t x[2];
    oce::sample_anchor<2>(17, 3, a, g, x);
    CHECK(x[0] >= 10 && x[0] < 20 && x[1] >= 10 && x[1] < 31);
    for (uint32_t k = 0; k < 4; ++k) {
      const int* o = oce::sample_offset<2>(17, 3, a, k, g);
      const int sq = o[0] * o[0] + o[1] * o[1];
      CHECK(sq > 0 && sq <= 100);
    }
  }
}

static void test_nonlinearity_slopes() {
  for (int nl : {oce::kSigmoid, oce::kGaussian}) {
    for (double sq : {0.0, 0.3, 2.0, 17.0, 80.0}) {
      const double h = 1e-6, inv_tau = 0.1;
      const double numeric = (oce::pair_value<double>(sq + h, inv_tau, nl) - oce::pair_value<double>(sq - h, inv_tau, nl)) / (2 * h);
      CHECK(std::fabs(numeric - oce::pair_slope<double>(sq, inv_tau, nl)) < 1e-8);
    }
  }
  CHECK(std::fabs(oce::pair_value<double>(0.0, 0.1, oce::kSigmoid) - 0.5) < 1e-15);
  // Far pairs: the sigmoid slope e / (1 + e)^2 keeps its digits where s (1 - s) is 0 in float (x > ~17).
  for (float x : {17.0f, 25.0f, 60.0f, 85.0f}) {
    const float slope = oce::pair_slope<float>(x, 1.0f, oce::kSigmoid);
    const double e = std::exp(-static_cast<double>(x)), want = e / ((1 + e) * (1 + e));
    CHECK(slope > 0.0f && std::fabs(slope / want - 1.0) < 1e-6);
    const float e_poly = cpu::exp_poly(-x);
    CHECK(std::fabs(oce::pair_slope_from_exp<float>(e_poly, 1.0f, oce::kSigmoid) / want - 1.0) < 1e-6);
  }
  // Collapsed embeddings: the gaussian's value keeps its digits for tiny sq.
  CHECK(std::fabs(oce::pair_value<float>(1e-6f, 1.0f, oce::kGaussian) / -std::expm1(-1e-6) - 1.0) < 1e-6);
  CHECK(oce::pair_value<double>(0.0, 0.1, oce::kGaussian) == 0.0);
}

// anchor_gradient must be the derivative of anchor_loss: central differences on a small image.
static void test_gradient_matches_loss() {
  std::vector<int> disk;
  const auto g = grid2(9, 11, 3.0, disk);
  std::mt19937 rng(1);
  std::normal_distribution<double> normal(0.0, 1.5);
  std::vector<double> image(2 * 9 * 11);
  for (auto& v : image) v = normal(rng);
  oce::LossParams p{0.25, 0.3, oce::kSigmoid, false, 5, 6, 3};
  auto loss = [&](const std::vector<double>& img) {
    double total = 0.0;
    for (uint32_t a = 0; a < p.num_anchors; ++a) total += oce::anchor_loss<2, double>(img.data(), g, p, 0, a);
    return total;
  };
  std::vector<double> grad(image.size(), 0.0);
  auto add = [&](int64_t index, int c, double value) { grad[c * g.channel_stride + index] += value; };
  for (uint32_t a = 0; a < p.num_anchors; ++a) oce::anchor_gradient<2, double>(image.data(), g, p, 0, a, 1.0, add);
  double worst = 0.0;
  for (size_t e = 0; e < image.size(); ++e) {
    auto plus = image, minus = image;
    plus[e] += 1e-6;
    minus[e] -= 1e-6;
    worst = std::fmax(worst, std::fabs((loss(plus) - loss(minus)) / 2e-6 - grad[e]));
  }
  CHECK(worst < 1e-6);
}

// Grid neighbour search + shift_seed against a brute-force mean-shift on random points.
static void test_mean_shift_seed() {
  std::mt19937 rng(3);
  std::uniform_real_distribution<double> uni(0.0, 20.0);
  const int n = 400;
  const double bw = 2.5;
  std::vector<double> pts(2 * n);
  for (auto& v : pts) v = uni(rng);
  // grid of side 2.6 over [0, 20]^2, points sorted by cell (stable)
  ms::CellGrid<2> g;
  g.origin[0] = g.origin[1] = 0.0;
  g.cell = 2.6;
  g.dims[0] = g.dims[1] = 8;
  std::vector<int64_t> cell(n), order(n), start(65, 0);
  for (int i = 0; i < n; ++i) {
    cell[i] = ms::floor_to_int(pts[2 * i] / g.cell) * 8 + ms::floor_to_int(pts[2 * i + 1] / g.cell);
    ++start[cell[i] + 1];
  }
  for (int c = 0; c < 64; ++c) start[c + 1] += start[c];
  std::vector<int64_t> fill(start.begin(), start.end() - 1);
  std::vector<double> sorted(2 * n);
  for (int i = 0; i < n; ++i) {
    const int64_t s = fill[cell[i]]++;
    order[s] = i;
    sorted[2 * s] = pts[2 * i];
    sorted[2 * s + 1] = pts[2 * i + 1];
  }
  g.start = start.data();
  // Per-cell sums and boxes (the shortcut for cells wholly inside a ball) must not change any result: run
  // every seed without them and with them, bit-identical modes expected.
  std::vector<double> sums(2 * n), lo(2 * n), hi(2 * n);
  for (int64_t c = 0; c < 64; ++c) ms::cell_stats<2, double>(sorted.data(), start.data(), c, sums.data(), lo.data(), hi.data());
  ms::CellGrid<2> fast = g;
  fast.cell_sum = sums.data();
  fast.cell_lo = lo.data();
  fast.cell_hi = hi.data();
  for (int seed = 0; seed < n; ++seed) {
    double a[2] = {pts[2 * seed], pts[2 * seed + 1]}, b[2] = {a[0], a[1]};
    const ms::SeedResult ra = ms::shift_seed<2, double>(sorted.data(), g, 4 * bw, 300, a);
    const ms::SeedResult rb = ms::shift_seed<2, double>(sorted.data(), fast, 4 * bw, 300, b);
    CHECK(ra.count == rb.count && ra.iterations == rb.iterations && a[0] == b[0] && a[1] == b[1]);
  }
  // A NaN seed, and seeds at +-1e300, find nothing (no floor of NaN or of an out-of-range value).
  for (double v : {std::nan(""), 1e300, -1e300}) {
    double odd[2] = {v, 1.0};
    CHECK(ms::shift_seed<2, double>(sorted.data(), fast, bw, 300, odd).count == 0);
  }
  const double nan_point[2] = {std::nan(""), 0.0};
  CHECK(ms::point_cell<2, double>(g, nan_point, 64) == 64);
  const double inside[2] = {3.0, 19.9};
  CHECK(ms::point_cell<2, double>(g, inside, 64) == 1 * 8 + 7);
  for (int seed = 0; seed < n; seed += 7) {
    double mean[2] = {pts[2 * seed], pts[2 * seed + 1]};
    const ms::SeedResult r = ms::shift_seed<2, double>(sorted.data(), g, bw, 300, mean);
    double brute[2] = {pts[2 * seed], pts[2 * seed + 1]};
    int64_t count = 0;
    for (int it = 0;; ++it) {
      double sum[2] = {0, 0};
      count = 0;
      for (int i = 0; i < n; ++i) {  // index order differs from grid order: compare with a tolerance
        if (ms::squared_distance<2, double>(&pts[2 * i], brute) <= bw * bw) {
          sum[0] += pts[2 * i]; sum[1] += pts[2 * i + 1]; ++count;
        }
      }
      const double next[2] = {sum[0] / count, sum[1] / count};
      const double moved = ms::squared_distance<2, double>(next, brute);
      brute[0] = next[0]; brute[1] = next[1];
      if (moved <= 1e-6 * bw * bw || it == 300) break;
    }
    CHECK(r.count == count);
    CHECK(std::fabs(mean[0] - brute[0]) < 1e-9 && std::fabs(mean[1] - brute[1]) < 1e-9);
  }
  // a seed far outside the grid finds nothing
  double far[2] = {100.0, 100.0};
  CHECK(ms::shift_seed<2, double>(sorted.data(), g, bw, 300, far).count == 0);
}

int main() {
  test_philox_known_answers();
  test_philox_lanes();
  test_exp_poly();
  test_disk_table();
  test_sampling_ranges();
  test_nonlinearity_slopes();
  test_gradient_matches_loss();
  test_mean_shift_seed();
  if (g_failures) {
    std::fprintf(stderr, "%d check(s) failed\n", g_failures);
    return 1;
  }
  std::printf("all kernel-math checks passed\n");
  return 0;
}
