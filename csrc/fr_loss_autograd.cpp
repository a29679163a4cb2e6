// Autograd for fr_fast::fr_l1 and fr_fast::fr2d_l1, in C++: forward and backward stay in the
// dispatcher, without the Python autograd.Function round trip that would cost more than the kernels
// themselves on small (B, C) logits. When a gradient is needed, the forward runs the *_with_grad op
// (the loss and its gradient for an upstream of 1, the "pattern", in one pass / one launch) and the
// backward only scales the pattern. Under torch.func transforms fr_fast.ops uses a Python
// autograd.Function over the same *_with_grad ops instead (a C++ autograd::Function cannot run there).
#include <torch/autograd.h>
#include <torch/library.h>

#include "fr_common.h"

namespace fr_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Loss = at::Tensor(const at::Tensor&, const at::Tensor&, int64_t);
using LossWithGrad = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, int64_t);

template <typename Signature>
c10::TypedOperatorHandle<Signature> op_named(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// The pattern as a function of the logits with derivative zero: the loss is piecewise linear. Under
// create_graph=True the first gradient then stays connected to the logits, and its own gradient is
// zeros, as autograd through torch.fft's abs gives (instead of "does not require grad").
class PiecewiseConstant : public torch::autograd::Function<PiecewiseConstant> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& teacher, const at::Tensor& adv,
                            const at::Tensor& pattern) {
    ctx->save_for_backward({teacher, adv});
    return pattern.detach();
  }

  static variable_list backward(AutogradContext* ctx, variable_list /*grads*/) {
    const auto saved = ctx->get_saved_variables();
    return {at::zeros_like(saved[0]), at::zeros_like(saved[1]), at::Tensor()};
  }
};

// fr_l1 (k2d false) or fr2d_l1 (true) when a gradient is needed.
template <bool k2d>
class FRWithGrad : public torch::autograd::Function<FRWithGrad<k2d>> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& teacher, const at::Tensor& adv, int64_t reduction) {
    static const auto op = op_named<LossWithGrad>(k2d ? "fr_fast::fr2d_l1_with_grad" : "fr_fast::fr_l1_with_grad");
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, pattern] = op.call(teacher, adv, reduction);
    ctx->saved_data["per_row"] = !k2d && reduction == kNone;
    ctx->saved_data["dtype"] = static_cast<int64_t>(teacher.scalar_type());
    ctx->save_for_backward({pattern, teacher, adv});
    return loss;
  }

  // upstream * pattern in the logits' dtype, for teacher and (negated) adv, with differentiable ops.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto dtype = static_cast<at::ScalarType>(ctx->saved_data["dtype"].toInt());
    const at::Tensor pattern =
        at::GradMode::is_enabled() ? PiecewiseConstant::apply(saved[1], saved[2], saved[0]) : saved[0];
    const at::Tensor upstream = ctx->saved_data["per_row"].toBool() ? grads[0].unsqueeze(1) : grads[0];
    at::Tensor grad_teacher = upstream.mul(pattern);
    if (grad_teacher.scalar_type() != dtype) grad_teacher = grad_teacher.to(dtype);
    return {grad_teacher, grad_teacher.neg(), at::Tensor()};
  }
};

template <bool k2d>
at::Tensor fr_autograd(const at::Tensor& teacher, const at::Tensor& adv, int64_t reduction) {
  if (at::GradMode::is_enabled() && (teacher.requires_grad() || adv.requires_grad()))
    return FRWithGrad<k2d>::apply(teacher, adv, reduction);
  static const auto op = op_named<Loss>(k2d ? "fr_fast::fr2d_l1" : "fr_fast::fr_l1");
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(teacher, adv, reduction);
}

}  // namespace

TORCH_LIBRARY_IMPL(fr_fast, Autograd, m) {
  m.impl("fr_l1", &fr_autograd<false>);
  m.impl("fr2d_l1", &fr_autograd<true>);
}

}  // namespace fr_fast
