/*
 * ssmpose kernel library: the arithmetic of the two operators, free of any framework.
 *
 * Every adapter (PyTorch via ctypes, ONNX Runtime, TensorRT, OpenVINO) calls these functions.
 * The operator semantics are defined in docs/ops.md (SelectiveScan, DeformAggregate).
 *
 * Conventions
 *  - All tensors are dense, C-contiguous, in the layouts given below. Adapters make inputs contiguous.
 *  - `dtype` is one ssm_dtype for all floating inputs and the output of one call; accumulation is float32.
 *  - Gradient outputs for parameters that are reduced over batch/positions (dA, dDs, d_delta_bias,
 *    grad_value of DeformAggregate, dBs/dCs of SelectiveScan) are float32 buffers; the adapter casts.
 *  - Functions return SSM_OK or an error code; ssm_status_string() names it. The functions check only
 *    what they need to stay memory-safe (null pointers, non-positive sizes, unsupported dtype); the
 *    adapters validate shapes against their framework's tensors and report them by name.
 *  - Shapes beyond a kernel's limits (docs/ops.md, "Limits": index widths, launch grids) return
 *    SSM_ERR_BAD_SIZE before any memory is touched. The shape and dtype are checked before the data
 *    pointers, so a call with NULL data pointers answers SSM_ERR_NULL_POINTER for a shape within the
 *    limits and SSM_ERR_BAD_SIZE for one beyond them (a limits query that allocates nothing).
 *  - `num_threads` of the CPU functions: the loops are split over at most that many threads (<= 0: one per
 *    hardware thread); problems too small to repay a thread run on the calling thread. The threads are
 *    started for the call, unless the calling thread installed an executor (ssm_set_cpu_executor below), a
 *    host's own thread pool. Results are bit-identical for any thread count and either way of running.
 *  - CUDA functions take the stream as `void*` (a cudaStream_t), enqueue work on it and never
 *    synchronise the host. Launch errors are returned as SSM_ERR_CUDA.
 *  - Pointers of CUDA functions are device pointers; `workspace` (when asked for) is a device buffer of
 *    at least the size returned by the matching *_workspace_size function.
 */
#ifndef SSMPOSE_KERNELS_H
#define SSMPOSE_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define SSM_API __declspec(dllexport)
#else
#define SSM_API __attribute__((visibility("default")))
#endif

#define SSM_KERNELS_ABI_VERSION 6  /* 2: adds LayerNorm; 3: adds AddLayerNorm, MultiKernelDepthwiseConv and
                                      ssm_set_cpu_executor; 4: DeformAggregate's offset bias and activation;
                                      5: SelectiveScan2D with the dt projection (ssm_selective_scan_2d_proj_*);
                                      6: VSSBlockTail (ssm_vss_block_tail_*) */

typedef enum ssm_dtype {
  SSM_FLOAT32 = 0,
  SSM_FLOAT16 = 1,
  SSM_BFLOAT16 = 2,
} ssm_dtype;

typedef enum ssm_status {
  SSM_OK = 0,
  SSM_ERR_NULL_POINTER = 1,
  SSM_ERR_BAD_SIZE = 2,
  SSM_ERR_BAD_DTYPE = 3,
  SSM_ERR_UNSUPPORTED = 4,
  SSM_ERR_CUDA = 5,
} ssm_status;

/* Library identity, so that loaders can refuse a stale build. */
SSM_API int ssm_abi_version(void);
SSM_API const char* ssm_status_string(int status);

/* ------------------------------------------------------------------------------------------------
 * CPU executor (libssmpose_kernels only): lets a host run the parallel loops of the *_cpu functions on its
 * own thread pool instead of threads started for each call (e.g. the ONNX Runtime adapter hands them to
 * ONNX Runtime's intra-op pool, whose threads would otherwise spin beside the library's own).
 *
 * ssm_set_cpu_executor(executor, data) applies to the *_cpu calls made afterwards on the CALLING THREAD
 * only (the setting is thread-local); executor NULL restores the library's own threads. A loop that
 * needs count > 1 threads (by num_threads and its size, as above) calls executor(data, fn, task, count) once:
 *  - the executor calls fn(task, i) for each i in [0, count), in any order, on any threads, concurrently
 *    or not, and returns only after every fn call it made has returned;
 *  - it returns 0, or non-zero for a failure (e.g. the pool refused the work). Whatever the executor
 *    reports, and even if it skipped some i, the calling thread then runs the part of the loop that no fn
 *    call took, so results are always complete and bit-identical to the library's own threads;
 *  - fn is thread-safe, never throws, and does not depend on i (each call takes blocks of the loop from
 *    a shared queue until none are left); fn and task are valid only until the executor returns.
 * The executor is called only from inside a *_cpu function on the thread that installed it. */
typedef void (*ssm_task_fn)(void* task, int64_t index);
typedef int (*ssm_cpu_executor)(void* executor_data, ssm_task_fn fn, void* task, int64_t count);
SSM_API void ssm_set_cpu_executor(ssm_cpu_executor executor, void* executor_data);

/* ------------------------------------------------------------------------------------------------
 * SelectiveScan
 *   u, delta : (batch, groups*dim, length)      dtype
 *   A        : (groups*dim, dstate)             dtype
 *   Bs, Cs   : (batch, groups, dstate, length)  dtype
 *   Ds       : (groups*dim) or NULL             dtype
 *   delta_bias: (groups*dim) or NULL            dtype
 *   y        : (batch, groups*dim, length)      dtype   (output)
 * h[n] = exp(dt*A[c,n]) * h[n] + dt*Bs[b,g,n,t]*u[b,c,t]; y = sum_n Cs*h + Ds*u, dt = softplus?(delta+bias)
 * dstate is 1..16, length >= 1.
 */
typedef struct ssm_scan_shape {
  int64_t batch;
  int64_t groups;
  int64_t dim;     /* channels per group (D) */
  int64_t dstate;  /* N */
  int64_t length;  /* L */
  int32_t delta_softplus;
  int32_t dtype;   /* ssm_dtype */
} ssm_scan_shape;

SSM_API int ssm_selective_scan_fwd_cpu(const ssm_scan_shape* shape, const void* u, const void* delta,
                                       const void* A, const void* Bs, const void* Cs, const void* Ds,
                                       const void* delta_bias, void* y, int num_threads);

/* Gradients. du, d_delta: (batch, groups*dim, length) in dtype. dA (groups*dim, dstate), dBs, dCs
 * (batch, groups, dstate, length), dDs (groups*dim), d_delta_bias (groups*dim): float32, overwritten
 * (not accumulated into). dDs / d_delta_bias may be NULL when Ds / delta_bias were NULL. */
SSM_API int ssm_selective_scan_bwd_cpu(const ssm_scan_shape* shape, const void* u, const void* delta,
                                       const void* A, const void* Bs, const void* Cs, const void* Ds,
                                       const void* delta_bias, const void* dy, void* du,
                                       void* d_delta, float* dA, float* dBs, float* dCs, float* dDs,
                                       float* d_delta_bias, int num_threads);

SSM_API int ssm_selective_scan_fwd_cuda(const ssm_scan_shape* shape, const void* u, const void* delta,
                                        const void* A, const void* Bs, const void* Cs, const void* Ds,
                                        const void* delta_bias, void* y, void* stream);

SSM_API size_t ssm_selective_scan_bwd_cuda_workspace_size(const ssm_scan_shape* shape);
SSM_API int ssm_selective_scan_bwd_cuda(const ssm_scan_shape* shape, const void* u, const void* delta,
                                        const void* A, const void* Bs, const void* Cs, const void* Ds,
                                        const void* delta_bias, const void* dy, void* du, void* d_delta,
                                        float* dA, float* dBs, float* dCs, float* dDs,
                                        float* d_delta_bias, void* workspace, void* stream);

/* ------------------------------------------------------------------------------------------------
 * SelectiveScan2D (domain version 2): SS2D's four-direction scan in one call, channel-last.
 *   x          : (batch, height, width, dim)                 dtype
 *   delta      : (batch, height, width, directions*dim)      dtype
 *   A          : (directions*dim, dstate)                    dtype
 *   Bs, Cs     : (batch, height, width, directions, dstate)  dtype
 *   Ds         : (directions*dim) or NULL                    dtype
 *   delta_bias : (directions*dim) or NULL                    dtype
 *   y          : (batch, height, width, dim)                 dtype (output)
 * y[b,h,w,:] = sum over k of direction k's SelectiveScan evaluated at (h, w); direction k visits
 * positions: k=0 row-major (h outer, w inner), k=1 column-major (w outer, h inner), k=2 reverse of 0,
 * k=3 reverse of 1. Channel block k*dim..(k+1)*dim-1 of delta/A/Ds/delta_bias and slice k of Bs/Cs
 * belong to direction k. directions must be 4. */
typedef struct ssm_scan2d_shape {
  int64_t batch;
  int64_t height, width;
  int64_t dim;         /* D */
  int64_t directions;  /* K, 4 */
  int64_t dstate;      /* N, 1..16 */
  int32_t delta_softplus;
  int32_t dtype;       /* ssm_dtype */
} ssm_scan2d_shape;

SSM_API int ssm_selective_scan_2d_fwd_cpu(const ssm_scan2d_shape* shape, const void* x, const void* delta,
    const void* A, const void* Bs, const void* Cs, const void* Ds, const void* delta_bias, void* y,
    int num_threads);
/* dx (batch,height,width,dim) and d_delta (batch,height,width,directions*dim) in dtype; dA, dBs, dCs, dDs,
 * d_delta_bias float32 (shapes of A, Bs, Cs, Ds, delta_bias), overwritten. dDs / d_delta_bias may be NULL
 * when Ds / delta_bias were NULL. */
SSM_API int ssm_selective_scan_2d_bwd_cpu(const ssm_scan2d_shape* shape, const void* x, const void* delta,
    const void* A, const void* Bs, const void* Cs, const void* Ds, const void* delta_bias, const void* dy,
    void* dx, void* d_delta, float* dA, float* dBs, float* dCs, float* dDs, float* d_delta_bias,
    int num_threads);
SSM_API int ssm_selective_scan_2d_fwd_cuda(const ssm_scan2d_shape* shape, const void* x, const void* delta,
    const void* A, const void* Bs, const void* Cs, const void* Ds, const void* delta_bias, void* y,
    void* stream);

/* SelectiveScan2D with the dt projection folded in (forward only; domain version 6):
 *   x_proj        : (batch, height, width, directions, dt_rank + 2*dstate)  dtype: for each position and
 *                   direction k, the dt inputs (dt_rank values), then B (dstate), then C (dstate)
 *   dt_projection : (directions, dim, dt_rank)                              dtype
 * delta[b,h,w,k*dim + c] = sum over r of x_proj[b,h,w,k,r] * dt_projection[k,c,r], accumulated in float32
 * and rounded to dtype (what a MatMul node producing delta computes); Bs and Cs are read in place from
 * x_proj. Everything else as ssm_selective_scan_2d_fwd_*. 1 <= dt_rank <= 64. */
SSM_API int ssm_selective_scan_2d_proj_fwd_cpu(const ssm_scan2d_shape* shape, int64_t dt_rank, const void* x,
    const void* x_proj, const void* dt_projection, const void* A, const void* Ds, const void* delta_bias,
    void* y, int num_threads);
SSM_API int ssm_selective_scan_2d_proj_fwd_cuda(const ssm_scan2d_shape* shape, int64_t dt_rank, const void* x,
    const void* x_proj, const void* dt_projection, const void* A, const void* Ds, const void* delta_bias,
    void* y, void* stream);
#define SSM_SCAN2D_MAX_DT_RANK 64

SSM_API size_t ssm_selective_scan_2d_bwd_cuda_workspace_size(const ssm_scan2d_shape* shape);
SSM_API int ssm_selective_scan_2d_bwd_cuda(const ssm_scan2d_shape* shape, const void* x, const void* delta,
    const void* A, const void* Bs, const void* Cs, const void* Ds, const void* delta_bias, const void* dy,
    void* dx, void* d_delta, float* dA, float* dBs, float* dCs, float* dDs, float* d_delta_bias,
    void* workspace, void* stream);

/* Output activations of the forward-only epilogues (MultiKernelDepthwiseConv: NONE or GELU; DeformAggregate:
 * NONE or SILU). Computed in float32 on the value rounded to dtype, then rounded again. */
typedef enum ssm_activation {
  SSM_ACTIVATION_NONE = 0,
  SSM_ACTIVATION_GELU = 1, /* exact GELU 0.5 * z * (1 + erf(z / sqrt 2)) */
  SSM_ACTIVATION_SILU = 2, /* z * sigmoid(z) = z / (1 + exp(-z)) */
} ssm_activation;

/* ------------------------------------------------------------------------------------------------
 * DeformAggregate (DCNv4 core, no softmax)
 *   value       : (batch, height, width, groups*group_channels)   dtype, channel-last
 *   offset_mask : (batch, out_height, out_width, offset_stride)   dtype;
 *                 offset_stride >= groups*K*3, K = kernel_h*kernel_w - remove_center; extra columns ignored
 *   offset_bias : (offset_stride) dtype, or NULL (forward only; domain version 5): the forward reads
 *                 offset_mask[..., j] + offset_bias[j], summed in float32 and rounded to dtype (what an Add
 *                 node before the op computes)
 *   out         : (batch, out_height, out_width, groups*group_channels)  dtype (output)
 * `activation` (forward only; domain version 5): SSM_ACTIVATION_NONE, or SILU applied to the output rounded
 * to dtype (what a Sigmoid and Mul after the op compute, in float32). The backward takes NONE only.
 */
typedef struct ssm_deform_shape {
  int64_t batch;
  int64_t height, width;
  int64_t out_height, out_width;
  int64_t groups;
  int64_t group_channels;
  int64_t offset_stride; /* P */
  int32_t kernel_h, kernel_w;
  int32_t stride_h, stride_w;
  int32_t pad_h, pad_w;
  int32_t dilation_h, dilation_w;
  int32_t remove_center;
  float offset_scale;
  int32_t dtype;      /* ssm_dtype */
  int32_t activation; /* ssm_activation: NONE or SILU (forward only) */
} ssm_deform_shape;

SSM_API int ssm_deform_aggregate_fwd_cpu(const ssm_deform_shape* shape, const void* value,
                                         const void* offset_mask, const void* offset_bias, void* out,
                                         int num_threads);

/* grad_value: float32 (batch, height, width, groups*group_channels); grad_offset_mask: float32
 * (batch, out_height, out_width, offset_stride), padding columns set to 0. Both overwritten. */
SSM_API int ssm_deform_aggregate_bwd_cpu(const ssm_deform_shape* shape, const void* value,
                                         const void* offset_mask, const void* grad_out,
                                         float* grad_value, float* grad_offset_mask, int num_threads);

SSM_API int ssm_deform_aggregate_fwd_cuda(const ssm_deform_shape* shape, const void* value,
                                          const void* offset_mask, const void* offset_bias, void* out,
                                          void* stream);

SSM_API int ssm_deform_aggregate_bwd_cuda(const ssm_deform_shape* shape, const void* value,
                                          const void* offset_mask, const void* grad_out,
                                          float* grad_value, float* grad_offset_mask, void* stream);

/* ------------------------------------------------------------------------------------------------
 * LayerNorm (domain version 3): layer normalisation over the last axis, what ONNX LayerNormalization
 * computes with axis = -1 and stash_type = 1.
 *   x      : (rows, channels)   dtype
 *   weight : (channels)         dtype
 *   bias   : (channels)         dtype
 *   y      : (rows, channels)   dtype (output; may not alias x)
 * y[r, c] = (x[r, c] - mean_r) / sqrt(var_r + epsilon) * weight[c] + bias[c], with mean_r and the biased
 * variance var_r over the row's channels computed in float32 (two passes: the mean, then the squared
 * deviations from it). rows may be 0 (nothing to do); channels >= 1; epsilon > 0 and finite. */
typedef struct ssm_layer_norm_shape {
  int64_t rows;
  int64_t channels;
  float epsilon;
  int32_t dtype;  /* ssm_dtype */
} ssm_layer_norm_shape;

SSM_API int ssm_layer_norm_fwd_cpu(const ssm_layer_norm_shape* shape, const void* x, const void* weight,
                                   const void* bias, void* y, int num_threads);
SSM_API int ssm_layer_norm_fwd_cuda(const ssm_layer_norm_shape* shape, const void* x, const void* weight,
                                    const void* bias, void* y, void* stream);

/* ------------------------------------------------------------------------------------------------
 * AddLayerNorm (domain version 4): a residual Add and the LayerNorm of its result in one pass.
 *   x, residual : (rows, channels)  dtype
 *   weight, bias: (channels)        dtype
 *   y, sum      : (rows, channels)  dtype (outputs; neither may alias an input or the other)
 * sum[r, c] = x[r, c] + residual[r, c], computed in float32 and rounded to dtype; y is the LayerNorm above
 * of sum as stored (rounded), so the pair equals an Add followed by LayerNorm bit for bit. Same shape
 * rules and status codes as LayerNorm. */
SSM_API int ssm_add_layer_norm_fwd_cpu(const ssm_layer_norm_shape* shape, const void* x, const void* residual,
                                       const void* weight, const void* bias, void* y, void* sum,
                                       int num_threads);
SSM_API int ssm_add_layer_norm_fwd_cuda(const ssm_layer_norm_shape* shape, const void* x, const void* residual,
                                        const void* weight, const void* bias, void* y, void* sum, void* stream);

/* ------------------------------------------------------------------------------------------------
 * MultiKernelDepthwiseConv (domain version 4): HRVMamba's LPU convolution on a channel-last tensor:
 * depthwise convolutions whose kernel size depends on the channel group, stride 1, "same" zero padding,
 * then an optional channel shuffle and GELU.
 *   x      : (batch, height, width, channels)   dtype, channel-last
 *   weight : (channels, kernel_max, kernel_max) dtype; channel c of group g uses only the central
 *            kernel_sizes[g] x kernel_sizes[g] taps of its slice (the others are never read)
 *   bias   : (channels)                         dtype
 *   y      : (batch, height, width, channels)   dtype (output; may not alias x)
 * Groups are consecutive channel ranges: group g holds group_channels[g] channels. For conv channel c of
 * group g with k = kernel_sizes[g], r = k / 2:
 *   z[b,h,w,c] = bias[c] + sum_{i,j in 0..k-1} x[b, h+i-r, w+j-r, c] * weight[c, R-r+i, R-r+j]  (R = kernel_max/2;
 *                taps outside the image are 0), accumulated in float32;
 *   with S = shuffle_groups and P = channels / S: y[b,h,w, q*S + s] = act(z[b,h,w, s*P + q]) for s < S, q < P
 *   (ShuffleNet's channel shuffle; S = 1 is no shuffle), act = identity or exact GELU
 *   0.5 * z * (1 + erf(z / sqrt 2)) in float32, then rounded to dtype.
 * kernel_max and every kernel size are odd, 1..15; 1 <= num_groups <= SSM_DWCONV_MAX_GROUPS; the group
 * channels are >= 1 and sum to channels; channels % shuffle_groups == 0. batch may be 0 (nothing to do). */
#define SSM_DWCONV_MAX_GROUPS 16
#define SSM_DWCONV_MAX_KERNEL 15

typedef struct ssm_dwconv_shape {
  int64_t batch;
  int64_t height, width;
  int64_t channels;
  int32_t kernel_max;
  int32_t num_groups;
  int32_t group_channels[SSM_DWCONV_MAX_GROUPS];
  int32_t kernel_sizes[SSM_DWCONV_MAX_GROUPS];
  int32_t shuffle_groups;
  int32_t activation;  /* ssm_activation */
  int32_t dtype;       /* ssm_dtype */
} ssm_dwconv_shape;

SSM_API int ssm_depthwise_conv_fwd_cpu(const ssm_dwconv_shape* shape, const void* x, const void* weight,
                                       const void* bias, void* y, int num_threads);
SSM_API int ssm_depthwise_conv_fwd_cuda(const ssm_dwconv_shape* shape, const void* x, const void* weight,
                                        const void* bias, void* y, void* stream);

/* ------------------------------------------------------------------------------------------------
 * VSSBlockTail (domain version 7): what a VMamba-style block computes at each position after its scan, in
 * one pass: SS2D's output norm and projection, the residual add, the MLP's norm, fc1, GELU, fc2 and the
 * second residual add.
 *   y            : (rows, inner)     dtype   the scan's output
 *   residual     : (rows, channels)  dtype   the block's residual stream before the SS2D branch
 *   out_norm_weight, out_norm_bias : (inner)            dtype
 *   out_proj     : (inner, channels) dtype   applied as y @ out_proj (ONNX MatMul's layout)
 *   norm_weight, norm_bias         : (channels)         dtype
 *   fc1_weight   : (channels, hidden) dtype;  fc1_bias : (hidden)
 *   fc2_weight   : (hidden, channels) dtype;  fc2_bias : (channels)
 *   z            : (rows, channels)  dtype   (output; may not alias an input)
 * With LN the LayerNorm above (float32 statistics, epsilon) and round() rounding to dtype:
 *   a  = round(LN(y; out_norm))                       the operand of the first product
 *   x1 = residual + a @ out_proj                      float32, not rounded
 *   b  = round(LN(x1; norm))
 *   g  = round(GELU(b @ fc1_weight + fc1_bias))       exact GELU 0.5 v (1 + erf(v / sqrt 2)) in float32
 *   z  = round(x1 + g @ fc2_weight + fc2_bias)
 * Products accumulate in float32 (in any order: the CUDA kernel uses tensor cores for float16 / bfloat16).
 * rows may be 0 (nothing to do); 1 <= inner, hidden <= SSM_VSS_TAIL_MAX_WIDE and
 * 1 <= channels <= SSM_VSS_TAIL_MAX_CHANNELS (the CUDA kernel keeps 16 rows of every intermediate in shared
 * memory); rows * max(inner, channels, hidden) <= 2^60 - 1; epsilon > 0 and finite. */
#define SSM_VSS_TAIL_MAX_WIDE 1024
#define SSM_VSS_TAIL_MAX_CHANNELS 512

typedef struct ssm_vss_tail_shape {
  int64_t rows;
  int64_t inner;     /* D: the scan's channels */
  int64_t channels;  /* C: the residual stream's channels */
  int64_t hidden;    /* H: the MLP's hidden channels */
  float epsilon;     /* of both LayerNorms */
  int32_t dtype;     /* ssm_dtype */
} ssm_vss_tail_shape;

/* The nine parameter tensors, in the order of the ONNX inputs 2..10. */
typedef struct ssm_vss_tail_params {
  const void* out_norm_weight;
  const void* out_norm_bias;
  const void* out_proj;
  const void* norm_weight;
  const void* norm_bias;
  const void* fc1_weight;
  const void* fc1_bias;
  const void* fc2_weight;
  const void* fc2_bias;
} ssm_vss_tail_params;

SSM_API int ssm_vss_block_tail_fwd_cpu(const ssm_vss_tail_shape* shape, const void* y, const void* residual,
                                       const ssm_vss_tail_params* params, void* z, int num_threads);
SSM_API int ssm_vss_block_tail_fwd_cuda(const ssm_vss_tail_shape* shape, const void* y, const void* residual,
                                        const ssm_vss_tail_params* params, void* z, void* stream);

#ifdef __cplusplus
}
#endif

#endif /* SSMPOSE_KERNELS_H */
