// CUDA kernels of the fused OCE loss: one thread per anchor runs the per-element math of oce_loss_math.h.
// Forward: per-block partial sums with cub::BlockReduce, summed by ATen in a fixed order (deterministic).
// Backward: atomic adds into the gradient (no barrier), so the gradient's rounding depends on the order the
// adds land in: not bit-reproducible, and reported as such to torch.use_deterministic_algorithms. The pairs
// are the CPU kernel's, bit for bit. The lattice-disk table is built on the GPU and cached (device_disk).
// Needs sm_60 or newer (atomicAdd on double).
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGraphsUtils.cuh>
#include <ATen/ops/empty.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cub/block/block_reduce.cuh>

#include <map>
#include <mutex>
#include <tuple>

#include "oce_loss_setup.h"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 600
#error "cellulus_fast's CUDA kernels need sm_60 or newer (atomicAdd on double): set TORCH_CUDA_ARCH_LIST"
#endif

namespace cellulus_fast {
namespace oce {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 1024;

int64_t num_blocks(int64_t work) { return std::max<int64_t>(1, std::min(kMaxBlocks, (work + kThreads - 1) / kThreads)); }

template <int D, typename T>
__global__ void forward_kernel(const T* __restrict__ data, Grid<D> g, LossParams p, int64_t batch,
                               double* __restrict__ partial) {
  using BlockReduce = cub::BlockReduce<double, kThreads>;
  __shared__ typename BlockReduce::TempStorage storage;
  const int64_t work = batch * p.num_anchors;
  double sum = 0.0;
  for (int64_t t = blockIdx.x * int64_t(kThreads) + threadIdx.x; t < work; t += int64_t(gridDim.x) * kThreads) {
    const int64_t b = t / p.num_anchors, a = t % p.num_anchors;
    sum += anchor_loss<D, T>(data + b * D * g.channel_stride, g, p, uint32_t(b), uint32_t(a));
  }
  const double block_sum = BlockReduce(storage).Sum(sum);
  if (threadIdx.x == 0) partial[blockIdx.x] = block_sum;
}

template <int D, typename T>
__global__ void backward_kernel(const T* __restrict__ data, Grid<D> g, LossParams p, int64_t batch,
                                const T* __restrict__ grad, double factor, T* __restrict__ grad_data) {
  const int64_t work = batch * p.num_anchors;
  const T scale = static_cast<T>(static_cast<double>(grad[0]) * factor);
  for (int64_t t = blockIdx.x * int64_t(kThreads) + threadIdx.x; t < work; t += int64_t(gridDim.x) * kThreads) {
    const int64_t b = t / p.num_anchors, a = t % p.num_anchors;
    T* grad_image = grad_data + b * D * g.channel_stride;
    auto add = [&](int64_t index, int c, T value) { atomicAdd(grad_image + c * g.channel_stride + index, value); };
    anchor_gradient<D, T>(data + b * D * g.channel_stride, g, p, uint32_t(b), uint32_t(a), scale, add);
  }
}

template <int D>
__global__ void sample_kernel(Grid<D> g, uint64_t seed, int64_t batch, int64_t A, int64_t R,
                              int64_t* __restrict__ anchors, int64_t* __restrict__ references) {
  for (int64_t t = blockIdx.x * int64_t(kThreads) + threadIdx.x; t < batch * A; t += int64_t(gridDim.x) * kThreads) {
    const uint32_t b = uint32_t(t / A), a = uint32_t(t % A);
    int64_t* x = anchors + t * D;
    sample_anchor<D>(seed, b, a, g, x);
    for (int64_t k = 0; k < R; ++k) {
      const int* o = sample_offset<D>(seed, b, a, uint32_t(k), g);
      for (int d = 0; d < D; ++d) references[(t * R + k) * D + d] = x[d] + o[d];
    }
  }
}

// Writes the lattice-disk table (build_disk): one thread, a few microseconds for kappa = 10 in 2-D.
__global__ void disk_kernel(double kappa, int dims, int* out) { build_disk(kappa, dims, out); }

// The lattice-disk table as an int32 (M, D) tensor on the device of `like`, built there by disk_kernel: no
// host-to-device copy (which from pageable memory synchronises the host with the GPU, and which CUDA graph
// capture forbids). Cached per (kappa, D, device) for the life of the process; a later call on another
// stream waits for the build (an event, no host synchronisation). While the current stream is being
// captured into a CUDA graph the table is built afresh inside the graph instead (a cached tensor made during
// capture would hold nothing outside the graph's replays).
at::Tensor device_disk(double kappa, int dims, const at::Tensor& like) {
  const int64_t count = build_disk(kappa, dims, nullptr);  // host arithmetic only
  const auto stream = at::cuda::getCurrentCUDAStream();
  auto build = [&] {
    at::Tensor disk = at::empty({count, dims}, like.options().dtype(at::kInt));
    disk_kernel<<<1, 1, 0, stream>>>(kappa, dims, disk.data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return disk;
  };
  if (at::cuda::currentStreamCaptureStatus() != at::cuda::CaptureStatus::None) return build();
  struct Entry {
    at::Tensor disk;
    cudaEvent_t built;  // recorded on `stream` after disk_kernel
    cudaStream_t stream;
  };
  static std::mutex mutex;
  // Never freed (nor its events): it must outlive the CUDA runtime's teardown at exit.
  static auto* cache = new std::map<std::tuple<double, int, int>, Entry>();
  const auto key = std::make_tuple(kappa, dims, static_cast<int>(like.get_device()));
  std::lock_guard<std::mutex> lock(mutex);
  auto found = cache->find(key);
  if (found == cache->end()) {
    Entry entry{build(), nullptr, stream.stream()};
    C10_CUDA_CHECK(cudaEventCreateWithFlags(&entry.built, cudaEventDisableTiming));
    C10_CUDA_CHECK(cudaEventRecord(entry.built, stream.stream()));
    found = cache->emplace(key, entry).first;
  } else if (found->second.stream != stream.stream()) {
    C10_CUDA_CHECK(cudaStreamWaitEvent(stream.stream(), found->second.built, 0));
  }
  return found->second.disk;
}

at::Tensor oce_loss_cuda(const at::Tensor& offsets_in, double density, double kappa, int64_t num_references,
                         double tau, double lambda_reg, c10::string_view nonlinearity, bool detach_reference,
                         int64_t seed, c10::string_view reduction) {
  const LossParams p = make_params(offsets_in, density, kappa, num_references, tau, lambda_reg, nonlinearity,
                                   detach_reference, seed);
  const bool mean = parse_mean(reduction);
  const c10::cuda::CUDAGuard guard(offsets_in.device());
  const at::Tensor offsets = offsets_in.contiguous();
  const int64_t batch = offsets.size(0);
  const int64_t blocks = num_blocks(batch * p.num_anchors);
  at::Tensor partial = at::zeros({blocks}, offsets.options().dtype(at::kDouble));
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(offsets.scalar_type(), "oce_loss_cuda", [&] {
    dispatch_dims(offsets, [&](auto dims) {
      constexpr int D = decltype(dims)::value;
      const at::Tensor disk = device_disk(kappa, D, offsets);
      forward_kernel<D, scalar_t><<<blocks, kThreads, 0, stream>>>(
          offsets.data_ptr<scalar_t>(), make_grid<D>(offsets, kappa, disk), p, batch, partial.data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  at::Tensor total = partial.sum();
  if (mean) total = total.div(num_pairs(batch, p));
  return total.to(offsets.scalar_type());
}

at::Tensor oce_loss_backward_cuda(const at::Tensor& grad, const at::Tensor& offsets_in, double density,
                                  double kappa, int64_t num_references, double tau, double lambda_reg,
                                  c10::string_view nonlinearity, bool detach_reference, int64_t seed,
                                  c10::string_view reduction) {
  const LossParams p = make_params(offsets_in, density, kappa, num_references, tau, lambda_reg, nonlinearity,
                                   detach_reference, seed);
  // Float atomics: the rounding of the gradient depends on the order the adds land in.
  at::globalContext().alertNotDeterministic("oce_loss_backward_cuda");
  const c10::cuda::CUDAGuard guard(offsets_in.device());
  const at::Tensor offsets = offsets_in.contiguous();
  const int64_t batch = offsets.size(0);
  const double factor = parse_mean(reduction) ? 1.0 / num_pairs(batch, p) : 1.0;
  at::Tensor grad_offsets = at::zeros_like(offsets);
  const at::Tensor grad_scalar = grad.to(offsets.options()).contiguous();
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(offsets.scalar_type(), "oce_loss_backward_cuda", [&] {
    dispatch_dims(offsets, [&](auto dims) {
      constexpr int D = decltype(dims)::value;
      const at::Tensor disk = device_disk(kappa, D, offsets);
      backward_kernel<D, scalar_t><<<num_blocks(batch * p.num_anchors), kThreads, 0, stream>>>(
          offsets.data_ptr<scalar_t>(), make_grid<D>(offsets, kappa, disk), p, batch, grad_scalar.data_ptr<scalar_t>(),
          factor, grad_offsets.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return grad_offsets;
}

// The loss and its gradient for a unit upstream gradient: the two passes. (On the CPU one pass saves about a
// third; a one-pass CUDA kernel is left until it can be measured on a GPU.)
std::tuple<at::Tensor, at::Tensor> oce_loss_and_grad_cuda(const at::Tensor& offsets, double density, double kappa,
                                                          int64_t num_references, double tau, double lambda_reg,
                                                          c10::string_view nonlinearity, bool detach_reference,
                                                          int64_t seed, c10::string_view reduction) {
  return {oce_loss_cuda(offsets, density, kappa, num_references, tau, lambda_reg, nonlinearity, detach_reference,
                        seed, reduction),
          oce_loss_backward_cuda(at::ones({}, offsets.options()), offsets, density, kappa, num_references, tau,
                                 lambda_reg, nonlinearity, detach_reference, seed, reduction)};
}

std::tuple<at::Tensor, at::Tensor> sample_pairs_cuda(const at::Tensor& offsets, double density, double kappa,
                                                     int64_t num_references, int64_t seed) {
  check_offsets(offsets, density, kappa, num_references);
  const c10::cuda::CUDAGuard guard(offsets.device());
  const int64_t batch = offsets.size(0), dims = offsets.dim() - 2;
  const int64_t A = num_anchors(offsets, density, kappa), R = num_references;
  const auto options = offsets.options().dtype(at::kLong);
  at::Tensor anchors = at::empty({batch, A, dims}, options);
  at::Tensor references = at::empty({batch, A, R, dims}, options);
  const auto stream = at::cuda::getCurrentCUDAStream();
  dispatch_dims(offsets, [&](auto dims_tag) {
    constexpr int D = decltype(dims_tag)::value;
    const at::Tensor disk = device_disk(kappa, D, offsets);
    sample_kernel<D><<<num_blocks(batch * A), kThreads, 0, stream>>>(
        make_grid<D>(offsets, kappa, disk), static_cast<uint64_t>(seed), batch, A, R, anchors.data_ptr<int64_t>(),
        references.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {anchors, references};
}

}  // namespace

TORCH_LIBRARY_IMPL(cellulus_fast, CUDA, m) {
  m.impl("oce_loss", &oce_loss_cuda);
  m.impl("oce_loss_backward", &oce_loss_backward_cuda);
  m.impl("oce_loss_and_grad", &oce_loss_and_grad_cuda);
  m.impl("sample_pairs", &sample_pairs_cuda);
}

}  // namespace oce
}  // namespace cellulus_fast
