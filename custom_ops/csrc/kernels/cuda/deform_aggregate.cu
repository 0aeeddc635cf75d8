// DeformAggregate (DCNv4 core, no softmax) on CUDA: forward and backward.
//
// Forward (tiled; the default for every shape)
//   A block owns a tile of (output pixel, group) pairs ("pg") of one image. The tile order is
//   group-major and, inside a group, runs down bands of TH output rows column by column, so a tile is a
//   2-D patch of one group (e.g. 8 x 8 pixels): the bilinear corners of neighbouring pixels overlap and
//   a tile touches far fewer distinct cache lines than a pixel-major tile (a few pixels x all groups),
//   above all for small images with many groups. The block works in two phases:
//   1. Setup, once per (pg, sampling point): the block's threads stride over the tile's pg x K points,
//      compute the location, the bilinear weights pre-multiplied by the mask, and the element offsets
//      of the four corners, and store them in shared memory. Corners outside the image get weight 0
//      and an in-image (clamped) address, so the gather phase needs no bounds logic; a consequence is
//      that an inf/NaN in the image next to the border can turn such a zero-weight term into NaN
//      (finite inputs are unaffected). Per-pg constants (p0, offset/mask and output offsets, g*C) are
//      computed once per pg first.
//   2. Gather: TPG threads (a power of two <= 32) share a pg; a thread owns VEC contiguous channels
//      (16 bytes: 4 fp32 or 8 fp16/bf16 channels, fewer when group_channels is not a multiple) and
//      loops over vectors j, j+TPG, ... when the group is wider. Per point it reads its 4 weights and
//      4 offsets from shared memory (two 16-byte broadcast loads), issues the 4 corner loads and
//      accumulates in float32. 3x3 kernels (with or without the centre) are unrolled. A tile holds
//      SSM_DEFORM_TILE_ROUNDS x (256 / TPG) pgs, gathered in that many passes.
//   The forward is limited by the corner gathers through L1/L2 (see tests/gpu/CUDA_KERNELS_NOTES.md),
//   not by instruction issue: doing the point setup once per (pg, point) instead of in every thread cut
//   the instructions by ~40% without a measurable gain; the 2-D tiles gained 13-23% for float32.
//
// Forward, float16 on tensor cores (SSM_DEFORM_MMA, off by default: measured 2x slower on H100)
//   For group_channels % 32 == 0 and 3x3 kernels the blend and the sum over points can be done as
//   mma.m16n8k16 products: per point, half a warp loads 16 bytes of one corner per lane, used directly as
//   the B operand (k = 2 * corner + channel parity), with the mask-weighted bilinear weights in the A
//   rows of the matching parity, split into float16 hi + lo parts after scaling the pg's weights by a
//   power of two (largest mask in [2^14, 2^15)); products are exact and accumulation is float32.
//
// A forward that does not fit the tiled layout (more than ~1500 sampling points) uses the direct kernel
// (every thread does its own setup).
//
// Backward
//   grad_value (float32) is zeroed with cudaMemsetAsync and accumulated with atomicAdd (16-byte float4
//   atomics on sm_90, scalar ones elsewhere). grad_offset_mask gets, per (pixel, group, point), the
//   channel sums of grad_out*sample and grad_out*d(sample)/d(x,y), reduced over the TPG lanes with
//   warp shuffles and stored by the first lane; padding columns are written as zeros.
//   Index arithmetic inside an image is 32-bit (the host checks that an image has < 2^31 elements).
//
// Forward epilogues (domain version 5): an offset bias, added to each offset/mask value as it is read and
// the sum rounded to T (what an Add node before the op computes), and SiLU on each output value rounded
// to T. Neither changes the work decomposition; the tensor-core path is not taken with them.
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
// Tensor-core forward for float16 (see the header); 0 = the FMA path for all dtypes (the default: the
// tensor-core kernel measured about 2x slower on H100).
#ifndef SSM_DEFORM_MMA
#define SSM_DEFORM_MMA 0
#endif
// Testing only: 1 = always use the direct forward kernel (the fallback for huge kernels).
#ifndef SSM_DEFORM_FORCE_DIRECT
#define SSM_DEFORM_FORCE_DIRECT 0
#endif
// Minimum resident blocks per SM asked of the compiler for the forward kernels: 4 caps them at 64
// registers (32 warps per SM).
#ifndef SSM_DEFORM_FWD_MIN_BLOCKS
#define SSM_DEFORM_FWD_MIN_BLOCKS 4
#endif
// Order of the (pixel, group) pairs that make up the tiles of the tiled forward. 1: group-major, and
// inside a group the pixels of bands of TH rows column by column, so that a tile is a 2-D patch of one
// group (TH x npg/TH pixels) and its bilinear corners overlap: far fewer distinct cache lines per tile
// than pixel-major tiles (a few pixels x all groups), above all for small images with many groups.
// 0: pixel-major (pg = pixel * G + g).
#ifndef SSM_DEFORM_GROUP_MAJOR
#define SSM_DEFORM_GROUP_MAJOR 1
#endif
// (pixel, group) pairs of a tile = SSM_DEFORM_TILE_ROUNDS x the pairs one block covers at a time.
// 2 (8 x 8 patches for float32, 8 x 16 for 16-bit types at group_channels 32) measured 2-9% faster than
// 1 on H100 for float32 and float16 (HRVMamba shapes, batch 128), except float16 at 8 x 6 (-5%).
#ifndef SSM_DEFORM_TILE_ROUNDS
#define SSM_DEFORM_TILE_ROUNDS 2
#endif

// Corners outside the image are read from here (zeros) by the direct forward and the backward, so
// that the four corner loads of a point are unconditional and can all be in flight together.
__device__ __align__(16) unsigned char g_zero_vec[64] = {0};

// Unsigned division by a run-time constant d >= 1, for 0 <= n < 2^31: q = (umulhi(n, mul) + n) >> shift.
struct FastDiv {
  uint32_t mul, shift;
};

__device__ __forceinline__ uint32_t fdiv(uint32_t n, FastDiv f) { return (__umulhi(n, f.mul) + n) >> f.shift; }

// base + off elements (off unsigned 32-bit), as two instructions. Plain pointer arithmetic lets the
// compiler re-associate the 64-bit sums and spend four instructions per gathered address.
template <typename T>
__device__ __forceinline__ const T* ptr_add(const T* base, uint32_t off) {
  const T* r;
  asm("mad.wide.u32 %0, %1, %2, %3;" : "=l"(r) : "r"(off), "n"((int)sizeof(T)), "l"(base));
  return r;
}

FastDiv make_fastdiv(uint32_t d) {
  uint32_t s = 0;
  while (s < 32 && (uint64_t(1) << s) < d) ++s;
  FastDiv f;
  f.mul = (uint32_t)(((uint64_t(1) << 32) * ((uint64_t(1) << s) - d)) / d + 1);
  f.shift = s;
  return f;
}

struct DeformArgs {
  const void* value;
  const void* om;
  const void* om_bias;  // forward: offset bias (P values) or null
  int silu;             // forward: SiLU on the output
  const void* gout;
  void* out;
  float* gval;
  float* gom;
  int64_t img_in;   // H*W*GC, elements of one input image
  int64_t img_out;  // Ho*Wo*GC
  int64_t img_om;   // Ho*Wo*P
  int n_img;        // threads per image: Ho*Wo*G*TPG (direct forward, backward)
  int B, H, W, Ho, Wo, G, C, GC, P;
  int kh, kw, sh, sw, ph, pw, dh, dw;
  int remove_center, K;
  int tpg_log2, nvec;
  int vec_atomic;
  float scale;
  // tiled forward
  int n_pg;         // Ho*Wo*G
  int npg;          // pgs per tile (block)
  int kpad;         // shared-memory records per pg (K rounded up to odd: conflict-free 16-byte reads)
  int cidx;         // index of the centre point in the full window (remove_center)
  int WGC;          // W*GC
  FastDiv fd_G, fd_Wo, fd_K, fd_kh;
  // group-major tile order: bands of TH output rows (the last one th_last rows), band_sz = TH*Wo
  int TH, th_last, nband, band_sz, npix;
  FastDiv fd_npix, fd_band, fd_th, fd_thl;
  int fwd_path, fwd_block, fwd_smem;  // launch plan (host side)
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

// x rounded to T, as float
template <typename T>
__device__ __forceinline__ float round_to(float x) {
  return to_f(from_f<T>(x));
}

// Offset/mask value at column `col` of a pixel's row: the stored value, plus the offset bias (rounded to T)
// when there is one.
template <typename T>
__device__ __forceinline__ float om_value(const DeformArgs& a, const T* p, uint32_t col) {
  const float v = to_f(__ldg(p));
  if (a.om_bias == nullptr) return v;
  return round_to<T>(v + to_f(__ldg(static_cast<const T*>(a.om_bias) + col)));
}

// The output epilogue: SiLU of the value rounded to T, when asked for.
template <typename T, int VEC>
__device__ __forceinline__ void finish_output(const DeformArgs& a, float (&acc)[VEC]) {
  if (!a.silu) return;
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    const float z = round_to<T>(acc[e]);
    acc[e] = z / (1.f + expf(-z));
  }
}

template <typename T>
__device__ __forceinline__ const T* corner_ptr(const T* vb, const Corners& c, int q, int coff) {
  return c.ok[q] ? vb + c.off[q] + coff : reinterpret_cast<const T*>(g_zero_vec);
}


// ------------------------------------------------------------------------------------------------
// Direct forward (fallback for kernels too large for the tiled layout): each thread of a
// (pixel, group) reads the offsets and sets up every point itself.
template <typename T, int VEC, int KS>
__global__ void __launch_bounds__(kThreads, SSM_DEFORM_FWD_MIN_BLOCKS) deform_fwd_direct_kernel(const DeformArgs a) {
  const int tid = blockIdx.x * kThreads + threadIdx.x;
  if (tid >= a.n_img) return;
  const PixelInfo pi = pixel_info(a, tid);
  if (pi.j >= a.nvec) return;
  const T* __restrict__ value = static_cast<const T*>(a.value);
  const T* __restrict__ om = static_cast<const T*>(a.om);
  T* __restrict__ out = static_cast<T*>(a.out);
  const int tpg = 1 << a.tpg_log2;
  const int K = a.K;
  const int kfull = (KS > 0 ? KS * KS : a.kh * a.kw);
  const int ci = KS > 0 ? KS / 2 : a.kw / 2;
  const int cj = KS > 0 ? KS / 2 : a.kh / 2;
  for (int64_t b = blockIdx.y; b < a.B; b += gridDim.y) {
    const T* omp = om + b * a.img_om + (int64_t)pi.pix * a.P + pi.g * K * 3;
    const T* vb = value + b * a.img_in + pi.g * a.C;
    T* outp = out + b * a.img_out + (int64_t)pi.pg * a.C;
    for (int v = pi.j; v < a.nvec; v += tpg) {
      const int coff = v * VEC;
      float acc[VEC];
#pragma unroll
      for (int e = 0; e < VEC; ++e) acc[e] = 0.f;
      for (int idx = 0; idx < kfull; ++idx) {
        int i, jj;
        kernel_point<KS>(a, idx, i, jj);
        if (a.remove_center && i == ci && jj == cj) continue;
        const int k = (a.remove_center && (i > ci || (i == ci && jj > cj))) ? idx - 1 : idx;
        const uint32_t col = (uint32_t)(pi.g * K * 3);
        const float dx = om_value(a, omp + 2 * k, col + 2 * k);
        const float dy = om_value(a, omp + 2 * k + 1, col + 2 * k + 1);
        const float m = om_value(a, omp + 2 * K + k, col + 2 * K + k);
        const float px = pi.p0x + ((float)(i * a.dw) + dx) * a.scale;
        const float py = pi.p0y + ((float)(jj * a.dh) + dy) * a.scale;
        Corners c;
        corner_setup(py, px, a.H, a.W, a.GC, c);
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
      finish_output<T, VEC>(a, acc);
      store_vec<T, VEC>(outp + coff, acc);
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Tiled forward

// Per-pg constants, in shared memory.
struct __align__(16) PgRec {
  float p0x, p0y;
  uint32_t om;   // element offset of the pg's offset/mask slice within one image's offset_mask
  uint32_t gc;   // g * C
  uint32_t out;  // element offset of the pg's output channels within one image
  uint32_t col;  // column of the pg's offset/mask slice in a pixel's row (g * K * 3)
  uint32_t pad[2];
};

// pg: index in tile order (see SSM_DEFORM_GROUP_MAJOR), 0 <= pg < Ho*Wo*G.
__device__ __forceinline__ PgRec make_pg_rec(const DeformArgs& a, int pg) {
  int g, yo, xo;
#if SSM_DEFORM_GROUP_MAJOR
  g = (int)fdiv((uint32_t)pg, a.fd_npix);
  const int p = pg - g * a.npix;
  const int band = (int)fdiv((uint32_t)p, a.fd_band);
  const int rem = p - band * a.band_sz;
  const bool last = band == a.nband - 1;
  const int th = last ? a.th_last : a.TH;
  xo = (int)fdiv((uint32_t)rem, last ? a.fd_thl : a.fd_th);
  yo = band * a.TH + (rem - xo * th);
#else
  const int pixel = (int)fdiv((uint32_t)pg, a.fd_G);
  g = pg - pixel * a.G;
  yo = (int)fdiv((uint32_t)pixel, a.fd_Wo);
  xo = pixel - yo * a.Wo;
#endif
  const int pix = yo * a.Wo + xo;
  const int half_w = (a.dw * (a.kw - 1)) >> 1;
  const int half_h = (a.dh * (a.kh - 1)) >> 1;
  PgRec r;
  r.p0x = (float)(xo * a.sw - a.pw + half_w) - (float)half_w * a.scale;
  r.p0y = (float)(yo * a.sh - a.ph + half_h) - (float)half_h * a.scale;
  r.om = (uint32_t)pix * (uint32_t)a.P + (uint32_t)(g * a.K * 3);
  r.gc = (uint32_t)(g * a.C);
  r.out = ((uint32_t)pix * (uint32_t)a.G + (uint32_t)g) * (uint32_t)a.C;
  r.col = (uint32_t)(g * a.K * 3);
  r.pad[0] = r.pad[1] = 0u;
  return r;
}

// Setup of sampling point k (0 <= k < K) of a pg. KP: 9 = 3x3, 8 = 3x3 without the centre, 0 = any.
// w: the four corner weights times mask * mscale, 0 for corners outside the image; off: element offsets
// (within an image) of the corners, clamped into the image.
template <typename T, int KP>
__device__ __forceinline__ void sample_setup(const DeformArgs& a, const PgRec& r, const T* __restrict__ omb,
                                             int k, float mscale, float (&w)[4], uint32_t (&off)[4]) {
  const int K = KP > 0 ? KP : a.K;
  int idx = k;  // index in the full window (the centre is skipped with remove_center)
  if (KP == 8) idx += k >= 4 ? 1 : 0;
  if (KP == 0) idx += (a.remove_center && k >= a.cidx) ? 1 : 0;
  int i, jj;  // x (outer) and y (inner) kernel indices
  if (KP > 0) {
    i = (int)((uint32_t)idx / 3u);
    jj = idx - 3 * i;
  } else {
    i = (int)fdiv((uint32_t)idx, a.fd_kh);
    jj = idx - i * a.kh;
  }
  const T* od = ptr_add(omb, r.om + 2u * (uint32_t)k);
  const T* om_ = ptr_add(omb, r.om + (uint32_t)(2 * K + k));
  const uint32_t col = r.col + 2u * (uint32_t)k;
  const float dx = om_value(a, od, col);
  const float dy = om_value(a, od + 1, col + 1u);
  const float m = om_value(a, om_, r.col + (uint32_t)(2 * K + k)) * mscale;
  const float px = r.p0x + ((float)(i * a.dw) + dx) * a.scale;
  const float py = r.p0y + ((float)(jj * a.dh) + dy) * a.scale;
  const float fh = floorf(py), fw = floorf(px);
  const float lh = py - fh, lw = px - fw;
  const float hh = 1.f - lh, hw = 1.f - lw;
  const float hm1 = (float)(a.H - 1), wm1 = (float)(a.W - 1);
  // Row h0 = fh is inside for 0 <= fh <= H-1, row h0+1 for -1 <= fh < H-1 (NaN: neither).
  const float ra = (fh >= 0.f && fh <= hm1) ? m * hh : 0.f;
  const float rb = (fh >= -1.f && fh < hm1) ? m * lh : 0.f;
  const float ca = (fw >= 0.f && fw <= wm1) ? hw : 0.f;
  const float cb = (fw >= -1.f && fw < wm1) ? lw : 0.f;
  w[0] = ra * ca;
  w[1] = ra * cb;
  w[2] = rb * ca;
  w[3] = rb * cb;
  const int h0 = (int)fminf(fmaxf(fh, -1.f), hm1);  // fmaxf(NaN, -1) = -1
  const int w0 = (int)fminf(fmaxf(fw, -1.f), wm1);
  const uint32_t rowa = (uint32_t)max(h0, 0) * (uint32_t)a.WGC + r.gc;
  const uint32_t rowb = (uint32_t)min(h0 + 1, a.H - 1) * (uint32_t)a.WGC + r.gc;
  const uint32_t cola = (uint32_t)max(w0, 0) * (uint32_t)a.GC;
  const uint32_t colb = (uint32_t)min(w0 + 1, a.W - 1) * (uint32_t)a.GC;
  off[0] = rowa + cola;
  off[1] = rowa + colb;
  off[2] = rowb + cola;
  off[3] = rowb + colb;
}

// Shared memory of the FMA kernel: PgRec[npg], float4 weights[npg][kpad], uint4 offsets[npg][kpad].
// The block has (npg / rounds) << tpg_log2 threads (rounded up to a warp) and gathers the tile's pgs in
// `rounds` passes.
template <typename T, int VEC, int KP>
__global__ void __launch_bounds__(kThreads, SSM_DEFORM_FWD_MIN_BLOCKS) deform_fwd_tiled_kernel(const DeformArgs a) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int K = KP > 0 ? KP : a.K;
  const int kpad = KP > 0 ? (KP | 1) : a.kpad;
  PgRec* srec = reinterpret_cast<PgRec*>(smem_raw);
  float4* sw = reinterpret_cast<float4*>(srec + a.npg);
  uint4* so = reinterpret_cast<uint4*>(sw + a.npg * kpad);
  const T* __restrict__ value = static_cast<const T*>(a.value);
  const T* __restrict__ om = static_cast<const T*>(a.om);
  T* __restrict__ out = static_cast<T*>(a.out);
  const int pg0 = blockIdx.x * a.npg;
  const int npg = min(a.npg, a.n_pg - pg0);
  const int n_items = npg * K;
  const int nthr = blockDim.x;
  const int tpg = 1 << a.tpg_log2;
  const int j = threadIdx.x & (tpg - 1);
  for (int t = threadIdx.x; t < npg; t += nthr) srec[t] = make_pg_rec(a, pg0 + t);

  for (int64_t b = blockIdx.y; b < a.B; b += gridDim.y) {
    __syncthreads();  // pg records written; the previous image's gather is done
    const T* omb = om + b * a.img_om;
#pragma unroll 2
    for (int it = threadIdx.x; it < n_items; it += nthr) {
      const int p = KP > 0 ? (int)((uint32_t)it / (uint32_t)KP) : (int)fdiv((uint32_t)it, a.fd_K);
      const int k = it - p * K;
      float w[4];
      uint32_t o[4];
      sample_setup<T, KP>(a, srec[p], omb, k, 1.f, w, o);
      sw[p * kpad + k] = make_float4(w[0], w[1], w[2], w[3]);
      so[p * kpad + k] = make_uint4(o[0], o[1], o[2], o[3]);
    }
    __syncthreads();
    for (int pl = threadIdx.x >> a.tpg_log2; pl < npg; pl += nthr >> a.tpg_log2) {
      const T* vb = value + b * a.img_in;
      T* ob = out + b * a.img_out + srec[pl].out;
      const float4* pw = sw + pl * kpad;
      const uint4* po = so + pl * kpad;
      for (int v = j; v < a.nvec; v += tpg) {
        const T* vt = vb + v * VEC;
        float acc[VEC];
#pragma unroll
        for (int e = 0; e < VEC; ++e) acc[e] = 0.f;
        constexpr int kUnroll = KP > 0 ? KP : 2;
#pragma unroll kUnroll
        for (int k = 0; k < K; ++k) {
          const float4 wq = pw[k];
          const uint4 oq = po[k];
          float vv[4][VEC];
          load_vec<T, VEC>(ptr_add(vt, oq.x), vv[0]);
          load_vec<T, VEC>(ptr_add(vt, oq.y), vv[1]);
          load_vec<T, VEC>(ptr_add(vt, oq.z), vv[2]);
          load_vec<T, VEC>(ptr_add(vt, oq.w), vv[3]);
#pragma unroll
          for (int e = 0; e < VEC; ++e) acc[e] = fmaf(wq.x, vv[0][e], acc[e]);
#pragma unroll
          for (int e = 0; e < VEC; ++e) acc[e] = fmaf(wq.y, vv[1][e], acc[e]);
#pragma unroll
          for (int e = 0; e < VEC; ++e) acc[e] = fmaf(wq.z, vv[2][e], acc[e]);
#pragma unroll
          for (int e = 0; e < VEC; ++e) acc[e] = fmaf(wq.w, vv[3][e], acc[e]);
        }
        finish_output<T, VEC>(a, acc);
        store_vec<T, VEC>(ob + v * VEC, acc);
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Tensor-core forward (float16, group_channels % 32 == 0, 3x3)

__device__ __forceinline__ void mma_16816(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                          uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#else
  __trap();
#endif
}

__device__ __forceinline__ uint32_t h2_bits(__half2 h) { return *reinterpret_cast<uint32_t*>(&h); }

// One mma.m16n8k16 per (sampling point, 32-channel unit of a pg, channel-pair half). Half a warp owns a
// unit; lane (g, c) (g = lane / 4, c = lane % 4; lane groups 0-3 work on the warp's first unit, 4-7 on
// the second) loads 16 bytes = 8 channels (block g % 4 of the unit) of corner q = c of the point.
//   B (16 x 8, f16): column n = lane group n; k = 2c + parity for channel pair 2e (b0, word 2e of the
//     load) and 8 + 2c + parity for channel pair 2e + 1 (b1, word 2e + 1), in mma e (e = 0, 1).
//   A (16 x 16, f16): row g = (unit g/4, xy = (g/2)%2, parity g%2) holds the corner weights (hi part)
//     in the k slots of its parity and of channel pair half xy, zeros elsewhere; row g + 8 the lo parts.
//     Lane (g, c) supplies the weight of the corner it loaded.
//   D: row g, columns of the same unit: channels 8 * block + 2 * (2e + xy) + parity, hi + lo = rows g
//     and g + 8 (same lane). Lanes write them to a per-warp staging row, 8 lanes store 16 bytes each.
// Shared memory: PgRec[npg] (32 bytes), float2 (scale, unscale)[npg], uint4 rec[npg][4 q][NSP] =
//   {offset(point 2s), weight pair(point 2s), offset(point 2s+1), weight pair(point 2s+1)} with
//   weight pair = hi | lo << 16, then the staging rows (64 halves per warp).
template <int KP>
__global__ void __launch_bounds__(kThreads, SSM_DEFORM_FWD_MIN_BLOCKS) deform_fwd_mma_kernel(const DeformArgs a) {
  constexpr int NS = (KP + 1) / 2;  // point pairs
  constexpr int NSP = NS | 1;       // odd record stride: the 8 distinct 16-byte reads of a warp are conflict-free
  extern __shared__ __align__(16) unsigned char smem_raw[];
  PgRec* srec = reinterpret_cast<PgRec*>(smem_raw);
  float2* sscale = reinterpret_cast<float2*>(srec + a.npg);
  uint4* sq = reinterpret_cast<uint4*>(smem_raw + a.npg * 32 + ((a.npg * 8 + 15) & ~15));
  __half* sstage = reinterpret_cast<__half*>(sq + a.npg * 4 * NSP);
  const __half* __restrict__ value = static_cast<const __half*>(a.value);
  const __half* __restrict__ om = static_cast<const __half*>(a.om);
  __half* __restrict__ out = static_cast<__half*>(a.out);
  const int pg0 = blockIdx.x * a.npg;
  const int npg = min(a.npg, a.n_pg - pg0);
  const int n_items = npg * KP;
  const int nthr = blockDim.x;
  const int lane = threadIdx.x & 31;
  const int g = lane >> 2, c = lane & 3;
  const int par = g & 1, xy = (g >> 1) & 1, hsel = g >> 2, blk = g & 3;
  // PRMT selectors: weight pair word {hi, lo} -> the half of this row's parity, other half 0
  const uint32_t s_hi = par ? 0x1044u : 0x4410u, s_lo = par ? 0x3244u : 0x4432u, s_0 = 0x4444u;
  const uint32_t sel0 = xy ? s_0 : s_hi, sel1 = xy ? s_0 : s_lo, sel2 = xy ? s_hi : s_0, sel3 = xy ? s_lo : s_0;
  const bool writer = hsel == (c >> 1);
  const int stage_ch = hsel * 32 + 16 * (c & 1) + 2 * xy + par;
  const int nchunk = a.C >> 5;
  const int nunits = npg * nchunk;
  const int npairs = (nunits + 1) >> 1;
  __half* stg = sstage + (threadIdx.x >> 5) * 64;
  for (int t = threadIdx.x; t < npg; t += nthr) srec[t] = make_pg_rec(a, pg0 + t);

  for (int64_t b = blockIdx.y; b < a.B; b += gridDim.y) {
    const __half* omb = om + b * a.img_om;
    __syncthreads();  // pg records written; the previous image's gather is done
    for (int t = threadIdx.x; t < npg; t += nthr) {
      // scale = 2^s with max|mask| * 2^s in [2^14, 2^15): |weight| <= |mask|, so hi parts stay finite
      const __half* mk = omb + srec[t].om + 2 * KP;
      float mx = 0.f;
#pragma unroll
      for (int k = 0; k < KP; ++k) mx = fmaxf(mx, fabsf(__half2float(mk[k])));
      uint32_t e = __float_as_uint(mx) >> 23;
      e = min(max(e, 41u), 241u);
      sscale[t] = make_float2(__uint_as_float((268u - e) << 23), __uint_as_float((e - 14u) << 23));
    }
    __syncthreads();
#pragma unroll 2
    for (int it = threadIdx.x; it < n_items; it += nthr) {
      const int p = (int)((uint32_t)it / (uint32_t)KP);
      const int k = it - p * KP;
      float w[4];
      uint32_t o[4];
      sample_setup<__half, KP>(a, srec[p], omb, k, sscale[p].x, w, o);
      const __half2 h01 = __floats2half2_rn(w[0], w[1]);
      const __half2 h23 = __floats2half2_rn(w[2], w[3]);
      const float2 f01 = __half22float2(h01);
      const float2 f23 = __half22float2(h23);
      const uint32_t hb01 = h2_bits(h01), hb23 = h2_bits(h23);
      const uint32_t lb01 = h2_bits(__floats2half2_rn(w[0] - f01.x, w[1] - f01.y));
      const uint32_t lb23 = h2_bits(__floats2half2_rn(w[2] - f23.x, w[3] - f23.y));
      uint2* dst = reinterpret_cast<uint2*>(sq + p * 4 * NSP + (k >> 1)) + (k & 1);
      dst[0] = make_uint2(o[0], __byte_perm(hb01, lb01, 0x5410));
      dst[2 * NSP] = make_uint2(o[1], __byte_perm(hb01, lb01, 0x7632));
      dst[4 * NSP] = make_uint2(o[2], __byte_perm(hb23, lb23, 0x5410));
      dst[6 * NSP] = make_uint2(o[3], __byte_perm(hb23, lb23, 0x7632));
    }
    __syncthreads();
    const __half* vb = value + b * a.img_in;
    __half* obase = out + b * a.img_out;
    for (int pair = threadIdx.x >> 5; pair < npairs; pair += nthr >> 5) {
      int u = 2 * pair + hsel;
      u = u < nunits ? u : nunits - 1;  // odd unit count: the last half-warp repeats a unit, stores nothing
      const int pl = nchunk == 1 ? u : u / nchunk;
      const int chunk = u - pl * nchunk;
      const __half* vt = vb + chunk * 32 + blk * 8;
      const uint4* rq = sq + (pl * 4 + c) * NSP;
      float d0[4] = {0.f, 0.f, 0.f, 0.f}, d1[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int s = 0; s < NS; ++s) {
        const uint4 r = rq[s];
        {
          const uint4 v = __ldg(reinterpret_cast<const uint4*>(ptr_add(vt, r.x)));
          const uint32_t a0 = __byte_perm(r.y, 0u, sel0), a1 = __byte_perm(r.y, 0u, sel1);
          const uint32_t a2 = __byte_perm(r.y, 0u, sel2), a3 = __byte_perm(r.y, 0u, sel3);
          mma_16816(d0, a0, a1, a2, a3, v.x, v.y);
          mma_16816(d1, a0, a1, a2, a3, v.z, v.w);
        }
        if (2 * s + 1 < KP) {
          const uint4 v = __ldg(reinterpret_cast<const uint4*>(ptr_add(vt, r.z)));
          const uint32_t a0 = __byte_perm(r.w, 0u, sel0), a1 = __byte_perm(r.w, 0u, sel1);
          const uint32_t a2 = __byte_perm(r.w, 0u, sel2), a3 = __byte_perm(r.w, 0u, sel3);
          mma_16816(d0, a0, a1, a2, a3, v.x, v.y);
          mma_16816(d1, a0, a1, a2, a3, v.z, v.w);
        }
      }
      if (writer) {
        const float us = sscale[pl].y;
        stg[stage_ch] = __float2half_rn((d0[0] + d0[2]) * us);
        stg[stage_ch + 8] = __float2half_rn((d0[1] + d0[3]) * us);
        stg[stage_ch + 4] = __float2half_rn((d1[0] + d1[2]) * us);
        stg[stage_ch + 12] = __float2half_rn((d1[1] + d1[3]) * us);
      }
      __syncwarp();
      if (lane < 8) {
        const int u2 = 2 * pair + (lane >> 2);
        if (u2 < nunits) {
          const int pl2 = nchunk == 1 ? u2 : u2 / nchunk;
          const int chunk2 = u2 - pl2 * nchunk;
          const uint4 val = *reinterpret_cast<const uint4*>(stg + lane * 8);
          *reinterpret_cast<uint4*>(obase + srec[pl2].out + chunk2 * 32 + (lane & 3) * 8) = val;
        }
      }
      __syncwarp();
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
  if (s->activation != SSM_ACTIVATION_NONE && s->activation != SSM_ACTIVATION_SILU) return SSM_ERR_UNSUPPORTED;
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
    return SSM_ERR_BAD_SIZE;
  a.n_img = (int)n_img;
  grid = dim3((unsigned)((n_img + kThreads - 1) / kThreads), (unsigned)(s->batch < 65535 ? s->batch : 65535));
  return SSM_OK;
}


// ------------------------------------------------------------------------------------------------
// Forward launch plan

enum { kPathDirect = 0, kPathTiled = 1, kPathMma = 2 };
// Shared memory of one tiled block (no opt-in needed up to 48 KB).
constexpr int64_t kFwdSmemLimit = 48 * 1024;

int device_cc_major() {
  int dev = 0, major = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) return 0;
  return major;
}

// Chooses the forward kernel and its launch shape (a.fwd_*, grid); fill_args must have run.
void plan_fwd(const ssm_deform_shape* s, int vec, DeformArgs& a, dim3& grid) {
  a.fwd_path = kPathDirect;
  a.fwd_block = kThreads;
  a.fwd_smem = 0;
  a.n_pg = a.Ho * a.Wo * a.G;  // < n_img < 2^31
  a.cidx = (a.kw / 2) * a.kh + a.kh / 2;
  a.WGC = a.W * a.GC;
  a.fd_G = make_fastdiv((uint32_t)a.G);
  a.fd_Wo = make_fastdiv((uint32_t)a.Wo);
  a.fd_K = make_fastdiv((uint32_t)a.K);
  a.fd_kh = make_fastdiv((uint32_t)a.kh);
  const unsigned gy = (unsigned)(a.B < 65535 ? a.B : 65535);
  if (SSM_DEFORM_FORCE_DIRECT) return;
  const bool k3 = a.kh == 3 && a.kw == 3;
  const int rounds = SSM_DEFORM_TILE_ROUNDS;
  int64_t npg = 0;
  if (SSM_DEFORM_MMA && s->dtype == SSM_FLOAT16 && vec == 8 && a.C % 32 == 0 && k3 && !a.om_bias && !a.silu &&
      device_cc_major() >= 8) {
    npg = a.n_pg < 32 * rounds ? a.n_pg : 32 * rounds;
    const int64_t nsp = ((a.K + 1) / 2) | 1;
    a.fwd_path = kPathMma;
    a.fwd_smem = (int)(npg * 32 + ((npg * 8 + 15) & ~15) + npg * 4 * nsp * 16 + (kThreads / 32) * 64 * 2);
  } else {
    const int kpad = a.K | 1;
    const int64_t rec = 32 + 32 * (int64_t)kpad;    // bytes per pg
    const int per_warp = 32 >> a.tpg_log2;          // pgs per warp (>= 1)
    const int64_t per_round = kThreads >> a.tpg_log2;  // pgs per pass of the block
    npg = per_round * rounds;
    if (npg > kFwdSmemLimit / rec) npg = kFwdSmemLimit / rec;
    if (npg >= per_warp) npg = npg / per_warp * per_warp;
    if (npg < 1) return;  // more than ~1500 points: direct kernel
    if (a.n_pg < npg) {
      const int64_t r = (a.n_pg + per_warp - 1) / per_warp * per_warp;
      if (r < npg) npg = r;
    }
    a.kpad = kpad;
    a.fwd_path = kPathTiled;
    const int64_t pgs_block = npg < per_round ? npg : per_round;
    a.fwd_block = (int)(((pgs_block << a.tpg_log2) + 31) / 32 * 32);
    a.fwd_smem = (int)(npg * rec);
  }
  a.npg = (int)npg;
  // group-major tile order: bands of TH rows, TH ~ sqrt(npg) (a power of two), at most Ho
  int th = 1;
  while ((int64_t)(th * 2) * (th * 2) <= npg) th *= 2;
  if (th > a.Ho) th = a.Ho;
  a.TH = th;
  a.nband = (a.Ho + th - 1) / th;
  a.th_last = a.Ho - (a.nband - 1) * th;
  a.band_sz = th * a.Wo;
  a.npix = a.Ho * a.Wo;
  a.fd_npix = make_fastdiv((uint32_t)a.npix);
  a.fd_band = make_fastdiv((uint32_t)a.band_sz);
  a.fd_th = make_fastdiv((uint32_t)th);
  a.fd_thl = make_fastdiv((uint32_t)a.th_last);
  grid = dim3((unsigned)((a.n_pg + npg - 1) / npg), gy);
}

template <typename T, int VEC>
int launch_fwd_t(const DeformArgs& a, dim3 grid, cudaStream_t st) {
  const bool k3 = a.kh == 3 && a.kw == 3;
  if constexpr (std::is_same<T, __half>::value && VEC == 8) {
    if (a.fwd_path == kPathMma) {
      if (a.K == 9)
        deform_fwd_mma_kernel<9><<<grid, a.fwd_block, a.fwd_smem, st>>>(a);
      else
        deform_fwd_mma_kernel<8><<<grid, a.fwd_block, a.fwd_smem, st>>>(a);
      return ssm_cuda_host::launch_status();
    }
  }
  if (a.fwd_path == kPathTiled) {
    if (k3 && a.K == 9)
      deform_fwd_tiled_kernel<T, VEC, 9><<<grid, a.fwd_block, a.fwd_smem, st>>>(a);
    else if (k3 && a.K == 8)
      deform_fwd_tiled_kernel<T, VEC, 8><<<grid, a.fwd_block, a.fwd_smem, st>>>(a);
    else
      deform_fwd_tiled_kernel<T, VEC, 0><<<grid, a.fwd_block, a.fwd_smem, st>>>(a);
  } else {
    if (k3)
      deform_fwd_direct_kernel<T, VEC, 3><<<grid, kThreads, 0, st>>>(a);
    else
      deform_fwd_direct_kernel<T, VEC, 0><<<grid, kThreads, 0, st>>>(a);
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
                                          const void* offset_mask, const void* offset_bias, void* out,
                                          void* stream) {
  int64_t K = 0;
  const int st = check_shape(shape, &K);
  if (st != SSM_OK) return st;
  const void* ptrs[2] = {value, out};
  const int vec = pick_vec(shape, ptrs, 2, elem_size(shape->dtype));
  DeformArgs a{};
  dim3 grid;
  const int fs = fill_args(shape, K, vec, a, grid);  // size limits first, as the other entry points
  if (fs != SSM_OK) return fs;
  if (!value || !offset_mask || !out) return SSM_ERR_NULL_POINTER;
  a.value = value;
  a.om = offset_mask;
  a.om_bias = offset_bias;
  a.silu = shape->activation == SSM_ACTIVATION_SILU;
  a.out = out;
  plan_fwd(shape, vec, a, grid);
  return launch<true>(shape->dtype, vec, a, grid, static_cast<cudaStream_t>(stream));
}

SSM_API int ssm_deform_aggregate_bwd_cuda(const ssm_deform_shape* shape, const void* value,
                                          const void* offset_mask, const void* grad_out,
                                          float* grad_value, float* grad_offset_mask, void* stream) {
  int64_t K = 0;
  const int st = check_shape(shape, &K);
  if (st != SSM_OK) return st;
  const void* ptrs[2] = {value, grad_out};
  const int vec = pick_vec(shape, ptrs, 2, elem_size(shape->dtype));
  DeformArgs a{};
  dim3 grid;
  const int fs = fill_args(shape, K, vec, a, grid);  // size limits first, as the other entry points
  if (fs != SSM_OK) return fs;
  if (shape->activation != SSM_ACTIVATION_NONE) return SSM_ERR_UNSUPPORTED;  // forward-only epilogue
  if (!value || !offset_mask || !grad_out || !grad_value || !grad_offset_mask)
    return SSM_ERR_NULL_POINTER;
  a.value = value;
  a.om = offset_mask;
  a.gout = grad_out;
  a.gval = grad_value;
  a.gom = grad_offset_mask;
  a.vec_atomic = (vec % 4 == 0) && ssm_cuda_host::aligned(grad_value, 16);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const size_t nval = (size_t)(shape->batch * shape->height * shape->width * shape->groups *
                               shape->group_channels);
  if (cudaMemsetAsync(grad_value, 0, nval * sizeof(float), s) != cudaSuccess) return SSM_ERR_CUDA;
  return launch<false>(shape->dtype, vec, a, grid, s);
}

}  // extern "C"
