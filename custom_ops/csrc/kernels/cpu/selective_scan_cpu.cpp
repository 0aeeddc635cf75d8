// SelectiveScan (Mamba S6 recurrence with VMamba grouping) on the CPU: forward and backward.
//
// Work is split into items (batch b, group g, tile of up to kTile channels of that group); the recurrence of
// a tile is scan_core.h's, reading each channel's sequence along the last axis of the (B, G*D, L) tensors.
// The (B, G*D, L) tensors u, delta, dy, y, du, d_delta stay in their own dtype and are converted chunk by
// chunk as they are loaded and stored; the small ones (A, Bs, Cs, Ds, delta_bias) are converted to float32
// copies first.
//
// Partial sums that several items contribute to are kept apart and reduced at the end in a fixed order, so
// results do not depend on the number of threads:
//   dBs / dCs (b, g, n, t): summed over the D channels of a group. Each (b, g) is split into S channel
//     ranges (S from the shape only); range s accumulates into its own [N][L] slab, reduced over s.
//   dA, dDs, d_delta_bias: per-batch partials [b][c], reduced over b.
#include <algorithm>
#include <atomic>
#include <memory>
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

struct ScanArgs {
  const void* u;      // io_dtype
  const void* delta;  // io_dtype
  int io_dtype;
  const float* A;
  const float* Bs;
  const float* Cs;
  const float* Ds;    // may be null
  const float* bias;  // may be null
  int64_t batch, groups, dim, dstate, length;
  bool softplus;
};

// Transposed load of one chunk of a row-major (channel, t) tensor of `dtype` into buf[t][ch].
SSM_INLINE void load_transposed(const void* src, int dtype, int64_t row0, int64_t length, int nch, int64_t t0,
                                int tc, float (*buf)[kTile]) {
  alignas(64) float converted[kChunk];
  for (int ch = 0; ch < nch; ++ch) {
    const int64_t offset = row0 + ch * length + t0;
    const float* row = static_cast<const float*>(src) + offset;
    if (dtype != SSM_FLOAT32) {
      span_to_float(dtype, src, offset, converted, tc);
      row = converted;
    }
    for (int t = 0; t < tc; ++t) buf[t][ch] = row[t];
  }
}

SSM_INLINE void store_transposed(void* dst, int dtype, int64_t row0, int64_t length, int nch, int64_t t0, int tc,
                                 const float (*buf)[kTile]) {
  alignas(64) float converted[kChunk];
  for (int ch = 0; ch < nch; ++ch) {
    const int64_t offset = row0 + ch * length + t0;
    float* row = dtype == SSM_FLOAT32 ? static_cast<float*>(dst) + offset : converted;
    for (int t = 0; t < tc; ++t) row[t] = buf[t][ch];
    if (dtype != SSM_FLOAT32) span_from_float(dtype, converted, dst, offset, tc);
  }
}

// The sequences of one tile (b, channels c0 .. c0+nch-1 of group g) along the last axis: element (c, t) of
// u / delta / dy / y / du / d_delta at row0 + (c - c0) * L + t, B_t[n] / C_t[n] at Bg / Cg [n * L + t].
struct ChannelMajorSeq {
  const ScanArgs* s;
  int64_t row0;
  int nch;
  const float* Bg;
  const float* Cg;
  const void* dy = nullptr;
  void* y = nullptr;        // forward output
  void* du = nullptr;       // backward outputs
  void* d_delta = nullptr;
  float* dB = nullptr;      // [N][L] accumulators of this (b, g, channel range)
  float* dC = nullptr;

  int64_t length() const { return s->length; }

  SSM_INLINE void load(int64_t t0, int tc, bool with_dy, ChunkBuffers& cb) const {
    const int64_t L = s->length;
    load_transposed(s->delta, s->io_dtype, row0, L, nch, t0, tc, cb.z);
    load_transposed(s->u, s->io_dtype, row0, L, nch, t0, tc, cb.u);
    if (with_dy) load_transposed(dy, s->io_dtype, row0, L, nch, t0, tc, cb.dy);
    cb.bc_stride = L;
    cb.dbc_stride = L;
    for (int t = 0; t < tc; ++t) {
      cb.B[t] = Bg + t0 + t;
      cb.C[t] = Cg + t0 + t;
      if (with_dy) {
        cb.dB[t] = dB + t0 + t;
        cb.dC[t] = dC + t0 + t;
      }
    }
  }

  SSM_INLINE void store_output(int64_t t0, int tc, const float (*out)[kTile]) const {
    store_transposed(y, s->io_dtype, row0, s->length, nch, t0, tc, out);
  }

  SSM_INLINE void store_grads(int64_t t0, int tc, const ChunkBuffers& cb) const {
    store_transposed(du, s->io_dtype, row0, s->length, nch, t0, tc, cb.out);
    store_transposed(d_delta, s->io_dtype, row0, s->length, nch, t0, tc, cb.ddt);
  }
};

// The tile's sequences and constants (channels of tile `tile` of group g, batch b).
SSM_INLINE ChannelMajorSeq make_seq(const ScanArgs& s, int64_t b, int64_t g, int64_t tile, scan::TileParams& p) {
  const int64_t c0 = g * s.dim + tile * kTile;
  const int nch = static_cast<int>(std::min<int64_t>(kTile, s.dim - tile * kTile));
  scan::make_tile(s.A, s.Ds, s.bias, s.dstate, c0, nch, p);
  ChannelMajorSeq q;
  q.s = &s;
  q.row0 = (b * s.groups * s.dim + c0) * s.length;
  q.nch = nch;
  q.Bg = s.Bs + (b * s.groups + g) * s.dstate * s.length;
  q.Cg = s.Cs + (b * s.groups + g) * s.dstate * s.length;
  return q;
}

SSM_HOT void scan_forward_item(const ScanArgs& s, void* y, int64_t b, int64_t g, int64_t tile, ChunkBuffers& cb) {
  scan::TileParams p;
  ChannelMajorSeq q = make_seq(s, b, g, tile, p);
  q.y = y;
  scan::forward_tile(q, p, static_cast<int>(s.dstate), s.softplus, cb);
}

struct BackwardOut {
  void* du;       // io_dtype
  void* d_delta;  // io_dtype
  float* dB;      // [N][L] accumulator for this item's (b, g, channel range)
  float* dC;
  float* dA;      // per-batch partial [c][n] (already offset to batch b)
  float* dD;      // per-batch partial [c]
  float* dbias;   // per-batch partial [c]
};

SSM_HOT void scan_backward_tile(const ScanArgs& s, const void* dy, const BackwardOut& o, int64_t b, int64_t g,
                                int64_t tile, scan::BackwardScratch& w) {
  scan::TileParams p;
  ChannelMajorSeq q = make_seq(s, b, g, tile, p);
  q.dy = dy;
  q.du = o.du;
  q.d_delta = o.d_delta;
  q.dB = o.dB;
  q.dC = o.dC;
  const int64_t c0 = g * s.dim + tile * kTile;
  scan::backward_tile(q, p, static_cast<int>(s.dstate), s.softplus, w, o.dA + c0 * s.dstate, o.dD + c0,
                      o.dbias + c0);
}

// ------------------------------------------------------------------------------------------------
// Validation and dtype handling.

int validate_shape(const ssm_scan_shape* shape) {
  if (!dtype_supported(shape->dtype)) return SSM_ERR_BAD_DTYPE;
  if (shape->batch <= 0 || shape->groups <= 0 || shape->dim <= 0 || shape->length <= 0) return SSM_ERR_BAD_SIZE;
  if (shape->dstate < 1 || shape->dstate > kMaxState) return SSM_ERR_BAD_SIZE;
  int64_t n;
  if (!checked_product({shape->batch, shape->groups, shape->dim, shape->length}, &n)) return SSM_ERR_BAD_SIZE;
  if (!checked_product({shape->batch, shape->groups, shape->dstate, shape->length}, &n)) return SSM_ERR_BAD_SIZE;
  if (!checked_product({shape->groups, shape->dim, shape->dstate, shape->batch}, &n)) return SSM_ERR_BAD_SIZE;
  return SSM_OK;
}

struct ConvertedInputs {
  std::vector<float> A, Bs, Cs, Ds, bias;
};

ScanArgs make_args(const ssm_scan_shape* shape, const void* u, const void* delta, const void* A, const void* Bs,
                   const void* Cs, const void* Ds, const void* delta_bias, int threads, ConvertedInputs& cv) {
  const int64_t channels = shape->groups * shape->dim;
  const int64_t n_bc = shape->batch * shape->groups * shape->dstate * shape->length;
  const int dt = shape->dtype;
  using scan::as_float;
  ScanArgs s;
  s.u = u;
  s.delta = delta;
  s.io_dtype = dt;
  s.A = as_float(dt, A, channels * shape->dstate, threads, cv.A);
  s.Bs = as_float(dt, Bs, n_bc, threads, cv.Bs);
  s.Cs = as_float(dt, Cs, n_bc, threads, cv.Cs);
  s.Ds = as_float(dt, Ds, channels, threads, cv.Ds);
  s.bias = as_float(dt, delta_bias, channels, threads, cv.bias);
  s.batch = shape->batch;
  s.groups = shape->groups;
  s.dim = shape->dim;
  s.dstate = shape->dstate;
  s.length = shape->length;
  s.softplus = shape->delta_softplus != 0;
  return s;
}

int scan_forward(const ssm_scan_shape* shape, const void* u, const void* delta, const void* A, const void* Bs,
                 const void* Cs, const void* Ds, const void* delta_bias, void* y, int num_threads) {
  const int threads = resolve_threads(num_threads);
  ConvertedInputs cv;
  const ScanArgs s = make_args(shape, u, delta, A, Bs, Cs, Ds, delta_bias, threads, cv);
  const int64_t tiles = (s.dim + kTile - 1) / kTile;
  const int64_t items = s.batch * s.groups * tiles;
  const double work = static_cast<double>(kTile) * static_cast<double>(s.length) * (30.0 * s.dstate + 40.0);
  std::atomic<int> failed(0);
  parallel_for(items, threads, work, [&](int64_t i0, int64_t i1) {
    try {
      std::unique_ptr<ChunkBuffers> cb(new ChunkBuffers);
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t tile = i % tiles;
        const int64_t bg = i / tiles;
        scan_forward_item(s, y, bg / s.groups, bg % s.groups, tile, *cb);
      }
    } catch (...) {
      failed.store(1);
    }
  });
  if (failed.load()) return SSM_ERR_BAD_SIZE;
  return SSM_OK;
}

int scan_backward(const ssm_scan_shape* shape, const void* u, const void* delta, const void* A, const void* Bs,
                  const void* Cs, const void* Ds, const void* delta_bias, const void* dy, void* du,
                  void* d_delta, float* dA, float* dBs, float* dCs, float* dDs, float* d_delta_bias,
                  int num_threads) {
  const int threads = resolve_threads(num_threads);
  ConvertedInputs cv;
  const ScanArgs s = make_args(shape, u, delta, A, Bs, Cs, Ds, delta_bias, threads, cv);
  const int64_t channels = s.groups * s.dim;
  const int64_t slab = s.dstate * s.length;  // one (b, g) of dBs / dCs

  // Channel ranges per (b, g): chosen from the shape only (deterministic results), enough to give
  // ~64 items in all, never more than the tiles of a group.
  const int64_t tiles = (s.dim + kTile - 1) / kTile;
  const int64_t bg_count = s.batch * s.groups;
  const int64_t splits = scan::backward_splits(tiles, bg_count);
  std::vector<float> bc_partial;  // [bg][split][2][N*L] when splits > 1
  if (splits > 1) bc_partial.assign(static_cast<size_t>(bg_count * splits * 2 * slab), 0.0f);
  std::vector<float> per_batch(static_cast<size_t>(s.batch * channels * (s.dstate + 2)), 0.0f);
  float* pb_dA = per_batch.data();                               // [b][c][n]
  float* pb_dD = pb_dA + s.batch * channels * s.dstate;          // [b][c]
  float* pb_db = pb_dD + s.batch * channels;                     // [b][c]

  const int64_t items = bg_count * splits;
  const double work = static_cast<double>(s.dim) / splits * static_cast<double>(s.length) * (80.0 * s.dstate + 80.0);
  std::atomic<int> failed(0);
  parallel_for(items, threads, work, [&](int64_t i0, int64_t i1) {
    try {
      scan::BackwardScratch w;
      w.reserve(s.length, s.dstate);
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t bg = i / splits, sp = i % splits;
        const int64_t b = bg / s.groups, g = bg % s.groups;
        BackwardOut o;
        o.du = du;
        o.d_delta = d_delta;
        if (splits > 1) {
          o.dB = bc_partial.data() + (bg * splits + sp) * 2 * slab;
          o.dC = o.dB + slab;
        } else {
          o.dB = dBs + bg * slab;
          o.dC = dCs + bg * slab;
          std::memset(o.dB, 0, sizeof(float) * slab);
          std::memset(o.dC, 0, sizeof(float) * slab);
        }
        o.dA = pb_dA + b * channels * s.dstate;
        o.dD = pb_dD + b * channels;
        o.dbias = pb_db + b * channels;
        const int64_t tile0 = sp * tiles / splits, tile1 = (sp + 1) * tiles / splits;
        for (int64_t tile = tile0; tile < tile1; ++tile) scan_backward_tile(s, dy, o, b, g, tile, w);
      }
    } catch (...) {
      failed.store(1);
    }
  });
  if (failed.load()) return SSM_ERR_BAD_SIZE;

  if (splits > 1) {
    parallel_for(bg_count, threads, static_cast<double>(2 * slab * splits), [&](int64_t i0, int64_t i1) {
      for (int64_t bg = i0; bg < i1; ++bg) {
        float* dB = dBs + bg * slab;
        float* dC = dCs + bg * slab;
        const float* p0 = bc_partial.data() + bg * splits * 2 * slab;
        std::memcpy(dB, p0, sizeof(float) * slab);
        std::memcpy(dC, p0 + slab, sizeof(float) * slab);
        for (int64_t sp = 1; sp < splits; ++sp) {
          const float* pb = p0 + sp * 2 * slab;
          for (int64_t j = 0; j < slab; ++j) dB[j] += pb[j];
          for (int64_t j = 0; j < slab; ++j) dC[j] += pb[slab + j];
        }
      }
    });
  }
  // reduce the per-batch partials in batch order
  scan::reduce_batch_partials(s.batch, channels, s.dstate, pb_dA, pb_dD, pb_db, dA, dDs, d_delta_bias);
  return SSM_OK;
}

}  // namespace
}  // namespace cpu
}  // namespace ssm

extern "C" {

SSM_API int ssm_selective_scan_fwd_cpu(const ssm_scan_shape* shape, const void* u, const void* delta,
                                       const void* A, const void* Bs, const void* Cs, const void* Ds,
                                       const void* delta_bias, void* y, int num_threads) {
  if (!shape) return SSM_ERR_NULL_POINTER;
  const int st = ssm::cpu::validate_shape(shape);
  if (st != SSM_OK) return st;
  if (!u || !delta || !A || !Bs || !Cs || !y) return SSM_ERR_NULL_POINTER;
  try {
    return ssm::cpu::scan_forward(shape, u, delta, A, Bs, Cs, Ds, delta_bias, y, num_threads);
  } catch (...) {
    return SSM_ERR_BAD_SIZE;  // allocation failure
  }
}

// dDs / d_delta_bias: written when non-null (even if Ds / delta_bias were null: the gradient at zero),
// skipped when null.
SSM_API int ssm_selective_scan_bwd_cpu(const ssm_scan_shape* shape, const void* u, const void* delta,
                                       const void* A, const void* Bs, const void* Cs, const void* Ds,
                                       const void* delta_bias, const void* dy, void* du,
                                       void* d_delta, float* dA, float* dBs, float* dCs, float* dDs,
                                       float* d_delta_bias, int num_threads) {
  if (!shape) return SSM_ERR_NULL_POINTER;
  const int st = ssm::cpu::validate_shape(shape);
  if (st != SSM_OK) return st;
  if (!u || !delta || !A || !Bs || !Cs || !dy || !du || !d_delta || !dA || !dBs || !dCs)
    return SSM_ERR_NULL_POINTER;
  try {
    return ssm::cpu::scan_backward(shape, u, delta, A, Bs, Cs, Ds, delta_bias, dy, du, d_delta, dA, dBs, dCs,
                                   dDs, d_delta_bias, num_threads);
  } catch (...) {
    return SSM_ERR_BAD_SIZE;
  }
}

}  // extern "C"
