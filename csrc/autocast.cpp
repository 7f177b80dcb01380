// Autocast (automatic mixed precision) kernels of the OCE-loss ops, as torchvision registers them for its ops:
// under torch.autocast (CPU or CUDA) float16 / bfloat16 offsets are cast to float32 and the op runs in float32
// (the loss and its gradient are sums over many pairs: half precision would lose them). The loss stays float32,
// as for autocast's own float32 ops (e.g. mse_loss); the gradient reaches the half-precision offsets through
// the cast. Without autocast the CPU and CUDA kernels accept float32 and float64 only.
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <tuple>

namespace cellulus_fast {
namespace {

template <typename Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

using LossSignature = at::Tensor(const at::Tensor&, double, double, int64_t, double, double, c10::string_view,
                                 bool, int64_t, c10::string_view);
using LossAndGradSignature = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, double, double, int64_t,
                                                                 double, double, c10::string_view, bool, int64_t,
                                                                 c10::string_view);
using BackwardSignature = at::Tensor(const at::Tensor&, const at::Tensor&, double, double, int64_t, double, double,
                                     c10::string_view, bool, int64_t, c10::string_view);
using SampleSignature = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, double, double, int64_t, int64_t);

template <c10::DispatchKey Key, c10::DeviceType Device>
at::Tensor oce_loss_autocast(const at::Tensor& offsets, double density, double kappa, int64_t num_references,
                             double tau, double lambda_reg, c10::string_view nonlinearity, bool detach_reference,
                             int64_t seed, c10::string_view reduction) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(Key);
  static const auto call = op<LossSignature>("cellulus_fast::oce_loss");
  return call.call(at::autocast::cached_cast(at::kFloat, offsets, Device), density, kappa, num_references, tau,
                   lambda_reg, nonlinearity, detach_reference, seed, reduction);
}

template <c10::DispatchKey Key, c10::DeviceType Device>
std::tuple<at::Tensor, at::Tensor> oce_loss_and_grad_autocast(const at::Tensor& offsets, double density,
                                                              double kappa, int64_t num_references, double tau,
                                                              double lambda_reg, c10::string_view nonlinearity,
                                                              bool detach_reference, int64_t seed,
                                                              c10::string_view reduction) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(Key);
  static const auto call = op<LossAndGradSignature>("cellulus_fast::oce_loss_and_grad");
  return call.call(at::autocast::cached_cast(at::kFloat, offsets, Device), density, kappa, num_references, tau,
                   lambda_reg, nonlinearity, detach_reference, seed, reduction);
}

// The gradient comes back in the dtype of `offsets` (what autograd expects of a backward).
template <c10::DispatchKey Key, c10::DeviceType Device>
at::Tensor oce_loss_backward_autocast(const at::Tensor& grad, const at::Tensor& offsets, double density,
                                      double kappa, int64_t num_references, double tau, double lambda_reg,
                                      c10::string_view nonlinearity, bool detach_reference, int64_t seed,
                                      c10::string_view reduction) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(Key);
  static const auto call = op<BackwardSignature>("cellulus_fast::oce_loss_backward");
  return call
      .call(at::autocast::cached_cast(at::kFloat, grad, Device), at::autocast::cached_cast(at::kFloat, offsets, Device),
            density, kappa, num_references, tau, lambda_reg, nonlinearity, detach_reference, seed, reduction)
      .to(offsets.scalar_type());
}

// The pairs depend on the shape only; the kernels check the dtype.
template <c10::DispatchKey Key, c10::DeviceType Device>
std::tuple<at::Tensor, at::Tensor> sample_pairs_autocast(const at::Tensor& offsets, double density, double kappa,
                                                         int64_t num_references, int64_t seed) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(Key);
  static const auto call = op<SampleSignature>("cellulus_fast::sample_pairs");
  return call.call(at::autocast::cached_cast(at::kFloat, offsets, Device), density, kappa, num_references, seed);
}

template <c10::DispatchKey Key, c10::DeviceType Device>
void register_autocast(torch::Library& m) {
  m.impl("oce_loss", &oce_loss_autocast<Key, Device>);
  m.impl("oce_loss_and_grad", &oce_loss_and_grad_autocast<Key, Device>);
  m.impl("oce_loss_backward", &oce_loss_backward_autocast<Key, Device>);
  m.impl("sample_pairs", &sample_pairs_autocast<Key, Device>);
}

}  // namespace

TORCH_LIBRARY_IMPL(cellulus_fast, AutocastCPU, m) {
  register_autocast<c10::DispatchKey::AutocastCPU, c10::DeviceType::CPU>(m);
}

TORCH_LIBRARY_IMPL(cellulus_fast, AutocastCUDA, m) {
  register_autocast<c10::DispatchKey::AutocastCUDA, c10::DeviceType::CUDA>(m);
}

}  // namespace cellulus_fast
