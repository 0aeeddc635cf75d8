// SelectiveScan (Mamba S6 recurrence, VMamba grouping) on CUDA: forward and backward.
//
// Work decomposition
//   A "row" is one (batch, channel) sequence of length L. A row is processed by a segment of LPR
//   consecutive lanes of one warp; each lane owns kItems = 8 consecutive time steps of a chunk of
//   LPR*8 steps, and the row walks through L chunk by chunk. Loads are 8 contiguous elements per lane
//   (16 bytes for fp16/bf16, 2x16 bytes for fp32) and adjacent lanes read adjacent memory, so every
//   access is coalesced. The same code serves batch 1 (parallel over L inside the warp) and large
//   batches (many rows in flight).
//   Inside a chunk the linear recurrence h <- a*h + b is solved by a local sequential composition per
//   lane, a segmented Hillis-Steele scan of the affine maps over the LPR lanes (warp shuffles), and a
//   carry from chunk to chunk. The state dimension N (1..16) is an unrolled loop over a compile-time
//   bucket (1, 2, 4, 8, 16) with a run-time bound.
//
// Forward: LPR = min(32, ceil(L/8)), any value (L = 48 gives 6 lanes per row and 5 rows per warp).
//   On the vector path (L % 8 == 0, 16-byte aligned tensors) the loads of chunk c+1 are issued before
//   the arithmetic of chunk c. softplus is max(x,0) + log1p(exp(-|x|)) with a polynomial log1p on
//   [0, 1] (degree 8 for fp32 data, degree 5 for 16-bit data) and the hardware exp2. When a row is a
//   single chunk (L <= 256) and the grid is large, a segment scans SSM_SCAN_ROW_REPS rows in turn and
//   loads the next row while it computes the current one (short rows otherwise leave each warp idle
//   on one load-compute-store round trip).
//
// Backward (LPR a power of two): one kernel. Phase 1 runs the forward recurrence and stores the state
//   at every chunk boundary in the workspace (rows x (nchunks-1) x N floats). Phase 2 walks the chunks in
//   reverse: it recomputes the states inside the chunk from the checkpoint, runs the adjoint recurrence
//       q_t = a_t * (q_{t+1} + C_t*dy_t),  g_t = q_{t+1} + C_t*dy_t   (g_t = dL/dh_t)
//   with the same segmented scan (right to left), and forms all gradients. A block holds 8 warps whose
//   rows all belong to one (batch, group), so dBs/dCs are reduced over the channels of the block (warp
//   shuffles, then shared memory) before one float32 atomicAdd per block and time step. dA, dDs and
//   d_delta_bias are reduced per row in registers and added atomically at the end; all float32
//   gradient buffers are zeroed with cudaMemsetAsync on the same stream first.
#include <limits.h>

#include "selective_scan_common.cuh"

namespace {

using namespace ssm_cuda;

constexpr int kItems = 8;
constexpr int kFwdWarps = 4;
constexpr int kBwdWarps = 8;

struct ScanArgs {
  const void* u;
  const void* delta;
  const void* A;
  const void* Bs;
  const void* Cs;
  const void* Ds;
  const void* delta_bias;
  const void* dy;
  void* y;
  void* du;
  void* d_delta;
  float* dA;
  float* dBs;
  float* dCs;
  float* dDs;
  float* d_delta_bias;
  float* ws;
  int64_t groups, dim, length, rows, channels;
  int64_t blocks_per_group;
  int dstate, lpr_log2, nchunks, softplus, vec;
  int lpr, rpw;  // forward: lanes per row (1..32, any value) and rows per warp (32 / lpr)
  int lpr_mul;   // ceil(65536 / lpr): lane / lpr == (lane * lpr_mul) >> 16 for lane < 32
  // Forward, vector path: rows per lane segment, row_stride apart (rows of one chunk are short, and a
  // segment that moves on to another row can load it while it computes the current one).
  int row_reps;
  int64_t row_stride;
  FastDiv fd_channels, fd_dim;  // valid when rows < 2^31
};

struct ScanPlan {
  int lpr_log2;
  int64_t chunk_len;
  int64_t nchunks;
};

// Forward plan: lanes per row = ceil(L / 8) capped at 32 (any value, so that short rows fill the warp:
// L = 48 gives 6 lanes per row and 5 rows per warp).
struct FwdPlan {
  int lpr, rpw;
  int64_t chunk_len, nchunks;
};

inline FwdPlan make_fwd_plan(int64_t L) {
  FwdPlan p;
  const int64_t need = (L + kItems - 1) / kItems;
  p.lpr = need >= 32 ? 32 : (int)need;
  p.rpw = 32 / p.lpr;
  p.chunk_len = int64_t(kItems) * p.lpr;
  p.nchunks = (L + p.chunk_len - 1) / p.chunk_len;
  return p;
}

// Backward plan: lanes per row is a power of two (segments aligned for xor reductions).
inline ScanPlan make_plan(int64_t L) {
  ScanPlan p;
  const int64_t need = (L + kItems - 1) / kItems;
  int lg = 0;
  while ((int64_t(1) << lg) < need && lg < 5) ++lg;
  p.lpr_log2 = lg;
  p.chunk_len = int64_t(kItems) << lg;
  p.nchunks = (L + p.chunk_len - 1) / p.chunk_len;
  return p;
}

template <typename T>
__device__ __forceinline__ void load_items(const T* __restrict__ row, int64_t t0, int nval, int vec,
                                           float (&o)[kItems]) {
  if (vec && nval == kItems) {
    load_vec<T, kItems>(row + t0, o);
  } else {
#pragma unroll
    for (int i = 0; i < kItems; ++i) o[i] = (i < nval) ? to_f(row[t0 + i]) : 0.f;
  }
}

template <typename T>
__device__ __forceinline__ void store_items(T* __restrict__ row, int64_t t0, int nval, int vec,
                                            const float (&v)[kItems]) {
  if (vec && nval == kItems) {
    store_vec<T, kItems>(row + t0, v);
  } else {
#pragma unroll
    for (int i = 0; i < kItems; ++i)
      if (i < nval) row[t0 + i] = from_f<T>(v[i]);
  }
}

// Inclusive scan of affine maps h -> P*h + S over the lanes of a segment, left to right.
__device__ __forceinline__ void seg_scan_fwd(float& P, float& S, int sl, int lpr) {
  for (int off = 1; off < lpr; off <<= 1) {
    const float Pp = __shfl_up_sync(kFullMask, P, off, lpr);
    const float Sp = __shfl_up_sync(kFullMask, S, off, lpr);
    if (sl >= off) {
      S = fmaf(P, Sp, S);
      P *= Pp;
    }
  }
}

// Inclusive scan of affine maps q -> P*q + S over the lanes of a segment, right to left.
__device__ __forceinline__ void seg_scan_rev(float& P, float& S, int sl, int lpr) {
  for (int off = 1; off < lpr; off <<= 1) {
    const float Pn = __shfl_down_sync(kFullMask, P, off, lpr);
    const float Sn = __shfl_down_sync(kFullMask, S, off, lpr);
    if (sl + off < lpr) {
      S = fmaf(P, Sn, S);
      P *= Pn;
    }
  }
}

// Same scan for segments of any width (full-warp shuffles; sl = lane index within the segment).
__device__ __forceinline__ void seg_scan_fwd_any(float& P, float& S, int sl, int lpr) {
  for (int off = 1; off < lpr; off <<= 1) {
    const float Pp = __shfl_up_sync(kFullMask, P, off);
    const float Sp = __shfl_up_sync(kFullMask, S, off);
    if (sl >= off) {
      S = fmaf(P, Sp, S);
      P *= Pp;
    }
  }
}

// Row coordinates of a forward thread: row = (b, c), group g. 32-bit arithmetic when it fits.
struct RowInfo {
  int64_t r, b, c, g;
  bool valid;
  int sl, lpr, last_lane;
};

// rep: the segment's rep-th row (segments take rows rep * row_stride apart; see ScanArgs::row_reps).
__device__ __forceinline__ RowInfo fwd_row(const ScanArgs& a, int rep = 0) {
  RowInfo ri;
  const int lane = threadIdx.x & 31;
  const int lpr = a.lpr;
  const int seg = (lane * a.lpr_mul) >> 16;
  ri.lpr = lpr;
  ri.sl = lane - seg * lpr;
  const int seg_base = lane - ri.sl;
  ri.last_lane = seg_base + lpr - 1 < 32 ? seg_base + lpr - 1 : 31;
  const int64_t row = ((int64_t)blockIdx.x * kFwdWarps + (threadIdx.x >> 5)) * a.rpw + seg + rep * a.row_stride;
  ri.valid = seg < a.rpw && row < a.rows;
  ri.r = ri.valid ? row : 0;
  if (a.rows < (int64_t(1) << 31)) {
    const uint32_t r32 = (uint32_t)ri.r;
    const uint32_t b32 = fdiv(r32, a.fd_channels);
    const uint32_t c32 = r32 - b32 * (uint32_t)a.channels;
    ri.b = b32;
    ri.c = c32;
    ri.g = fdiv(c32, a.fd_dim);
  } else {
    ri.b = ri.r / a.channels;
    ri.c = ri.r - ri.b * a.channels;
    ri.g = ri.c / a.dim;
  }
  return ri;
}

__device__ __forceinline__ int n_valid(bool rv, int64_t L, int64_t t0) {
  if (!rv) return 0;
  const int64_t r = L - t0;
  return r <= 0 ? 0 : (r >= kItems ? kItems : (int)r);
}

// Raw 16-byte words of kItems elements, for loads issued one chunk ahead of their use.
template <typename T>
struct Raw8 {
  static constexpr int kWords = kItems * (int)sizeof(T) / 16;
  uint4 w[kWords];
  __device__ __forceinline__ void load(const T* p, bool ok) {
#pragma unroll
    for (int k = 0; k < kWords; ++k)
      w[k] = ok ? __ldg(reinterpret_cast<const uint4*>(p) + k) : make_uint4(0u, 0u, 0u, 0u);
  }
  __device__ __forceinline__ void unpack(float (&o)[kItems]) const {
    constexpr int per16 = 16 / (int)sizeof(T);
    constexpr int kw = Words<T>::kPerWord;
#pragma unroll
    for (int k = 0; k < kWords; ++k) {
      Words<T>::unpack(w[k].x, o + k * per16 + 0 * kw);
      Words<T>::unpack(w[k].y, o + k * per16 + 1 * kw);
      Words<T>::unpack(w[k].z, o + k * per16 + 2 * kw);
      Words<T>::unpack(w[k].w, o + k * per16 + 3 * kw);
    }
  }
};

#ifndef SSM_SCAN_PREFETCH
#define SSM_SCAN_PREFETCH 1
#endif
// Rows per lane segment in the forward vector path when a row is a single chunk (L <= 256), used when
// the grid still has at least kMinFwdBlocks blocks (a few waves on any GPU) after the division.
#ifndef SSM_SCAN_ROW_REPS
#define SSM_SCAN_ROW_REPS 4
#endif
constexpr int64_t kMinFwdBlocks = 1024;

// Forward, vector path (L % 8 == 0, 16-byte aligned tensors): the loads of the next chunk are issued
// before the arithmetic of the current one, so every warp keeps a chunk of loads in flight. With
// row_reps > 1 (rows of one chunk) a segment scans row_reps rows, and the next chunk is the first
// chunk of its next row: per-row parameters are loaded one row ahead as well.
template <typename T, int kN>
__global__ void __launch_bounds__(kFwdWarps * 32) scan_fwd_vec_kernel(const ScanArgs a) {
  const T* __restrict__ u = static_cast<const T*>(a.u);
  const T* __restrict__ delta = static_cast<const T*>(a.delta);
  const T* __restrict__ A = static_cast<const T*>(a.A);
  const T* __restrict__ Bs = static_cast<const T*>(a.Bs);
  const T* __restrict__ Cs = static_cast<const T*>(a.Cs);
  const T* __restrict__ Ds = static_cast<const T*>(a.Ds);
  const T* __restrict__ dbias = static_cast<const T*>(a.delta_bias);
  T* __restrict__ y = static_cast<T*>(a.y);
  const int N = a.dstate;
  const int64_t L = a.length;
  constexpr bool kPfBC = (kN == 1);  // B and C rows are prefetched too when N == 1

  RowInfo ri = fwd_row(a, 0);
  const int lpr = ri.lpr;
  const int sl = ri.sl;
  const int64_t chunk_len = int64_t(kItems) * lpr;
  Raw8<T> pu, pd, pb, pc;
  float nA2[kN], nDv, nbias;  // parameters of the row whose first chunk is in flight
  auto issue = [&](const RowInfo& q, int64_t t) {
    const bool ok = q.valid && t < L;
    pu.load(u + q.r * L + t, ok);
    pd.load(delta + q.r * L + t, ok);
    if (kPfBC) {
      const int64_t bc = (q.b * a.groups + q.g) * N * L + t;
      pb.load(Bs + bc, ok);
      pc.load(Cs + bc, ok);
    }
  };
  auto issue_params = [&](const RowInfo& q) {
#pragma unroll
    for (int n = 0; n < kN; ++n) nA2[n] = (n < N) ? ldf(A + q.c * N + n) * kLog2e : 0.f;
    nDv = Ds ? ldf(Ds + q.c) : 0.f;
    nbias = dbias ? ldf(dbias + q.c) : 0.f;
  };
  issue(ri, sl * kItems);
  issue_params(ri);

  for (int rep = 0; rep < a.row_reps; ++rep) {
    const bool rv = ri.valid;
    float A2[kN];
#pragma unroll
    for (int n = 0; n < kN; ++n) A2[n] = nA2[n];
    const float Dv = nDv, bias = nbias;
    T* yrow = y + ri.r * L;
    const T* Brow = Bs + (ri.b * a.groups + ri.g) * N * L;
    const T* Crow = Cs + (ri.b * a.groups + ri.g) * N * L;
    float carry[kN];
#pragma unroll
    for (int n = 0; n < kN; ++n) carry[n] = 0.f;
    RowInfo next = ri;
    for (int ch = 0; ch < a.nchunks; ++ch) {
      const int64_t t0 = ch * chunk_len + sl * kItems;
      const int nval = (rv && t0 < L) ? kItems : 0;
      float uv[kItems], dt[kItems], yv[kItems], dtu[kItems], Bv0[kItems], Cv0[kItems];
      pu.unpack(uv);
      pd.unpack(dt);
      if (kPfBC) {
        pb.unpack(Bv0);
        pc.unpack(Cv0);
      }
      if (ch + 1 < a.nchunks) {
        issue(ri, t0 + chunk_len);
      } else if (rep + 1 < a.row_reps) {
        next = fwd_row(a, rep + 1);
        issue(next, sl * kItems);
        issue_params(next);
      }
      if (a.softplus) {
#pragma unroll
        for (int i = 0; i < kItems; ++i) dt[i] = softplus_f<T>(dt[i] + bias);
      } else {
#pragma unroll
        for (int i = 0; i < kItems; ++i) dt[i] += bias;
      }
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        dt[i] = nval ? dt[i] : 0.f;
        dtu[i] = dt[i] * uv[i];
        yv[i] = Ds ? Dv * uv[i] : 0.f;  // no D term without Ds (0 * inf is NaN)
      }
#pragma unroll
      for (int n = 0; n < kN; ++n) {
        if (n < N) {
          float Bv[kItems], Cv[kItems], av[kItems], bv[kItems];
          if (kPfBC) {
#pragma unroll
            for (int i = 0; i < kItems; ++i) {
              Bv[i] = Bv0[i];
              Cv[i] = Cv0[i];
            }
          } else {
            load_items(Brow + n * L, t0, nval, 1, Bv);
            load_items(Crow + n * L, t0, nval, 1, Cv);
          }
          float P = 1.f, S = 0.f;
#pragma unroll
          for (int i = 0; i < kItems; ++i) {
            av[i] = fast_exp2(dt[i] * A2[n]);
            bv[i] = dtu[i] * Bv[i];
            P *= av[i];
            S = fmaf(av[i], S, bv[i]);
          }
          seg_scan_fwd_any(P, S, sl, lpr);
          float Pe = __shfl_up_sync(kFullMask, P, 1);
          float Se = __shfl_up_sync(kFullMask, S, 1);
          if (sl == 0) {
            Pe = 1.f;
            Se = 0.f;
          }
          float h = fmaf(Pe, carry[n], Se);
#pragma unroll
          for (int i = 0; i < kItems; ++i) {
            h = fmaf(av[i], h, bv[i]);
            yv[i] = fmaf(Cv[i], h, yv[i]);
          }
          carry[n] = __shfl_sync(kFullMask, h, ri.last_lane);
        }
      }
      if (nval) store_vec<T, kItems>(yrow + t0, yv);
    }
    ri = next;
  }
}

// ------------------------------------------------------------------------------------------------
// Forward, general path (any L, any alignment).
template <typename T, int kN>
__global__ void __launch_bounds__(kFwdWarps * 32) scan_fwd_kernel(const ScanArgs a) {
  const T* __restrict__ u = static_cast<const T*>(a.u);
  const T* __restrict__ delta = static_cast<const T*>(a.delta);
  const T* __restrict__ A = static_cast<const T*>(a.A);
  const T* __restrict__ Bs = static_cast<const T*>(a.Bs);
  const T* __restrict__ Cs = static_cast<const T*>(a.Cs);
  const T* __restrict__ Ds = static_cast<const T*>(a.Ds);
  const T* __restrict__ dbias = static_cast<const T*>(a.delta_bias);
  T* __restrict__ y = static_cast<T*>(a.y);

  const RowInfo ri = fwd_row(a);
  const int lpr = ri.lpr;
  const int sl = ri.sl;
  const bool rv = ri.valid;
  const int64_t r = ri.r, b = ri.b, c = ri.c, g = ri.g;
  const int N = a.dstate;
  const int64_t L = a.length;

  float A2[kN];
#pragma unroll
  for (int n = 0; n < kN; ++n) A2[n] = (n < N) ? ldf(A + c * N + n) * kLog2e : 0.f;
  const float Dv = Ds ? ldf(Ds + c) : 0.f;
  const float bias = dbias ? ldf(dbias + c) : 0.f;

  const T* urow = u + r * L;
  const T* drow = delta + r * L;
  T* yrow = y + r * L;
  const T* Brow = Bs + (b * a.groups + g) * N * L;
  const T* Crow = Cs + (b * a.groups + g) * N * L;

  float carry[kN];
#pragma unroll
  for (int n = 0; n < kN; ++n) carry[n] = 0.f;

  const int64_t chunk_len = int64_t(kItems) * lpr;
  for (int ch = 0; ch < a.nchunks; ++ch) {
    const int64_t t0 = ch * chunk_len + sl * kItems;
    const int nval = n_valid(rv, L, t0);
    float uv[kItems], dt[kItems], yv[kItems], dtu[kItems];
    load_items(urow, t0, nval, a.vec, uv);
    load_items(drow, t0, nval, a.vec, dt);
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const float x = dt[i] + bias;
      const float d = a.softplus ? softplus_f<T>(x) : x;
      dt[i] = (i < nval) ? d : 0.f;
      dtu[i] = dt[i] * uv[i];
      yv[i] = Ds ? Dv * uv[i] : 0.f;
    }
#pragma unroll
    for (int n = 0; n < kN; ++n) {
      if (n < N) {
        float Bv[kItems], Cv[kItems], av[kItems], bv[kItems];
        load_items(Brow + n * L, t0, nval, a.vec, Bv);
        load_items(Crow + n * L, t0, nval, a.vec, Cv);
        float P = 1.f, S = 0.f;
#pragma unroll
        for (int i = 0; i < kItems; ++i) {
          av[i] = fast_exp2(dt[i] * A2[n]);
          bv[i] = dtu[i] * Bv[i];
          P *= av[i];
          S = fmaf(av[i], S, bv[i]);
        }
        seg_scan_fwd_any(P, S, sl, lpr);
        float Pe = __shfl_up_sync(kFullMask, P, 1);
        float Se = __shfl_up_sync(kFullMask, S, 1);
        if (sl == 0) {
          Pe = 1.f;
          Se = 0.f;
        }
        float h = fmaf(Pe, carry[n], Se);
#pragma unroll
        for (int i = 0; i < kItems; ++i) {
          h = fmaf(av[i], h, bv[i]);
          yv[i] = fmaf(Cv[i], h, yv[i]);
        }
        carry[n] = __shfl_sync(kFullMask, h, ri.last_lane);
      }
    }
    store_items(yrow, t0, nval, a.vec, yv);
  }
}

// ------------------------------------------------------------------------------------------------
template <typename T, int kN>
__global__ void __launch_bounds__(kBwdWarps * 32) scan_bwd_kernel(const ScanArgs a) {
  const T* __restrict__ u = static_cast<const T*>(a.u);
  const T* __restrict__ delta = static_cast<const T*>(a.delta);
  const T* __restrict__ A = static_cast<const T*>(a.A);
  const T* __restrict__ Bs = static_cast<const T*>(a.Bs);
  const T* __restrict__ Cs = static_cast<const T*>(a.Cs);
  const T* __restrict__ Ds = static_cast<const T*>(a.Ds);
  const T* __restrict__ dbias = static_cast<const T*>(a.delta_bias);
  const T* __restrict__ dy = static_cast<const T*>(a.dy);
  T* __restrict__ du = static_cast<T*>(a.du);
  T* __restrict__ d_delta = static_cast<T*>(a.d_delta);
  float* __restrict__ ws = a.ws;

  // [buffer][dB/dC][warp][position in chunk]
  __shared__ __align__(16) float red[2][2][kBwdWarps][kItems * 32];

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int lg = a.lpr_log2;
  const int lpr = 1 << lg;
  const int rpw = 32 >> lg;
  const int sl = lane & (lpr - 1);
  const int seg = lane >> lg;
  const int64_t bg = blockIdx.x / a.blocks_per_group;
  const int64_t jb = blockIdx.x - bg * a.blocks_per_group;
  const int64_t d = jb * (kBwdWarps * rpw) + warp * rpw + seg;
  const bool rv = d < a.dim;
  const int64_t b = bg / a.groups;
  const int64_t g = bg - b * a.groups;
  const int64_t c = g * a.dim + (rv ? d : 0);
  const int64_t row = b * a.channels + c;
  const int N = a.dstate;
  const int64_t L = a.length;
  const int nck = a.nchunks;

  float A2[kN];
#pragma unroll
  for (int n = 0; n < kN; ++n) A2[n] = (n < N) ? ldf(A + c * N + n) * kLog2e : 0.f;
  const float Dv = Ds ? ldf(Ds + c) : 0.f;
  const float bias = dbias ? ldf(dbias + c) : 0.f;

  const T* urow = u + row * L;
  const T* drow = delta + row * L;
  const T* dyrow = dy + row * L;
  T* durow = du + row * L;
  T* ddrow = d_delta + row * L;
  const T* Brow = Bs + bg * N * L;
  const T* Crow = Cs + bg * N * L;
  float* ws_row = ws + row * (int64_t)(nck - 1) * N;
  const int64_t chunk_len = int64_t(kItems) << lg;

  // ---- phase 1: states at chunk boundaries
  {
    float carry[kN];
#pragma unroll
    for (int n = 0; n < kN; ++n) carry[n] = 0.f;
    for (int ch = 0; ch + 1 < nck; ++ch) {
      const int64_t t0 = ch * chunk_len + sl * kItems;
      const int nval = n_valid(rv, L, t0);
      float uv[kItems], dt[kItems];
      load_items(urow, t0, nval, a.vec, uv);
      load_items(drow, t0, nval, a.vec, dt);
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        const float x = dt[i] + bias;
        const float dd = a.softplus ? softplus_f<T>(x) : x;
        dt[i] = (i < nval) ? dd : 0.f;
        uv[i] *= dt[i];
      }
#pragma unroll
      for (int n = 0; n < kN; ++n) {
        if (n < N) {
          float Bv[kItems];
          load_items(Brow + n * L, t0, nval, a.vec, Bv);
          float P = 1.f, S = 0.f;
#pragma unroll
          for (int i = 0; i < kItems; ++i) {
            const float av = fast_exp2(dt[i] * A2[n]);
            P *= av;
            S = fmaf(av, S, uv[i] * Bv[i]);
          }
          seg_scan_fwd(P, S, sl, lpr);
          const float Pl = __shfl_sync(kFullMask, P, lpr - 1, lpr);
          const float Sl = __shfl_sync(kFullMask, S, lpr - 1, lpr);
          carry[n] = fmaf(Pl, carry[n], Sl);
          if (rv && sl == 0) ws_row[(int64_t)ch * N + n] = carry[n];
        }
      }
    }
  }

  // ---- phase 2: reverse sweep
  float dA_acc[kN], qcarry[kN];
#pragma unroll
  for (int n = 0; n < kN; ++n) {
    dA_acc[n] = 0.f;
    qcarry[n] = 0.f;
  }
  float dD_acc = 0.f, dbias_acc = 0.f;
  int buf = 0;
  const int nthreads = kBwdWarps * 32;
  float* dBs_bg = a.dBs + bg * N * L;
  float* dCs_bg = a.dCs + bg * N * L;

  for (int ch = nck - 1; ch >= 0; --ch) {
    const int64_t t0 = ch * chunk_len + sl * kItems;
    const int nval = n_valid(rv, L, t0);
    float uv[kItems], dt[kItems], dyv[kItems], sg[kItems], dtu[kItems], duv[kItems], ddt[kItems];
    load_items(urow, t0, nval, a.vec, uv);
    load_items(drow, t0, nval, a.vec, dt);
    load_items(dyrow, t0, nval, a.vec, dyv);
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const float x = dt[i] + bias;
      float dd = x, s = 1.f;
      if (a.softplus) softplus_grad_f<T>(x, dd, s);
      const bool ok = i < nval;
      dt[i] = ok ? dd : 0.f;
      sg[i] = ok ? s : 0.f;
      dtu[i] = dt[i] * uv[i];
      duv[i] = Dv * dyv[i];
      dD_acc = fmaf(dyv[i], uv[i], dD_acc);
      ddt[i] = 0.f;
    }
#pragma unroll
    for (int n = 0; n < kN; ++n) {
      if (n < N) {
        float Bv[kItems], cv[kItems], av[kItems], hs[kItems + 1];
        load_items(Brow + n * L, t0, nval, a.vec, Bv);
        load_items(Crow + n * L, t0, nval, a.vec, cv);
        float hck = 0.f;
        if (ch > 0 && rv && sl == 0) hck = ws_row[(int64_t)(ch - 1) * N + n];
        // forward recompute inside the chunk
        float P = 1.f, S = 0.f;
#pragma unroll
        for (int i = 0; i < kItems; ++i) {
          av[i] = fast_exp2(dt[i] * A2[n]);
          P *= av[i];
          S = fmaf(av[i], S, dtu[i] * Bv[i]);
        }
        seg_scan_fwd(P, S, sl, lpr);
        float Pe = __shfl_up_sync(kFullMask, P, 1, lpr);
        float Se = __shfl_up_sync(kFullMask, S, 1, lpr);
        if (sl == 0) {
          Pe = 1.f;
          Se = 0.f;
        }
        hck = __shfl_sync(kFullMask, hck, 0, lpr);
        hs[0] = fmaf(Pe, hck, Se);
#pragma unroll
        for (int i = 0; i < kItems; ++i) hs[i + 1] = fmaf(av[i], hs[i], dtu[i] * Bv[i]);
        // adjoint recurrence, right to left
        float Pr = 1.f, Sr = 0.f;
#pragma unroll
        for (int i = kItems - 1; i >= 0; --i) {
          cv[i] *= dyv[i];
          Sr = av[i] * (Sr + cv[i]);
          Pr *= av[i];
        }
        seg_scan_rev(Pr, Sr, sl, lpr);
        float Pn = __shfl_down_sync(kFullMask, Pr, 1, lpr);
        float Sn = __shfl_down_sync(kFullMask, Sr, 1, lpr);
        if (sl == lpr - 1) {
          Pn = 1.f;
          Sn = 0.f;
        }
        float q = fmaf(Pn, qcarry[n], Sn);
        const float An = A2[n] * 0.6931471805599453f;
        float dBv[kItems], dCv[kItems];
#pragma unroll
        for (int i = kItems - 1; i >= 0; --i) {
          const float gi = q + cv[i];
          q = av[i] * gi;
          const float ga = q * hs[i];  // dL/da_t * a_t
          ddt[i] = fmaf(ga, An, fmaf(gi * Bv[i], uv[i], ddt[i]));
          dA_acc[n] = fmaf(ga, dt[i], dA_acc[n]);
          duv[i] = fmaf(gi * dt[i], Bv[i], duv[i]);
          dBv[i] = gi * dtu[i];
          dCv[i] = dyv[i] * hs[i + 1];
        }
        qcarry[n] = __shfl_sync(kFullMask, q, 0, lpr);

        // reduce dB/dC over the rows of the warp (segments), then over the warps of the block
        for (int off = lpr; off < 32; off <<= 1) {
#pragma unroll
          for (int i = 0; i < kItems; ++i) {
            dBv[i] += __shfl_xor_sync(kFullMask, dBv[i], off);
            dCv[i] += __shfl_xor_sync(kFullMask, dCv[i], off);
          }
        }
        if (lane < lpr) {
          float4* rb = reinterpret_cast<float4*>(&red[buf][0][warp][sl * kItems]);
          float4* rc = reinterpret_cast<float4*>(&red[buf][1][warp][sl * kItems]);
          rb[0] = make_float4(dBv[0], dBv[1], dBv[2], dBv[3]);
          rb[1] = make_float4(dBv[4], dBv[5], dBv[6], dBv[7]);
          rc[0] = make_float4(dCv[0], dCv[1], dCv[2], dCv[3]);
          rc[1] = make_float4(dCv[4], dCv[5], dCv[6], dCv[7]);
        }
        __syncthreads();
        const int cl = (int)chunk_len;
        for (int idx = threadIdx.x; idx < 2 * cl; idx += nthreads) {
          const int which = idx >= cl;
          const int pos = idx - which * cl;
          const int64_t t = ch * chunk_len + pos;
          if (t < L) {
            float s = 0.f;
#pragma unroll
            for (int w = 0; w < kBwdWarps; ++w) s += red[buf][which][w][pos];
            atomicAdd((which ? dCs_bg : dBs_bg) + (int64_t)n * L + t, s);
          }
        }
        buf ^= 1;
      }
    }
    float ddv[kItems];
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      ddv[i] = ddt[i] * sg[i];
      dbias_acc += ddv[i];
    }
    store_items(durow, t0, nval, a.vec, duv);
    store_items(ddrow, t0, nval, a.vec, ddv);
  }

  // per-row reductions over the lanes of the segment
#pragma unroll
  for (int n = 0; n < kN; ++n) {
    if (n < N) {
      float v = dA_acc[n];
      for (int off = lpr >> 1; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off);
      if (rv && sl == 0) atomicAdd(a.dA + c * N + n, v);
    }
  }
  for (int off = lpr >> 1; off > 0; off >>= 1) {
    dD_acc += __shfl_xor_sync(kFullMask, dD_acc, off);
    dbias_acc += __shfl_xor_sync(kFullMask, dbias_acc, off);
  }
  if (rv && sl == 0) {
    if (a.dDs) atomicAdd(a.dDs + c, dD_acc);
    if (a.d_delta_bias) atomicAdd(a.d_delta_bias + c, dbias_acc);
  }
}

// ------------------------------------------------------------------------------------------------
// Host side

// Limits (docs/ops.md, "Limits"): every dimension below 2^31; every tensor below 2^60 elements (offsets
// are 64-bit; row coordinates use the 32-bit FastDiv only while B*G*D < 2^31); and both launch grids
// within gridDim.x (2^31 - 1 blocks). Beyond them: SSM_ERR_BAD_SIZE, before any device work.
int check_shape(const ssm_scan_shape* s) {
  if (s == nullptr) return SSM_ERR_NULL_POINTER;
  if (s->dtype != SSM_FLOAT32 && s->dtype != SSM_FLOAT16 && s->dtype != SSM_BFLOAT16)
    return SSM_ERR_BAD_DTYPE;
  if (s->batch < 1 || s->groups < 1 || s->dim < 1 || s->dstate < 1 || s->dstate > 16 ||
      s->length < 1)
    return SSM_ERR_BAD_SIZE;
  const int64_t lim = int64_t(1) << 31;
  if (s->batch >= lim || s->groups >= lim || s->dim >= lim || s->length >= lim) return SSM_ERR_BAD_SIZE;
  // Every tensor must have fewer than 2^60 elements (Bs/Cs counted with N = 16, the largest bucket).
  if (!product_below({s->batch, s->groups, s->dim, s->length}) ||
      !product_below({s->batch, s->groups, 16, s->length}))
    return SSM_ERR_BAD_SIZE;
  // launch grids (the forward may divide its grid further, see row_reps)
  const FwdPlan fp = make_fwd_plan(s->length);
  const int64_t fwd_rows_per_block = int64_t(kFwdWarps) * fp.rpw;
  if ((s->batch * s->groups * s->dim + fwd_rows_per_block - 1) / fwd_rows_per_block > INT_MAX)
    return SSM_ERR_BAD_SIZE;
  const int64_t bwd_rows_per_block = int64_t(kBwdWarps) * (32 >> make_plan(s->length).lpr_log2);
  const int64_t blocks_per_group = (s->dim + bwd_rows_per_block - 1) / bwd_rows_per_block;
  if (s->batch * s->groups > INT_MAX / blocks_per_group) return SSM_ERR_BAD_SIZE;
  return SSM_OK;
}

template <typename T, int kN>
struct FwdLauncher {
  static int run(const ScanArgs& a, int64_t blocks, cudaStream_t st) {
    if (SSM_SCAN_PREFETCH && a.vec)
      scan_fwd_vec_kernel<T, kN><<<(unsigned)blocks, kFwdWarps * 32, 0, st>>>(a);
    else
      scan_fwd_kernel<T, kN><<<(unsigned)blocks, kFwdWarps * 32, 0, st>>>(a);
    return ssm_cuda_host::launch_status();
  }
};

template <typename T, int kN>
struct BwdLauncher {
  static int run(const ScanArgs& a, int64_t blocks, cudaStream_t st) {
    scan_bwd_kernel<T, kN><<<(unsigned)blocks, kBwdWarps * 32, 0, st>>>(a);
    return ssm_cuda_host::launch_status();
  }
};

ScanArgs base_args(const ssm_scan_shape* s, const ScanPlan& pl) {
  ScanArgs a{};
  a.groups = s->groups;
  a.dim = s->dim;
  a.length = s->length;
  a.channels = s->groups * s->dim;
  a.rows = s->batch * a.channels;
  a.dstate = (int)s->dstate;
  a.lpr_log2 = pl.lpr_log2;
  a.nchunks = (int)pl.nchunks;
  a.softplus = s->delta_softplus ? 1 : 0;
  if (a.rows < (int64_t(1) << 31)) {
    a.fd_channels = make_fastdiv((uint32_t)a.channels);
    a.fd_dim = make_fastdiv((uint32_t)a.dim);
  }
  return a;
}

}  // namespace

extern "C" {

SSM_API int ssm_selective_scan_fwd_cuda(const ssm_scan_shape* shape, const void* u, const void* delta,
                                        const void* A, const void* Bs, const void* Cs, const void* Ds,
                                        const void* delta_bias, void* y, void* stream) {
  const int st = check_shape(shape);
  if (st != SSM_OK) return st;
  if (!u || !delta || !A || !Bs || !Cs || !y) return SSM_ERR_NULL_POINTER;
  const ScanPlan pl = make_plan(shape->length);
  const FwdPlan fp = make_fwd_plan(shape->length);
  ScanArgs a = base_args(shape, pl);
  a.lpr = fp.lpr;
  a.rpw = fp.rpw;
  a.lpr_mul = (65536 + fp.lpr - 1) / fp.lpr;
  a.nchunks = (int)fp.nchunks;
  a.u = u;
  a.delta = delta;
  a.A = A;
  a.Bs = Bs;
  a.Cs = Cs;
  a.Ds = Ds;
  a.delta_bias = delta_bias;
  a.y = y;
  using ssm_cuda_host::aligned;
  a.vec = (shape->length % kItems == 0) && aligned(u, 16) && aligned(delta, 16) && aligned(Bs, 16) &&
          aligned(Cs, 16) && aligned(y, 16);
  const int64_t rows_per_block = int64_t(kFwdWarps) * fp.rpw;
  int64_t blocks = (a.rows + rows_per_block - 1) / rows_per_block;
  a.row_reps = 1;
  a.row_stride = 0;
  // only the vector kernel (SSM_SCAN_PREFETCH) loops over rows
  if (SSM_SCAN_ROW_REPS > 1 && SSM_SCAN_PREFETCH && a.vec && fp.nchunks == 1 &&
      blocks >= int64_t(SSM_SCAN_ROW_REPS) * kMinFwdBlocks) {
    a.row_reps = SSM_SCAN_ROW_REPS;
    blocks = (blocks + a.row_reps - 1) / a.row_reps;
    a.row_stride = blocks * rows_per_block;
  }
  if (blocks > INT_MAX) return SSM_ERR_BAD_SIZE;  // excluded by check_shape
  return dispatch<FwdLauncher>(shape->dtype, (int)shape->dstate, a, blocks,
                               static_cast<cudaStream_t>(stream));
}

SSM_API size_t ssm_selective_scan_bwd_cuda_workspace_size(const ssm_scan_shape* shape) {
  if (check_shape(shape) != SSM_OK) return 0;
  const ScanPlan pl = make_plan(shape->length);
  const int64_t rows = shape->batch * shape->groups * shape->dim;
  return (size_t)rows * (size_t)(pl.nchunks - 1) * (size_t)shape->dstate * sizeof(float);
}

SSM_API int ssm_selective_scan_bwd_cuda(const ssm_scan_shape* shape, const void* u, const void* delta,
                                        const void* A, const void* Bs, const void* Cs, const void* Ds,
                                        const void* delta_bias, const void* dy, void* du, void* d_delta,
                                        float* dA, float* dBs, float* dCs, float* dDs,
                                        float* d_delta_bias, void* workspace, void* stream) {
  const int st = check_shape(shape);
  if (st != SSM_OK) return st;
  if (!u || !delta || !A || !Bs || !Cs || !dy || !du || !d_delta || !dA || !dBs || !dCs)
    return SSM_ERR_NULL_POINTER;
  const ScanPlan pl = make_plan(shape->length);
  if (pl.nchunks > 1 && workspace == nullptr) return SSM_ERR_NULL_POINTER;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  ScanArgs a = base_args(shape, pl);
  a.u = u;
  a.delta = delta;
  a.A = A;
  a.Bs = Bs;
  a.Cs = Cs;
  a.Ds = Ds;
  a.delta_bias = delta_bias;
  a.dy = dy;
  a.du = du;
  a.d_delta = d_delta;
  a.dA = dA;
  a.dBs = dBs;
  a.dCs = dCs;
  a.dDs = dDs;
  a.d_delta_bias = d_delta_bias;
  a.ws = static_cast<float*>(workspace);
  using ssm_cuda_host::aligned;
  a.vec = (shape->length % kItems == 0) && aligned(u, 16) && aligned(delta, 16) && aligned(Bs, 16) &&
          aligned(Cs, 16) && aligned(dy, 16) && aligned(du, 16) && aligned(d_delta, 16);
  const int rpw = 32 >> pl.lpr_log2;
  a.blocks_per_group = (shape->dim + int64_t(kBwdWarps) * rpw - 1) / (int64_t(kBwdWarps) * rpw);
  const int64_t blocks = shape->batch * shape->groups * a.blocks_per_group;
  if (blocks > INT_MAX) return SSM_ERR_BAD_SIZE;  // excluded by check_shape

  const size_t nBC = (size_t)(shape->batch * shape->groups * shape->dstate * shape->length);
  const size_t nc = (size_t)a.channels;
  if (cudaMemsetAsync(dA, 0, nc * shape->dstate * sizeof(float), s) != cudaSuccess ||
      cudaMemsetAsync(dBs, 0, nBC * sizeof(float), s) != cudaSuccess ||
      cudaMemsetAsync(dCs, 0, nBC * sizeof(float), s) != cudaSuccess ||
      (dDs && cudaMemsetAsync(dDs, 0, nc * sizeof(float), s) != cudaSuccess) ||
      (d_delta_bias && cudaMemsetAsync(d_delta_bias, 0, nc * sizeof(float), s) != cudaSuccess))
    return SSM_ERR_CUDA;
  return dispatch<BwdLauncher>(shape->dtype, (int)shape->dstate, a, blocks, s);
}

}  // extern "C"
