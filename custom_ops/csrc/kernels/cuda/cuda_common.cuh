// Device helpers shared by the CUDA kernels of the ssmpose kernel library.
// Conversions between the storage dtypes and float, vectorised loads/stores of 1..32 bytes, fast exp2.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "../ssmpose_kernels.h"

namespace ssm_cuda {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr float kLog2e = 1.4426950408889634f;

// ---------------------------------------------------------------------------------------------
// Scalar conversions
__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ float from_f<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

template <typename T>
__device__ __forceinline__ float ldf(const T* p) { return to_f(p[0]); }

// ---------------------------------------------------------------------------------------------
// Unpacking / packing of 32-bit words (two 16-bit values or one float)
template <typename T>
struct Words;

template <>
struct Words<float> {
  static constexpr int kPerWord = 1;
  __device__ __forceinline__ static void unpack(uint32_t w, float* o) { o[0] = __uint_as_float(w); }
  __device__ __forceinline__ static uint32_t pack(const float* f) { return __float_as_uint(f[0]); }
};

template <>
struct Words<__half> {
  static constexpr int kPerWord = 2;
  __device__ __forceinline__ static void unpack(uint32_t w, float* o) {
    __half2 h = *reinterpret_cast<__half2*>(&w);
    float2 f = __half22float2(h);
    o[0] = f.x;
    o[1] = f.y;
  }
  __device__ __forceinline__ static uint32_t pack(const float* f) {
    __half2 h = __floats2half2_rn(f[0], f[1]);
    return *reinterpret_cast<uint32_t*>(&h);
  }
};

template <>
struct Words<__nv_bfloat16> {
  static constexpr int kPerWord = 2;
  __device__ __forceinline__ static void unpack(uint32_t w, float* o) {
    // bf16 -> f32 is a shift.
    o[0] = __uint_as_float(w << 16);
    o[1] = __uint_as_float(w & 0xffff0000u);
  }
  __device__ __forceinline__ static uint32_t pack(const float* f) {
    __nv_bfloat162 h = __floats2bfloat162_rn(f[0], f[1]);
    return *reinterpret_cast<uint32_t*>(&h);
  }
};

// Load V consecutive elements (V*sizeof(T) bytes, aligned to min(16, V*sizeof(T))) as floats.
template <typename T, int V>
__device__ __forceinline__ void load_vec(const T* __restrict__ p, float* __restrict__ o) {
  constexpr int kBytes = V * (int)sizeof(T);
  if constexpr (kBytes >= 16) {
    static_assert(kBytes % 16 == 0, "vector size");
    constexpr int kPer16 = 16 / (int)sizeof(T);
#pragma unroll
    for (int k = 0; k < kBytes / 16; ++k) {
      uint4 r = __ldg(reinterpret_cast<const uint4*>(p) + k);
      constexpr int kw = Words<T>::kPerWord;
      Words<T>::unpack(r.x, o + k * kPer16 + 0 * kw);
      Words<T>::unpack(r.y, o + k * kPer16 + 1 * kw);
      Words<T>::unpack(r.z, o + k * kPer16 + 2 * kw);
      Words<T>::unpack(r.w, o + k * kPer16 + 3 * kw);
    }
  } else if constexpr (kBytes == 8) {
    uint2 r = __ldg(reinterpret_cast<const uint2*>(p));
    constexpr int kw = Words<T>::kPerWord;
    Words<T>::unpack(r.x, o);
    Words<T>::unpack(r.y, o + kw);
  } else if constexpr (kBytes == 4) {
    uint32_t r = __ldg(reinterpret_cast<const unsigned int*>(p));
    Words<T>::unpack(r, o);
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) o[k] = to_f(p[k]);
  }
}

// Store V consecutive elements from floats (same alignment rule as load_vec).
template <typename T, int V>
__device__ __forceinline__ void store_vec(T* __restrict__ p, const float* __restrict__ f) {
  constexpr int kBytes = V * (int)sizeof(T);
  constexpr int kw = Words<T>::kPerWord;
  if constexpr (kBytes >= 16) {
    static_assert(kBytes % 16 == 0, "vector size");
    constexpr int kPer16 = 16 / (int)sizeof(T);
#pragma unroll
    for (int k = 0; k < kBytes / 16; ++k) {
      uint4 r;
      r.x = Words<T>::pack(f + k * kPer16 + 0 * kw);
      r.y = Words<T>::pack(f + k * kPer16 + 1 * kw);
      r.z = Words<T>::pack(f + k * kPer16 + 2 * kw);
      r.w = Words<T>::pack(f + k * kPer16 + 3 * kw);
      reinterpret_cast<uint4*>(p)[k] = r;
    }
  } else if constexpr (kBytes == 8) {
    uint2 r;
    r.x = Words<T>::pack(f);
    r.y = Words<T>::pack(f + kw);
    *reinterpret_cast<uint2*>(p) = r;
  } else if constexpr (kBytes == 4) {
    *reinterpret_cast<uint32_t*>(p) = Words<T>::pack(f);
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) p[k] = from_f<T>(f[k]);
  }
}

// 2^x with the hardware approximation (rel. error ~2^-22).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ bool is_aligned(const void* p, size_t a) {
  return (reinterpret_cast<uintptr_t>(p) & (a - 1)) == 0;
}

}  // namespace ssm_cuda

// Host-side helpers
namespace ssm_cuda_host {

inline bool aligned(const void* p, size_t a) {
  return p == nullptr || (reinterpret_cast<uintptr_t>(p) % a) == 0;
}

inline int launch_status() {
  return cudaGetLastError() == cudaSuccess ? SSM_OK : SSM_ERR_CUDA;
}

}  // namespace ssm_cuda_host
