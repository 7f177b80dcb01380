// The shared kernel headers compiled as device code: the pairs drawn on the GPU equal those drawn on the
// host. Built by CMake wherever nvcc is found (CI has no GPU: the test then exits 77 = skipped).
#include <cuda_runtime.h>

#include <cstdio>

#include "check.h"
#include "mean_shift/mean_shift_math.h"
#include "oce_loss/oce_loss_math.h"

using namespace cellulus_fast;

__global__ void draw(oce::Grid<2> g, int n, int* out) {
  const int a = blockIdx.x * blockDim.x + threadIdx.x;
  if (a >= n) return;
  int64_t x[2];
  oce::sample_anchor<2>(7, 1, a, g, x);
  const int* o = oce::sample_offset<2>(7, 1, a, 5, g);
  out[4 * a + 0] = int(x[0]); out[4 * a + 1] = int(x[1]); out[4 * a + 2] = o[0]; out[4 * a + 3] = o[1];
}

// Instantiates the per-anchor loss and gradient as device code, as the extension's CUDA kernels do.
__global__ void loss_and_gradient(const float* image, oce::Grid<2> g, oce::LossParams p, double* loss, float* grad) {
  *loss = oce::anchor_loss<2, float>(image, g, p, 0, threadIdx.x);
  auto add = [&](int64_t index, int c, float value) { atomicAdd(grad + c * g.channel_stride + index, value); };
  oce::anchor_gradient<2, float>(image, g, p, 0, threadIdx.x, 1.0f, add);
}

// Instantiates the mean-shift math as device code (compile check; run only with a GPU).
__global__ void shift(const double* sorted, ms::CellGrid<2> g, double* mean, int64_t* count) {
  *count = ms::shift_seed<2, double>(sorted, g, 1.0, 300, mean).count;
}

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: skipped\n");
    return 77;
  }
  oce::Grid<2> g;
  g.size[0] = 64; g.size[1] = 50; g.stride[0] = 50; g.stride[1] = 1; g.channel_stride = 64 * 50;
  g.margin = 10;
  g.disk_size = oce::build_disk(10.0, 2, nullptr);
  int host_disk[2 * 316];
  oce::build_disk(10.0, 2, host_disk);
  int* d_disk = nullptr;
  cudaMalloc(&d_disk, sizeof(host_disk));
  cudaMemcpy(d_disk, host_disk, sizeof(host_disk), cudaMemcpyHostToDevice);
  g.disk = d_disk;
  const int n = 1000;
  int* d_out = nullptr;
  cudaMalloc(&d_out, 4 * n * sizeof(int));
  draw<<<(n + 127) / 128, 128>>>(g, n, d_out);
  int host[4 * n];
  cudaMemcpy(host, d_out, sizeof(host), cudaMemcpyDeviceToHost);
  cudaFree(d_out);
  cudaFree(d_disk);
  g.disk = host_disk;
  for (int a = 0; a < n; ++a) {
    int64_t x[2];
    oce::sample_anchor<2>(7, 1, a, g, x);
    const int* o = oce::sample_offset<2>(7, 1, a, 5, g);
    CHECK(host[4 * a] == x[0] && host[4 * a + 1] == x[1] && host[4 * a + 2] == o[0] && host[4 * a + 3] == o[1]);
  }
  return g_failures ? 1 : 0;
}
