// Autograd for fr_fast::fr_l1, in C++: forward and backward stay in the dispatcher, without the
// Python autograd.Function round trip that would cost more than the kernels themselves on small
// (B, C) logits. Device-agnostic: it redispatches to the CPU or CUDA kernels.
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

std::tuple<at::Tensor, at::Tensor> call_backward(const at::Tensor& grad, const at::Tensor& teacher,
                                                 const at::Tensor& adv, int64_t reduction) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fr_fast::fr_l1_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t)>();
  return op.call(grad, teacher, adv, reduction);
}

class FRL1 : public torch::autograd::Function<FRL1> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& teacher, const at::Tensor& adv,
                            int64_t reduction) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({teacher, adv});
    ctx->saved_data["reduction"] = reduction;
    return call_forward(teacher, adv, reduction);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const int64_t reduction = ctx->saved_data["reduction"].toInt();
    if (!at::GradMode::is_enabled()) {
      auto [grad_teacher, grad_adv] = call_backward(grads[0], saved[0], saved[1], reduction);
      return {grad_teacher, grad_adv, at::Tensor()};
    }
    // create_graph=True: the loss is piecewise linear, so its gradient is upstream * P with P (the
    // gradient for an upstream of 1) locally constant. Written with differentiable ops, the double
    // backward is exact: linear in the upstream gradient, zero in the logits (as for torch.fft's abs).
    const at::Tensor& grad = grads[0];
    at::Tensor pattern;
    {
      at::NoGradGuard no_grad;
      pattern = std::get<0>(call_backward(at::ones_like(grad), saved[0], saved[1], reduction));
    }
    const at::Tensor upstream = reduction == kNone ? grad.unsqueeze(1) : grad;
    const at::Tensor grad_teacher = upstream.mul(pattern.to(grad.scalar_type())).to(saved[0].scalar_type());
    return {grad_teacher, grad_teacher.neg(), at::Tensor()};
  }
};

at::Tensor fr_l1_autograd(const at::Tensor& teacher, const at::Tensor& adv, int64_t reduction) {
  return FRL1::apply(teacher, adv, reduction);
}

}  // namespace

TORCH_LIBRARY_IMPL(fr_fast, Autograd, m) { m.impl("fr_l1", &fr_l1_autograd); }

}  // namespace fr_fast
