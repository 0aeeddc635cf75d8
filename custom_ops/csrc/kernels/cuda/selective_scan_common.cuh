// Parts shared by the SelectiveScan (selective_scan.cu) and SelectiveScan2D (selective_scan_2d.cu) CUDA
// kernels: the discretisation arithmetic (softplus and its derivative), division by a run-time constant,
// the dispatch over dtype and state-size bucket, and the host-side size checks.
#pragma once

#include <initializer_list>

#include "cuda_common.cuh"

namespace ssm_cuda {

// Division by a run-time constant for numerators below 2^31: q = (umulhi(n, m) + n) >> s.
struct FastDiv {
  uint32_t m, s;
};

inline FastDiv make_fastdiv(uint32_t d) {
  FastDiv f;
  f.s = 0;
  while ((uint64_t(1) << f.s) < d) ++f.s;
  f.m = (uint32_t)(((uint64_t(1) << 32) * ((uint64_t(1) << f.s) - d)) / d + 1);
  return f;
}

__device__ __forceinline__ uint32_t fdiv(uint32_t n, FastDiv f) { return (__umulhi(n, f.m) + n) >> f.s; }

// log1p(z) for z in [0, 1]: z * Q(z), Q a Chebyshev fit of log1p(z)/z. Degree 8: max rel. error 2.5e-7
// in float32 arithmetic (float32 data); degree 5: 1.9e-5, far below the rounding of 16-bit outputs.
template <bool kLowPrec>
__device__ __forceinline__ float log1p_unit(float z) {
  if constexpr (kLowPrec) {
    float q = -0.023689253255724907f;
    q = fmaf(q, z, 0.10028720647096634f);
    q = fmaf(q, z, -0.20866966247558594f);
    q = fmaf(q, z, 0.3244118094444275f);
    q = fmaf(q, z, -0.4991878569126129f);
    q = fmaf(q, z, 0.9999818801879883f);
    return q * z;
  }
  float q = 0.005186003632843494f;
  q = fmaf(q, z, -0.029210267588496208f);
  q = fmaf(q, z, 0.07754038274288177f);
  q = fmaf(q, z, -0.13583941757678986f);
  q = fmaf(q, z, 0.19055955111980438f);
  q = fmaf(q, z, -0.24825648963451385f);
  q = fmaf(q, z, 0.3331601023674011f);
  q = fmaf(q, z, -0.4999925494194031f);
  q = fmaf(q, z, 0.9999999403953552f);
  return q * z;
}

template <typename T>
constexpr bool kLowPrecision = sizeof(T) < 4;

// softplus(x) = max(x, 0) + log1p(exp(-|x|)) for x <= 20, x above (the operator's definition).
template <typename T>
__device__ __forceinline__ float softplus_f(float x) {
  const float z = fast_exp2(-fabsf(x) * kLog2e);
  const float r = fmaxf(x, 0.f) + log1p_unit<kLowPrecision<T>>(z);
  return x <= 20.f ? r : x;
}

// softplus and its derivative (sigmoid, 1 above the threshold).
template <typename T>
__device__ __forceinline__ void softplus_grad_f(float x, float& y, float& dy) {
  const float z = fast_exp2(-fabsf(x) * kLog2e);
  const float r = fmaxf(x, 0.f) + log1p_unit<kLowPrecision<T>>(z);
  const float sg = __fdividef(x >= 0.f ? 1.f : z, 1.f + z);
  y = x <= 20.f ? r : x;
  dy = x <= 20.f ? sg : 1.f;
}

// Whether the product of the factors (each >= 1) is below 2^60, without overflow.
inline bool product_below(std::initializer_list<int64_t> factors) {
  constexpr int64_t kLimit = int64_t(1) << 60;
  int64_t p = 1;
  for (int64_t f : factors) {
    if (f > kLimit / p) return false;
    p *= f;
  }
  return p < kLimit;
}

// Launcher<T, kN>::run(args...) for the dtype and the state-size bucket kN (1, 2, 4, 8, 16) of dstate;
// the kernels loop over n < dstate inside an unrolled loop of kN.
template <template <typename, int> class Launcher, typename... Args>
int dispatch(int dtype, int dstate, Args&&... args) {
#define SSM_SCAN_N(T)                                                     \
  if (dstate == 1) return Launcher<T, 1>::run(args...);                  \
  if (dstate == 2) return Launcher<T, 2>::run(args...);                  \
  if (dstate <= 4) return Launcher<T, 4>::run(args...);                  \
  if (dstate <= 8) return Launcher<T, 8>::run(args...);                  \
  return Launcher<T, 16>::run(args...);
  switch (dtype) {
    case SSM_FLOAT32: {
      SSM_SCAN_N(float)
    }
    case SSM_FLOAT16: {
      SSM_SCAN_N(__half)
    }
    case SSM_BFLOAT16: {
      SSM_SCAN_N(__nv_bfloat16)
    }
    default:
      return SSM_ERR_BAD_DTYPE;
  }
#undef SSM_SCAN_N
}

}  // namespace ssm_cuda
