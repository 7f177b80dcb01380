// Operator schemas of the cellulus_fast library. Kernels are registered per device in their own files
// (csrc/*/..._cpu.cpp, csrc/*/..._cuda.cu); fake kernels and autograd in cellulus_fast/ops/*.py.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// Importing cellulus_fast._C loads this library, which runs the registrations below; it has no Python API.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(cellulus_fast, m) {
  m.def(
      "oce_loss(Tensor offsets, float density, float kappa, int num_references, float tau, float lambda_reg, "
      "str nonlinearity, bool detach_reference, int seed, str reduction) -> Tensor");
  m.def(
      "oce_loss_backward(Tensor grad, Tensor offsets, float density, float kappa, int num_references, "
      "float tau, float lambda_reg, str nonlinearity, bool detach_reference, int seed, str reduction) -> Tensor");
  // The loss and its gradient w.r.t. offsets for a unit upstream gradient, what autograd uses when a gradient
  // will be needed (one pass over the pairs for float32 2-D offsets on CPUs with AVX2, else two).
  m.def(
      "oce_loss_and_grad(Tensor offsets, float density, float kappa, int num_references, float tau, "
      "float lambda_reg, str nonlinearity, bool detach_reference, int seed, str reduction) -> (Tensor, Tensor)");
  m.def("sample_pairs(Tensor offsets, float density, float kappa, int num_references, int seed) -> (Tensor, Tensor)");
  // Mean-shift (flat kernel, scikit-learn semantics), in three steps the Python layer chains.
  m.def("mean_shift_modes(Tensor points, Tensor seeds, float bandwidth, int max_iter) -> (Tensor, Tensor, Tensor)");
  m.def("mean_shift_dedup(Tensor centers, float bandwidth) -> Tensor");
  m.def("nearest_center(Tensor points, Tensor centers, float bandwidth, bool cluster_all) -> Tensor");
}
