// CPU 2-D FR distance (fft="2d"): rfft2 of teacher - adv (ATen's FFT), one fused pass for |.|, the
// signs and the reduction, and, when the gradient is wanted, the C2R transform of the signs
// (fr2d_common.h has the math). No DFT matrices: the cost is that of two real 2-D FFTs.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

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

// (loss, gradient for an upstream of 1 with respect to teacher, or undefined) in the accumulation dtype.
std::tuple<at::Tensor, at::Tensor> fr2d_cpu(const at::Tensor& teacher, const at::Tensor& adv, int64_t reduction,
                                            bool want_gradient) {
  check_fr2d_args("fr2d_l1", teacher, adv, reduction);
  const int64_t B = teacher.size(0), C = teacher.size(1);
  const auto options = teacher.options().dtype(accumulation_dtype(teacher));
  at::Tensor loss, pattern;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, teacher.scalar_type(), "fr2d_l1_cpu", [&] {
    using acc_t = acc_of<scalar_t>;
    const at::Tensor spectrum = at::fft_rfft2(difference<scalar_t>(teacher, adv));
    const acc_t scale = static_cast<acc_t>(fr2d_scale(B, C, reduction));
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
