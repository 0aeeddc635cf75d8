// MultiKernelDepthwiseConv (domain version 4) on the CPU: HRVMamba's LPU convolution on a channel-last tensor.
//
// Once per call, each group's central k x k taps are transposed from (C, K, K) to a float32 (k, k, group
// channels) block, so the taps of one position are contiguous over channels. Threads take blocks of output
// rows (batch, row). An output row is accumulated in a float32 (W, C) buffer: per pixel and group, bias plus
// the in-image taps, each a multiply-add over the group's contiguous channels (vectorised); interior pixels go
// 4 pixels x 8 channels at a time with the sums in registers. The row is then activated (a vectorisable erf,
// within 2.6 * 2^-24 of erf) and stored with the channel shuffle applied. Every output value sums its taps in
// the same order whatever the thread count, so results do not depend on it.
// float16 / bfloat16: the input rows an output row needs are converted to float32 once into a per-thread ring of
// rows (consecutive output rows share all but one), and the output row is rounded back from a float32 buffer.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "cpu_common.h"

namespace ssm {
namespace cpu {
namespace {

constexpr int64_t kMaxElements = (int64_t(1) << 60) - 1;

bool odd_kernel(int32_t k) { return k >= 1 && k <= SSM_DWCONV_MAX_KERNEL && k % 2 == 1; }

// Product of the factors, false beyond kMaxElements (or on overflow).
bool within_elements(std::initializer_list<int64_t> factors) {
  int64_t n;
  return checked_product(factors, &n) && n <= kMaxElements;
}

int validate(const ssm_dwconv_shape* sh) {
  if (!dtype_supported(sh->dtype)) return SSM_ERR_BAD_DTYPE;
  if (sh->batch < 0 || sh->height < 1 || sh->width < 1 || sh->channels < 1) return SSM_ERR_BAD_SIZE;
  if (!odd_kernel(sh->kernel_max)) return SSM_ERR_BAD_SIZE;
  if (sh->num_groups < 1 || sh->num_groups > SSM_DWCONV_MAX_GROUPS) return SSM_ERR_BAD_SIZE;
  int64_t total = 0;
  for (int32_t g = 0; g < sh->num_groups; ++g) {
    if (!odd_kernel(sh->kernel_sizes[g]) || sh->kernel_sizes[g] > sh->kernel_max) return SSM_ERR_BAD_SIZE;
    if (sh->group_channels[g] < 1) return SSM_ERR_BAD_SIZE;
    total += sh->group_channels[g];
  }
  if (total != sh->channels) return SSM_ERR_BAD_SIZE;
  if (sh->shuffle_groups < 1 || sh->channels % sh->shuffle_groups != 0) return SSM_ERR_BAD_SIZE;
  if (sh->activation != SSM_ACTIVATION_NONE && sh->activation != SSM_ACTIVATION_GELU) return SSM_ERR_UNSUPPORTED;
  // x and y; the per-thread float32 row buffers (ring of up to kernel_max input rows, accumulator, output row)
  if (!within_elements({sh->batch, sh->height, sh->width, sh->channels})) return SSM_ERR_BAD_SIZE;
  if (!within_elements({sh->kernel_max + 2, sh->width, sh->channels})) return SSM_ERR_BAD_SIZE;
  return SSM_OK;
}

struct Group {
  int64_t c0, channels;  // channel range [c0, c0 + channels)
  int k;
  int64_t tap_offset;  // start of the group's (k, k, channels) float32 taps
};

// The weights in the order the row loop reads them, and everything else fixed for the call.
struct Plan {
  int64_t W, C;
  int k_rows;  // input rows one output row reads: the largest group kernel
  std::vector<Group> groups;
  std::vector<float> taps;
  std::vector<float> bias;
};

Plan make_plan(const ssm_dwconv_shape* sh, const void* weight, const void* bias) {
  Plan p;
  p.W = sh->width;
  p.C = sh->channels;
  p.k_rows = 1;
  const int64_t K = sh->kernel_max, R = K / 2;
  int64_t c0 = 0, offset = 0;
  for (int32_t g = 0; g < sh->num_groups; ++g) {
    const int k = sh->kernel_sizes[g];
    const int64_t cg = sh->group_channels[g];
    p.groups.push_back({c0, cg, k, offset});
    p.k_rows = std::max(p.k_rows, k);
    c0 += cg;
    offset += int64_t(k) * k * cg;
  }
  p.taps.resize(static_cast<size_t>(offset));
  std::vector<float> line(static_cast<size_t>(K));
  for (const Group& g : p.groups) {
    const int64_t lo = R - g.k / 2;  // first central tap of the K x K slice
    float* dst = p.taps.data() + g.tap_offset;
    for (int64_t c = 0; c < g.channels; ++c) {
      for (int64_t i = 0; i < g.k; ++i) {
        // only the central taps are read: (c, lo + i, lo .. lo + k - 1)
        span_to_float(sh->dtype, weight, ((g.c0 + c) * K + lo + i) * K + lo, line.data(), g.k);
        for (int64_t j = 0; j < g.k; ++j) dst[(i * g.k + j) * g.channels + c] = line[static_cast<size_t>(j)];
      }
    }
  }
  p.bias.resize(static_cast<size_t>(p.C));
  span_to_float(sh->dtype, bias, 0, p.bias.data(), p.C);
  return p;
}

// Register blocking of the interior: kLanes channels of kPixels neighbouring pixels stay in registers across all
// the taps (one AVX2 vector, or two SSE2 vectors, per pixel), so each weight vector loaded serves kPixels pixels.
constexpr int64_t kLanes = 8;
constexpr int64_t kPixels = 4;

// Output pixel w, channels [t0, t1) of group g (offsets inside the group), taps clipped to the row. grows[i] is the
// input row of kernel row i (NULL outside the image).
SSM_INLINE void conv_pixel(const Plan& p, const Group& g, const float* const* grows, int64_t w, int64_t t0,
                           int64_t t1, float* acc) {
  const int64_t C = p.C, cg = g.channels, r = g.k / 2;
  const float* taps = p.taps.data() + g.tap_offset;
  const float* bias = p.bias.data() + g.c0;
  float* a = acc + w * C + g.c0;
  SSM_SIMD
  for (int64_t t = t0; t < t1; ++t) a[t] = bias[t];
  const int64_t j0 = std::max<int64_t>(0, r - w), j1 = std::min<int64_t>(g.k, p.W + r - w);
  for (int64_t i = 0; i < g.k; ++i) {
    if (grows[i] == nullptr) continue;
    for (int64_t j = j0; j < j1; ++j) {
      const float* xp = grows[i] + (w + j - r) * C + g.c0;
      const float* wp = taps + (i * g.k + j) * cg;
      SSM_SIMD
      for (int64_t t = t0; t < t1; ++t) a[t] += xp[t] * wp[t];
    }
  }
}

// Output pixels [w, w + kPixels), channels [t, t + kLanes) of group g: every tap of these pixels lies inside the
// row. The same sums, in the same order, as conv_pixel.
SSM_INLINE void conv_block(const Plan& p, const Group& g, const float* const* grows, int64_t w, int64_t t,
                           float* acc) {
  const int64_t C = p.C, cg = g.channels, r = g.k / 2;
  const float* taps = p.taps.data() + g.tap_offset + t;
  const float* bias = p.bias.data() + g.c0 + t;
  float a[kPixels][kLanes];
  for (int64_t q = 0; q < kPixels; ++q) {
    for (int64_t v = 0; v < kLanes; ++v) a[q][v] = bias[v];
  }
  for (int64_t i = 0; i < g.k; ++i) {
    if (grows[i] == nullptr) continue;
    const float* xr = grows[i] + (w - r) * C + g.c0 + t;
    for (int64_t j = 0; j < g.k; ++j) {
      const float* wp = taps + (i * g.k + j) * cg;
      const float* xp = xr + j * C;
      for (int64_t q = 0; q < kPixels; ++q) {
        for (int64_t v = 0; v < kLanes; ++v) a[q][v] += xp[q * C + v] * wp[v];
      }
    }
  }
  float* out = acc + w * C + g.c0 + t;
  for (int64_t q = 0; q < kPixels; ++q) {
    for (int64_t v = 0; v < kLanes; ++v) out[q * C + v] = a[q][v];
  }
}

// One output row of the convolution, before the activation: acc (W, C) = bias + taps. rows[p.k_rows / 2 + d] is
// input row h + d as float32 (W, C), NULL outside the image.
SSM_HOT void conv_row(const Plan& p, const float* const* rows, float* acc) {
  const int64_t W = p.W;
  for (const Group& g : p.groups) {
    const int64_t r = g.k / 2;
    const float* const* grows = rows + (p.k_rows / 2 - r);
    // Blocks: whole kLanes channel runs of interior pixels (all taps inside the row), kPixels at a time.
    const int64_t lanes_end = g.channels - g.channels % kLanes;
    const int64_t w_lo = std::min(r, W), w_hi = std::max(w_lo, W - r);
    int64_t w_blocked = w_lo;
    for (; w_blocked + kPixels <= w_hi; w_blocked += kPixels) {
      for (int64_t t = 0; t < lanes_end; t += kLanes) conv_block(p, g, grows, w_blocked, t, acc);
    }
    // The rest: border pixels, the interior pixels after the last block, and every pixel's channel tail.
    for (int64_t w = 0; w < W; ++w) {
      const int64_t t0 = (w >= w_lo && w < w_blocked) ? lanes_end : 0;
      if (t0 < g.channels) conv_pixel(p, g, grows, w, t0, g.channels, acc);
    }
  }
}

// out[w, q*S + s] = act(z[w, s*P + q]) (ShuffleNet's channel shuffle; S = 1 is a copy). z is modified.
SSM_HOT void activate_and_shuffle(float* z, float* out, int64_t W, int64_t C, int64_t S, int activation) {
  if (activation == SSM_ACTIVATION_GELU) {
    SSM_SIMD
    for (int64_t i = 0; i < W * C; ++i) z[i] = gelu_f(z[i]);
  }
  const int64_t P = C / S;
  for (int64_t w = 0; w < W; ++w) {
    const float* zw = z + w * C;
    float* ow = out + w * C;
    for (int64_t s = 0; s < S; ++s) {
      for (int64_t q = 0; q < P; ++q) ow[q * S + s] = zw[s * P + q];
    }
  }
}

// Input rows as float32: the input itself for float32, else a ring of k_rows converted rows (slot h % k_rows).
class RowSource {
 public:
  RowSource(const ssm_dwconv_shape* sh, const void* x, int k_rows, float* ring)
      : dtype_(sh->dtype), x_(x), H_(sh->height), row_elems_(sh->width * sh->channels), k_rows_(k_rows),
        ring_(ring), tags_(static_cast<size_t>(k_rows), -1) {}

  // Row hh of image b, or NULL outside the image.
  const float* row(int64_t b, int64_t hh) {
    if (hh < 0 || hh >= H_) return nullptr;
    const int64_t index = b * H_ + hh;
    if (dtype_ == SSM_FLOAT32) return static_cast<const float*>(x_) + index * row_elems_;
    const size_t slot = static_cast<size_t>(hh % k_rows_);
    float* dst = ring_ + static_cast<int64_t>(slot) * row_elems_;
    if (tags_[slot] != index) {
      span_to_float(dtype_, x_, index * row_elems_, dst, row_elems_);
      tags_[slot] = index;
    }
    return dst;
  }

 private:
  int dtype_;
  const void* x_;
  int64_t H_, row_elems_;
  int k_rows_;
  float* ring_;
  std::vector<int64_t> tags_;  // input row (b * H + h) held by each slot, -1 for none
};

// Output rows [t0, t1) of the flattened (batch, row) index. Allocates its float32 row buffers (W * C each): the
// accumulator, and for float16 / bfloat16 the output row and the ring of input rows; throws if it cannot.
void forward_rows(const ssm_dwconv_shape* sh, const Plan& p, const void* x, void* y, int64_t t0, int64_t t1) {
  const int64_t H = sh->height, row_elems = p.W * p.C;
  const bool f32 = sh->dtype == SSM_FLOAT32;
  const size_t buffer_rows = f32 ? 1 : 2 + static_cast<size_t>(p.k_rows);
  std::vector<float> buffers(buffer_rows * static_cast<size_t>(row_elems));
  float* acc = buffers.data();
  float* out_row = f32 ? nullptr : acc + row_elems;
  RowSource source(sh, x, p.k_rows, f32 ? nullptr : acc + 2 * row_elems);
  std::vector<const float*> rows(static_cast<size_t>(p.k_rows));
  const int centre = p.k_rows / 2;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t b = t / H, h = t % H;
    for (int d = -centre; d <= centre; ++d) rows[static_cast<size_t>(centre + d)] = source.row(b, h + d);
    conv_row(p, rows.data(), acc);
    float* dst = f32 ? static_cast<float*>(y) + t * row_elems : out_row;
    activate_and_shuffle(acc, dst, p.W, p.C, sh->shuffle_groups, sh->activation);
    if (!f32) span_from_float(sh->dtype, out_row, y, t * row_elems, row_elems);
  }
}

int depthwise_conv_forward(const ssm_dwconv_shape* sh, const void* x, const void* weight, const void* bias,
                           void* y, int num_threads) {
  const int64_t items = sh->batch * sh->height;
  if (items == 0) return SSM_OK;
  const Plan p = make_plan(sh, weight, bias);
  const int64_t row_elems = p.W * p.C;
  double taps_per_value = 0.0;  // average over the channels
  for (const Group& g : p.groups) taps_per_value += double(g.k) * g.k * double(g.channels) / double(p.C);
  const double work_per_row = (2.0 * taps_per_value + 4.0) * static_cast<double>(row_elems);
  std::atomic<bool> failed(false);  // a thread could not allocate its buffers
  parallel_for(items, num_threads, work_per_row, [&](int64_t t0, int64_t t1) {
    try {
      forward_rows(sh, p, x, y, t0, t1);
    } catch (...) {
      failed.store(true);
    }
  });
  return failed.load() ? SSM_ERR_BAD_SIZE : SSM_OK;
}

}  // namespace
}  // namespace cpu
}  // namespace ssm

extern "C" {

SSM_API int ssm_depthwise_conv_fwd_cpu(const ssm_dwconv_shape* shape, const void* x, const void* weight,
                                       const void* bias, void* y, int num_threads) {
  if (!shape) return SSM_ERR_NULL_POINTER;
  const int st = ssm::cpu::validate(shape);
  if (st != SSM_OK) return st;
  if (!x || !weight || !bias || !y) return SSM_ERR_NULL_POINTER;
  try {
    return ssm::cpu::depthwise_conv_forward(shape, x, weight, bias, y, num_threads);
  } catch (...) {
    return SSM_ERR_BAD_SIZE;  // allocation failure
  }
}

}  // extern "C"
