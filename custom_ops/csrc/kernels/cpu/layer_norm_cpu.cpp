// LayerNorm (domain version 3) on the CPU: normalisation over the last axis of a (rows, channels) tensor.
//
// Per row, in float32: the mean, then the biased variance as the mean of the squared deviations from it (two
// passes over the row, which stays in cache), then y = (x - mean) * rstd * weight + bias. The passes are
// `omp simd` reductions (vectorised without -ffast-math). Threads take blocks of rows; every row is computed
// the same way whatever the thread count, so results do not depend on it.
// float16 / bfloat16: weight and bias are converted to float32 once; x is converted, and y converted back,
// a block of rows at a time (a few thousand elements) through a per-thread float32 buffer.
//
// AddLayerNorm (domain version 4) is the same row loop with the residual added as each block of rows is
// loaded: the sum is stored (rounded to dtype) and the block is normalised from the stored values, so the pair
// equals an Add followed by this LayerNorm bit for bit.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "cpu_common.h"

namespace ssm {
namespace cpu {
namespace {

// Elements of x converted per step on the float16 / bfloat16 path (at least one row).
constexpr int64_t kBlockElements = 4096;

int validate(const ssm_layer_norm_shape* sh) {
  if (!dtype_supported(sh->dtype)) return SSM_ERR_BAD_DTYPE;
  if (sh->rows < 0 || sh->channels < 1) return SSM_ERR_BAD_SIZE;
  int64_t n;
  if (!checked_product({sh->rows, sh->channels}, &n)) return SSM_ERR_BAD_SIZE;
  if (n > (int64_t(1) << 60) - 1) return SSM_ERR_BAD_SIZE;
  if (!(std::isfinite(sh->epsilon) && sh->epsilon > 0.0f)) return SSM_ERR_UNSUPPORTED;
  return SSM_OK;
}

// Rows [0, n_rows) of x (float32, `channels` apart) -> y. x and y may be the same buffer.
SSM_HOT void norm_rows(const float* x, const float* w, const float* b, float* y, int64_t n_rows,
                       int64_t channels, float epsilon) {
  const float inv_c = 1.0f / static_cast<float>(channels);
  for (int64_t r = 0; r < n_rows; ++r) {
    const float* xr = x + r * channels;
    float* yr = y + r * channels;
    float s = 0.0f;
    SSM_SIMD_REDUCE(s)
    for (int64_t c = 0; c < channels; ++c) s += xr[c];
    const float mean = s / static_cast<float>(channels);
    float q = 0.0f;
    SSM_SIMD_REDUCE(q)
    for (int64_t c = 0; c < channels; ++c) {
      const float d = xr[c] - mean;
      q += d * d;
    }
    const float rstd = 1.0f / std::sqrt(q * inv_c + epsilon);
    SSM_SIMD
    for (int64_t c = 0; c < channels; ++c) yr[c] = (xr[c] - mean) * rstd * w[c] + b[c];
  }
}

// The tensors of one LayerNorm or AddLayerNorm call. residual and sum are NULL for LayerNorm.
struct NormTensors {
  const void* x;
  const void* residual;
  const void* weight;
  const void* bias;
  void* y;
  void* sum;
};

// s = x + r over n float32 values (s may be x).
SSM_HOT void add_span(const float* x, const float* r, float* s, int64_t n) {
  SSM_SIMD
  for (int64_t i = 0; i < n; ++i) s[i] = x[i] + r[i];
}

// float32: rows [r0, r1) a block at a time. With a residual, the block's sum is stored first and normalised from
// the output buffer (still in cache), so y is the LayerNorm of the stored sum.
void forward_rows_f32(const ssm_layer_norm_shape* sh, const NormTensors& t, int64_t r0, int64_t r1,
                      int64_t rows_per_step) {
  const int64_t C = sh->channels;
  const float* x = static_cast<const float*>(t.x);
  const float* res = static_cast<const float*>(t.residual);
  float* y = static_cast<float*>(t.y);
  float* sum = static_cast<float*>(t.sum);
  for (int64_t r = r0; r < r1; r += rows_per_step) {
    const int64_t n = std::min(rows_per_step, r1 - r);
    const float* src = x + r * C;
    if (res != nullptr) {
      add_span(src, res + r * C, sum + r * C, n * C);
      src = sum + r * C;
    }
    norm_rows(src, static_cast<const float*>(t.weight), static_cast<const float*>(t.bias), y + r * C, n, C,
              sh->epsilon);
  }
}

// float16 / bfloat16: rows [r0, r1) a block at a time through float32 buffers (buf, and rbuf for the residual).
// The sum is rounded to dtype when stored and read back, so y is the LayerNorm of the rounded sum.
void forward_rows_half(const ssm_layer_norm_shape* sh, const NormTensors& t, const float* w, const float* b,
                       int64_t r0, int64_t r1, int64_t rows_per_step, float* buf, float* rbuf) {
  const int64_t C = sh->channels;
  const int dtype = sh->dtype;
  for (int64_t r = r0; r < r1; r += rows_per_step) {
    const int64_t n = std::min(rows_per_step, r1 - r);
    span_to_float(dtype, t.x, r * C, buf, n * C);
    if (t.residual != nullptr) {
      span_to_float(dtype, t.residual, r * C, rbuf, n * C);
      add_span(buf, rbuf, buf, n * C);
      span_from_float(dtype, buf, t.sum, r * C, n * C);
      span_to_float(dtype, t.sum, r * C, buf, n * C);
    }
    norm_rows(buf, w, b, buf, n, C, sh->epsilon);
    span_from_float(dtype, buf, t.y, r * C, n * C);
  }
}

int layer_norm_forward(const ssm_layer_norm_shape* sh, const NormTensors& t, int num_threads) {
  const int64_t rows = sh->rows, C = sh->channels;
  if (rows == 0) return SSM_OK;
  const int dtype = sh->dtype;
  const double work_per_row = (t.residual ? 10.0 : 8.0) * static_cast<double>(C);
  const int64_t rows_per_step = std::max<int64_t>(1, kBlockElements / C);
  if (dtype == SSM_FLOAT32) {
    parallel_for(rows, num_threads, work_per_row,
                 [&](int64_t r0, int64_t r1) { forward_rows_f32(sh, t, r0, r1, rows_per_step); });
    return SSM_OK;
  }
  std::vector<float> wb(static_cast<size_t>(2 * C));
  span_to_float(dtype, t.weight, 0, wb.data(), C);
  span_to_float(dtype, t.bias, 0, wb.data() + C, C);
  std::atomic<bool> failed(false);  // a thread could not allocate its buffers (not expected: a few KB)
  parallel_for(rows, num_threads, work_per_row, [&](int64_t r0, int64_t r1) {
    const size_t n = static_cast<size_t>(std::min(rows_per_step, r1 - r0) * C);
    std::vector<float> buf;
    try {
      buf.resize(t.residual ? 2 * n : n);
    } catch (...) {
      failed.store(true);
      return;
    }
    forward_rows_half(sh, t, wb.data(), wb.data() + C, r0, r1, rows_per_step, buf.data(), buf.data() + n);
  });
  return failed.load() ? SSM_ERR_BAD_SIZE : SSM_OK;
}

}  // namespace
}  // namespace cpu
}  // namespace ssm

extern "C" {

SSM_API int ssm_layer_norm_fwd_cpu(const ssm_layer_norm_shape* shape, const void* x, const void* weight,
                                   const void* bias, void* y, int num_threads) {
  if (!shape) return SSM_ERR_NULL_POINTER;
  const int st = ssm::cpu::validate(shape);
  if (st != SSM_OK) return st;
  if (!x || !weight || !bias || !y) return SSM_ERR_NULL_POINTER;
  try {
    return ssm::cpu::layer_norm_forward(shape, {x, nullptr, weight, bias, y, nullptr}, num_threads);
  } catch (...) {
    return SSM_ERR_BAD_SIZE;  // allocation failure
  }
}

SSM_API int ssm_add_layer_norm_fwd_cpu(const ssm_layer_norm_shape* shape, const void* x, const void* residual,
                                       const void* weight, const void* bias, void* y, void* sum,
                                       int num_threads) {
  if (!shape) return SSM_ERR_NULL_POINTER;
  const int st = ssm::cpu::validate(shape);
  if (st != SSM_OK) return st;
  if (!x || !residual || !weight || !bias || !y || !sum) return SSM_ERR_NULL_POINTER;
  try {
    return ssm::cpu::layer_norm_forward(shape, {x, residual, weight, bias, y, sum}, num_threads);
  } catch (...) {
    return SSM_ERR_BAD_SIZE;  // allocation failure
  }
}

}  // extern "C"
