// VSSBlockTail (domain version 7) on the CPU: a VMamba block's per-position chain after its scan.
//
// Threads take blocks of kRows rows. Per block, in float32 buffers of the thread: the scan output's LayerNorm
// (rounded to dtype: the operand of the first product), x1 = residual + a @ out_proj, the second LayerNorm
// (rounded), fc1 + bias and GELU (exact GELU through the vectorisable erf of cpu_common.h, within 2.6 * 2^-24 of
// erf; rounded), then z = x1 + g @ fc2 + bias, rounded as it is stored. The products sum 4 x 16 output tiles in
// registers. The blocks are the same whatever the thread count, so the results are too. The parameters are
// converted to float32 once per call.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "cpu_common.h"

namespace ssm {
namespace cpu {
namespace {

constexpr int64_t kRows = 16;  // rows per block: the block's intermediates stay in L1/L2

int validate(const ssm_vss_tail_shape* sh) {
  if (!dtype_supported(sh->dtype)) return SSM_ERR_BAD_DTYPE;
  if (sh->rows < 0) return SSM_ERR_BAD_SIZE;
  if (sh->inner < 1 || sh->inner > SSM_VSS_TAIL_MAX_WIDE || sh->hidden < 1 || sh->hidden > SSM_VSS_TAIL_MAX_WIDE ||
      sh->channels < 1 || sh->channels > SSM_VSS_TAIL_MAX_CHANNELS) {
    return SSM_ERR_BAD_SIZE;
  }
  const int64_t widest = std::max(sh->inner, std::max(sh->channels, sh->hidden));
  int64_t n;
  if (!checked_product({sh->rows, widest}, &n) || n > (int64_t(1) << 60) - 1) return SSM_ERR_BAD_SIZE;
  if (!(std::isfinite(sh->epsilon) && sh->epsilon > 0.0f)) return SSM_ERR_UNSUPPORTED;
  return SSM_OK;
}

// The parameters as float32, in one buffer.
struct Params {
  std::vector<float> data;
  const float *out_norm_w, *out_norm_b, *out_proj, *norm_w, *norm_b, *fc1_w, *fc1_b, *fc2_w, *fc2_b;
};

void load_params(const ssm_vss_tail_shape* sh, const ssm_vss_tail_params* p, Params* out) {
  const int64_t D = sh->inner, C = sh->channels, H = sh->hidden;
  const int64_t sizes[9] = {D, D, D * C, C, C, C * H, H, H * C, C};
  const void* src[9] = {p->out_norm_weight, p->out_norm_bias, p->out_proj,  p->norm_weight, p->norm_bias,
                        p->fc1_weight,      p->fc1_bias,      p->fc2_weight, p->fc2_bias};
  int64_t total = 0;
  for (int64_t s : sizes) total += s;
  out->data.resize(static_cast<size_t>(total));
  const float* dst[9];
  int64_t offset = 0;
  for (int i = 0; i < 9; ++i) {
    span_to_float(sh->dtype, src[i], 0, out->data.data() + offset, sizes[i]);
    dst[i] = out->data.data() + offset;
    offset += sizes[i];
  }
  out->out_norm_w = dst[0];
  out->out_norm_b = dst[1];
  out->out_proj = dst[2];
  out->norm_w = dst[3];
  out->norm_b = dst[4];
  out->fc1_w = dst[5];
  out->fc1_b = dst[6];
  out->fc2_w = dst[7];
  out->fc2_b = dst[8];
}

// One row's LayerNorm (two-pass float32 statistics, as LayerNorm's kernel), rounded to dtype, into out.
SSM_HOT void norm_row(const float* x, const float* w, const float* b, float* out, int64_t n, float epsilon,
                      int dtype) {
  float s = 0.0f;
  SSM_SIMD_REDUCE(s)
  for (int64_t c = 0; c < n; ++c) s += x[c];
  const float mean = s / static_cast<float>(n);
  float q = 0.0f;
  SSM_SIMD_REDUCE(q)
  for (int64_t c = 0; c < n; ++c) {
    const float d = x[c] - mean;
    q += d * d;
  }
  const float rstd = 1.0f / std::sqrt(q * (1.0f / static_cast<float>(n)) + epsilon);
  SSM_SIMD
  for (int64_t c = 0; c < n; ++c) out[c] = (x[c] - mean) * rstd * w[c] + b[c];
  if (dtype != SSM_FLOAT32) {
    for (int64_t c = 0; c < n; ++c) out[c] = round_to_dtype(dtype, out[c]);
  }
}

// acc (rows x n) += a (rows x k) @ w (k x n), all row-major. Tiles of 4 rows x 16 columns are summed in registers;
// every output adds its k products in order 0..k-1 onto acc, in the tiles and in the tails alike.
SSM_HOT void block_times_matrix(const float* a, int64_t rows, const float* w, int64_t k, int64_t n, float* acc) {
  constexpr int kR = 4, kV = 16;
  int64_t r = 0;
  for (; r + kR <= rows; r += kR) {
    int64_t j = 0;
    for (; j + kV <= n; j += kV) {
      float t[kR][kV];
      for (int i = 0; i < kR; ++i) {
        for (int v = 0; v < kV; ++v) t[i][v] = acc[(r + i) * n + j + v];
      }
      for (int64_t q = 0; q < k; ++q) {
        const float* wq = w + q * n + j;
        for (int i = 0; i < kR; ++i) {
          const float ai = a[(r + i) * k + q];
          SSM_SIMD
          for (int v = 0; v < kV; ++v) t[i][v] += ai * wq[v];
        }
      }
      for (int i = 0; i < kR; ++i) {
        for (int v = 0; v < kV; ++v) acc[(r + i) * n + j + v] = t[i][v];
      }
    }
    for (; j < n; ++j) {
      for (int i = 0; i < kR; ++i) {
        float t = acc[(r + i) * n + j];
        for (int64_t q = 0; q < k; ++q) t += a[(r + i) * k + q] * w[q * n + j];
        acc[(r + i) * n + j] = t;
      }
    }
  }
  for (; r < rows; ++r) {
    for (int64_t q = 0; q < k; ++q) {
      const float aq = a[r * k + q];
      const float* wq = w + q * n;
      SSM_SIMD
      for (int64_t j = 0; j < n; ++j) acc[r * n + j] += aq * wq[j];
    }
  }
}

// v = GELU(v) over n values (the vectorisable erf of cpu_common.h, not std::erf).
SSM_HOT void gelu_span(float* v, int64_t n) {
  SSM_SIMD
  for (int64_t i = 0; i < n; ++i) v[i] = gelu_f(v[i]);
}

// Scratch of one thread: float32 rows of one block.
struct Scratch {
  std::vector<float> y, a, x1, h, z;
};

// Blocks [b0, b1) of kRows rows (the last block may be shorter): each stage runs over the whole block.
void tail_blocks(const ssm_vss_tail_shape* sh, const void* y, const void* residual, const Params& p, void* z,
                 int64_t b0, int64_t b1, Scratch* s) {
  const int64_t D = sh->inner, C = sh->channels, H = sh->hidden;
  const int dtype = sh->dtype;
  const float eps = sh->epsilon;
  float *ybuf = s->y.data(), *a = s->a.data(), *x1 = s->x1.data(), *h = s->h.data(), *out = s->z.data();
  for (int64_t blk = b0; blk < b1; ++blk) {
    const int64_t r = blk * kRows;
    const int64_t n = std::min(kRows, sh->rows - r);
    span_to_float(dtype, y, r * D, ybuf, n * D);
    span_to_float(dtype, residual, r * C, x1, n * C);
    for (int64_t i = 0; i < n; ++i) norm_row(ybuf + i * D, p.out_norm_w, p.out_norm_b, a + i * D, D, eps, dtype);
    block_times_matrix(a, n, p.out_proj, D, C, x1);  // x1 = residual + a @ out_proj
    for (int64_t i = 0; i < n; ++i) norm_row(x1 + i * C, p.norm_w, p.norm_b, a + i * C, C, eps, dtype);
    for (int64_t i = 0; i < n; ++i) std::copy(p.fc1_b, p.fc1_b + H, h + i * H);
    block_times_matrix(a, n, p.fc1_w, C, H, h);
    gelu_span(h, n * H);
    if (dtype != SSM_FLOAT32) {
      for (int64_t j = 0; j < n * H; ++j) h[j] = round_to_dtype(dtype, h[j]);
    }
    for (int64_t i = 0; i < n; ++i) std::copy(p.fc2_b, p.fc2_b + C, out + i * C);
    block_times_matrix(h, n, p.fc2_w, H, C, out);
    for (int64_t j = 0; j < n * C; ++j) out[j] += x1[j];
    span_from_float(dtype, out, z, r * C, n * C);
  }
}

int tail_forward(const ssm_vss_tail_shape* sh, const void* y, const void* residual, const ssm_vss_tail_params* prm,
                 void* z, int num_threads) {
  const int64_t rows = sh->rows, D = sh->inner, C = sh->channels, H = sh->hidden;
  if (rows == 0) return SSM_OK;
  Params p;
  load_params(sh, prm, &p);
  const double work_per_row = 2.0 * static_cast<double>(D * C + C * H + H * C) + 10.0 * static_cast<double>(D + C);
  std::atomic<bool> failed(false);  // a thread could not allocate its scratch (not expected: a few hundred KB)
  // Threads take whole blocks of kRows rows, so each row is computed the same way whatever the thread count.
  const int64_t blocks = (rows + kRows - 1) / kRows;
  parallel_for(blocks, num_threads, work_per_row * kRows, [&](int64_t b0, int64_t b1) {
    Scratch s;
    try {
      s.y.resize(static_cast<size_t>(kRows * D));
      s.a.resize(static_cast<size_t>(kRows * std::max(D, C)));
      s.x1.resize(static_cast<size_t>(kRows * C));
      s.h.resize(static_cast<size_t>(kRows * H));
      s.z.resize(static_cast<size_t>(kRows * C));
    } catch (...) {
      failed.store(true);
      return;
    }
    tail_blocks(sh, y, residual, p, z, b0, b1, &s);
  });
  return failed.load() ? SSM_ERR_BAD_SIZE : SSM_OK;
}

}  // namespace
}  // namespace cpu
}  // namespace ssm

extern "C" {

SSM_API int ssm_vss_block_tail_fwd_cpu(const ssm_vss_tail_shape* shape, const void* y, const void* residual,
                                       const ssm_vss_tail_params* params, void* z, int num_threads) {
  if (!shape) return SSM_ERR_NULL_POINTER;
  const int st = ssm::cpu::validate(shape);
  if (st != SSM_OK) return st;
  if (!y || !residual || !params || !z || !params->out_norm_weight || !params->out_norm_bias || !params->out_proj ||
      !params->norm_weight || !params->norm_bias || !params->fc1_weight || !params->fc1_bias ||
      !params->fc2_weight || !params->fc2_bias) {
    return SSM_ERR_NULL_POINTER;
  }
  try {
    return ssm::cpu::tail_forward(shape, y, residual, params, z, num_threads);
  } catch (...) {
    return SSM_ERR_BAD_SIZE;  // allocation failure
  }
}

}  // extern "C"
