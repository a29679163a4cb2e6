// CPU fused PGD step and random-start clip: one pass over memory, computed in float32 (float64 for
// float64 tensors). pgd_host.h checks the arguments and lays the operands out as flat arrays.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "pgd_host.h"

namespace fr_fast {
namespace {

constexpr int64_t kGrain = 32768;

// One contiguous range with one step and radius. Restrict-qualified locals (not pointers captured by a
// lambda) let the compiler keep everything in registers and vectorise without alias checks; pgd_host.h
// has checked that x does not overlap g or x0.
template <typename scalar_t>
void pgd_step_range(scalar_t* __restrict__ x, const scalar_t* __restrict__ g, const scalar_t* __restrict__ x0,
                    int64_t n, acc_of<scalar_t> step, acc_of<scalar_t> radius, StepBounds<acc_of<scalar_t>> clip) {
  using acc_t = acc_of<scalar_t>;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i)
    x[i] = static_cast<scalar_t>(pgd_update<acc_t>(static_cast<acc_t>(x[i]), static_cast<acc_t>(g[i]),
                                                   static_cast<acc_t>(x0[i]), step, radius, clip));
}

template <typename scalar_t>
void add_clip_range(scalar_t* __restrict__ x, const scalar_t* __restrict__ x0, int64_t n,
                    StepBounds<acc_of<scalar_t>> clip) {
  using acc_t = acc_of<scalar_t>;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i)
    x[i] = static_cast<scalar_t>(add_clip<acc_t>(static_cast<acc_t>(x[i]), static_cast<acc_t>(x0[i]), clip));
}

// Splits [0, numel) over threads and each thread's share at sample boundaries, so that every call of
// pgd_step_range has one step and one radius (per-sample tensors) and still vectorises.
template <typename scalar_t>
void pgd_step_kernel(scalar_t* x, const scalar_t* g, const scalar_t* x0, int64_t numel,
                     const StepArgs<acc_of<scalar_t>>& args) {
  const bool rows = args.step_rows != nullptr || args.radius_rows != nullptr;
  const int64_t per_row = rows ? args.per_row : numel;
  at::parallel_for(0, numel, kGrain, [&](int64_t begin, int64_t end) {
    while (begin < end) {
      const int64_t row = begin / per_row;
      const int64_t stop = std::min(end, (row + 1) * per_row);
      pgd_step_range(x + begin, g + begin, x0 + begin, stop - begin,
                     args.step_rows != nullptr ? args.step_rows[row] : args.step,
                     args.radius_rows != nullptr ? args.radius_rows[row] : args.radius, args.clip);
      begin = stop;
    }
  });
}

void pgd_step_cpu(at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x_nat, double alpha, double eps,
                  std::optional<double> clip_min, std::optional<double> clip_max,
                  const std::optional<at::Tensor>& alpha_rows, const std::optional<at::Tensor>& eps_rows) {
  const StepPlan plan = plan_pgd_step(x_adv, grad, x_nat, alpha, eps, clip_min, clip_max, alpha_rows, eps_rows);
  const int64_t numel = plan.target.numel();
  if (numel == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_adv.scalar_type(), "pgd_step_cpu", [&] {
    pgd_step_kernel(plan.target.mutable_data_ptr<scalar_t>(), plan.grad.const_data_ptr<scalar_t>(),
                    plan.x_nat.const_data_ptr<scalar_t>(), numel, plan.args<acc_of<scalar_t>>());
  });
  finish_in_place(x_adv, plan);
}

void add_clip_cpu(at::Tensor& x_adv, const at::Tensor& x_nat, std::optional<double> clip_min,
                  std::optional<double> clip_max) {
  const StepPlan plan = plan_add_clip(x_adv, x_nat, clip_min, clip_max);
  const int64_t numel = plan.target.numel();
  if (numel == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_adv.scalar_type(), "add_clip_cpu", [&] {
    const StepBounds<acc_of<scalar_t>> clip = plan.args<acc_of<scalar_t>>().clip;
    scalar_t* x = plan.target.mutable_data_ptr<scalar_t>();
    const scalar_t* x0 = plan.x_nat.const_data_ptr<scalar_t>();
    at::parallel_for(0, numel, kGrain,
                     [&](int64_t begin, int64_t end) { add_clip_range(x + begin, x0 + begin, end - begin, clip); });
  });
  finish_in_place(x_adv, plan);
}

}  // namespace

TORCH_LIBRARY_IMPL(fr_fast, CPU, m) {
  m.impl("pgd_step_", &pgd_step_cpu);
  m.impl("add_clip_", &add_clip_cpu);
}

}  // namespace fr_fast
