// Host-side helpers shared by the CPU and CUDA FR ops: argument checks, dtypes, reductions.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "fr_common.h"
#include "fr_text.h"

namespace fr_fast {

inline void check_logits(const char* op, const at::Tensor& teacher, const at::Tensor& adv) {
  TORCH_CHECK_VALUE(teacher.dim() == 2 && teacher.sizes() == adv.sizes(), op,
                    ": expected (batch, classes) logits of the same shape, got ", text(teacher.sizes()), " and ",
                    text(adv.sizes()));
  TORCH_CHECK_VALUE(teacher.scalar_type() == adv.scalar_type(), op, ": teacher is ", dtype_name(teacher.scalar_type()),
                    " but adv is ", dtype_name(adv.scalar_type()));
  TORCH_CHECK_VALUE(is_kernel_dtype(teacher.scalar_type()), op,
                    ": logits must be float16, bfloat16, float32 or float64, got ", dtype_name(teacher.scalar_type()));
  TORCH_CHECK_VALUE(teacher.device() == adv.device(), op, ": teacher is on ", text(teacher.device()), " but adv is on ",
                    text(adv.device()));
}

// The 1-D form: per row (0, "none"), mean (1) or sum (2).
inline void check_fr_l1_args(const char* op, const at::Tensor& teacher, const at::Tensor& adv, int64_t reduction) {
  check_logits(op, teacher, adv);
  TORCH_CHECK_VALUE(reduction == kNone || reduction == kMean || reduction == kSum, op,
                    ": reduction code must be 0 (none), 1 (mean) or 2 (sum), got ", text(reduction));
}

// fft="2d" reduces over the whole spectrum: "mean" or "sum" only.
inline void check_fr2d_args(const char* op, const at::Tensor& teacher, const at::Tensor& adv, int64_t reduction) {
  check_logits(op, teacher, adv);
  TORCH_CHECK_VALUE(reduction == kMean || reduction == kSum, op, ": reduction code must be 1 (mean) or 2 (sum), got ",
                    text(reduction));
  TORCH_CHECK_VALUE(teacher.numel() > 0, op, ": a 2-D DFT needs at least one row and one class, got ",
                    text(teacher.sizes()), " (torch.fft.fft2 refuses it too)");
}

inline at::ScalarType accumulation_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

inline at::Tensor reduce_rows(const at::Tensor& rows, int64_t reduction) {
  if (reduction == kMean) return rows.mean();
  if (reduction == kSum) return rows.sum();
  return rows;
}

// The upstream gradient of fr_l1 in the accumulation dtype: one value per row (reduction none,
// possibly strided) or one scalar, scaled by 1/B for the mean. Row i reads values[i * stride] * scale.
struct Upstream {
  at::Tensor values;
  int64_t stride;
  double scale;
};

// Checks `grad` against the logits (shape, device, dtype) before any kernel indexes it: (B,) for
// reduction none, one value otherwise. Shared by the CPU and CUDA backward.
inline Upstream upstream_gradient(const at::Tensor& grad, const at::Tensor& teacher, int64_t reduction) {
  const int64_t B = teacher.size(0);
  TORCH_CHECK_VALUE(grad.device() == teacher.device(), "fr_l1_backward: grad is on ", text(grad.device()),
                    " but the logits are on ", text(teacher.device()));
  TORCH_CHECK_VALUE(grad.is_floating_point(), "fr_l1_backward: grad must be a floating-point tensor, got ",
                    dtype_name(grad.scalar_type()));
  if (reduction == kNone) {
    TORCH_CHECK_VALUE(grad.dim() == 1 && grad.size(0) == B, "fr_l1_backward: reduction none needs a grad of shape (",
                      text(B), ",), got ", text(grad.sizes()));
  } else {
    TORCH_CHECK_VALUE(grad.numel() == 1, "fr_l1_backward: a reduced loss needs a grad with one element, got shape ",
                      text(grad.sizes()));
  }
  const at::Tensor values = grad.to(accumulation_dtype(teacher)).reshape({-1});
  const int64_t stride = reduction == kNone ? values.stride(0) : 0;
  const double scale = reduction == kMean ? 1.0 / static_cast<double>(B) : 1.0;
  return {values, stride, scale};
}

// CPU: rows per parallel chunk so that each chunk holds ~16k elements (small problems stay on one thread).
inline int64_t grain_for(int64_t C) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, C)); }

// CPU: (teacher - adv) as a contiguous (B, C) matrix in the accumulation type, from any strides.
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

}  // namespace fr_fast
