// The 2-D FR distance (fft="2d", the authors' code) on the half spectrum, shared by CPU and CUDA.
//
// D = teacher - adv (B, C) is real, so its 2-D DFT X is Hermitian: X[p, C-q] = conj(X[-p, q]). The
// half spectrum Y = rfft2(D) (B, K = C/2 + 1) holds columns q < K; columns 1..ceil(C/2)-1 stand for two
// columns of X with equal |Re| and |Im| (weight 2, bin_weight), columns 0 and C/2 for one. So
//   L = s * sum_{p, q<K} w_q (|Re Y| + |Im Y|),   s = 1/(2BC) for "mean" (over view_as_real), 1 for "sum".
// Its gradient with respect to D, with S = sign(Re Y) + i sign(Im Y), is
//   dL/dD[m, n] = s * Re sum_{p, q<K} w_q S[p, q] exp(+2 pi i (pm/B + qn/C)),
// which is the unnormalised C2R transform of s * S (a C2R counts the middle columns twice and reads
// only the real part of columns 0 and C/2 after the column transform). A C2R may assume columns 0 and
// C/2 to be Hermitian in p; S is, up to round-off near zero, and is made exactly so by averaging
// S[p] with conj(S[-p]) there, which leaves the real part above unchanged.
#pragma once
#include <cstdint>

#include "fr_common.h"

namespace fr_fast {

// s of the 2-D L1: the mean runs over the 2 * B * C real and imaginary parts of the full spectrum.
inline double fr2d_scale(int64_t B, int64_t C, int64_t reduction) {
  return reduction == kMean ? 1.0 / (2.0 * static_cast<double>(B) * static_cast<double>(C)) : 1.0;
}

// The columns of the half spectrum that stand for one column of the full spectrum (0 and C/2 for even C).
FR_HOST_DEVICE inline bool self_conjugate_column(int64_t q, int64_t C) { return q == 0 || 2 * q == C; }

}  // namespace fr_fast
