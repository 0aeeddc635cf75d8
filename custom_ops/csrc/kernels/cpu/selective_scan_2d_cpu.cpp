// SelectiveScan2D (SS2D's four-direction scan in one call, channel-last) on the CPU: forward and backward.
//
// Direction k of batch b is SelectiveScan over the H*W positions in its visiting order (docs/ops.md), with
// the parameters of channel block k. The sequences are read in place from the channel-last tensors: step t
// of direction k is position p = position(k, t), whose channels are contiguous in x (b, p, :), delta
// (b, p, k*D:(k+1)*D), Bs / Cs (b, p, k, :) and dy (b, p, :). The recurrence of a tile of channels is
// scan_core.h's, shared with SelectiveScan.
//
// Work items are (batch b, direction k, tile of up to kTile channels) in the forward, (b, k, channel range)
// in the backward. Partial sums that several items contribute to are kept apart and reduced at the end in
// a fixed order, so results do not depend on the number of threads:
//   y and dx (b, p, c): sums over the four directions. Each direction writes its own float32 copy
//     [k][b][p][c]; they are added in the order k = 0, 1, 2, 3 and converted to the output dtype.
//   dBs / dCs (b, p, k, n): sums over the D channels of direction k. With S channel ranges per (b, k)
//     (S from the shape only), range s accumulates into its own [p][n] slab, reduced over s; with S = 1
//     the item writes dBs / dCs itself.
//   dA, dDs, d_delta_bias: per-batch partials [b][c], reduced over b.
// d_delta (b, p, k*D + c) has a single writer and is stored directly.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <new>
#include <vector>

#include "cpu_common.h"
#include "scan_core.h"

namespace ssm {
namespace cpu {
namespace {

using scan::ChunkBuffers;
using scan::kChunk;
using scan::kMaxState;
using scan::kTile;

constexpr int64_t kDirections = 4;

struct Scan2DArgs {
  const void* x;      // io_dtype (B, H, W, D)
  const void* delta;  // delta_dtype (B, H, W, K*D)
  int io_dtype;
  int delta_dtype;    // io_dtype, or float32 when the dt projection made delta (already rounded to io_dtype)
  const float* A;     // (K*D, N)
  const float* Bs;    // (B, H, W, K, N)
  const float* Cs;
  const float* Ds;    // (K*D) or null
  const float* bias;  // (K*D) or null
  int64_t batch, height, width, dim, directions, dstate;
  int64_t length;     // H*W
  bool softplus;
};

// The sequences of one tile (channels c0 .. c0+nch-1 of direction k, batch b), read in place.
struct DirectionSeq {
  const Scan2DArgs* s;
  int64_t b, k, c0;
  int nch;
  const void* dy = nullptr;  // backward: io_dtype (B, H, W, D)
  float* out = nullptr;      // this direction's float32 [b][p][c] copy of y (forward) / dx (backward)
  void* d_delta = nullptr;   // backward: io_dtype (B, H, W, K*D)
  float* dB = nullptr;       // backward: dL/dB at position p, state n: dB[p * dbc_pos_stride + n]
  float* dC = nullptr;
  int64_t dbc_pos_stride = 0;
  // positions of the steps of the chunk that starts at pos_t0 (computed once per chunk, reused by the stores)
  mutable int64_t pos[kChunk];
  mutable int64_t pos_t0 = -1;

  int64_t length() const { return s->length; }

  // Visiting orders: k = 0 row-major (h outer, w inner), 1 column-major (w outer, h inner), 2 and 3 their
  // reverses. Positions are h * W + w; one division per chunk, then stepping.
  SSM_INLINE void positions(int64_t t0, int tc) const {
    if (pos_t0 == t0) return;
    pos_t0 = t0;
    const int64_t H = s->height, W = s->width, L = s->length;
    const bool reverse = k >= 2;
    const int64_t start = reverse ? L - 1 - t0 : t0;  // index in the forward order of the same kind
    if ((k & 1) == 0) {
      for (int t = 0; t < tc; ++t) pos[t] = reverse ? start - t : start + t;
      return;
    }
    int64_t w = start / H, h = start - w * H;
    for (int t = 0; t < tc; ++t) {
      pos[t] = h * W + w;
      if (reverse) {
        if (--h < 0) {
          h = H - 1;
          --w;
        }
      } else if (++h == H) {
        h = 0;
        ++w;
      }
    }
  }

  SSM_INLINE void load(int64_t t0, int tc, bool with_dy, ChunkBuffers& cb) const {
    positions(t0, tc);
    const int64_t L = s->length, D = s->dim, K = s->directions, N = s->dstate;
    const int dtype = s->io_dtype;
    cb.bc_stride = 1;
    cb.dbc_stride = 1;
    for (int t = 0; t < tc; ++t) {
      const int64_t row = b * L + pos[t];
      span_to_float(dtype, s->x, row * D + c0, cb.u[t], nch);
      span_to_float(s->delta_dtype, s->delta, (row * K + k) * D + c0, cb.z[t], nch);
      cb.B[t] = s->Bs + (row * K + k) * N;
      cb.C[t] = s->Cs + (row * K + k) * N;
      if (with_dy) {
        span_to_float(dtype, dy, row * D + c0, cb.dy[t], nch);
        cb.dB[t] = dB + pos[t] * dbc_pos_stride;
        cb.dC[t] = dC + pos[t] * dbc_pos_stride;
      }
    }
  }

  SSM_INLINE void store_output(int64_t t0, int tc, const float (*buf)[kTile]) const {
    positions(t0, tc);
    const int64_t L = s->length, D = s->dim;
    for (int t = 0; t < tc; ++t) {
      std::memcpy(out + (b * L + pos[t]) * D + c0, buf[t], sizeof(float) * nch);
    }
  }

  SSM_INLINE void store_grads(int64_t t0, int tc, const ChunkBuffers& cb) const {
    store_output(t0, tc, cb.out);
    const int64_t L = s->length, D = s->dim, K = s->directions;
    for (int t = 0; t < tc; ++t) {
      span_from_float(s->io_dtype, cb.ddt[t], d_delta, ((b * L + pos[t]) * K + k) * D + c0, nch);
    }
  }
};

// The tile's sequences and constants: channels c0 = tile * kTile .. of direction k (parameter rows
// k*D + c0 ..), batch b.
SSM_INLINE DirectionSeq make_seq(const Scan2DArgs& s, int64_t b, int64_t k, int64_t tile, scan::TileParams& p) {
  DirectionSeq q;
  q.s = &s;
  q.b = b;
  q.k = k;
  q.c0 = tile * kTile;
  q.nch = static_cast<int>(std::min<int64_t>(kTile, s.dim - q.c0));
  scan::make_tile(s.A, s.Ds, s.bias, s.dstate, k * s.dim + q.c0, q.nch, p);
  return q;
}

SSM_HOT void forward_item(const Scan2DArgs& s, float* y_parts, int64_t b, int64_t k, int64_t tile,
                          ChunkBuffers& cb) {
  scan::TileParams p;
  DirectionSeq q = make_seq(s, b, k, tile, p);
  q.out = y_parts + k * s.batch * s.length * s.dim;
  scan::forward_tile(q, p, static_cast<int>(s.dstate), s.softplus, cb);
}

struct BackwardOut {
  const void* dy;
  float* dx_parts;  // [k][b][p][c]
  void* d_delta;
  float* dB;        // this item's dL/dB accumulator, [p * pos_stride + n]
  float* dC;
  int64_t pos_stride;
  float* dA;        // per-batch partials (already offset to batch b): [c][n], c over K*D
  float* dD;        // [c]
  float* dbias;     // [c]
};

SSM_HOT void backward_tile(const Scan2DArgs& s, const BackwardOut& o, int64_t b, int64_t k, int64_t tile,
                           scan::BackwardScratch& w) {
  scan::TileParams p;
  DirectionSeq q = make_seq(s, b, k, tile, p);
  q.dy = o.dy;
  q.out = o.dx_parts + k * s.batch * s.length * s.dim;
  q.d_delta = o.d_delta;
  q.dB = o.dB;
  q.dC = o.dC;
  q.dbc_pos_stride = o.pos_stride;
  const int64_t c = k * s.dim + q.c0;  // parameter row
  scan::backward_tile(q, p, static_cast<int>(s.dstate), s.softplus, w, o.dA + c * s.dstate, o.dD + c,
                      o.dbias + c);
}

// ------------------------------------------------------------------------------------------------
// Validation, dtype handling and the drivers.

int validate_shape(const ssm_scan2d_shape* shape) {
  if (!dtype_supported(shape->dtype)) return SSM_ERR_BAD_DTYPE;
  if (shape->batch <= 0 || shape->height <= 0 || shape->width <= 0 || shape->dim <= 0) return SSM_ERR_BAD_SIZE;
  if (shape->directions != kDirections) return SSM_ERR_BAD_SIZE;  // as the CUDA library answers
  if (shape->dstate < 1 || shape->dstate > kMaxState) return SSM_ERR_BAD_SIZE;
  const int64_t B = shape->batch, H = shape->height, W = shape->width, K = shape->directions;
  int64_t n;
  // delta (and the float32 per-direction copies of y / dx, as many elements), Bs / Cs, the dA partials
  if (!checked_product({B, H, W, K, shape->dim}, &n)) return SSM_ERR_BAD_SIZE;
  if (!checked_product({B, H, W, K, shape->dstate}, &n)) return SSM_ERR_BAD_SIZE;
  if (!checked_product({B, K, shape->dim, shape->dstate}, &n)) return SSM_ERR_BAD_SIZE;
  return SSM_OK;
}

struct ConvertedInputs {
  std::vector<float> A, Bs, Cs, Ds, bias;
};

Scan2DArgs make_args(const ssm_scan2d_shape* shape, const void* x, const void* delta, const void* A,
                     const void* Bs, const void* Cs, const void* Ds, const void* delta_bias, int threads,
                     ConvertedInputs& cv) {
  using scan::as_float;
  const int64_t channels = shape->directions * shape->dim;
  const int64_t length = shape->height * shape->width;
  const int64_t n_bc = shape->batch * length * shape->directions * shape->dstate;
  const int dt = shape->dtype;
  Scan2DArgs s;
  s.x = x;
  s.delta = delta;
  s.io_dtype = dt;
  s.delta_dtype = dt;
  s.A = as_float(dt, A, channels * shape->dstate, threads, cv.A);
  s.Bs = as_float(dt, Bs, n_bc, threads, cv.Bs);
  s.Cs = as_float(dt, Cs, n_bc, threads, cv.Cs);
  s.Ds = as_float(dt, Ds, channels, threads, cv.Ds);
  s.bias = as_float(dt, delta_bias, channels, threads, cv.bias);
  s.batch = shape->batch;
  s.height = shape->height;
  s.width = shape->width;
  s.dim = shape->dim;
  s.directions = shape->directions;
  s.dstate = shape->dstate;
  s.length = length;
  s.softplus = shape->delta_softplus != 0;
  return s;
}

// out (B*L rows of D, `dtype`) = parts[0] + parts[1] + parts[2] + parts[3] (float32 [k][B*L][D]), in that order.
void sum_directions(const Scan2DArgs& s, const float* parts, void* out, int threads) {
  const int64_t rows = s.batch * s.length, D = s.dim, stride = rows * D;
  parallel_for(rows, threads, static_cast<double>(D * s.directions), [&](int64_t r0, int64_t r1) {
    std::vector<float> row(static_cast<size_t>(D));
    for (int64_t r = r0; r < r1; ++r) {
      const float* p = parts + r * D;
      for (int64_t c = 0; c < D; ++c) row[c] = p[c];
      for (int64_t k = 1; k < s.directions; ++k) {
        const float* pk = p + k * stride;
        for (int64_t c = 0; c < D; ++c) row[c] += pk[c];
      }
      span_from_float(s.io_dtype, row.data(), out, r * D, D);
    }
  });
}

// The scan over (batch, direction, channel tile) items, then the direction sum into y.
void run_forward(const Scan2DArgs& s, void* y, int threads) {
  std::vector<float> y_parts(static_cast<size_t>(s.directions * s.batch * s.length * s.dim));
  const int64_t tiles = (s.dim + kTile - 1) / kTile;
  const int64_t items = s.batch * s.directions * tiles;
  const double work = static_cast<double>(kTile) * static_cast<double>(s.length) * (30.0 * s.dstate + 40.0);
  std::atomic<int> failed(0);
  parallel_for(items, threads, work, [&](int64_t i0, int64_t i1) {
    try {
      std::unique_ptr<ChunkBuffers> cb(new ChunkBuffers);
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t tile = i % tiles, bk = i / tiles;
        forward_item(s, y_parts.data(), bk / s.directions, bk % s.directions, tile, *cb);
      }
    } catch (...) {
      failed.store(1);
    }
  });
  if (failed.load()) throw std::bad_alloc();
  sum_directions(s, y_parts.data(), y, threads);
}

int scan2d_forward(const ssm_scan2d_shape* shape, const void* x, const void* delta, const void* A, const void* Bs,
                   const void* Cs, const void* Ds, const void* delta_bias, void* y, int num_threads) {
  const int threads = resolve_threads(num_threads);
  ConvertedInputs cv;
  const Scan2DArgs s = make_args(shape, x, delta, A, Bs, Cs, Ds, delta_bias, threads, cv);
  run_forward(s, y, threads);
  return SSM_OK;
}

// The dt projection's forward: delta (float32, each value rounded to the dtype as a MatMul node's output is)
// and Bs / Cs (float32) are formed from x_proj first, then the scan runs as above. The CPU path is for
// parity and tests; the fusion pays on the GPU.
int scan2d_proj_forward(const ssm_scan2d_shape* shape, int64_t R, const void* x, const void* x_proj,
                        const void* dt_projection, const void* A, const void* Ds, const void* delta_bias, void* y,
                        int num_threads) {
  const int threads = resolve_threads(num_threads);
  const int dt = shape->dtype;
  const int64_t K = shape->directions, D = shape->dim, N = shape->dstate;
  const int64_t rows = shape->batch * shape->height * shape->width * K;  // (position, direction) rows
  const int64_t row_len = R + 2 * N;
  std::vector<float> xp_store, w_store;
  const float* xp = scan::as_float(dt, x_proj, rows * row_len, threads, xp_store);
  const float* w = scan::as_float(dt, dt_projection, K * D * R, threads, w_store);
  std::vector<float> delta(static_cast<size_t>(rows * D)), Bs(static_cast<size_t>(rows * N)),
      Cs(static_cast<size_t>(rows * N));
  parallel_for(rows, threads, static_cast<double>(D * R), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t k = r % K;
      const float* in = xp + r * row_len;
      for (int64_t c = 0; c < D; ++c) {
        const float* wc = w + (k * D + c) * R;
        float sum = 0.f;
        for (int64_t j = 0; j < R; ++j) sum = std::fma(in[j], wc[j], sum);
        delta[static_cast<size_t>(r * D + c)] = round_to_dtype(dt, sum);
      }
      std::memcpy(&Bs[static_cast<size_t>(r * N)], in + R, sizeof(float) * N);
      std::memcpy(&Cs[static_cast<size_t>(r * N)], in + R + N, sizeof(float) * N);
    }
  });
  ConvertedInputs cv;
  Scan2DArgs s = make_args(shape, x, delta.data(), A, nullptr, nullptr, Ds, delta_bias, threads, cv);
  s.delta_dtype = SSM_FLOAT32;
  s.Bs = Bs.data();
  s.Cs = Cs.data();
  run_forward(s, y, threads);
  return SSM_OK;
}

int scan2d_backward(const ssm_scan2d_shape* shape, const void* x, const void* delta, const void* A, const void* Bs,
                    const void* Cs, const void* Ds, const void* delta_bias, const void* dy, void* dx,
                    void* d_delta, float* dA, float* dBs, float* dCs, float* dDs, float* d_delta_bias,
                    int num_threads) {
  const int threads = resolve_threads(num_threads);
  ConvertedInputs cv;
  const Scan2DArgs s = make_args(shape, x, delta, A, Bs, Cs, Ds, delta_bias, threads, cv);
  const int64_t K = s.directions, N = s.dstate, L = s.length;
  const int64_t channels = K * s.dim;
  const int64_t slab = L * N;  // one (b, k) of dBs / dCs, [p][n]

  const int64_t tiles = (s.dim + kTile - 1) / kTile;
  const int64_t bk_count = s.batch * K;
  const int64_t splits = scan::backward_splits(tiles, bk_count);
  std::vector<float> bc_partial;  // [b][k][split][2][L*N] when splits > 1
  if (splits > 1) bc_partial.assign(static_cast<size_t>(bk_count * splits * 2 * slab), 0.0f);
  std::vector<float> dx_parts(static_cast<size_t>(K * s.batch * L * s.dim));
  std::vector<float> per_batch(static_cast<size_t>(s.batch * channels * (N + 2)), 0.0f);
  float* pb_dA = per_batch.data();              // [b][c][n]
  float* pb_dD = pb_dA + s.batch * channels * N;  // [b][c]
  float* pb_db = pb_dD + s.batch * channels;      // [b][c]

  const int64_t items = bk_count * splits;
  const double work = static_cast<double>(s.dim) / splits * static_cast<double>(L) * (80.0 * N + 80.0);
  std::atomic<int> failed(0);
  parallel_for(items, threads, work, [&](int64_t i0, int64_t i1) {
    try {
      scan::BackwardScratch w;
      w.reserve(L, N);
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t bk = i / splits, sp = i % splits;
        const int64_t b = bk / K, k = bk % K;
        BackwardOut o;
        o.dy = dy;
        o.dx_parts = dx_parts.data();
        o.d_delta = d_delta;
        if (splits > 1) {
          o.dB = bc_partial.data() + (bk * splits + sp) * 2 * slab;
          o.dC = o.dB + slab;
          o.pos_stride = N;
        } else {  // the only writer of dBs / dCs (b, :, k, :)
          o.dB = dBs + (b * L * K + k) * N;
          o.dC = dCs + (b * L * K + k) * N;
          o.pos_stride = K * N;
          for (int64_t p = 0; p < L; ++p) {
            std::memset(o.dB + p * o.pos_stride, 0, sizeof(float) * N);
            std::memset(o.dC + p * o.pos_stride, 0, sizeof(float) * N);
          }
        }
        o.dA = pb_dA + b * channels * N;
        o.dD = pb_dD + b * channels;
        o.dbias = pb_db + b * channels;
        const int64_t tile0 = sp * tiles / splits, tile1 = (sp + 1) * tiles / splits;
        for (int64_t tile = tile0; tile < tile1; ++tile) backward_tile(s, o, b, k, tile, w);
      }
    } catch (...) {
      failed.store(1);
    }
  });
  if (failed.load()) return SSM_ERR_BAD_SIZE;

  if (splits > 1) {
    parallel_for(bk_count, threads, static_cast<double>(2 * slab * splits), [&](int64_t i0, int64_t i1) {
      for (int64_t bk = i0; bk < i1; ++bk) {
        const int64_t b = bk / K, k = bk % K;
        const float* p0 = bc_partial.data() + bk * splits * 2 * slab;
        for (int64_t p = 0; p < L; ++p) {
          float* dB = dBs + ((b * L + p) * K + k) * N;
          float* dC = dCs + ((b * L + p) * K + k) * N;
          for (int64_t n = 0; n < N; ++n) {
            float sb = p0[p * N + n], sc = p0[slab + p * N + n];
            for (int64_t sp = 1; sp < splits; ++sp) {
              sb += p0[sp * 2 * slab + p * N + n];
              sc += p0[sp * 2 * slab + slab + p * N + n];
            }
            dB[n] = sb;
            dC[n] = sc;
          }
        }
      }
    });
  }
  sum_directions(s, dx_parts.data(), dx, threads);
  scan::reduce_batch_partials(s.batch, channels, N, pb_dA, pb_dD, pb_db, dA, dDs, d_delta_bias);
  return SSM_OK;
}

}  // namespace
}  // namespace cpu
}  // namespace ssm

extern "C" {

SSM_API int ssm_selective_scan_2d_fwd_cpu(const ssm_scan2d_shape* shape, const void* x, const void* delta,
                                          const void* A, const void* Bs, const void* Cs, const void* Ds,
                                          const void* delta_bias, void* y, int num_threads) {
  if (!shape) return SSM_ERR_NULL_POINTER;
  const int st = ssm::cpu::validate_shape(shape);
  if (st != SSM_OK) return st;
  if (!x || !delta || !A || !Bs || !Cs || !y) return SSM_ERR_NULL_POINTER;
  try {
    return ssm::cpu::scan2d_forward(shape, x, delta, A, Bs, Cs, Ds, delta_bias, y, num_threads);
  } catch (...) {
    return SSM_ERR_BAD_SIZE;  // allocation failure
  }
}

SSM_API int ssm_selective_scan_2d_proj_fwd_cpu(const ssm_scan2d_shape* shape, int64_t dt_rank, const void* x,
                                               const void* x_proj, const void* dt_projection, const void* A,
                                               const void* Ds, const void* delta_bias, void* y, int num_threads) {
  if (!shape) return SSM_ERR_NULL_POINTER;
  const int st = ssm::cpu::validate_shape(shape);
  if (st != SSM_OK) return st;
  if (dt_rank < 1 || dt_rank > SSM_SCAN2D_MAX_DT_RANK) return SSM_ERR_BAD_SIZE;
  int64_t n;
  if (!ssm::cpu::checked_product({shape->batch, shape->height, shape->width, shape->directions,
                                  dt_rank + 2 * shape->dstate}, &n))
    return SSM_ERR_BAD_SIZE;
  if (!x || !x_proj || !dt_projection || !A || !y) return SSM_ERR_NULL_POINTER;
  try {
    return ssm::cpu::scan2d_proj_forward(shape, dt_rank, x, x_proj, dt_projection, A, Ds, delta_bias, y,
                                         num_threads);
  } catch (...) {
    return SSM_ERR_BAD_SIZE;  // allocation failure
  }
}

// dDs / d_delta_bias: written when non-null (even if Ds / delta_bias were null: the gradient at zero),
// skipped when null.
SSM_API int ssm_selective_scan_2d_bwd_cpu(const ssm_scan2d_shape* shape, const void* x, const void* delta,
                                          const void* A, const void* Bs, const void* Cs, const void* Ds,
                                          const void* delta_bias, const void* dy, void* dx, void* d_delta,
                                          float* dA, float* dBs, float* dCs, float* dDs, float* d_delta_bias,
                                          int num_threads) {
  if (!shape) return SSM_ERR_NULL_POINTER;
  const int st = ssm::cpu::validate_shape(shape);
  if (st != SSM_OK) return st;
  if (!x || !delta || !A || !Bs || !Cs || !dy || !dx || !d_delta || !dA || !dBs || !dCs)
    return SSM_ERR_NULL_POINTER;
  try {
    return ssm::cpu::scan2d_backward(shape, x, delta, A, Bs, Cs, Ds, delta_bias, dy, dx, d_delta, dA, dBs, dCs,
                                     dDs, d_delta_bias, num_threads);
  } catch (...) {
    return SSM_ERR_BAD_SIZE;
  }
}

}  // extern "C"
