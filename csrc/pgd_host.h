// Host side of the PGD step and random-start ops, shared by the CPU and CUDA kernels: every argument
// check (one clear line per problem) and the one layout decision. The kernels then walk dense tensors
// with identical strides as flat arrays, in memory order, which keeps any memory format.
#pragma once
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <c10/core/GradMode.h>

#include <cmath>
#include <limits>
#include <optional>
#include <string>

#include "fr_common.h"
#include "fr_text.h"

namespace fr_fast {

// Per-element parameters of a kernel call, in the accumulation type. With per-sample tensors, element
// i (in memory order) belongs to sample i / per_row and reads step_rows / radius_rows there.
template <typename acc_t>
struct StepArgs {
  acc_t step, radius;
  StepBounds<acc_t> clip;
  const acc_t* step_rows;    // per-sample alpha, or nullptr
  const acc_t* radius_rows;  // per-sample eps, or nullptr
  int64_t per_row;
};

// What a kernel runs on: `target` is x_adv itself or a dense copy written back by finish_in_place;
// `grad` and `x_nat` have target's strides.
struct StepPlan {
  at::Tensor target, grad, x_nat, step_rows, radius_rows;
  double step = 0, radius = 0, lo = 0, hi = 0;
  int64_t per_row = 1;

  template <typename acc_t>
  StepArgs<acc_t> args() const {
    return {static_cast<acc_t>(step),
            static_cast<acc_t>(radius),
            {static_cast<acc_t>(lo), static_cast<acc_t>(hi)},
            step_rows.defined() ? step_rows.const_data_ptr<acc_t>() : nullptr,
            radius_rows.defined() ? radius_rows.const_data_ptr<acc_t>() : nullptr,
            per_row};
  }
};

inline void check_operand(const char* op, const at::Tensor& x_adv, const at::Tensor& other, const char* name) {
  TORCH_CHECK_VALUE(other.sizes() == x_adv.sizes(), op, ": ", name, " has shape ", text(other.sizes()),
                    " but x_adv has shape ", text(x_adv.sizes()));
  TORCH_CHECK_VALUE(other.scalar_type() == x_adv.scalar_type(), op, ": x_adv is ", dtype_name(x_adv.scalar_type()), " but ",
                    name, " is ", dtype_name(other.scalar_type()), "; convert it with .to(x_adv.dtype)");
  TORCH_CHECK_VALUE(other.device() == x_adv.device(), op, ": x_adv is on ", text(x_adv.device()), " but ", name, " is on ",
                    text(other.device()));
  // Both dense and overlapping: the kernel would read what it has already written. (A non-dense operand
  // is copied before the kernel runs, so it cannot alias what the kernel writes.)
  const at::MemOverlapStatus overlap = at::get_overlap_status(x_adv, other);
  TORCH_CHECK_VALUE(overlap != at::MemOverlapStatus::Full && overlap != at::MemOverlapStatus::Partial, op,
                    ": x_adv and ", name, " share memory; pass a separate tensor (e.g. ", name, ".clone())");
}

inline void check_target(const char* op, const at::Tensor& x_adv) {
  TORCH_CHECK_VALUE(is_kernel_dtype(x_adv.scalar_type()), op,
                    ": x_adv must be a floating-point tensor (float16, bfloat16, float32 or float64), got ",
                    dtype_name(x_adv.scalar_type()));
  TORCH_CHECK_VALUE(!(x_adv.requires_grad() && c10::GradMode::is_enabled()), op,
                    ": x_adv requires grad; pass a detached tensor (e.g. x_adv.detach_()) to update in place");
  at::assert_no_internal_overlap(x_adv);
}

// lo/hi of the clip: None means no bound (+-inf, which lets every value through but NaN).
inline void set_clip(const char* op, StepPlan& plan, std::optional<double> clip_min, std::optional<double> clip_max) {
  constexpr double inf = std::numeric_limits<double>::infinity();
  plan.lo = clip_min.value_or(-inf);
  plan.hi = clip_max.value_or(inf);
  TORCH_CHECK_VALUE(!std::isnan(plan.lo) && !std::isnan(plan.hi) && plan.lo <= plan.hi, op,
                    ": need clip_min <= clip_max (None for no bound), got ", text(plan.lo), " and ", text(plan.hi));
}

// A per-sample value tensor as contiguous values in the accumulation dtype, checked (one device sync
// for CUDA tensors); undefined when not given.
inline at::Tensor per_sample(const char* op, const std::optional<at::Tensor>& given, const at::Tensor& x_adv,
                             const char* name, bool non_negative) {
  if (!given.has_value() || !given->defined()) return {};
  const at::Tensor& rows = *given;
  TORCH_CHECK_VALUE(x_adv.dim() >= 1, op, ": a per-sample ", name, " needs an x_adv with a batch dimension");
  TORCH_CHECK_VALUE(rows.dim() == 1 && rows.size(0) == x_adv.size(0), op, ": a per-sample ", name,
                    " must have shape (", text(x_adv.size(0)), ",), one value per sample of x_adv, got ",
                    text(rows.sizes()));
  TORCH_CHECK_VALUE(rows.is_floating_point(), op, ": ", name, " must be a floating-point tensor, got ",
                    dtype_name(rows.scalar_type()));
  TORCH_CHECK_VALUE(rows.device() == x_adv.device(), op, ": x_adv is on ", text(x_adv.device()), " but ", name, " is on ",
                    text(rows.device()));
  const at::Tensor values = rows.to(x_adv.scalar_type() == at::kDouble ? at::kDouble : at::kFloat).contiguous();
  const at::Tensor ok = non_negative ? at::logical_and(values.isfinite(), values >= 0) : values.isfinite();
  TORCH_CHECK_VALUE(ok.all().item<bool>(), op, ": every ", name, " must be finite", non_negative ? " and >= 0" : "");
  return values;
}

// Sample b's elements form one contiguous block of memory (what the per-sample kernels assume).
inline bool batch_outermost(const at::Tensor& t) { return t.size(0) <= 1 || t.stride(0) * t.size(0) == t.numel(); }

// `t` with exactly the strides of the dense `target` (a copy only when they differ).
inline at::Tensor like(const at::Tensor& target, const at::Tensor& t) {
  return t.strides() == target.strides() ? t : at::empty_like(target).copy_(t);
}

inline void set_layout(StepPlan& plan, const at::Tensor& x_adv) {
  const bool rows = plan.step_rows.defined() || plan.radius_rows.defined();
  const bool usable = x_adv.is_non_overlapping_and_dense() && (!rows || batch_outermost(x_adv));
  plan.target = usable ? x_adv : x_adv.contiguous();
  plan.per_row = rows && x_adv.numel() > 0 ? x_adv.numel() / x_adv.size(0) : std::max<int64_t>(1, x_adv.numel());
}

inline StepPlan plan_pgd_step(const at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x_nat, double alpha,
                              double eps, std::optional<double> clip_min, std::optional<double> clip_max,
                              const std::optional<at::Tensor>& alpha_rows, const std::optional<at::Tensor>& eps_rows) {
  constexpr const char* op = "pgd_step_";
  check_target(op, x_adv);
  check_operand(op, x_adv, grad, "grad");
  check_operand(op, x_adv, x_nat, "x_nat");
  TORCH_CHECK_VALUE(std::isfinite(alpha), op, ": alpha must be a finite number, got ", text(alpha));
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0, op, ": eps must be a finite number >= 0, got ", text(eps));
  StepPlan plan;
  set_clip(op, plan, clip_min, clip_max);
  plan.step = alpha;
  plan.radius = eps;
  plan.step_rows = per_sample(op, alpha_rows, x_adv, "alpha", false);
  plan.radius_rows = per_sample(op, eps_rows, x_adv, "eps", true);
  set_layout(plan, x_adv);
  plan.grad = like(plan.target, grad);
  plan.x_nat = like(plan.target, x_nat);
  return plan;
}

inline StepPlan plan_add_clip(const at::Tensor& x_adv, const at::Tensor& x_nat, std::optional<double> clip_min,
                              std::optional<double> clip_max) {
  constexpr const char* op = "add_clip_";
  check_target(op, x_adv);
  check_operand(op, x_adv, x_nat, "x_nat");
  StepPlan plan;
  set_clip(op, plan, clip_min, clip_max);
  set_layout(plan, x_adv);
  plan.x_nat = like(plan.target, x_nat);
  return plan;
}

// Writes the result back when the kernel ran on a dense copy of x_adv.
inline void finish_in_place(at::Tensor& x_adv, const StepPlan& plan) {
  if (!plan.target.is_same(x_adv)) x_adv.copy_(plan.target);
}

}  // namespace fr_fast
