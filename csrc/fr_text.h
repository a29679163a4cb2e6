// Numbers, shapes and devices as text for error messages, without iostreams.
// TORCH_CHECK streams its arguments into a std::ostringstream instantiated in this extension; an
// extension built by a newer g++ than the libstdc++ the process loaded indexes the wrong locale facet
// there and crashes while formatting a number (seen on an H100 machine: g++ 13.3, torch 2.11 wheel;
// strings were fine). These helpers format with snprintf / std::to_string so that an error stays an error.
#pragma once
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <cstdio>
#include <string>

namespace fr_fast {

inline std::string text(double v) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%g", v);
  return buffer;
}

inline std::string text(int64_t v) { return std::to_string(v); }

inline std::string text(c10::IntArrayRef sizes) {
  std::string out = "[";
  for (size_t i = 0; i < sizes.size(); ++i) out += (i ? ", " : "") + std::to_string(sizes[i]);
  return out + "]";
}

inline std::string text(const c10::Device& device) { return device.str(); }

// The dtypes the kernels take.
inline bool is_kernel_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// A dtype as Python spells it, so that the messages read like the Python API.
inline std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    default: return std::string("torch.") + c10::toString(t);
  }
}

}  // namespace fr_fast
