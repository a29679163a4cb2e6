// Autograd for fr_fast::fr_l1, in C++: forward and backward stay in the dispatcher, without the
// Python autograd.Function round trip that would cost more than the kernels themselves on small
// (B, C) logits. It redispatches to the CPU or CUDA kernels. When a gradient is needed, the forward
// also returns the gradient for an upstream of 1 (fr_l1_with_grad, one pass / one launch) and the
// backward only scales it. Under torch.func transforms fr_fast.ops uses a Python autograd.Function
// over the same *_with_grad ops instead (a C++ autograd::Function cannot run under functorch).
#include <torch/autograd.h>
#include <torch/library.h>

#include "fr_common.h"

namespace fr_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor call_forward(const at::Tensor& teacher, const at::Tensor& adv, int64_t reduction) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fr_fast::fr_l1", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t)>();
  return op.call(teacher, adv, reduction);
}

std::tuple<at::Tensor, at::Tensor> call_with_grad(const at::Tensor& teacher, const at::Tensor& adv, int64_t reduction) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fr_fast::fr_l1_with_grad", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, int64_t)>();
  return op.call(teacher, adv, reduction);
}

std::tuple<at::Tensor, at::Tensor> call_backward(const at::Tensor& grad, const at::Tensor& teacher,
                                                 const at::Tensor& adv, int64_t reduction) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fr_fast::fr_l1_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t)>();
  return op.call(grad, teacher, adv, reduction);
}

// upstream * pattern in the logits' dtype, for teacher and (negated) adv. Written with differentiable
// ops: the loss is piecewise linear, so this is exact under create_graph=True too (linear in the
// upstream gradient, zero in the logits, as for torch.fft's abs).
variable_list scale_pattern(const at::Tensor& grad, const at::Tensor& pattern, int64_t reduction,
                            at::ScalarType dtype) {
  const at::Tensor upstream = reduction == kNone ? grad.unsqueeze(1) : grad;
  at::Tensor grad_teacher = upstream.mul(pattern);
  if (grad_teacher.scalar_type() != dtype) grad_teacher = grad_teacher.to(dtype);
  return {grad_teacher, grad_teacher.neg(), at::Tensor(), at::Tensor()};
}

class FRL1 : public torch::autograd::Function<FRL1> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& teacher, const at::Tensor& adv, int64_t reduction,
                            bool keep_gradient) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->saved_data["reduction"] = reduction;
    ctx->saved_data["dtype"] = static_cast<int64_t>(teacher.scalar_type());
    if (keep_gradient) {
      auto [loss, pattern] = call_with_grad(teacher, adv, reduction);
      ctx->save_for_backward({pattern});
      return loss;
    }
    ctx->save_for_backward({teacher, adv});
    return call_forward(teacher, adv, reduction);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const int64_t reduction = ctx->saved_data["reduction"].toInt();
    const auto dtype = static_cast<at::ScalarType>(ctx->saved_data["dtype"].toInt());
    if (saved.size() == 1) return scale_pattern(grads[0], saved[0], reduction, dtype);
    if (!at::GradMode::is_enabled()) {
      auto [grad_teacher, grad_adv] = call_backward(grads[0], saved[0], saved[1], reduction);
      return {grad_teacher, grad_adv, at::Tensor(), at::Tensor()};
    }
    at::Tensor pattern;  // create_graph=True on CUDA: the gradient for an upstream of 1, then scaled
    {
      at::NoGradGuard no_grad;
      pattern = std::get<0>(call_backward(at::ones_like(grads[0]), saved[0], saved[1], reduction));
    }
    return scale_pattern(grads[0], pattern.to(grads[0].scalar_type()), reduction, dtype);
  }
};

at::Tensor fr_l1_autograd(const at::Tensor& teacher, const at::Tensor& adv, int64_t reduction) {
  const bool keep_gradient = at::GradMode::is_enabled() && (teacher.requires_grad() || adv.requires_grad());
  return FRL1::apply(teacher, adv, reduction, keep_gradient);
}

std::tuple<at::Tensor, at::Tensor> call_fr2d_with_grad(const at::Tensor& teacher, const at::Tensor& adv,
                                                        int64_t reduction) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fr_fast::fr2d_l1_with_grad", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, int64_t)>();
  return op.call(teacher, adv, reduction);
}

at::Tensor call_fr2d(const at::Tensor& teacher, const at::Tensor& adv, int64_t reduction) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fr_fast::fr2d_l1", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t)>();
  return op.call(teacher, adv, reduction);
}

// The 2-D form keeps the gradient for an upstream of 1 on every device: its backward is one scaling.
class FR2DL1 : public torch::autograd::Function<FR2DL1> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& teacher, const at::Tensor& adv, int64_t reduction) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->saved_data["dtype"] = static_cast<int64_t>(teacher.scalar_type());
    auto [loss, pattern] = call_fr2d_with_grad(teacher, adv, reduction);
    ctx->save_for_backward({pattern});
    return loss;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto dtype = static_cast<at::ScalarType>(ctx->saved_data["dtype"].toInt());
    variable_list out = scale_pattern(grads[0], ctx->get_saved_variables()[0], kSum, dtype);
    out.pop_back();  // three inputs
    return out;
  }
};

at::Tensor fr2d_l1_autograd(const at::Tensor& teacher, const at::Tensor& adv, int64_t reduction) {
  if (at::GradMode::is_enabled() && (teacher.requires_grad() || adv.requires_grad()))
    return FR2DL1::apply(teacher, adv, reduction);
  at::AutoDispatchBelowADInplaceOrView guard;
  return call_fr2d(teacher, adv, reduction);
}

}  // namespace

TORCH_LIBRARY_IMPL(fr_fast, Autograd, m) {
  m.impl("fr_l1", &fr_l1_autograd);
  m.impl("fr2d_l1", &fr2d_l1_autograd);
}

}  // namespace fr_fast
