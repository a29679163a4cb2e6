// CUDA fused PGD step and random-start clip: a grid-stride elementwise pass over dense tensors with
// identical strides (fr_fast.ops guarantees it), computed in float32 (float64 for float64).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "fr_common.h"

#include <algorithm>

namespace fr_fast {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t, typename acc_t>
__global__ void pgd_step_kernel(scalar_t* x, const scalar_t* g, const scalar_t* x0, int64_t numel, acc_t alpha,
                                acc_t eps) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < numel;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const acc_t gi = static_cast<acc_t>(g[i]);
    const acc_t sign = static_cast<acc_t>((gi > acc_t(0)) - (gi < acc_t(0)));
    const acc_t center = static_cast<acc_t>(x0[i]);
    acc_t v = static_cast<acc_t>(x[i]) + alpha * sign;
    v = min(max(v, center - eps), center + eps);
    x[i] = static_cast<scalar_t>(min(max(v, acc_t(0)), acc_t(1)));
  }
}

template <typename scalar_t, typename acc_t>
__global__ void add_clip_kernel(scalar_t* x, const scalar_t* x0, int64_t numel) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < numel;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const acc_t v = static_cast<acc_t>(x0[i]) + static_cast<acc_t>(x[i]);
    x[i] = static_cast<scalar_t>(min(max(v, acc_t(0)), acc_t(1)));
  }
}

void check_same_layout(const char* op, const at::Tensor& x, const at::Tensor& other, const char* name) {
  TORCH_CHECK(x.sizes() == other.sizes() && x.strides() == other.strides() && x.scalar_type() == other.scalar_type() &&
                  x.device() == other.device(),
              op, ": ", name, " must have the shape, strides, dtype and device of x_adv");
  TORCH_CHECK(x.is_non_overlapping_and_dense(), op, ": x_adv must be dense");
}

unsigned int blocks_for(int64_t numel) {
  const int64_t wanted = (numel + kThreads - 1) / kThreads;
  int device = 0, multiprocessors = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device));
  const int64_t limit = static_cast<int64_t>(multiprocessors) * 32;
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min(wanted, limit)));
}

void pgd_step_cuda(at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x_nat, double alpha, double eps) {
  check_same_layout("pgd_step_", x_adv, grad, "grad");
  check_same_layout("pgd_step_", x_adv, x_nat, "x_nat");
  const int64_t numel = x_adv.numel();
  if (numel == 0) return;
  const c10::cuda::CUDAGuard guard(x_adv.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_adv.scalar_type(), "pgd_step_cuda", [&] {
    using acc_t = acc_of<scalar_t>;
    pgd_step_kernel<scalar_t, acc_t><<<blocks_for(numel), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        x_adv.mutable_data_ptr<scalar_t>(), grad.const_data_ptr<scalar_t>(), x_nat.const_data_ptr<scalar_t>(), numel,
        static_cast<acc_t>(alpha), static_cast<acc_t>(eps));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void add_clip_cuda(at::Tensor& x_adv, const at::Tensor& x_nat) {
  check_same_layout("add_clip_", x_adv, x_nat, "x_nat");
  const int64_t numel = x_adv.numel();
  if (numel == 0) return;
  const c10::cuda::CUDAGuard guard(x_adv.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_adv.scalar_type(), "add_clip_cuda", [&] {
    using acc_t = acc_of<scalar_t>;
    add_clip_kernel<scalar_t, acc_t><<<blocks_for(numel), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        x_adv.mutable_data_ptr<scalar_t>(), x_nat.const_data_ptr<scalar_t>(), numel);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fr_fast, CUDA, m) {
  m.impl("pgd_step_", &pgd_step_cuda);
  m.impl("add_clip_", &add_clip_cuda);
}

}  // namespace fr_fast
