// MultiKernelDepthwiseConv (domain version 4) on CUDA: channel-last depthwise convolutions whose kernel size
// depends on the channel group, stride 1, zero "same" padding, then ShuffleNet's channel shuffle and an
// optional exact GELU (docs/ops.md). float32 accumulation; float32 / float16 / bfloat16 storage.
//
// One block computes one unit at a time: a TH x TW spatial tile (up to 16 x 32) of one image for a chunk of
// channels, in three phases separated by barriers.
//  1. Stage: the chunk's channels (planes) are copied from the channel-last input into shared memory as
//     planar tiles in the storage type, with a halo of R rows and HX >= R columns (R the largest kernel
//     radius, HX rounded up to 4 so that windows stay aligned); positions outside the image are stored as
//     zeros, which is the "same" padding. Each plane's central k x k weights (float32), bias and k are staged
//     beside them when the block's chunk changes (with the persistent grid below: once per block).
//  2. Compute: a thread item is one plane x a 4 x 4 block of outputs (4 consecutive columns, 4 rows; 1 row in
//     the small-grid plans below). For each of the rows + k - 1 input rows it reads a window of
//     4 + 2·roundup4(k/2) values with 8- or 16-byte shared loads and adds it into every output row it touches
//     (vertical reuse), the k x k weights held in registers: for k <= 9 the loops are unrolled over a
//     compile-time k; larger kernels take a generic loop. The items of a plane are consecutive, so a warp's
//     lanes usually share k; a warp-uniform dispatch (ballot over the pending lanes' k) keeps mixed warps
//     correct without divergent unrolled loops. Bias, activation and rounding done, each item writes its rows
//     into its output column's plane of an output tile (one 8- or 16-byte store per row).
//  3. Store: each thread gathers one vector of consecutive output channels of one position from the output
//     planes and writes it with one 16- or 8-byte store (or one element on the element path).
//
// Chunks are Q values of q x SS values of s (output channel q·S + s reads input channel s·P + q, S shuffle
// groups of P channels): the planes of a chunk are SS runs of Q consecutive input channels, and with SS = S its
// outputs are the Q·S consecutive channels from q0·S, so both the loads and the stores are contiguous runs.
// The vector paths move VB = 16 or 8 bytes (V = VB / sizeof(T) channels) per load and store; they need C, Q
// and (for S > 1) P to be multiples of V and x, y VB-byte aligned, and take SS = S. Any other shape takes the
// element path (VB = sizeof(T)), where SS may be < S (a very large S).
//
// Shared-memory banks: the V lanes that stage (or gather) one position's vector visit their V planes in an order
// rotated by whole words per lane, so that one store (load) instruction hits different banks; staged rows carry
// a skew of RS elements every 4 rows, so that the windows of consecutive micro-tile rows continue the bank
// pattern of the previous row whatever the tile width. With one tile per image (the small stages) the halo is
// outside the image in every unit: the planes are zeroed once per block and only the image is staged.
//
// The plan (make_plan; cached per shape, alignment and device) picks the tile (the cheapest cover of H and W
// in 4-wide steps, counting the halo), the chunk (the largest Q that keeps two blocks per multiprocessor within
// shared memory, with at least two units per block slot when the batch allows) and the shared-memory pitches
// (RP, RS, PS, OPS: a few candidates, scored by counting the bank wavefronts of the first warps' accesses).
// Where that gives units for at most half the multiprocessors (batch 1), items of one output row, shorter tiles
// and 8-byte chunks make more, smaller units (compile option SSM_DW_SMALL_GRIDS=0 turns this off).
//
// Blocks loop over the units: one resident wave of blocks (a multiple of the chunk count, so that a block
// keeps its channels and stages their weights once), capped at SSM_DW_MAX_BLOCKS, so the grid is within launch
// limits for any shape. Global offsets are 64-bit; coordinates, channels and shared-memory offsets are 32-bit
// (H, W and C are limited to 2^30). Each output is summed in a fixed order (bias, then the taps row by row,
// left to right): results are bitwise reproducible and do not depend on the plan.
#include <math.h>

#include <algorithm>
#include <atomic>
#include <mutex>

#include "cuda_common.cuh"

namespace {

using namespace ssm_cuda;

constexpr int kThreads = 256;
constexpr int kTR = 4;  // output rows of an item (1 in the small-grid plans: more, shorter items)
constexpr int kTC = 4;  // output columns of an item (one window load step)
#ifndef SSM_DW_MAX_BLOCKS
#define SSM_DW_MAX_BLOCKS (1 << 20)
#endif
constexpr int64_t kMaxBlocks = SSM_DW_MAX_BLOCKS;
// Largest tile (multiples of 4); tests/gpu/check_cuda_kernels.py's "dwtile16" variant builds smaller ones.
#ifndef SSM_DW_MAX_TILE_W
#define SSM_DW_MAX_TILE_W 32
#endif
#ifndef SSM_DW_MAX_TILE_H
#define SSM_DW_MAX_TILE_H 16
#endif
// 0: no small-grid plans (one-row items, shorter tiles, narrower chunks where the units would fill at most half
// the multiprocessors; make_plan).
#ifndef SSM_DW_SMALL_GRIDS
#define SSM_DW_SMALL_GRIDS 1
#endif
constexpr bool kSmallGrids = SSM_DW_SMALL_GRIDS != 0;
// Output rows of an item in the small-grid plans: 1 or kTR.
#ifndef SSM_DW_SMALL_GRID_ITEM_ROWS
#define SSM_DW_SMALL_GRID_ITEM_ROWS 1
#endif
constexpr int kSmallGridItemRows = SSM_DW_SMALL_GRID_ITEM_ROWS;
static_assert(kSmallGridItemRows == 1 || kSmallGridItemRows == kTR, "SSM_DW_SMALL_GRID_ITEM_ROWS");
constexpr int64_t kMaxDim = int64_t(1) << 30;
constexpr int64_t kMaxElements = (int64_t(1) << 60) - 1;

// n / d for 0 <= n < 2^31 and a divisor fixed per launch: a multiply-high and a shift (the magic number is
// computed on the host; make_fastdiv), instead of a ~20-instruction integer division in the index arithmetic.
struct FastDiv {
  uint32_t d, mul, shift;
};

FastDiv make_fastdiv(uint32_t d) {
  FastDiv f{d, 0, 0};
  uint32_t s = 0;
  while ((uint64_t(1) << s) < d) ++s;
  f.shift = s;
  f.mul = (uint32_t)(((uint64_t(1) << 32) * ((uint64_t(1) << s) - d)) / d + 1);
  return f;
}

__device__ __forceinline__ int fdiv(int n, const FastDiv& f) {
  return (int)((__umulhi((uint32_t)n, f.mul) + (uint32_t)n) >> f.shift);
}

// n % d with the quotient q = n / d already known.
__device__ __forceinline__ int fmod_q(int n, int q, const FastDiv& f) { return n - q * (int)f.d; }

struct DwArgs {
  const void* x;
  const void* w;
  const void* b;
  void* y;
  int H, W, C;
  int KM;  // kernel_max
  int S, P;
  int gelu;
  int num_groups;
  int gstart[SSM_DWCONV_MAX_GROUPS + 1];  // first channel of each group, then C
  int gk[SSM_DWCONV_MAX_GROUPS];
  // plan
  int TW, TH, MX, M;  // tile, micro-tile columns per tile row, micro-tiles per tile
  int R, HX;          // halo rows, halo columns
  int LW, LH;         // staged region: LH rows x LW columns
  int RP, RS, PS;     // plane row pitch, skew per 4 rows, plane stride (elements; see row_offset)
  int Q, SS, NP;      // chunk: Q x SS planes
  int KK;             // weights per plane (the largest k*k, odd)
  int OPS;            // output tile plane stride (elements; one plane per output column)
  int tiles_x;
  int64_t tiles;  // per image
  int q_chunks, s_chunks;
  int64_t units;
  unsigned out_off, w_off, b_off, k_off;  // shared-memory byte offsets
  // divisors of the index arithmetic: Q, SS, M, MX, TW, NP / V (vectors per position), the staged row width
  FastDiv fQ, fSS, fM, fMX, fTW, fNV, fStageW;
};

struct Unit {
  int64_t img_row;  // b * H
  int y0, x0;       // tile origin
  int q0, s0;       // chunk origin
};

// ------------------------------------------------------------------------------------------------
// Device helpers

__device__ __forceinline__ float gelu_erf(float z) { return 0.5f * z * (1.0f + erff(z * 0.70710678118654752f)); }

// The input channel of plane ls of the unit's chunk, or -1 where the chunk runs past P or S.
__device__ __forceinline__ int plane_channel(const DwArgs& a, const Unit& u, int ls) {
  const int sl = fdiv(ls, a.fQ);
  const int q = u.q0 + fmod_q(ls, sl, a.fQ), s = u.s0 + sl;
  return (q < a.P && s < a.S) ? s * a.P + q : -1;
}

// The output tile column of plane ls (its shuffled channel less the chunk's first).
__device__ __forceinline__ int plane_out_column(const DwArgs& a, int ls) {
  const int sl = fdiv(ls, a.fQ);
  return fmod_q(ls, sl, a.fQ) * a.SS + sl;
}

__device__ __forceinline__ int kernel_of(const DwArgs& a, int c) {
  int g = 0;
  while (g + 1 < a.num_groups && c >= a.gstart[g + 1]) ++g;
  return a.gk[g];
}

// 4 consecutive shared-memory values (8- or 16-byte aligned) as floats.
template <typename T>
__device__ __forceinline__ void lds4(const T* p, float* o) {
  if constexpr (sizeof(T) == 4) {
    const float4 v = *reinterpret_cast<const float4*>(p);
    o[0] = v.x;
    o[1] = v.y;
    o[2] = v.z;
    o[3] = v.w;
  } else {
    const uint2 v = *reinterpret_cast<const uint2*>(p);
    Words<T>::unpack(v.x, o);
    Words<T>::unpack(v.y, o + 2);
  }
}

// ------------------------------------------------------------------------------------------------
// Phase 1: weights, bias and kernel size of each plane; the haloed input tile.

// The taps of plane ls are wsm[ls·KK + t], t = i·k + j < k·k. Each thread issues kParamBatch (scattered, 2- or
// 4-byte) weight loads before it stores them.
constexpr int kParamBatch = 8;

template <typename T>
__device__ void stage_params(const DwArgs& a, const Unit& u, float* wsm, float* bsm, int* ksm) {
  const T* __restrict__ w = static_cast<const T*>(a.w);
  const T* __restrict__ bias = static_cast<const T*>(a.b);
  for (int ls = threadIdx.x; ls < a.NP; ls += blockDim.x) {
    const int c = plane_channel(a, u, ls);
    ksm[ls] = c < 0 ? 0 : kernel_of(a, c);
    bsm[ls] = c < 0 ? 0.f : ldf(bias + c);
  }
  const int n = a.NP * a.KK;
  for (int base = threadIdx.x; base < n; base += kParamBatch * blockDim.x) {
    float v[kParamBatch];
#pragma unroll
    for (int b = 0; b < kParamBatch; ++b) {
      const int idx = base + b * blockDim.x;
      const int ls = idx / a.KK, t = idx % a.KK;
      const int c = idx < n ? plane_channel(a, u, ls) : -1;
      const int k = c < 0 ? 0 : kernel_of(a, c);
      const int lo = a.KM / 2 - k / 2;
      v[b] = t < k * k ? ldf(w + (int64_t)c * a.KM * a.KM + (lo + t / k) * a.KM + lo + t % k) : 0.f;
    }
#pragma unroll
    for (int b = 0; b < kParamBatch; ++b) {
      const int idx = base + b * blockDim.x;
      if (idx < n) wsm[idx] = v[b];
    }
  }
}

// Offset of staged row y in its plane: rows are RP apart, plus RS every 4 rows, so that the window loads of
// consecutive micro-tile rows (4 rows apart) fall in the banks that continue the previous row's (see layout).
__device__ __forceinline__ int row_offset(const DwArgs& a, int y) { return y * a.RP + (y >> 2) * a.RS; }

__device__ __forceinline__ bool in_image(const DwArgs& a, int gy, int gx) {
  return gy >= 0 && gy < a.H && gx >= 0 && gx < a.W;
}

// Vectors of W = VB / 4 32-bit words (VB = 8 or 16 bytes).
template <int W>
__device__ __forceinline__ void load_words(const void* p, uint32_t (&w)[W]) {
  if constexpr (W == 4) {
    const uint4 v = __ldg(static_cast<const uint4*>(p));
    w[0] = v.x, w[1] = v.y, w[2] = v.z, w[3] = v.w;
  } else {
    const uint2 v = __ldg(static_cast<const uint2*>(p));
    w[0] = v.x, w[1] = v.y;
  }
}

template <int W>
__device__ __forceinline__ void store_words(void* p, const uint32_t (&w)[W]) {
  if constexpr (W == 4) {
    *static_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
  } else {
    *static_cast<uint2*>(p) = make_uint2(w[0], w[1]);
  }
}

// w[j] <- w[(j + by) % W] with selects (by differs between lanes: no divergent branches, no local memory).
template <int W>
__device__ __forceinline__ void rotate_words(uint32_t (&w)[W], int by) {
  if constexpr (W == 2) {
    const bool odd = by & 1;
    const uint32_t w0 = odd ? w[1] : w[0], w1 = odd ? w[0] : w[1];
    w[0] = w0, w[1] = w1;
  } else {
    const int s = by & 3;
    uint32_t t[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint32_t a0 = w[j], a1 = w[(j + 1) & 3], a2 = w[(j + 2) & 3], a3 = w[(j + 3) & 3];
      t[j] = s == 0 ? a0 : s == 1 ? a1 : s == 2 ? a2 : a3;
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) w[j] = t[j];
  }
}

// The storage bits of element e of a word vector, and the reverse.
template <typename T, int W>
__device__ __forceinline__ void put_bits(T* dst, const uint32_t (&w)[W], int e) {
  if constexpr (sizeof(T) == 4) {
    *reinterpret_cast<uint32_t*>(dst) = w[e];
  } else {
    *reinterpret_cast<uint16_t*>(dst) = (uint16_t)(w[e >> 1] >> (16 * (e & 1)));
  }
}

template <typename T, int W>
__device__ __forceinline__ void get_bits(const T* src, uint32_t (&w)[W], int e) {
  if constexpr (sizeof(T) == 4) {
    w[e] = *reinterpret_cast<const uint32_t*>(src);
  } else {
    const uint32_t b = *reinterpret_cast<const uint16_t*>(src);
    w[e >> 1] = (e & 1) ? (w[e >> 1] | (b << 16)) : b;
  }
}

// The vector lanes of a position write (and read) their V planes in an order rotated by whole words, element
// e of the rotated vector being channel element (e + v·EPW) mod V: at each step the lanes of one position
// touch planes in different banks (the planes v·V + i alone are a multiple of V plane strides apart).
__device__ __forceinline__ int rotated_element(int e, int v, int V, int EPW) { return (e + v * EPW) & (V - 1); }

// A thread moves one vector (V consecutive channels of one run; V = 1 on the element path) of one position;
// the vectors of a position are consecutive threads, so a warp reads whole runs of positions. Each thread
// issues kStageBatch loads before it stores them (several loads in flight per thread). With one tile per image
// (a.tiles == 1) the planes were zeroed once and only the image's positions are staged, the halo being
// outside the image in every unit.
constexpr int kStageBatch = 8;

template <typename T, int VB>
__device__ void stage_input(const DwArgs& a, const Unit& u, T* planes) {
  constexpr int V = VB / (int)sizeof(T);
  constexpr int W = VB >= 4 ? VB / 4 : 1, EPW = 4 / (int)sizeof(T);
  const T* __restrict__ x = static_cast<const T*>(a.x);
  const int nvp = a.NP / V;
  const bool whole = a.tiles == 1;
  const int width = whole ? a.W : a.LW;  // a.fStageW divides by it
  const int n = (whole ? a.H : a.LH) * width * nvp;
  for (int base = threadIdx.x; base < n; base += kStageBatch * blockDim.x) {
    uint32_t w[kStageBatch][W];
    T e1[kStageBatch];
    int dst[kStageBatch], vv[kStageBatch];
#pragma unroll
    for (int t = 0; t < kStageBatch; ++t) {
      const int idx = base + t * blockDim.x;
      const int p = fdiv(idx, a.fNV), v = fmod_q(idx, p, a.fNV);
      const int py = fdiv(p, a.fStageW);
      const int hy = py + (whole ? a.R : 0), hx = fmod_q(p, py, a.fStageW) + (whole ? a.HX : 0);
      const int gy = u.y0 - a.R + hy, gx = u.x0 - a.HX + hx;
      const int c = plane_channel(a, u, v * V);  // V > 1: the vector's channels are all valid or all not
      const bool inside = idx < n && c >= 0 && in_image(a, gy, gx);
      const int64_t off = ((u.img_row + gy) * a.W + gx) * a.C + c;
      dst[t] = idx < n ? v * V * a.PS + row_offset(a, hy) + hx : -1;
      vv[t] = v;
      if constexpr (V == 1) {
        e1[t] = inside ? x[off] : from_f<T>(0.f);  // zeros: the "same" padding
      } else {
#pragma unroll
        for (int j = 0; j < W; ++j) w[t][j] = 0u;
        if (inside) load_words<W>(x + off, w[t]);
      }
    }
#pragma unroll
    for (int t = 0; t < kStageBatch; ++t) {
      if (dst[t] < 0) continue;
      if constexpr (V == 1) {
        planes[dst[t]] = e1[t];
      } else {
        rotate_words<W>(w[t], vv[t]);
#pragma unroll
        for (int e = 0; e < V; ++e) put_bits<T, W>(planes + dst[t] + rotated_element(e, vv[t], V, EPW) * a.PS, w[t], e);
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Phase 2: one item = one plane x TR rows (kTR, or 1 in the small-grid plans) x kTC columns of outputs.

// Offsets into the shared arrays (kept as offsets from the shared base so that the accesses compile to
// shared-memory instructions).
struct Item {
  int plane;       // first element of the plane's staged tile
  int wk;          // first of its k*k weights
  float bias;
  int row0, col0;  // the item's first output row / column in the tile
  int out;         // output tile element of the item's first output
};

struct Smem {
  const void* planes;
  const float* wsm;
  void* otile;
};

// The item's outputs (bias included) through the activation, rounded, into its output-tile plane: one 8- or
// 16-byte store per row.
template <typename T, int TR>
__device__ __forceinline__ void write_item(const DwArgs& a, const float (&acc)[TR][kTC], T* out) {
#pragma unroll
  for (int tr = 0; tr < TR; ++tr) {
    float z[kTC];
#pragma unroll
    for (int tc = 0; tc < kTC; ++tc) z[tc] = a.gelu ? gelu_erf(acc[tr][tc]) : acc[tr][tc];
    store_vec<T, kTC>(out + tr * a.TW, z);
  }
}

template <typename T, int K, int TR>
__device__ __forceinline__ void item_fixed(const DwArgs& a, const Smem& sm, const Item& it) {
  constexpr int r = K / 2;
  constexpr int r4 = (r + 3) & ~3;   // window start rounded down to a 4-element boundary
  constexpr int NW = kTC + 2 * r4;   // window length (multiple of 4)
  float w[K * K];
#pragma unroll
  for (int t = 0; t < K * K; ++t) w[t] = sm.wsm[it.wk + t];
  float acc[TR][kTC];
#pragma unroll
  for (int tr = 0; tr < TR; ++tr) {
#pragma unroll
    for (int tc = 0; tc < kTC; ++tc) acc[tr][tc] = it.bias;
  }
  const T* src = static_cast<const T*>(sm.planes) + it.plane + it.col0 + a.HX - r4;
  const int y0 = it.row0 + a.R - r;
#pragma unroll
  for (int rr = 0; rr < TR + K - 1; ++rr) {
    float win[NW];
    const T* row = src + row_offset(a, y0 + rr);
#pragma unroll
    for (int v = 0; v < NW / 4; ++v) lds4<T>(row + 4 * v, win + 4 * v);
    // Input row rr feeds output row tr through kernel row i = rr - tr; per output the taps are added row by
    // row (i ascending), then column by column, as in item_generic.
#pragma unroll
    for (int i = 0; i < K; ++i) {
      const int tr = rr - i;
      if (tr < 0 || tr >= TR) continue;
#pragma unroll
      for (int j = 0; j < K; ++j) {
#pragma unroll
        for (int tc = 0; tc < kTC; ++tc) acc[tr][tc] = fmaf(win[r4 - r + tc + j], w[i * K + j], acc[tr][tc]);
      }
    }
  }
  write_item<T, TR>(a, acc, static_cast<T*>(sm.otile) + it.out);
}

// Any odd k up to SSM_DWCONV_MAX_KERNEL: weights and inputs read from shared memory tap by tap.
template <typename T, int TR>
__device__ __forceinline__ void item_generic(const DwArgs& a, const Smem& sm, const Item& it, int k) {
  const int r = k / 2;
  float acc[TR][kTC];
#pragma unroll
  for (int tr = 0; tr < TR; ++tr) {
#pragma unroll
    for (int tc = 0; tc < kTC; ++tc) acc[tr][tc] = it.bias;
  }
  const T* src = static_cast<const T*>(sm.planes) + it.plane + it.col0 + a.HX - r;
  const int y0 = it.row0 + a.R - r;
  for (int i = 0; i < k; ++i) {
    for (int j = 0; j < k; ++j) {
      const float wv = sm.wsm[it.wk + i * k + j];
#pragma unroll
      for (int tr = 0; tr < TR; ++tr) {
        const T* p = src + row_offset(a, y0 + i + tr) + j;
#pragma unroll
        for (int tc = 0; tc < kTC; ++tc) acc[tr][tc] = fmaf(to_f(p[tc]), wv, acc[tr][tc]);
      }
    }
  }
  write_item<T, TR>(a, acc, static_cast<T*>(sm.otile) + it.out);
}

template <typename T, int TR>
__device__ __forceinline__ void run_item(const DwArgs& a, const Smem& sm, const Item& it, int k) {
  switch (k) {
    case 1: item_fixed<T, 1, TR>(a, sm, it); break;
    case 3: item_fixed<T, 3, TR>(a, sm, it); break;
    case 5: item_fixed<T, 5, TR>(a, sm, it); break;
    case 7: item_fixed<T, 7, TR>(a, sm, it); break;
    case 9: item_fixed<T, 9, TR>(a, sm, it); break;
    default: item_generic<T, TR>(a, sm, it, k); break;
  }
}

template <typename T, int TR>
__device__ void compute(const DwArgs& a, const Smem& sm, const float* bsm, const int* ksm) {
  const int items = a.NP * a.M;
  const int lane = threadIdx.x & 31;
  // base is the same for the 32 lanes of a warp, so every lane takes part in every ballot and shuffle.
  for (int base = (int)threadIdx.x - lane; base < items; base += blockDim.x) {
    const int item = base + lane;
    int k = 0;
    Item it{};
    if (item < items) {
      const int ls = fdiv(item, a.fM), m = fmod_q(item, ls, a.fM);
      const int my = fdiv(m, a.fMX);
      k = ksm[ls];
      it.plane = ls * a.PS;
      it.wk = ls * a.KK;
      it.bias = bsm[ls];
      it.row0 = my * TR;
      it.col0 = fmod_q(m, my, a.fMX) * kTC;
      it.out = plane_out_column(a, ls) * a.OPS + it.row0 * a.TW + it.col0;
    }
    bool pending = k > 0;  // planes past the channel range have k = 0
    unsigned mask;
    while ((mask = __ballot_sync(kFullMask, pending)) != 0u) {
      const int kk = __shfl_sync(kFullMask, k, __ffs(mask) - 1);
      if (pending && k == kk) {
        pending = false;
        run_item<T, TR>(a, sm, it, kk);
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Phase 3: the output tile to global memory (positions inside the image only).

// Vector paths: SS = S, so the chunk's outputs are the NP channels from q0·S (those from C on belong to the
// planes past P of a last, partial chunk).
template <typename T, int VB>
__device__ void store_output_vec(const DwArgs& a, const Unit& u, const T* otile) {
  constexpr int V = VB / (int)sizeof(T);
  constexpr int W = VB / 4, EPW = 4 / (int)sizeof(T);
  T* __restrict__ y = static_cast<T*>(a.y);
  const int nvo = a.NP / V;  // a.fNV divides by it
  const int n = a.TH * a.TW * nvo;
  for (int idx = threadIdx.x; idx < n; idx += blockDim.x) {
    const int p = fdiv(idx, a.fNV), v = fmod_q(idx, p, a.fNV);
    const int o = u.q0 * a.S + v * V;
    const int py = fdiv(p, a.fTW);
    const int gy = u.y0 + py, gx = u.x0 + fmod_q(p, py, a.fTW);
    if (o >= a.C || gy >= a.H || gx >= a.W) continue;
    uint32_t w[W];
    const T* src = otile + v * V * a.OPS + p;
#pragma unroll
    for (int e = 0; e < V; ++e) get_bits<T, W>(src + rotated_element(e, v, V, EPW) * a.OPS, w, e);
    rotate_words<W>(w, W - (v & (W - 1)));  // back to channel order
    store_words<W>(y + ((u.img_row + gy) * a.W + gx) * a.C + o, w);
  }
}

template <typename T>
__device__ void store_output_scalar(const DwArgs& a, const Unit& u, const T* otile) {
  T* __restrict__ y = static_cast<T*>(a.y);
  const int n = a.TH * a.TW * a.NP;
  for (int idx = threadIdx.x; idx < n; idx += blockDim.x) {
    const int p = fdiv(idx, a.fNV), col = fmod_q(idx, p, a.fNV);  // V = 1: NV = NP
    const int ql = fdiv(col, a.fSS);
    const int q = u.q0 + ql, s = u.s0 + fmod_q(col, ql, a.fSS);
    const int py = fdiv(p, a.fTW);
    const int gy = u.y0 + py, gx = u.x0 + fmod_q(p, py, a.fTW);
    if (q >= a.P || s >= a.S || gy >= a.H || gx >= a.W) continue;
    y[((u.img_row + gy) * a.W + gx) * a.C + q * a.S + s] = otile[col * a.OPS + p];
  }
}

// ------------------------------------------------------------------------------------------------

// VB: bytes per global load / store (16 or 8: vector paths; sizeof(T): element path).
template <typename T, int VB, int TR>
__global__ void __launch_bounds__(kThreads, 2) dwconv_kernel(const DwArgs a) {
  extern __shared__ __align__(16) unsigned char smem[];
  T* planes = reinterpret_cast<T*>(smem);
  T* otile = reinterpret_cast<T*>(smem + a.out_off);
  float* wsm = reinterpret_cast<float*>(smem + a.w_off);
  float* bsm = reinterpret_cast<float*>(smem + a.b_off);
  int* ksm = reinterpret_cast<int*>(smem + a.k_off);
  const int chunks = a.q_chunks * a.s_chunks;
  int staged_chunk = -1;
  if (a.tiles == 1) {  // the halo (outside the image in every unit) stays zero; see stage_input
    uint4* z = reinterpret_cast<uint4*>(smem);
    for (unsigned i = threadIdx.x; i < a.out_off / 16; i += blockDim.x) z[i] = make_uint4(0u, 0u, 0u, 0u);
  }
  // Units: chunk fastest, then tile, then image (neighbouring tiles share their halos in L2).
  for (int64_t unit = blockIdx.x; unit < a.units; unit += gridDim.x) {
    const int chunk = (int)(unit % chunks);
    const int64_t rest = unit / chunks;
    const int64_t tile = rest % a.tiles;
    Unit u;
    u.img_row = rest / a.tiles * a.H;
    u.y0 = (int)(tile / a.tiles_x) * a.TH;
    u.x0 = (int)(tile % a.tiles_x) * a.TW;
    u.q0 = (chunk / a.s_chunks) * a.Q;
    u.s0 = (chunk % a.s_chunks) * a.SS;
    __syncthreads();  // the previous unit is done with shared memory
    if (chunk != staged_chunk) {
      stage_params<T>(a, u, wsm, bsm, ksm);
      staged_chunk = chunk;
    }
    stage_input<T, VB>(a, u, planes);
    __syncthreads();
    compute<T, TR>(a, Smem{planes, wsm, otile}, bsm, ksm);
    __syncthreads();
    if constexpr (VB > (int)sizeof(T)) {
      store_output_vec<T, VB>(a, u, otile);
    } else {
      store_output_scalar<T>(a, u, otile);
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Host side

bool odd_kernel(int64_t k) { return k >= 1 && k <= SSM_DWCONV_MAX_KERNEL && k % 2 == 1; }

// a * b * c * d <= kMaxElements, all factors >= 0.
bool within_elements(int64_t a, int64_t b, int64_t c, int64_t d) {
  const int64_t f[4] = {a, b, c, d};
  int64_t n = 1;
  for (int64_t v : f) {
    if (v == 0) return true;
    if (n > kMaxElements / v) return false;
    n *= v;
  }
  return true;
}

int check_shape(const ssm_dwconv_shape* s) {
  if (s == nullptr) return SSM_ERR_NULL_POINTER;
  if (s->dtype != SSM_FLOAT32 && s->dtype != SSM_FLOAT16 && s->dtype != SSM_BFLOAT16) return SSM_ERR_BAD_DTYPE;
  if (s->batch < 0 || s->height < 1 || s->width < 1 || s->channels < 1) return SSM_ERR_BAD_SIZE;
  if (!odd_kernel(s->kernel_max)) return SSM_ERR_BAD_SIZE;
  if (s->num_groups < 1 || s->num_groups > SSM_DWCONV_MAX_GROUPS) return SSM_ERR_BAD_SIZE;
  int64_t total = 0;
  for (int g = 0; g < s->num_groups; ++g) {
    if (!odd_kernel(s->kernel_sizes[g]) || s->kernel_sizes[g] > s->kernel_max) return SSM_ERR_BAD_SIZE;
    if (s->group_channels[g] < 1) return SSM_ERR_BAD_SIZE;
    total += s->group_channels[g];
  }
  if (total != s->channels) return SSM_ERR_BAD_SIZE;
  if (s->shuffle_groups < 1 || s->channels % s->shuffle_groups != 0) return SSM_ERR_BAD_SIZE;
  if (s->activation != SSM_ACTIVATION_NONE && s->activation != SSM_ACTIVATION_GELU) return SSM_ERR_UNSUPPORTED;
  // Limits of this kernel (docs/ops.md, "Limits").
  if (s->height > kMaxDim || s->width > kMaxDim || s->channels > kMaxDim) return SSM_ERR_BAD_SIZE;
  if (!within_elements(s->batch, s->height, s->width, s->channels)) return SSM_ERR_BAD_SIZE;
  return SSM_OK;
}

int round_up(int v, int m) { return (v + m - 1) / m * m; }

// Tile extent along one axis: the multiple of 4 (up to max_tile) with the least cost for the whole axis, the
// computed outputs (weight 4: every output costs all its taps) plus the staged positions with their halo.
int pick_tile(int64_t n, int halo, int max_tile) {
  int best = 4;
  int64_t best_cost = -1;
  for (int t = 4; t <= max_tile; t += 4) {
    const int64_t tiles = (n + t - 1) / t;
    const int64_t cost = tiles * (4 * t + t + 2 * halo);
    if (best_cost < 0 || cost <= best_cost) {
      best_cost = cost;
      best = t;
    }
    if (t >= n) break;
  }
  return best;
}

// Shared-memory wavefronts of one warp-wide access of `width` bytes per lane at the byte addresses addr[0..n):
// lanes are served in phases of 128 / width lanes (all 32 for 4 bytes or less); a phase costs the largest
// number of distinct 4-byte words that fall in one of the 32 banks.
int bank_wavefronts(const int* addr, int n, int width) {
  const int phase = width <= 4 ? 32 : 128 / width;
  int total = 0;
  for (int p0 = 0; p0 < n; p0 += phase) {
    int words[128];
    int m = 0;
    for (int l = p0; l < p0 + phase && l < n; ++l) {
      for (int b = addr[l] / 4; b <= (addr[l] + width - 1) / 4; ++b) words[m++] = b;
    }
    std::sort(words, words + m);
    int per_bank[32] = {0};
    int worst = 0;
    for (int i = 0; i < m; ++i) {
      if (i > 0 && words[i] == words[i - 1]) continue;
      const int c = ++per_bank[words[i] % 32];
      worst = c > worst ? c : worst;
    }
    total += worst;
  }
  return total;
}

struct Plan {
  int64_t H, W;  // image
  int vb;  // bytes per global access: 16 or 8 (vector paths) or the element size
  int V;   // channels per global access
  int TW, TH, TR, MX, M, R, HX, LW, LH, RP, RS, PS, Q, SS, NP, KK, OPS;
  int tiles_x;
  int64_t tiles;
  int q_chunks, s_chunks;
  int64_t units;
  int64_t grid;  // blocks: all units, or one resident wave (a multiple of the chunk count) that loops over them
  unsigned out_off, w_off, b_off, k_off, smem;
};

constexpr int kSimWarps = 4;  // warps whose accesses the layout search counts

// Average wavefronts per warp instruction of the accesses of the first kSimWarps warps; `lane_addr(i)` is the
// byte address of lane i of the block (i < count).
template <typename F>
double average_wavefronts(int count, int width, F lane_addr) {
  int addr[32];
  int total = 0, warps = 0;
  for (int w0 = 0; w0 < count && warps < kSimWarps; w0 += 32, ++warps) {
    const int n = count - w0 < 32 ? count - w0 : 32;
    for (int l = 0; l < n; ++l) addr[l] = lane_addr(w0 + l);
    total += bank_wavefronts(addr, n, width);
  }
  return warps ? (double)total / warps : 0.0;
}

// Shared-memory layout for NP planes: RP, PS (staged input) and OPS (output tile) picked among a few
// candidates by the bank wavefronts of the four access patterns, each weighted by its warp instructions per
// output (window loads, staging stores, output stores, output gathers); false when it exceeds `budget`.
// The row skew RS makes a micro-tile row (4 staged rows) RP + RS / 4 window slots long modulo the slots of a
// bank phase, congruent to MX: the window slots of a plane's items then follow the item numbering.
bool layout(Plan& p, int es, size_t budget) {
  const size_t fixed = (size_t)p.NP * (p.KK + 2) * 4 + 32;
  if ((size_t)p.NP * (p.LH * round_up(p.LW, 4) + p.TH * p.TW) * es + fixed > budget) return false;  // at least
  const int items = p.NP * p.M;
  const int V = p.V, EPW = 4 / es;
  const int nvp = p.NP / V;
  const int kmax = p.R * 2 + 1, r4 = round_up(p.R, 4);
  const double w_window = (double)(p.TR + kmax - 1) * (kTC + 2 * r4) / 4 / (p.TR * kTC);
  const bool whole = p.tiles == 1;  // only the image's positions are staged (stage_input)
  const int stage_w = whole ? (int)p.W : p.LW, stage_h = whole ? (int)p.H : p.LH;
  const double w_stage = (double)stage_w * stage_h / (p.TW * p.TH);  // one store per staged element
  const auto plane_of = [&](int v) { return V > 1 ? v * V + ((v * EPW) & (V - 1)) : v; };  // step e = 0
  const int slots = 32 / es;  // 4-element window slots per 128 bytes
  double best = -1;
  const int rp0 = round_up(p.LW, 4);
  for (int rp = rp0; rp < rp0 + 32; rp += 4) {
    const int rs = 4 * (((p.MX - rp) % slots + slots) % slots);
    const auto row_off = [&](int y) { return y * rp + (y >> 2) * rs; };
    const int ps0 = round_up(row_off(p.LH - 1) + rp, 4);
    for (int ps = ps0; ps < ps0 + 64; ps += 4) {
      const double win = average_wavefronts(items, 4 * es, [&](int i) {
        const int ls = i / p.M, m = i % p.M;
        return (ls * ps + row_off((m / p.MX) * p.TR) + (m % p.MX) * kTC) * es;
      });
      const double stage = average_wavefronts(stage_h * stage_w * nvp, es, [&](int i) {
        const int v = i % nvp, q = i / nvp;
        const int hy = q / stage_w + (whole ? p.R : 0), hx = q % stage_w + (whole ? p.HX : 0);
        return (plane_of(v) * ps + row_off(hy) + hx) * es;
      });
      const double cost = w_window * win + w_stage * stage;
      if (best < 0 || cost < best - 1e-9) {
        best = cost;
        p.RP = rp;
        p.RS = rs;
        p.PS = ps;
      }
    }
  }
  const int npos = p.TH * p.TW;
  best = -1;
  for (int ops = round_up(npos, 4), t = 0; t < 16; ++t, ops += 4) {
    const double out = average_wavefronts(items, 4 * es, [&](int i) {
      const int ls = i / p.M, m = i % p.M;
      const int col = (ls % p.Q) * p.SS + ls / p.Q;
      return (col * ops + (m / p.MX) * p.TR * p.TW + (m % p.MX) * kTC) * es;
    });
    const double gather = average_wavefronts(npos * nvp, es, [&](int i) {
      return (plane_of(i % nvp) * ops + i / nvp) * es;
    });
    const double cost = 0.25 * out + gather;
    if (best < 0 || cost < best - 1e-9) {
      best = cost;
      p.OPS = ops;
    }
  }
  const size_t planes = ((size_t)p.NP * p.PS * es + 15) / 16 * 16;
  const size_t otile = ((size_t)p.NP * p.OPS * es + 15) / 16 * 16;
  const size_t total = planes + otile + (size_t)p.NP * (p.KK + 2) * 4;
  if (total > budget) return false;
  p.out_off = (unsigned)planes;
  p.w_off = (unsigned)(planes + otile);
  p.b_off = p.w_off + (unsigned)(p.NP * p.KK * 4);
  p.k_off = p.b_off + (unsigned)(p.NP * 4);
  p.smem = (unsigned)total;
  return true;
}

void set_chunks(Plan& p, int64_t batch, int S, int P) {
  p.NP = p.Q * p.SS;
  p.q_chunks = (P + p.Q - 1) / p.Q;
  p.s_chunks = (S + p.SS - 1) / p.SS;
  p.units = batch * p.tiles * p.q_chunks * p.s_chunks;
}

// Grid: with more units than two blocks per multiprocessor, one wave of 2 x sms blocks rounded down to a
// multiple of the chunk count, so that a block's units (unit, unit + grid, ...) share its chunk and the block
// stages the chunk's weights once (and, with one tile per image, zeroes the halo once).
void set_grid(Plan& p, int sms) {
  const int64_t chunks = (int64_t)p.q_chunks * p.s_chunks;
  const int64_t wave = 2 * (int64_t)sms;
  p.grid = p.units <= wave ? p.units : (wave >= chunks ? wave / chunks * chunks : chunks);
  if (p.grid > kMaxBlocks) p.grid = kMaxBlocks / chunks * chunks > 0 ? kMaxBlocks / chunks * chunks : kMaxBlocks;
}

bool fits_chunk(Plan& p, int q, int64_t batch, int S, int P, int es, size_t budget) {
  p.Q = q;
  set_chunks(p, batch, S, P);
  return layout(p, es, budget);
}

// Vector path of vb bytes (SS = S): P split into n chunks of Q = ceil(P / n) rounded up to V channels, with n
// the least number that fits shared memory and gives at least 2 x sms units (when P allows); false when not
// even Q = V fits.
bool plan_vector_chunks(Plan& p, int64_t batch, int S, int P, int es, size_t budget, int sms) {
  p.SS = S;
  const int V = p.V;
  if (!fits_chunk(p, V, batch, S, P, es, budget)) return false;
  const int64_t per_chunk = batch * p.tiles;  // units per chunk of channels
  const int64_t n_units = (2 * (int64_t)sms + per_chunk - 1) / per_chunk;
  const int n_max = (P + V - 1) / V;
  const int n0 = (int)(n_units < n_max ? n_units : n_max);
  // the largest fitting Q (in units of V) not above ceil(P / n0): binary search, layout grows with Q
  int lo = 1, hi = round_up((P + n0 - 1) / n0, V) / V;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (fits_chunk(p, mid * V, batch, S, P, es, budget)) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  // the same number of chunks, balanced (never larger than the Q found)
  const int n = (P + lo * V - 1) / (lo * V);
  return fits_chunk(p, round_up((P + n - 1) / n, V), batch, S, P, es, budget);
}

// Element path: up to 1024 planes, SS = S when S of them fit.
bool plan_element_chunks(Plan& p, int64_t batch, int S, int P, int es, size_t budget, int sms) {
  for (int np = 1024; np >= 1; np /= 2) {
    p.SS = S < np ? S : np;
    p.Q = np / p.SS < P ? np / p.SS : P;
    set_chunks(p, batch, S, P);
    if (p.NP > 32 && p.units < 2 * (int64_t)sms) continue;
    if (layout(p, es, budget)) return true;
  }
  return false;
}

// The plan for tiles of th rows and items of tr rows: the vector path of vb = max_vb bytes, else of 8, else the
// element path; false when nothing fits `budget`.
bool plan_rows(const ssm_dwconv_shape* s, const void* x, const void* y, size_t budget, int sms, int th, int tr,
               int max_vb, Plan& p) {
  const int es = s->dtype == SSM_FLOAT32 ? 4 : 2;
  const int C = (int)s->channels, S = s->shuffle_groups, P = C / S;
  p.TH = th;
  p.TR = tr;
  p.MX = p.TW / kTC;
  p.M = p.MX * (p.TH / tr);
  p.LW = p.TW + 2 * p.HX;
  p.LH = p.TH + 2 * p.R;
  p.tiles_x = (int)((s->width + p.TW - 1) / p.TW);
  p.tiles = (int64_t)p.tiles_x * ((s->height + p.TH - 1) / p.TH);
  for (int vb = max_vb; vb >= 8; vb /= 2) {
    p.vb = vb;
    p.V = vb / es;
    const bool fits = ssm_cuda_host::aligned(x, vb) && ssm_cuda_host::aligned(y, vb) && C % p.V == 0 &&
                      (S == 1 || P % p.V == 0);
    if (fits && plan_vector_chunks(p, s->batch, S, P, es, budget, sms)) return true;
  }
  p.vb = es;
  p.V = 1;
  return plan_element_chunks(p, s->batch, S, P, es, budget, sms);
}

// false when nothing fits `budget` (not expected: one plane of the largest tile takes a few KB).
bool make_plan(const ssm_dwconv_shape* s, const void* x, const void* y, size_t budget, int sms, Plan& p) {
  int kmax = 1;
  for (int g = 0; g < s->num_groups; ++g) kmax = s->kernel_sizes[g] > kmax ? s->kernel_sizes[g] : kmax;
  p = Plan{};
  p.H = s->height;
  p.W = s->width;
  p.KK = kmax * kmax;
  p.R = kmax / 2;
  p.HX = round_up(p.R, 4);
  p.TW = pick_tile(s->width, p.HX, SSM_DW_MAX_TILE_W);
  int th = pick_tile(s->height, p.R, SSM_DW_MAX_TILE_H);
  while (th >= 4 && !plan_rows(s, x, y, budget, sms, th, kTR, 16, p)) th -= 4;
  if (th < 4) return false;
  if (!kSmallGrids || 2 * p.units > sms) return true;
  // Small grids (batch 1): units for at most half the multiprocessors leave most of the GPU idle while a few
  // warps per block each work through long items (a 4 x 4 item of a 9 x 9 kernel is some 1300 dependent-ish
  // FMAs). Items of one row spread a unit over four times the threads; shorter tiles (the width is kept: a
  // warp's items then stay within one plane's kernel size) and 8-byte chunks of half the channels give more,
  // smaller units. Take the first candidate, tallest tile and widest vectors first, with a unit per
  // multiprocessor, else the one with the most units. Each output is the same sum in the same order whatever
  // the plan, so the results do not change.
  Plan best = p;
  if (!plan_rows(s, x, y, budget, sms, th, kSmallGridItemRows, 16, best)) best = p;
  for (int t = th; t >= 4; t -= 4) {
    for (int vb = 16; vb >= 8; vb /= 2) {
      Plan c = p;
      if (!plan_rows(s, x, y, budget, sms, t, kSmallGridItemRows, vb, c) || c.units <= best.units) continue;
      best = c;
      if (best.units >= sms) {
        p = best;
        return true;
      }
    }
  }
  p = best;
  return true;
}

bool make_plan_and_grid(const ssm_dwconv_shape* s, const void* x, const void* y, size_t budget, int sms, Plan& p) {
  if (!make_plan(s, x, y, budget, sms, p)) return false;
  set_grid(p, sms);
  return true;
}

// Plans are cached (the bank-conflict search costs some microseconds; a model calls a few shapes over and over).
struct PlanKey {
  int64_t dims[4];  // batch, height, width, channels
  int32_t attrs[5];  // kernel_max, num_groups, shuffle_groups, activation, dtype
  int32_t groups[2 * SSM_DWCONV_MAX_GROUPS];
  int32_t align_x, align_y, device;
  bool operator==(const PlanKey& o) const {
    return std::equal(dims, dims + 4, o.dims) && std::equal(attrs, attrs + 5, o.attrs) &&
           std::equal(groups, groups + 2 * SSM_DWCONV_MAX_GROUPS, o.groups) && align_x == o.align_x &&
           align_y == o.align_y && device == o.device;
  }
};

int alignment_class(const void* ptr) {
  return ssm_cuda_host::aligned(ptr, 16) ? 16 : ssm_cuda_host::aligned(ptr, 8) ? 8 : 1;
}

PlanKey plan_key(const ssm_dwconv_shape* s, const void* x, const void* y, int device) {
  PlanKey k{};
  k.dims[0] = s->batch;
  k.dims[1] = s->height;
  k.dims[2] = s->width;
  k.dims[3] = s->channels;
  k.attrs[0] = s->kernel_max;
  k.attrs[1] = s->num_groups;
  k.attrs[2] = s->shuffle_groups;
  k.attrs[3] = s->activation;
  k.attrs[4] = s->dtype;
  for (int g = 0; g < s->num_groups; ++g) {
    k.groups[2 * g] = s->group_channels[g];
    k.groups[2 * g + 1] = s->kernel_sizes[g];
  }
  k.align_x = alignment_class(x);
  k.align_y = alignment_class(y);
  k.device = device;
  return k;
}

constexpr int kCacheSize = 16;
std::mutex g_cache_mutex;
PlanKey g_cache_keys[kCacheSize];
Plan g_cache_plans[kCacheSize];
int g_cache_used = 0, g_cache_next = 0;

bool cached_plan(const PlanKey& key, Plan& p) {
  std::lock_guard<std::mutex> lock(g_cache_mutex);
  for (int i = 0; i < g_cache_used; ++i) {
    if (g_cache_keys[i] == key) {
      p = g_cache_plans[i];
      return true;
    }
  }
  return false;
}

void cache_plan(const PlanKey& key, const Plan& p) {
  std::lock_guard<std::mutex> lock(g_cache_mutex);
  g_cache_keys[g_cache_next] = key;
  g_cache_plans[g_cache_next] = p;
  g_cache_next = (g_cache_next + 1) % kCacheSize;
  if (g_cache_used < kCacheSize) ++g_cache_used;
}

DwArgs make_args(const ssm_dwconv_shape* shape, const Plan& p, const void* x, const void* weight,
                 const void* bias, void* y) {
  DwArgs a{};
  a.x = x;
  a.w = weight;
  a.b = bias;
  a.y = y;
  a.H = (int)shape->height;
  a.W = (int)shape->width;
  a.C = (int)shape->channels;
  a.KM = shape->kernel_max;
  a.S = shape->shuffle_groups;
  a.P = a.C / a.S;
  a.gelu = shape->activation == SSM_ACTIVATION_GELU;
  a.num_groups = shape->num_groups;
  int start = 0;
  for (int g = 0; g < shape->num_groups; ++g) {
    a.gstart[g] = start;
    a.gk[g] = shape->kernel_sizes[g];
    start += shape->group_channels[g];
  }
  a.gstart[shape->num_groups] = start;
  a.TW = p.TW;
  a.TH = p.TH;
  a.MX = p.MX;
  a.M = p.M;
  a.R = p.R;
  a.HX = p.HX;
  a.LW = p.LW;
  a.LH = p.LH;
  a.RP = p.RP;
  a.RS = p.RS;
  a.PS = p.PS;
  a.Q = p.Q;
  a.SS = p.SS;
  a.NP = p.NP;
  a.KK = p.KK;
  a.OPS = p.OPS;
  a.tiles_x = p.tiles_x;
  a.tiles = p.tiles;
  a.q_chunks = p.q_chunks;
  a.s_chunks = p.s_chunks;
  a.units = p.units;
  a.out_off = p.out_off;
  a.w_off = p.w_off;
  a.b_off = p.b_off;
  a.k_off = p.k_off;
  a.fQ = make_fastdiv((uint32_t)p.Q);
  a.fSS = make_fastdiv((uint32_t)p.SS);
  a.fM = make_fastdiv((uint32_t)p.M);
  a.fMX = make_fastdiv((uint32_t)p.MX);
  a.fTW = make_fastdiv((uint32_t)p.TW);
  a.fNV = make_fastdiv((uint32_t)(p.NP / p.V));
  a.fStageW = make_fastdiv((uint32_t)(p.tiles == 1 ? shape->width : p.LW));
  return a;
}

// The dynamic shared memory each kernel was allowed on each device (cudaFuncSetAttribute is set once per
// kernel, device and larger size, not on every call).
constexpr int kMaxDevices = 64;

template <typename T, int VB, int TR>
int launch(const Plan& p, DwArgs& a, int device, cudaStream_t stream) {
  static std::atomic<unsigned> allowed[kMaxDevices];
  auto kernel = dwconv_kernel<T, VB, TR>;
  const bool known = device >= 0 && device < kMaxDevices;
  if (!known || allowed[device].load(std::memory_order_relaxed) < p.smem) {
    if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)p.smem) != cudaSuccess) {
      return SSM_ERR_CUDA;
    }
    if (known) {
      unsigned cur = allowed[device].load(std::memory_order_relaxed);
      while (cur < p.smem && !allowed[device].compare_exchange_weak(cur, p.smem)) {
      }
    }
  }
  kernel<<<(unsigned)p.grid, kThreads, p.smem, stream>>>(a);
  return ssm_cuda_host::launch_status();
}

template <typename T, int TR>
int launch_rows(const Plan& p, DwArgs& a, int device, cudaStream_t stream) {
  switch (p.vb) {
    case 16: return launch<T, 16, TR>(p, a, device, stream);
    case 8: return launch<T, 8, TR>(p, a, device, stream);
    default: return launch<T, (int)sizeof(T), TR>(p, a, device, stream);
  }
}

template <typename T>
int launch_dtype(const Plan& p, DwArgs& a, int device, cudaStream_t stream) {
  return p.TR == 1 ? launch_rows<T, 1>(p, a, device, stream) : launch_rows<T, kTR>(p, a, device, stream);
}

}  // namespace

extern "C" {

SSM_API int ssm_depthwise_conv_fwd_cuda(const ssm_dwconv_shape* shape, const void* x, const void* weight,
                                        const void* bias, void* y, void* stream) {
  const int st = check_shape(shape);
  if (st != SSM_OK) return st;
  if (!x || !weight || !bias || !y) return SSM_ERR_NULL_POINTER;
  if (shape->batch == 0) return SSM_OK;

  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return SSM_ERR_CUDA;
  const PlanKey key = plan_key(shape, x, y, device);
  Plan p;
  if (!cached_plan(key, p)) {
    int per_sm = 0, optin = 0, sms = 0;
    if (cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device) != cudaSuccess ||
        cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
      return SSM_ERR_CUDA;
    }
    // Two blocks per multiprocessor (1 KB of each block's shared memory is reserved by the system).
    size_t budget = (size_t)per_sm / 2 > 1024 ? (size_t)per_sm / 2 - 1024 : 0;
    if ((size_t)optin < budget) budget = (size_t)optin;
    if (!make_plan_and_grid(shape, x, y, budget, sms, p)) return SSM_ERR_UNSUPPORTED;
    cache_plan(key, p);
  }

  DwArgs a = make_args(shape, p, x, weight, bias, y);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (shape->dtype) {
    case SSM_FLOAT32: return launch_dtype<float>(p, a, device, s);
    case SSM_FLOAT16: return launch_dtype<__half>(p, a, device, s);
    default: return launch_dtype<__nv_bfloat16>(p, a, device, s);
  }
}

}  // extern "C"
