// LayerNorm (domain version 3) on CUDA: normalisation over the last axis of a (rows, channels) tensor.
//
// The rows of the models are short (32..768 channels) and there are many of them, so the kernels are built
// around a group of L lanes per row (L a power of two <= 32): a warp normalises 32 / L rows at once, and the
// reductions are L-lane butterflies of warp shuffles (no shared memory, no barriers).
//
// Register path (the default): lane j of a row's group holds the vectors j, j + L, ..., j + (NV-1)·L of
//   the row (a vector is 16 bytes: 4 float32 or 8 float16/bfloat16 channels, loaded and stored with one
//   instruction, when channels·sizeof(T) is a multiple of 16 and every pointer is 16-byte aligned; else a
//   vector is one element). So one load instruction of the group covers L·16 contiguous bytes of its row,
//   and a warp's instruction covers whole 32-byte sectors. The row stays in registers: the mean is reduced
//   first, then the sum of squared deviations from it (two passes over the registers, the variance of
//   docs/ops.md), then y is written. weight and bias are read (through L1, where they stay) at the end.
//   L and NV are picked from the row length on the host (make_plan): the narrowest group that holds the
//   row in at most 4 vectors per lane with little padding, else the least padding with at most 8 vectors
//   per lane (16 elements per lane in the scalar path: 32 lanes x 32 elements, padded to a power of two).
// Loop path (rows too long for registers: more than 1024 float32 / 2048 float16 channels, or 1024 in
//   the scalar path): a warp per row, three passes over global memory (sum, squared deviations, output),
//   vectorised under the same conditions.
//
// AddLayerNorm (domain version 4) is the same kernels with ADD = true: each element is loaded as x + residual,
//   added in float32 and rounded to T; that rounded value is stored to `sum` from the registers (register path)
//   and is the row that gets normalised, so (y, sum) equal an Add followed by LayerNorm of the stored sum bit
//   for bit whenever both calls take the same path (same C, and every pointer 16-byte aligned or not). The
//   loop path stores sum in its first pass and recomputes x + residual in the two others (it never reads
//   back what the kernel wrote).
// Rows are visited with a warp-uniform grid-stride loop (the grid is capped at kMaxBlocks), so every lane
// of a warp takes part in every shuffle. Each row's statistics are summed in a fixed order: results are
// deterministic and do not depend on the launch configuration of other rows.
// Indexing: the row offset is 64-bit; offsets inside a row are 32-bit (channels <= 2^30).
#include <math.h>

#include "cuda_common.cuh"

namespace {

using namespace ssm_cuda;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// Grid cap; the grid-stride loop covers any row count. A small value (tests/gpu/check_cuda_kernels.py's
// "lnblocks" variant) makes every block loop over several row groups.
#ifndef SSM_LN_MAX_BLOCKS
#define SSM_LN_MAX_BLOCKS (1 << 20)
#endif
constexpr int64_t kMaxBlocks = SSM_LN_MAX_BLOCKS;
constexpr int64_t kMaxChannels = int64_t(1) << 30;
constexpr int64_t kMaxElements = (int64_t(1) << 60) - 1;
constexpr int kMaxVecPerLane = 8;      // register path, 16-byte vectors
constexpr int kMaxScalarPerLane = 32;  // register path, one element per vector

struct LnArgs {
  const void* x;
  const void* r;  // residual (AddLayerNorm), else unused
  const void* w;
  const void* b;
  void* y;
  void* s;        // sum output (AddLayerNorm), else unused
  int64_t rows;
  int C;           // channels
  int nvec;        // vectors per row (C / V)
  int lanes_log2;  // lanes per row = 1 << lanes_log2 (register path)
  float eps;
};

// Sum over the L = 1 << lanes_log2 lanes of an aligned lane group; every lane of the group gets the same
// value (the butterfly adds the same two operands in every lane of a pair, so the sums are bitwise equal).
__device__ __forceinline__ float group_sum(float v, int lanes_log2) {
  for (int o = (1 << lanes_log2) >> 1; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

// The float32 value of x rounded to T (round to nearest even), as an Add kernel would store it.
template <typename T>
__device__ __forceinline__ float round_to(float x) {
  return to_f(from_f<T>(x));
}

// V elements of the row starting at element `off`: x, or (ADD) x + residual rounded to T.
template <typename T, int V, bool ADD>
__device__ __forceinline__ void load_row(const T* __restrict__ xr, const T* __restrict__ rr, int off, float* v) {
  load_vec<T, V>(xr + off, v);
  if constexpr (ADD) {
    float rv[V];
    load_vec<T, V>(rr + off, rv);
#pragma unroll
    for (int e = 0; e < V; ++e) v[e] = round_to<T>(v[e] + rv[e]);
  }
}

// ------------------------------------------------------------------------------------------------
// Register path: V elements per vector, NV vectors per lane.
template <typename T, int V, int NV, bool ADD>
__global__ void __launch_bounds__(kThreads) layer_norm_regs_kernel(const LnArgs a) {
  const T* __restrict__ x = static_cast<const T*>(a.x);
  const T* __restrict__ res = static_cast<const T*>(a.r);
  const T* __restrict__ w = static_cast<const T*>(a.w);
  const T* __restrict__ b = static_cast<const T*>(a.b);
  T* __restrict__ y = static_cast<T*>(a.y);
  T* __restrict__ sum = static_cast<T*>(a.s);
  const int lg = a.lanes_log2;
  const int L = 1 << lg;
  const int lane = threadIdx.x & 31;
  const int j = lane & (L - 1);
  const int rows_per_warp = 32 >> lg;
  const int64_t warp = (int64_t)blockIdx.x * kWarps + (threadIdx.x >> 5);
  const int64_t row_step = (int64_t)gridDim.x * kWarps * rows_per_warp;
  const int C = a.C;
  const float inv_c = 1.0f / (float)C;
  // The loop condition depends on the warp only: all 32 lanes reach every shuffle.
  for (int64_t base = warp * rows_per_warp; base < a.rows; base += row_step) {
    const int64_t row = base + (lane >> lg);
    const bool row_ok = row < a.rows;
    const int64_t row_off = (row_ok ? row : 0) * (int64_t)C;
    const T* xr = x + row_off;
    float v[NV][V];
    bool ok[NV];
#pragma unroll
    for (int k = 0; k < NV; ++k) {
      const int idx = j + k * L;
      ok[k] = row_ok && idx < a.nvec;
      if (ok[k]) {
        load_row<T, V, ADD>(xr, ADD ? res + row_off : nullptr, idx * V, v[k]);
      } else {
#pragma unroll
        for (int e = 0; e < V; ++e) v[k][e] = 0.f;
      }
    }
    if constexpr (ADD) {
#pragma unroll
      for (int k = 0; k < NV; ++k) {
        if (ok[k]) store_vec<T, V>(sum + row_off + (j + k * L) * V, v[k]);
      }
    }
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < NV; ++k) {
#pragma unroll
      for (int e = 0; e < V; ++e) s += v[k][e];
    }
    const float mean = group_sum(s, lg) / (float)C;
    float q = 0.f;
#pragma unroll
    for (int k = 0; k < NV; ++k) {
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const float d = ok[k] ? v[k][e] - mean : 0.f;
        v[k][e] = d;
        q = fmaf(d, d, q);
      }
    }
    const float rstd = rsqrtf(group_sum(q, lg) * inv_c + a.eps);
    T* yr = y + (row_ok ? row : 0) * (int64_t)C;
#pragma unroll
    for (int k = 0; k < NV; ++k) {
      if (!ok[k]) continue;
      const int off = (j + k * L) * V;
      float wv[V], bv[V], o[V];
      load_vec<T, V>(w + off, wv);
      load_vec<T, V>(b + off, bv);
#pragma unroll
      for (int e = 0; e < V; ++e) o[e] = fmaf(v[k][e] * rstd, wv[e], bv[e]);
      store_vec<T, V>(yr + off, o);
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Loop path: a warp per row, three passes over global memory.
template <typename T, int V, bool ADD>
__global__ void __launch_bounds__(kThreads) layer_norm_loop_kernel(const LnArgs a) {
  const T* __restrict__ x = static_cast<const T*>(a.x);
  const T* __restrict__ res = static_cast<const T*>(a.r);
  const T* __restrict__ w = static_cast<const T*>(a.w);
  const T* __restrict__ b = static_cast<const T*>(a.b);
  T* __restrict__ y = static_cast<T*>(a.y);
  T* __restrict__ sum = static_cast<T*>(a.s);
  const int lane = threadIdx.x & 31;
  const int64_t warp = (int64_t)blockIdx.x * kWarps + (threadIdx.x >> 5);
  const int64_t step = (int64_t)gridDim.x * kWarps;
  const int C = a.C, nvec = a.nvec;
  const float inv_c = 1.0f / (float)C;
  for (int64_t row = warp; row < a.rows; row += step) {
    const T* xr = x + row * (int64_t)C;
    const T* rr = ADD ? res + row * (int64_t)C : nullptr;
    T* yr = y + row * (int64_t)C;
    float s = 0.f;
    for (int i = lane; i < nvec; i += 32) {
      float v[V];
      load_row<T, V, ADD>(xr, rr, i * V, v);
      if constexpr (ADD) store_vec<T, V>(sum + row * (int64_t)C + i * V, v);
#pragma unroll
      for (int e = 0; e < V; ++e) s += v[e];
    }
    const float mean = warp_sum(s) / (float)C;
    float q = 0.f;
    for (int i = lane; i < nvec; i += 32) {
      float v[V];
      load_row<T, V, ADD>(xr, rr, i * V, v);
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const float d = v[e] - mean;
        q = fmaf(d, d, q);
      }
    }
    const float rstd = rsqrtf(warp_sum(q) * inv_c + a.eps);
    for (int i = lane; i < nvec; i += 32) {
      float v[V], wv[V], bv[V];
      load_row<T, V, ADD>(xr, rr, i * V, v);
      load_vec<T, V>(w + i * V, wv);
      load_vec<T, V>(b + i * V, bv);
#pragma unroll
      for (int e = 0; e < V; ++e) v[e] = fmaf((v[e] - mean) * rstd, wv[e], bv[e]);
      store_vec<T, V>(yr + i * V, v);
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Host side

int check_shape(const ssm_layer_norm_shape* s) {
  if (s == nullptr) return SSM_ERR_NULL_POINTER;
  if (s->dtype != SSM_FLOAT32 && s->dtype != SSM_FLOAT16 && s->dtype != SSM_BFLOAT16) return SSM_ERR_BAD_DTYPE;
  if (s->rows < 0 || s->channels < 1 || s->channels > kMaxChannels) return SSM_ERR_BAD_SIZE;
  if (s->rows > kMaxElements / s->channels) return SSM_ERR_BAD_SIZE;
  if (!(isfinite(s->epsilon) && s->epsilon > 0.0f)) return SSM_ERR_UNSUPPORTED;
  return SSM_OK;
}

struct Plan {
  bool vec;        // 16-byte vectors
  bool loop;       // loop path (warp per row)
  int lanes_log2;  // register path
  int nv;          // vectors per lane (register path)
  int nvec;        // vectors per row
};

Plan make_plan(int64_t C, int elem, bool aligned16) {
  Plan p{};
  p.vec = aligned16 && (C * elem) % 16 == 0;
  const int64_t V = p.vec ? 16 / elem : 1;
  const int64_t nvec = C / V;
  p.nvec = (int)nvec;
  if (p.vec) {
    // The narrowest group holding the row in <= 4 vectors per lane with <= 1/8 padding ...
    for (int lg = nvec == 1 ? 0 : 1; lg <= 5; ++lg) {
      const int64_t L = int64_t(1) << lg;
      const int64_t nv = (nvec + L - 1) / L;
      if (nv <= 4 && (L * nv - nvec) * 8 <= L * nv) {
        p.lanes_log2 = lg;
        p.nv = (int)nv;
        return p;
      }
    }
    // ... else the least padding with <= 8 vectors per lane (narrower groups first) ...
    int64_t best_waste = -1;
    for (int lg = 0; lg <= 5; ++lg) {
      const int64_t L = int64_t(1) << lg;
      const int64_t nv = (nvec + L - 1) / L;
      if (nv > kMaxVecPerLane) continue;
      if (best_waste < 0 || L * nv - nvec < best_waste) {
        best_waste = L * nv - nvec;
        p.lanes_log2 = lg;
        p.nv = (int)nv;
      }
    }
    p.loop = best_waste < 0;  // ... else a warp per row
    return p;
  }
  // Scalar: L = min(32, C rounded up to a power of two), NV elements per lane rounded up to a power of two.
  int lg = 0;
  while (lg < 5 && (int64_t(1) << lg) < C) ++lg;
  const int64_t L = int64_t(1) << lg;
  int64_t nv = 1;
  while (nv * L < C) nv <<= 1;
  p.lanes_log2 = lg;
  p.nv = (int)nv;
  p.loop = nv > kMaxScalarPerLane;
  return p;
}

unsigned grid_for(int64_t rows, int64_t rows_per_block) {
  int64_t blocks = (rows + rows_per_block - 1) / rows_per_block;
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  return (unsigned)(blocks < 1 ? 1 : blocks);
}

template <typename T, int V, int NV, bool ADD>
void launch_regs(const LnArgs& a, cudaStream_t st) {
  const int64_t rows_per_block = int64_t(kWarps) * (32 >> a.lanes_log2);
  layer_norm_regs_kernel<T, V, NV, ADD><<<grid_for(a.rows, rows_per_block), kThreads, 0, st>>>(a);
}

template <typename T, bool ADD>
int launch(const Plan& p, const LnArgs& a, cudaStream_t st) {
  constexpr int VV = 16 / (int)sizeof(T);
  if (p.loop) {
    if (p.vec) {
      layer_norm_loop_kernel<T, VV, ADD><<<grid_for(a.rows, kWarps), kThreads, 0, st>>>(a);
    } else {
      layer_norm_loop_kernel<T, 1, ADD><<<grid_for(a.rows, kWarps), kThreads, 0, st>>>(a);
    }
    return ssm_cuda_host::launch_status();
  }
  if (p.vec) {
    switch (p.nv) {
      case 1: launch_regs<T, VV, 1, ADD>(a, st); break;
      case 2: launch_regs<T, VV, 2, ADD>(a, st); break;
      case 3: launch_regs<T, VV, 3, ADD>(a, st); break;
      case 4: launch_regs<T, VV, 4, ADD>(a, st); break;
      case 5: launch_regs<T, VV, 5, ADD>(a, st); break;
      case 6: launch_regs<T, VV, 6, ADD>(a, st); break;
      case 7: launch_regs<T, VV, 7, ADD>(a, st); break;
      case 8: launch_regs<T, VV, 8, ADD>(a, st); break;
      default: return SSM_ERR_UNSUPPORTED;  // not reached (make_plan)
    }
  } else {
    switch (p.nv) {
      case 1: launch_regs<T, 1, 1, ADD>(a, st); break;
      case 2: launch_regs<T, 1, 2, ADD>(a, st); break;
      case 4: launch_regs<T, 1, 4, ADD>(a, st); break;
      case 8: launch_regs<T, 1, 8, ADD>(a, st); break;
      case 16: launch_regs<T, 1, 16, ADD>(a, st); break;
      case 32: launch_regs<T, 1, 32, ADD>(a, st); break;
      default: return SSM_ERR_UNSUPPORTED;  // not reached (make_plan)
    }
  }
  return ssm_cuda_host::launch_status();
}

// LayerNorm (residual == nullptr and sum == nullptr) or AddLayerNorm of checked, non-empty arguments.
template <bool ADD>
int run(const ssm_layer_norm_shape* shape, const void* x, const void* residual, const void* weight,
        const void* bias, void* y, void* sum, cudaStream_t stream) {
  const int elem = shape->dtype == SSM_FLOAT32 ? 4 : 2;
  using ssm_cuda_host::aligned;
  const bool aligned16 = aligned(x, 16) && aligned(weight, 16) && aligned(bias, 16) && aligned(y, 16) &&
                         aligned(residual, 16) && aligned(sum, 16);
  const Plan p = make_plan(shape->channels, elem, aligned16);
  LnArgs a;
  a.x = x;
  a.r = residual;
  a.w = weight;
  a.b = bias;
  a.y = y;
  a.s = sum;
  a.rows = shape->rows;
  a.C = (int)shape->channels;
  a.nvec = p.nvec;
  a.lanes_log2 = p.lanes_log2;
  a.eps = shape->epsilon;
  switch (shape->dtype) {
    case SSM_FLOAT32: return launch<float, ADD>(p, a, stream);
    case SSM_FLOAT16: return launch<__half, ADD>(p, a, stream);
    default: return launch<__nv_bfloat16, ADD>(p, a, stream);
  }
}

}  // namespace

extern "C" {

SSM_API int ssm_layer_norm_fwd_cuda(const ssm_layer_norm_shape* shape, const void* x, const void* weight,
                                    const void* bias, void* y, void* stream) {
  const int st = check_shape(shape);
  if (st != SSM_OK) return st;
  if (!x || !weight || !bias || !y) return SSM_ERR_NULL_POINTER;
  if (shape->rows == 0) return SSM_OK;
  return run<false>(shape, x, nullptr, weight, bias, y, nullptr, static_cast<cudaStream_t>(stream));
}

SSM_API int ssm_add_layer_norm_fwd_cuda(const ssm_layer_norm_shape* shape, const void* x, const void* residual,
                                        const void* weight, const void* bias, void* y, void* sum, void* stream) {
  const int st = check_shape(shape);
  if (st != SSM_OK) return st;
  if (!x || !residual || !weight || !bias || !y || !sum) return SSM_ERR_NULL_POINTER;
  if (shape->rows == 0) return SSM_OK;
  return run<true>(shape, x, residual, weight, bias, y, sum, static_cast<cudaStream_t>(stream));
}

}  // extern "C"
