// CPU forward and backward of the fused FR distance (L1 on real and imaginary parts of the
// class-dimension DFT of teacher - adv). Linearity: F a - F b = F (a - b), so one DFT per row.
// The DFT is direct, against a cached table of twiddles, over the C/2 + 1 distinct bins of a real
// signal: for the class counts of classification (10..1000) this beats an FFT call per row.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "fr_common.h"

namespace fr_fast {
namespace {

// cos/sin of 2*pi*k*n/C for the distinct bins k < C/2 + 1, row-major (k, n), plus bin weights.
template <typename T>
struct Twiddles {
  int64_t C, K;
  std::vector<T> cos, sin, weight;
  explicit Twiddles(int64_t classes) : C(classes), K(num_half_bins(classes)) {
    cos.resize(K * C);
    sin.resize(K * C);
    weight.resize(K);
    for (int64_t k = 0; k < K; ++k) {
      weight[k] = bin_weight<T>(k, C);
      for (int64_t n = 0; n < C; ++n) {
        // Reduce k*n mod C in integers so the angle is exact; snap round-off so the imaginary
        // parts of bin 0 and of the Nyquist bin are exactly zero (their subgradient is then 0).
        const double angle = 2.0 * M_PI * static_cast<double>((k * n) % C) / static_cast<double>(C);
        double c = std::cos(angle), s = std::sin(angle);
        if (std::abs(c) < 1e-12) c = 0.0;
        if (std::abs(s) < 1e-12) s = 0.0;
        cos[k * C + n] = static_cast<T>(c);
        sin[k * C + n] = static_cast<T>(s);
      }
    }
  }
};

template <typename T>
const Twiddles<T>& twiddles_for(int64_t C) {
  static std::mutex lock;
  static std::map<int64_t, std::unique_ptr<Twiddles<T>>> cache;
  std::lock_guard<std::mutex> guard(lock);
  auto& entry = cache[C];
  if (!entry) entry = std::make_unique<Twiddles<T>>(C);
  return *entry;
}

template <typename T>
inline T sign_of(T v) {
  return static_cast<T>((v > T(0)) - (v < T(0)));
}

// Rows per parallel chunk so that each chunk holds ~32k multiply-adds: small problems stay on one thread.
int64_t grain_for(int64_t C) {
  const int64_t work_per_row = C * num_half_bins(C);
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work_per_row));
}

template <typename scalar_t, typename acc_t>
inline void load_difference(const scalar_t* a, const scalar_t* b, int64_t sa, int64_t sb, int64_t C,
                            acc_t* d) {
  for (int64_t n = 0; n < C; ++n) d[n] = static_cast<acc_t>(a[n * sa]) - static_cast<acc_t>(b[n * sb]);
}

// The two projections of one row onto bin k: Re and -Im of its DFT.
template <typename acc_t>
inline void project(const Twiddles<acc_t>& tw, const acc_t* d, int64_t k, acc_t& re, acc_t& im) {
  const acc_t* c = tw.cos.data() + k * tw.C;
  const acc_t* s = tw.sin.data() + k * tw.C;
  acc_t r = 0, i = 0;
#pragma omp simd reduction(+ : r, i)
  for (int64_t n = 0; n < tw.C; ++n) {
    r += d[n] * c[n];
    i += d[n] * s[n];
  }
  re = r;
  im = i;
}

at::Tensor reduce_rows(const at::Tensor& rows, int64_t reduction) {
  if (reduction == kMean) return rows.mean();
  if (reduction == kSum) return rows.sum();
  return rows;
}

at::Tensor fr_l1_cpu(const at::Tensor& teacher, const at::Tensor& adv, int64_t reduction) {
  TORCH_CHECK(teacher.dim() == 2 && teacher.sizes() == adv.sizes(),
              "fr_l1: expected two (B, C) tensors of the same shape, got ", teacher.sizes(), " and ", adv.sizes());
  TORCH_CHECK(teacher.scalar_type() == adv.scalar_type(), "fr_l1: dtypes differ");
  const int64_t B = teacher.size(0), C = teacher.size(1);
  const auto acc_dtype = teacher.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor rows = at::empty({B}, teacher.options().dtype(acc_dtype));
  if (B == 0 || C == 0) return reduce_rows(rows.zero_(), reduction);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, teacher.scalar_type(), "fr_l1_cpu", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/false>;
    using out_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const auto& tw = twiddles_for<acc_t>(C);
    const scalar_t* a = teacher.const_data_ptr<scalar_t>();
    const scalar_t* b = adv.const_data_ptr<scalar_t>();
    out_t* out = rows.mutable_data_ptr<out_t>();
    const int64_t sa0 = teacher.stride(0), sa1 = teacher.stride(1), sb0 = adv.stride(0), sb1 = adv.stride(1);
    at::parallel_for(0, B, grain_for(C), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> d(C);
      for (int64_t row = begin; row < end; ++row) {
        load_difference(a + row * sa0, b + row * sb0, sa1, sb1, C, d.data());
        acc_t total = 0;
        for (int64_t k = 0; k < tw.K; ++k) {
          acc_t re, im;
          project(tw, d.data(), k, re, im);
          total += tw.weight[k] * (std::abs(re) + std::abs(im));
        }
        out[row] = static_cast<out_t>(total);
      }
    });
  });
  return reduce_rows(rows, reduction);
}

std::tuple<at::Tensor, at::Tensor> fr_l1_backward_cpu(const at::Tensor& grad, const at::Tensor& teacher,
                                                      const at::Tensor& adv, int64_t reduction) {
  TORCH_CHECK(teacher.dim() == 2 && teacher.sizes() == adv.sizes(), "fr_l1_backward: shape mismatch");
  const int64_t B = teacher.size(0), C = teacher.size(1);
  at::Tensor grad_teacher = at::empty({B, C}, teacher.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor grad_adv = at::empty({B, C}, adv.options().memory_format(at::MemoryFormat::Contiguous));
  if (B == 0 || C == 0) return {grad_teacher, grad_adv};
  const at::Tensor grad_acc = grad.to(teacher.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, teacher.scalar_type(), "fr_l1_backward_cpu", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/false>;
    const auto& tw = twiddles_for<acc_t>(C);
    const scalar_t* a = teacher.const_data_ptr<scalar_t>();
    const scalar_t* b = adv.const_data_ptr<scalar_t>();
    scalar_t* ga = grad_teacher.mutable_data_ptr<scalar_t>();
    scalar_t* gb = grad_adv.mutable_data_ptr<scalar_t>();
    const int64_t sa0 = teacher.stride(0), sa1 = teacher.stride(1), sb0 = adv.stride(0), sb1 = adv.stride(1);
    // The upstream gradient: one value per row (reduction none, possibly strided) or a scalar.
    const acc_t* g = grad_acc.const_data_ptr<acc_t>();
    const int64_t g_stride = reduction == kNone ? grad_acc.stride(0) : 0;
    const acc_t g_scale = reduction == kMean ? acc_t(1) / static_cast<acc_t>(B) : acc_t(1);
    at::parallel_for(0, B, grain_for(C), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> d(C), gd(C);
      for (int64_t row = begin; row < end; ++row) {
        load_difference(a + row * sa0, b + row * sb0, sa1, sb1, C, d.data());
        std::fill(gd.begin(), gd.end(), acc_t(0));
        const acc_t g_row = g[row * g_stride] * g_scale;
        for (int64_t k = 0; k < tw.K; ++k) {
          acc_t re, im;
          project(tw, d.data(), k, re, im);
          const acc_t wr = tw.weight[k] * sign_of(re) * g_row, wi = tw.weight[k] * sign_of(im) * g_row;
          if (wr == acc_t(0) && wi == acc_t(0)) continue;
          const acc_t* c = tw.cos.data() + k * C;
          const acc_t* s = tw.sin.data() + k * C;
          acc_t* out = gd.data();
#pragma omp simd
          for (int64_t n = 0; n < C; ++n) out[n] += wr * c[n] + wi * s[n];
        }
        for (int64_t n = 0; n < C; ++n) {
          ga[row * C + n] = static_cast<scalar_t>(gd[n]);
          gb[row * C + n] = static_cast<scalar_t>(-gd[n]);
        }
      }
    });
  });
  return {grad_teacher, grad_adv};
}

}  // namespace

TORCH_LIBRARY_IMPL(fr_fast, CPU, m) {
  m.impl("fr_l1", &fr_l1_cpu);
  m.impl("fr_l1_backward", &fr_l1_backward_cpu);
}

}  // namespace fr_fast
