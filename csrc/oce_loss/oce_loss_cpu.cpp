// CPU kernels of the fused OCE loss: forward, backward, both at once (oce_loss_and_grad) and the pair sampler,
// on torch's intra-op threads.
// float32 2-D offsets (the training case) run the hand-written AVX2+FMA kernels of oce_loss_cpu_avx2.h where
// the CPU has them, with tasks handed out one at a time (parallel_tasks). Other dtypes and dims run the
// blocked kernels of oce_loss_cpu_kernel.h (auto-vectorised; compiled for the baseline ISA and, chosen at
// run time, for AVX2+FMA) over fixed ranges (at::parallel_for). Both read a channels-last copy of each image.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/scalar_tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

#include "oce_loss_cpu_kernel.h"
#include "oce_loss_setup.h"
#ifdef CF_X86_AVX2_KERNELS
#include "oce_loss_cpu_avx2.h"
#endif

namespace cellulus_fast {
namespace oce {
namespace {

// The loss is summed in this many fixed chunks per image, added in order afterwards, so it does not depend
// on the number of threads.
constexpr int64_t kChunksPerImage = 64;

// First anchor of chunk `chunk` (0 .. kChunksPerImage) of an image with A anchors. Chunks start at multiples
// of 8, the anchor groups of the AVX2 kernels, so that only an image's last group can be partial.
inline uint32_t chunk_begin(int64_t A, int64_t chunk) {
  if (chunk == kChunksPerImage) return static_cast<uint32_t>(A);
  return static_cast<uint32_t>(A * chunk / kChunksPerImage / 8 * 8);
}

// The loss from its chunk sums (batch x kChunksPerImage, in image and chunk order).
inline double total_loss(const std::vector<double>& partial, bool mean, int64_t batch, const LossParams& p) {
  double total = 0.0;
  for (double v : partial) total += v;
  if (mean) total /= num_pairs(batch, p);
  return total;
}

// ---- Runtime ISA dispatch -----------------------------------------------------------------------------
// The kernels are header-inline templates; the *_avx2 wrappers below carry the target attribute, so the
// kernels inlined into them are compiled (and auto-vectorised) for AVX2+FMA, while every out-of-line
// function stays baseline code. CELLULUS_FAST_CPU_CAPABILITY selects a path: "default" the blocked kernels
// for the baseline ISA (also for float32 2-D); "generic" the per-anchor code of oce_loss_math.h that the
// CUDA kernels run (slower; it lets the CPU tests cover the GPU's per-element path); unset, AVX2+FMA where
// the CPU has them.

enum class Capability { kGeneric, kDefault, kAvx2 };

Capability capability() {
  static const Capability chosen = [] {
    const char* env = std::getenv("CELLULUS_FAST_CPU_CAPABILITY");
    if (env != nullptr && std::strcmp(env, "generic") == 0) return Capability::kGeneric;
    if (env != nullptr && std::strcmp(env, "default") == 0) return Capability::kDefault;
#ifdef CF_X86_AVX2_KERNELS
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Capability::kAvx2;
#endif
    return Capability::kDefault;
  }();
  return chosen;
}

bool use_avx2() { return capability() == Capability::kAvx2; }

template <int D, typename T>
double forward_default(const cpu::StagedImage<D, T>& im, const LossParams& p, uint32_t b, uint32_t a_begin,
                       uint32_t a_end, const cpu::Scratch<T>& s) {
  return cpu::forward_anchors<D, T, ::cellulus_fast::cpu::IsaDefault>(im, p, b, a_begin, a_end, s);
}

template <int D, typename T>
void backward_default(const cpu::StagedImage<D, T>& im, const LossParams& p, uint32_t b, T scale, T* grad,
                      const cpu::Scratch<T>& s) {
  cpu::backward_image<D, T, ::cellulus_fast::cpu::IsaDefault>(im, p, b, scale, grad, s);
}

#ifdef CF_X86_AVX2_KERNELS
template <int D, typename T>
CF_TARGET_AVX2 double forward_avx2(const cpu::StagedImage<D, T>& im, const LossParams& p, uint32_t b,
                                   uint32_t a_begin, uint32_t a_end, const cpu::Scratch<T>& s) {
  return cpu::forward_anchors<D, T, ::cellulus_fast::cpu::IsaAvx2>(im, p, b, a_begin, a_end, s);
}

template <int D, typename T>
CF_TARGET_AVX2 void backward_avx2(const cpu::StagedImage<D, T>& im, const LossParams& p, uint32_t b, T scale,
                                  T* grad, const cpu::Scratch<T>& s) {
  cpu::backward_image<D, T, ::cellulus_fast::cpu::IsaAvx2>(im, p, b, scale, grad, s);
}
#endif

template <int D, typename T>
double run_forward(const cpu::StagedImage<D, T>& im, const LossParams& p, uint32_t b, uint32_t a_begin,
                       uint32_t a_end, const cpu::Scratch<T>& s) {
#ifdef CF_X86_AVX2_KERNELS
  if (use_avx2()) return forward_avx2<D, T>(im, p, b, a_begin, a_end, s);
#endif
  return forward_default<D, T>(im, p, b, a_begin, a_end, s);
}

template <int D, typename T>
void run_backward(const cpu::StagedImage<D, T>& im, const LossParams& p, uint32_t b, T scale, T* grad,
                    const cpu::Scratch<T>& s) {
#ifdef CF_X86_AVX2_KERNELS
  if (use_avx2()) return backward_avx2<D, T>(im, p, b, scale, grad, s);
#endif
  backward_default<D, T>(im, p, b, scale, grad, s);
}

// ---- Work distribution ----------------------------------------------------------------------------------

// Runs task(t) for t in [0, n) on torch's intra-op threads, handing tasks out one at a time (not in fixed
// contiguous ranges as at::parallel_for does), so a thread slowed down by other load on the machine does
// not hold the others up. Each thread calls make_state() once and passes the state to its tasks. Results
// must be stored per task: which thread runs which task varies from call to call.
template <typename MakeState, typename Task>
void parallel_tasks(int64_t n, MakeState make_state, Task task) {
  std::atomic<int64_t> next{0};
  const int64_t workers = std::min<int64_t>(n, at::get_num_threads());
  at::parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
    for (int64_t w = begin; w < end; ++w) {
      auto state = make_state();
      for (int64_t t = next.fetch_add(1); t < n; t = next.fetch_add(1)) task(t, state);
    }
  });
}

// ---- Per-thread buffers ---------------------------------------------------------------------------------

// The scratch arrays of cpu::Scratch for `num_references` references per anchor.
template <int D, typename T>
struct ScratchBuffers {
  std::vector<uint32_t> counters, words;
  std::vector<int64_t> indices;
  std::vector<T> values;
  cpu::Scratch<T> s;

  explicit ScratchBuffers(uint32_t num_references) {
    const size_t R = num_references, nb = cpu::anchors_per_block(num_references), P = nb * R;
    const size_t lanes = cpu::round_up_lanes(static_cast<uint32_t>(nb * ((R + 3) / 4)));
    counters.resize(2 * lanes);
    words.resize(4 * lanes);
    indices.resize(nb + P);
    values.resize(nb * D + (D + 2) * P);
    s.counter = counters.data();
    s.counter2 = counters.data() + lanes;
    s.words = words.data();
    s.anchor = indices.data();
    s.reference = indices.data() + nb;
    s.r_anchor = values.data();
    s.diff = values.data() + nb * D;
    s.sq = s.diff + D * P;
    s.weight = s.sq + P;
  }
};

// The lattice-disk table of `g` for the channels-last kernels (see cpu::DiskEntry).
template <int D, typename T>
std::vector<cpu::DiskEntry<D, T>> disk_entries(const Grid<D>& g) {
  std::vector<cpu::DiskEntry<D, T>> entries(g.disk_size);
  for (uint32_t e = 0; e < g.disk_size; ++e) {
    int64_t step = 0;
    for (int d = 0; d < D; ++d) {
      entries[e].o[d] = static_cast<T>(g.disk[e * D + d]);
      step += g.disk[e * D + d] * g.stride[d];
    }
    entries[e].step = step * D;
  }
  return entries;
}

// One image (D, pixels) of the offsets, copied channels-last.
template <int D, typename T>
struct StagedImageBuffer {
  std::vector<T> data;
  cpu::StagedImage<D, T> im;
  int64_t image = -1;

  StagedImageBuffer(const Grid<D>& g, const cpu::DiskEntry<D, T>* disk) : data(D * g.channel_stride) {
    im.r = data.data();
    im.g = g;
    im.disk = disk;
  }

  void load(const T* images, int64_t b) {
    if (b == image) return;
    const int64_t pixels = im.g.channel_stride;
    const T* planar = images + b * D * pixels;
    T* out = data.data();
    for (int64_t q = 0; q < pixels; ++q) {
      for (int c = 0; c < D; ++c) out[q * D + c] = planar[c * pixels + q];
    }
    image = b;
  }
};

#ifdef CF_X86_AVX2_KERNELS
// The lattice-disk table of the float32 2-D kernels (oce_loss_cpu_avx2.h).
std::vector<cpu::avx2::DiskEntry2d> disk_2d(const Grid<2>& g) {
  std::vector<cpu::avx2::DiskEntry2d> disk(g.disk_size);
  for (uint32_t e = 0; e < g.disk_size; ++e) {
    const int o0 = g.disk[2 * e], o1 = g.disk[2 * e + 1];
    disk[e] = {{static_cast<float>(o0), static_cast<float>(o1)}, 8 * (o0 * g.size[1] + o1)};
  }
  return disk;
}

// Image `r` (channels-last) of `g` for those kernels.
cpu::avx2::Image2d avx2_image(const Grid<2>& g, const float* r,
                              const std::vector<cpu::avx2::DiskEntry2d>& disk) {
  cpu::avx2::Image2d im;
  im.r = r;
  im.width = static_cast<int32_t>(g.size[1]);
  im.margin = g.margin;
  im.extent0 = static_cast<uint32_t>(g.size[0] - 2 * g.margin);
  im.extent1 = static_cast<uint32_t>(g.size[1] - 2 * g.margin);
  im.disk = disk.data();
  im.disk_size = g.disk_size;
  return im;
}

// Runs the forward pass with those kernels where they apply (float32, 2-D, AVX2), else returns false.
bool forward_avx2_2d(const float* data, const Grid<2>& g, const LossParams& p, int64_t batch,
                     std::vector<double>& partial) {
  if (!use_avx2() || !cpu::avx2::fits_2d(g, p.num_references)) return false;
  const auto disk = disk_2d(g);
  const int64_t A = p.num_anchors;
  struct State {
    StagedImageBuffer<2, float> staged;  // the image of the thread's last task, channels-last
    std::vector<float> buffer;
  };
  parallel_tasks(
      batch * kChunksPerImage,
      [&] {
        return State{StagedImageBuffer<2, float>(g, nullptr),
                     std::vector<float>(cpu::avx2::pair_block_floats(p.num_references))};
      },
      [&](int64_t t, State& s) {
        const int64_t b = t / kChunksPerImage, chunk = t % kChunksPerImage;
        s.staged.load(data, b);
        partial[t] = cpu::avx2::forward_anchors(avx2_image(g, s.staged.im.r, disk), p,
                                                static_cast<uint32_t>(b),
                                                chunk_begin(A, chunk), chunk_begin(A, chunk + 1),
                                                s.buffer.data());
      });
  return true;
}

// The gradient of `scale` x the loss into the planar `grad` (every image overwritten) and, given `partial`,
// the chunk sums of the loss in the same pass (equal to forward_avx2_2d's). Each image is two tasks, the
// chunks of its first and of its second half of the anchors, so that two threads can share an image; the
// task finishing first writes its half's gradient, the second adds its own: a + b = b + a in floating point,
// so the result does not depend on which finishes first.
bool gradient_avx2_2d(const float* data, const Grid<2>& g, const LossParams& p, int64_t batch, double scale,
                      float* grad, std::vector<double>* partial) {
  static_assert(kChunksPerImage % 2 == 0, "an image's two tasks take half of its chunks each");
  if (!use_avx2() || !cpu::avx2::fits_2d(g, p.num_references)) return false;
  const auto disk = disk_2d(g);
  const int64_t pixels = g.channel_stride, A = p.num_anchors;
  std::vector<std::mutex> locks(batch);
  std::vector<char> written(batch, 0);
  struct State {
    StagedImageBuffer<2, float> staged;  // the image of the thread's last task, channels-last
    std::vector<float> grad;             // the task's gradient, likewise
    std::vector<float> buffer;
  };
  parallel_tasks(
      2 * batch,
      [&] {
        return State{StagedImageBuffer<2, float>(g, nullptr), std::vector<float>(2 * pixels),
                     std::vector<float>(cpu::avx2::pair_block_floats(p.num_references))};
      },
      [&](int64_t t, State& s) {
        const int64_t b = t / 2, half = t % 2;
        s.staged.load(data, b);
        std::fill(s.grad.begin(), s.grad.end(), 0.0f);
        const cpu::avx2::Image2d im = avx2_image(g, s.staged.im.r, disk);
        for (int64_t chunk = half * kChunksPerImage / 2; chunk < (half + 1) * kChunksPerImage / 2; ++chunk) {
          const double loss = cpu::avx2::gradient_anchors(
              im, p, static_cast<uint32_t>(b), chunk_begin(A, chunk), chunk_begin(A, chunk + 1),
              static_cast<float>(scale), s.grad.data(), s.buffer.data(), partial != nullptr);
          if (partial != nullptr) (*partial)[b * kChunksPerImage + chunk] = loss;
        }
        const float* part = s.grad.data();
        float* out = grad + b * 2 * pixels;
        std::lock_guard<std::mutex> lock(locks[b]);
        if (!written[b]) {
          for (int64_t q = 0; q < pixels; ++q) {
            out[q] = part[2 * q];
            out[pixels + q] = part[2 * q + 1];
          }
          written[b] = 1;
        } else {
          for (int64_t q = 0; q < pixels; ++q) {
            out[q] += part[2 * q];
            out[pixels + q] += part[2 * q + 1];
          }
        }
      });
  return true;
}
#endif

// Other dtypes and dims (and CPUs without AVX2) use the blocked kernels.
template <int D, typename T>
bool forward_avx2_2d(const T*, const Grid<D>&, const LossParams&, int64_t, std::vector<double>&) {
  return false;
}
template <int D, typename T>
bool gradient_avx2_2d(const T*, const Grid<D>&, const LossParams&, int64_t, double, T*, std::vector<double>*) {
  return false;
}

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
      const at::Tensor disk = make_disk(kappa, D);
      const Grid<D> g = make_grid<D>(offsets, kappa, disk);
      const scalar_t* data = offsets.data_ptr<scalar_t>();
      const int64_t A = p.num_anchors;
      if (capability() == Capability::kGeneric) {
        at::parallel_for(0, batch * kChunksPerImage, 1, [&](int64_t begin, int64_t end) {
          for (int64_t t = begin; t < end; ++t) {
            const int64_t b = t / kChunksPerImage, chunk = t % kChunksPerImage;
            double sum = 0.0;
            const uint32_t a_end = chunk_begin(A, chunk + 1);
            for (uint32_t a = chunk_begin(A, chunk); a < a_end; ++a) {
              sum += anchor_loss<D, scalar_t>(data + b * D * g.channel_stride, g, p, static_cast<uint32_t>(b), a);
            }
            partial[t] = sum;
          }
        });
        return;
      }
      if (forward_avx2_2d(data, g, p, batch, partial)) return;
      const auto entries = disk_entries<D, scalar_t>(g);
      at::parallel_for(0, batch * kChunksPerImage, 1, [&](int64_t begin, int64_t end) {
        StagedImageBuffer<D, scalar_t> staged(g, entries.data());
        ScratchBuffers<D, scalar_t> scratch(p.num_references);
        for (int64_t t = begin; t < end; ++t) {
          const int64_t b = t / kChunksPerImage, chunk = t % kChunksPerImage;
          staged.load(data, b);
          partial[t] = run_forward<D, scalar_t>(staged.im, p, static_cast<uint32_t>(b),
                                                    chunk_begin(A, chunk), chunk_begin(A, chunk + 1),
                                                    scratch.s);
        }
      });
    });
  });
  return at::scalar_tensor(total_loss(partial, mean, batch, p), offsets.options());
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
  if (parse_mean(reduction)) scale /= num_pairs(batch, p);
  at::Tensor grad_offsets = at::empty(offsets.sizes(), offsets.options());
  AT_DISPATCH_FLOATING_TYPES(offsets.scalar_type(), "oce_loss_backward_cpu", [&] {
    dispatch_dims(offsets, [&](auto dims) {
      constexpr int D = decltype(dims)::value;
      const at::Tensor disk = make_disk(kappa, D);
      const Grid<D> g = make_grid<D>(offsets, kappa, disk);
      const scalar_t* data = offsets.data_ptr<scalar_t>();
      scalar_t* grad_data = grad_offsets.data_ptr<scalar_t>();
      const int64_t pixels = g.channel_stride;
      if (capability() == Capability::kGeneric) {
        at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
          for (int64_t b = begin; b < end; ++b) {
            scalar_t* grad_image = grad_data + b * D * pixels;
            std::fill(grad_image, grad_image + D * pixels, scalar_t(0));
            auto add = [&](int64_t index, int c, scalar_t value) { grad_image[c * pixels + index] += value; };
            for (uint32_t a = 0; a < p.num_anchors; ++a) {
              anchor_gradient<D, scalar_t>(data + b * D * pixels, g, p, static_cast<uint32_t>(b), a,
                                           static_cast<scalar_t>(scale), add);
            }
          }
        });
        return;
      }
      if (gradient_avx2_2d(data, g, p, batch, scale, grad_data, nullptr)) return;
      const auto entries = disk_entries<D, scalar_t>(g);
      // One image per task: images own disjoint gradient slices, so no atomics and a deterministic order.
      at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
        StagedImageBuffer<D, scalar_t> staged(g, entries.data());
        ScratchBuffers<D, scalar_t> scratch(p.num_references);
        std::vector<scalar_t> grad_image(D * pixels);  // channels-last, like the staged image
        for (int64_t b = begin; b < end; ++b) {
          staged.load(data, b);
          std::fill(grad_image.begin(), grad_image.end(), scalar_t(0));
          run_backward<D, scalar_t>(staged.im, p, static_cast<uint32_t>(b), static_cast<scalar_t>(scale),
                                      grad_image.data(), scratch.s);
          scalar_t* out = grad_data + b * D * pixels;
          for (int64_t q = 0; q < pixels; ++q) {
            for (int c = 0; c < D; ++c) out[c * pixels + q] = grad_image[q * D + c];
          }
        }
      });
    });
  });
  return grad_offsets;
}

// The loss and its gradient for a unit upstream gradient, equal to oce_loss_cpu's and oce_loss_backward_cpu's.
// The float32 2-D kernels compute both in one pass over the pairs (which the Python layer uses whenever a
// gradient will be needed: drawing and reading the pairs is most of the cost, so this saves about a third
// of forward + backward); other dtypes and dims run the two passes.
std::tuple<at::Tensor, at::Tensor> oce_loss_and_grad_cpu(const at::Tensor& offsets_in, double density, double kappa,
                                                         int64_t num_references, double tau, double lambda_reg,
                                                         c10::string_view nonlinearity, bool detach_reference,
                                                         int64_t seed, c10::string_view reduction) {
  const LossParams p = make_params(offsets_in, density, kappa, num_references, tau, lambda_reg, nonlinearity,
                                   detach_reference, seed);
  const bool mean = parse_mean(reduction);
  if (offsets_in.scalar_type() == at::kFloat && offsets_in.dim() == 4 && use_avx2()) {
    const at::Tensor offsets = offsets_in.contiguous();
    const int64_t batch = offsets.size(0);
    const at::Tensor disk = make_disk(kappa, 2);
    const Grid<2> g = make_grid<2>(offsets, kappa, disk);
    const double scale = mean ? 1.0 / num_pairs(batch, p) : 1.0;
    at::Tensor grad = at::empty(offsets.sizes(), offsets.options());
    std::vector<double> partial(batch * kChunksPerImage, 0.0);
    if (gradient_avx2_2d(offsets.data_ptr<float>(), g, p, batch, scale, grad.data_ptr<float>(), &partial)) {
      return {at::scalar_tensor(total_loss(partial, mean, batch, p), offsets.options()), grad};
    }
  }
  return {oce_loss_cpu(offsets_in, density, kappa, num_references, tau, lambda_reg, nonlinearity,
                       detach_reference, seed, reduction),
          oce_loss_backward_cpu(at::ones({}, offsets_in.options()), offsets_in, density, kappa, num_references,
                                tau, lambda_reg, nonlinearity, detach_reference, seed, reduction)};
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
    const at::Tensor disk = make_disk(kappa, D);
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
  m.impl("oce_loss_and_grad", &oce_loss_and_grad_cpu);
  m.impl("sample_pairs", &sample_pairs_cpu);
}

}  // namespace oce
}  // namespace cellulus_fast
