// SelectiveScan2D (domain version 2) on CUDA: SS2D's four-direction scan in one call, forward and backward.
// x, delta, Bs and Cs are read in place from the channel-last tensors (no cross-scan copies) and the four
// directions are merged into y inside the op (no cross-merge).
//
// Work decomposition
//   A block owns one image b and a block of CL consecutive channels (CL = 1..16, a power of two chosen from
//   the shape, see make_plan) and runs the four directions one after another over the whole image. The
//   lanes of a warp are CL channels x 32/CL time segments, channel fastest, so one warp-wide load reads CL
//   consecutive channels at each of 32/CL positions (CL = 16 for 16-bit data, 8 for float32: one 32-byte
//   sector per position). A segment owns a few consecutive steps of the direction's sequence (an odd
//   count, 5 by default); a chunk is the block's segments x those steps, and a
//   direction walks through its sequence chunk by chunk with a carried state. Inside a chunk the linear
//   recurrence h <- a*h + b is solved as in selective_scan.cu: a sequential composition of the affine maps
//   per thread, a scan over the segments of a warp (shuffles) and over the warps of the block (shared
//   memory; one barrier per chunk, double-buffered).
//   Direction k's step t is the position s = t (k = 0, 1) or L-1-t (k = 2, 3), read row-major (k = 0, 2:
//   s = h*W + w) or column-major (k = 1, 3: s = w*H + h).
//   The directions' outputs are summed in a float32 accumulator in shared memory (image x CL channels) in
//   the order 0, 1, 2, 3 and converted once at the end. Its rows hold W positions padded to an odd count,
//   and the steps per segment are odd, so the lanes of a warp hit distinct banks for the row and for the
//   column directions.
//   Every result is deterministic: each sum has a fixed order, there are no atomics.
//   Small grids (the forward with one state, fewer than kMinBlocks blocks even with one channel per block, as
//   at batch 1): the block runs the four directions at once, one group of up to kGroupWarps warps each, every
//   group in its own accumulator; at the end they are added in the order 0, 1, 2, 3, the same sums as the
//   one-group kernel makes, so the result does not depend on the grouping.
//
// Forward: the loads of the next chunk (at a direction's end: of the next direction's first chunk) are
//   issued before the arithmetic of the current one. With N > 1, the a_t = exp(dt*A) of a chunk are
//   computed again after the barrier rather than held in registers.
// Backward (per direction): phase 1 sweeps forward and keeps the state entering each chunk in shared
//   memory. Phase 2 walks the chunks in reverse, recomputes the states inside the chunk from it, runs the
//   adjoint recurrence q_t = a_t (q_{t+1} + C_t dy_t) right to left with the same two-level scan (both
//   scans share the chunk's barrier), and forms the gradients (as selective_scan.cu). The loads of the next
//   chunk visited are issued before the arithmetic of the current one, across phases and directions.
//   dx sums the four directions' du in the float32 accumulator; d_delta is written directly. Without
//   atomics: dBs/dCs are summed over the block's CL channels (shuffles) and written as one partial per
//   channel block, and dA/dDs/d_delta_bias over the block's positions as one partial per image; a second
//   kernel adds the partials in a fixed order. The workspace holds the partials; with one channel block
//   (one image) they are the outputs themselves.
#include <limits.h>
#include <string.h>

#include "selective_scan_common.cuh"

namespace {

using namespace ssm_cuda;

// Compile-time tuning options (the defaults were the fastest of the variants timed on an H100):
// steps per segment and chunk (odd: see the accumulator layout), blocks per SM the register budget is made
// for, and the shared memory a plan may use per block before its channel blocks get narrower (the forward
// fits three blocks per SM; the backward is held to two by its registers and takes wider channel blocks).
#ifndef SSM_SCAN2D_FWD_ITEMS
#define SSM_SCAN2D_FWD_ITEMS 5
#endif
#ifndef SSM_SCAN2D_BWD_ITEMS
#define SSM_SCAN2D_BWD_ITEMS 5
#endif
#ifndef SSM_SCAN2D_FWD_MIN_BLOCKS
#define SSM_SCAN2D_FWD_MIN_BLOCKS 3
#endif
#ifndef SSM_SCAN2D_BWD_MIN_BLOCKS
#define SSM_SCAN2D_BWD_MIN_BLOCKS 2
#endif
#ifndef SSM_SCAN2D_FWD_SMEM_BUDGET
#define SSM_SCAN2D_FWD_SMEM_BUDGET (72 * 1024)
#endif
#ifndef SSM_SCAN2D_DIRECTION_GROUPS  // 0: never run the four directions at once
#define SSM_SCAN2D_DIRECTION_GROUPS 1
#endif
#ifndef SSM_SCAN2D_GROUP_WARPS  // warps per direction group when the four directions run at once (<= kMaxWarps)
#define SSM_SCAN2D_GROUP_WARPS 4
#endif
#ifndef SSM_SCAN2D_MAX_DT_PAIRS  // dt input pairs the forward with the dt projection prefetches (ranks <= 2x)
#define SSM_SCAN2D_MAX_DT_PAIRS 2
#endif
#ifndef SSM_SCAN2D_PAIRS_MIN_BLOCKS  // blocks per SM the register budget of that kernel is made for
#define SSM_SCAN2D_PAIRS_MIN_BLOCKS SSM_SCAN2D_FWD_MIN_BLOCKS
#endif
#ifndef SSM_SCAN2D_BWD_SMEM_BUDGET
#define SSM_SCAN2D_BWD_SMEM_BUDGET (110 * 1024)
#endif
constexpr int kFwdItems = SSM_SCAN2D_FWD_ITEMS;
constexpr int kBwdItems = SSM_SCAN2D_BWD_ITEMS;
constexpr int64_t kFwdSmemBudget = SSM_SCAN2D_FWD_SMEM_BUDGET;
constexpr int64_t kBwdSmemBudget = SSM_SCAN2D_BWD_SMEM_BUDGET;
// A grouped forward plan (four accumulators) runs few blocks, so it may take more shared memory per block,
// within the 160 KB every plan stays below.
constexpr int64_t kGroupedSmemBudget = 144 * 1024;
static_assert(kFwdItems % 2 == 1 && kBwdItems % 2 == 1, "the steps per segment must be odd");
constexpr int kMaxWarps = 8;
// dt inputs prefetched as 32-bit pairs (16-bit data): even ranks up to 4 by default (HRVMamba's 2 and 4; at 8
// the kernel spilled registers at three blocks per SM)
constexpr int kMaxDtPairs = SSM_SCAN2D_MAX_DT_PAIRS;
constexpr int kMaxThreads = kMaxWarps * 32;
constexpr int kDirections = 4;
constexpr int kGroupWarps = SSM_SCAN2D_GROUP_WARPS;
static_assert(kGroupWarps >= 1 && kGroupWarps <= kMaxWarps, "SSM_SCAN2D_GROUP_WARPS");
constexpr int64_t kMinBlocks = 256;          // narrower channel blocks below this many blocks
// Limit of H * (W | 1): the accumulator of one channel in 144 KB; with the scan scratch every plan stays
// below 160 KB of shared memory, within sm_80's 163 KB (docs/ops.md, "Limits").
constexpr int64_t kMaxAccPositions = 36864;

struct Scan2DArgs {
  const void* x;
  const void* delta;
  const void* A;
  const void* Bs;
  const void* Cs;
  const void* Ds;
  const void* delta_bias;
  const void* dy;
  const void* dtw;  // forward with the dt projection: (4, D, dt_rank); delta is then x_proj (see dt_rank)
  void* y;
  void* dx;
  void* d_delta;
  // Backward outputs: dB/dC [channel block][b][position][k][n] (dBs/dCs themselves with one channel
  // block); dA [b][k*D + c][n], dD and dbias [b][k*D + c] (the outputs themselves with one image; dD and
  // dbias may be NULL).
  float* dB;
  float* dC;
  float* dA;
  float* dD;
  float* dbias;
  int64_t bc_part_stride;  // floats between the channel-block partials of dB / dC
  int64_t ncb;             // channel blocks
  int64_t acc_floats;      // shared-memory accumulator (rounded up to a multiple of 4)
  int height, width, length, wp, dim, dstate;
  // dt_rank > 0 (forward only): delta is x_proj (B, L, 4, bc_row), each row dt inputs (dt_rank), B, C, and
  // Bs / Cs point into it; bc_row = dt_rank + 2N. dt_rank == 0: delta (B, L, 4*D), Bs / Cs rows of bc_row = N.
  // dt_pairs > 0: the kPairs kernel, which prefetches the dt inputs as dt_pairs 32-bit pairs (16-bit data).
  int dt_rank, bc_row, dt_pairs;
  int softplus, cl_log2, nwarps, nchunks, chunk;
  FastDiv fd_h, fd_w;
};

// Plan: channels per block (1 << cl_log2), warps per direction group, direction groups per block, chunk
// length and count.
struct Plan2D {
  int cl_log2, nwarps, groups, nchunks, chunk;
  int64_t ncb;
  int64_t acc_floats;
  int64_t smem_bytes;
};

inline void plan_geometry(int64_t L, int cl_log2, int64_t items, int max_warps, Plan2D& p) {
  const int64_t spw = 32 >> cl_log2;  // segments per warp
  const int64_t max_seg = max_warps * spw;
  const int64_t nchunks = (L + max_seg * items - 1) / (max_seg * items);
  const int64_t per_chunk = (L + nchunks - 1) / nchunks;
  int64_t nseg = (per_chunk + items - 1) / items;
  nseg = (nseg + spw - 1) / spw * spw;  // whole warps; <= max_seg
  p.cl_log2 = cl_log2;
  p.nwarps = (int)(nseg / spw);
  p.chunk = (int)(nseg * items);
  p.nchunks = (int)((L + p.chunk - 1) / p.chunk);
}

inline void plan_smem(const ssm_scan2d_shape* s, bool bwd, Plan2D& p) {
  const int64_t CL = int64_t(1) << p.cl_log2, N = s->dstate;
  p.acc_floats = (s->height * (s->width | 1) * CL + 3) / 4 * 4;
  const int64_t tot = 2 * p.nwarps * N * CL * 2 * (bwd ? 2 : 1);
  const int64_t ckpt = bwd ? p.nchunks * N * CL : 0;
  const int64_t red = bwd ? p.nwarps * (N + 2) * CL : 0;
  p.smem_bytes = (p.groups * (p.acc_floats + tot) + ckpt + red) * (int64_t)sizeof(float);
}

// CL = min(16 (16-bit data) or 8 (float32), next power of two >= D), halved while the block's shared memory
// exceeds the budget (kFwdSmemBudget, kBwdSmemBudget), then while the grid has fewer than kMinBlocks blocks
// (small batches). The forward with one state then runs the four directions at once (4 groups of at most
// kGroupWarps warps) if the grid is still below kMinBlocks blocks and the four accumulators fit the budget.
// A function of the shape only, so results are deterministic for a shape.
inline Plan2D make_plan(const ssm_scan2d_shape* s, bool bwd) {
  const int64_t L = s->height * s->width;
  auto plan_for = [&](int lg, int groups) {
    Plan2D p;
    p.groups = groups;
    plan_geometry(L, lg, bwd ? kBwdItems : kFwdItems, groups > 1 ? kGroupWarps : kMaxWarps, p);
    plan_smem(s, bwd, p);
    p.ncb = (s->dim + (int64_t(1) << lg) - 1) >> lg;
    return p;
  };
  int lg = s->dtype == SSM_FLOAT32 ? 3 : 4;
  while (lg > 0 && (int64_t(1) << (lg - 1)) >= s->dim) --lg;
  const int64_t budget = bwd ? kBwdSmemBudget : kFwdSmemBudget;
  while (lg > 0 && plan_for(lg, 1).smem_bytes > budget) --lg;
  while (lg > 0 && s->batch * plan_for(lg, 1).ncb < kMinBlocks) --lg;
  if (SSM_SCAN2D_DIRECTION_GROUPS && !bwd && s->dstate == 1 && s->batch * plan_for(lg, 1).ncb < kMinBlocks) {
    const Plan2D grouped = plan_for(lg, kDirections);
    if (grouped.smem_bytes <= kGroupedSmemBudget) return grouped;
  }
  return plan_for(lg, 1);
}

// Floats of the backward workspace: dB and dC partials (with more than one channel block), then the dA,
// dDs and d_delta_bias partials (with more than one image).
struct Workspace2D {
  int64_t bc;    // elements of dBs (B*L*4*N)
  int64_t nbc;   // floats of the dB + dC partials
  int64_t nprm;  // floats of the dA + dDs + d_delta_bias partials
};

inline Workspace2D workspace_layout(const ssm_scan2d_shape* s, const Plan2D& p) {
  Workspace2D w;
  const int64_t L = s->height * s->width, KD = kDirections * s->dim;
  w.bc = s->batch * L * kDirections * s->dstate;
  w.nbc = p.ncb > 1 ? 2 * p.ncb * w.bc : 0;
  w.nprm = s->batch > 1 ? s->batch * KD * (s->dstate + 2) : 0;
  return w;
}

// ------------------------------------------------------------------------------------------------
// Device helpers

struct Lane {
  int cl;      // channel lane
  int segw;    // segment within the warp
  int spw;     // segments per warp
  int warp;
  int seg;     // segment within the block
  int c;       // channel (>= dim on lanes past the end of the last channel block)
  bool cvalid;
  int64_t b, cb;
};

// `thread`: the thread's index within its direction group (threadIdx.x with one group).
__device__ __forceinline__ Lane make_lane(const Scan2DArgs& a, int thread) {
  Lane l;
  const int lane = thread & 31;
  l.warp = thread >> 5;
  l.cl = lane & ((1 << a.cl_log2) - 1);
  l.segw = lane >> a.cl_log2;
  l.spw = 32 >> a.cl_log2;
  l.seg = l.warp * l.spw + l.segw;
  l.b = blockIdx.x / a.ncb;
  l.cb = blockIdx.x - l.b * a.ncb;
  l.c = (int)(l.cb << a.cl_log2) + l.cl;
  l.cvalid = l.c < a.dim;
  return l;
}

// Row-major index h*W + w of the position of direction k's step t (t < L).
__device__ __forceinline__ int step_position(const Scan2DArgs& a, int k, int t) {
  const int s = (k & 2) ? a.length - 1 - t : t;
  if (k & 1) {
    const int w = (int)fdiv((uint32_t)s, a.fd_h);
    return (s - w * a.height) * a.width + w;
  }
  return s;
}

// Index of (position p, channel lane cl) in the accumulator, whose rows are wp = W | 1 positions long.
__device__ __forceinline__ int acc_index(const Scan2DArgs& a, int p, int cl) {
  const int row_pad = a.wp - a.width;  // 0 or 1
  const int h = row_pad ? (int)fdiv((uint32_t)p, a.fd_w) : 0;
  return ((p + h * row_pad) << a.cl_log2) + cl;
}

// Inclusive scan of the affine maps x -> P*x + S over the segments of a warp, left to right.
__device__ __forceinline__ void scan_segments_up(float& P, float& S, const Lane& l, int cl_log2) {
  for (int off = 1; off < l.spw; off <<= 1) {
    const float Pp = __shfl_up_sync(kFullMask, P, off << cl_log2);
    const float Sp = __shfl_up_sync(kFullMask, S, off << cl_log2);
    if (l.segw >= off) {
      S = fmaf(P, Sp, S);
      P *= Pp;
    }
  }
}

// The same from right to left (the adjoint recurrence).
__device__ __forceinline__ void scan_segments_down(float& P, float& S, const Lane& l, int cl_log2) {
  for (int off = 1; off < l.spw; off <<= 1) {
    const float Pn = __shfl_down_sync(kFullMask, P, off << cl_log2);
    const float Sn = __shfl_down_sync(kFullMask, S, off << cl_log2);
    if (l.segw + off < l.spw) {
      S = fmaf(P, Sn, S);
      P *= Pn;
    }
  }
}

// Map of the previous segment of the warp (identity for the first), from the inclusive scan.
__device__ __forceinline__ void previous_segment(float P, float S, const Lane& l, int cl_log2, float& Pe,
                                                 float& Se) {
  Pe = __shfl_up_sync(kFullMask, P, 1 << cl_log2);
  Se = __shfl_up_sync(kFullMask, S, 1 << cl_log2);
  if (l.segw == 0) {
    Pe = 1.f;
    Se = 0.f;
  }
}

// Map of the next segment of the warp (identity for the last), from the right-to-left inclusive scan.
__device__ __forceinline__ void next_segment(float P, float S, const Lane& l, int cl_log2, float& Pn,
                                             float& Sn) {
  Pn = __shfl_down_sync(kFullMask, P, 1 << cl_log2);
  Sn = __shfl_down_sync(kFullMask, S, 1 << cl_log2);
  if (l.segw == l.spw - 1) {
    Pn = 1.f;
    Sn = 0.f;
  }
}

// ------------------------------------------------------------------------------------------------
// Forward

// Hint to bring the `bytes` bytes at p into L1 (every 128-byte line they touch; only addresses inside the range).
__device__ __forceinline__ void prefetch_l1(const void* p, int bytes) {
  const char* c = static_cast<const char*>(p);
  for (int off = 0; off < bytes; off += 128) asm volatile("prefetch.global.L1 [%0];" ::"l"(c + off));
  asm volatile("prefetch.global.L1 [%0];" ::"l"(c + bytes - 1));
}

// The two 16-bit values of a 32-bit pair, as floats.
template <typename T>
__device__ __forceinline__ float2 unpack_pair(uint32_t u) {
  T v[2];
  memcpy(v, &u, sizeof(u));
  return make_float2(to_f(v[0]), to_f(v[1]));
}

// kG direction groups (1, or 4 for small grids): group g runs directions g, g + kG, ... into accumulator g.
// With the dt projection, delta is formed when a chunk is processed, so that its loads stay ahead of the
// arithmetic as delta's do. kPairs (16-bit data, one state, an even dt_rank <= 2 * kMaxDtPairs, 4-byte aligned
// rows, as ssm_selective_scan_2d_proj_fwd_cuda decides): the chunk in flight holds the raw dt inputs. Otherwise
// the rows of dt inputs are prefetched into L1 as the loads are issued and read from there.
template <typename T, int kN, int kG, bool kPairs>
__global__ void __launch_bounds__(kG == 1 ? kMaxThreads : kG * kGroupWarps * 32,
                                  kG == 1 ? (kPairs ? SSM_SCAN2D_PAIRS_MIN_BLOCKS : SSM_SCAN2D_FWD_MIN_BLOCKS) : 1)
    scan2d_fwd_kernel(const Scan2DArgs a) {
  constexpr int kI = kFwdItems;
  constexpr int kP = kPairs ? kMaxDtPairs : 1;
  extern __shared__ __align__(16) float smem[];
  const T* __restrict__ x = static_cast<const T*>(a.x);
  const T* __restrict__ delta = static_cast<const T*>(a.delta);
  const T* __restrict__ A = static_cast<const T*>(a.A);
  const T* __restrict__ Bs = static_cast<const T*>(a.Bs);
  const T* __restrict__ Cs = static_cast<const T*>(a.Cs);
  const T* __restrict__ Ds = static_cast<const T*>(a.Ds);
  const T* __restrict__ dbias = static_cast<const T*>(a.delta_bias);
  T* __restrict__ y = static_cast<T*>(a.y);

  const int group = kG == 1 ? 0 : (int)threadIdx.x / (a.nwarps * 32);
  const Lane l = make_lane(a, (int)threadIdx.x - group * a.nwarps * 32);
  const int CL = 1 << a.cl_log2;
  const int L = a.length, N = a.dstate, D = a.dim, KD = kDirections * a.dim;
  const int cs = l.cvalid ? l.c : 0;  // channel offset of the loads (absent channels read channel 0, unused)
  float* acc = smem + group * a.acc_floats;
  // [2][nwarps][N][CL] warp totals per group
  float2* tot = reinterpret_cast<float2*>(smem + kG * a.acc_floats) + group * 2 * a.nwarps * N * CL;
  const T* xc = x + l.b * L * D + cs;
  const T* deltab = delta + l.b * L * KD + cs;
  const T* Bb = Bs + l.b * L * kDirections * a.bc_row;
  const T* Cb = Cs + l.b * L * kDirections * a.bc_row;
  const T* xpb = delta + l.b * L * kDirections * a.bc_row;  // with the dt projection: x_proj of image b
  const T* __restrict__ dtw = static_cast<const T*>(a.dtw);
  const T zero = from_f<T>(0.f);

  // Raw values of the chunk in flight (B and C too when N == 1; the dt input pairs with kPairs).
  T rx[kI], rd[kI], rb[kI], rc[kI];
  uint32_t rdt[kI][kP];
  auto issue = [&](int k, int ch) {
    const int t0 = ch * a.chunk + l.seg * kI;
    const T* dk = deltab + k * D;
#pragma unroll
    for (int i = 0; i < kI; ++i) {
      const bool ok = t0 + i < L;
      const int p = ok ? step_position(a, k, t0 + i) : 0;
      const bool okc = ok && l.cvalid;
      rx[i] = okc ? xc[p * D] : zero;
      if constexpr (kPairs) {
        const uint32_t* in = reinterpret_cast<const uint32_t*>(xpb + (p * kDirections + k) * a.bc_row);
#pragma unroll
        for (int j = 0; j < kP; ++j) rdt[i][j] = (okc && j < a.dt_pairs) ? in[j] : 0u;
      } else if (a.dt_rank == 0) {
        rd[i] = okc ? dk[p * KD] : zero;
      } else if (okc) {  // the dt projection: the row's dt inputs into L1 now, delta when the chunk is processed
        prefetch_l1(xpb + (p * kDirections + k) * a.bc_row, a.dt_rank * (int)sizeof(T));
      }
      if constexpr (kN == 1) {
        rb[i] = ok ? Bb[(p * kDirections + k) * a.bc_row] : zero;
        rc[i] = ok ? Cb[(p * kDirections + k) * a.bc_row] : zero;
      }
    }
  };

  float A2[kN], carry[kN];
  float Dv = 0.f, bias = 0.f;
  const T* wrow = dtw;  // kPairs: the dt projection row of this channel and direction (read through L1)
  int k = group, ch = 0, buf = 0;
  issue(k, 0);
  for (int it = 0; it < kDirections / kG * a.nchunks; ++it) {
    if (ch == 0) {  // a new direction: its parameters for this channel, state 0
      const int pc = k * D + l.c;
#pragma unroll
      for (int n = 0; n < kN; ++n) {
        A2[n] = (l.cvalid && n < N) ? ldf(A + (int64_t)pc * N + n) * kLog2e : 0.f;
        carry[n] = 0.f;
      }
      Dv = (Ds && l.cvalid) ? ldf(Ds + pc) : 0.f;
      bias = (dbias && l.cvalid) ? ldf(dbias + pc) : 0.f;
      if constexpr (kPairs) wrow = dtw + (k * D + cs) * a.dt_rank;
    }
    const int t0 = ch * a.chunk + l.seg * kI;
    float xv[kI], dt[kI], Bv[kI], Cv[kI];
#pragma unroll
    for (int i = 0; i < kI; ++i) {
      xv[i] = to_f(rx[i]);
      if constexpr (kPairs) {  // the same sums, in the same order, as the L1 path below
        float sum = 0.f;
#pragma unroll
        for (int j = 0; j < kP; ++j) {
          if (j < a.dt_pairs) {
            const float2 v = unpack_pair<T>(rdt[i][j]);
            sum = fmaf(v.x, ldf(wrow + 2 * j), sum);
            sum = fmaf(v.y, ldf(wrow + 2 * j + 1), sum);
          }
        }
        dt[i] = to_f(from_f<T>(sum));
      } else if (a.dt_rank > 0) {  // the same sums as above, from the rows prefetched into L1
        float sum = 0.f;
        if (t0 + i < L && l.cvalid) {
          const T* in = xpb + (step_position(a, k, t0 + i) * kDirections + k) * a.bc_row;
          const T* w = dtw + (k * D + l.c) * a.dt_rank;
          for (int r = 0; r < a.dt_rank; ++r) sum = fmaf(to_f(in[r]), to_f(w[r]), sum);
        }
        dt[i] = to_f(from_f<T>(sum));
      } else {
        dt[i] = to_f(rd[i]);
      }
      if constexpr (kN == 1) {
        Bv[i] = to_f(rb[i]);
        Cv[i] = to_f(rc[i]);
      }
    }
    {
      int k2 = k, ch2 = ch + 1;
      if (ch2 == a.nchunks) {
        ch2 = 0;
        k2 += kG;
      }
      if (k2 < kDirections) issue(k2, ch2);
    }
    int pos[kI];
    float dtx[kI];
#pragma unroll
    for (int i = 0; i < kI; ++i) {
      const bool ok = t0 + i < L;
      pos[i] = ok ? step_position(a, k, t0 + i) : 0;
      const float v = dt[i] + bias;
      const float d = a.softplus ? softplus_f<T>(v) : v;
      dt[i] = (ok && l.cvalid) ? d : 0.f;  // steps past the end (and absent channels): the identity map
      dtx[i] = dt[i] * xv[i];
    }
    auto load_bc = [&](const T* base, int i, int n) {
      return (t0 + i < L) ? ldf(base + (pos[i] * kDirections + k) * a.bc_row + n) : 0.f;
    };

    float Pin[kN], Sin[kN];  // inclusive scan over the warp's segments
    float av1[kI];           // N == 1: a_t, kept across the barrier
#pragma unroll
    for (int n = 0; n < kN; ++n) {
      Pin[n] = 1.f;
      Sin[n] = 0.f;
      if (n < N) {
        float P = 1.f, S = 0.f;
#pragma unroll
        for (int i = 0; i < kI; ++i) {
          const float Bi = kN == 1 ? Bv[i] : load_bc(Bb, i, n);
          const float ai = fast_exp2(dt[i] * A2[n]);
          if constexpr (kN == 1) av1[i] = ai;
          P *= ai;
          S = fmaf(ai, S, dtx[i] * Bi);
        }
        scan_segments_up(P, S, l, a.cl_log2);
        if (l.segw == l.spw - 1) tot[((buf * a.nwarps + l.warp) * N + n) * CL + l.cl] = make_float2(P, S);
        Pin[n] = P;
        Sin[n] = S;
      }
    }
    __syncthreads();

    float yv[kI];
#pragma unroll
    for (int i = 0; i < kI; ++i) yv[i] = Ds ? Dv * xv[i] : 0.f;  // no D term without Ds (0 * inf is NaN)
#pragma unroll
    for (int n = 0; n < kN; ++n) {
      if (n < N) {
        // state entering this warp: the chunk's carry through the earlier warps; the carry moves on
        float h = carry[n], hw = 0.f;
        for (int w = 0; w < a.nwarps; ++w) {
          if (w == l.warp) hw = h;
          const float2 m = tot[((buf * a.nwarps + w) * N + n) * CL + l.cl];
          h = fmaf(m.x, h, m.y);
        }
        carry[n] = h;
        float Pe, Se;
        previous_segment(Pin[n], Sin[n], l, a.cl_log2, Pe, Se);
        h = fmaf(Pe, hw, Se);
#pragma unroll
        for (int i = 0; i < kI; ++i) {
          const float Bi = kN == 1 ? Bv[i] : load_bc(Bb, i, n);
          const float Ci = kN == 1 ? Cv[i] : load_bc(Cb, i, n);
          const float ai = kN == 1 ? av1[i] : fast_exp2(dt[i] * A2[n]);
          h = fmaf(ai, h, dtx[i] * Bi);
          yv[i] = fmaf(Ci, h, yv[i]);
        }
      }
    }
    if (l.cvalid) {
#pragma unroll
      for (int i = 0; i < kI; ++i) {
        if (t0 + i < L) {
          const int j = acc_index(a, pos[i], l.cl);
          acc[j] = k == group ? yv[i] : acc[j] + yv[i];
        }
      }
    }
    buf ^= 1;
    if (++ch == a.nchunks) {
      ch = 0;
      k += kG;
    }
  }
  __syncthreads();

  // y = the accumulators' sum in group order, converted once (threads over positions x channels, channel
  // fastest; a group's warps start at a multiple of 32 threads, so l.cl is threadIdx.x's channel lane)
  if (l.cvalid) {
    T* yb = y + l.b * L * D;
    for (int p = threadIdx.x >> a.cl_log2; p < L; p += blockDim.x >> a.cl_log2) {
      const int j = acc_index(a, p, l.cl);
      float v = smem[j];
#pragma unroll
      for (int g = 1; g < kG; ++g) v += smem[g * a.acc_floats + j];
      yb[p * D + l.c] = from_f<T>(v);
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Backward
//
// One flat loop over the visits of the chunks: per direction, phase 1 visits chunks 0 .. n-2 and phase 2
// visits n-1 .. 0, and the loads of the next visit (x, delta, dy; B and C when N == 1) are issued before
// the arithmetic of the current one.

template <typename T, int kN>
__global__ void __launch_bounds__(kMaxThreads, SSM_SCAN2D_BWD_MIN_BLOCKS) scan2d_bwd_kernel(const Scan2DArgs a) {
  constexpr int kI = kBwdItems;
  extern __shared__ __align__(16) float smem[];
  const T* __restrict__ x = static_cast<const T*>(a.x);
  const T* __restrict__ delta = static_cast<const T*>(a.delta);
  const T* __restrict__ A = static_cast<const T*>(a.A);
  const T* __restrict__ Bs = static_cast<const T*>(a.Bs);
  const T* __restrict__ Cs = static_cast<const T*>(a.Cs);
  const T* __restrict__ Ds = static_cast<const T*>(a.Ds);
  const T* __restrict__ dbias = static_cast<const T*>(a.delta_bias);
  const T* __restrict__ dy = static_cast<const T*>(a.dy);
  T* __restrict__ dx = static_cast<T*>(a.dx);
  T* __restrict__ d_delta = static_cast<T*>(a.d_delta);

  const Lane l = make_lane(a, (int)threadIdx.x);
  const int CL = 1 << a.cl_log2;
  const int L = a.length, N = a.dstate, D = a.dim, KD = kDirections * a.dim;
  const int nw = a.nwarps, nck = a.nchunks;
  const int visits = 2 * nck - 1;  // per direction
  const int cs = l.cvalid ? l.c : 0;
  float* acc = smem;
  float2* totF = reinterpret_cast<float2*>(smem + a.acc_floats);  // [2][nwarps][N][CL] forward warp totals
  float2* totR = totF + 2 * nw * N * CL;                          // the same, adjoint (right to left)
  float* ckpt = reinterpret_cast<float*>(totR + 2 * nw * N * CL);  // [nchunks][N][CL] state entering a chunk
  float* red = ckpt + nck * N * CL;                                // [nwarps][N + 2][CL] per-warp sums
  const T* xc = x + l.b * L * D + cs;
  const T* dyc = dy + l.b * L * D + cs;
  const T* deltab = delta + l.b * L * KD + cs;
  const T* Bb = Bs + l.b * L * kDirections * N;
  const T* Cb = Cs + l.b * L * kDirections * N;
  T* dxb = dx + l.b * L * D;
  T* ddeltab = d_delta + l.b * L * KD + cs;
  float* dBb = a.dB + l.cb * a.bc_part_stride + l.b * L * kDirections * N;
  float* dCb = a.dC + l.cb * a.bc_part_stride + l.b * L * kDirections * N;
  const T zero = from_f<T>(0.f);
  auto visit_chunk = [&](int v) { return v < nck - 1 ? v : 2 * (nck - 1) - v; };

  T rx[kI], rd[kI], ry[kI], rb[kI], rc[kI];
  auto issue = [&](int k, int v) {
    const bool phase2 = v >= nck - 1;  // dy and C only there
    const int t0 = visit_chunk(v) * a.chunk + l.seg * kI;
    const T* dk = deltab + k * D;
#pragma unroll
    for (int i = 0; i < kI; ++i) {
      const bool ok = t0 + i < L;
      const int p = ok ? step_position(a, k, t0 + i) : 0;
      const bool okc = ok && l.cvalid;
      rx[i] = okc ? xc[p * D] : zero;
      rd[i] = okc ? dk[p * KD] : zero;
      ry[i] = (okc && phase2) ? dyc[p * D] : zero;
      if constexpr (kN == 1) {
        rb[i] = ok ? Bb[p * kDirections + k] : zero;
        rc[i] = (ok && phase2) ? Cb[p * kDirections + k] : zero;
      }
    }
  };

  float A2[kN], carry[kN], qcarry[kN], dA_acc[kN];
  float Dv = 0.f, bias = 0.f, dD_acc = 0.f, dbias_acc = 0.f;
  int k = 0, v = 0, buf = 0;
  issue(0, 0);
  for (int it = 0; it < kDirections * visits; ++it) {
    if (v == 0) {  // a new direction
      const int pc = k * D + l.c;
#pragma unroll
      for (int n = 0; n < kN; ++n) {
        A2[n] = (l.cvalid && n < N) ? ldf(A + (int64_t)pc * N + n) * kLog2e : 0.f;
        carry[n] = 0.f;
        qcarry[n] = 0.f;
        dA_acc[n] = 0.f;
      }
      Dv = (Ds && l.cvalid) ? ldf(Ds + pc) : 0.f;
      bias = (dbias && l.cvalid) ? ldf(dbias + pc) : 0.f;
      dD_acc = 0.f;
      dbias_acc = 0.f;
    }
    const bool phase2 = v >= nck - 1;
    const int ch = visit_chunk(v);
    const int t0 = ch * a.chunk + l.seg * kI;
    float xv[kI], dt[kI], dyv[kI], Bv[kI], Cv[kI];
#pragma unroll
    for (int i = 0; i < kI; ++i) {
      xv[i] = to_f(rx[i]);
      dt[i] = to_f(rd[i]);
      dyv[i] = to_f(ry[i]);
      if constexpr (kN == 1) {
        Bv[i] = to_f(rb[i]);
        Cv[i] = to_f(rc[i]);
      }
    }
    {
      int k2 = k, v2 = v + 1;
      if (v2 == visits) {
        v2 = 0;
        ++k2;
      }
      if (k2 < kDirections) issue(k2, v2);
    }
    int pos[kI];
#pragma unroll
    for (int i = 0; i < kI; ++i) pos[i] = (t0 + i < L) ? step_position(a, k, t0 + i) : 0;
    auto load_bc = [&](const T* base, int i, int n) {
      return (t0 + i < L) ? ldf(base + pos[i] * kDirections * N + k * N + n) : 0.f;
    };

    if (!phase2) {
      // ---- phase 1: the state entering chunk ch + 1
      float dtx[kI];
#pragma unroll
      for (int i = 0; i < kI; ++i) {
        const float v_ = dt[i] + bias;
        const float d = a.softplus ? softplus_f<T>(v_) : v_;
        dt[i] = (t0 + i < L) && l.cvalid ? d : 0.f;
        dtx[i] = dt[i] * xv[i];
      }
#pragma unroll
      for (int n = 0; n < kN; ++n) {
        if (n < N) {
          float P = 1.f, S = 0.f;
#pragma unroll
          for (int i = 0; i < kI; ++i) {
            const float Bi = kN == 1 ? Bv[i] : load_bc(Bb, i, n);
            const float ai = fast_exp2(dt[i] * A2[n]);
            P *= ai;
            S = fmaf(ai, S, dtx[i] * Bi);
          }
          scan_segments_up(P, S, l, a.cl_log2);
          if (l.segw == l.spw - 1) totF[((buf * nw + l.warp) * N + n) * CL + l.cl] = make_float2(P, S);
        }
      }
      __syncthreads();
#pragma unroll
      for (int n = 0; n < kN; ++n) {
        if (n < N) {
          float h = carry[n];
          for (int w = 0; w < nw; ++w) {
            const float2 m = totF[((buf * nw + w) * N + n) * CL + l.cl];
            h = fmaf(m.x, h, m.y);
          }
          carry[n] = h;
          if (l.seg == 0) ckpt[((ch + 1) * N + n) * CL + l.cl] = h;
        }
      }
    } else {
      // ---- phase 2: chunk ch, right to left
      float sg[kI], dtx[kI], du[kI], ddt[kI];
#pragma unroll
      for (int i = 0; i < kI; ++i) {
        const bool okc = (t0 + i < L) && l.cvalid;
        const float v_ = dt[i] + bias;
        float d = v_, s = 1.f;
        if (a.softplus) softplus_grad_f<T>(v_, d, s);
        dt[i] = okc ? d : 0.f;
        sg[i] = okc ? s : 0.f;
        dtx[i] = dt[i] * xv[i];
        du[i] = Dv * dyv[i];
        dD_acc = fmaf(dyv[i], xv[i], dD_acc);
        ddt[i] = 0.f;
      }

      // segment maps: forward h -> P h + S, adjoint q -> P q + S (both scanned before the one barrier)
      float PF[kN], SF[kN], PR[kN], SR[kN];
      float av1[kI], cv1[kI];  // N == 1: kept across the barrier
#pragma unroll
      for (int n = 0; n < kN; ++n) {
        PF[n] = 1.f;
        SF[n] = 0.f;
        PR[n] = 1.f;
        SR[n] = 0.f;
        if (n < N) {
          float av[kI], cv[kI];
          float Pf = 1.f, Sf = 0.f;
#pragma unroll
          for (int i = 0; i < kI; ++i) {
            const float Bi = kN == 1 ? Bv[i] : load_bc(Bb, i, n);
            av[i] = fast_exp2(dt[i] * A2[n]);
            cv[i] = (kN == 1 ? Cv[i] : load_bc(Cb, i, n)) * dyv[i];
            Pf *= av[i];
            Sf = fmaf(av[i], Sf, dtx[i] * Bi);
            if constexpr (kN == 1) {
              av1[i] = av[i];
              cv1[i] = cv[i];
            }
          }
          float Pr = 1.f, Sr = 0.f;
#pragma unroll
          for (int i = kI - 1; i >= 0; --i) {
            Sr = av[i] * (Sr + cv[i]);
            Pr *= av[i];
          }
          scan_segments_up(Pf, Sf, l, a.cl_log2);
          scan_segments_down(Pr, Sr, l, a.cl_log2);
          if (l.segw == l.spw - 1) totF[((buf * nw + l.warp) * N + n) * CL + l.cl] = make_float2(Pf, Sf);
          if (l.segw == 0) totR[((buf * nw + l.warp) * N + n) * CL + l.cl] = make_float2(Pr, Sr);
          PF[n] = Pf;
          SF[n] = Sf;
          PR[n] = Pr;
          SR[n] = Sr;
        }
      }
      __syncthreads();

#pragma unroll
      for (int n = 0; n < kN; ++n) {
        if (n < N) {
          // state entering this segment: the chunk's checkpoint through the earlier warps and segments
          float hw = ch > 0 ? ckpt[(ch * N + n) * CL + l.cl] : 0.f;
          for (int w = 0; w < l.warp; ++w) {
            const float2 m = totF[((buf * nw + w) * N + n) * CL + l.cl];
            hw = fmaf(m.x, hw, m.y);
          }
          float Pe, Se;
          previous_segment(PF[n], SF[n], l, a.cl_log2, Pe, Se);
          const float hin = fmaf(Pe, hw, Se);
          // adjoint entering from the right of this segment; the carry moves on to the previous chunk
          float q = qcarry[n], qw = 0.f;
          for (int w = nw - 1; w >= 0; --w) {
            if (w == l.warp) qw = q;
            const float2 m = totR[((buf * nw + w) * N + n) * CL + l.cl];
            q = fmaf(m.x, q, m.y);
          }
          qcarry[n] = q;
          float Pn, Sn;
          next_segment(PR[n], SR[n], l, a.cl_log2, Pn, Sn);
          q = fmaf(Pn, qw, Sn);

          float av[kI], Bn[kI], cv[kI], hs[kI + 1];
#pragma unroll
          for (int i = 0; i < kI; ++i) {
            if constexpr (kN == 1) {
              av[i] = av1[i];
              Bn[i] = Bv[i];
              cv[i] = cv1[i];
            } else {
              av[i] = fast_exp2(dt[i] * A2[n]);
              Bn[i] = load_bc(Bb, i, n);
              cv[i] = load_bc(Cb, i, n) * dyv[i];
            }
          }
          hs[0] = hin;
#pragma unroll
          for (int i = 0; i < kI; ++i) hs[i + 1] = fmaf(av[i], hs[i], dtx[i] * Bn[i]);
          const float An = A2[n] * 0.6931471805599453f;  // A[c, n]
#pragma unroll
          for (int i = kI - 1; i >= 0; --i) {
            const float gi = q + cv[i];  // dL/dh_t
            q = av[i] * gi;
            const float ga = q * hs[i];  // dL/da_t * a_t
            ddt[i] = fmaf(ga, An, fmaf(gi * Bn[i], xv[i], ddt[i]));
            dA_acc[n] = fmaf(ga, dt[i], dA_acc[n]);
            du[i] = fmaf(gi * dt[i], Bn[i], du[i]);
            float dBv = gi * dtx[i];
            float dCv = dyv[i] * hs[i + 1];
            for (int off = 1; off < CL; off <<= 1) {  // sum over the block's channels
              dBv += __shfl_xor_sync(kFullMask, dBv, off);
              dCv += __shfl_xor_sync(kFullMask, dCv, off);
            }
            if (l.cl == 0 && t0 + i < L) {
              const int j = pos[i] * kDirections * N + k * N + n;
              dBb[j] = dBv;
              dCb[j] = dCv;
            }
          }
        }
      }
#pragma unroll
      for (int i = 0; i < kI; ++i) {
        const float dd = ddt[i] * sg[i];
        dbias_acc += dd;
        if (l.cvalid && t0 + i < L) {
          ddeltab[pos[i] * KD + k * D] = from_f<T>(dd);
          const int j = acc_index(a, pos[i], l.cl);
          acc[j] = k == 0 ? du[i] : acc[j] + du[i];
        }
      }

      if (v == visits - 1) {
        // end of the direction: dA, dDs, d_delta_bias summed over the block's segments in a fixed order
#pragma unroll
        for (int q = 0; q < kN + 2; ++q) {
          if (q < N || q >= kN) {
            float s = q < kN ? dA_acc[q] : (q == kN ? dD_acc : dbias_acc);
            for (int off = CL; off < 32; off <<= 1) s += __shfl_xor_sync(kFullMask, s, off);
            const int slot = q < kN ? q : N + (q - kN);
            if (l.segw == 0) red[(l.warp * (N + 2) + slot) * CL + l.cl] = s;
          }
        }
        __syncthreads();
        if (l.warp == 0 && l.segw == 0 && l.cvalid) {
          const int64_t prm = l.b * KD + k * D + l.c;
          for (int slot = 0; slot < N + 2; ++slot) {
            float s = 0.f;
            for (int w = 0; w < nw; ++w) s += red[(w * (N + 2) + slot) * CL + l.cl];
            if (slot < N)
              a.dA[prm * N + slot] = s;
            else if (slot == N && a.dD)
              a.dD[prm] = s;
            else if (slot == N + 1 && a.dbias)
              a.dbias[prm] = s;
          }
        }
      }
    }
    buf ^= 1;
    if (++v == visits) {
      v = 0;
      ++k;
    }
  }
  __syncthreads();

  // dx = the accumulator, converted once
  if (l.cvalid) {
    for (int p = threadIdx.x >> a.cl_log2; p < L; p += blockDim.x >> a.cl_log2)
      dxb[p * D + l.c] = from_f<T>(acc[acc_index(a, p, l.cl)]);
  }
}

// out[i] = sum over j of parts[j * stride + i], j in order: the partials of the backward.
struct SumJob {
  const float* parts;
  float* out;
  int64_t n, stride, count;
};

constexpr int kMaxSumJobs = 5;

struct SumJobs {
  SumJob job[kMaxSumJobs];
};

__global__ void __launch_bounds__(256) sum_partials_kernel(const SumJobs jobs) {
  const SumJob j = jobs.job[blockIdx.y];
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < j.n; i += (int64_t)gridDim.x * blockDim.x) {
    float s = 0.f;
    for (int64_t q = 0; q < j.count; ++q) s += j.parts[q * j.stride + i];
    j.out[i] = s;
  }
}

// ------------------------------------------------------------------------------------------------
// Host side

// Limits (docs/ops.md, "Limits"): directions 4; B, H, W, D below 2^31; H * (W | 1) <= 36864 (the
// accumulator of a block lives in shared memory); per image L*4*D <= 2^31 - 1 (offsets inside an image are
// 32-bit; the batch offset is 64-bit); every tensor and the workspace below 2^60 elements; the grid
// B * ceil(D / CL) <= B * D <= 2^31 - 1 blocks. Beyond them: SSM_ERR_BAD_SIZE, before any device work.
int check_shape(const ssm_scan2d_shape* s) {
  if (s == nullptr) return SSM_ERR_NULL_POINTER;
  if (s->dtype != SSM_FLOAT32 && s->dtype != SSM_FLOAT16 && s->dtype != SSM_BFLOAT16)
    return SSM_ERR_BAD_DTYPE;
  if (s->batch < 1 || s->height < 1 || s->width < 1 || s->dim < 1 || s->dstate < 1 || s->dstate > 16 ||
      s->directions != kDirections)
    return SSM_ERR_BAD_SIZE;
  const int64_t lim = int64_t(1) << 31;
  if (s->batch >= lim || s->height >= lim || s->width >= lim || s->dim >= lim) return SSM_ERR_BAD_SIZE;
  if (s->height * (s->width | 1) > kMaxAccPositions) return SSM_ERR_BAD_SIZE;
  const int64_t L = s->height * s->width;
  if (L * kDirections * s->dim > INT_MAX) return SSM_ERR_BAD_SIZE;
  if (!product_below({s->batch, L, kDirections, s->dim}) || !product_below({s->batch, L, kDirections, 16}))
    return SSM_ERR_BAD_SIZE;
  if (s->batch * s->dim > INT_MAX) return SSM_ERR_BAD_SIZE;
  if (!product_below({2, s->dim, s->batch, L, kDirections, 16})) return SSM_ERR_BAD_SIZE;  // workspace
  return SSM_OK;
}

Scan2DArgs base_args(const ssm_scan2d_shape* s, const Plan2D& p) {
  Scan2DArgs a{};
  a.height = (int)s->height;
  a.width = (int)s->width;
  a.length = (int)(s->height * s->width);
  a.wp = (int)(s->width | 1);
  a.dim = (int)s->dim;
  a.dstate = (int)s->dstate;
  a.softplus = s->delta_softplus ? 1 : 0;
  a.cl_log2 = p.cl_log2;
  a.nwarps = p.nwarps;
  a.nchunks = p.nchunks;
  a.chunk = p.chunk;
  a.ncb = p.ncb;
  a.acc_floats = p.acc_floats;
  a.fd_h = make_fastdiv((uint32_t)s->height);
  a.fd_w = make_fastdiv((uint32_t)s->width);
  a.bc_row = (int)s->dstate;
  return a;
}

template <typename Kernel>
int launch(Kernel kernel, const Scan2DArgs& a, const Plan2D& p, int64_t batch, cudaStream_t st) {
  if (p.smem_bytes > 48 * 1024 &&
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)p.smem_bytes) !=
          cudaSuccess) {
    (void)cudaGetLastError();
    return SSM_ERR_CUDA;
  }
  kernel<<<(unsigned)(batch * p.ncb), p.groups * p.nwarps * 32, (size_t)p.smem_bytes, st>>>(a);
  return ssm_cuda_host::launch_status();
}

template <typename T, int kN>
struct Fwd2DLauncher {
  static int run(const Scan2DArgs& a, const Plan2D& p, int64_t batch, cudaStream_t st) {
    if constexpr (kN == 1) {  // direction groups: one state only (make_plan)
      if constexpr (sizeof(T) == 2) {  // prefetched dt input pairs (ssm_selective_scan_2d_proj_fwd_cuda)
        if (a.dt_pairs > 0) {
          if (p.groups == kDirections) return launch(scan2d_fwd_kernel<T, kN, kDirections, true>, a, p, batch, st);
          return launch(scan2d_fwd_kernel<T, kN, 1, true>, a, p, batch, st);
        }
      }
      if (p.groups == kDirections) return launch(scan2d_fwd_kernel<T, kN, kDirections, false>, a, p, batch, st);
    }
    return launch(scan2d_fwd_kernel<T, kN, 1, false>, a, p, batch, st);
  }
};

template <typename T, int kN>
struct Bwd2DLauncher {
  static int run(const Scan2DArgs& a, const Plan2D& p, int64_t batch, cudaStream_t st) {
    return launch(scan2d_bwd_kernel<T, kN>, a, p, batch, st);
  }
};

}  // namespace

extern "C" {

SSM_API int ssm_selective_scan_2d_fwd_cuda(const ssm_scan2d_shape* shape, const void* x, const void* delta,
                                           const void* A, const void* Bs, const void* Cs, const void* Ds,
                                           const void* delta_bias, void* y, void* stream) {
  const int st = check_shape(shape);
  if (st != SSM_OK) return st;
  if (!x || !delta || !A || !Bs || !Cs || !y) return SSM_ERR_NULL_POINTER;
  const Plan2D p = make_plan(shape, false);
  Scan2DArgs a = base_args(shape, p);
  a.x = x;
  a.delta = delta;
  a.A = A;
  a.Bs = Bs;
  a.Cs = Cs;
  a.Ds = Ds;
  a.delta_bias = delta_bias;
  a.y = y;
  return dispatch<Fwd2DLauncher>(shape->dtype, (int)shape->dstate, a, p, shape->batch,
                                 static_cast<cudaStream_t>(stream));
}

SSM_API int ssm_selective_scan_2d_proj_fwd_cuda(const ssm_scan2d_shape* shape, int64_t dt_rank, const void* x,
                                                const void* x_proj, const void* dt_projection, const void* A,
                                                const void* Ds, const void* delta_bias, void* y, void* stream) {
  const int st = check_shape(shape);
  if (st != SSM_OK) return st;
  if (dt_rank < 1 || dt_rank > SSM_SCAN2D_MAX_DT_RANK) return SSM_ERR_BAD_SIZE;
  const int64_t row = dt_rank + 2 * shape->dstate;
  // x_proj's offsets inside an image are 32-bit, as delta's are
  if (shape->height * shape->width * kDirections * row > INT_MAX) return SSM_ERR_BAD_SIZE;
  if (!product_below({shape->batch, shape->height * shape->width, kDirections, row})) return SSM_ERR_BAD_SIZE;
  if (!x || !x_proj || !dt_projection || !A || !y) return SSM_ERR_NULL_POINTER;
  const Plan2D p = make_plan(shape, false);
  Scan2DArgs a = base_args(shape, p);
  const size_t elem = shape->dtype == SSM_FLOAT32 ? 4 : 2;
  a.x = x;
  a.delta = x_proj;
  a.dtw = dt_projection;
  a.dt_rank = (int)dt_rank;
  a.bc_row = (int)row;
  // 16-bit data, one state, an even rank of at most 2 * kMaxDtPairs and 4-byte aligned rows: the kPairs kernel
  const bool pairs = elem == 2 && shape->dstate == 1 && dt_rank % 2 == 0 && dt_rank <= 2 * kMaxDtPairs &&
                     row % 2 == 0 && reinterpret_cast<uintptr_t>(x_proj) % 4 == 0;
  a.dt_pairs = pairs ? (int)(dt_rank / 2) : 0;
  a.Bs = static_cast<const char*>(x_proj) + dt_rank * elem;
  a.Cs = static_cast<const char*>(x_proj) + (dt_rank + shape->dstate) * elem;
  a.A = A;
  a.Ds = Ds;
  a.delta_bias = delta_bias;
  a.y = y;
  return dispatch<Fwd2DLauncher>(shape->dtype, (int)shape->dstate, a, p, shape->batch,
                                 static_cast<cudaStream_t>(stream));
}

SSM_API size_t ssm_selective_scan_2d_bwd_cuda_workspace_size(const ssm_scan2d_shape* shape) {
  if (check_shape(shape) != SSM_OK) return 0;
  const Workspace2D w = workspace_layout(shape, make_plan(shape, true));
  return (size_t)(w.nbc + w.nprm) * sizeof(float);
}

SSM_API int ssm_selective_scan_2d_bwd_cuda(const ssm_scan2d_shape* shape, const void* x, const void* delta,
                                           const void* A, const void* Bs, const void* Cs, const void* Ds,
                                           const void* delta_bias, const void* dy, void* dx, void* d_delta,
                                           float* dA, float* dBs, float* dCs, float* dDs, float* d_delta_bias,
                                           void* workspace, void* stream) {
  const int st = check_shape(shape);
  if (st != SSM_OK) return st;
  if (!x || !delta || !A || !Bs || !Cs || !dy || !dx || !d_delta || !dA || !dBs || !dCs)
    return SSM_ERR_NULL_POINTER;
  const Plan2D p = make_plan(shape, true);
  const Workspace2D w = workspace_layout(shape, p);
  if (w.nbc + w.nprm > 0 && workspace == nullptr) return SSM_ERR_NULL_POINTER;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int64_t B = shape->batch, N = shape->dstate, KD = kDirections * shape->dim;
  float* ws = static_cast<float*>(workspace);
  float* prm = ws + w.nbc;

  Scan2DArgs a = base_args(shape, p);
  a.x = x;
  a.delta = delta;
  a.A = A;
  a.Bs = Bs;
  a.Cs = Cs;
  a.Ds = Ds;
  a.delta_bias = delta_bias;
  a.dy = dy;
  a.dx = dx;
  a.d_delta = d_delta;
  a.bc_part_stride = w.bc;
  a.dB = p.ncb > 1 ? ws : dBs;
  a.dC = p.ncb > 1 ? ws + p.ncb * w.bc : dCs;
  a.dA = B > 1 ? prm : dA;
  a.dD = B > 1 ? prm + B * KD * N : dDs;
  a.dbias = B > 1 ? prm + B * KD * (N + 1) : d_delta_bias;
  const int status = dispatch<Bwd2DLauncher>(shape->dtype, (int)N, a, p, B, s);
  if (status != SSM_OK) return status;

  SumJobs jobs{};
  int njobs = 0;
  int64_t most = 0;
  auto add = [&](const float* parts, float* out, int64_t n, int64_t count) {
    if (out == nullptr) return;
    jobs.job[njobs++] = SumJob{parts, out, n, n, count};
    most = n > most ? n : most;
  };
  if (p.ncb > 1) {
    add(a.dB, dBs, w.bc, p.ncb);
    add(a.dC, dCs, w.bc, p.ncb);
  }
  if (B > 1) {
    add(a.dA, dA, KD * N, B);
    add(a.dD, dDs, KD, B);
    add(a.dbias, d_delta_bias, KD, B);
  }
  if (njobs == 0) return SSM_OK;
  const int64_t blocks = (most + 255) / 256;
  sum_partials_kernel<<<dim3((unsigned)(blocks < 4096 ? blocks : 4096), (unsigned)njobs), 256, 0, s>>>(jobs);
  return ssm_cuda_host::launch_status();
}

}  // extern "C"
