// DeformAggregate (DCNv4 core, no softmax) on CUDA: forward and backward.
//
// Work decomposition
//   A thread owns VEC contiguous channels (16 bytes: 4 fp32 or 8 fp16/bf16 channels, fewer when
//   group_channels is not a multiple) of one (output pixel, group). TPG threads (a power of two <= 32)
//   share one (pixel, group); when a group has more than TPG vectors each thread loops over vectors
//   j, j+TPG, ... This supports any group_channels and any number of groups with a fixed 256-thread
//   block: the grid is (threads per image / 256, batch), so no block-size limit depends on the shape
//   (the official kernels use G*C threads per block and fail for 40 groups x 32 channels).
//   Index arithmetic inside an image is 32-bit (the host checks that an image has < 2^31 elements).
//
// Forward
//   Each thread reads the 3K offset/mask values of its (pixel, group) and, for every sampling point,
//   loads the four bilinear corners unconditionally (corners outside the image read a static zero
//   buffer), so the loads of a point are in flight together; accumulation is float32. 3x3 kernels are
//   unrolled (template KS = 3), other sizes take a run-time loop. The kernel is capped at 64 registers
//   (4 blocks of 256 threads per SM). Optional (compile-time, measured): staging the offset rows of a
//   block in shared memory (SSM_DEFORM_STAGE_OFFSETS) and blending the corners of fp16 samples in half2
//   arithmetic (SSM_DEFORM_HALF_BLEND, about 15% faster for fp16, slightly less accurate).
//
// Backward
//   grad_value (float32) is zeroed with cudaMemsetAsync and accumulated with atomicAdd (16-byte float4
//   atomics on sm_90, scalar ones elsewhere). grad_offset_mask gets, per (pixel, group, point), the
//   channel sums of grad_out*sample and grad_out*d(sample)/d(x,y), reduced over the TPG lanes with
//   warp shuffles and stored by the first lane; padding columns are written as zeros.
#include <limits.h>

#include <type_traits>

#include "cuda_common.cuh"

namespace {

using namespace ssm_cuda;

constexpr int kThreads = 256;

// Widest channel vector a thread loads per corner, in bytes (a multiple of 16, at most 64).
// 16 bytes (one 16-byte load per corner and thread) measured fastest on H100: a warp's load then
// covers whole 128-byte lines of the corners it gathers.
#ifndef SSM_DEFORM_VEC_BYTES
#define SSM_DEFORM_VEC_BYTES 16
#endif
static_assert(SSM_DEFORM_VEC_BYTES == 16 || SSM_DEFORM_VEC_BYTES == 32 || SSM_DEFORM_VEC_BYTES == 64,
              "SSM_DEFORM_VEC_BYTES");
// Measurement-only option: blend the 4 corners of an fp16 sample in half2 arithmetic (sum over the
// points stays float32). Off by default: the operator contract asks for float32 arithmetic.
#ifndef SSM_DEFORM_HALF_BLEND
#define SSM_DEFORM_HALF_BLEND 0
#endif

// Corners outside the image are read from here (zeros), so that the four corner loads of a point are
// unconditional and can all be in flight together.
__device__ __align__(16) unsigned char g_zero_vec[64] = {0};

struct DeformArgs {
  const void* value;
  const void* om;
  const void* gout;
  void* out;
  float* gval;
  float* gom;
  int64_t img_in;   // H*W*GC, elements of one input image
  int64_t img_out;  // Ho*Wo*GC
  int64_t img_om;   // Ho*Wo*P
  int n_img;        // threads per image: Ho*Wo*G*TPG
  int B, H, W, Ho, Wo, G, C, GC, P;
  int kh, kw, sh, sw, ph, pw, dh, dw;
  int remove_center, K;
  int tpg_log2, nvec;
  int vec_atomic;
  int om_vec16;     // offset rows can be staged with 16-byte loads
  float scale;
};

// Bilinear setup for location (py, px): weights, in-image element offsets and validity of the corners
// (h0,w0), (h0,w0+1), (h0+1,w0), (h0+1,w0+1). A location with py <= -1, px <= -1, py >= H or px >= W
// has no valid corner. Offsets use unsigned 32-bit arithmetic (the host checks H*W*GC < 2^31); the
// offsets of invalid corners are never dereferenced.
struct Corners {
  float w[4];
  uint32_t off[4];
  bool ok[4];
  float lh, lw;
};

__device__ __forceinline__ void corner_setup(float py, float px, int H, int W, int GC, Corners& c) {
  const bool in = py > -1.f && px > -1.f && py < (float)H && px < (float)W;
  const float fh = floorf(py), fw = floorf(px);
  const int h0 = in ? (int)fh : 0;
  const int w0 = in ? (int)fw : 0;
  const float lh = in ? py - fh : 0.f;
  const float lw = in ? px - fw : 0.f;
  const float hh = 1.f - lh, hw = 1.f - lw;
  c.lh = lh;
  c.lw = lw;
  c.w[0] = hh * hw;
  c.w[1] = hh * lw;
  c.w[2] = lh * hw;
  c.w[3] = lh * lw;
  c.ok[0] = in && h0 >= 0 && w0 >= 0;
  c.ok[1] = in && h0 >= 0 && w0 < W - 1;
  c.ok[2] = in && h0 < H - 1 && w0 >= 0;
  c.ok[3] = in && h0 < H - 1 && w0 < W - 1;
  const uint32_t gc = (uint32_t)GC;
  const uint32_t base = ((uint32_t)h0 * (uint32_t)W + (uint32_t)w0) * gc;
  const uint32_t row = (uint32_t)W * gc;
  c.off[0] = base;
  c.off[1] = base + gc;
  c.off[2] = base + row;
  c.off[3] = base + row + gc;
}

struct PixelInfo {
  int pix;  // output pixel index within the image (yo * Wo + xo)
  int pg;   // pix * G + g
  int g;
  int j;    // lane within the (pixel, group)
  float p0x, p0y;
};

__device__ __forceinline__ PixelInfo pixel_info(const DeformArgs& a, int tid) {
  PixelInfo pi;
  pi.j = tid & ((1 << a.tpg_log2) - 1);
  pi.pg = tid >> a.tpg_log2;
  pi.pix = pi.pg / a.G;
  pi.g = pi.pg - pi.pix * a.G;
  const int yo = pi.pix / a.Wo;
  const int xo = pi.pix - yo * a.Wo;
  const int half_w = (a.dw * (a.kw - 1)) >> 1;
  const int half_h = (a.dh * (a.kh - 1)) >> 1;
  const int base_x = xo * a.sw - a.pw + half_w;
  const int base_y = yo * a.sh - a.ph + half_h;
  pi.p0x = (float)base_x - (float)half_w * a.scale;
  pi.p0y = (float)base_y - (float)half_h * a.scale;
  return pi;
}

// Kernel point (i = x index, outer; jj = y index, inner) of slot idx of the full kernel window.
template <int KS>
__device__ __forceinline__ void kernel_point(const DeformArgs& a, int idx, int& i, int& jj) {
  if constexpr (KS > 0) {
    i = idx / KS;
    jj = idx - i * KS;
  } else {
    i = idx / a.kh;
    jj = idx - i * a.kh;
  }
}

template <typename T>
__device__ __forceinline__ const T* corner_ptr(const T* vb, const Corners& c, int q, int coff) {
  return c.ok[q] ? vb + c.off[q] + coff : reinterpret_cast<const T*>(g_zero_vec);
}

// acc += m * bilinear sample (VEC channels at vb + coff).
template <typename T, int VEC>
__device__ __forceinline__ void accumulate_sample(const T* vb, const Corners& c, int coff, float m,
                                                  float (&acc)[VEC]) {
#if SSM_DEFORM_HALF_BLEND
  if constexpr (std::is_same<T, __half>::value && VEC % 8 == 0) {
    __half2 wh[4];
#pragma unroll
    for (int q = 0; q < 4; ++q) wh[q] = __float2half2_rn(c.w[q]);
#pragma unroll
    for (int k = 0; k < VEC / 8; ++k) {
      uint4 r[4];
#pragma unroll
      for (int q = 0; q < 4; ++q) r[q] = __ldg(reinterpret_cast<const uint4*>(corner_ptr(vb, c, q, coff)) + k);
      const uint32_t* w0 = reinterpret_cast<const uint32_t*>(&r[0]);
      const uint32_t* w1 = reinterpret_cast<const uint32_t*>(&r[1]);
      const uint32_t* w2 = reinterpret_cast<const uint32_t*>(&r[2]);
      const uint32_t* w3 = reinterpret_cast<const uint32_t*>(&r[3]);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        __half2 s = __hmul2(wh[0], *reinterpret_cast<const __half2*>(&w0[e]));
        s = __hfma2(wh[1], *reinterpret_cast<const __half2*>(&w1[e]), s);
        s = __hfma2(wh[2], *reinterpret_cast<const __half2*>(&w2[e]), s);
        s = __hfma2(wh[3], *reinterpret_cast<const __half2*>(&w3[e]), s);
        const float2 f = __half22float2(s);
        acc[k * 8 + 2 * e] = fmaf(m, f.x, acc[k * 8 + 2 * e]);
        acc[k * 8 + 2 * e + 1] = fmaf(m, f.y, acc[k * 8 + 2 * e + 1]);
      }
    }
  } else
#endif
  {
    float vv[4][VEC];
#pragma unroll
    for (int q = 0; q < 4; ++q) load_vec<T, VEC>(corner_ptr(vb, c, q, coff), vv[q]);
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const float mw = m * c.w[q];
#pragma unroll
      for (int e = 0; e < VEC; ++e) acc[e] = fmaf(mw, vv[q][e], acc[e]);
    }
  }
}

// ------------------------------------------------------------------------------------------------
// kStage: the block first copies the offset/mask rows of its output pixels into shared memory with
// coalesced (16-byte when possible) loads, then every thread reads its 3K values from there
// (SSM_DEFORM_STAGE_OFFSETS; off by default).
// Minimum resident blocks per SM asked of the compiler for the forward kernel: 4 caps it at 64
// registers (32 warps per SM); the gathers are latency-bound, so occupancy matters (measured on H100).
#ifndef SSM_DEFORM_FWD_MIN_BLOCKS
#define SSM_DEFORM_FWD_MIN_BLOCKS 4
#endif

template <typename T, int VEC, int KS, bool kStage>
__global__ void __launch_bounds__(kThreads, SSM_DEFORM_FWD_MIN_BLOCKS) deform_fwd_kernel(const DeformArgs a) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int tid = blockIdx.x * kThreads + threadIdx.x;
  const bool active = tid < a.n_img;
  const PixelInfo pi = pixel_info(a, active ? tid : 0);
  const bool work = active && pi.j < a.nvec;
  if (!kStage && !work) return;
  const T* __restrict__ value = static_cast<const T*>(a.value);
  const T* __restrict__ om = static_cast<const T*>(a.om);
  T* __restrict__ out = static_cast<T*>(a.out);
  const int tpg = 1 << a.tpg_log2;
  const int K = a.K;
  const int kfull = (KS > 0 ? KS * KS : a.kh * a.kw);
  const int ci = KS > 0 ? KS / 2 : a.kw / 2;
  const int cj = KS > 0 ? KS / 2 : a.kh / 2;
  // output pixels of this block
  const int pix_first = ((blockIdx.x * kThreads) >> a.tpg_log2) / a.G;
  const int last_tid = min(a.n_img - 1, (int)(blockIdx.x * kThreads + kThreads - 1));
  const int pix_last = (last_tid >> a.tpg_log2) / a.G;
  const T* sm = reinterpret_cast<const T*>(smem_raw);

  for (int64_t b = blockIdx.y; b < a.B; b += gridDim.y) {
    const T* omp;
    if constexpr (kStage) {
      const T* src = om + b * a.img_om + (int64_t)pix_first * a.P;
      const int n = (pix_last - pix_first + 1) * a.P;
      __syncthreads();  // previous image's reads are done
      if (a.om_vec16) {
        constexpr int per16 = 16 / (int)sizeof(T);
        const uint4* s4 = reinterpret_cast<const uint4*>(src);
        uint4* d4 = reinterpret_cast<uint4*>(smem_raw);
        for (int e = threadIdx.x; e < n / per16; e += kThreads) d4[e] = __ldg(s4 + e);
      } else {
        T* d = reinterpret_cast<T*>(smem_raw);
        for (int e = threadIdx.x; e < n; e += kThreads) d[e] = src[e];
      }
      __syncthreads();
      if (!work) continue;
      omp = sm + (pi.pix - pix_first) * a.P + pi.g * K * 3;
    } else {
      omp = om + b * a.img_om + (int64_t)pi.pix * a.P + pi.g * K * 3;
    }
    const T* vb = value + b * a.img_in + pi.g * a.C;
    T* outp = out + b * a.img_out + (int64_t)pi.pg * a.C;
    for (int v = pi.j; v < a.nvec; v += tpg) {
      const int coff = v * VEC;
      float acc[VEC];
#pragma unroll
      for (int e = 0; e < VEC; ++e) acc[e] = 0.f;
      constexpr int kUnroll = KS > 0 ? KS * KS : 1;
#pragma unroll kUnroll
      for (int idx = 0; idx < kfull; ++idx) {
        int i, jj;
        kernel_point<KS>(a, idx, i, jj);
        if (a.remove_center && i == ci && jj == cj) continue;
        const int k = (a.remove_center && (i > ci || (i == ci && jj > cj))) ? idx - 1 : idx;
        const float dx = to_f(omp[2 * k]);
        const float dy = to_f(omp[2 * k + 1]);
        const float m = to_f(omp[2 * K + k]);
        const float px = pi.p0x + ((float)(i * a.dw) + dx) * a.scale;
        const float py = pi.p0y + ((float)(jj * a.dh) + dy) * a.scale;
        Corners c;
        corner_setup(py, px, a.H, a.W, a.GC, c);
        accumulate_sample<T, VEC>(vb, c, coff, m, acc);
      }
      store_vec<T, VEC>(outp + coff, acc);
    }
  }
}

// ------------------------------------------------------------------------------------------------
__device__ __forceinline__ void atomic_add_vec4(float* p, float a0, float a1, float a2, float a3,
                                                bool vec) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (vec) {
    atomicAdd(reinterpret_cast<float4*>(p), make_float4(a0, a1, a2, a3));
    return;
  }
#endif
  atomicAdd(p + 0, a0);
  atomicAdd(p + 1, a1);
  atomicAdd(p + 2, a2);
  atomicAdd(p + 3, a3);
}

template <int VEC>
__device__ __forceinline__ void atomic_add_channels(float* p, const float* v, float scale, bool vec) {
  if constexpr (VEC % 4 == 0) {
#pragma unroll
    for (int c = 0; c < VEC; c += 4)
      atomic_add_vec4(p + c, scale * v[c], scale * v[c + 1], scale * v[c + 2], scale * v[c + 3], vec);
  } else {
#pragma unroll
    for (int c = 0; c < VEC; ++c) atomicAdd(p + c, scale * v[c]);
  }
}

template <typename T, int VEC, int KS>
__global__ void __launch_bounds__(kThreads) deform_bwd_kernel(const DeformArgs a) {
  const int tid0 = blockIdx.x * kThreads + threadIdx.x;
  const bool active = tid0 < a.n_img;
  // Inactive threads still take part in the shuffles; they work on a clamped index and write nothing.
  const PixelInfo pi = pixel_info(a, active ? tid0 : 0);
  const T* __restrict__ value = static_cast<const T*>(a.value);
  const T* __restrict__ om = static_cast<const T*>(a.om);
  const T* __restrict__ gout = static_cast<const T*>(a.gout);
  const int tpg = 1 << a.tpg_log2;
  const int K = a.K;
  const int kfull = (KS > 0 ? KS * KS : a.kh * a.kw);
  const int ci = KS > 0 ? KS / 2 : a.kw / 2;
  const int cj = KS > 0 ? KS / 2 : a.kh / 2;
  const bool vec_atomic = a.vec_atomic != 0;
  const bool writer = active && pi.j == 0;
  const int iters = (a.nvec + tpg - 1) / tpg;  // uniform over the grid

  for (int64_t b = blockIdx.y; b < a.B; b += gridDim.y) {
    const T* vb = value + b * a.img_in + pi.g * a.C;
    float* gvb = a.gval + b * a.img_in + pi.g * a.C;
    const int64_t om_off = b * a.img_om + (int64_t)pi.pix * a.P + pi.g * K * 3;
    const T* omp = om + om_off;
    float* gomp = a.gom + om_off;
    const T* gop = gout + b * a.img_out + (int64_t)pi.pg * a.C;
    for (int it = 0; it < iters; ++it) {
      const int v = pi.j + it * tpg;
      const bool has = active && v < a.nvec;
      const int coff = (has ? v : 0) * VEC;
      float go[VEC];
      if (has) {
        load_vec<T, VEC>(gop + coff, go);
      } else {
#pragma unroll
        for (int e = 0; e < VEC; ++e) go[e] = 0.f;
      }
      constexpr int kUnroll = KS > 0 ? KS * KS : 1;
#pragma unroll kUnroll
      for (int idx = 0; idx < kfull; ++idx) {
        int i, jj;
        kernel_point<KS>(a, idx, i, jj);
        if (a.remove_center && i == ci && jj == cj) continue;
        const int k = (a.remove_center && (i > ci || (i == ci && jj > cj))) ? idx - 1 : idx;
        const float dx = ldf(omp + 2 * k);
        const float dy = ldf(omp + 2 * k + 1);
        const float m = ldf(omp + 2 * K + k);
        const float px = pi.p0x + ((float)(i * a.dw) + dx) * a.scale;
        const float py = pi.p0y + ((float)(jj * a.dh) + dy) * a.scale;
        Corners c;
        corner_setup(py, px, a.H, a.W, a.GC, c);
        float vv[4][VEC];
#pragma unroll
        for (int q = 0; q < 4; ++q) load_vec<T, VEC>(corner_ptr(vb, c, q, coff), vv[q]);
        const float hh = 1.f - c.lh, hw = 1.f - c.lw;
        float gm = 0.f, gx = 0.f, gy = 0.f;
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          const float smp = c.w[0] * vv[0][e] + c.w[1] * vv[1][e] + c.w[2] * vv[2][e] + c.w[3] * vv[3][e];
          gm = fmaf(go[e], smp, gm);
          gx = fmaf(go[e], hh * (vv[1][e] - vv[0][e]) + c.lh * (vv[3][e] - vv[2][e]), gx);
          gy = fmaf(go[e], hw * (vv[2][e] - vv[0][e]) + c.lw * (vv[3][e] - vv[1][e]), gy);
        }
        if (has) {
#pragma unroll
          for (int q = 0; q < 4; ++q)
            if (c.ok[q]) atomic_add_channels<VEC>(gvb + c.off[q] + coff, go, m * c.w[q], vec_atomic);
        }
        for (int off = tpg >> 1; off > 0; off >>= 1) {
          gm += __shfl_xor_sync(kFullMask, gm, off);
          gx += __shfl_xor_sync(kFullMask, gx, off);
          gy += __shfl_xor_sync(kFullMask, gy, off);
        }
        if (writer) {
          const float vx = gx * m * a.scale, vy = gy * m * a.scale;
          if (it == 0) {
            gomp[2 * k] = vx;
            gomp[2 * k + 1] = vy;
            gomp[2 * K + k] = gm;
          } else {
            gomp[2 * k] += vx;
            gomp[2 * k + 1] += vy;
            gomp[2 * K + k] += gm;
          }
        }
      }
    }
    if (writer && pi.g == a.G - 1) {
      float* row = a.gom + b * a.img_om + (int64_t)pi.pix * a.P;
      for (int col = a.G * K * 3; col < a.P; ++col) row[col] = 0.f;
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Host side

int check_shape(const ssm_deform_shape* s, int64_t* K_out) {
  if (s == nullptr) return SSM_ERR_NULL_POINTER;
  if (s->dtype != SSM_FLOAT32 && s->dtype != SSM_FLOAT16 && s->dtype != SSM_BFLOAT16)
    return SSM_ERR_BAD_DTYPE;
  if (s->batch < 1 || s->height < 1 || s->width < 1 || s->out_height < 1 || s->out_width < 1 ||
      s->groups < 1 || s->group_channels < 1 || s->kernel_h < 1 || s->kernel_w < 1 ||
      s->stride_h < 1 || s->stride_w < 1 || s->dilation_h < 1 || s->dilation_w < 1)
    return SSM_ERR_BAD_SIZE;
  const int64_t lim = int64_t(1) << 30;
  if (s->height >= lim || s->width >= lim || s->out_height >= lim || s->out_width >= lim ||
      s->groups >= lim || s->group_channels >= lim || s->groups * s->group_channels >= lim ||
      s->batch >= lim || s->kernel_h >= 4096 || s->kernel_w >= 4096 || s->offset_stride >= lim ||
      s->pad_h <= -lim || s->pad_w <= -lim || s->pad_h >= lim || s->pad_w >= lim ||
      s->stride_h >= lim || s->stride_w >= lim || s->dilation_h >= 65536 || s->dilation_w >= 65536)
    return SSM_ERR_BAD_SIZE;
  // sampling coordinates are formed in 32-bit integers
  const int64_t span_x = (s->out_width - 1) * s->stride_w + (int64_t)s->dilation_w * (s->kernel_w - 1);
  const int64_t span_y = (s->out_height - 1) * s->stride_h + (int64_t)s->dilation_h * (s->kernel_h - 1);
  if (span_x + (s->pad_w < 0 ? -s->pad_w : s->pad_w) >= lim ||
      span_y + (s->pad_h < 0 ? -s->pad_h : s->pad_h) >= lim)
    return SSM_ERR_BAD_SIZE;
  const int64_t K = (int64_t)s->kernel_h * s->kernel_w - (s->remove_center ? 1 : 0);
  if (K < 1) return SSM_ERR_BAD_SIZE;
  if (s->offset_stride < s->groups * K * 3) return SSM_ERR_BAD_SIZE;
  // coordinates must stay exact-ish and indices must fit in int64
  const double pix_out = double(s->batch) * double(s->out_height) * double(s->out_width);
  const double pix_in = double(s->batch) * double(s->height) * double(s->width);
  const double gc = double(s->groups) * double(s->group_channels);
  if (pix_out * gc >= 4.0e18 || pix_in * gc >= 4.0e18 ||
      pix_out * double(s->offset_stride) >= 4.0e18)
    return SSM_ERR_BAD_SIZE;
  *K_out = K;
  return SSM_OK;
}

int pick_vec(const ssm_deform_shape* s, const void* const* ptrs, int nptr, int elem) {
  int vec = SSM_DEFORM_VEC_BYTES / elem;
  while (vec > 1 && s->group_channels % vec != 0) vec >>= 1;
  // pointers must be aligned to the vector width (capped at 16 bytes)
  while (vec > 1) {
    const size_t al = (size_t)vec * elem > 16 ? 16 : (size_t)vec * elem;
    bool ok = true;
    for (int i = 0; i < nptr; ++i) ok = ok && ssm_cuda_host::aligned(ptrs[i], al);
    if (ok) break;
    vec >>= 1;
  }
  return vec;
}

int fill_args(const ssm_deform_shape* s, int64_t K, int vec, DeformArgs& a, dim3& grid) {
  a.B = (int)s->batch;
  a.H = (int)s->height;
  a.W = (int)s->width;
  a.Ho = (int)s->out_height;
  a.Wo = (int)s->out_width;
  a.G = (int)s->groups;
  a.C = (int)s->group_channels;
  a.GC = a.G * a.C;
  a.P = (int)s->offset_stride;
  a.kh = s->kernel_h;
  a.kw = s->kernel_w;
  a.sh = s->stride_h;
  a.sw = s->stride_w;
  a.ph = s->pad_h;
  a.pw = s->pad_w;
  a.dh = s->dilation_h;
  a.dw = s->dilation_w;
  a.remove_center = s->remove_center ? 1 : 0;
  a.K = (int)K;
  a.scale = s->offset_scale;
  a.nvec = (int)(s->group_channels / vec);
  int lg = 0;
  while ((1 << lg) < a.nvec && lg < 5) ++lg;
  a.tpg_log2 = lg;
  a.img_in = s->height * s->width * a.GC;
  a.img_out = s->out_height * s->out_width * a.GC;
  a.img_om = s->out_height * s->out_width * s->offset_stride;
  const int64_t n_img = s->out_height * s->out_width * s->groups * (int64_t(1) << lg);
  // 32-bit index arithmetic inside one image
  if (n_img >= (int64_t(1) << 31) - kThreads || a.img_in >= (int64_t(1) << 31) ||
      a.img_out >= (int64_t(1) << 31) || a.img_om >= (int64_t(1) << 31))
    return SSM_ERR_UNSUPPORTED;
  a.n_img = (int)n_img;
  grid = dim3((unsigned)((n_img + kThreads - 1) / kThreads), (unsigned)(s->batch < 65535 ? s->batch : 65535));
  return SSM_OK;
}

// Staging the offset/mask rows in shared memory measured no faster on H100 (the kernel is bound by
// instruction issue), so it is off by default; -DSSM_DEFORM_STAGE_OFFSETS=1 turns it on.
#ifndef SSM_DEFORM_STAGE_OFFSETS
#define SSM_DEFORM_STAGE_OFFSETS 0
#endif
constexpr size_t kStageSmemLimit = 48 * 1024;

// Shared memory for the staged offset rows of one block (0: too large, read from global memory).
size_t stage_bytes(const DeformArgs& a, int elem) {
  if (!SSM_DEFORM_STAGE_OFFSETS) return 0;
  const int64_t npg = kThreads >> a.tpg_log2;  // (pixel, group) pairs per block
  const int64_t span = (npg - 1) / a.G + 2;     // output pixels a block can touch
  const size_t bytes = (size_t)(span * a.P * elem + 15) / 16 * 16;
  return bytes <= kStageSmemLimit ? bytes : 0;
}

template <typename T, int VEC>
int launch_fwd_t(const DeformArgs& a, dim3 grid, cudaStream_t st) {
  const size_t sm = stage_bytes(a, (int)sizeof(T));
  if constexpr (SSM_DEFORM_STAGE_OFFSETS != 0) {
    if (sm > 0) {
      if (a.kh == 3 && a.kw == 3)
        deform_fwd_kernel<T, VEC, 3, true><<<grid, kThreads, sm, st>>>(a);
      else
        deform_fwd_kernel<T, VEC, 0, true><<<grid, kThreads, sm, st>>>(a);
      return ssm_cuda_host::launch_status();
    }
  }
  {
    if (a.kh == 3 && a.kw == 3)
      deform_fwd_kernel<T, VEC, 3, false><<<grid, kThreads, 0, st>>>(a);
    else
      deform_fwd_kernel<T, VEC, 0, false><<<grid, kThreads, 0, st>>>(a);
  }
  return ssm_cuda_host::launch_status();
}

template <typename T, int VEC>
int launch_bwd_t(const DeformArgs& a, dim3 grid, cudaStream_t st) {
  if (a.kh == 3 && a.kw == 3)
    deform_bwd_kernel<T, VEC, 3><<<grid, kThreads, 0, st>>>(a);
  else
    deform_bwd_kernel<T, VEC, 0><<<grid, kThreads, 0, st>>>(a);
  return ssm_cuda_host::launch_status();
}

template <bool kFwd, typename T, int VEC>
int launch_one(const DeformArgs& a, dim3 grid, cudaStream_t st) {
  return kFwd ? launch_fwd_t<T, VEC>(a, grid, st) : launch_bwd_t<T, VEC>(a, grid, st);
}

template <bool kFwd, typename T>
int launch_vec(int vec, const DeformArgs& a, dim3 grid, cudaStream_t st) {
  constexpr int kMax = SSM_DEFORM_VEC_BYTES / (int)sizeof(T);
  if constexpr (kMax >= 32) {
    if (vec == 32) return launch_one<kFwd, T, 32>(a, grid, st);
  }
  if constexpr (kMax >= 16) {
    if (vec == 16) return launch_one<kFwd, T, 16>(a, grid, st);
  }
  switch (vec) {
    case 8:
      return launch_one<kFwd, T, 8>(a, grid, st);
    case 4:
      return launch_one<kFwd, T, 4>(a, grid, st);
    case 2:
      return launch_one<kFwd, T, 2>(a, grid, st);
    default:
      return launch_one<kFwd, T, 1>(a, grid, st);
  }
}

template <bool kFwd>
int launch(int dtype, int vec, const DeformArgs& a, dim3 grid, cudaStream_t st) {
  switch (dtype) {
    case SSM_FLOAT32:
      return launch_vec<kFwd, float>(vec, a, grid, st);
    case SSM_FLOAT16:
      return launch_vec<kFwd, __half>(vec, a, grid, st);
    case SSM_BFLOAT16:
      return launch_vec<kFwd, __nv_bfloat16>(vec, a, grid, st);
    default:
      return SSM_ERR_BAD_DTYPE;
  }
}

int elem_size(int dtype) { return dtype == SSM_FLOAT32 ? 4 : 2; }

}  // namespace

extern "C" {

SSM_API int ssm_deform_aggregate_fwd_cuda(const ssm_deform_shape* shape, const void* value,
                                          const void* offset_mask, void* out, void* stream) {
  int64_t K = 0;
  const int st = check_shape(shape, &K);
  if (st != SSM_OK) return st;
  if (!value || !offset_mask || !out) return SSM_ERR_NULL_POINTER;
  const void* ptrs[2] = {value, out};
  const int vec = pick_vec(shape, ptrs, 2, elem_size(shape->dtype));
  DeformArgs a{};
  a.value = value;
  a.om = offset_mask;
  a.out = out;
  a.om_vec16 = ((shape->offset_stride * elem_size(shape->dtype)) % 16 == 0) &&
               ssm_cuda_host::aligned(offset_mask, 16);
  dim3 grid;
  const int fs = fill_args(shape, K, vec, a, grid);
  if (fs != SSM_OK) return fs;
  return launch<true>(shape->dtype, vec, a, grid, static_cast<cudaStream_t>(stream));
}

SSM_API int ssm_deform_aggregate_bwd_cuda(const ssm_deform_shape* shape, const void* value,
                                          const void* offset_mask, const void* grad_out,
                                          float* grad_value, float* grad_offset_mask, void* stream) {
  int64_t K = 0;
  const int st = check_shape(shape, &K);
  if (st != SSM_OK) return st;
  if (!value || !offset_mask || !grad_out || !grad_value || !grad_offset_mask)
    return SSM_ERR_NULL_POINTER;
  const void* ptrs[2] = {value, grad_out};
  const int vec = pick_vec(shape, ptrs, 2, elem_size(shape->dtype));
  DeformArgs a{};
  a.value = value;
  a.om = offset_mask;
  a.gout = grad_out;
  a.gval = grad_value;
  a.gom = grad_offset_mask;
  a.vec_atomic = (vec % 4 == 0) && ssm_cuda_host::aligned(grad_value, 16);
  dim3 grid;
  const int fs = fill_args(shape, K, vec, a, grid);
  if (fs != SSM_OK) return fs;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const size_t nval = (size_t)(shape->batch * shape->height * shape->width * shape->groups *
                               shape->group_channels);
  if (cudaMemsetAsync(grad_value, 0, nval * sizeof(float), s) != cudaSuccess) return SSM_ERR_CUDA;
  return launch<false>(shape->dtype, vec, a, grid, s);
}

}  // extern "C"
