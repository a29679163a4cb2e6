// CPU 2-D FR distance (fft="2d"), two paths, one op (fr2d_common.h has the math):
// - small (B, C) whose sizes factor into 2, 3, 5 and 7: the full complex 2-D DFT of teacher - adv with the
//   Stockham FFT of fft_small_cpu.h on one thread, |.| and the signs in one pass, and the real part of
//   the inverse DFT of the signs for the gradient. ATen's FFT calls cost more than these transforms here.
// - otherwise: rfft2 (ATen's FFT), one fused pass for |.|, the signs and the reduction, and the C2R
//   transform of the signs for the gradient. No DFT matrices: the cost is that of two real 2-D FFTs.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "fft_small_cpu.h"
#include "fr2d_common.h"
#include "fr_host.h"

namespace fr_fast {
namespace {

// The L1 of the half spectrum y ((B, K) complex as (B, 2K) reals), multiplied by `scale`; with
// `write_signs`, y is replaced by scale * S (columns 0 and C/2 made Hermitian in p). Row sums are
// added in row order: the result does not depend on the number of threads.
template <typename acc_t>
double half_spectrum_pass(acc_t* y, int64_t B, int64_t C, acc_t scale, bool write_signs) {
  const int64_t K = num_half_bins(C), J = 2 * K;
  // Signs of the self-conjugate columns, from the values before they are overwritten: (B, 2 columns, 2).
  std::vector<acc_t> self_signs;
  if (write_signs) {
    self_signs.resize(4 * B);
    for (int c = 0; c < 2; ++c) {
      const int64_t q = c == 0 ? 0 : K - 1;
      if (!self_conjugate_column(q, C)) continue;
      for (int64_t p = 0; p < B; ++p) {
        const int64_t mirror = (B - p) % B;
        const acc_t* here = y + p * J + 2 * q;
        const acc_t* there = y + mirror * J + 2 * q;
        self_signs[4 * p + 2 * c] = scale * acc_t(0.5) * (sign_of(here[0]) + sign_of(there[0]));
        self_signs[4 * p + 2 * c + 1] = scale * acc_t(0.5) * (sign_of(here[1]) - sign_of(there[1]));
      }
    }
  }
  std::vector<double> rows(B);
  at::parallel_for(0, B, grain_for(J), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      acc_t* row = y + p * J;
      acc_t total = 0;
#pragma omp simd reduction(+ : total)
      for (int64_t j = 0; j < J; ++j) total += bin_weight<acc_t>(j / 2, C) * std::abs(row[j]);
      rows[p] = total;
      if (!write_signs) continue;
#pragma omp simd
      for (int64_t j = 0; j < J; ++j) row[j] = scale * sign_of(row[j]);
      for (int c = 0; c < 2; ++c) {
        const int64_t q = c == 0 ? 0 : K - 1;
        if (!self_conjugate_column(q, C)) continue;
        row[2 * q] = self_signs[4 * p + 2 * c];
        row[2 * q + 1] = self_signs[4 * p + 2 * c + 1];
      }
    }
  });
  double sum = 0;
  for (int64_t p = 0; p < B; ++p) sum += rows[p];
  return static_cast<double>(scale) * sum;
}

// Above about this many elements ATen's real-input FFT beats the single-threaded complex small path
// (measured on a 2-core AMD EPYC: 128x10 3x faster, 64x100 about even, 128x50 and 128x100 slower).
constexpr int64_t kSmallFFTMaxElements = 4096;

bool use_small_fft(int64_t B, int64_t C) {
  return B * C <= kSmallFFTMaxElements && small_fft_supports(B) && small_fft_supports(C);
}

// dst (cols, rows) = src (rows, cols) transposed.
template <typename T>
void transpose(const T* src, T* dst, int64_t rows, int64_t cols) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) dst[j * rows + i] = src[i * cols + j];
}

// The small path on d ((B, C) contiguous, acc_t): returns the loss; with `pattern` (B, C), also writes
// the gradient for an upstream of 1. The full spectrum X (C, B after the transpose) is summed without
// bin weights; Re IDFT(s S) needs no Hermitian fix-up of S: the real part keeps its Hermitian part.
template <typename acc_t>
double small_fft_fr2d(const acc_t* d, int64_t B, int64_t C, acc_t scale, acc_t* pattern) {
  const int64_t n = B * C;
  std::vector<acc_t> buf(4 * n);
  acc_t *re = buf.data(), *im = re + n, *tre = im + n, *tim = tre + n;
  std::copy(d, d + n, re);
  std::fill(im, im + n, acc_t(0));
  // Along B (vectorised over C), transpose, along C (vectorised over B): X transposed in (re, im).
  if (small_fft_axis0<acc_t>(re, im, tre, tim, B, C, acc_t(-1))) {
    transpose(tre, re, B, C);
    transpose(tim, im, B, C);
  } else {
    transpose(re, tre, B, C);
    transpose(im, tim, B, C);
    std::swap(re, tre);
    std::swap(im, tim);
  }
  if (small_fft_axis0<acc_t>(re, im, tre, tim, C, B, acc_t(-1))) {
    std::swap(re, tre);
    std::swap(im, tim);
  }
  // Rows of X^T in order, each summed in double: the same result for any thread count.
  double sum = 0;
  for (int64_t q = 0; q < C; ++q) {
    double row = 0;
    acc_t* xr = re + q * B;
    acc_t* xi = im + q * B;
#pragma omp simd reduction(+ : row)
    for (int64_t p = 0; p < B; ++p) row += static_cast<double>(std::abs(xr[p])) + std::abs(xi[p]);
    sum += row;
    if (!pattern) continue;
#pragma omp simd
    for (int64_t p = 0; p < B; ++p) {
      xr[p] = scale * sign_of(xr[p]);
      xi[p] = scale * sign_of(xi[p]);
    }
  }
  if (pattern) {
    if (small_fft_axis0<acc_t>(re, im, tre, tim, C, B, acc_t(1))) {
      std::swap(re, tre);
      std::swap(im, tim);
    }
    transpose(re, tre, C, B);
    transpose(im, tim, C, B);
    const bool moved = small_fft_axis0<acc_t>(tre, tim, re, im, B, C, acc_t(1));
    const acc_t* real = moved ? re : tre;
    std::copy(real, real + n, pattern);
  }
  return static_cast<double>(scale) * sum;
}

// (loss, gradient for an upstream of 1 with respect to teacher, or undefined) in the accumulation dtype.
std::tuple<at::Tensor, at::Tensor> fr2d_cpu(const at::Tensor& teacher, const at::Tensor& adv, int64_t reduction,
                                            bool want_gradient) {
  check_fr2d_args("fr2d_l1", teacher, adv, reduction);
  const int64_t B = teacher.size(0), C = teacher.size(1);
  const auto options = teacher.options().dtype(accumulation_dtype(teacher));
  at::Tensor loss, pattern;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, teacher.scalar_type(), "fr2d_l1_cpu", [&] {
    using acc_t = acc_of<scalar_t>;
    const acc_t scale = static_cast<acc_t>(fr2d_scale(B, C, reduction));
    if (use_small_fft(B, C)) {
      const at::Tensor d = difference<scalar_t>(teacher, adv);
      if (want_gradient) pattern = at::empty({B, C}, options);
      const double value = small_fft_fr2d<acc_t>(d.const_data_ptr<acc_t>(), B, C, scale,
                                                 want_gradient ? pattern.mutable_data_ptr<acc_t>() : nullptr);
      // Whether an infinity comes out as inf or NaN depends on the FFT's arithmetic: a non-finite loss
      // is computed again on ATen's path, so that it is torch.fft's.
      if (std::isfinite(value)) {
        loss = at::full({}, value, options);
        return;
      }
    }
    const at::Tensor spectrum = at::fft_rfft2(difference<scalar_t>(teacher, adv));
    const double value = half_spectrum_pass<acc_t>(at::view_as_real(spectrum).mutable_data_ptr<acc_t>(), B, C,
                                                   scale, want_gradient);
    loss = at::full({}, value, options);
    if (want_gradient) pattern = at::fft_irfft2(spectrum, at::IntArrayRef{B, C}, {0, 1}, "forward");
  });
  return {loss, pattern};
}

at::Tensor fr2d_l1_cpu(const at::Tensor& teacher, const at::Tensor& adv, int64_t reduction) {
  return std::get<0>(fr2d_cpu(teacher, adv, reduction, false));
}

std::tuple<at::Tensor, at::Tensor> fr2d_l1_with_grad_cpu(const at::Tensor& teacher, const at::Tensor& adv,
                                                         int64_t reduction) {
  return fr2d_cpu(teacher, adv, reduction, true);
}

}  // namespace

TORCH_LIBRARY_IMPL(fr_fast, CPU, m) {
  m.impl("fr2d_l1", &fr2d_l1_cpu);
  m.impl("fr2d_l1_with_grad", &fr2d_l1_with_grad_cpu);
}

}  // namespace fr_fast
