// Host-side helpers shared by the CPU and CUDA FR ops: argument checks, dtypes, reductions.
#pragma once
#include <ATen/ATen.h>

#include "fr_common.h"
#include "fr_text.h"

namespace fr_fast {

inline void check_logits(const char* op, const at::Tensor& teacher, const at::Tensor& adv) {
  TORCH_CHECK(teacher.dim() == 2 && teacher.sizes() == adv.sizes(), op,
              ": expected two (B, C) tensors of the same shape, got ", text(teacher.sizes()), " and ", text(adv.sizes()));
  TORCH_CHECK(teacher.scalar_type() == adv.scalar_type(), op, ": teacher and adv dtypes differ");
  TORCH_CHECK(teacher.device() == adv.device(), op, ": teacher and adv are on different devices");
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

}  // namespace fr_fast
