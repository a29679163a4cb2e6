// CPU forward and backward of the fused FR distance (L1 on the real and imaginary parts of the
// class-dimension DFT of teacher - adv). Linearity: F a - F b = F (a - b), so one transform per row.
// The transform is a GEMM against a cached real-DFT basis over the C/2 + 1 distinct bins of a real
// signal: for the class counts of classification (10..512) one BLAS call beats an FFT per row, and
// the whole op is one dispatcher call instead of the ~15 ops and complex temporaries of torch.fft.
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
  at::Tensor matrix;
  std::vector<double> weight;
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
  return cache.emplace(std::make_pair(C, dtype), Basis{matrix.to(dtype), weight}).first->second;
}

// Rows per parallel chunk so that each chunk holds ~16k elements: small problems stay on one thread.
int64_t grain_for(int64_t C) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, C)); }

// (teacher - adv) as a contiguous (B, C) matrix in the accumulation type, from any strides.
template <typename scalar_t>
at::Tensor difference(const at::Tensor& teacher, const at::Tensor& adv) {
  using acc_t = acc_of<scalar_t>;
  const int64_t B = teacher.size(0), C = teacher.size(1);
  at::Tensor d = at::empty({B, C}, teacher.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  const scalar_t* a = teacher.const_data_ptr<scalar_t>();
  const scalar_t* b = adv.const_data_ptr<scalar_t>();
  const int64_t sa0 = teacher.stride(0), sa1 = teacher.stride(1), sb0 = adv.stride(0), sb1 = adv.stride(1);
  acc_t* out = d.mutable_data_ptr<acc_t>();
  at::parallel_for(0, B, grain_for(C), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row)
      for (int64_t n = 0; n < C; ++n)
        out[row * C + n] = static_cast<acc_t>(a[row * sa0 + n * sa1]) - static_cast<acc_t>(b[row * sb0 + n * sb1]);
  });
  return d;
}

template <typename acc_t>
void weighted_abs_rows(const at::Tensor& projections, const std::vector<double>& weight, acc_t* rows) {
  const int64_t B = projections.size(0), J = projections.size(1);
  const acc_t* p = projections.const_data_ptr<acc_t>();
  std::vector<acc_t> w(weight.begin(), weight.end());
  at::parallel_for(0, B, grain_for(J), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      acc_t total = 0;
      const acc_t* pr = p + row * J;
#pragma omp simd reduction(+ : total)
      for (int64_t j = 0; j < J; ++j) total += w[j] * std::abs(pr[j]);
      rows[row] = total;
    }
  });
}

// projections <- weight * sign(projections) * g_row, in place: the upstream gradient in the basis.
template <typename acc_t>
void signs_times_grad(at::Tensor& projections, const std::vector<double>& weight, const acc_t* g, int64_t g_stride,
                      acc_t g_scale) {
  const int64_t B = projections.size(0), J = projections.size(1);
  acc_t* p = projections.mutable_data_ptr<acc_t>();
  std::vector<acc_t> w(weight.begin(), weight.end());
  at::parallel_for(0, B, grain_for(J), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const acc_t g_row = g[row * g_stride] * g_scale;
      acc_t* pr = p + row * J;
#pragma omp simd
      for (int64_t j = 0; j < J; ++j) {
        const acc_t v = pr[j];
        pr[j] = w[j] * g_row * (static_cast<acc_t>(v > acc_t(0)) - static_cast<acc_t>(v < acc_t(0)));
      }
    }
  });
}

// grad_teacher = gd, grad_adv = -gd, both rounded once to the input dtype.
template <typename scalar_t>
void write_gradients(const at::Tensor& gd, scalar_t* ga, scalar_t* gb) {
  using acc_t = acc_of<scalar_t>;
  const acc_t* src = gd.const_data_ptr<acc_t>();
  at::parallel_for(0, gd.numel(), 16384, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      ga[i] = static_cast<scalar_t>(src[i]);
      gb[i] = static_cast<scalar_t>(-src[i]);
    }
  });
}

// Small problems (the usual B=128, C=10): one serial pass per row against the cached basis, no
// temporaries and no GEMM call, since fixed per-call costs dominate there.
constexpr int64_t kSmallWork = 1 << 18;  // B * C * 2K multiply-adds

bool is_small(int64_t B, int64_t C) { return B * C * 2 * num_half_bins(C) <= kSmallWork; }

template <typename scalar_t>
struct Rows {
  const scalar_t* a;
  const scalar_t* b;
  int64_t sa0, sa1, sb0, sb1, C;
  Rows(const at::Tensor& teacher, const at::Tensor& adv)
      : a(teacher.const_data_ptr<scalar_t>()), b(adv.const_data_ptr<scalar_t>()), sa0(teacher.stride(0)),
        sa1(teacher.stride(1)), sb0(adv.stride(0)), sb1(adv.stride(1)), C(teacher.size(1)) {}
  // projections[j] = sum_n (a - b)[row, n] * basis[n, j]; d receives the row's difference.
  template <typename acc_t>
  void project(int64_t row, const acc_t* basis, int64_t J, acc_t* d, acc_t* projections) const {
    std::fill(projections, projections + J, acc_t(0));
    for (int64_t n = 0; n < C; ++n) {
      const acc_t dn = static_cast<acc_t>(a[row * sa0 + n * sa1]) - static_cast<acc_t>(b[row * sb0 + n * sb1]);
      d[n] = dn;
      const acc_t* m = basis + n * J;
#pragma omp simd
      for (int64_t j = 0; j < J; ++j) projections[j] += dn * m[j];
    }
  }
};

template <typename scalar_t>
void fr_l1_rows_small(const at::Tensor& teacher, const at::Tensor& adv, const Basis& basis, acc_of<scalar_t>* rows) {
  using acc_t = acc_of<scalar_t>;
  const Rows<scalar_t> logits(teacher, adv);
  const int64_t B = teacher.size(0), C = teacher.size(1), J = basis.matrix.size(1);
  const acc_t* m = basis.matrix.const_data_ptr<acc_t>();
  std::vector<acc_t> d(C), p(J), w(basis.weight.begin(), basis.weight.end());
  for (int64_t row = 0; row < B; ++row) {
    logits.project(row, m, J, d.data(), p.data());
    acc_t total = 0;
    for (int64_t j = 0; j < J; ++j) total += w[j] * std::abs(p[j]);
    rows[row] = total;
  }
}

template <typename scalar_t>
void fr_l1_grad_small(const at::Tensor& teacher, const at::Tensor& adv, const Basis& basis, const acc_of<scalar_t>* g,
                      int64_t g_stride, acc_of<scalar_t> g_scale, scalar_t* ga, scalar_t* gb) {
  using acc_t = acc_of<scalar_t>;
  const Rows<scalar_t> logits(teacher, adv);
  const int64_t B = teacher.size(0), C = teacher.size(1), J = basis.matrix.size(1);
  const acc_t* m = basis.matrix.const_data_ptr<acc_t>();
  std::vector<acc_t> d(C), p(J), w(basis.weight.begin(), basis.weight.end());
  for (int64_t row = 0; row < B; ++row) {
    logits.project(row, m, J, d.data(), p.data());
    const acc_t g_row = g[row * g_stride] * g_scale;
    for (int64_t j = 0; j < J; ++j) p[j] = w[j] * g_row * (static_cast<acc_t>(p[j] > 0) - static_cast<acc_t>(p[j] < 0));
    for (int64_t n = 0; n < C; ++n) {
      const acc_t* mn = m + n * J;
      acc_t total = 0;
#pragma omp simd reduction(+ : total)
      for (int64_t j = 0; j < J; ++j) total += p[j] * mn[j];
      ga[row * C + n] = static_cast<scalar_t>(total);
      gb[row * C + n] = static_cast<scalar_t>(-total);
    }
  }
}

// Forward: [Re | -Im] = (a - b) @ basis in one GEMM, then the weighted L1 of each row.
at::Tensor fr_l1_cpu(const at::Tensor& teacher, const at::Tensor& adv, int64_t reduction) {
  check_logits("fr_l1", teacher, adv);
  const int64_t B = teacher.size(0), C = teacher.size(1);
  at::Tensor rows = at::empty({B}, teacher.options().dtype(accumulation_dtype(teacher)));
  if (B == 0 || C == 0) return reduce_rows(rows.zero_(), reduction);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, teacher.scalar_type(), "fr_l1_cpu", [&] {
    using acc_t = acc_of<scalar_t>;
    const Basis& basis = basis_for(C, accumulation_dtype(teacher));
    if (is_small(B, C)) {
      fr_l1_rows_small<scalar_t>(teacher, adv, basis, rows.mutable_data_ptr<acc_t>());
      return;
    }
    const at::Tensor projections = at::mm(difference<scalar_t>(teacher, adv), basis.matrix);
    weighted_abs_rows<acc_t>(projections, basis.weight, rows.mutable_data_ptr<acc_t>());
  });
  return reduce_rows(rows, reduction);
}

// Backward: recompute the projections, replace them by weighted signs times the upstream gradient,
// and map back with the transposed basis (a second GEMM).
std::tuple<at::Tensor, at::Tensor> fr_l1_backward_cpu(const at::Tensor& grad, const at::Tensor& teacher,
                                                      const at::Tensor& adv, int64_t reduction) {
  check_logits("fr_l1_backward", teacher, adv);
  const int64_t B = teacher.size(0), C = teacher.size(1);
  at::Tensor grad_teacher = at::empty({B, C}, teacher.options());
  at::Tensor grad_adv = at::empty({B, C}, adv.options());
  if (B == 0 || C == 0) return {grad_teacher, grad_adv};
  const Upstream upstream = upstream_gradient(grad, teacher, reduction);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, teacher.scalar_type(), "fr_l1_backward_cpu", [&] {
    using acc_t = acc_of<scalar_t>;
    const Basis& basis = basis_for(C, accumulation_dtype(teacher));
    const acc_t* g = upstream.values.const_data_ptr<acc_t>();
    const int64_t g_stride = upstream.stride;
    const acc_t g_scale = static_cast<acc_t>(upstream.scale);
    if (is_small(B, C)) {
      fr_l1_grad_small<scalar_t>(teacher, adv, basis, g, g_stride, g_scale,
                                 grad_teacher.mutable_data_ptr<scalar_t>(), grad_adv.mutable_data_ptr<scalar_t>());
      return;
    }
    at::Tensor projections = at::mm(difference<scalar_t>(teacher, adv), basis.matrix);
    signs_times_grad<acc_t>(projections, basis.weight, g, g_stride, g_scale);
    const at::Tensor gd = at::mm(projections, basis.matrix.t());
    write_gradients<scalar_t>(gd, grad_teacher.mutable_data_ptr<scalar_t>(), grad_adv.mutable_data_ptr<scalar_t>());
  });
  return {grad_teacher, grad_adv};
}

}  // namespace

TORCH_LIBRARY_IMPL(fr_fast, CPU, m) {
  m.impl("fr_l1", &fr_l1_cpu);
  m.impl("fr_l1_backward", &fr_l1_backward_cpu);
}

}  // namespace fr_fast
