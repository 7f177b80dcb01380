// CPU kernels of the fused OCE loss: forward, backward and the pair sampler, multi-threaded with
// at::parallel_for over the per-element math of oce_loss_math.h.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <vector>

#include "oce_loss_setup.h"

namespace cellulus_fast {
namespace oce {
namespace {

// The forward sum is split into this many fixed chunks per image, summed in order afterwards, so the
// loss does not depend on the number of threads.
constexpr int64_t kChunksPerImage = 64;

at::Tensor oce_loss_cpu(const at::Tensor& offsets_in, double density, double kappa, int64_t num_references,
                        double tau, double lambda_reg, c10::string_view nonlinearity, bool detach_reference,
                        int64_t seed, c10::string_view reduction) {
  const LossParams p = make_params(offsets_in, density, kappa, num_references, tau, lambda_reg, nonlinearity,
                                   detach_reference, seed);
  const bool mean = parse_mean(reduction);
  const at::Tensor offsets = offsets_in.contiguous();
  const int64_t batch = offsets.size(0);
  std::vector<double> partial(batch * kChunksPerImage, 0.0);
  AT_DISPATCH_FLOATING_TYPES(offsets.scalar_type(), "oce_loss_cpu", [&] {
    dispatch_dims(offsets, [&](auto dims) {
      constexpr int D = decltype(dims)::value;
      const at::Tensor disk = make_disk(kappa, D, offsets.device());
      const Grid<D> g = make_grid<D>(offsets, kappa, disk);
      const scalar_t* data = offsets.data_ptr<scalar_t>();
      const int64_t A = p.num_anchors;
      at::parallel_for(0, batch * kChunksPerImage, 1, [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t) {
          const int64_t b = t / kChunksPerImage, chunk = t % kChunksPerImage;
          const scalar_t* image = data + b * D * g.channel_stride;
          double sum = 0.0;
          for (int64_t a = A * chunk / kChunksPerImage; a < A * (chunk + 1) / kChunksPerImage; ++a) {
            sum += anchor_loss<D, scalar_t>(image, g, p, static_cast<uint32_t>(b), static_cast<uint32_t>(a));
          }
          partial[t] = sum;
        }
      });
    });
  });
  double total = 0.0;
  for (double v : partial) total += v;
  if (mean) total /= static_cast<double>(batch) * p.num_anchors * p.num_references;
  return at::scalar_tensor(total, offsets.options());
}

at::Tensor oce_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& offsets_in, double density,
                                 double kappa, int64_t num_references, double tau, double lambda_reg,
                                 c10::string_view nonlinearity, bool detach_reference, int64_t seed,
                                 c10::string_view reduction) {
  const LossParams p = make_params(offsets_in, density, kappa, num_references, tau, lambda_reg, nonlinearity,
                                   detach_reference, seed);
  const at::Tensor offsets = offsets_in.contiguous();
  const int64_t batch = offsets.size(0);
  double scale = grad.item<double>();
  if (parse_mean(reduction)) scale /= static_cast<double>(batch) * p.num_anchors * p.num_references;
  at::Tensor grad_offsets = at::zeros_like(offsets);
  AT_DISPATCH_FLOATING_TYPES(offsets.scalar_type(), "oce_loss_backward_cpu", [&] {
    dispatch_dims(offsets, [&](auto dims) {
      constexpr int D = decltype(dims)::value;
      const at::Tensor disk = make_disk(kappa, D, offsets.device());
      const Grid<D> g = make_grid<D>(offsets, kappa, disk);
      const scalar_t* data = offsets.data_ptr<scalar_t>();
      scalar_t* grad_data = grad_offsets.data_ptr<scalar_t>();
      // One image per task: images own disjoint gradient slices, so no atomics and a deterministic order.
      at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b) {
          const scalar_t* image = data + b * D * g.channel_stride;
          scalar_t* grad_image = grad_data + b * D * g.channel_stride;
          auto add = [&](int64_t index, int c, scalar_t value) { grad_image[c * g.channel_stride + index] += value; };
          for (uint32_t a = 0; a < p.num_anchors; ++a) {
            anchor_gradient<D, scalar_t>(image, g, p, static_cast<uint32_t>(b), a, static_cast<scalar_t>(scale),
                                         add);
          }
        }
      });
    });
  });
  return grad_offsets;
}

std::tuple<at::Tensor, at::Tensor> sample_pairs_cpu(const at::Tensor& offsets, double density, double kappa,
                                                    int64_t num_references, int64_t seed) {
  check_offsets(offsets, density, kappa, num_references);
  const int64_t batch = offsets.size(0), dims = offsets.dim() - 2;
  const int64_t A = num_anchors(offsets, density, kappa), R = num_references;
  const auto options = offsets.options().dtype(at::kLong);
  at::Tensor anchors = at::empty({batch, A, dims}, options);
  at::Tensor references = at::empty({batch, A, R, dims}, options);
  int64_t* anchor_data = anchors.data_ptr<int64_t>();
  int64_t* reference_data = references.data_ptr<int64_t>();
  dispatch_dims(offsets, [&](auto dims_tag) {
    constexpr int D = decltype(dims_tag)::value;
    const at::Tensor disk = make_disk(kappa, D, offsets.device());
    const Grid<D> g = make_grid<D>(offsets, kappa, disk);
    at::parallel_for(0, batch * A, 256, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const uint32_t b = static_cast<uint32_t>(t / A), a = static_cast<uint32_t>(t % A);
        int64_t* x = anchor_data + t * D;
        sample_anchor<D>(static_cast<uint64_t>(seed), b, a, g, x);
        for (int64_t k = 0; k < R; ++k) {
          const int* o = sample_offset<D>(static_cast<uint64_t>(seed), b, a, static_cast<uint32_t>(k), g);
          for (int d = 0; d < D; ++d) reference_data[(t * R + k) * D + d] = x[d] + o[d];
        }
      }
    });
  });
  return {anchors, references};
}

}  // namespace

TORCH_LIBRARY_IMPL(cellulus_fast, CPU, m) {
  m.impl("oce_loss", &oce_loss_cpu);
  m.impl("oce_loss_backward", &oce_loss_backward_cpu);
  m.impl("sample_pairs", &sample_pairs_cpu);
}

}  // namespace oce
}  // namespace cellulus_fast
