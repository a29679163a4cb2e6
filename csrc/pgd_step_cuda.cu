// CUDA fused PGD step and random-start clip: a grid-stride elementwise pass, computed in float32
// (float64 for float64). pgd_host.h checks the arguments and lays the operands out as flat arrays;
// when all three are 16-byte aligned, each thread moves 16 bytes per operand at a time.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "pgd_host.h"

namespace fr_fast {
namespace {

constexpr int kThreads = 256;
constexpr int kVectorBytes = 16;

// kN consecutive elements, loaded and stored as one 128-bit access when kN * sizeof(T) == 16.
template <typename T, int kN>
struct alignas(sizeof(T) * kN) Pack {
  T v[kN];
};

template <typename acc_t, bool kRows>
__device__ __forceinline__ void row_params(const StepArgs<acc_t>& args, int64_t i, acc_t& step, acc_t& radius) {
  step = args.step;
  radius = args.radius;
  if constexpr (kRows) {
    const int64_t row = i / args.per_row;
    if (args.step_rows != nullptr) step = args.step_rows[row];
    if (args.radius_rows != nullptr) radius = args.radius_rows[row];
  }
}

// Packs of kN elements over the grid, then the numel % kN tail element-wise.
template <typename scalar_t, bool kRows, int kN>
__global__ void pgd_step_kernel(scalar_t* __restrict__ x, const scalar_t* __restrict__ g,
                                const scalar_t* __restrict__ x0, int64_t numel, StepArgs<acc_of<scalar_t>> args) {
  using acc_t = acc_of<scalar_t>;
  using P = Pack<scalar_t, kN>;
  const int64_t start = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t packs = numel / kN;
  for (int64_t p = start; p < packs; p += stride) {
    P xs = reinterpret_cast<const P*>(x)[p];
    const P gs = reinterpret_cast<const P*>(g)[p];
    const P cs = reinterpret_cast<const P*>(x0)[p];
#pragma unroll
    for (int j = 0; j < kN; ++j) {
      acc_t step, radius;
      row_params<acc_t, kRows>(args, p * kN + j, step, radius);
      xs.v[j] = static_cast<scalar_t>(pgd_update<acc_t>(static_cast<acc_t>(xs.v[j]), static_cast<acc_t>(gs.v[j]),
                                                        static_cast<acc_t>(cs.v[j]), step, radius, args.clip));
    }
    reinterpret_cast<P*>(x)[p] = xs;
  }
  for (int64_t i = packs * kN + start; i < numel; i += stride) {
    acc_t step, radius;
    row_params<acc_t, kRows>(args, i, step, radius);
    x[i] = static_cast<scalar_t>(pgd_update<acc_t>(static_cast<acc_t>(x[i]), static_cast<acc_t>(g[i]),
                                                   static_cast<acc_t>(x0[i]), step, radius, args.clip));
  }
}

template <typename scalar_t, int kN>
__global__ void add_clip_kernel(scalar_t* __restrict__ x, const scalar_t* __restrict__ x0, int64_t numel,
                                StepBounds<acc_of<scalar_t>> clip) {
  using acc_t = acc_of<scalar_t>;
  using P = Pack<scalar_t, kN>;
  const int64_t start = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t packs = numel / kN;
  for (int64_t p = start; p < packs; p += stride) {
    P xs = reinterpret_cast<const P*>(x)[p];
    const P cs = reinterpret_cast<const P*>(x0)[p];
#pragma unroll
    for (int j = 0; j < kN; ++j)
      xs.v[j] = static_cast<scalar_t>(add_clip<acc_t>(static_cast<acc_t>(xs.v[j]), static_cast<acc_t>(cs.v[j]), clip));
    reinterpret_cast<P*>(x)[p] = xs;
  }
  for (int64_t i = packs * kN + start; i < numel; i += stride)
    x[i] = static_cast<scalar_t>(add_clip<acc_t>(static_cast<acc_t>(x[i]), static_cast<acc_t>(x0[i]), clip));
}

// The multiprocessor count of every device, queried once per process.
int multiprocessors(c10::DeviceIndex device) {
  static const std::vector<int> counts = [] {
    std::vector<int> found(c10::cuda::device_count());
    for (size_t d = 0; d < found.size(); ++d)
      C10_CUDA_CHECK(cudaDeviceGetAttribute(&found[d], cudaDevAttrMultiProcessorCount, static_cast<int>(d)));
    return found;
  }();
  return counts.at(device);
}

// Enough blocks to fill the device a few times over (grid-stride beyond that).
unsigned int blocks_for(int64_t work, c10::DeviceIndex device) {
  const int64_t wanted = (work + kThreads - 1) / kThreads;
  const int64_t limit = static_cast<int64_t>(multiprocessors(device)) * 32;
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min(wanted, limit)));
}

bool aligned(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % kVectorBytes == 0; }

template <typename scalar_t, bool kRows, int kN>
void launch_step(const StepPlan& plan, int64_t numel) {
  const unsigned int blocks = blocks_for((numel + kN - 1) / kN, plan.target.device().index());
  pgd_step_kernel<scalar_t, kRows, kN><<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          plan.target.mutable_data_ptr<scalar_t>(), plan.grad.const_data_ptr<scalar_t>(),
          plan.x_nat.const_data_ptr<scalar_t>(), numel, plan.args<acc_of<scalar_t>>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, bool kRows>
void launch_step(const StepPlan& plan, int64_t numel) {
  constexpr int kN = kVectorBytes / sizeof(scalar_t);
  if (aligned(plan.target.const_data_ptr()) && aligned(plan.grad.const_data_ptr()) &&
      aligned(plan.x_nat.const_data_ptr()))
    launch_step<scalar_t, kRows, kN>(plan, numel);
  else
    launch_step<scalar_t, kRows, 1>(plan, numel);
}

void pgd_step_cuda(at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x_nat, double alpha, double eps,
                   std::optional<double> clip_min, std::optional<double> clip_max,
                   const std::optional<at::Tensor>& alpha_rows, const std::optional<at::Tensor>& eps_rows) {
  const StepPlan plan = plan_pgd_step(x_adv, grad, x_nat, alpha, eps, clip_min, clip_max, alpha_rows, eps_rows);
  const c10::cuda::CUDAGuard guard(x_adv.device());  // after the checks: x_adv is a CUDA tensor
  const int64_t numel = plan.target.numel();
  if (numel == 0) return;
  const bool rows = plan.step_rows.defined() || plan.radius_rows.defined();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_adv.scalar_type(), "pgd_step_cuda", [&] {
    if (rows)
      launch_step<scalar_t, true>(plan, numel);
    else
      launch_step<scalar_t, false>(plan, numel);
  });
  finish_in_place(x_adv, plan);
}

template <typename scalar_t, int kN>
void launch_add_clip(const StepPlan& plan, int64_t numel) {
  const unsigned int blocks = blocks_for((numel + kN - 1) / kN, plan.target.device().index());
  add_clip_kernel<scalar_t, kN><<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      plan.target.mutable_data_ptr<scalar_t>(), plan.x_nat.const_data_ptr<scalar_t>(), numel,
      plan.args<acc_of<scalar_t>>().clip);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void add_clip_cuda(at::Tensor& x_adv, const at::Tensor& x_nat, std::optional<double> clip_min,
                   std::optional<double> clip_max) {
  const StepPlan plan = plan_add_clip(x_adv, x_nat, clip_min, clip_max);
  const c10::cuda::CUDAGuard guard(x_adv.device());
  const int64_t numel = plan.target.numel();
  if (numel == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_adv.scalar_type(), "add_clip_cuda", [&] {
    constexpr int kN = kVectorBytes / sizeof(scalar_t);
    if (aligned(plan.target.const_data_ptr()) && aligned(plan.x_nat.const_data_ptr()))
      launch_add_clip<scalar_t, kN>(plan, numel);
    else
      launch_add_clip<scalar_t, 1>(plan, numel);
  });
  finish_in_place(x_adv, plan);
}

}  // namespace

TORCH_LIBRARY_IMPL(fr_fast, CUDA, m) {
  m.impl("pgd_step_", &pgd_step_cuda);
  m.impl("add_clip_", &add_clip_cuda);
}

}  // namespace fr_fast
