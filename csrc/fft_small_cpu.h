// CPU: a small mixed-radix complex FFT (radices 2, 3, 4, 5, 7) along the first axis of an (n, M) matrix
// held as separate real and imaginary arrays, vectorised over the M columns. The 2-D FR op uses it
// below its crossover, where ATen's FFT calls cost more in fixed overhead than the transforms
// themselves. Stockham autosort: no bit reversal, one ping-pong buffer, one pass per radix.
#pragma once
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

namespace fr_fast {

// exp(2 pi i t / N) for t < N as cos and sin tables (computed in double); exact at the quarter turns.
template <typename T>
struct Twiddles {
  std::vector<T> cos, sin;
};

template <typename T>
std::shared_ptr<const Twiddles<T>> twiddles_for_uncached(int64_t N) {
  auto table = std::make_shared<Twiddles<T>>();
  table->cos.resize(N);
  table->sin.resize(N);
  for (int64_t t = 0; t < N; ++t) {
    double c, s;
    if ((4 * t) % N == 0) {
      const int64_t quarter = 4 * t / N;
      c = quarter == 0 ? 1 : quarter == 2 ? -1 : 0;
      s = quarter == 1 ? 1 : quarter == 3 ? -1 : 0;
    } else {
      const double angle = 2.0 * M_PI * static_cast<double>(t) / static_cast<double>(N);
      c = std::cos(angle);
      s = std::sin(angle);
    }
    table->cos[t] = static_cast<T>(c);
    table->sin[t] = static_cast<T>(s);
  }
  return table;
}

// Cached per N (the op runs with a few fixed (B, C)); shared by all threads.
template <typename T>
std::shared_ptr<const Twiddles<T>> twiddles_for(int64_t N) {
  static std::mutex mutex;
  static std::map<int64_t, std::shared_ptr<const Twiddles<T>>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto& entry = cache[N];
  if (entry) return entry;
  if (cache.size() > 64) {  // a handful of sizes in practice; bound the memory if a caller varies them
    cache.clear();
    return twiddles_for_uncached<T>(N);
  }
  entry = twiddles_for_uncached<T>(N);
  return entry;
}

// The radices of n (4 first), or an empty list when n has a prime factor above 7.
inline std::vector<int64_t> small_radices(int64_t n) {
  std::vector<int64_t> radices;
  for (int64_t r : {4, 2, 3, 5, 7})
    while (n % r == 0) {
      radices.push_back(r);
      n /= r;
    }
  if (n != 1) radices.clear();
  return radices;
}

inline bool small_fft_supports(int64_t n) { return n == 1 || !small_radices(n).empty(); }

// One Stockham pass of radix R on length n (= N / s) with stride s; x -> y. `dir` is -1 (forward) or
// +1. Each t loads the R inputs once and writes the R twiddled outputs: one sweep over the data.
template <typename T, int R>
void stockham_pass(const T* xr, const T* xi, T* yr, T* yi, int64_t n, int64_t s, int64_t M, const Twiddles<T>& w,
                   int64_t N, T dir) {
  const int64_t m = n / R, L = s * M;
  T wr[R][R], wi[R][R];  // omega_R^{jk}
  for (int j = 0; j < R; ++j)
    for (int k = 0; k < R; ++k) {
      const int64_t e = ((j * k) % R) * (N / R);
      wr[j][k] = w.cos[e];
      wi[j][k] = dir * w.sin[e];
    }
  for (int64_t p = 0; p < m; ++p) {
    T tr[R], ti[R];  // stage twiddles exp(dir 2 pi i p k / n)
    const T* ar[R];
    const T* ai[R];
    T* orr[R];
    T* oi[R];
    for (int k = 0; k < R; ++k) {
      const int64_t e = (p * k * s) % N;
      tr[k] = w.cos[e];
      ti[k] = dir * w.sin[e];
      ar[k] = xr + s * (p + k * m) * M;
      ai[k] = xi + s * (p + k * m) * M;
      orr[k] = yr + s * (R * p + k) * M;
      oi[k] = yi + s * (R * p + k) * M;
    }
#pragma omp simd
    for (int64_t t = 0; t < L; ++t) {
      T vr[R], vi[R], xr_[R], xi_[R];
      for (int j = 0; j < R; ++j) {
        vr[j] = ar[j][t];
        vi[j] = ai[j][t];
      }
      if constexpr (R == 2) {
        xr_[0] = vr[0] + vr[1], xi_[0] = vi[0] + vi[1];
        xr_[1] = vr[0] - vr[1], xi_[1] = vi[0] - vi[1];
      } else if constexpr (R == 4) {  // omega_4 = dir i: X_1, X_3 = u_odd +- dir i v_odd
        const T u0r = vr[0] + vr[2], u0i = vi[0] + vi[2], u1r = vr[0] - vr[2], u1i = vi[0] - vi[2];
        const T v0r = vr[1] + vr[3], v0i = vi[1] + vi[3], v1r = vr[1] - vr[3], v1i = vi[1] - vi[3];
        xr_[0] = u0r + v0r, xi_[0] = u0i + v0i;
        xr_[2] = u0r - v0r, xi_[2] = u0i - v0i;
        xr_[1] = u1r - dir * v1i, xi_[1] = u1i + dir * v1r;
        xr_[3] = u1r + dir * v1i, xi_[3] = u1i - dir * v1r;
      } else {
        for (int k = 0; k < R; ++k) {
          T sr = vr[0], si = vi[0];
          for (int j = 1; j < R; ++j) {
            sr += vr[j] * wr[j][k] - vi[j] * wi[j][k];
            si += vr[j] * wi[j][k] + vi[j] * wr[j][k];
          }
          xr_[k] = sr, xi_[k] = si;
        }
      }
      orr[0][t] = xr_[0];
      oi[0][t] = xi_[0];
      for (int k = 1; k < R; ++k) {
        orr[k][t] = xr_[k] * tr[k] - xi_[k] * ti[k];
        oi[k][t] = xr_[k] * ti[k] + xi_[k] * tr[k];
      }
    }
  }
}

template <typename T>
void stockham_pass(const T* xr, const T* xi, T* yr, T* yi, int64_t n, int64_t s, int64_t r, int64_t M,
                   const Twiddles<T>& w, int64_t N, T dir) {
  switch (r) {
    case 2: return stockham_pass<T, 2>(xr, xi, yr, yi, n, s, M, w, N, dir);
    case 3: return stockham_pass<T, 3>(xr, xi, yr, yi, n, s, M, w, N, dir);
    case 4: return stockham_pass<T, 4>(xr, xi, yr, yi, n, s, M, w, N, dir);
    case 5: return stockham_pass<T, 5>(xr, xi, yr, yi, n, s, M, w, N, dir);
    default: return stockham_pass<T, 7>(xr, xi, yr, yi, n, s, M, w, N, dir);
  }
}

// The unnormalised DFT (dir -1) or inverse DFT (dir +1) of length n along the first axis of the (n, M)
// matrix (re, im), using (tre, tim) as scratch of the same size. Returns which pair holds the result:
// false for (re, im), true for (tre, tim). n must pass small_fft_supports.
template <typename T>
bool small_fft_axis0(T* re, T* im, T* tre, T* tim, int64_t n, int64_t M, T dir) {
  if (n == 1) return false;
  const auto w = twiddles_for<T>(n);
  int64_t s = 1, len = n;
  bool swapped = false;
  for (int64_t r : small_radices(n)) {
    if (!swapped) stockham_pass<T>(re, im, tre, tim, len, s, r, M, *w, n, dir);
    else stockham_pass<T>(tre, tim, re, im, len, s, r, M, *w, n, dir);
    swapped = !swapped;
    s *= r;
    len /= r;
  }
  return swapped;
}

}  // namespace fr_fast
