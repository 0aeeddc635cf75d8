// VSSBlockTail (domain version 7) on CUDA: a VMamba block's per-position chain after its scan in one kernel.
//
// A block of 128 threads owns `tile` rows (16, 32 or 64) and keeps all their intermediates in shared memory:
//   act   (dtype)   the scan output, then its LayerNorm a, then b = LayerNorm(x1), then GELU's output g: the A
//                   operands of the three products (b with its own row stride)
//   x1    (float32) the residual, then x1 = residual + a @ out_proj
//   stage (float32) the output of each product
// The products read their weights straight from global memory (L2 / L1 keep them: at most 2 MB per call).
// float16 / bfloat16 with D, C, H multiples of 16 and 32-byte aligned weights: the products run on tensor
// cores (WMMA 16x16x16, float32 accumulators). Otherwise (float32, other widths): a SIMT loop, four rows per
// thread. At batch 1 the point is one launch instead of eight; at large batches one read of Y and R and one
// write of Z instead of the unfused chain's intermediates.
#include <mma.h>

#include "cuda_common.cuh"

namespace {

using namespace ssm_cuda;

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kSimtRows = 4;  // rows per thread in the SIMT product

struct TailArgs {
  const void* y;
  const void* residual;
  ssm_vss_tail_params p;
  void* z;
  int64_t rows;
  int D, C, H;
  int tile;                 // rows per block
  int lda, ldc, ldx, lds;   // row strides (elements) of act, act2, x1, stage
  float eps;
};

__host__ __device__ inline int round_up(int v, int m) { return (v + m - 1) / m * m; }

// Shared-memory strides: rows padded so that 16-row tiles start 32-byte aligned and consecutive rows fall on
// different banks.
inline void set_strides(TailArgs* a) {
  a->lda = round_up(a->D > a->H ? a->D : a->H, 16) + 8;
  a->ldc = round_up(a->C, 16) + 8;
  a->ldx = round_up(a->C, 16) + 4;
  a->lds = round_up(a->C > a->H ? a->C : a->H, 16) + 4;
}

inline size_t smem_bytes(const TailArgs& a, int elem) {
  const int operand = a.lda > a.ldc ? a.lda : a.ldc;
  return (size_t)a.tile * ((size_t)operand * elem + (size_t)(a.ldx + a.lds) * 4);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

__device__ __forceinline__ float gelu(float v) { return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f)); }

// LayerNorm of `n` values of row `src` (float or dtype) into `dst` (dtype), by one warp, float32 statistics in
// two passes.
template <typename S, typename T>
__device__ void warp_layer_norm(const S* src, const T* __restrict__ w, const T* __restrict__ b, T* dst, int n,
                                float eps, int lane) {
  float s = 0.0f;
  for (int c = lane; c < n; c += 32) s += to_f(src[c]);
  const float mean = warp_sum(s) / (float)n;
  float q = 0.0f;
  for (int c = lane; c < n; c += 32) {
    const float d = to_f(src[c]) - mean;
    q += d * d;
  }
  const float rstd = rsqrtf(warp_sum(q) / (float)n + eps);
  for (int c = lane; c < n; c += 32) dst[c] = from_f<T>((to_f(src[c]) - mean) * rstd * ldf(w + c) + ldf(b + c));
}

// out[r][n] = sum_k A[r][k] * W[k][n] for r < tile, n < N: SIMT, each thread kSimtRows rows of one column.
template <typename T>
__device__ void product_simt(const T* A, int lda, const T* __restrict__ W, int N, int K, float* out, int ldo,
                             int tile) {
  const int units = (tile / kSimtRows) * N;
  for (int u = threadIdx.x; u < units; u += kThreads) {
    const int n = u % N;
    const int r0 = (u / N) * kSimtRows;
    float acc[kSimtRows] = {};
    for (int k = 0; k < K; ++k) {
      const float w = ldf(W + (size_t)k * N + n);
#pragma unroll
      for (int i = 0; i < kSimtRows; ++i) acc[i] += to_f(A[(r0 + i) * lda + k]) * w;
    }
#pragma unroll
    for (int i = 0; i < kSimtRows; ++i) out[(r0 + i) * ldo + n] = acc[i];
  }
}

// The same product on tensor cores: N and K multiples of 16, W 32-byte aligned. A warp takes one 16-column
// tile at a time and all the 16-row tiles of the block (at most 4), so each fragment of W is loaded once.
template <typename T>
__device__ void product_mma(const T* A, int lda, const T* __restrict__ W, int N, int K, float* out, int ldo,
                            int tile) {
  using namespace nvcuda;
  const int warp = threadIdx.x / 32;
  const int tiles_m = tile / 16;
  for (int tn = warp; tn < N / 16; tn += kWarps) {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[4];
#pragma unroll
    for (int m = 0; m < 4; ++m) wmma::fill_fragment(acc[m], 0.0f);
    for (int k = 0; k < K; k += 16) {
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> bf;
      wmma::load_matrix_sync(bf, W + (size_t)k * N + tn * 16, N);
#pragma unroll
      for (int m = 0; m < 4; ++m) {
        if (m < tiles_m) {
          wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> af;
          wmma::load_matrix_sync(af, A + m * 16 * lda + k, lda);
          wmma::mma_sync(acc[m], af, bf, acc[m]);
        }
      }
    }
#pragma unroll
    for (int m = 0; m < 4; ++m) {
      if (m < tiles_m) wmma::store_matrix_sync(out + m * 16 * ldo + tn * 16, acc[m], ldo, wmma::mem_row_major);
    }
  }
}

template <typename T, bool MMA>
__device__ __forceinline__ void product(const T* A, int lda, const void* W, int N, int K, float* out, int ldo,
                                        int tile) {
  if constexpr (MMA) {
    product_mma<T>(A, lda, static_cast<const T*>(W), N, K, out, ldo, tile);
  } else {
    product_simt<T>(A, lda, static_cast<const T*>(W), N, K, out, ldo, tile);
  }
}

template <typename T, bool MMA>
__global__ void __launch_bounds__(kThreads) vss_tail_kernel(TailArgs a) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int tile = a.tile, D = a.D, C = a.C, H = a.H;
  T* act = reinterpret_cast<T*>(smem);
  T* act2 = act;  // b: the region of a (read by product 1 only) and of g (written after product 2)
  float* x1 = reinterpret_cast<float*>(act + (size_t)tile * (a.lda > a.ldc ? a.lda : a.ldc));
  float* stage = x1 + (size_t)tile * a.ldx;
  const T* y = static_cast<const T*>(a.y);
  const T* res = static_cast<const T*>(a.residual);
  const T* on_w = static_cast<const T*>(a.p.out_norm_weight);
  const T* on_b = static_cast<const T*>(a.p.out_norm_bias);
  const T* n_w = static_cast<const T*>(a.p.norm_weight);
  const T* n_b = static_cast<const T*>(a.p.norm_bias);
  const T* b1 = static_cast<const T*>(a.p.fc1_bias);
  const T* b2 = static_cast<const T*>(a.p.fc2_bias);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t row0 = (int64_t)blockIdx.x * tile;
  const int valid = (int)min((int64_t)tile, a.rows - row0);

  // Y and R of the tile (rows past the end are zeros; they are computed and never stored).
  for (int i = threadIdx.x; i < tile * D; i += kThreads) {
    const int r = i / D, k = i - r * D;
    act[r * a.lda + k] = r < valid ? y[(row0 + r) * D + k] : from_f<T>(0.0f);
  }
  for (int i = threadIdx.x; i < tile * C; i += kThreads) {
    const int r = i / C, c = i - r * C;
    x1[r * a.ldx + c] = r < valid ? ldf(res + (row0 + r) * C + c) : 0.0f;
  }
  __syncthreads();
  for (int r = warp; r < tile; r += kWarps) {
    warp_layer_norm(act + r * a.lda, on_w, on_b, act + r * a.lda, D, a.eps, lane);
  }
  __syncthreads();
  product<T, MMA>(act, a.lda, a.p.out_proj, C, D, stage, a.lds, tile);
  __syncthreads();
  for (int r = warp; r < tile; r += kWarps) {
    float* xr = x1 + r * a.ldx;
    for (int c = lane; c < C; c += 32) xr[c] += stage[r * a.lds + c];
    __syncwarp();
    warp_layer_norm(xr, n_w, n_b, act2 + r * a.ldc, C, a.eps, lane);
  }
  __syncthreads();
  product<T, MMA>(act2, a.ldc, a.p.fc1_weight, H, C, stage, a.lds, tile);
  __syncthreads();
  for (int i = threadIdx.x; i < tile * H; i += kThreads) {
    const int r = i / H, j = i - r * H;
    act[r * a.lda + j] = from_f<T>(gelu(stage[r * a.lds + j] + ldf(b1 + j)));
  }
  __syncthreads();
  product<T, MMA>(act, a.lda, a.p.fc2_weight, C, H, stage, a.lds, tile);
  __syncthreads();
  T* z = static_cast<T*>(a.z);
  for (int i = threadIdx.x; i < valid * C; i += kThreads) {
    const int r = i / C, c = i - r * C;
    z[(row0 + r) * C + c] = from_f<T>(x1[r * a.ldx + c] + stage[r * a.lds + c] + ldf(b2 + c));
  }
}

int check_shape(const ssm_vss_tail_shape* sh) {
  if (!sh) return SSM_ERR_NULL_POINTER;
  if (sh->dtype != SSM_FLOAT32 && sh->dtype != SSM_FLOAT16 && sh->dtype != SSM_BFLOAT16) return SSM_ERR_BAD_DTYPE;
  if (sh->rows < 0) return SSM_ERR_BAD_SIZE;
  if (sh->inner < 1 || sh->inner > SSM_VSS_TAIL_MAX_WIDE || sh->hidden < 1 || sh->hidden > SSM_VSS_TAIL_MAX_WIDE ||
      sh->channels < 1 || sh->channels > SSM_VSS_TAIL_MAX_CHANNELS) {
    return SSM_ERR_BAD_SIZE;
  }
  const int64_t widest = sh->inner > sh->hidden ? (sh->inner > sh->channels ? sh->inner : sh->channels)
                                                : (sh->hidden > sh->channels ? sh->hidden : sh->channels);
  if (sh->rows > ((int64_t(1) << 60) - 1) / widest) return SSM_ERR_BAD_SIZE;
  if (sh->rows > int64_t(16) * 0x7fffffff) return SSM_ERR_BAD_SIZE;  // blocks of >= 16 rows: gridDim.x
  if (!(sh->epsilon > 0.0f && sh->epsilon < INFINITY)) return SSM_ERR_UNSUPPORTED;
  return SSM_OK;
}

template <typename T, bool MMA>
int launch(const TailArgs& a, size_t smem, cudaStream_t stream) {
  if (smem > 48 * 1024) {
    if (cudaFuncSetAttribute(vss_tail_kernel<T, MMA>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem) !=
        cudaSuccess) {
      return SSM_ERR_CUDA;
    }
  }
  const int64_t blocks = (a.rows + a.tile - 1) / a.tile;
  vss_tail_kernel<T, MMA><<<(unsigned)blocks, kThreads, smem, stream>>>(a);
  return ssm_cuda_host::launch_status();
}

template <typename T>
int dispatch(const TailArgs& a, size_t smem, bool mma, cudaStream_t stream) {
  return mma ? launch<T, true>(a, smem, stream) : launch<T, false>(a, smem, stream);
}

}  // namespace

extern "C" {

SSM_API int ssm_vss_block_tail_fwd_cuda(const ssm_vss_tail_shape* shape, const void* y, const void* residual,
                                        const ssm_vss_tail_params* params, void* z, void* stream) {
  const int st = check_shape(shape);
  if (st != SSM_OK) return st;
  if (!y || !residual || !params || !z || !params->out_norm_weight || !params->out_norm_bias || !params->out_proj ||
      !params->norm_weight || !params->norm_bias || !params->fc1_weight || !params->fc1_bias ||
      !params->fc2_weight || !params->fc2_bias) {
    return SSM_ERR_NULL_POINTER;
  }
  if (shape->rows == 0) return SSM_OK;
  TailArgs a;
  a.y = y;
  a.residual = residual;
  a.p = *params;
  a.z = z;
  a.rows = shape->rows;
  a.D = (int)shape->inner;
  a.C = (int)shape->channels;
  a.H = (int)shape->hidden;
  a.eps = shape->epsilon;
  set_strides(&a);
  const int elem = shape->dtype == SSM_FLOAT32 ? 4 : 2;

  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    return SSM_ERR_CUDA;
  }
  // The largest tile that still gives every SM two blocks and fits 64 KB; small problems take 16 rows.
  a.tile = 16;
  for (int tile = 64; tile > 16; tile /= 2) {
    TailArgs t = a;
    t.tile = tile;
    if ((a.rows + tile - 1) / tile >= 2 * (int64_t)sms && smem_bytes(t, elem) <= 64 * 1024) {
      a.tile = tile;
      break;
    }
  }
  const size_t smem = smem_bytes(a, elem);
  int smem_max = 0;
  if (cudaDeviceGetAttribute(&smem_max, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess) {
    return SSM_ERR_CUDA;
  }
  if (smem > (size_t)smem_max) return SSM_ERR_UNSUPPORTED;  // widths this GPU's shared memory cannot hold

  using ssm_cuda_host::aligned;
  const bool mma = shape->dtype != SSM_FLOAT32 && a.D % 16 == 0 && a.C % 16 == 0 && a.H % 16 == 0 &&
                   aligned(params->out_proj, 32) && aligned(params->fc1_weight, 32) &&
                   aligned(params->fc2_weight, 32);
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (shape->dtype) {
    case SSM_FLOAT32: return launch<float, false>(a, smem, s);
    case SSM_FLOAT16: return dispatch<__half>(a, smem, mma, s);
    default: return dispatch<__nv_bfloat16>(a, smem, mma, s);
  }
}

}  // extern "C"
