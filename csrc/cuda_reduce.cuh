// Device-side reductions shared by the CUDA kernels: fixed-order block sums and the "last block done"
// grid reduction (no atomics on floats, so results are bit-reproducible run to run).
#pragma once
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>

#include <map>
#include <mutex>
#include <utility>

namespace fr_fast {

// The whole-block sum of `value`, valid in thread 0 (blockDim.x a multiple of 32: see kThreads), in a
// fixed order: deterministic.
template <typename acc_t>
__device__ __forceinline__ acc_t block_sum(acc_t value, acc_t* scratch) {
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_down_sync(0xffffffff, value, offset);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  value = threadIdx.x < blockDim.x / 32 ? scratch[lane] : acc_t(0);
  if (warp == 0)
    for (int offset = 16; offset > 0; offset /= 2) value += __shfl_down_sync(0xffffffff, value, offset);
  return value;
}

// True in every thread of the grid's last block to finish, after which the whole grid's global writes
// before the call are visible to it. The counter is reset by that block, so the next launch (or the
// next replay of a captured CUDA graph) starts from 0 again. Call from every thread of each block.
__device__ __forceinline__ bool last_block_done(unsigned int* counter) {
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    last = atomicAdd(counter, 1u) == gridDim.x - 1;
    if (last) *counter = 0u;  // every other block has counted already
  }
  __syncthreads();
  if (last) __threadfence();
  return last;
}

// A zeroed counter for last_block_done, one per device and stream (kernels on different streams may
// run at once). Allocated on first use and kept for the life of the process (never freed, so that no
// destructor runs after the CUDA context is gone); a first use inside CUDA-graph capture allocates from
// the graph's pool and captures the zeroing, which is still correct.
inline unsigned int* done_counter(const at::Tensor& like) {
  static std::mutex lock;
  static auto* counters = new std::map<std::pair<int, c10::StreamId>, at::Tensor>();
  const c10::cuda::CUDAStream stream = c10::cuda::getCurrentCUDAStream(like.device().index());
  std::lock_guard<std::mutex> guard(lock);
  at::Tensor& counter = (*counters)[{like.device().index(), stream.id()}];
  if (!counter.defined()) counter = at::zeros({1}, like.options().dtype(at::kInt));
  return reinterpret_cast<unsigned int*>(counter.mutable_data_ptr<int>());
}

}  // namespace fr_fast
