// CPU fused PGD step and random-start clip: one pass over memory, computed in float32 (float64 for
// float64 tensors). Inputs are dense with identical strides (fr_fast.ops guarantees it), so they are
// walked as flat arrays and every memory format, channels_last included, is kept.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "fr_common.h"

#include <algorithm>

namespace fr_fast {
namespace {

constexpr int64_t kGrain = 32768;

void check_same_layout(const char* op, const at::Tensor& x, const at::Tensor& other, const char* name) {
  TORCH_CHECK(x.sizes() == other.sizes() && x.strides() == other.strides() && x.scalar_type() == other.scalar_type(),
              op, ": ", name, " must have the shape, strides and dtype of x_adv");
  TORCH_CHECK(x.is_non_overlapping_and_dense(), op, ": x_adv must be dense");
}

// One contiguous range. Restrict-qualified locals (not pointers captured by a lambda) let the compiler
// keep everything in registers and vectorise without alias checks.
template <typename scalar_t>
void pgd_step_range(scalar_t* __restrict__ x, const scalar_t* __restrict__ g, const scalar_t* __restrict__ x0,
                    int64_t n, acc_of<scalar_t> step, acc_of<scalar_t> radius) {
  using acc_t = acc_of<scalar_t>;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const acc_t gi = static_cast<acc_t>(g[i]);
    const acc_t sign = static_cast<acc_t>((gi > acc_t(0)) - (gi < acc_t(0)));
    const acc_t center = static_cast<acc_t>(x0[i]);
    acc_t v = static_cast<acc_t>(x[i]) + step * sign;
    v = std::min(std::max(v, center - radius), center + radius);
    x[i] = static_cast<scalar_t>(std::min(std::max(v, acc_t(0)), acc_t(1)));
  }
}

template <typename scalar_t>
void add_clip_range(scalar_t* __restrict__ x, const scalar_t* __restrict__ x0, int64_t n) {
  using acc_t = acc_of<scalar_t>;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const acc_t v = static_cast<acc_t>(x0[i]) + static_cast<acc_t>(x[i]);
    x[i] = static_cast<scalar_t>(std::min(std::max(v, acc_t(0)), acc_t(1)));
  }
}

template <typename scalar_t>
void pgd_step_kernel(scalar_t* x, const scalar_t* g, const scalar_t* x0, int64_t numel, double alpha, double eps) {
  using acc_t = acc_of<scalar_t>;
  const acc_t step = static_cast<acc_t>(alpha), radius = static_cast<acc_t>(eps);
  at::parallel_for(0, numel, kGrain, [&](int64_t begin, int64_t end) {
    pgd_step_range(x + begin, g + begin, x0 + begin, end - begin, step, radius);
  });
}

template <typename scalar_t>
void add_clip_kernel(scalar_t* x, const scalar_t* x0, int64_t numel) {
  at::parallel_for(0, numel, kGrain, [&](int64_t begin, int64_t end) { add_clip_range(x + begin, x0 + begin, end - begin); });
}

void pgd_step_cpu(at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x_nat, double alpha, double eps) {
  check_same_layout("pgd_step_", x_adv, grad, "grad");
  check_same_layout("pgd_step_", x_adv, x_nat, "x_nat");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_adv.scalar_type(), "pgd_step_cpu", [&] {
    pgd_step_kernel(x_adv.mutable_data_ptr<scalar_t>(), grad.const_data_ptr<scalar_t>(),
                    x_nat.const_data_ptr<scalar_t>(), x_adv.numel(), alpha, eps);
  });
}

void add_clip_cpu(at::Tensor& x_adv, const at::Tensor& x_nat) {
  check_same_layout("add_clip_", x_adv, x_nat, "x_nat");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_adv.scalar_type(), "add_clip_cpu", [&] {
    add_clip_kernel(x_adv.mutable_data_ptr<scalar_t>(), x_nat.const_data_ptr<scalar_t>(), x_adv.numel());
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fr_fast, CPU, m) {
  m.impl("pgd_step_", &pgd_step_cpu);
  m.impl("add_clip_", &add_clip_cpu);
}

}  // namespace fr_fast
