// Private helpers of the CPU kernels: dtype conversion, a small parallel-for, vectorisable float math.
// Nothing here is exported; the library's visibility is hidden except for SSM_API functions.
#ifndef SSMPOSE_CPU_COMMON_H
#define SSMPOSE_CPU_COMMON_H

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <limits>
#include <new>

#include "../ssmpose_kernels.h"

#if defined(__GNUC__) || defined(__clang__)
#define SSM_INLINE inline __attribute__((always_inline))
#else
#define SSM_INLINE inline
#endif

// `#pragma omp simd` (compiled with -fopenmp-simd: no OpenMP runtime is linked) lets the compiler
// vectorise float reductions without -ffast-math. Without the flag the pragma is ignored.
#if defined(_OPENMP) || defined(__clang__) || defined(__GNUC__)
#define SSM_PRAGMA(x) _Pragma(#x)
#define SSM_SIMD_REDUCE(...) SSM_PRAGMA(omp simd reduction(+ : __VA_ARGS__))
#define SSM_SIMD SSM_PRAGMA(omp simd)
#else
#define SSM_SIMD_REDUCE(...)
#define SSM_SIMD
#endif

namespace ssm {
namespace cpu {

// ------------------------------------------------------------------------------------------------
// Bit casts and float16 / bfloat16 conversion (portable, bit-exact round-to-nearest-even).

SSM_INLINE uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

SSM_INLINE float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// IEEE binary16 -> binary32 (exact; NaN payloads kept, quiet bit as in the input).
SSM_INLINE float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t expo = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (expo == 0x1fu) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf / NaN
  } else if (expo != 0) {
    bits = sign | ((expo + 112u) << 23) | (mant << 13);  // normal: rebias 15 -> 127
  } else {
    // zero or subnormal: mant * 2^-24 is exact in binary32
    bits = sign | float_bits(static_cast<float>(mant) * 5.9604644775390625e-8f);
  }
  return bits_float(bits);
}

// binary32 -> binary16 with round-to-nearest-even, overflow to inf, gradual underflow, NaN kept NaN.
SSM_INLINE uint16_t float_to_half(float f) {
  uint32_t x = float_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  x &= 0x7fffffffu;
  if (x >= 0x7f800000u) {  // inf or NaN
    const uint32_t nan = x > 0x7f800000u ? (0x200u | ((x >> 13) & 0x3ffu)) : 0u;
    return static_cast<uint16_t>(sign | 0x7c00u | nan);
  }
  if (x >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520 rounds to inf
  if (x < 0x38800000u) {
    // Result is subnormal (or rounds up to the smallest normal). Adding 0.5 places the value's
    // 2^-24 units in the low mantissa bits of a float whose ulp is 2^-24; the FPU rounds to even.
    const float r = bits_float(x) + 0.5f;
    return static_cast<uint16_t>(sign | (float_bits(r) - 0x3f000000u));
  }
  // Normal: rebias the exponent, then round the 13 dropped mantissa bits to nearest even.
  const uint32_t odd = (x >> 13) & 1u;
  x += (static_cast<uint32_t>(15 - 127) << 23) + 0xfffu + odd;
  return static_cast<uint16_t>(sign | (x >> 13));
}

SSM_INLINE float bf16_to_float(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }

SSM_INLINE uint16_t float_to_bf16(float f) {
  const uint32_t x = float_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // quiet NaN
  const uint32_t odd = (x >> 16) & 1u;
  return static_cast<uint16_t>((x + 0x7fffu + odd) >> 16);
}

// f rounded to `dtype` (float32: f itself), as float32.
SSM_INLINE float round_to_dtype(int dtype, float f) {
  if (dtype == SSM_FLOAT16) return half_to_float(float_to_half(f));
  if (dtype == SSM_BFLOAT16) return bf16_to_float(float_to_bf16(f));
  return f;
}

// Converts n elements of `dtype` to float32 / float32 to `dtype`, in parallel.
void convert_to_float(int dtype, const void* src, float* dst, int64_t n, int num_threads);
void convert_from_float(int dtype, const float* src, void* dst, int64_t n, int num_threads);

// Serial conversion of the n elements that start at element `offset` of a `dtype` array (kernels convert
// small spans as they stream through their inputs, instead of whole float32 copies).
void span_to_float(int dtype, const void* src, int64_t offset, float* dst, int64_t n);
void span_from_float(int dtype, const float* src, void* dst, int64_t offset, int64_t n);

inline bool dtype_supported(int32_t dtype) {
  return dtype == SSM_FLOAT32 || dtype == SSM_FLOAT16 || dtype == SSM_BFLOAT16;
}

// ------------------------------------------------------------------------------------------------
// Size arithmetic with overflow detection: returns false if a*b overflows or the result exceeds
// what a byte count of float32 elements can address.

inline bool checked_mul(int64_t a, int64_t b, int64_t* out) {
  if (a < 0 || b < 0) return false;
  if (a != 0 && b > std::numeric_limits<int64_t>::max() / a) return false;
  *out = a * b;
  return true;
}

inline bool checked_product(std::initializer_list<int64_t> factors, int64_t* out) {
  int64_t p = 1;
  for (int64_t f : factors) {
    if (!checked_mul(p, f, &p)) return false;
  }
  // float32 byte counts must fit both int64 and size_t
  const int64_t limit = static_cast<int64_t>(
      (std::numeric_limits<size_t>::max() / 8) < static_cast<size_t>(std::numeric_limits<int64_t>::max() / 8)
          ? std::numeric_limits<size_t>::max() / 8
          : static_cast<size_t>(std::numeric_limits<int64_t>::max() / 8));
  if (p > limit) return false;
  *out = p;
  return true;
}

// ------------------------------------------------------------------------------------------------
// Parallel-for over [0, n) items; the calling thread takes part. Items are handed out dynamically in
// blocks, on the calling thread's executor (ssm_set_cpu_executor) when it installed one, else on
// std::threads started here. `num_threads` <= 0 means std::thread::hardware_concurrency(). `work_per_item`
// is a rough cost (e.g. float operations) used to keep tiny problems on the calling thread.
// fn(begin, end) must not throw, and must give the same results whichever thread runs which block.
void parallel_for(int64_t n, int num_threads, double work_per_item,
                  const std::function<void(int64_t, int64_t)>& fn);

int resolve_threads(int num_threads);

// ------------------------------------------------------------------------------------------------
// Hot kernels are compiled twice on x86-64 Linux with GCC >= 12: the baseline (SSE2) and an x86-64-v3
// (AVX2 + FMA) clone picked at load time by an ifunc resolver. Only the annotated functions are cloned;
// what they call is either inlined into them or baseline code, so no AVX2 code can leak into the baseline
// path (unlike compiling whole translation units with -mavx2). Other compilers / targets get the baseline;
// -DSSM_NO_TARGET_CLONES forces it (to test the baseline code on an AVX2 machine).
#if !defined(SSM_NO_TARGET_CLONES) && defined(__x86_64__) && defined(__ELF__) && defined(__linux__) && \
    !defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 12
#define SSM_HOT __attribute__((target_clones("default", "arch=x86-64-v3")))
#else
#define SSM_HOT
#endif

// ------------------------------------------------------------------------------------------------
// Vectorisable float math (branch-free, inlined; written so GCC/Clang vectorise loops that call it
// without -ffast-math). Accuracy: exp within ~2 ulp, log1p within ~2 ulp over the ranges used.

constexpr float kLn2Hi = 0.693145751953125f;         // high bits of ln 2 (exact product with k)
constexpr float kLn2Lo = 1.428606765330187045e-06f;  // ln 2 - kLn2Hi
constexpr float kLog2e = 1.44269504088896341f;

// exp(x) for any float x: range reduction x = k ln2 + r, |r| <= ln2/2, degree-7 Taylor polynomial
// (truncation error < 6e-9 relative), scale by 2^k applied in two halves so that results from
// subnormal to FLT_MAX (and overflow to inf) are produced correctly. NaN propagates.
SSM_INLINE float exp_f(float x) {
  float xc = x < -104.0f ? -104.0f : x;
  xc = xc > 89.0f ? 89.0f : xc;
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  float kf = (xc * kLog2e + shifter) - shifter;
  kf = (kf == kf) ? kf : 0.0f;  // NaN input: keep the integer conversion defined
  const float r = (xc - kf * kLn2Hi) - kf * kLn2Lo;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t k = static_cast<int32_t>(kf);
  const int32_t k1 = k >> 1;  // floor(k/2) (arithmetic shift); both halves in [-75, 64]: normal floats
  const int32_t k2 = k - k1;
  const float s1 = bits_float(static_cast<uint32_t>(k1 + 127) << 23);
  const float s2 = bits_float(static_cast<uint32_t>(k2 + 127) << 23);
  return (p * s1) * s2;
}

// log(1 + x) for x in [0, 1] (what softplus needs), as 2 atanh(s) with s = x / (2 + x) in [0, 1/3]:
// 2 s (1 + s^2/3 + s^4/5 + ... + s^12/13), truncation error < 1e-8 relative; one division, no
// exponent split, and accurate for tiny x (s ~ x/2).
SSM_INLINE float log1p_unit_f(float x) {
  const float s = x / (2.0f + x);
  const float s2 = s * s;
  float q = 1.0f / 13.0f;
  q = q * s2 + 1.0f / 11.0f;
  q = q * s2 + 1.0f / 9.0f;
  q = q * s2 + 1.0f / 7.0f;
  q = q * s2 + 1.0f / 5.0f;
  q = q * s2 + 1.0f / 3.0f;
  const float t = 2.0f * s;
  return t + t * (s2 * q);
}

// softplus with the operator's threshold: z > 20 -> z; else log(1 + exp(z)) computed stably as
// max(z, 0) + log1p(exp(-|z|)).
SSM_INLINE float softplus_f(float z) {
  const float az = z < 0.0f ? -z : z;
  const float pos = z > 0.0f ? z : 0.0f;
  const float sp = pos + log1p_unit_f(exp_f(-az));
  return z > 20.0f ? z : sp;
}

// derivative of softplus_f: sigmoid(z) for z <= 20, 1 above.
SSM_INLINE float softplus_grad_f(float z) {
  const float sg = 1.0f / (1.0f + exp_f(-z));
  return z > 20.0f ? 1.0f : sg;
}

// erf(t), branch-free so that loops calling it vectorise (std::erf does not): t P(t^2) for |t| < 1, and
// 1 - exp(Q(|t|)) for 1 <= |t| <= 3.95 (beyond, erfc < 2^-25 and the result rounds to 1). P and Q are
// least-squares fits on Chebyshev nodes of erf(t) / t over t^2 in [0, 1] and of log erfc(t) over [1, 3.95]; in
// float32 (with or without FMA) the result is within 2.6 * 2^-24 of erf, absolute. NaN propagates.
SSM_INLINE float erf_f(float t) {
  const float a = std::fabs(t);
  const float s = a * a;
  float p = -0.000569671276f;
  p = p * s + 0.0049345186f;
  p = p * s - 0.0267269891f;
  p = p * s + 0.112807892f;
  p = p * s - 0.376124144f;
  p = p * s + 1.12837911f;
  const float u = a < 3.95f ? a : 3.95f;
  float q = 1.6337533e-06f;
  q = q * u - 4.59678595e-05f;
  q = q * u + 0.000595850288f;
  q = q * u - 0.00475420523f;
  q = q * u + 0.0264032297f;
  q = q * u - 0.110044055f;
  q = q * u - 0.631869078f;
  q = q * u - 1.13020551f;
  q = q * u + 0.000312609191f;
  const float r = a < 1.0f ? a * p : 1.0f - exp_f(q);
  return std::copysign(r, t);
}

// Exact (erf) GELU.
SSM_INLINE float gelu_f(float z) {
  constexpr float kInvSqrt2 = 0.70710678118654752f;
  return 0.5f * z * (1.0f + erf_f(z * kInvSqrt2));
}

}  // namespace cpu
}  // namespace ssm

#endif  // SSMPOSE_CPU_COMMON_H
