// Op schemas of fr_fast and the Python module entry point. The kernels register their
// implementations per device in fr_loss*.{cpp,cu} and pgd_step*.{cpp,cu}.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// `import fr_fast._C` only needs to load this library so that the static registrations below run.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(fr_fast, m) {
  // Per-example (reduction 0), mean (1) or summed (2) L1 distance between the class-dimension DFTs of
  // two (B, C) logit tensors. float32 result for 16-bit inputs, float64 for float64.
  m.def("fr_l1(Tensor teacher, Tensor adv, int reduction) -> Tensor");
  // Gradients of fr_l1 with respect to both inputs, in the inputs' dtypes.
  m.def("fr_l1_backward(Tensor grad, Tensor teacher, Tensor adv, int reduction) -> (Tensor, Tensor)");
  // x_adv <- clamp(min(max(x_adv + alpha * sign(grad), x_nat - eps), x_nat + eps), clip_min, clip_max), in
  // place; a None bound does not clip. alpha_rows / eps_rows: optional (B,) per-sample values that
  // replace alpha / eps.
  m.def(
      "pgd_step_(Tensor(a!) x_adv, Tensor grad, Tensor x_nat, float alpha, float eps, float? clip_min=0., "
      "float? clip_max=1., Tensor? alpha_rows=None, Tensor? eps_rows=None) -> ()");
  // x_adv <- clamp(x_adv + x_nat, clip_min, clip_max), in place (x_adv holds uniform noise: the PGD random start).
  m.def("add_clip_(Tensor(a!) x_adv, Tensor x_nat, float? clip_min=0., float? clip_max=1.) -> ()");
}
