// Op schemas of fr_fast and the Python module. The kernels register their implementations per device
// in fr*_loss*.{cpp,cu} and pgd_step*.{cpp,cu}. The module has two functions, direct entry points to
// fr_fast::pgd_step_ and to the L1 FR ops for fr_fast.ops: the generic torch.ops argument parsing and the
// Python checks cost more than the kernels on small tensors (a PGD step, B=128 logits).
#include <Python.h>
#include <ATen/ATen.h>
#include <ATen/PythonTorchFunctionTLS.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/library.h>

#include <optional>

namespace {

// A Python number, or None as no value; false with a Python error set otherwise.
bool optional_double(PyObject* object, std::optional<double>& value) {
  if (object == Py_None) {
    value = std::nullopt;
    return true;
  }
  const double number = PyFloat_AsDouble(object);
  if (number == -1.0 && PyErr_Occurred()) return false;
  value = number;
  return true;
}

// pgd_step_(x_adv, grad, x_nat, alpha, eps, clip_min, clip_max) -> x_adv for plain tensors with a
// kernel (checks in the kernels); NotImplemented when fr_fast.ops must take the general path (tensor
// subclasses, torch function modes, other devices or argument types).
PyObject* pgd_step_entry(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 7 || at::impl::torch_function_mode_enabled()) Py_RETURN_NOTIMPLEMENTED;
  for (int i = 0; i < 3; ++i)
    if (!THPVariable_CheckExact(args[i])) Py_RETURN_NOTIMPLEMENTED;
  for (int i = 3; i < 5; ++i) {
    if (PyBool_Check(args[i])) {  // a bool is a Python int: refuse it rather than step by True == 1
      PyErr_Format(PyExc_ValueError, "pgd_step_: %s must be a finite number, got %s", i == 3 ? "alpha" : "eps",
                   args[i] == Py_True ? "True" : "False");
      return nullptr;
    }
    if (!PyFloat_Check(args[i]) && !PyLong_Check(args[i])) Py_RETURN_NOTIMPLEMENTED;
  }
  for (int i = 5; i < 7; ++i) {
    if (PyBool_Check(args[i])) {
      PyErr_Format(PyExc_ValueError, "pgd_step_: %s must be a number or None (no bound), got %s",
                   i == 5 ? "clip_min" : "clip_max", args[i] == Py_True ? "True" : "False");
      return nullptr;
    }
  }
  static const c10::OperatorHandle handle = c10::Dispatcher::singleton().findSchemaOrThrow("fr_fast::pgd_step_", "");
  static const bool cuda_kernel = handle.hasKernelForDispatchKey(c10::DispatchKey::CUDA);
  static const auto op =
      handle.typed<void(at::Tensor&, const at::Tensor&, const at::Tensor&, double, double, std::optional<double>,
                        std::optional<double>, const std::optional<at::Tensor>&, const std::optional<at::Tensor>&)>();
  const at::Tensor& x_adv = THPVariable_Unpack(args[0]);
  const c10::DeviceType device = x_adv.device().type();
  if (device != c10::DeviceType::CPU && !(device == c10::DeviceType::CUDA && cuda_kernel)) Py_RETURN_NOTIMPLEMENTED;
  std::optional<double> clip_min, clip_max;
  if (!optional_double(args[5], clip_min) || !optional_double(args[6], clip_max)) return nullptr;
  const double alpha = PyFloat_AsDouble(args[3]), eps = PyFloat_AsDouble(args[4]);
  if (PyErr_Occurred()) return nullptr;
  at::Tensor target = x_adv;
  {
    pybind11::gil_scoped_release no_gil;
    op.call(target, THPVariable_Unpack(args[1]), THPVariable_Unpack(args[2]), alpha, eps, clip_min, clip_max,
            std::nullopt, std::nullopt);
  }
  Py_INCREF(args[0]);
  return args[0];
  END_HANDLE_TH_ERRORS
}

// Index of `object` (a str) in `names`, or -1.
template <size_t N>
int choice(PyObject* object, const char* const (&names)[N]) {
  if (!PyUnicode_Check(object)) return -1;
  for (size_t i = 0; i < N; ++i)
    if (PyUnicode_CompareWithASCIIString(object, names[i]) == 0) return static_cast<int>(i);
  return -1;
}

// fr_loss(teacher, adv, distance, reduction, fft) -> loss for the fused L1 forms on plain tensors of one
// dtype (the op checks shapes, dtype and device in C++); NotImplemented for everything fr_fast.ops decides
// itself: other distances, mixed dtypes, tensor subclasses, torch function modes, torch.func transforms,
// devices without a kernel or two devices.
PyObject* fr_loss_entry(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 5 || at::impl::torch_function_mode_enabled()) Py_RETURN_NOTIMPLEMENTED;
  if (!THPVariable_CheckExact(args[0]) || !THPVariable_CheckExact(args[1])) Py_RETURN_NOTIMPLEMENTED;
  static const char* const distances[] = {"l1"};
  static const char* const reductions[] = {"none", "mean", "sum"};  // the kernels' codes 0, 1, 2
  static const char* const ffts[] = {"1d", "2d"};
  const int reduction = choice(args[3], reductions), fft = choice(args[4], ffts);
  if (choice(args[2], distances) != 0 || reduction < 0 || fft < 0 || (fft == 1 && reduction == 0))
    Py_RETURN_NOTIMPLEMENTED;
  // torch.func transforms include their front key while any transform is active.
  if (c10::impl::tls_is_dispatch_key_included(c10::DispatchKey::FuncTorchDynamicLayerFrontMode))
    Py_RETURN_NOTIMPLEMENTED;
  const at::Tensor& teacher = THPVariable_Unpack(args[0]);
  const at::Tensor& adv = THPVariable_Unpack(args[1]);
  if (teacher.scalar_type() != adv.scalar_type() || teacher.device() != adv.device()) Py_RETURN_NOTIMPLEMENTED;
  using Loss = at::Tensor(const at::Tensor&, const at::Tensor&, int64_t);
  static const c10::OperatorHandle l1 = c10::Dispatcher::singleton().findSchemaOrThrow("fr_fast::fr_l1", "");
  static const c10::OperatorHandle l1_2d = c10::Dispatcher::singleton().findSchemaOrThrow("fr_fast::fr2d_l1", "");
  static const bool cuda_kernel = l1.hasKernelForDispatchKey(c10::DispatchKey::CUDA);
  static const auto op_1d = l1.typed<Loss>();
  static const auto op_2d = l1_2d.typed<Loss>();
  const c10::DeviceType device = teacher.device().type();
  if (device != c10::DeviceType::CPU && !(device == c10::DeviceType::CUDA && cuda_kernel)) Py_RETURN_NOTIMPLEMENTED;
  at::Tensor loss;
  {
    pybind11::gil_scoped_release no_gil;
    loss = (fft == 0 ? op_1d : op_2d).call(teacher, adv, reduction);
  }
  return THPVariable_Wrap(std::move(loss));
  END_HANDLE_TH_ERRORS
}

PyMethodDef methods[] = {
    {"pgd_step_", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(pgd_step_entry)), METH_FASTCALL,
     "pgd_step_(x_adv, grad, x_nat, alpha, eps, clip_min, clip_max): fr_fast::pgd_step_ for plain tensors, "
     "else NotImplemented. Use fr_fast.pgd_step_."},
    {"fr_loss", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(fr_loss_entry)), METH_FASTCALL,
     "fr_loss(teacher, adv, distance, reduction, fft): the fused L1 FR op for plain tensors, "
     "else NotImplemented. Use fr_fast.fr_loss."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

extern "C" {
// `import fr_fast._C` loads this library, which runs the static registrations below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(fr_fast, m) {
  // Per-example (reduction 0), mean (1) or summed (2) L1 distance between the class-dimension DFTs of
  // two (B, C) logit tensors. float32 result for 16-bit inputs, float64 for float64.
  m.def("fr_l1(Tensor teacher, Tensor adv, int reduction) -> Tensor");
  // Gradients of fr_l1 with respect to both inputs, in the inputs' dtypes.
  m.def("fr_l1_backward(Tensor grad, Tensor teacher, Tensor adv, int reduction) -> (Tensor, Tensor)");
  // fr_l1 and, for an upstream gradient of 1, its gradient with respect to teacher ((B, C), in the loss's
  // dtype; adv's is the negative). The autograd of fr_l1 keeps it, so its backward is one scaling.
  m.def("fr_l1_with_grad(Tensor teacher, Tensor adv, int reduction) -> (Tensor, Tensor)");
  // The 2-D form (fft="2d", the authors' code): L1 over the real and imaginary parts of the 2-D DFT of
  // teacher - adv (B, C), averaged over all 2 * B * C of them (reduction 1) or summed (2). float32 result
  // for 16-bit inputs, float64 for float64.
  m.def("fr2d_l1(Tensor teacher, Tensor adv, int reduction) -> Tensor");
  // fr2d_l1 and its gradient with respect to teacher for an upstream gradient of 1 ((B, C), in the loss's
  // dtype; adv's is the negative). The autograd of fr2d_l1 keeps it, so its backward is one scaling.
  m.def("fr2d_l1_with_grad(Tensor teacher, Tensor adv, int reduction) -> (Tensor, Tensor)");
  // x_adv <- clamp(min(max(x_adv + alpha * sign(grad), x_nat - eps), x_nat + eps), clip_min, clip_max), in
  // place; a None bound does not clip. alpha_rows / eps_rows: optional (B,) per-sample values that
  // replace alpha / eps.
  m.def(
      "pgd_step_(Tensor(a!) x_adv, Tensor grad, Tensor x_nat, float alpha, float eps, float? clip_min=0., "
      "float? clip_max=1., Tensor? alpha_rows=None, Tensor? eps_rows=None) -> ()");
  // x_adv <- clamp(x_adv + x_nat, clip_min, clip_max), in place (x_adv holds uniform noise: the PGD random start).
  m.def("add_clip_(Tensor(a!) x_adv, Tensor x_nat, float? clip_min=0., float? clip_max=1.) -> ()");
}
