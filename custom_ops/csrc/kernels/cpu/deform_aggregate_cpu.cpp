// DeformAggregate (DCNv4 core, no softmax) on the CPU: forward and backward.
//
// Layout is channel-last, so the group_channels loop of every bilinear corner is contiguous and
// vectorised. Forward items are (batch, output row, group). Backward items are (batch, group, band of
// output rows): grad_value of a (b, g) receives contributions from anywhere in the image, so each item
// accumulates into a grad_value slab it owns: band 0 writes into grad_value's (b, g) slice directly,
// other bands into private slabs that are added afterwards in band order. The number of bands comes
// from the shape only, so results do not depend on the number of threads.
// float16 / bfloat16: value (gathered at random) and, for the backward, every input are converted to
// float32 copies first; the forward converts offset_mask and the output pixel by pixel as it streams
// through them. Accumulation is float32.
// The forward's epilogues (domain version 5): the offset bias is added to each offset_mask value as it is
// read and the sum rounded to the dtype; SiLU is applied to each output value rounded to the dtype.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "cpu_common.h"

namespace ssm {
namespace cpu {
namespace {

struct DeformArgs {
  const float* value;
  const float* om;  // offset_mask as float32 (backward only; the forward streams it)
  const float* om_bias;  // offset bias as float32 (offset_stride values), or null
  int activation;
  int64_t batch, height, width, out_h, out_w, groups, gc, stride_om;
  int64_t channels;  // groups * gc
  int K;
  float scale;
  std::vector<float> tap_x, tap_y;  // (i*dilation_w), (j*dilation_h) per point, in point order
  std::vector<float> base_x, base_y;  // per output column / row: base - half*scale
};

DeformArgs make_args(const ssm_deform_shape* sh, const float* value, const float* om) {
  DeformArgs a;
  a.value = value;
  a.om = om;
  a.om_bias = nullptr;
  a.activation = sh->activation;
  a.batch = sh->batch;
  a.height = sh->height;
  a.width = sh->width;
  a.out_h = sh->out_height;
  a.out_w = sh->out_width;
  a.groups = sh->groups;
  a.gc = sh->group_channels;
  a.stride_om = sh->offset_stride;
  a.channels = sh->groups * sh->group_channels;
  a.scale = sh->offset_scale;
  // points: kernel x-index i outer, y-index j inner, centre (kernel_w/2, kernel_h/2) skipped if asked
  for (int32_t i = 0; i < sh->kernel_w; ++i) {
    for (int32_t j = 0; j < sh->kernel_h; ++j) {
      if (sh->remove_center && i == sh->kernel_w / 2 && j == sh->kernel_h / 2) continue;
      a.tap_x.push_back(static_cast<float>(static_cast<int64_t>(i) * sh->dilation_w));
      a.tap_y.push_back(static_cast<float>(static_cast<int64_t>(j) * sh->dilation_h));
    }
  }
  a.K = static_cast<int>(a.tap_x.size());
  const int64_t half_w = (static_cast<int64_t>(sh->dilation_w) * (sh->kernel_w - 1)) >> 1;
  const int64_t half_h = (static_cast<int64_t>(sh->dilation_h) * (sh->kernel_h - 1)) >> 1;
  const float half_w_s = static_cast<float>(half_w) * a.scale;
  const float half_h_s = static_cast<float>(half_h) * a.scale;
  a.base_x.resize(static_cast<size_t>(a.out_w));
  a.base_y.resize(static_cast<size_t>(a.out_h));
  for (int64_t x = 0; x < a.out_w; ++x)
    a.base_x[x] = static_cast<float>(x * sh->stride_w - sh->pad_w + half_w) - half_w_s;
  for (int64_t y = 0; y < a.out_h; ++y)
    a.base_y[y] = static_cast<float>(y * sh->stride_h - sh->pad_h + half_h) - half_h_s;
  return a;
}

// Bilinear footprint of one sampling point. Returns false when the location contributes nothing
// (px <= -1, py <= -1, px >= W, py >= H, or NaN).
struct Footprint {
  int64_t x0, y0;
  float lx, ly, hx, hy;
  bool v00, v01, v10, v11;  // corner inside the image
};

SSM_INLINE bool footprint(const DeformArgs& a, float px, float py, Footprint& f) {
  if (!(px > -1.0f && py > -1.0f && px < static_cast<float>(a.width) && py < static_cast<float>(a.height)))
    return false;
  const float fx = std::floor(px), fy = std::floor(py);
  f.x0 = static_cast<int64_t>(fx);
  f.y0 = static_cast<int64_t>(fy);
  f.lx = px - fx;
  f.ly = py - fy;
  f.hx = 1.0f - f.lx;
  f.hy = 1.0f - f.ly;
  const bool x0_in = f.x0 >= 0, x1_in = f.x0 + 1 <= a.width - 1;
  const bool y0_in = f.y0 >= 0, y1_in = f.y0 + 1 <= a.height - 1;
  f.v00 = y0_in && x0_in;
  f.v01 = y0_in && x1_in;
  f.v10 = y1_in && x0_in;
  f.v11 = y1_in && x1_in;
  return true;
}

// `offset_mask` and `out` are in `io_dtype` (float32 values are used in place, others converted through
// om_buf, which holds 3K floats, and acc).
SSM_HOT void forward_row(const DeformArgs& a, const void* offset_mask, void* out, int io_dtype, int64_t b,
                         int64_t y, int64_t g, float* acc, float* om_buf) {
  const int64_t C = a.gc, GC = a.channels, W = a.width, K = a.K;
  const float* vb = a.value + b * a.height * W * GC + g * C;  // value[b, 0, 0, g*C]
  const float by = a.base_y[y];
  for (int64_t x = 0; x < a.out_w; ++x) {
    const int64_t om_offset = ((b * a.out_h + y) * a.out_w + x) * a.stride_om + g * K * 3;
    const float* om = static_cast<const float*>(offset_mask) + om_offset;
    if (io_dtype != SSM_FLOAT32 || a.om_bias) {
      span_to_float(io_dtype, offset_mask, om_offset, om_buf, 3 * K);
      om = om_buf;
    }
    if (a.om_bias) {
      const float* bias = a.om_bias + g * K * 3;
      for (int64_t j = 0; j < 3 * K; ++j) om_buf[j] = round_to_dtype(io_dtype, om_buf[j] + bias[j]);
    }
    const float bx = a.base_x[x];
    for (int64_t c = 0; c < C; ++c) acc[c] = 0.0f;
    for (int64_t k = 0; k < K; ++k) {
      const float px = bx + (a.tap_x[k] + om[2 * k]) * a.scale;
      const float py = by + (a.tap_y[k] + om[2 * k + 1]) * a.scale;
      const float m = om[2 * K + k];
      Footprint f;
      if (!footprint(a, px, py, f)) continue;
      const float w00 = f.hy * f.hx * m, w01 = f.hy * f.lx * m, w10 = f.ly * f.hx * m, w11 = f.ly * f.lx * m;
      const float* p00 = vb + (f.y0 * W + f.x0) * GC;
      if (f.v00 && f.v11) {  // all four corners inside (the common case): one pass
        const float* p01 = p00 + GC;
        const float* p10 = p00 + W * GC;
        const float* p11 = p10 + GC;
        SSM_SIMD
        for (int64_t c = 0; c < C; ++c) acc[c] += w00 * p00[c] + w01 * p01[c] + w10 * p10[c] + w11 * p11[c];
        continue;
      }
      const float* ps[4] = {p00, p00 + GC, p00 + W * GC, p00 + W * GC + GC};
      const float ws[4] = {w00, w01, w10, w11};
      const bool vs[4] = {f.v00, f.v01, f.v10, f.v11};
      for (int q = 0; q < 4; ++q) {
        if (!vs[q]) continue;
        const float* p = ps[q];
        const float wq = ws[q];
        SSM_SIMD
        for (int64_t c = 0; c < C; ++c) acc[c] += wq * p[c];
      }
    }
    const int64_t out_offset = ((b * a.out_h + y) * a.out_w + x) * GC + g * C;
    if (a.activation == SSM_ACTIVATION_SILU) {
      for (int64_t c = 0; c < C; ++c) {
        const float z = round_to_dtype(io_dtype, acc[c]);
        acc[c] = z / (1.0f + std::exp(-z));
      }
    }
    if (io_dtype == SSM_FLOAT32) {
      float* o = static_cast<float*>(out) + out_offset;
      for (int64_t c = 0; c < C; ++c) o[c] = acc[c];
    } else {
      span_from_float(io_dtype, acc, out, out_offset, C);
    }
  }
}

// Backward over output rows [y0, y1) of (b, g). gv points at grad_value[b, 0, 0, g*C] (or a private
// slab), with `gv_pix` floats between pixels.
SSM_HOT void backward_rows(const DeformArgs& a, const float* grad_out, float* grad_om, float* gv, int64_t gv_pix,
                   int64_t b, int64_t g, int64_t y0, int64_t y1) {
  const int64_t C = a.gc, GC = a.channels, W = a.width, K = a.K;
  const float* vb = a.value + b * a.height * W * GC + g * C;
  const int64_t used = a.groups * K * 3;
  for (int64_t y = y0; y < y1; ++y) {
    const float by = a.base_y[y];
    for (int64_t x = 0; x < a.out_w; ++x) {
      const int64_t pix = (b * a.out_h + y) * a.out_w + x;
      const float* om = a.om + pix * a.stride_om + g * K * 3;
      float* gom = grad_om + pix * a.stride_om + g * K * 3;
      const float* go = grad_out + pix * GC + g * C;
      if (g == 0) {
        for (int64_t j = used; j < a.stride_om; ++j) grad_om[pix * a.stride_om + j] = 0.0f;
      }
      const float bx = a.base_x[x];
      for (int64_t k = 0; k < K; ++k) {
        const float px = bx + (a.tap_x[k] + om[2 * k]) * a.scale;
        const float py = by + (a.tap_y[k] + om[2 * k + 1]) * a.scale;
        const float m = om[2 * K + k];
        Footprint f;
        if (!footprint(a, px, py, f)) {
          gom[2 * k] = 0.0f;
          gom[2 * k + 1] = 0.0f;
          gom[2 * K + k] = 0.0f;
          continue;
        }
        const float w[4] = {f.hy * f.hx, f.hy * f.lx, f.ly * f.hx, f.ly * f.lx};
        const bool vs[4] = {f.v00, f.v01, f.v10, f.v11};
        const int64_t dy_[4] = {0, 0, 1, 1}, dx_[4] = {0, 1, 0, 1};
        float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};  // grad_out . corner value
        for (int q = 0; q < 4; ++q) {
          if (!vs[q]) continue;
          const int64_t off = (f.y0 + dy_[q]) * W + (f.x0 + dx_[q]);
          const float* p = vb + off * GC;
          float* gp = gv + off * gv_pix;
          const float mw = m * w[q];
          float dot = 0.0f;
          SSM_SIMD_REDUCE(dot)
          for (int64_t c = 0; c < C; ++c) {
            dot += go[c] * p[c];
            gp[c] += mw * go[c];
          }
          d[q] = dot;
        }
        const float gx = f.hy * (d[1] - d[0]) + f.ly * (d[3] - d[2]);
        const float gy = f.hx * (d[2] - d[0]) + f.lx * (d[3] - d[1]);
        gom[2 * k] = m * a.scale * gx;
        gom[2 * k + 1] = m * a.scale * gy;
        gom[2 * K + k] = w[0] * d[0] + w[1] * d[1] + w[2] * d[2] + w[3] * d[3];
      }
    }
  }
}

int validate(const ssm_deform_shape* sh) {
  if (!dtype_supported(sh->dtype)) return SSM_ERR_BAD_DTYPE;
  if (sh->batch <= 0 || sh->height <= 0 || sh->width <= 0 || sh->out_height <= 0 || sh->out_width <= 0 ||
      sh->groups <= 0 || sh->group_channels <= 0)
    return SSM_ERR_BAD_SIZE;
  if (sh->kernel_h <= 0 || sh->kernel_w <= 0 || sh->stride_h <= 0 || sh->stride_w <= 0 || sh->dilation_h <= 0 ||
      sh->dilation_w <= 0)
    return SSM_ERR_BAD_SIZE;
  if (sh->remove_center != 0 && sh->remove_center != 1) return SSM_ERR_BAD_SIZE;
  if (sh->activation != SSM_ACTIVATION_NONE && sh->activation != SSM_ACTIVATION_SILU) return SSM_ERR_UNSUPPORTED;
  int64_t points;
  if (!checked_mul(sh->kernel_h, sh->kernel_w, &points)) return SSM_ERR_BAD_SIZE;
  points -= sh->remove_center;
  if (points <= 0 || points > (int64_t(1) << 20)) return SSM_ERR_BAD_SIZE;
  int64_t n;
  if (!checked_product({sh->groups, points, 3}, &n) || sh->offset_stride < n) return SSM_ERR_BAD_SIZE;
  if (!checked_product({sh->batch, sh->height, sh->width, sh->groups, sh->group_channels}, &n))
    return SSM_ERR_BAD_SIZE;
  if (!checked_product({sh->batch, sh->out_height, sh->out_width, sh->offset_stride}, &n)) return SSM_ERR_BAD_SIZE;
  if (!checked_product({sh->batch, sh->out_height, sh->out_width, sh->groups, sh->group_channels}, &n))
    return SSM_ERR_BAD_SIZE;
  return SSM_OK;
}

const float* as_float(int dtype, const void* p, int64_t n, int threads, std::vector<float>& store) {
  if (dtype == SSM_FLOAT32) return static_cast<const float*>(p);
  store.resize(static_cast<size_t>(n));
  convert_to_float(dtype, p, store.data(), n, threads);
  return store.data();
}

int deform_forward(const ssm_deform_shape* sh, const void* value, const void* offset_mask, const void* offset_bias,
                   void* out, int num_threads) {
  const int threads = resolve_threads(num_threads);
  const int64_t n_value = sh->batch * sh->height * sh->width * sh->groups * sh->group_channels;
  std::vector<float> value_store, bias_store;
  DeformArgs a = make_args(sh, as_float(sh->dtype, value, n_value, threads, value_store), nullptr);
  if (offset_bias) a.om_bias = as_float(sh->dtype, offset_bias, sh->offset_stride, 1, bias_store);
  const int64_t items = a.batch * a.out_h * a.groups;
  const double work = static_cast<double>(a.out_w) * a.K * (30.0 + 8.0 * a.gc);
  std::atomic<int> failed(0);
  parallel_for(items, threads, work, [&](int64_t i0, int64_t i1) {
    try {
      std::vector<float> acc(static_cast<size_t>(a.gc)), om_buf(static_cast<size_t>(3 * a.K));
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t g = i % a.groups;
        const int64_t by = i / a.groups;
        forward_row(a, offset_mask, out, sh->dtype, by / a.out_h, by % a.out_h, g, acc.data(), om_buf.data());
      }
    } catch (...) {
      failed.store(1);
    }
  });
  if (failed.load()) return SSM_ERR_BAD_SIZE;
  return SSM_OK;
}

int deform_backward(const ssm_deform_shape* sh, const void* value, const void* offset_mask, const void* grad_out,
                    float* grad_value, float* grad_offset_mask, int num_threads) {
  const int threads = resolve_threads(num_threads);
  const int64_t n_value = sh->batch * sh->height * sh->width * sh->groups * sh->group_channels;
  const int64_t n_om = sh->batch * sh->out_height * sh->out_width * sh->offset_stride;
  const int64_t n_out = sh->batch * sh->out_height * sh->out_width * sh->groups * sh->group_channels;
  std::vector<float> value_store, om_store, go_store;
  const DeformArgs a = make_args(sh, as_float(sh->dtype, value, n_value, threads, value_store),
                                 as_float(sh->dtype, offset_mask, n_om, threads, om_store));
  const float* gof = as_float(sh->dtype, grad_out, n_out, threads, go_store);

  const int64_t bg_count = a.batch * a.groups;
  const int64_t bands = std::max<int64_t>(1, std::min<int64_t>(a.out_h, (16 + bg_count - 1) / bg_count));
  const int64_t slab = a.height * a.width * a.gc;  // one (b, g) of grad_value, packed
  std::vector<float> private_slabs;                // [bg][band-1][H*W*C]
  if (bands > 1) private_slabs.assign(static_cast<size_t>(bg_count * (bands - 1) * slab), 0.0f);

  const int64_t items = bg_count * bands;
  const double work = static_cast<double>(a.out_h) / bands * a.out_w * a.K * (40.0 + 12.0 * a.gc);
  std::atomic<int> failed(0);
  parallel_for(items, threads, work, [&](int64_t i0, int64_t i1) {
    try {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t bg = i / bands, band = i % bands;
        const int64_t b = bg / a.groups, g = bg % a.groups;
        float* gv;
        int64_t gv_pix;
        if (band == 0) {
          gv = grad_value + b * a.height * a.width * a.channels + g * a.gc;
          gv_pix = a.channels;
          for (int64_t p = 0; p < a.height * a.width; ++p) std::memset(gv + p * gv_pix, 0, sizeof(float) * a.gc);
        } else {
          gv = private_slabs.data() + (bg * (bands - 1) + band - 1) * slab;
          gv_pix = a.gc;
        }
        const int64_t y0 = band * a.out_h / bands, y1 = (band + 1) * a.out_h / bands;
        backward_rows(a, gof, grad_offset_mask, gv, gv_pix, b, g, y0, y1);
      }
    } catch (...) {
      failed.store(1);
    }
  });
  if (failed.load()) return SSM_ERR_BAD_SIZE;
  if (bands > 1) {
    const int64_t pixels = a.height * a.width;
    constexpr int64_t kPixBlock = 256;
    const int64_t blocks_per_bg = (pixels + kPixBlock - 1) / kPixBlock;
    parallel_for(bg_count * blocks_per_bg, threads, static_cast<double>(kPixBlock * a.gc * (bands - 1)),
                 [&](int64_t i0, int64_t i1) {
                   for (int64_t i = i0; i < i1; ++i) {
                     const int64_t bg = i / blocks_per_bg, blk = i % blocks_per_bg;
                     const int64_t b = bg / a.groups, g = bg % a.groups;
                     float* gv = grad_value + b * pixels * a.channels + g * a.gc;
                     const int64_t p0 = blk * kPixBlock, p1 = std::min(pixels, p0 + kPixBlock);
                     for (int64_t band = 1; band < bands; ++band) {
                       const float* src = private_slabs.data() + (bg * (bands - 1) + band - 1) * slab;
                       for (int64_t p = p0; p < p1; ++p) {
                         float* d = gv + p * a.channels;
                         const float* s = src + p * a.gc;
                         for (int64_t c = 0; c < a.gc; ++c) d[c] += s[c];
                       }
                     }
                   }
                 });
  }
  return SSM_OK;
}

}  // namespace
}  // namespace cpu
}  // namespace ssm

extern "C" {

SSM_API int ssm_deform_aggregate_fwd_cpu(const ssm_deform_shape* shape, const void* value,
                                         const void* offset_mask, const void* offset_bias, void* out,
                                         int num_threads) {
  if (!shape) return SSM_ERR_NULL_POINTER;
  const int st = ssm::cpu::validate(shape);
  if (st != SSM_OK) return st;
  if (!value || !offset_mask || !out) return SSM_ERR_NULL_POINTER;
  try {
    return ssm::cpu::deform_forward(shape, value, offset_mask, offset_bias, out, num_threads);
  } catch (...) {
    return SSM_ERR_BAD_SIZE;  // allocation failure
  }
}

SSM_API int ssm_deform_aggregate_bwd_cpu(const ssm_deform_shape* shape, const void* value,
                                         const void* offset_mask, const void* grad_out,
                                         float* grad_value, float* grad_offset_mask, int num_threads) {
  if (!shape) return SSM_ERR_NULL_POINTER;
  const int st = ssm::cpu::validate(shape);
  if (st != SSM_OK) return st;
  if (shape->activation != SSM_ACTIVATION_NONE) return SSM_ERR_UNSUPPORTED;  // forward-only epilogue
  if (!value || !offset_mask || !grad_out || !grad_value || !grad_offset_mask) return SSM_ERR_NULL_POINTER;
  try {
    return ssm::cpu::deform_backward(shape, value, offset_mask, grad_out, grad_value, grad_offset_mask,
                                     num_threads);
  } catch (...) {
    return SSM_ERR_BAD_SIZE;
  }
}

}  // extern "C"
