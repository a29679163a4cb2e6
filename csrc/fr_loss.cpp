// CPU forward and backward of the fused FR distance (L1 on real and imaginary parts of the
// class-dimension DFT of teacher - adv). Linearity: F a - F b = F (a - b), so one DFT per row.
// The DFT is direct, against a cached table of twiddles, over the C/2 + 1 distinct bins of a real
// signal: for the class counts of classification (10..1000) this beats an FFT call per row.
#include <ATen/ATen.h>
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

// Strided (B, C) views of the two logit tensors.
template <typename scalar_t>
struct LogitPair {
  const scalar_t* a;
  const scalar_t* b;
  int64_t sa0, sa1, sb0, sb1;
  LogitPair(const at::Tensor& teacher, const at::Tensor& adv)
      : a(teacher.const_data_ptr<scalar_t>()), b(adv.const_data_ptr<scalar_t>()),
        sa0(teacher.stride(0)), sa1(teacher.stride(1)), sb0(adv.stride(0)), sb1(adv.stride(1)) {}
  template <typename acc_t>
  void difference(int64_t row, int64_t C, acc_t* d) const {
    load_difference(a + row * sa0, b + row * sb0, sa1, sb1, C, d);
  }
};

template <typename scalar_t, typename out_t>
void fr_l1_rows(const LogitPair<scalar_t>& logits, int64_t B, int64_t C, out_t* out) {
  using acc_t = acc_of<scalar_t>;
  const auto& tw = twiddles_for<acc_t>(C);
  at::parallel_for(0, B, grain_for(C), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> d(C);
    for (int64_t row = begin; row < end; ++row) {
      logits.difference(row, C, d.data());
      acc_t total = 0;
      for (int64_t k = 0; k < tw.K; ++k) {
        acc_t re, im;
        project(tw, d.data(), k, re, im);
        total += tw.weight[k] * (std::abs(re) + std::abs(im));
      }
      out[row] = static_cast<out_t>(total);
    }
  });
}

// d loss / d teacher = sum_k w_k (sign(Re_k) cos_k + sign(Im_k) sin_k) * g_row; d loss / d adv is its negative.
template <typename scalar_t>
void fr_l1_grad_rows(const LogitPair<scalar_t>& logits, int64_t B, int64_t C,
                     const acc_of<scalar_t>* g, int64_t g_stride, acc_of<scalar_t> g_scale,
                     scalar_t* ga, scalar_t* gb) {
  using acc_t = acc_of<scalar_t>;
  const auto& tw = twiddles_for<acc_t>(C);
  at::parallel_for(0, B, grain_for(C), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> d(C), gd(C);
    for (int64_t row = begin; row < end; ++row) {
      logits.difference(row, C, d.data());
      std::fill(gd.begin(), gd.end(), acc_t(0));
      const acc_t g_row = g[row * g_stride] * g_scale;
      acc_t* out = gd.data();
      for (int64_t k = 0; k < tw.K; ++k) {
        acc_t re, im;
        project(tw, d.data(), k, re, im);
        const acc_t wr = tw.weight[k] * sign_of(re) * g_row, wi = tw.weight[k] * sign_of(im) * g_row;
        const acc_t* c = tw.cos.data() + k * C;
        const acc_t* s = tw.sin.data() + k * C;
#pragma omp simd
        for (int64_t n = 0; n < C; ++n) out[n] += wr * c[n] + wi * s[n];
      }
      for (int64_t n = 0; n < C; ++n) {
        ga[row * C + n] = static_cast<scalar_t>(gd[n]);
        gb[row * C + n] = static_cast<scalar_t>(-gd[n]);
      }
    }
  });
}

at::Tensor reduce_rows(const at::Tensor& rows, int64_t reduction) {
  if (reduction == kMean) return rows.mean();
  if (reduction == kSum) return rows.sum();
  return rows;
}

void check_logits(const char* op, const at::Tensor& teacher, const at::Tensor& adv) {
  TORCH_CHECK(teacher.dim() == 2 && teacher.sizes() == adv.sizes(), op,
              ": expected two (B, C) tensors of the same shape, got ", teacher.sizes(), " and ", adv.sizes());
  TORCH_CHECK(teacher.scalar_type() == adv.scalar_type(), op, ": teacher and adv dtypes differ");
  TORCH_CHECK(teacher.device() == adv.device(), op, ": teacher and adv are on different devices");
}

at::ScalarType accumulation_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

at::Tensor fr_l1_cpu(const at::Tensor& teacher, const at::Tensor& adv, int64_t reduction) {
  check_logits("fr_l1", teacher, adv);
  const int64_t B = teacher.size(0), C = teacher.size(1);
  at::Tensor rows = at::zeros({B}, teacher.options().dtype(accumulation_dtype(teacher)));
  if (B == 0 || C == 0) return reduce_rows(rows, reduction);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, teacher.scalar_type(), "fr_l1_cpu", [&] {
    using acc_t = acc_of<scalar_t>;
    fr_l1_rows<scalar_t, acc_t>(LogitPair<scalar_t>(teacher, adv), B, C, rows.mutable_data_ptr<acc_t>());
  });
  return reduce_rows(rows, reduction);
}

std::tuple<at::Tensor, at::Tensor> fr_l1_backward_cpu(const at::Tensor& grad, const at::Tensor& teacher,
                                                      const at::Tensor& adv, int64_t reduction) {
  check_logits("fr_l1_backward", teacher, adv);
  const int64_t B = teacher.size(0), C = teacher.size(1);
  at::Tensor grad_teacher = at::empty({B, C}, teacher.options());
  at::Tensor grad_adv = at::empty({B, C}, adv.options());
  if (B == 0 || C == 0) return {grad_teacher, grad_adv};
  const at::Tensor grad_acc = grad.to(accumulation_dtype(teacher));
  TORCH_CHECK(reduction == kNone ? grad_acc.numel() == B : grad_acc.numel() == 1,
              "fr_l1_backward: grad has ", grad_acc.numel(), " elements for batch ", B);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, teacher.scalar_type(), "fr_l1_backward_cpu", [&] {
    using acc_t = acc_of<scalar_t>;
    // The upstream gradient: one value per row (reduction none, possibly strided) or one scalar.
    const int64_t g_stride = reduction == kNone ? grad_acc.stride(0) : 0;
    const acc_t g_scale = reduction == kMean ? acc_t(1) / static_cast<acc_t>(B) : acc_t(1);
    fr_l1_grad_rows<scalar_t>(LogitPair<scalar_t>(teacher, adv), B, C, grad_acc.const_data_ptr<acc_t>(), g_stride,
                              g_scale, grad_teacher.mutable_data_ptr<scalar_t>(), grad_adv.mutable_data_ptr<scalar_t>());
  });
  return {grad_teacher, grad_adv};
}

}  // namespace

TORCH_LIBRARY_IMPL(fr_fast, CPU, m) {
  m.impl("fr_l1", &fr_l1_cpu);
  m.impl("fr_l1_backward", &fr_l1_backward_cpu);
}

}  // namespace fr_fast
