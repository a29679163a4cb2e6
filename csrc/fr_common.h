// Shared by the CPU and CUDA FR kernels: reduction codes and the real-DFT bookkeeping.
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

}  // namespace fr_fast
