// Shared by the CPU and CUDA kernels: reduction codes, the real-DFT bookkeeping and the element
// formulas of the PGD step and random start (written once, compiled for host and device).
#pragma once
#include <cstdint>
#include <type_traits>

#ifdef __CUDACC__
#define FR_HOST_DEVICE __host__ __device__
#else
#define FR_HOST_DEVICE
#endif

namespace fr_fast {

// Accumulation type of the kernels: float32 for 16- and 32-bit inputs, float64 for float64.
template <typename T>
using acc_of = std::conditional_t<std::is_same_v<T, double>, double, float>;

enum Reduction : int64_t { kNone = 0, kMean = 1, kSum = 2 };

// A real signal of length C has C/2 + 1 distinct DFT bins; bins 1..ceil(C/2)-1 stand for a
// conjugate pair (k, C-k) whose |Re| and |Im| are equal, so they count twice.
FR_HOST_DEVICE inline int64_t num_half_bins(int64_t C) { return C / 2 + 1; }

template <typename T>
FR_HOST_DEVICE inline T bin_weight(int64_t k, int64_t C) {
  return (k == 0 || 2 * k == C) ? T(1) : T(2);
}

// -1, 0 or 1, and 0 for NaN: torch.sign's values.
template <typename T>
FR_HOST_DEVICE inline T sign_of(T v) {
  return static_cast<T>((v > T(0)) - (v < T(0)));
}

// max/min that return NaN when either argument is NaN, as torch.maximum/minimum/clamp do (std::max,
// fmaxf and the hardware min/max instructions drop a NaN instead).
template <typename T>
FR_HOST_DEVICE inline T nan_max(T a, T b) {
  return (a > b || a != a) ? a : b;
}
template <typename T>
FR_HOST_DEVICE inline T nan_min(T a, T b) {
  return (a < b || a != a) ? a : b;
}

// Bounds of one PGD element update; lo = -inf / hi = +inf mean no clip (a NaN still propagates).
template <typename T>
struct StepBounds {
  T lo, hi;
};

// One PGD element, the clamp chain of fr_fast.reference.pgd_step_ in one rounding:
//   clamp(min(max(x + step * sign(g), x0 - radius), x0 + radius), lo, hi)
// NaN in x, x0 (or step, radius) gives NaN; sign(NaN) = 0, so a NaN gradient does not move x.
template <typename T>
FR_HOST_DEVICE inline T pgd_update(T x, T g, T x0, T step, T radius, StepBounds<T> clip) {
  const T moved = x + step * sign_of(g);
  const T projected = nan_min(nan_max(moved, x0 - radius), x0 + radius);
  return nan_min(nan_max(projected, clip.lo), clip.hi);
}

// One element of the random start: clamp(x0 + noise, lo, hi), NaN propagating.
template <typename T>
FR_HOST_DEVICE inline T add_clip(T noise, T x0, StepBounds<T> clip) {
  return nan_min(nan_max(x0 + noise, clip.lo), clip.hi);
}

}  // namespace fr_fast
