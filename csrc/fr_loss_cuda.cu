// CUDA forward and backward of the fused FR distance. One block per example row: the row's
// difference a - b and a table of the C twiddles cos/sin(2*pi*m/C) (sincospi of the exact integer
// angle, computed once per block) are staged in shared memory; threads stride over the C/2 + 1
// distinct DFT bins and step through the table with 32-bit indices m = k*n mod C.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda_reduce.cuh"
#include "fr_host.h"

namespace fr_fast {
namespace {

constexpr int kThreads = 256;
static_assert(kThreads % 32 == 0 && kThreads <= 1024, "block_sum needs whole warps and at most 32 of them");

__device__ __forceinline__ void twiddle(int m, int C, float& c, float& s) {
  sincospif(2.0f * static_cast<float>(m) / static_cast<float>(C), &s, &c);
}
__device__ __forceinline__ void twiddle(int m, int C, double& c, double& s) {
  sincospi(2.0 * static_cast<double>(m) / static_cast<double>(C), &s, &c);
}

// The row's shared memory: twiddle tables cos_t[m], sin_t[m] (m < C) and the difference d[n], then (backward
// only) the weighted signs of the bins. 16-byte aligned, so any acc_t can be read from it.
template <typename acc_t>
struct RowShared {
  acc_t* cos_t;
  acc_t* sin_t;
  acc_t* d;
};

template <typename acc_t>
__device__ RowShared<acc_t> row_shared(unsigned char* bytes, int C) {
  acc_t* base = reinterpret_cast<acc_t*>(bytes);
  return {base, base + C, base + 2 * C};
}

template <typename scalar_t, typename acc_t>
__device__ void stage_row(const scalar_t* a, const scalar_t* b, int64_t sa1, int64_t sb1, int C,
                          const RowShared<acc_t>& row) {
  for (int n = threadIdx.x; n < C; n += blockDim.x) {
    row.d[n] = static_cast<acc_t>(a[n * sa1]) - static_cast<acc_t>(b[n * sb1]);
    twiddle(n, C, row.cos_t[n], row.sin_t[n]);
  }
  __syncthreads();
}

// Re and (-Im) of bin k of the staged row. Bins 0 and C/2 have an exactly zero imaginary part.
template <typename acc_t>
__device__ void project(const RowShared<acc_t>& row, int C, int k, acc_t& re, acc_t& im) {
  acc_t r = 0, i = 0;
  int m = 0;  // k * n mod C, updated incrementally
  for (int n = 0; n < C; ++n) {
    r += row.d[n] * row.cos_t[m];
    i += row.d[n] * row.sin_t[m];
    m += k;
    if (m >= C) m -= C;
  }
  if (k == 0 || 2 * k == C) i = 0;
  re = r;
  im = i;
}

// Element n of a row's gradient from the weighted signs of its bins (the adjoint of the projection).
template <typename acc_t>
__device__ acc_t row_gradient(const RowShared<acc_t>& row, int C, int K, const acc_t* sign_re, const acc_t* sign_im,
                              int n) {
  acc_t total = 0;
  int m = 0;  // k * n mod C
  for (int k = 0; k < K; ++k) {
    total += sign_re[k] * row.cos_t[m] + sign_im[k] * row.sin_t[m];
    m += n;
    if (m >= C) m -= C;
  }
  return total;
}

// The forward in one launch: one block per row computes the row's L1 (and with kGrad its gradient for an
// upstream of `g_row`: 1/B for the mean, else 1); for reduction mean/sum the last block to finish adds
// the rows in a fixed order into `loss` (deterministic; the counter resets itself for CUDA graphs).
template <typename scalar_t, typename acc_t, bool kGrad>
__global__ void fr_l1_kernel(const scalar_t* a, const scalar_t* b, int64_t sa0, int64_t sa1, int64_t sb0, int64_t sb1,
                             int C, int64_t reduction, acc_t* rows, acc_t* pattern, unsigned int* counter,
                             acc_t* loss) {
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  __shared__ acc_t scratch[32];
  const RowShared<acc_t> row = row_shared<acc_t>(shared_bytes, C);
  const int K = static_cast<int>(num_half_bins(C));
  acc_t* sign_re = row.d + C;
  acc_t* sign_im = sign_re + K;
  const int64_t r = blockIdx.x;
  const acc_t g_row = reduction == kMean ? acc_t(1) / static_cast<acc_t>(gridDim.x) : acc_t(1);
  stage_row(a + r * sa0, b + r * sb0, sa1, sb1, C, row);
  acc_t partial = 0;
  for (int k = threadIdx.x; k < K; k += blockDim.x) {
    acc_t re, im;
    project(row, C, k, re, im);
    const acc_t w = bin_weight<acc_t>(k, C);
    partial += w * (fabs(re) + fabs(im));
    if constexpr (kGrad) {
      sign_re[k] = w * g_row * sign_of(re);
      sign_im[k] = w * g_row * sign_of(im);
    }
  }
  const acc_t total = block_sum(partial, scratch);  // synchronises: the signs are complete
  if (threadIdx.x == 0) rows[r] = total;
  if constexpr (kGrad)
    for (int n = threadIdx.x; n < C; n += blockDim.x) pattern[r * C + n] = row_gradient(row, C, K, sign_re, sign_im, n);
  if (reduction == kNone || !last_block_done(counter)) return;
  acc_t sum = 0;
  for (int64_t i = threadIdx.x; i < gridDim.x; i += blockDim.x) sum += __ldcg(rows + i);
  sum = block_sum(sum, scratch);
  if (threadIdx.x == 0) *loss = reduction == kMean ? sum / static_cast<acc_t>(gridDim.x) : sum;
}

template <typename scalar_t, typename acc_t>
__global__ void fr_l1_backward_kernel(const acc_t* grad, int64_t g_stride, acc_t g_scale, const scalar_t* a,
                                      const scalar_t* b, int64_t sa0, int64_t sa1, int64_t sb0, int64_t sb1, int C,
                                      scalar_t* ga, scalar_t* gb) {
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  const RowShared<acc_t> row = row_shared<acc_t>(shared_bytes, C);
  const int K = static_cast<int>(num_half_bins(C));
  acc_t* sign_re = row.d + C;  // weighted, scaled signs of Re and -Im per bin
  acc_t* sign_im = sign_re + K;
  const int64_t r = blockIdx.x;
  stage_row(a + r * sa0, b + r * sb0, sa1, sb1, C, row);
  const acc_t g_row = grad[r * g_stride] * g_scale;
  for (int k = threadIdx.x; k < K; k += blockDim.x) {
    acc_t re, im;
    project(row, C, k, re, im);
    const acc_t w = bin_weight<acc_t>(k, C) * g_row;
    sign_re[k] = w * sign_of(re);
    sign_im[k] = w * sign_of(im);
  }
  __syncthreads();
  for (int n = threadIdx.x; n < C; n += blockDim.x) {
    const acc_t total = row_gradient(row, C, K, sign_re, sign_im, n);
    ga[r * C + n] = static_cast<scalar_t>(total);
    gb[r * C + n] = static_cast<scalar_t>(-total);
  }
}

size_t shared_bytes_for(int64_t C, size_t acc_size, bool with_signs) {
  const int64_t values = 3 * C + (with_signs ? 2 * num_half_bins(C) : 0);
  const size_t bytes = static_cast<size_t>(values) * acc_size;
  TORCH_CHECK(bytes <= 48 * 1024, "fr_l1 (CUDA): ", text(C), " classes need ", text(static_cast<int64_t>(bytes)),
              " bytes of shared memory per row; at most 48 KiB are supported");
  return bytes;
}

// Above this many classes the per-row direct DFT (O(C^2) per row) gives way to cuFFT. 128 is where the
// earlier Python-side switch to torch.fft sat; NOT measured for this op (no GPU when it was written):
// to be measured with benchmarks/bench_ops.py --device cuda and moved.
constexpr int64_t kMaxDirectClasses = 128;

// Large C: cuFFT R2C of the difference, the weighted L1 with ATen ops, and for the gradient (upstream 1)
// the unnormalised C2R of the signs (it counts the middle bins twice; the imaginary parts of bin 0 and
// C/2 are zeroed: the C2R ignores them and a real signal has none). Several launches, O(C log C) per row.
std::tuple<at::Tensor, at::Tensor> fr_l1_fft_cuda(const at::Tensor& teacher, const at::Tensor& adv, int64_t reduction,
                                                  bool want_gradient) {
  const int64_t B = teacher.size(0), C = teacher.size(1), K = num_half_bins(C);
  const auto options = teacher.options().dtype(accumulation_dtype(teacher));
  const at::Tensor parts = at::view_as_real(at::fft_rfft(teacher.to(options.dtype()).sub(adv.to(options.dtype())), C, 1));
  at::Tensor weights = at::full({K, 1}, 2.0, options);
  weights.narrow(0, 0, 1).fill_(1.0);
  if (C % 2 == 0) weights.narrow(0, K - 1, 1).fill_(1.0);
  const at::Tensor loss = reduce_rows(parts.abs().mul(weights).sum({1, 2}), reduction);
  if (!want_gradient) return {loss, at::Tensor()};
  at::Tensor signs = parts.sign();
  if (reduction == kMean) signs.div_(static_cast<double>(B));
  signs.select(1, 0).select(1, 1).zero_();
  if (C % 2 == 0) signs.select(1, K - 1).select(1, 1).zero_();
  return {loss, at::fft_irfft(at::view_as_complex(signs), C, 1, "forward")};
}

// (loss, gradient for an upstream of 1 or undefined) in one launch (cuFFT above kMaxDirectClasses).
std::tuple<at::Tensor, at::Tensor> fr_l1_run_cuda(const at::Tensor& teacher, const at::Tensor& adv, int64_t reduction,
                                                  bool want_gradient) {
  check_fr_l1_args("fr_l1", teacher, adv, reduction);
  const c10::cuda::CUDAGuard guard(teacher.device());
  const int64_t B = teacher.size(0), C = teacher.size(1);
  const auto options = teacher.options().dtype(accumulation_dtype(teacher));
  at::Tensor pattern = want_gradient ? at::empty({B, C}, options) : at::Tensor();
  if (B == 0 || C == 0) {
    if (want_gradient) pattern.zero_();
    return {reduce_rows(at::zeros({B}, options), reduction), pattern};
  }
  if (C > kMaxDirectClasses) return fr_l1_fft_cuda(teacher, adv, reduction, want_gradient);
  at::Tensor rows = at::empty({B}, options);
  at::Tensor loss = reduction == kNone ? rows : at::empty({}, options);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, teacher.scalar_type(), "fr_l1_cuda", [&] {
    using acc_t = acc_of<scalar_t>;
    const size_t shared = shared_bytes_for(C, sizeof(acc_t), true);
    auto kernel = want_gradient ? fr_l1_kernel<scalar_t, acc_t, true> : fr_l1_kernel<scalar_t, acc_t, false>;
    kernel<<<B, kThreads, shared, c10::cuda::getCurrentCUDAStream()>>>(
        teacher.const_data_ptr<scalar_t>(), adv.const_data_ptr<scalar_t>(), teacher.stride(0), teacher.stride(1),
        adv.stride(0), adv.stride(1), static_cast<int>(C), reduction, rows.mutable_data_ptr<acc_t>(),
        want_gradient ? pattern.mutable_data_ptr<acc_t>() : nullptr, done_counter(teacher),
        loss.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, pattern};
}

at::Tensor fr_l1_cuda(const at::Tensor& teacher, const at::Tensor& adv, int64_t reduction) {
  return std::get<0>(fr_l1_run_cuda(teacher, adv, reduction, false));
}

std::tuple<at::Tensor, at::Tensor> fr_l1_with_grad_cuda(const at::Tensor& teacher, const at::Tensor& adv,
                                                        int64_t reduction) {
  return fr_l1_run_cuda(teacher, adv, reduction, true);
}

std::tuple<at::Tensor, at::Tensor> fr_l1_backward_cuda(const at::Tensor& grad, const at::Tensor& teacher,
                                                       const at::Tensor& adv, int64_t reduction) {
  check_fr_l1_args("fr_l1_backward", teacher, adv, reduction);
  const c10::cuda::CUDAGuard guard(teacher.device());
  const int64_t B = teacher.size(0), C = teacher.size(1);
  at::Tensor grad_teacher = at::empty({B, C}, teacher.options());
  at::Tensor grad_adv = at::empty({B, C}, adv.options());
  const Upstream upstream = upstream_gradient(grad, teacher, reduction);  // checked before anything reads it
  if (B == 0 || C == 0) return {grad_teacher, grad_adv};
  if (C > kMaxDirectClasses) {
    const at::Tensor per_row = std::get<1>(fr_l1_fft_cuda(teacher, adv, kNone, true));
    const at::Tensor scaled = per_row.mul(reduction == kNone ? upstream.values.unsqueeze(1) : upstream.values)
                                  .mul(upstream.scale);
    grad_teacher.copy_(scaled);
    grad_adv.copy_(scaled.neg());
    return {grad_teacher, grad_adv};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, teacher.scalar_type(), "fr_l1_backward_cuda", [&] {
    using acc_t = acc_of<scalar_t>;
    const size_t shared = shared_bytes_for(C, sizeof(acc_t), true);
    const acc_t* g = upstream.values.const_data_ptr<acc_t>();
    const int64_t g_stride = upstream.stride;
    const acc_t g_scale = static_cast<acc_t>(upstream.scale);
    fr_l1_backward_kernel<scalar_t, acc_t><<<B, kThreads, shared, c10::cuda::getCurrentCUDAStream()>>>(
        g, g_stride, g_scale, teacher.const_data_ptr<scalar_t>(),
        adv.const_data_ptr<scalar_t>(), teacher.stride(0), teacher.stride(1), adv.stride(0), adv.stride(1),
        static_cast<int>(C), grad_teacher.mutable_data_ptr<scalar_t>(), grad_adv.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_teacher, grad_adv};
}

}  // namespace

TORCH_LIBRARY_IMPL(fr_fast, CUDA, m) {
  m.impl("fr_l1", &fr_l1_cuda);
  m.impl("fr_l1_backward", &fr_l1_backward_cuda);
  m.impl("fr_l1_with_grad", &fr_l1_with_grad_cuda);
}

}  // namespace fr_fast
