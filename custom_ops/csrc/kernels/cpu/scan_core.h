// The per-sequence recurrence of SelectiveScan on the CPU, shared by SelectiveScan (selective_scan_cpu.cpp,
// sequences along the last axis of (B, G*D, L) tensors) and SelectiveScan2D (selective_scan_2d_cpu.cpp,
// the four directions of SS2D read in place from channel-last (B, H, W, .) tensors).
//
// One call handles a tile of up to kTile channels that share a sequence of B_t / C_t. Time is walked in
// chunks of kChunk steps: a chunk of delta, u (and dy) is loaded into [t][channel] buffers, so that the
// recurrence, sequential in t, runs vectorised across the tile's channels (the state h is a [dstate][kTile]
// block). Everything is computed in float32.
//
// Where the sequence lives is the business of a `Seq` class, which the drivers below take as a template
// argument (inlined, so each caller's SSM_HOT clones get the vectorised loops):
//   int64_t length() const;
//   void load(int64_t t0, int tc, bool with_dy, ChunkBuffers& cb) const;
//       steps t0 .. t0+tc-1 into cb.z (delta, without the bias), cb.u, cb.dy (when with_dy), for the lanes
//       ch < nch; and where B_t, C_t are: cb.B[t], cb.C[t], cb.bc_stride (and, when with_dy, where their
//       gradients are accumulated: cb.dB[t], cb.dC[t], cb.dbc_stride).
//   void store_output(int64_t t0, int tc, const float (*out)[kTile]) const;    forward: y of those steps
//   void store_grads(int64_t t0, int tc, const ChunkBuffers& cb) const;        backward: cb.out (du), cb.ddt
// B and C are read in place through pointers (copying them into the chunk would cost ~5% at N = 16).
//
// Backward recomputes the states: a forward pass stores the state at every chunk start, then chunks are
// visited in reverse, each recomputing its per-step states from its checkpoint before the reverse (adjoint)
// sweep.
#ifndef SSMPOSE_SCAN_CORE_H
#define SSMPOSE_SCAN_CORE_H

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu_common.h"

namespace ssm {
namespace cpu {
namespace scan {

constexpr int kTile = 16;    // channels processed together (vector lanes)
constexpr int kChunk = 64;   // time steps per chunk
constexpr int kMaxState = 16;

// Per-tile constants: the tile's A (transposed to [n][ch]), D and delta_bias, zero in padding lanes.
struct TileParams {
  alignas(64) float A[kMaxState][kTile];
  alignas(64) float D[kTile];
  alignas(64) float bias[kTile];
  int nch;      // channels in the tile (<= kTile)
  bool has_D;   // without Ds there is no D term at all: adding 0 * u would turn an infinite u into NaN
};

// A: (channels, N), Ds / bias: (channels) or null, all float32; the tile is channels c0 .. c0+nch-1.
SSM_INLINE void make_tile(const float* A, const float* Ds, const float* bias, int64_t dstate, int64_t c0, int nch,
                          TileParams& p) {
  std::memset(p.A, 0, sizeof p.A);
  std::memset(p.D, 0, sizeof p.D);
  std::memset(p.bias, 0, sizeof p.bias);
  p.nch = nch;
  p.has_D = Ds != nullptr;
  for (int ch = 0; ch < nch; ++ch) {
    const int64_t c = c0 + ch;
    for (int64_t n = 0; n < dstate; ++n) p.A[n][ch] = A[c * dstate + n];
    p.D[ch] = Ds ? Ds[c] : 0.0f;
    p.bias[ch] = bias ? bias[c] : 0.0f;
  }
}

// Chunk buffers, [t][lane]. Padding lanes (ch >= nch) are zero and never written by loads.
struct ChunkBuffers {
  alignas(64) float z[kChunk][kTile];   // delta + bias
  alignas(64) float dt[kChunk][kTile];  // softplus(z) or z
  alignas(64) float u[kChunk][kTile];
  alignas(64) float out[kChunk][kTile];  // y (forward) / du (backward)
  alignas(64) float dy[kChunk][kTile];
  alignas(64) float ddt[kChunk][kTile];
  // B_t[n] at B[t][n * bc_stride] (C likewise); backward: dL/dB_t[n] (the sum over the tile's channels) is
  // added to dB[t][n * dbc_stride] (dC likewise).
  const float* B[kChunk];
  const float* C[kChunk];
  float* dB[kChunk];
  float* dC[kChunk];
  int64_t bc_stride;
  int64_t dbc_stride;
  void clear() { std::memset(this, 0, sizeof *this); }
};

// Loads a chunk through the Seq, adds the bias and computes dt.
template <class Seq>
SSM_INLINE void load_chunk(const Seq& seq, const TileParams& p, bool softplus, int64_t t0, int tc, bool with_dy,
                           ChunkBuffers& cb) {
  seq.load(t0, tc, with_dy, cb);
  for (int t = 0; t < tc; ++t) {
    for (int ch = 0; ch < kTile; ++ch) cb.z[t][ch] += p.bias[ch];
  }
  float* z = &cb.z[0][0];
  float* dt = &cb.dt[0][0];
  const int n = tc * kTile;
  if (softplus) {
    for (int i = 0; i < n; ++i) dt[i] = softplus_f(z[i]);
  } else {
    for (int i = 0; i < n; ++i) dt[i] = z[i];
  }
}

// Forward of one tile: h = exp(dt*A) * h + (dt*B)*u; y = sum_n C*h + D*u (the operator's order).
template <class Seq>
SSM_INLINE void forward_tile(const Seq& seq, const TileParams& p, int N, bool softplus, ChunkBuffers& cb) {
  const int64_t L = seq.length();
  alignas(64) float h[kMaxState][kTile];
  std::memset(h, 0, sizeof h);
  if (p.nch < kTile) cb.clear();  // padding lanes must read as zero; a full tile overwrites what it reads
  for (int64_t t0 = 0; t0 < L; t0 += kChunk) {
    const int tc = static_cast<int>(std::min<int64_t>(kChunk, L - t0));
    load_chunk(seq, p, softplus, t0, tc, false, cb);
    const int64_t bcs = cb.bc_stride;
    for (int t = 0; t < tc; ++t) {
      alignas(64) float acc[kTile] = {0};
      const float* Bt = cb.B[t];
      const float* Ct = cb.C[t];
      for (int n = 0; n < N; ++n) {
        const float bb = Bt[n * bcs];
        const float cc = Ct[n * bcs];
        SSM_SIMD
        for (int ch = 0; ch < kTile; ++ch) {
          const float dt = cb.dt[t][ch];
          const float a = exp_f(dt * p.A[n][ch]);
          const float hn = a * h[n][ch] + (dt * bb) * cb.u[t][ch];
          h[n][ch] = hn;
          acc[ch] += hn * cc;
        }
      }
      if (p.has_D) {
        for (int ch = 0; ch < kTile; ++ch) cb.out[t][ch] = acc[ch] + p.D[ch] * cb.u[t][ch];
      } else {
        for (int ch = 0; ch < kTile; ++ch) cb.out[t][ch] = acc[ch];
      }
    }
    seq.store_output(t0, tc, cb.out);
  }
}

// Scratch for the backward of one tile, reused across tiles of one thread.
struct BackwardScratch {
  std::vector<float> ckpt;    // [chunks][N][kTile]: state entering each chunk
  std::vector<float> states;  // [kChunk + 1][N][kTile]: states within the current chunk
  std::vector<float> decay;   // [kChunk][N][kTile]: exp(dt*A) within the current chunk
  ChunkBuffers cb;

  void reserve(int64_t length, int64_t dstate) {
    const int64_t chunks = (length + kChunk - 1) / kChunk;
    ckpt.assign(static_cast<size_t>(chunks * dstate * kTile), 0.0f);
    states.assign(static_cast<size_t>((kChunk + 1) * dstate * kTile), 0.0f);
    decay.assign(static_cast<size_t>(kChunk * dstate * kTile), 0.0f);
  }
};

// Backward of one tile. du, d_delta go out through seq.store_grads, dB / dC through cb.dB / cb.dC; the
// tile's dA (nch x N rows of a [c][n] array), dDs and d_delta_bias are written (not accumulated) to dA_rows,
// dD and dbias, which point at the tile's first channel.
template <class Seq>
SSM_INLINE void backward_tile(const Seq& seq, const TileParams& p, int N, bool softplus, BackwardScratch& w,
                              float* dA_rows, float* dD, float* dbias) {
  const int64_t L = seq.length();
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
      load_chunk(seq, p, softplus, t0, tc, false, cb);
      for (int t = 0; t < tc; ++t) {
        for (int n = 0; n < N; ++n) {
          const float bb = cb.B[t][n * cb.bc_stride];
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
    load_chunk(seq, p, softplus, t0, tc, true, cb);
    // recompute the chunk's states: H[t+1] = E[t] * H[t] + dt*B*u
    std::memcpy(H, &w.ckpt[k * NT], sizeof(float) * NT);
    for (int t = 0; t < tc; ++t) {
      for (int n = 0; n < N; ++n) {
        const float bb = cb.B[t][n * cb.bc_stride];
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
        const float bb = cb.B[t][n * cb.bc_stride];
        const float cc = cb.C[t][n * cb.bc_stride];
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
        cb.dC[t][n * cb.dbc_stride] += sdc;
        cb.dB[t][n * cb.dbc_stride] += sdb;
      }
      for (int ch = 0; ch < kTile; ++ch) {
        cb.out[t][ch] = du[ch] + dyt[ch] * p.D[ch];
        cb.ddt[t][ch] = ddt[ch];
      }
    }
    // through softplus, then the per-chunk sums of d_delta_bias and dDs
    alignas(64) float db_c[kTile] = {0};
    alignas(64) float dD_c[kTile] = {0};
    if (softplus) {
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
    seq.store_grads(t0, tc, cb);
  }
  for (int ch = 0; ch < p.nch; ++ch) {
    for (int n = 0; n < N; ++n) dA_rows[ch * N + n] = dA_tot[n][ch];
    dD[ch] = dD_tot[ch];
    dbias[ch] = db_tot[ch];
  }
}

// ------------------------------------------------------------------------------------------------
// Helpers of the drivers (not hot).

// Returns p viewed as float32: p itself for float32, else a converted copy held in `store`.
inline const float* as_float(int dtype, const void* p, int64_t n, int threads, std::vector<float>& store) {
  if (p == nullptr) return nullptr;
  if (dtype == SSM_FLOAT32) return static_cast<const float*>(p);
  store.resize(static_cast<size_t>(n));
  convert_to_float(dtype, p, store.data(), n, threads);
  return store.data();
}

// Channel ranges ("splits") per independent sequence set of the backward, from the shape only
// (deterministic results): enough to give ~64 work items in all, never more than the tiles of a set.
inline int64_t backward_splits(int64_t tiles, int64_t sets) {
  return std::max<int64_t>(1, std::min<int64_t>(tiles, (64 + sets - 1) / sets));
}

// Per-batch partials [b][c][n] / [b][c] reduced over b in batch order: dA = sum_b, and dDs / d_delta_bias
// when non-null.
inline void reduce_batch_partials(int64_t batch, int64_t channels, int64_t dstate, const float* pb_dA,
                                  const float* pb_dD, const float* pb_db, float* dA, float* dDs,
                                  float* d_delta_bias) {
  for (int64_t j = 0; j < channels * dstate; ++j) {
    float acc = 0.0f;
    for (int64_t b = 0; b < batch; ++b) acc += pb_dA[b * channels * dstate + j];
    dA[j] = acc;
  }
  for (int64_t c = 0; c < channels; ++c) {
    float accD = 0.0f, accb = 0.0f;
    for (int64_t b = 0; b < batch; ++b) {
      accD += pb_dD[b * channels + c];
      accb += pb_db[b * channels + c];
    }
    if (dDs) dDs[c] = accD;
    if (d_delta_bias) d_delta_bias[c] = accb;
  }
}

}  // namespace scan
}  // namespace cpu
}  // namespace ssm

#endif  // SSMPOSE_SCAN_CORE_H
