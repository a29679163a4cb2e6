// Host-side helpers shared by the CPU and CUDA FR ops: argument checks, dtypes, reductions.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "fr_common.h"
#include "fr_text.h"

namespace fr_fast {

inline void check_logits(const char* op, const at::Tensor& teacher, const at::Tensor& adv) {
  TORCH_CHECK(teacher.dim() == 2 && teacher.sizes() == adv.sizes(), op,
              ": expected two (B, C) tensors of the same shape, got ", text(teacher.sizes()), " and ", text(adv.sizes()));
  TORCH_CHECK(teacher.scalar_type() == adv.scalar_type(), op, ": teacher and adv dtypes differ");
  TORCH_CHECK(teacher.device() == adv.device(), op, ": teacher and adv are on different devices");
}

// fft="2d" reduces over the whole spectrum: "mean" or "sum" only.
inline void check_fr2d_args(const char* op, const at::Tensor& teacher, const at::Tensor& adv, int64_t reduction) {
  check_logits(op, teacher, adv);
  TORCH_CHECK_VALUE(reduction == kMean || reduction == kSum, op, ": reduction code must be 1 (mean) or 2 (sum), got ",
                    text(reduction));
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

inline Upstream upstream_gradient(const at::Tensor& grad, const at::Tensor& teacher, int64_t reduction) {
  const int64_t B = teacher.size(0);
  TORCH_CHECK_VALUE(grad.device() == teacher.device(), "fr_l1_backward: grad is on ", text(grad.device()),
                    " but the logits are on ", text(teacher.device()));
  at::Tensor values = grad.to(accumulation_dtype(teacher));
  TORCH_CHECK_VALUE(reduction == kNone ? values.numel() == B : values.numel() == 1, "fr_l1_backward: grad has ",
              text(values.numel()), " elements for batch ", text(B));
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
