// VSSBlockTail (domain version 7) on CUDA: a VMamba block's per-position chain after its scan in one kernel.
//
// Three kernels, the same arithmetic (the sums of the products and of the statistics may be ordered
// differently):
// * Resident (float16 / bfloat16, D, C, H multiples of 16, the three weight matrices fit in shared memory
//   next to the row buffers: hrvmamba_small's 64x48 and 32x24 stages). A persistent block of 256 threads
//   copies the weights and the parameter vectors into shared memory once (cp.async), then takes row tiles in
//   turn, the next tile's Y and R copied in while the current one is computed. Products on tensor cores with
//   both operands in shared memory; Z written 16 bytes at a time.
// * Cluster (sm_90; the same types and widths, weights too large for one block, as on the 16x12 and 8x6
//   stages, and few rows: one wave of clusters takes them all, as at batch 1). The weights' columns spread
//   over the blocks of a thread-block cluster, which exchange rows through distributed shared memory.
// * Streaming (everything else). A block of 128 threads owns `tile` rows (16, 32 or 64) and keeps all their
//   intermediates in shared memory:
//     act   (dtype)   the scan output, then its LayerNorm a, then b = LayerNorm(x1), then GELU's output g: the
//                     A operands of the three products (b with its own row stride)
//     x1    (float32) the residual, then x1 = residual + a @ out_proj
//     stage (float32) the output of each product
//   The products read their weights straight from global memory (L2 / L1 keep them: at most 2 MB per call).
//   float16 / bfloat16 with D, C, H multiples of 16 and 32-byte aligned weights: the products run on tensor
//   cores (WMMA 16x16x16, float32 accumulators). Otherwise (float32, other widths): a SIMT loop, four rows per
//   thread.
// At batch 1 the point is one launch instead of eight; at large batches one read of Y and R and one write of Z
// instead of the unfused chain's intermediates.
#include <cooperative_groups.h>
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

// ---------------------------------------------------------------------------------------------
// Resident kernel: weights in shared memory, persistent blocks.

#ifndef SSM_VSS_TAIL_RESIDENT
#define SSM_VSS_TAIL_RESIDENT 1
#endif
constexpr bool kResident = SSM_VSS_TAIL_RESIDENT != 0;  // compile option 0: not the resident kernel
#ifndef SSM_VSS_TAIL_CLUSTERS
#define SSM_VSS_TAIL_CLUSTERS 1
#endif
constexpr bool kClusters = SSM_VSS_TAIL_CLUSTERS != 0;  // compile option 0: not the cluster kernel
constexpr int kResThreads = 256;
constexpr int kResWarps = kResThreads / 32;

__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
  const int n = valid ? 16 : 0;  // 0: fill the 16 bytes with zeros, read nothing
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all_but_newest() { asm volatile("cp.async.wait_group 1;\n" ::); }

// Byte offsets of the shared-memory regions (each 128-byte aligned) and the row strides (elements), padded by
// 16 bytes so that consecutive rows fall on different banks.
struct ResidentLayout {
  int ldwo, ldw1, ldw2;  // out_proj (D x C), fc1 (C x H), fc2 (H x C)
  int lda, ldr, ldb, ldx, lds;
  size_t w_out, w_fc1, w_fc2, act[2], res[2], act2, x1, stage, vecs, total;
};

// Hands out consecutive 128-byte aligned regions of a block's shared memory.
struct SmemArena {
  size_t used = 0;
  size_t take(size_t bytes) {
    const size_t here = used;
    used = (used + bytes + 127) / 128 * 128;
    return here;
  }
};

inline ResidentLayout resident_layout(int D, int C, int H, int tile) {
  ResidentLayout l;
  const int e = 2;  // float16 / bfloat16
  l.ldwo = C + 8;
  l.ldw1 = H + 8;
  l.ldw2 = C + 8;
  l.lda = (D > H ? D : H) + 8;
  l.ldr = C + 8;
  l.ldb = C + 8;
  l.ldx = C + 4;
  l.lds = (C > H ? C : H) + 4;
  SmemArena arena;
  auto take = [&arena](size_t bytes) { return arena.take(bytes); };
  l.w_out = take((size_t)D * l.ldwo * e);
  l.w_fc1 = take((size_t)C * l.ldw1 * e);
  l.w_fc2 = take((size_t)H * l.ldw2 * e);
  for (int i = 0; i < 2; ++i) {
    l.act[i] = take((size_t)tile * l.lda * e);
    l.res[i] = take((size_t)tile * l.ldr * e);
  }
  l.act2 = take((size_t)tile * l.ldb * e);
  l.x1 = take((size_t)tile * l.ldx * 4);
  l.stage = take((size_t)tile * l.lds * 4);
  l.vecs = take((size_t)(2 * D + 3 * C + H) * e);
  l.total = arena.used;
  return l;
}

// The six parameter vectors in shared memory (read in every phase; from global memory each read would be
// another round trip to L2): out_norm weight / bias (n_on), norm weight / bias, fc1 bias, fc2 bias (n_c, n_h),
// from column c0 / h0 on.
template <typename T>
struct SharedVectors {
  T *on_w, *on_b, *n_w, *n_b, *b1, *b2;
  __device__ SharedVectors(unsigned char* at, const ssm_vss_tail_params& p, int n_on, int n_c, int n_h, int c0,
                           int h0, int threads) {
    on_w = reinterpret_cast<T*>(at);
    on_b = on_w + n_on;
    n_w = on_b + n_on;
    n_b = n_w + n_c;
    b2 = n_b + n_c;
    b1 = b2 + n_c;
    const T* src_on_w = static_cast<const T*>(p.out_norm_weight);
    const T* src_on_b = static_cast<const T*>(p.out_norm_bias);
    for (int i = threadIdx.x; i < n_on; i += threads) {
      on_w[i] = src_on_w[i];
      on_b[i] = src_on_b[i];
    }
    for (int i = threadIdx.x; i < n_c; i += threads) {
      n_w[i] = static_cast<const T*>(p.norm_weight)[c0 + i];
      n_b[i] = static_cast<const T*>(p.norm_bias)[c0 + i];
      b2[i] = static_cast<const T*>(p.fc2_bias)[c0 + i];
    }
    for (int i = threadIdx.x; i < n_h; i += threads) b1[i] = static_cast<const T*>(p.fc1_bias)[h0 + i];
  }
};

// The arguments of the resident and cluster kernels (Layout: ResidentLayout or ClusterLayout).
template <typename Layout>
struct FusedArgs {
  const void* y;
  const void* residual;
  ssm_vss_tail_params p;
  void* z;
  int64_t rows;
  int D, C, H, tile;
  float eps;
  Layout l;
};
using ResidentArgs = FusedArgs<ResidentLayout>;

// Copy columns [c0, c0 + n) (n a multiple of 8) of `rows` rows (row stride `stride` elements) from global into
// shared memory (row stride ld), rows past `valid` as zeros.
template <typename T>
__device__ __forceinline__ void copy_cols_async(T* dst, int ld, const T* src, int stride, int c0, int rows,
                                                int valid, int n) {
  const int chunks = n / 8;
  for (int i = threadIdx.x; i < rows * chunks; i += kResThreads) {
    const int r = i / chunks, c = (i - r * chunks) * 8;
    const bool ok = r < valid;
    cp_async16(dst + r * ld + c, ok ? src + (size_t)r * stride + c0 + c : src, ok);
  }
}

// out = A @ W for the tile's rows (N columns, K deep), `splits` warps per 16 x 16 output tile each summing a
// contiguous part of K into `part`, then added up in a fixed order. Ends with the block synchronised.
template <typename T>
__device__ void product_split(const T* A, int lda, const T* W, int ldw, int N, int K, float* out, int ldo,
                              float* part, int tile, int splits) {
  using namespace nvcuda;
  const int warp = threadIdx.x / 32;
  const int tiles_m = tile / 16;
  const int items = tiles_m * (N / 16);
  const int k_len = K / splits;
  const size_t part_stride = (size_t)tile * ldo;
  for (int it = warp; it < items * splits; it += kResWarps) {
    const int item = it % items, s = it / items;
    const int m = item % tiles_m, n = item / tiles_m;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fill_fragment(acc, 0.0f);
    for (int k = s * k_len; k < (s + 1) * k_len; k += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> af;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> bf;
      wmma::load_matrix_sync(af, A + m * 16 * lda + k, lda);
      wmma::load_matrix_sync(bf, W + k * ldw + n * 16, ldw);
      wmma::mma_sync(acc, af, bf, acc);
    }
    float* dst = splits == 1 ? out : part + s * part_stride;
    wmma::store_matrix_sync(dst + m * 16 * ldo + n * 16, acc, ldo, wmma::mem_row_major);
  }
  __syncthreads();
  if (splits > 1) {
    for (int i = threadIdx.x; i < tile * N; i += kResThreads) {
      const int r = i / N, c = i - r * N;
      float v = part[r * ldo + c];
      for (int s = 1; s < splits; ++s) v += part[s * part_stride + r * ldo + c];
      out[r * ldo + c] = v;
    }
    __syncthreads();
  }
}

// Pack 8 floats into 16 bytes of dtype.
template <typename T>
__device__ __forceinline__ uint4 pack8(const float* v) {
  uint4 p;
  p.x = Words<T>::pack(v);
  p.y = Words<T>::pack(v + 2);
  p.z = Words<T>::pack(v + 4);
  p.w = Words<T>::pack(v + 6);
  return p;
}

template <typename T>
__global__ void __launch_bounds__(kResThreads) vss_tail_resident_kernel(ResidentArgs a) {
  extern __shared__ __align__(128) unsigned char smem[];
  const ResidentLayout& l = a.l;
  const int tile = a.tile, D = a.D, C = a.C, H = a.H;
  T* w_out = reinterpret_cast<T*>(smem + l.w_out);
  T* w_fc1 = reinterpret_cast<T*>(smem + l.w_fc1);
  T* w_fc2 = reinterpret_cast<T*>(smem + l.w_fc2);
  T* act2 = reinterpret_cast<T*>(smem + l.act2);
  float* x1 = reinterpret_cast<float*>(smem + l.x1);
  float* stage = reinterpret_cast<float*>(smem + l.stage);
  const T* y = static_cast<const T*>(a.y);
  const T* res = static_cast<const T*>(a.residual);
  const SharedVectors<T> v(smem + l.vecs, a.p, D, C, H, 0, 0, kResThreads);
  const T *on_w = v.on_w, *on_b = v.on_b, *n_w = v.n_w, *n_b = v.n_b, *b1 = v.b1, *b2 = v.b2;
  T* z = static_cast<T*>(a.z);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t tiles = (a.rows + tile - 1) / tile;

  copy_cols_async(w_out, l.ldwo, static_cast<const T*>(a.p.out_proj), C, 0, D, D, C);
  copy_cols_async(w_fc1, l.ldw1, static_cast<const T*>(a.p.fc1_weight), H, 0, C, C, H);
  copy_cols_async(w_fc2, l.ldw2, static_cast<const T*>(a.p.fc2_weight), C, 0, H, H, C);
  auto prefetch = [&](int64_t t, int buf) {
    const int64_t row0 = t * tile;
    const int valid = (int)min((int64_t)tile, a.rows - row0);
    copy_cols_async(reinterpret_cast<T*>(smem + l.act[buf]), l.lda, y + row0 * D, D, 0, tile, valid, D);
    copy_cols_async(reinterpret_cast<T*>(smem + l.res[buf]), l.ldr, res + row0 * C, C, 0, tile, valid, C);
  };
  if ((int64_t)blockIdx.x < tiles) prefetch(blockIdx.x, 0);
  cp_async_commit();  // the weights and the first tile

  int buf = 0;
  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x, buf ^= 1) {
    if (t + gridDim.x < tiles) prefetch(t + gridDim.x, buf ^ 1);
    cp_async_commit();  // possibly empty: the wait below always leaves exactly the next tile in flight
    cp_async_wait_all_but_newest();
    __syncthreads();
    T* act = reinterpret_cast<T*>(smem + l.act[buf]);
    const T* r_in = reinterpret_cast<const T*>(smem + l.res[buf]);
    const int64_t row0 = t * tile;
    const int valid = (int)min((int64_t)tile, a.rows - row0);

    for (int r = warp; r < tile; r += kResWarps) {
      warp_layer_norm(act + r * l.lda, on_w, on_b, act + r * l.lda, D, a.eps, lane);
    }
    __syncthreads();
    product_split<T>(act, l.lda, w_out, l.ldwo, C, D, stage, l.lds, stage, tile, 1);
    for (int r = warp; r < tile; r += kResWarps) {
      float* xr = x1 + r * l.ldx;
      for (int c = lane; c < C; c += 32) xr[c] = to_f(r_in[r * l.ldr + c]) + stage[r * l.lds + c];
      __syncwarp();
      warp_layer_norm(xr, n_w, n_b, act2 + r * l.ldb, C, a.eps, lane);
    }
    __syncthreads();
    product_split<T>(act2, l.ldb, w_fc1, l.ldw1, H, C, stage, l.lds, stage, tile, 1);
    for (int i = threadIdx.x; i < tile * H; i += kResThreads) {
      const int r = i / H, j = i - r * H;
      act[r * l.lda + j] = from_f<T>(gelu(stage[r * l.lds + j] + ldf(b1 + j)));
    }
    __syncthreads();
    product_split<T>(act, l.lda, w_fc2, l.ldw2, C, H, stage, l.lds, stage, tile, 1);
    const int chunks = C / 8;
    for (int i = threadIdx.x; i < valid * chunks; i += kResThreads) {
      const int r = i / chunks, c = (i - r * chunks) * 8;
      float vals[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) vals[j] = x1[r * l.ldx + c + j] + stage[r * l.lds + c + j] + ldf(b2 + c + j);
      *reinterpret_cast<uint4*>(z + (row0 + r) * C + c) = pack8<T>(vals);
    }
    __syncthreads();  // the next iteration copies into this tile's buffers
  }
}

// ---------------------------------------------------------------------------------------------
// Cluster kernel (sm_90): the weights of the wide stages spread over the blocks of a thread-block cluster.
//
// Each of the P blocks of a cluster keeps 1/P of the columns of every weight matrix in shared memory and all
// P blocks work on the same row tile: each normalises the tile's Y itself, computes its columns of x1, and the
// blocks exchange through distributed shared memory what the next product needs in full: each block's mean
// and squared deviations of its columns of x1 (merged into LayerNorm(x1)'s statistics), then b's columns, then
// g's columns. Three cluster barriers per tile. Used where one wave of clusters takes every tile (small batches):
// with more tiles than that, a cluster's tiles queue behind one another's barriers.

constexpr int kClusterMax = 8;  // the portable cluster size

struct ClusterLayout {
  int cs, hs;                       // the block's columns of C and H
  int ldwo, ldw1, ldw2, lda, ldr, ldb, ldx, lds;
  int splits[3];                    // warps per output tile in each product (K split, partial sums)
  size_t w_out, w_fc1, w_fc2, act, res, act2, x1, stage, part, stats, vecs, total;
};

inline int k_splits(int tile, int n, int k) {
  const int items = (tile / 16) * (n / 16);
  int s = 1;
  while (items * s * 2 <= kResWarps && (k / 16) % (s * 2) == 0) s *= 2;
  return s;
}

inline ClusterLayout cluster_layout(int D, int C, int H, int P, int tile) {
  ClusterLayout l;
  const int e = 2;
  l.cs = C / P;
  l.hs = H / P;
  l.ldwo = l.cs + 8;
  l.ldw1 = l.hs + 8;
  l.ldw2 = l.cs + 8;
  l.lda = (D > H ? D : H) + 8;
  l.ldr = l.cs + 8;
  l.ldb = C + 8;
  l.ldx = l.cs + 4;
  l.lds = (l.cs > l.hs ? l.cs : l.hs) + 4;
  l.splits[0] = k_splits(tile, l.cs, D);
  l.splits[1] = k_splits(tile, l.hs, C);
  l.splits[2] = k_splits(tile, l.cs, H);
  int most = 1;
  for (int s : l.splits) most = s > most ? s : most;
  SmemArena arena;
  auto take = [&arena](size_t bytes) { return arena.take(bytes); };
  l.w_out = take((size_t)D * l.ldwo * e);
  l.w_fc1 = take((size_t)C * l.ldw1 * e);
  l.w_fc2 = take((size_t)H * l.ldw2 * e);
  l.act = take((size_t)tile * l.lda * e);
  l.res = take((size_t)tile * l.ldr * e);
  l.act2 = take((size_t)tile * l.ldb * e);
  l.x1 = take((size_t)tile * l.ldx * 4);
  l.stage = take((size_t)tile * l.lds * 4);
  l.part = most > 1 ? take((size_t)most * tile * l.lds * 4) : l.stage;
  l.stats = take((size_t)2 * kClusterMax * tile * 4);
  l.vecs = take((size_t)(2 * D + 3 * l.cs + l.hs) * e);
  l.total = arena.used;
  return l;
}

using ClusterArgs = FusedArgs<ClusterLayout>;

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::); }

// Store 16 bytes at `at` (a shared-memory address of this block) in the same place of every block of the cluster.
template <typename T>
__device__ __forceinline__ void to_every_block(cooperative_groups::cluster_group& cluster, int P, T* at,
                                               uint4 value) {
  for (int q = 0; q < P; ++q) *reinterpret_cast<uint4*>(cluster.map_shared_rank(at, q)) = value;
}
#endif

template <typename T>
__global__ void __launch_bounds__(kResThreads) vss_tail_cluster_kernel(ClusterArgs a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
  extern __shared__ __align__(128) unsigned char smem[];
  cg::cluster_group cluster = cg::this_cluster();
  const int P = (int)cluster.num_blocks();
  const int rank = (int)cluster.block_rank();
  const ClusterLayout& l = a.l;
  const int tile = a.tile, D = a.D, C = a.C, H = a.H, cs = l.cs, hs = l.hs;
  const int c0 = rank * cs, h0 = rank * hs;
  T* w_out = reinterpret_cast<T*>(smem + l.w_out);
  T* w_fc1 = reinterpret_cast<T*>(smem + l.w_fc1);
  T* w_fc2 = reinterpret_cast<T*>(smem + l.w_fc2);
  T* act2 = reinterpret_cast<T*>(smem + l.act2);
  float* x1 = reinterpret_cast<float*>(smem + l.x1);
  float* stage = reinterpret_cast<float*>(smem + l.stage);
  float* part = reinterpret_cast<float*>(smem + l.part);
  // each block's mean and sum of squared deviations over its columns of x1, per row: [P][tile] each
  float* means = reinterpret_cast<float*>(smem + l.stats);
  float* m2s = means + kClusterMax * tile;
  const T* y = static_cast<const T*>(a.y);
  const T* res = static_cast<const T*>(a.residual);
  const SharedVectors<T> v(smem + l.vecs, a.p, D, cs, hs, c0, h0, kResThreads);
  const T *on_w = v.on_w, *on_b = v.on_b, *n_w = v.n_w, *n_b = v.n_b, *b1 = v.b1, *b2 = v.b2;
  T* z = static_cast<T*>(a.z);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  T* act = reinterpret_cast<T*>(smem + l.act);
  const T* r_in = reinterpret_cast<const T*>(smem + l.res);
  const int64_t row0 = (int64_t)(blockIdx.x / P) * tile;  // one tile per cluster
  const int valid = (int)min((int64_t)tile, a.rows - row0);
  // A block may write into another's shared memory only once that block runs: every block arrives here and
  // waits (below) before its first remote write, by when the others have long arrived.
  asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");

  copy_cols_async(w_out, l.ldwo, static_cast<const T*>(a.p.out_proj), C, c0, D, D, cs);
  copy_cols_async(w_fc1, l.ldw1, static_cast<const T*>(a.p.fc1_weight), H, h0, C, C, hs);
  copy_cols_async(w_fc2, l.ldw2, static_cast<const T*>(a.p.fc2_weight), C, c0, H, H, cs);
  copy_cols_async(act, l.lda, y + row0 * D, D, 0, tile, valid, D);
  copy_cols_async(reinterpret_cast<T*>(smem + l.res), l.ldr, res + row0 * C, C, c0, tile, valid, cs);
  cp_async_wait_all();
  __syncthreads();
  for (int r = warp; r < tile; r += kResWarps) {
    warp_layer_norm(act + r * l.lda, on_w, on_b, act + r * l.lda, D, a.eps, lane);
  }
  __syncthreads();
  product_split<T>(act, l.lda, w_out, l.ldwo, cs, D, stage, l.lds, part, tile, l.splits[0]);
  asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory");
  // x1's columns; the mean and squared deviations of this block's share of each row to every block
  for (int r = warp; r < tile; r += kResWarps) {
    float s = 0.0f;
    for (int c = lane; c < cs; c += 32) {
      const float x = to_f(r_in[r * l.ldr + c]) + stage[r * l.lds + c];
      x1[r * l.ldx + c] = x;
      s += x;
    }
    const float mean = warp_sum(s) / (float)cs;
    float d2 = 0.0f;
    for (int c = lane; c < cs; c += 32) {
      const float d = x1[r * l.ldx + c] - mean;
      d2 += d * d;
    }
    d2 = warp_sum(d2);
    if (lane < P) {
      *cluster.map_shared_rank(means + rank * tile + r, lane) = mean;
      *cluster.map_shared_rank(m2s + rank * tile + r, lane) = d2;
    }
  }
  cluster.sync();
  // b's columns (dtype) to every block's act2; the row statistics merged from the blocks' equal shares
  for (int i = threadIdx.x; i < tile * (cs / 8); i += kResThreads) {
    const int r = i / (cs / 8), c = (i - r * (cs / 8)) * 8;
    float s = 0.0f;
    for (int q = 0; q < P; ++q) s += means[q * tile + r];
    const float mean = s / (float)P;
    float m2 = 0.0f;
    for (int q = 0; q < P; ++q) {
      const float d = means[q * tile + r] - mean;
      m2 += m2s[q * tile + r] + (float)cs * d * d;
    }
    const float rstd = rsqrtf(m2 / (float)C + a.eps);
    float vals[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) vals[j] = (x1[r * l.ldx + c + j] - mean) * rstd * ldf(n_w + c + j) + ldf(n_b + c + j);
    to_every_block(cluster, P, act2 + r * l.ldb + c0 + c, pack8<T>(vals));
  }
  cluster.sync();
  product_split<T>(act2, l.ldb, w_fc1, l.ldw1, hs, C, stage, l.lds, part, tile, l.splits[1]);
  // g's columns to every block's act (a is no longer read: every block passed the barrier after product 1)
  for (int i = threadIdx.x; i < tile * (hs / 8); i += kResThreads) {
    const int r = i / (hs / 8), j0 = (i - r * (hs / 8)) * 8;
    float vals[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) vals[j] = gelu(stage[r * l.lds + j0 + j] + ldf(b1 + j0 + j));
    to_every_block(cluster, P, act + r * l.lda + h0 + j0, pack8<T>(vals));
  }
  cluster.sync();
  product_split<T>(act, l.lda, w_fc2, l.ldw2, cs, H, stage, l.lds, part, tile, l.splits[2]);
  for (int i = threadIdx.x; i < valid * (cs / 8); i += kResThreads) {
    const int r = i / (cs / 8), c = (i - r * (cs / 8)) * 8;
    float vals[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) vals[j] = x1[r * l.ldx + c + j] + stage[r * l.lds + c + j] + ldf(b2 + c + j);
    *reinterpret_cast<uint4*>(z + (row0 + r) * C + c0 + c) = pack8<T>(vals);
  }
#endif
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

template <typename Layout>
FusedArgs<Layout> fused_args(const TailArgs& a, const ssm_vss_tail_params& p, int tile, const Layout& l) {
  FusedArgs<Layout> f;
  f.y = a.y;
  f.residual = a.residual;
  f.p = p;
  f.z = a.z;
  f.rows = a.rows;
  f.D = a.D;
  f.C = a.C;
  f.H = a.H;
  f.tile = tile;
  f.eps = a.eps;
  f.l = l;
  return f;
}

// The resident kernel's tile: 64 or 32 rows where that still gives every SM a tile and two blocks fit on an SM,
// else 16 rows if they fit next to the weights; 0 where they do not.
inline int resident_tile(int64_t rows, int D, int C, int H, int sms, int smem_block_max, int smem_sm) {
  for (int tile = 64; tile > 16; tile /= 2) {
    if ((rows + tile - 1) / tile >= sms && 2 * (resident_layout(D, C, H, tile).total + 1024) <= (size_t)smem_sm) {
      return tile;
    }
  }
  return resident_layout(D, C, H, 16).total <= (size_t)smem_block_max ? 16 : 0;
}

// The cluster kernel's blocks per cluster (8, 4 or 2: each block's columns of C and H multiples of 16) and tile
// (as the resident kernel's, counted in clusters); 0 where it does not apply.
inline void cluster_plan(int64_t rows, int D, int C, int H, int sms, int smem_block_max, int smem_sm, int* P,
                         int* tile) {
  *P = 0;
  *tile = 0;
  for (int p = kClusterMax; p >= 2; p /= 2) {
    if (C % (16 * p) || H % (16 * p)) continue;
    for (int t = 64; t > 16; t /= 2) {
      if ((rows + t - 1) / t >= sms / p && 2 * (cluster_layout(D, C, H, p, t).total + 1024) <= (size_t)smem_sm) {
        *P = p;
        *tile = t;
        return;
      }
    }
    if (cluster_layout(D, C, H, p, 16).total <= (size_t)smem_block_max) {
      *P = p;
      *tile = 16;
      return;
    }
  }
}

// Launches the cluster kernel where one wave of clusters takes every tile (*launched = true); otherwise leaves
// the call to the streaming kernel.
template <typename T>
int launch_cluster(ClusterArgs& a, int P, cudaStream_t stream, bool* launched) {
  *launched = false;
  const size_t smem = a.l.total;
  if (cudaFuncSetAttribute(vss_tail_cluster_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem) !=
      cudaSuccess) {
    return SSM_ERR_CUDA;
  }
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = (unsigned)P;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.blockDim = dim3(kResThreads);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  const int64_t tiles = (a.rows + a.tile - 1) / a.tile;
  cfg.gridDim = dim3((unsigned)(P * (tiles < 1024 ? tiles : 1024)));
  int clusters = 0;
  if (cudaOccupancyMaxActiveClusters(&clusters, vss_tail_cluster_kernel<T>, &cfg) != cudaSuccess) {
    (void)cudaGetLastError();  // a GPU that cannot schedule such clusters: the streaming kernel does the call
    return SSM_OK;
  }
  if (tiles > clusters) return SSM_OK;
  cfg.gridDim = dim3((unsigned)(P * tiles));
  *launched = true;
  if (cudaLaunchKernelEx(&cfg, vss_tail_cluster_kernel<T>, a) != cudaSuccess) return SSM_ERR_CUDA;
  return ssm_cuda_host::launch_status();
}

template <typename T>
int launch_resident(ResidentArgs& a, int sms, cudaStream_t stream) {
  const size_t smem = a.l.total;
  if (cudaFuncSetAttribute(vss_tail_resident_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem) !=
      cudaSuccess) {
    return SSM_ERR_CUDA;
  }
  int per_sm = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, vss_tail_resident_kernel<T>, kResThreads, smem) !=
          cudaSuccess ||
      per_sm < 1) {
    return SSM_ERR_CUDA;
  }
  const int64_t tiles = (a.rows + a.tile - 1) / a.tile;
  const int64_t blocks = tiles < (int64_t)sms * per_sm ? tiles : (int64_t)sms * per_sm;
  vss_tail_resident_kernel<T><<<(unsigned)blocks, kResThreads, smem, stream>>>(a);
  return ssm_cuda_host::launch_status();
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
  int smem_sm = 0;
  if (cudaDeviceGetAttribute(&smem_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device) != cudaSuccess) {
    return SSM_ERR_CUDA;
  }
  const int tile = mma && aligned(y, 16) && aligned(residual, 16) && aligned(z, 16)
                       ? resident_tile(a.rows, a.D, a.C, a.H, sms, smem_max, smem_sm)
                       : 0;
  if (kResident && tile > 0) {
    ResidentArgs r = fused_args(a, *params, tile, resident_layout(a.D, a.C, a.H, tile));
    return shape->dtype == SSM_FLOAT16 ? launch_resident<__half>(r, sms, s) : launch_resident<__nv_bfloat16>(r, sms, s);
  }
  int cluster_launch = 0, P = 0, ctile = 0;
  if (cudaDeviceGetAttribute(&cluster_launch, cudaDevAttrClusterLaunch, device) != cudaSuccess) return SSM_ERR_CUDA;
  if (kClusters && cluster_launch && mma && tile == 0 && aligned(y, 16) && aligned(residual, 16) && aligned(z, 16)) {
    cluster_plan(a.rows, a.D, a.C, a.H, sms, smem_max, smem_sm, &P, &ctile);
  }
  if (P > 0) {
    ClusterArgs c = fused_args(a, *params, ctile, cluster_layout(a.D, a.C, a.H, P, ctile));
    bool launched = false;
    const int st = shape->dtype == SSM_FLOAT16 ? launch_cluster<__half>(c, P, s, &launched)
                                                : launch_cluster<__nv_bfloat16>(c, P, s, &launched);
    if (st != SSM_OK || launched) return st;
  }
  switch (shape->dtype) {
    case SSM_FLOAT32: return launch<float, false>(a, smem, s);
    case SSM_FLOAT16: return dispatch<__half>(a, smem, mma, s);
    default: return dispatch<__nv_bfloat16>(a, smem, mma, s);
  }
}

}  // extern "C"
