// CPU forward and backward of the fused FR distance (L1 on the real and imaginary parts of the
// class-dimension DFT of teacher - adv). Linearity: F a - F b = F (a - b), so one transform per row.
// A real row has C/2 + 1 distinct bins (the rest are conjugates, counted twice). Two paths, one op:
//  - small problems (B=128, C=10): a direct transform against a cached real-DFT basis, batch-minor so
//    it vectorises, in one pass with the reduction and no temporaries (fixed costs dominate there);
//  - larger ones: one real FFT of the difference (pocketfft/MKL via at::fft_rfft), O(C log C).
// Either way it is one dispatcher call instead of the ~15 ops and complex temporaries of torch.fft.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <map>
#include <mutex>
#include <vector>

#include "fr_host.h"

namespace fr_fast {
namespace {

// The real DFT basis of length C as one (C, 2K) matrix [cos | sin] over the K = C/2 + 1 distinct
// bins, and the bin weights repeated for both halves. Row d (1, C) times it gives [Re | -Im].
struct Basis {
  at::Tensor matrix;  // (C, 2K) in the accumulation dtype
  at::Tensor weight;  // (2K,) in the accumulation dtype
};

const Basis& basis_for(int64_t C, at::ScalarType dtype) {
  static std::mutex lock;
  static std::map<std::pair<int64_t, at::ScalarType>, Basis> cache;
  std::lock_guard<std::mutex> guard(lock);
  auto found = cache.find({C, dtype});
  if (found != cache.end()) return found->second;
  const int64_t K = num_half_bins(C);
  at::Tensor matrix = at::empty({C, 2 * K}, at::TensorOptions().dtype(at::kDouble));
  auto m = matrix.accessor<double, 2>();
  std::vector<double> weight(2 * K);
  for (int64_t k = 0; k < K; ++k) {
    weight[k] = weight[K + k] = bin_weight<double>(k, C);
    for (int64_t n = 0; n < C; ++n) {
      // Reduce k*n mod C in integers so the angle is exact; snap round-off so the imaginary parts of
      // bin 0 and of the Nyquist bin are exactly zero (their subgradient is then 0, as in torch.fft).
      const double angle = 2.0 * M_PI * static_cast<double>((k * n) % C) / static_cast<double>(C);
      const double c = std::cos(angle), s = std::sin(angle);
      m[n][k] = std::abs(c) < 1e-12 ? 0.0 : c;
      m[n][K + k] = std::abs(s) < 1e-12 ? 0.0 : s;
    }
  }
  const at::Tensor weights = at::tensor(weight, at::TensorOptions().dtype(at::kDouble)).to(dtype);
  return cache.emplace(std::make_pair(C, dtype), Basis{matrix.to(dtype), weights}).first->second;
}

// The (B, K) half spectrum of rfft as (B, 2K) reals [Re_0, Im_0, Re_1, Im_1, ...]: the weight of entry j
// is that of bin j / 2.
template <typename acc_t>
void weighted_abs_rows(const at::Tensor& spectrum, int64_t C, acc_t* rows) {
  const int64_t B = spectrum.size(0), J = 2 * spectrum.size(1);
  const acc_t* p = spectrum.const_data_ptr<acc_t>();
  at::parallel_for(0, B, grain_for(J), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      acc_t total = 0;
      const acc_t* pr = p + row * J;
#pragma omp simd reduction(+ : total)
      for (int64_t j = 0; j < J; ++j) total += bin_weight<acc_t>(j / 2, C) * std::abs(pr[j]);
      rows[row] = total;
    }
  });
}

// spectrum <- sign(spectrum) * g_row, in place: the upstream gradient in the frequency domain. No bin
// weights here: the inverse real FFT of the adjoint counts the conjugate pairs itself.
template <typename acc_t>
void signs_times_grad(at::Tensor& spectrum, const acc_t* g, int64_t g_stride, acc_t g_scale) {
  const int64_t B = spectrum.size(0), J = 2 * spectrum.size(1);
  acc_t* p = spectrum.mutable_data_ptr<acc_t>();
  at::parallel_for(0, B, grain_for(J), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const acc_t g_row = g[row * g_stride] * g_scale;
      acc_t* pr = p + row * J;
#pragma omp simd
      for (int64_t j = 0; j < J; ++j) {
        const acc_t v = pr[j];
        pr[j] = g_row * (static_cast<acc_t>(v > acc_t(0)) - static_cast<acc_t>(v < acc_t(0)));
      }
    }
  });
}

// grad_teacher = scale * gd, grad_adv = -scale * gd, both rounded once to the input dtype.
template <typename scalar_t>
void write_gradients(const at::Tensor& gd, acc_of<scalar_t> scale, scalar_t* ga, scalar_t* gb) {
  using acc_t = acc_of<scalar_t>;
  const acc_t* src = gd.const_data_ptr<acc_t>();
  at::parallel_for(0, gd.numel(), 16384, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const acc_t v = scale * src[i];
      ga[i] = static_cast<scalar_t>(v);
      gb[i] = static_cast<scalar_t>(-v);
    }
  });
}

// Small problems (the usual B=128, C=10): one serial pass without GEMM call or temporaries, since
// fixed per-call costs dominate there. The batch is the innermost, contiguous loop (rows are
// transposed into scratch), so the multiply-adds vectorise fully even for 10 classes.
constexpr int64_t kSmallWork = 1 << 18;  // B * C * 2K multiply-adds

bool is_small(int64_t B, int64_t C) { return B * C * 2 * num_half_bins(C) <= kSmallWork; }

// Per-thread scratch of at least n values, reused across calls (no allocation on the hot path).
template <typename acc_t>
acc_t* scratch(int64_t n) {
  static thread_local std::vector<acc_t> buffer;
  if (static_cast<int64_t>(buffer.size()) < n) buffer.resize(n);
  return buffer.data();
}

// dt (C, B) = (a - b)^T and pt (J, B) = (dt^T @ basis)^T: the projections of every row, batch-minor.
template <typename scalar_t, typename acc_t>
void project_transposed(const at::Tensor& teacher, const at::Tensor& adv, const acc_t* basis, int64_t J, acc_t* dt,
                        acc_t* pt) {
  const int64_t B = teacher.size(0), C = teacher.size(1);
  const scalar_t* a = teacher.const_data_ptr<scalar_t>();
  const scalar_t* b = adv.const_data_ptr<scalar_t>();
  const int64_t sa0 = teacher.stride(0), sa1 = teacher.stride(1), sb0 = adv.stride(0), sb1 = adv.stride(1);
  for (int64_t row = 0; row < B; ++row)
    for (int64_t n = 0; n < C; ++n)
      dt[n * B + row] = static_cast<acc_t>(a[row * sa0 + n * sa1]) - static_cast<acc_t>(b[row * sb0 + n * sb1]);
  std::fill(pt, pt + J * B, acc_t(0));
  for (int64_t n = 0; n < C; ++n) {
    const acc_t* d = dt + n * B;
    for (int64_t j = 0; j < J; ++j) {
      const acc_t m = basis[n * J + j];
      if (m == acc_t(0)) continue;
      acc_t* p = pt + j * B;
#pragma omp simd
      for (int64_t row = 0; row < B; ++row) p[row] += d[row] * m;
    }
  }
}

// One pass of the small path over a (B, C) problem, batch-minor in per-thread scratch:
//   rows   (optional, B)   per-row FR distances; the return value is their sum;
//   g_rows (optional, B)   upstream gradient per row: then the gradient of the weighted L1 with respect to
//                          (a - b) is mapped back and handed to `store(row, n, value)`.
template <typename scalar_t, typename Store>
double small_pass(const at::Tensor& teacher, const at::Tensor& adv, const Basis& basis, acc_of<scalar_t>* rows,
                  const acc_of<scalar_t>* g_rows, Store store) {
  using acc_t = acc_of<scalar_t>;
  const int64_t B = teacher.size(0), C = teacher.size(1), J = basis.matrix.size(1);
  const acc_t* m = basis.matrix.const_data_ptr<acc_t>();
  const acc_t* w = basis.weight.const_data_ptr<acc_t>();
  acc_t* dt = scratch<acc_t>((2 * C + J + 1) * B);
  acc_t* pt = dt + C * B;
  acc_t* gdt = pt + J * B;
  acc_t* totals = gdt + C * B;
  project_transposed<scalar_t, acc_t>(teacher, adv, m, J, dt, pt);
  std::fill(totals, totals + B, acc_t(0));
  for (int64_t j = 0; j < J; ++j) {
    const acc_t wj = w[j];
    const acc_t* p = pt + j * B;
#pragma omp simd
    for (int64_t row = 0; row < B; ++row) totals[row] += wj * std::abs(p[row]);
  }
  double sum = 0;
  for (int64_t row = 0; row < B; ++row) {
    if (rows != nullptr) rows[row] = totals[row];
    sum += totals[row];
  }
  if (g_rows == nullptr) return sum;
  for (int64_t j = 0; j < J; ++j) {  // pt <- w_j * sign(pt) * g_row
    acc_t* p = pt + j * B;
    const acc_t wj = w[j];
#pragma omp simd
    for (int64_t row = 0; row < B; ++row) p[row] = wj * g_rows[row] * sign_of(p[row]);
  }
  std::fill(gdt, gdt + C * B, acc_t(0));
  for (int64_t n = 0; n < C; ++n) {
    acc_t* out = gdt + n * B;
    for (int64_t j = 0; j < J; ++j) {
      const acc_t mj = m[n * J + j];
      if (mj == acc_t(0)) continue;
      const acc_t* p = pt + j * B;
#pragma omp simd
      for (int64_t row = 0; row < B; ++row) out[row] += p[row] * mj;
    }
  }
  for (int64_t row = 0; row < B; ++row)
    for (int64_t n = 0; n < C; ++n) store(row, n, gdt[n * B + row]);
  return sum;
}

// The upstream gradient of every row for the small path (per-thread scratch of B values).
template <typename acc_t>
const acc_t* upstream_rows(int64_t B, const acc_t* g, int64_t g_stride, acc_t g_scale) {
  static thread_local std::vector<acc_t> values;
  values.resize(B);
  for (int64_t row = 0; row < B; ++row) values[row] = g[row * g_stride] * g_scale;
  return values.data();
}

// Forward: the half spectrum of (a - b), then the weighted L1 of each row (and the reduction).
at::Tensor fr_l1_cpu(const at::Tensor& teacher, const at::Tensor& adv, int64_t reduction) {
  check_fr_l1_args("fr_l1", teacher, adv, reduction);
  const int64_t B = teacher.size(0), C = teacher.size(1);
  const auto options = teacher.options().dtype(accumulation_dtype(teacher));
  if (B == 0 || C == 0) return reduce_rows(at::zeros({B}, options), reduction);
  if (is_small(B, C) && reduction != kNone) {  // one pass, the reduction included: no extra op
    at::Tensor out = at::empty({}, options);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, teacher.scalar_type(), "fr_l1_cpu_small", [&] {
      using acc_t = acc_of<scalar_t>;
      const double sum = small_pass<scalar_t>(teacher, adv, basis_for(C, accumulation_dtype(teacher)), nullptr,
                                              nullptr, [](int64_t, int64_t, acc_t) {});
      *out.mutable_data_ptr<acc_t>() = static_cast<acc_t>(reduction == kMean ? sum / static_cast<double>(B) : sum);
    });
    return out;
  }
  at::Tensor rows = at::empty({B}, options);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, teacher.scalar_type(), "fr_l1_cpu", [&] {
    using acc_t = acc_of<scalar_t>;
    if (is_small(B, C)) {
      small_pass<scalar_t>(teacher, adv, basis_for(C, accumulation_dtype(teacher)), rows.mutable_data_ptr<acc_t>(),
                           nullptr, [](int64_t, int64_t, acc_t) {});
      return;
    }
    const at::Tensor spectrum = at::view_as_real(at::fft_rfft(difference<scalar_t>(teacher, adv), C, 1));
    weighted_abs_rows<acc_t>(spectrum, C, rows.mutable_data_ptr<acc_t>());
  });
  return reduce_rows(rows, reduction);
}

// Backward: recompute the half spectrum, replace it by weighted signs times the upstream gradient,
// and map it back with the adjoint transform.
std::tuple<at::Tensor, at::Tensor> fr_l1_backward_cpu(const at::Tensor& grad, const at::Tensor& teacher,
                                                      const at::Tensor& adv, int64_t reduction) {
  check_fr_l1_args("fr_l1_backward", teacher, adv, reduction);
  const int64_t B = teacher.size(0), C = teacher.size(1);
  at::Tensor grad_teacher = at::empty({B, C}, teacher.options());
  at::Tensor grad_adv = at::empty({B, C}, adv.options());
  const Upstream upstream = upstream_gradient(grad, teacher, reduction);  // checked before anything reads it
  if (B == 0 || C == 0) return {grad_teacher, grad_adv};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, teacher.scalar_type(), "fr_l1_backward_cpu", [&] {
    using acc_t = acc_of<scalar_t>;
    const acc_t* g = upstream.values.const_data_ptr<acc_t>();
    const int64_t g_stride = upstream.stride;
    const acc_t g_scale = static_cast<acc_t>(upstream.scale);
    if (is_small(B, C)) {
      scalar_t* ga = grad_teacher.mutable_data_ptr<scalar_t>();
      scalar_t* gb = grad_adv.mutable_data_ptr<scalar_t>();
      small_pass<scalar_t>(teacher, adv, basis_for(C, accumulation_dtype(teacher)), nullptr,
                           upstream_rows<acc_t>(B, g, g_stride, g_scale), [&](int64_t row, int64_t n, acc_t v) {
                             ga[row * C + n] = static_cast<scalar_t>(v);
                             gb[row * C + n] = static_cast<scalar_t>(-v);
                           });
      return;
    }
    // The adjoint of the weighted half-spectrum transform is C * irfft: irfft counts bins 1..C/2-1
    // twice (the weights) and ignores the imaginary parts of DC and Nyquist, which are exactly zero here.
    const at::Tensor spectrum = at::fft_rfft(difference<scalar_t>(teacher, adv), C, 1);
    at::Tensor parts = at::view_as_real(spectrum);
    signs_times_grad<acc_t>(parts, g, g_stride, g_scale);
    const at::Tensor gd = at::fft_irfft(spectrum, C, 1);
    write_gradients<scalar_t>(gd, static_cast<acc_t>(C), grad_teacher.mutable_data_ptr<scalar_t>(),
                              grad_adv.mutable_data_ptr<scalar_t>());
  });
  return {grad_teacher, grad_adv};
}

// Forward plus, for an upstream gradient of 1, the gradient with respect to teacher (adv's is its
// negative), in the accumulation dtype. Autograd keeps it when gradients are needed, so the backward
// only scales it: one transform instead of two, and no recompute.
std::tuple<at::Tensor, at::Tensor> fr_l1_with_grad_cpu(const at::Tensor& teacher, const at::Tensor& adv,
                                                       int64_t reduction) {
  check_fr_l1_args("fr_l1", teacher, adv, reduction);
  const int64_t B = teacher.size(0), C = teacher.size(1);
  const auto options = teacher.options().dtype(accumulation_dtype(teacher));
  at::Tensor pattern = at::empty({B, C}, options);
  if (B == 0 || C == 0) return {reduce_rows(at::zeros({B}, options), reduction), pattern};
  at::Tensor rows = at::empty({B}, options);
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, teacher.scalar_type(), "fr_l1_with_grad_cpu", [&] {
    using acc_t = acc_of<scalar_t>;
    const acc_t scale = static_cast<acc_t>(reduction == kMean ? 1.0 / static_cast<double>(B) : 1.0);
    acc_t* p = pattern.mutable_data_ptr<acc_t>();
    if (is_small(B, C)) {
      const double sum = small_pass<scalar_t>(teacher, adv, basis_for(C, accumulation_dtype(teacher)),
                                              rows.mutable_data_ptr<acc_t>(), upstream_rows<acc_t>(B, &scale, 0, 1),
                                              [&](int64_t row, int64_t n, acc_t v) { p[row * C + n] = v; });
      if (reduction != kNone) {
        out = at::empty({}, options);
        *out.mutable_data_ptr<acc_t>() = static_cast<acc_t>(reduction == kMean ? sum / static_cast<double>(B) : sum);
      }
      return;
    }
    const at::Tensor spectrum = at::fft_rfft(difference<scalar_t>(teacher, adv), C, 1);
    at::Tensor parts = at::view_as_real(spectrum);
    weighted_abs_rows<acc_t>(parts, C, rows.mutable_data_ptr<acc_t>());
    signs_times_grad<acc_t>(parts, &scale, 0, acc_t(1));
    const at::Tensor gd = at::fft_irfft(spectrum, C, 1);  // adjoint: C * irfft (see fr_l1_backward_cpu)
    const acc_t* src = gd.const_data_ptr<acc_t>();
    at::parallel_for(0, B * C, 16384, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) p[i] = static_cast<acc_t>(C) * src[i];
    });
  });
  return {out.defined() ? out : reduce_rows(rows, reduction), pattern};
}

}  // namespace

TORCH_LIBRARY_IMPL(fr_fast, CPU, m) {
  m.impl("fr_l1", &fr_l1_cpu);
  m.impl("fr_l1_backward", &fr_l1_backward_cpu);
  m.impl("fr_l1_with_grad", &fr_l1_with_grad_cpu);
}

}  // namespace fr_fast
