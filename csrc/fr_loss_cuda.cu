// CUDA forward and backward of the fused FR distance. One block per example row: the row's
// difference a - b is staged in shared memory in the accumulation type, threads stride over the
// C/2 + 1 distinct DFT bins (twiddles from sincospi on the exact integer angle k*n mod C).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "fr_host.h"

namespace fr_fast {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ void twiddle(int64_t m, int64_t C, float& c, float& s) {
  sincospif(2.0f * static_cast<float>(m) / static_cast<float>(C), &s, &c);
}
__device__ __forceinline__ void twiddle(int64_t m, int64_t C, double& c, double& s) {
  sincospi(2.0 * static_cast<double>(m) / static_cast<double>(C), &s, &c);
}

template <typename T>
__device__ __forceinline__ T sign_of(T v) {
  return static_cast<T>((v > T(0)) - (v < T(0)));
}

template <typename scalar_t, typename acc_t>
__device__ void stage_difference(const scalar_t* a, const scalar_t* b, int64_t sa1, int64_t sb1, int64_t C, acc_t* d) {
  for (int64_t n = threadIdx.x; n < C; n += blockDim.x)
    d[n] = static_cast<acc_t>(a[n * sa1]) - static_cast<acc_t>(b[n * sb1]);
  __syncthreads();
}

// Re and (-Im) of bin k of the staged row. Bins 0 and C/2 have an exactly zero imaginary part.
template <typename acc_t>
__device__ void project(const acc_t* d, int64_t C, int64_t k, acc_t& re, acc_t& im) {
  acc_t r = 0, i = 0;
  int64_t m = 0;  // k * n mod C, updated incrementally
  for (int64_t n = 0; n < C; ++n) {
    acc_t c, s;
    twiddle(m, C, c, s);
    r += d[n] * c;
    i += d[n] * s;
    m += k;
    if (m >= C) m -= C;
  }
  if (k == 0 || 2 * k == C) i = 0;
  re = r;
  im = i;
}

template <typename acc_t>
__device__ acc_t block_sum(acc_t value, acc_t* scratch) {
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_down_sync(0xffffffff, value, offset);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  value = threadIdx.x < blockDim.x / 32 ? scratch[lane] : acc_t(0);
  if (warp == 0)
    for (int offset = 16; offset > 0; offset /= 2) value += __shfl_down_sync(0xffffffff, value, offset);
  return value;
}

template <typename scalar_t, typename acc_t>
__global__ void fr_l1_forward_kernel(const scalar_t* a, const scalar_t* b, int64_t sa0, int64_t sa1, int64_t sb0,
                                     int64_t sb1, int64_t C, acc_t* rows) {
  extern __shared__ unsigned char shared_bytes[];
  acc_t* d = reinterpret_cast<acc_t*>(shared_bytes);
  __shared__ acc_t scratch[32];
  const int64_t row = blockIdx.x;
  stage_difference(a + row * sa0, b + row * sb0, sa1, sb1, C, d);
  const int64_t K = num_half_bins(C);
  acc_t partial = 0;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
    acc_t re, im;
    project(d, C, k, re, im);
    partial += bin_weight<acc_t>(k, C) * (fabs(re) + fabs(im));
  }
  const acc_t total = block_sum(partial, scratch);
  if (threadIdx.x == 0) rows[row] = total;
}

template <typename scalar_t, typename acc_t>
__global__ void fr_l1_backward_kernel(const acc_t* grad, int64_t g_stride, acc_t g_scale, const scalar_t* a,
                                      const scalar_t* b, int64_t sa0, int64_t sa1, int64_t sb0, int64_t sb1, int64_t C,
                                      scalar_t* ga, scalar_t* gb) {
  extern __shared__ unsigned char shared_bytes[];
  acc_t* d = reinterpret_cast<acc_t*>(shared_bytes);
  const int64_t K = num_half_bins(C);
  acc_t* sign_re = d + C;  // weighted, scaled signs of Re and -Im per bin
  acc_t* sign_im = sign_re + K;
  const int64_t row = blockIdx.x;
  stage_difference(a + row * sa0, b + row * sb0, sa1, sb1, C, d);
  const acc_t g_row = grad[row * g_stride] * g_scale;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
    acc_t re, im;
    project(d, C, k, re, im);
    const acc_t w = bin_weight<acc_t>(k, C) * g_row;
    sign_re[k] = w * sign_of(re);
    sign_im[k] = w * sign_of(im);
  }
  __syncthreads();
  for (int64_t n = threadIdx.x; n < C; n += blockDim.x) {
    acc_t total = 0;
    int64_t m = 0;  // k * n mod C
    for (int64_t k = 0; k < K; ++k) {
      acc_t c, s;
      twiddle(m, C, c, s);
      total += sign_re[k] * c + sign_im[k] * s;
      m += n;
      if (m >= C) m -= C;
    }
    ga[row * C + n] = static_cast<scalar_t>(total);
    gb[row * C + n] = static_cast<scalar_t>(-total);
  }
}

size_t shared_bytes_for(int64_t C, size_t acc_size, bool backward) {
  const int64_t values = C + (backward ? 2 * num_half_bins(C) : 0);
  const size_t bytes = static_cast<size_t>(values) * acc_size;
  TORCH_CHECK(bytes <= 48 * 1024, "fr_l1 (CUDA): ", C, " classes need ", bytes,
              " bytes of shared memory per row; at most 48 KiB are supported");
  return bytes;
}

at::Tensor fr_l1_cuda(const at::Tensor& teacher, const at::Tensor& adv, int64_t reduction) {
  check_logits("fr_l1", teacher, adv);
  const c10::cuda::CUDAGuard guard(teacher.device());
  const int64_t B = teacher.size(0), C = teacher.size(1);
  at::Tensor rows = at::empty({B}, teacher.options().dtype(accumulation_dtype(teacher)));
  if (C == 0) rows.zero_();
  if (B > 0 && C > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, teacher.scalar_type(), "fr_l1_cuda", [&] {
      using acc_t = acc_of<scalar_t>;
      const size_t shared = shared_bytes_for(C, sizeof(acc_t), false);
      fr_l1_forward_kernel<scalar_t, acc_t><<<B, kThreads, shared, c10::cuda::getCurrentCUDAStream()>>>(
          teacher.const_data_ptr<scalar_t>(), adv.const_data_ptr<scalar_t>(), teacher.stride(0), teacher.stride(1),
          adv.stride(0), adv.stride(1), C, rows.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return reduce_rows(rows, reduction);
}

std::tuple<at::Tensor, at::Tensor> fr_l1_backward_cuda(const at::Tensor& grad, const at::Tensor& teacher,
                                                       const at::Tensor& adv, int64_t reduction) {
  check_logits("fr_l1_backward", teacher, adv);
  const c10::cuda::CUDAGuard guard(teacher.device());
  const int64_t B = teacher.size(0), C = teacher.size(1);
  at::Tensor grad_teacher = at::empty({B, C}, teacher.options());
  at::Tensor grad_adv = at::empty({B, C}, adv.options());
  if (B == 0 || C == 0) return {grad_teacher, grad_adv};
  const Upstream upstream = upstream_gradient(grad, teacher, reduction);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, teacher.scalar_type(), "fr_l1_backward_cuda", [&] {
    using acc_t = acc_of<scalar_t>;
    const size_t shared = shared_bytes_for(C, sizeof(acc_t), true);
    const acc_t* g = upstream.values.const_data_ptr<acc_t>();
    const int64_t g_stride = upstream.stride;
    const acc_t g_scale = static_cast<acc_t>(upstream.scale);
    fr_l1_backward_kernel<scalar_t, acc_t><<<B, kThreads, shared, c10::cuda::getCurrentCUDAStream()>>>(
        g, g_stride, g_scale, teacher.const_data_ptr<scalar_t>(),
        adv.const_data_ptr<scalar_t>(), teacher.stride(0), teacher.stride(1), adv.stride(0), adv.stride(1), C,
        grad_teacher.mutable_data_ptr<scalar_t>(), grad_adv.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_teacher, grad_adv};
}

}  // namespace

TORCH_LIBRARY_IMPL(fr_fast, CUDA, m) {
  m.impl("fr_l1", &fr_l1_cuda);
  m.impl("fr_l1_backward", &fr_l1_backward_cuda);
}

}  // namespace fr_fast
