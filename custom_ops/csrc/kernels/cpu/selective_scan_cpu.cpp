// SelectiveScan (Mamba S6 recurrence with VMamba grouping) on the CPU: forward and backward.
//
// Work is split into items (batch b, group g, tile of up to kTile channels of that group). Inside an
// item, time is walked in chunks of kChunk steps: each chunk of u / delta / dy is loaded transposed into
// [t][channel] buffers so that the recurrence, sequential in t, runs vectorised across the tile's channels
// (the state h is a [dstate][kTile] block). Everything is computed in float32. The (B, G*D, L) tensors
// u, delta, dy, y, du, d_delta stay in their own dtype and are converted chunk by chunk as they are loaded
// and stored; the small ones (A, Bs, Cs, Ds, delta_bias) are converted to float32 copies first.
//
// Backward recomputes the states: a forward pass stores the state at every chunk start, then chunks are
// visited in reverse, each recomputing its per-step states from its checkpoint before the reverse
// (adjoint) sweep. Partial sums that several items contribute to are kept apart and reduced at the end in
// a fixed order, so results do not depend on the number of threads:
//   dBs / dCs (b, g, n, t): summed over the D channels of a group. Each (b, g) is split into S channel
//     ranges (S from the shape only); range s accumulates into its own [N][L] slab, reduced over s.
//   dA, dDs, d_delta_bias: per-batch partials [b][c], reduced over b.
#include <algorithm>
#include <atomic>
#include <memory>
#include <vector>

#include "cpu_common.h"

namespace ssm {
namespace cpu {
namespace {

constexpr int kTile = 16;    // channels processed together (vector lanes)
constexpr int kChunk = 64;   // time steps per chunk
constexpr int kMaxState = 16;

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

// Per-item constants: the tile's A (transposed to [n][ch]), D and delta_bias, zero in padding lanes.
struct TileParams {
  alignas(64) float A[kMaxState][kTile];
  alignas(64) float D[kTile];
  alignas(64) float bias[kTile];
  int64_t c0;       // first channel of the tile (global channel index)
  int nch;          // channels in the tile (<= kTile)
  int64_t row0;     // offset of (b, c0, t=0) in u / delta / y
  const float* Bg;  // Bs[b, g] (N x L)
  const float* Cg;
};

TileParams make_tile(const ScanArgs& s, int64_t b, int64_t g, int64_t tile) {
  TileParams p;
  std::memset(p.A, 0, sizeof p.A);
  std::memset(p.D, 0, sizeof p.D);
  std::memset(p.bias, 0, sizeof p.bias);
  p.c0 = g * s.dim + tile * kTile;
  p.nch = static_cast<int>(std::min<int64_t>(kTile, s.dim - tile * kTile));
  const int64_t channels = s.groups * s.dim;
  p.row0 = (b * channels + p.c0) * s.length;
  p.Bg = s.Bs + (b * s.groups + g) * s.dstate * s.length;
  p.Cg = s.Cs + (b * s.groups + g) * s.dstate * s.length;
  for (int ch = 0; ch < p.nch; ++ch) {
    const int64_t c = p.c0 + ch;
    for (int64_t n = 0; n < s.dstate; ++n) p.A[n][ch] = s.A[c * s.dstate + n];
    p.D[ch] = s.Ds ? s.Ds[c] : 0.0f;
    p.bias[ch] = s.bias ? s.bias[c] : 0.0f;
  }
  return p;
}

// Chunk buffers, [t][lane]. Padding lanes (ch >= nch) are zero and never written by loads.
struct ChunkBuffers {
  alignas(64) float z[kChunk][kTile];   // delta + bias
  alignas(64) float dt[kChunk][kTile];  // softplus(z) or z
  alignas(64) float u[kChunk][kTile];
  alignas(64) float out[kChunk][kTile];  // y (forward) / du (backward)
  alignas(64) float dy[kChunk][kTile];
  alignas(64) float ddt[kChunk][kTile];
  void clear() { std::memset(this, 0, sizeof *this); }
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

// Loads z = delta + bias, u (and dy when given) for a chunk and computes dt.
SSM_INLINE void load_chunk(const ScanArgs& s, const TileParams& p, const void* dy, int64_t t0, int tc,
                           ChunkBuffers& cb) {
  load_transposed(s.delta, s.io_dtype, p.row0, s.length, p.nch, t0, tc, cb.z);
  load_transposed(s.u, s.io_dtype, p.row0, s.length, p.nch, t0, tc, cb.u);
  if (dy) load_transposed(dy, s.io_dtype, p.row0, s.length, p.nch, t0, tc, cb.dy);
  for (int t = 0; t < tc; ++t) {
    for (int ch = 0; ch < kTile; ++ch) cb.z[t][ch] += p.bias[ch];
  }
  float* z = &cb.z[0][0];
  float* dt = &cb.dt[0][0];
  const int n = tc * kTile;
  if (s.softplus) {
    for (int i = 0; i < n; ++i) dt[i] = softplus_f(z[i]);
  } else {
    for (int i = 0; i < n; ++i) dt[i] = z[i];
  }
}

// Forward of one item: h = exp(dt*A) * h + (dt*B)*u; y = sum_n C*h + D*u (the operator's order).
SSM_HOT void scan_forward_item(const ScanArgs& s, void* y, int64_t b, int64_t g, int64_t tile, ChunkBuffers& cb) {
  const TileParams p = make_tile(s, b, g, tile);
  const int N = static_cast<int>(s.dstate);
  alignas(64) float h[kMaxState][kTile];
  std::memset(h, 0, sizeof h);
  if (p.nch < kTile) cb.clear();  // padding lanes must read as zero; a full tile overwrites what it reads
  for (int64_t t0 = 0; t0 < s.length; t0 += kChunk) {
    const int tc = static_cast<int>(std::min<int64_t>(kChunk, s.length - t0));
    load_chunk(s, p, nullptr, t0, tc, cb);
    for (int t = 0; t < tc; ++t) {
      alignas(64) float acc[kTile] = {0};
      for (int n = 0; n < N; ++n) {
        const float bb = p.Bg[n * s.length + t0 + t];
        const float cc = p.Cg[n * s.length + t0 + t];
        SSM_SIMD
        for (int ch = 0; ch < kTile; ++ch) {
          const float dt = cb.dt[t][ch];
          const float a = exp_f(dt * p.A[n][ch]);
          const float hn = a * h[n][ch] + (dt * bb) * cb.u[t][ch];
          h[n][ch] = hn;
          acc[ch] += hn * cc;
        }
      }
      // Without Ds there is no D term at all: adding 0 * u would turn an infinite u into NaN.
      if (s.Ds) {
        for (int ch = 0; ch < kTile; ++ch) cb.out[t][ch] = acc[ch] + p.D[ch] * cb.u[t][ch];
      } else {
        for (int ch = 0; ch < kTile; ++ch) cb.out[t][ch] = acc[ch];
      }
    }
    store_transposed(y, s.io_dtype, p.row0, s.length, p.nch, t0, tc, cb.out);
  }
}

// Scratch for the backward of one item, reused across items of one thread.
struct BackwardScratch {
  std::vector<float> ckpt;    // [chunks][N][kTile]: state entering each chunk
  std::vector<float> states;  // [kChunk + 1][N][kTile]: states within the current chunk
  std::vector<float> decay;   // [kChunk][N][kTile]: exp(dt*A) within the current chunk
  ChunkBuffers cb;
};

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
                        int64_t tile, BackwardScratch& w) {
  const TileParams p = make_tile(s, b, g, tile);
  const int N = static_cast<int>(s.dstate);
  const int64_t L = s.length;
  const int64_t chunks = (L + kChunk - 1) / kChunk;
  const int NT = N * kTile;
  ChunkBuffers& cb = w.cb;
  if (p.nch < kTile) cb.clear();  // padding lanes must read as zero; a full tile overwrites what it reads

  // Pass 1: forward, storing the state entering each chunk.
  {
    alignas(64) float h[kMaxState][kTile];
    std::memset(h, 0, sizeof h);
    for (int64_t k = 0; k < chunks; ++k) {
      const int64_t t0 = k * kChunk;
      const int tc = static_cast<int>(std::min<int64_t>(kChunk, L - t0));
      std::memcpy(&w.ckpt[k * NT], h, sizeof(float) * NT);
      load_chunk(s, p, nullptr, t0, tc, cb);
      for (int t = 0; t < tc; ++t) {
        for (int n = 0; n < N; ++n) {
          const float bb = p.Bg[n * L + t0 + t];
          SSM_SIMD
          for (int ch = 0; ch < kTile; ++ch) {
            const float dt = cb.dt[t][ch];
            h[n][ch] = exp_f(dt * p.A[n][ch]) * h[n][ch] + (dt * bb) * cb.u[t][ch];
          }
        }
      }
    }
  }

  // Pass 2: reverse sweep, chunk by chunk.
  alignas(64) float carry[kMaxState][kTile];  // exp(dt_{t+1} A) * dL/dh_{t+1}
  alignas(64) float dA_tot[kMaxState][kTile];
  alignas(64) float dD_tot[kTile], db_tot[kTile];
  std::memset(carry, 0, sizeof carry);
  std::memset(dA_tot, 0, sizeof dA_tot);
  std::memset(dD_tot, 0, sizeof dD_tot);
  std::memset(db_tot, 0, sizeof db_tot);
  float* H = w.states.data();
  float* E = w.decay.data();
  for (int64_t k = chunks - 1; k >= 0; --k) {
    const int64_t t0 = k * kChunk;
    const int tc = static_cast<int>(std::min<int64_t>(kChunk, L - t0));
    load_chunk(s, p, dy, t0, tc, cb);
    // recompute the chunk's states: H[t+1] = E[t] * H[t] + dt*B*u
    std::memcpy(H, &w.ckpt[k * NT], sizeof(float) * NT);
    for (int t = 0; t < tc; ++t) {
      for (int n = 0; n < N; ++n) {
        const float bb = p.Bg[n * L + t0 + t];
        const float* hp = H + t * NT + n * kTile;
        float* hn = H + (t + 1) * NT + n * kTile;
        float* e = E + t * NT + n * kTile;
        SSM_SIMD
        for (int ch = 0; ch < kTile; ++ch) {
          const float dt = cb.dt[t][ch];
          const float a = exp_f(dt * p.A[n][ch]);
          e[ch] = a;
          hn[ch] = a * hp[ch] + (dt * bb) * cb.u[t][ch];
        }
      }
    }
    alignas(64) float dA_c[kMaxState][kTile];
    std::memset(dA_c, 0, sizeof dA_c);
    for (int t = tc - 1; t >= 0; --t) {
      alignas(64) float du[kTile] = {0};
      alignas(64) float ddt[kTile] = {0};
      const float* dyt = cb.dy[t];
      const float* dtt = cb.dt[t];
      const float* ut = cb.u[t];
      for (int n = 0; n < N; ++n) {
        const float bb = p.Bg[n * L + t0 + t];
        const float cc = p.Cg[n * L + t0 + t];
        const float* hp = H + t * NT + n * kTile;
        const float* hc = H + (t + 1) * NT + n * kTile;
        const float* e = E + t * NT + n * kTile;
        const float* An = p.A[n];
        float* cr = carry[n];
        float* dAn = dA_c[n];
        float sdc = 0.0f, sdb = 0.0f;
        SSM_SIMD_REDUCE(sdc, sdb)
        for (int ch = 0; ch < kTile; ++ch) {
          const float gh = dyt[ch] * cc + cr[ch];  // dL/dh_t
          const float dt = dtt[ch];
          const float a = e[ch];
          sdc += dyt[ch] * hc[ch];
          sdb += gh * dt * ut[ch];
          du[ch] += gh * dt * bb;
          ddt[ch] += gh * (hp[ch] * An[ch] * a + bb * ut[ch]);
          dAn[ch] += gh * hp[ch] * dt * a;
          cr[ch] = a * gh;
        }
        o.dC[n * L + t0 + t] += sdc;
        o.dB[n * L + t0 + t] += sdb;
      }
      for (int ch = 0; ch < kTile; ++ch) {
        cb.out[t][ch] = du[ch] + dyt[ch] * p.D[ch];
        cb.ddt[t][ch] = ddt[ch];
      }
    }
    // through softplus, then the per-chunk sums of d_delta_bias and dDs
    alignas(64) float db_c[kTile] = {0};
    alignas(64) float dD_c[kTile] = {0};
    if (s.softplus) {
      float* gz = &cb.ddt[0][0];
      const float* z = &cb.z[0][0];
      for (int i = 0; i < tc * kTile; ++i) gz[i] *= softplus_grad_f(z[i]);
    }
    for (int t = 0; t < tc; ++t) {
      for (int ch = 0; ch < kTile; ++ch) {
        db_c[ch] += cb.ddt[t][ch];
        dD_c[ch] += cb.dy[t][ch] * cb.u[t][ch];
      }
    }
    for (int ch = 0; ch < kTile; ++ch) {
      db_tot[ch] += db_c[ch];
      dD_tot[ch] += dD_c[ch];
    }
    for (int n = 0; n < N; ++n) {
      for (int ch = 0; ch < kTile; ++ch) dA_tot[n][ch] += dA_c[n][ch];
    }
    store_transposed(o.du, s.io_dtype, p.row0, L, p.nch, t0, tc, cb.out);
    store_transposed(o.d_delta, s.io_dtype, p.row0, L, p.nch, t0, tc, cb.ddt);
  }
  for (int ch = 0; ch < p.nch; ++ch) {
    const int64_t c = p.c0 + ch;
    for (int n = 0; n < N; ++n) o.dA[c * N + n] = dA_tot[n][ch];
    o.dD[c] = dD_tot[ch];
    o.dbias[c] = db_tot[ch];
  }
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

// Returns p viewed as float32: p itself for float32, else a converted copy held in `store`.
const float* as_float(int dtype, const void* p, int64_t n, int threads, std::vector<float>& store) {
  if (p == nullptr) return nullptr;
  if (dtype == SSM_FLOAT32) return static_cast<const float*>(p);
  store.resize(static_cast<size_t>(n));
  convert_to_float(dtype, p, store.data(), n, threads);
  return store.data();
}

struct ConvertedInputs {
  std::vector<float> A, Bs, Cs, Ds, bias;
};

ScanArgs make_args(const ssm_scan_shape* shape, const void* u, const void* delta, const void* A, const void* Bs,
                   const void* Cs, const void* Ds, const void* delta_bias, int threads, ConvertedInputs& cv) {
  const int64_t channels = shape->groups * shape->dim;
  const int64_t n_bc = shape->batch * shape->groups * shape->dstate * shape->length;
  const int dt = shape->dtype;
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
  const int64_t splits = std::max<int64_t>(1, std::min<int64_t>(tiles, (64 + bg_count - 1) / bg_count));
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
      BackwardScratch w;
      const int64_t chunks = (s.length + kChunk - 1) / kChunk;
      w.ckpt.assign(static_cast<size_t>(chunks * s.dstate * kTile), 0.0f);
      w.states.assign(static_cast<size_t>((kChunk + 1) * s.dstate * kTile), 0.0f);
      w.decay.assign(static_cast<size_t>(kChunk * s.dstate * kTile), 0.0f);
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
  for (int64_t j = 0; j < channels * s.dstate; ++j) {
    float acc = 0.0f;
    for (int64_t b = 0; b < s.batch; ++b) acc += pb_dA[b * channels * s.dstate + j];
    dA[j] = acc;
  }
  for (int64_t c = 0; c < channels; ++c) {
    float accD = 0.0f, accb = 0.0f;
    for (int64_t b = 0; b < s.batch; ++b) {
      accD += pb_dD[b * channels + c];
      accb += pb_db[b * channels + c];
    }
    if (dDs) dDs[c] = accD;
    if (d_delta_bias) d_delta_bias[c] = accb;
  }
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
