// CUDA 2-D FR distance (fft="2d"); fr2d_common.h has the math. Two paths, one op:
//  - small problems: ONE kernel. Block q owns column q of the half spectrum: it transforms the rows
//    at bin q, then that column over the batch (twiddle tables of both lengths in shared memory), adds
//    its part of the L1 and, for the gradient, transforms its signs back over the batch. The last block
//    to finish sums the per-column parts in a fixed order and assembles the gradient;
//  - larger ones: cuFFT R2C (at::fft_rfft2) -> one kernel for |.|, signs and the reduction -> cuFFT C2R.
// No atomics on floats: the loss is bit-reproducible, and the grid counter resets itself (CUDA graphs).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "cuda_reduce.cuh"
#include "fr2d_common.h"
#include "fr_host.h"

namespace fr_fast {
namespace {

constexpr int kThreads = 256;
static_assert(kThreads % 32 == 0 && kThreads <= 1024, "block_sum needs whole warps and at most 32 of them");

// Crossover of the one-kernel path to cuFFT. The one-kernel path does O(B C K + K B^2) work spread
// over K blocks plus O(B C K) in the last block, so it only wins while that is small. These are
// conservative guesses, NOT measured (no GPU was available when they were set): measure on a GPU
// (benchmarks/bench_ops.py --device cuda, 2-D rows) and move them.
constexpr int64_t kFusedMaxWork = int64_t(1) << 20;  // B * C * (C/2 + 1)
constexpr int64_t kFusedMaxRows = 512;               // shared memory: (2C + 6B) values
constexpr int64_t kFusedMaxClasses = 256;
constexpr int kMaxReduceBlocks = 512;  // grid of the spectrum kernel (fixed: the sum order is too)

bool one_kernel(int64_t B, int64_t C) {
  return B <= kFusedMaxRows && C <= kFusedMaxClasses && B * C * num_half_bins(C) <= kFusedMaxWork;
}

// cos and sin of 2 pi m / n from the exact integer ratio.
__device__ __forceinline__ void twiddle(int m, int n, float& c, float& s) {
  sincospif(2.0f * static_cast<float>(m) / static_cast<float>(n), &s, &c);
}
__device__ __forceinline__ void twiddle(int m, int n, double& c, double& s) {
  sincospi(2.0 * static_cast<double>(m) / static_cast<double>(n), &s, &c);
}

// One kernel, grid = K blocks. Shared memory: cos/sin tables of length C and B, the row transforms
// y[m] at bin q, and the signs of column q.
template <typename scalar_t, typename acc_t, bool kGrad>
__global__ void fr2d_one_kernel(const scalar_t* a, const scalar_t* b, int64_t sa0, int64_t sa1, int64_t sb0,
                                int64_t sb1, int B, int C, acc_t scale, acc_t* partials, acc_t* v_re, acc_t* v_im,
                                unsigned int* counter, acc_t* loss, acc_t* pattern) {
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  __shared__ acc_t scratch[32];
  acc_t* cos_c = reinterpret_cast<acc_t*>(shared_bytes);
  acc_t* sin_c = cos_c + C;
  acc_t* cos_b = sin_c + C;
  acc_t* sin_b = cos_b + B;
  acc_t* y_re = sin_b + B;
  acc_t* y_im = y_re + B;
  acc_t* s_re = y_im + B;
  acc_t* s_im = s_re + B;
  const int q = blockIdx.x, K = gridDim.x;
  for (int i = threadIdx.x; i < C; i += blockDim.x) twiddle(i, C, cos_c[i], sin_c[i]);
  for (int i = threadIdx.x; i < B; i += blockDim.x) twiddle(i, B, cos_b[i], sin_b[i]);
  __syncthreads();
  for (int m = threadIdx.x; m < B; m += blockDim.x) {  // y[m] = sum_n d[m, n] e^{-2 pi i q n / C}
    acc_t re = 0, im = 0;
    int t = 0;  // q * n mod C
    for (int n = 0; n < C; ++n) {
      const acc_t d = static_cast<acc_t>(a[m * sa0 + n * sa1]) - static_cast<acc_t>(b[m * sb0 + n * sb1]);
      re += d * cos_c[t];
      im -= d * sin_c[t];
      t += q;
      if (t >= C) t -= C;
    }
    y_re[m] = re;
    y_im[m] = im;
  }
  __syncthreads();
  const acc_t w = bin_weight<acc_t>(q, C);
  acc_t partial = 0;
  for (int p = threadIdx.x; p < B; p += blockDim.x) {  // Y[p, q] = sum_m y[m] e^{-2 pi i p m / B}
    acc_t re = 0, im = 0;
    int t = 0;  // p * m mod B
    for (int m = 0; m < B; ++m) {
      re += y_re[m] * cos_b[t] + y_im[m] * sin_b[t];
      im += y_im[m] * cos_b[t] - y_re[m] * sin_b[t];
      t += p;
      if (t >= B) t -= B;
    }
    partial += w * (fabs(re) + fabs(im));
    if constexpr (kGrad) {
      s_re[p] = sign_of(re);
      s_im[p] = sign_of(im);
    }
  }
  const acc_t column_total = block_sum(partial, scratch);  // synchronises: s_re, s_im are complete
  if (threadIdx.x == 0) partials[q] = column_total;
  if constexpr (kGrad) {
    for (int m = threadIdx.x; m < B; m += blockDim.x) {  // v[m] = w sum_p S[p] e^{+2 pi i p m / B}
      acc_t re = 0, im = 0;
      int t = 0;
      for (int p = 0; p < B; ++p) {
        re += s_re[p] * cos_b[t] - s_im[p] * sin_b[t];
        im += s_im[p] * cos_b[t] + s_re[p] * sin_b[t];
        t += m;
        if (t >= B) t -= B;
      }
      v_re[q * B + m] = w * re;
      v_im[q * B + m] = w * im;
    }
  }
  if (!last_block_done(counter)) return;
  acc_t sum = 0;
  for (int i = threadIdx.x; i < K; i += blockDim.x) sum += __ldcg(partials + i);
  sum = block_sum(sum, scratch);
  if (threadIdx.x == 0) *loss = scale * sum;
  if constexpr (kGrad) {
    for (int i = threadIdx.x; i < B * C; i += blockDim.x) {  // G[m, n] = s Re sum_q v_q[m] e^{+2 pi i q n / C}
      const int m = i / C, n = i % C;
      acc_t g = 0;
      int t = 0;  // q * n mod C
      for (int k = 0; k < K; ++k) {
        g += __ldcg(v_re + k * B + m) * cos_c[t] - __ldcg(v_im + k * B + m) * sin_c[t];
        t += n;
        if (t >= C) t -= C;
      }
      pattern[i] = scale * g;
    }
  }
}

// The half spectrum y = rfft2(d) ((B, K) complex as reals): L1 with the column weights, summed in a
// fixed order, and with kGrad scale * S into `signs` (columns 0 and C/2 made Hermitian in p).
template <typename acc_t, bool kGrad>
__global__ void fr2d_spectrum_kernel(const acc_t* y, int B, int C, acc_t scale, acc_t* signs, acc_t* partials,
                                     unsigned int* counter, acc_t* loss) {
  __shared__ acc_t scratch[32];
  const int K = C / 2 + 1;
  const int64_t bins = static_cast<int64_t>(B) * K;
  acc_t partial = 0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < bins;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t p = i / K;
    const int q = static_cast<int>(i % K);
    const acc_t re = y[2 * i], im = y[2 * i + 1];
    partial += bin_weight<acc_t>(q, C) * (fabs(re) + fabs(im));
    if constexpr (kGrad) {
      acc_t sr = sign_of(re), si = sign_of(im);
      if (self_conjugate_column(q, C)) {
        const int64_t j = ((B - p) % B) * K + q;
        sr = acc_t(0.5) * (sr + sign_of(y[2 * j]));
        si = acc_t(0.5) * (si - sign_of(y[2 * j + 1]));
      }
      signs[2 * i] = scale * sr;
      signs[2 * i + 1] = scale * si;
    }
  }
  const acc_t block_total = block_sum(partial, scratch);
  if (threadIdx.x == 0) partials[blockIdx.x] = block_total;
  if (!last_block_done(counter)) return;
  acc_t sum = 0;
  for (int i = threadIdx.x; i < gridDim.x; i += blockDim.x) sum += __ldcg(partials + i);
  sum = block_sum(sum, scratch);
  if (threadIdx.x == 0) *loss = scale * sum;
}

std::tuple<at::Tensor, at::Tensor> fr2d_cuda(const at::Tensor& teacher, const at::Tensor& adv, int64_t reduction,
                                             bool want_gradient) {
  check_fr2d_args("fr2d_l1", teacher, adv, reduction);
  const c10::cuda::CUDAGuard guard(teacher.device());
  const int64_t B = teacher.size(0), C = teacher.size(1);
  const auto options = teacher.options().dtype(accumulation_dtype(teacher));
  TORCH_CHECK(B < (int64_t(1) << 31) / std::max<int64_t>(C, 1), "fr2d_l1 (CUDA): ", text(B), " x ", text(C),
              " logits are too many");
  const int64_t K = num_half_bins(C);
  at::Tensor loss = at::empty({}, options);
  at::Tensor pattern = want_gradient ? at::empty({B, C}, options) : at::Tensor();
  unsigned int* counter = done_counter(teacher);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const double scale = fr2d_scale(B, C, reduction);
  if (one_kernel(B, C)) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, teacher.scalar_type(), "fr2d_l1_cuda", [&] {
      using acc_t = acc_of<scalar_t>;
      at::Tensor partials = at::empty({K}, options);
      at::Tensor v = want_gradient ? at::empty({2, K, B}, options) : at::Tensor();
      acc_t* v_re = want_gradient ? v.mutable_data_ptr<acc_t>() : nullptr;
      acc_t* v_im = want_gradient ? v_re + K * B : nullptr;
      const size_t shared = static_cast<size_t>(2 * C + 6 * B) * sizeof(acc_t);
      auto kernel = want_gradient ? fr2d_one_kernel<scalar_t, acc_t, true> : fr2d_one_kernel<scalar_t, acc_t, false>;
      kernel<<<static_cast<unsigned>(K), kThreads, shared, stream>>>(
          teacher.const_data_ptr<scalar_t>(), adv.const_data_ptr<scalar_t>(), teacher.stride(0), teacher.stride(1),
          adv.stride(0), adv.stride(1), static_cast<int>(B), static_cast<int>(C), static_cast<acc_t>(scale),
          partials.mutable_data_ptr<acc_t>(), v_re, v_im, counter, loss.mutable_data_ptr<acc_t>(),
          want_gradient ? pattern.mutable_data_ptr<acc_t>() : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    return {loss, pattern};
  }
  const at::Tensor d = teacher.to(options.dtype()).sub(adv.to(options.dtype()));
  const at::Tensor spectrum = at::fft_rfft2(d);
  const at::Tensor parts = at::view_as_real(spectrum);
  at::Tensor signs = want_gradient ? at::empty_like(parts) : at::Tensor();
  const int blocks = static_cast<int>(std::min<int64_t>(kMaxReduceBlocks, (B * K + kThreads - 1) / kThreads));
  AT_DISPATCH_FLOATING_TYPES(options.dtype().toScalarType(), "fr2d_l1_cuda_spectrum", [&] {
    at::Tensor partials = at::empty({blocks}, options);
    auto kernel = want_gradient ? fr2d_spectrum_kernel<scalar_t, true> : fr2d_spectrum_kernel<scalar_t, false>;
    kernel<<<blocks, kThreads, 0, stream>>>(parts.const_data_ptr<scalar_t>(), static_cast<int>(B),
                                            static_cast<int>(C), static_cast<scalar_t>(scale),
                                            want_gradient ? signs.mutable_data_ptr<scalar_t>() : nullptr,
                                            partials.mutable_data_ptr<scalar_t>(), counter,
                                            loss.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (want_gradient) pattern = at::fft_irfft2(at::view_as_complex(signs), at::IntArrayRef{B, C}, {0, 1}, "forward");
  return {loss, pattern};
}

at::Tensor fr2d_l1_cuda(const at::Tensor& teacher, const at::Tensor& adv, int64_t reduction) {
  return std::get<0>(fr2d_cuda(teacher, adv, reduction, false));
}

std::tuple<at::Tensor, at::Tensor> fr2d_l1_with_grad_cuda(const at::Tensor& teacher, const at::Tensor& adv,
                                                          int64_t reduction) {
  return fr2d_cuda(teacher, adv, reduction, true);
}

}  // namespace

TORCH_LIBRARY_IMPL(fr_fast, CUDA, m) {
  m.impl("fr2d_l1", &fr2d_l1_cuda);
  m.impl("fr2d_l1_with_grad", &fr2d_l1_with_grad_cuda);
}

}  // namespace fr_fast
