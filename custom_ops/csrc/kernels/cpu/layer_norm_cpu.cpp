// LayerNorm (domain version 3) on the CPU: normalisation over the last axis of a (rows, channels) tensor.
//
// Per row, in float32: the mean, then the biased variance as the mean of the squared deviations from it (two
// passes over the row, which stays in cache), then y = (x - mean) * rstd * weight + bias. The passes are
// `omp simd` reductions (vectorised without -ffast-math). Threads take blocks of rows; every row is computed
// the same way whatever the thread count, so results do not depend on it.
// float16 / bfloat16: weight and bias are converted to float32 once; x is converted, and y converted back,
// a block of rows at a time (a few thousand elements) through a per-thread float32 buffer.
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

int layer_norm_forward(const ssm_layer_norm_shape* sh, const void* x, const void* weight, const void* bias,
                       void* y, int num_threads) {
  const int64_t rows = sh->rows, C = sh->channels;
  if (rows == 0) return SSM_OK;
  const int dtype = sh->dtype;
  const float eps = sh->epsilon;
  const double work_per_row = 8.0 * static_cast<double>(C);
  if (dtype == SSM_FLOAT32) {
    const float* xf = static_cast<const float*>(x);
    const float* wf = static_cast<const float*>(weight);
    const float* bf = static_cast<const float*>(bias);
    float* yf = static_cast<float*>(y);
    parallel_for(rows, num_threads, work_per_row, [&](int64_t r0, int64_t r1) {
      norm_rows(xf + r0 * C, wf, bf, yf + r0 * C, r1 - r0, C, eps);
    });
    return SSM_OK;
  }
  std::vector<float> wb(static_cast<size_t>(2 * C));
  span_to_float(dtype, weight, 0, wb.data(), C);
  span_to_float(dtype, bias, 0, wb.data() + C, C);
  const float* wf = wb.data();
  const float* bf = wb.data() + C;
  const int64_t rows_per_step = std::max<int64_t>(1, kBlockElements / C);
  std::atomic<bool> failed(false);  // a thread could not allocate its buffer (not expected: a few KB)
  parallel_for(rows, num_threads, work_per_row, [&](int64_t r0, int64_t r1) {
    std::vector<float> buf;
    try {
      buf.resize(static_cast<size_t>(std::min(rows_per_step, r1 - r0) * C));
    } catch (...) {
      failed.store(true);
      return;
    }
    for (int64_t r = r0; r < r1; r += rows_per_step) {
      const int64_t n = std::min(rows_per_step, r1 - r);
      span_to_float(dtype, x, r * C, buf.data(), n * C);
      norm_rows(buf.data(), wf, bf, buf.data(), n, C, eps);
      span_from_float(dtype, buf.data(), y, r * C, n * C);
    }
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
    return ssm::cpu::layer_norm_forward(shape, x, weight, bias, y, num_threads);
  } catch (...) {
    return SSM_ERR_BAD_SIZE;  // allocation failure
  }
}

}  // extern "C"
