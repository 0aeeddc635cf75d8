"""Standard-ONNX lowerings of the ssmpose operators (the portable export form).

`selective_scan_subgraph`, `selective_scan_2d_subgraph` and `deform_aggregate_subgraph` emit, through an op
builder `op` (onnxscript's `opset18` inside torch.onnx, or `IRBuilder` below on an ONNX IR graph), a fixed
subgraph of standard ONNX operators (opset 18/19) that computes exactly the operator of docs/ops.md. There
is no loop over the sequence, no Loop/Scan node, and the subgraph has the same nodes whatever the input
size: sizes only enter as constants (shapes, pads, sampling grids, position tables). The batch dimension
stays symbolic (reshapes use -1).

- `lower_to_portable(model)` replaces every ssmpose node of an ONNX IR model by its lowering (this is
  how `ssmpose.export` makes the portable form from the traced custom form).
- `translation_table()` gives the same lowerings as torch.onnx translation functions.

Everything is computed in float32 (float64 for float64 inputs); float16/bfloat16 inputs are cast up
first and the result is cast back, so an fp16 export keeps the scan's softplus, cumulative sums,
exponentials and state products, and the deformable sampling, in float32.

SelectiveScan: a two-level chunked closed form
----------------------------------------------
With a_t = dt_t * A (log-decay) and x_t = dt_t * B_t * u_t, every (batch, channel, state) obeys
h_t = exp(a_t) h_{t-1} + x_t. The sequence is padded to a multiple of the chunk size T with a = 0, x = 0
(which leaves the states alone) and cut into nc = ceil(L / T) chunks; T is the configured chunk size, or L
when the sequence is shorter.

1. Within each chunk, the local states (starting from zero) and exp(S_t), S_t the inclusive sum of a
   inside the chunk, by one of three methods:
   - "matrix" (DESIGN.md section 3): CumSum gives S; the T x T matrix exp(S_t - S_s) has its
     upper triangle (s > t) replaced by exactly 0 (a Where over a constant T x T lower-triangular mask),
     and a MatMul applies it to x. Where replaces rather than multiplies, so a large (even infinite)
     discarded entry can never turn into NaN. (Not Trilu: ONNX Runtime's CUDA Trilu indexes with 32 bits
     and fails once B x rows x L x T passes 2^31, e.g. hrvmamba_small at batch 128.)
   - "doubling": log2(T) steps of a parallel prefix scan over pairs (decay product, state),
     (g_t, h_t) <- (g_t g_{t-k}, h_t + g_t h_{t-k}) for k = 1, 2, 4, ... < T, with identity elements
     (1, 0) shifted in at the chunk start. It touches each element about 8 log2(T) times instead of
     4 T times (T x T matrices), about 2.4x faster on CPU (docs/export.md).
   - "halving" (the default): before the doubling scan, steps 2i and 2i+1 merge into one step (log-decay
     a_2i + a_2i+1, input exp(a_2i+1) x_2i + x_2i+1), up to three times (as often as 2 divides T), so the
     doubling scan runs on chunks of T/8 over an eighth of the sequence; afterwards each merged-away even step
     gets its state from the state before it, exp(a_2i) h_2i-1 + x_2i. Each level costs about one doubling
     step on half the data, so this touches each element less than half as often as "doubling".
2. Across chunks, the state after chunk k is sum_{j<=k} exp(sum_{j<i<=k} tot_i) e_j, with tot_i the
   total log-decay of chunk i and e_j the local end-state of chunk j: an nc x nc matrix of the same kind
   as in 1. Its exponents are segment sums from a CumSum over the strictly-lower-triangular expanded
   chunk totals, not differences of a cumulative sum over the whole sequence, so they stay accurate
   however large that sum grows; the upper triangle is exp(0) = 1 before the mask sets it to 0.
3. h_t += exp(S_t) * (state after the previous chunk); y = sum_n C h + D u.

SelectiveScan2D: Gathers around a channel-last recurrence
---------------------------------------------------------
One Gather per input lays the four directions' sequences out side by side, (B, 4, L, D) with the channels
innermost (constant position tables: x at the positions direction k visits, delta / Bs / Cs at row p*4 + k
of their (B, L*4, .) views), in the input type, cast to float32 afterwards. The recurrence then runs along
L with the channels kept innermost (`rows_recurrence`: the same two levels and the same "doubling" and
"halving" methods, on rows of D*N contiguous values, with the decays exp(dt*A) as factors), and one Gather
(each direction's step at each position) and a ReduceSum over the directions map the outputs back to
row-major positions and sum them; the D term, the same x at every direction, is added once with the sum of
the four directions' D. "matrix" transposes the sequences to SelectiveScan's (B, 4*D, L) layout and uses
its lowering.

DeformAggregate through GridSample
----------------------------------
Each group is one GridSample batch entry: value (B*G, C, H, W), grid (B*G, K*Hout, Wout, 2) in the
normalised coordinates of align_corners=0, g = (2p + 1) / size - 1 for pixel coordinate p. Bilinear
sampling with zero padding counts corners outside the image as zero, and a location with p <= -1 or
p >= size then has only zero corners, as the operator requires. The samples are weighted by the masks
and summed over the K points.
"""
from __future__ import annotations

import numpy as np

from . import reference

SCAN_LOWERINGS = ("matrix", "doubling", "halving")
DEFAULT_SCAN_LOWERING = "halving"   # fastest on CPU and GPU (docs/benchmarks.md)
DEFAULT_CHUNKS = {"matrix": 32, "doubling": 64, "halving": 64}   # measured best on 2 CPU cores (docs/export.md)
HALVING_LEVELS = 3
DEFAULT_CHUNK = DEFAULT_CHUNKS[DEFAULT_SCAN_LOWERING]
SOFTPLUS_THRESHOLD = reference.SOFTPLUS_THRESHOLD
LAYER_NORM_EPSILON = 1e-5   # ssmpose::LayerNorm's default (export/schemas.py)
SCAN_2D_DIRECTIONS = reference.SCAN_2D_DIRECTIONS
DOMAIN = "ssmpose"
DEFORM_ATTRIBUTES = ("kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w", "dilation_h", "dilation_w",
                     "group", "group_channels", "offset_scale", "remove_center")
_DEFORM_DEFAULTS = dict(kernel_h=3, kernel_w=3, stride_h=1, stride_w=1, pad_h=1, pad_w=1, dilation_h=1,
                        dilation_w=1, group=1, group_channels=1, offset_scale=1.0, remove_center=0)


def check_scan_options(chunk_size, method: str) -> int:
    """Validated chunk size (None: the method's default)."""
    if method not in SCAN_LOWERINGS:
        raise ValueError(f"scan lowering must be one of {SCAN_LOWERINGS}, got {method!r}")
    chunk_size = DEFAULT_CHUNKS[method] if chunk_size is None else int(chunk_size)
    if chunk_size < 2:
        raise ValueError(f"chunk size must be >= 2, got {chunk_size}")
    return chunk_size


def chunk_count(length: int, chunk_size: int) -> int:
    return -(-length // chunk_size)


# ---------------------------------------------------------------------------------------------------------
# Helpers shared by both builders

def _ir():
    import onnx_ir
    return onnx_ir


def _static(value, axis: int, what: str) -> int:
    shape = value.shape
    dim = shape[axis] if shape is not None else None
    if not isinstance(dim, int):
        raise ValueError(f"portable ONNX lowering: {what} (axis {axis} of {value.name}) must be static, got {dim}")
    return dim


def _compute_type(value):
    ir = _ir()
    return ir.DataType.DOUBLE if value.dtype == ir.DataType.DOUBLE else ir.DataType.FLOAT


def _numpy_dtype(dtype):
    return np.float64 if dtype == _ir().DataType.DOUBLE else np.float32


def _to(op, value, dtype, current=None):
    """Cast `value` to `dtype` unless its dtype (`current`, or the value's recorded one) already is that."""
    current = value.dtype if current is None else current
    return value if current == dtype else op.Cast(value, to=int(dtype))


def _scalar(op, number, dtype):
    return op.Constant(value=_ir().tensor(np.array(number, dtype=_numpy_dtype(dtype)), dtype=dtype))


def _int(op, number):
    ir = _ir()
    return op.Constant(value=ir.tensor(np.array(number, dtype=np.int64), dtype=ir.DataType.INT64))


def _bool(op, value: bool):
    ir = _ir()
    return op.Constant(value=ir.tensor(np.array(value, dtype=bool), dtype=ir.DataType.BOOL))


def _array(op, array, dtype):
    return op.Constant(value=_ir().tensor(np.ascontiguousarray(array, dtype=_numpy_dtype(dtype)), dtype=dtype))


# ---------------------------------------------------------------------------------------------------------
# SelectiveScan

def _lower_triangle(op, x, size: int, dtype, strict: bool = False):
    """x (..., size, size) with the entries above the diagonal (and on it, if strict) replaced by 0."""
    ir = _ir()
    mask = np.tril(np.ones((size, size), dtype=bool), k=-1 if strict else 0)
    return op.Where(op.Constant(value=ir.tensor(mask, dtype=ir.DataType.BOOL)), x, _scalar(op, 0, dtype))


def _shift_in(op, x, k: int, n: int, axis: int, rank: int, fill):
    """x shifted by k along `axis` (length n) toward higher indices, `fill` shifted in at the start."""
    pads = [0] * (2 * rank)
    pads[axis] = k
    return op.Pad(op.Slice(x, [0], [n - k], [axis]), pads, fill)


def _pad_steps(op, x, view, axis: int, extra: int):
    """x viewed as the 4-D `view`, with `extra` zeros appended along `axis` (2 or 3). ONNX Runtime's CUDA Pad
    has a fast kernel for the last two axes of a 4-D tensor only (docs/benchmarks.md)."""
    pads = [0] * 8
    pads[4 + axis] = extra
    return op.Pad(op.Reshape(x, view), pads)


def _carry_across_chunks(op, h, growth, log_total, nc: int, T: int, dtype):
    """h (B,R,nc,T) local states, growth = exp(S_t) inside the chunk, log_total (B,R,nc,1) -> full states."""
    seg = _lower_triangle(op, log_total, nc, dtype, strict=True)                  # [k, j] = tot_k if k > j
    seg = op.CumSum(seg, _int(op, 2))                                              # [k, j] = sum_{j<i<=k} tot_i
    carry = _lower_triangle(op, op.Exp(seg), nc, dtype)                            # (B, R, nc, nc)
    after = op.MatMul(carry, op.Slice(h, [T - 1], [T], [3]))                       # state after chunk k
    entering = _shift_in(op, after, 1, nc, 2, 4, _scalar(op, 0, dtype))
    return op.Add(h, op.Mul(growth, entering))


def _doubling(op, log_a, x, T: int, dtype):
    """Hillis-Steele prefix scan inside chunks of (B, R, nc, T): (growth, local states from zero)."""
    growth, h = op.Exp(log_a), x
    one, zero = _scalar(op, 1, dtype), _scalar(op, 0, dtype)
    k = 1
    while k < T:
        prev_growth = _shift_in(op, growth, k, T, 3, 4, one)
        prev_h = _shift_in(op, h, k, T, 3, 4, zero)
        h = op.Add(h, op.Mul(growth, prev_h))
        growth = op.Mul(growth, prev_growth)
        k *= 2
    return growth, h


def _chunked(op, log_a, x, T: int, nc: int, rows: int, dtype, method: str):
    """States of the recurrence on (B, rows, nc*T) -> (B, rows, nc, T): within chunks, then across them."""
    log_a = op.Reshape(log_a, [-1, rows, nc, T])
    x = op.Reshape(x, [-1, rows, nc, T])
    if method == "matrix":
        cum = op.CumSum(log_a, _int(op, 3))                                        # S_t, (B, R, nc, T)
        pair = op.Sub(op.Unsqueeze(cum, [4]), op.Unsqueeze(cum, [3]))              # [t, s] = S_t - S_s
        decay = _lower_triangle(op, op.Exp(pair), T, dtype)                        # s > t: exactly 0
        h = op.Reshape(op.MatMul(decay, op.Unsqueeze(x, [4])), [-1, rows, nc, T])  # local states
        growth = op.Exp(cum)
        total = op.Slice(cum, [T - 1], [T], [3])
    else:
        growth, h = _doubling(op, log_a, x, T, dtype)
        # The chunk's total log-decay is the log of its last growth (the product of its decays), not a
        # ReduceSum over T: ONNX Runtime's CUDA ReduceSum over a short innermost axis is slow. An underflowed
        # product gives -inf, whose exp is the 0 the carry needs.
        total = op.Log(op.Slice(growth, [T - 1], [T], [3]))
    return _carry_across_chunks(op, h, growth, total, nc, T, dtype)


def halving_levels(chunk_size: int) -> int:
    """Pair-merging levels of the "halving" lowering: as many as 2 divides the chunk, at most HALVING_LEVELS."""
    levels = 0
    while levels < HALVING_LEVELS and chunk_size % (2 << levels) == 0:
        levels += 1
    return levels


def _halving(op, log_a, x, n: int, rows: int, levels: int, base, dtype):
    """States of the recurrence on (B, rows, n) by merging pairs of steps `levels` times, `base` on the rest.

    Steps 2i and 2i+1 merge into one step (log-decay a_2i + a_2i+1, input exp(a_2i+1) x_2i + x_2i+1) whose
    state is the state after 2i+1; the state after 2i is then exp(a_2i) * (state after 2i-1) + x_2i.
    """
    if levels == 0:
        return op.Reshape(base(log_a, x), [-1, rows, n])
    half = n // 2
    log_a, x = op.Reshape(log_a, [-1, rows, half, 2]), op.Reshape(x, [-1, rows, half, 2])
    a_even, a_odd = op.Slice(log_a, [0], [1], [3]), op.Slice(log_a, [1], [2], [3])      # (B, R, half, 1)
    x_even, x_odd = op.Slice(x, [0], [1], [3]), op.Slice(x, [1], [2], [3])
    merged_a = op.Reshape(op.Add(a_even, a_odd), [-1, rows, half])
    merged_x = op.Reshape(op.Add(op.Mul(op.Exp(a_odd), x_even), x_odd), [-1, rows, half])
    odd = op.Reshape(_halving(op, merged_a, merged_x, half, rows, levels - 1, base, dtype), [-1, rows, half, 1])
    if half > 1:
        before = _shift_in(op, odd, 1, half, 2, 4, _scalar(op, 0, dtype))
    else:  # the one even step has the zero initial state before it
        before = op.Where(_bool(op, False), odd, _scalar(op, 0, dtype))
    even = op.Add(op.Mul(op.Exp(a_even), before), x_even)
    return op.Reshape(op.Concat(even, odd, axis=3), [-1, rows, n])


def linear_recurrence(op, log_a, x, chunk_size: int, length: int, rows: int, dtype, method: str):
    """States of h_t = exp(log_a_t) h_{t-1} + x_t along the last axis of (B, rows, L) -> (B, rows, nc*T)."""
    if method not in SCAN_LOWERINGS:
        raise ValueError(f"scan lowering must be one of {SCAN_LOWERINGS}, got {method!r}")
    T = chunk_size
    nc = chunk_count(length, T)
    if nc * T > length:   # steps after the end (log-decay 0, input 0): later states only, sliced away by the caller
        log_a, x = (_pad_steps(op, t, [-1, rows, 1, length], 3, nc * T - length) for t in (log_a, x))
    if method != "halving":
        return op.Reshape(_chunked(op, log_a, x, T, nc, rows, dtype, method), [-1, rows, nc * T])
    levels = halving_levels(T)
    tb = T >> levels
    return _halving(op, log_a, x, nc * T, rows, levels,
                    lambda a, b: _chunked(op, a, b, tb, nc, rows, dtype, "doubling"), dtype)


def selective_scan_subgraph(op, u, delta, A, Bs, Cs, Ds=None, delta_bias=None, delta_softplus: int = 1,
                            chunk_size: int = None, method: str = DEFAULT_SCAN_LOWERING):
    """Emit SelectiveScan (inputs as in docs/ops.md) through `op`; returns y (type of u)."""
    chunk_size = check_scan_options(chunk_size, method)
    channels, length = _static(u, 1, "channels"), _static(u, 2, "sequence length")
    groups, dstate = _static(Bs, 1, "groups"), _static(Bs, 2, "state size")
    ct = _compute_type(u)
    out_type = u.dtype
    u, delta, A, Bs, Cs = (_to(op, t, ct) for t in (u, delta, A, Bs, Cs))
    Ds, delta_bias = (None if t is None else _to(op, t, ct) for t in (Ds, delta_bias))
    y = _scan_core(op, u, delta, A, Bs, Cs, Ds, delta_bias, delta_softplus, chunk_size, method, channels, length,
                   groups, dstate, ct)
    return _to(op, y, out_type, current=ct)


def _softplus(op, dt, ct):
    """The kernels' softplus: log(1 + exp(dt)) up to the threshold, dt above it. softplus(v) > v, so the Max
    gives dt above the threshold (where the Min keeps Exp from overflowing). Four element-wise nodes rather than
    ONNX's Softplus, which ONNX Runtime's CPU EP runs 2.5x slower (docs/benchmarks.md)."""
    limit = _scalar(op, SOFTPLUS_THRESHOLD, ct)
    return op.Max(op.Log(op.Add(op.Exp(op.Min(dt, limit)), _scalar(op, 1, ct))), dt)


def _scan_core(op, u, delta, A, Bs, Cs, Ds, delta_bias, delta_softplus: int, chunk_size: int, method: str,
               channels: int, length: int, groups: int, dstate: int, ct):
    """SelectiveScan on inputs already in the compute type `ct` (static sizes given); returns y in `ct`."""
    # A chunk longer than the sequence would only pad it: GLSMamba's per-pixel temporal scans (L = 5, one
    # sequence per pixel) padded to 32 made 6 GB decay matrices.
    chunk_size = min(chunk_size, length)
    dim = channels // groups
    dt = delta
    if delta_bias is not None:
        dt = op.Add(dt, op.Reshape(delta_bias, [channels, 1]))
    if delta_softplus:
        dt = _softplus(op, dt, ct)
    rows = channels * dstate
    log_a = op.Mul(op.Reshape(dt, [-1, groups, dim, 1, length]), op.Reshape(A, [groups, dim, dstate, 1]))
    x = op.Mul(op.Reshape(op.Mul(dt, u), [-1, groups, dim, 1, length]),
               op.Reshape(Bs, [-1, groups, 1, dstate, length]))
    h = linear_recurrence(op, op.Reshape(log_a, [-1, rows, length]), op.Reshape(x, [-1, rows, length]),
                          chunk_size, length, rows, ct, method)
    padded = chunk_count(length, chunk_size) * chunk_size
    h = op.Slice(op.Reshape(h, [-1, groups, dim, dstate, padded]), [0], [length], [4])
    y = op.Mul(h, op.Reshape(Cs, [-1, groups, 1, dstate, length]))
    # One state (HRVMamba's SS2D) needs no sum; ONNX Runtime's CUDA ReduceSum over a size-1 axis is slow.
    y = op.ReduceSum(y, [3], keepdims=0) if dstate > 1 else y
    y = op.Reshape(y, [-1, channels, length])
    if Ds is not None:
        y = op.Add(y, op.Mul(op.Reshape(Ds, [channels, 1]), u))
    return y


# ---------------------------------------------------------------------------------------------------------
# Linear recurrences along axis 1 of (M, L, R): SelectiveScan2D's channel-last layout
#
# The same two-level scheme as `linear_recurrence`, with the sequence axis outside the channels, so that
# every pair split, shift and concatenation moves whole rows of R contiguous values (ONNX Runtime's CUDA
# Split over a 2-wide innermost axis was a tenth of the portable form's GPU time), and with the decays
# exp(a) as factors rather than logs: one Exp for the whole sequence instead of one per merge level.

def _rows_doubling(op, decay, x, T: int, dtype):
    """Prefix scan inside chunks of (M, nc, T, R): (products of the decays, local states from zero)."""
    growth, h = decay, x
    if T > 1:
        one, zero = _scalar(op, 1, dtype), _scalar(op, 0, dtype)
    k = 1
    while k < T:
        h = op.Add(h, op.Mul(growth, _shift_in(op, h, k, T, 2, 4, zero)))
        growth = op.Mul(growth, _shift_in(op, growth, k, T, 2, 4, one))
        k *= 2
    return growth, h


def _rows_carry(op, h, growth, nc: int, T: int, R: int, dtype):
    """Local states h (M, nc, T, R) plus the state entering each chunk, through the nc x nc matrix of
    `_carry_across_chunks` (built on (M, R, nc) views of the chunk totals and end states, 1/T of the data)."""
    def by_rows(t):   # (M, nc, 1, R) -> (M, R, nc, 1)
        return op.Unsqueeze(op.Transpose(op.Reshape(t, [-1, nc, R]), perm=[0, 2, 1]), [3])
    # The log of the last growth (an underflowed product gives -inf, whose exp is the 0 the carry needs).
    total = by_rows(op.Log(op.Slice(growth, [T - 1], [T], [2])))
    seg = op.CumSum(_lower_triangle(op, total, nc, dtype, strict=True), _int(op, 2))
    carry = _lower_triangle(op, op.Exp(seg), nc, dtype)                            # (M, R, nc, nc)
    after = op.MatMul(carry, by_rows(op.Slice(h, [T - 1], [T], [2])))              # state after chunk k
    entering = _shift_in(op, after, 1, nc, 2, 4, _scalar(op, 0, dtype))
    entering = op.Reshape(op.Transpose(op.Reshape(entering, [-1, R, nc]), perm=[0, 2, 1]), [-1, nc, 1, R])
    return op.Add(h, op.Mul(growth, entering))


def _rows_chunked(op, decay, x, T: int, nc: int, R: int, dtype):
    decay, x = op.Reshape(decay, [-1, nc, T, R]), op.Reshape(x, [-1, nc, T, R])
    growth, h = _rows_doubling(op, decay, x, T, dtype)
    if nc > 1:
        h = _rows_carry(op, h, growth, nc, T, R, dtype)
    return op.Reshape(h, [-1, nc * T, R])


def _rows_halving(op, decay, x, n: int, R: int, levels: int, base, dtype):
    """As `_halving`, on (M, n, R) with the pairs as adjacent rows and the decays as factors."""
    if levels == 0:
        return base(decay, x)
    half = n // 2
    decay, x = op.Reshape(decay, [-1, half, 2, R]), op.Reshape(x, [-1, half, 2, R])
    d_even, d_odd = op.Slice(decay, [0], [1], [2]), op.Slice(decay, [1], [2], [2])   # (M, half, 1, R)
    x_even, x_odd = op.Slice(x, [0], [1], [2]), op.Slice(x, [1], [2], [2])
    merged_decay = op.Reshape(op.Mul(d_even, d_odd), [-1, half, R])
    merged_x = op.Reshape(op.Add(op.Mul(d_odd, x_even), x_odd), [-1, half, R])
    odd = _rows_halving(op, merged_decay, merged_x, half, R, levels - 1, base, dtype)
    # The state before each even step: the odd states shifted by one along axis 2 of (M, 1, half, R). ONNX
    # Runtime's CUDA Pad is fast along the last two axes of a 4-D tensor only; along axis 1 of (M, half, 1, R)
    # its generic kernel took a third of the portable form's GPU time (docs/benchmarks.md).
    rows_view, zero = op.Reshape(odd, [-1, 1, half, R]), _scalar(op, 0, dtype)
    if half > 1:
        before = _shift_in(op, rows_view, 1, half, 2, 4, zero)
    else:  # the one even step has the zero initial state before it
        before = op.Where(_bool(op, False), rows_view, zero)
    before, odd = op.Reshape(before, [-1, half, 1, R]), op.Reshape(odd, [-1, half, 1, R])
    even = op.Add(op.Mul(d_even, before), x_even)
    return op.Reshape(op.Concat(even, odd, axis=2), [-1, n, R])


def rows_recurrence(op, decay, x, chunk_size: int, length: int, R: int, dtype, method: str):
    """States of h_t = decay_t h_{t-1} + x_t along axis 1 of (M, L, R) -> (M, L, R); "doubling" or "halving"."""
    if method not in ("doubling", "halving"):
        raise ValueError(f"channel-last recurrence: scan lowering must be doubling or halving, got {method!r}")
    T = min(chunk_size, length)
    nc = chunk_count(length, T)
    if nc * T > length:   # zero decays and inputs after the end: later steps only, sliced away below
        decay, x = (_pad_steps(op, t, [-1, 1, length, R], 2, nc * T - length) for t in (decay, x))
    if method == "doubling":
        h = _rows_chunked(op, decay, x, T, nc, R, dtype)
    else:
        levels = halving_levels(T)
        tb = T >> levels
        h = _rows_halving(op, decay, x, nc * T, R, levels,
                          lambda d, b: _rows_chunked(op, d, b, tb, nc, R, dtype), dtype)
    return op.Slice(h, [0], [length], [1]) if nc * T > length else h


# ---------------------------------------------------------------------------------------------------------
# SelectiveScan2D

def direction_positions(height: int, width: int) -> np.ndarray:
    """(4, H*W) int64: entry [k, t] is the position h*W + w that direction k visits at step t (docs/ops.md)."""
    rows = np.arange(height * width, dtype=np.int64)
    cols = rows.reshape(height, width).T.reshape(-1)
    return np.stack([rows, cols, rows[::-1], cols[::-1]])


def selective_scan_2d_subgraph(op, x, delta, A, Bs, Cs, Ds=None, delta_bias=None, delta_softplus: int = 1,
                               chunk_size: int = None, method: str = DEFAULT_SCAN_LOWERING):
    """Emit SelectiveScan2D (docs/ops.md) through `op`; returns y (type of x).

    Its definition as standard ops: one Gather per input lays the four directions' sequences out side by
    side (constant position indices, so the node count does not depend on H and W), the recurrence runs
    along them, and one Gather plus a ReduceSum maps the directions back to row-major positions and sums
    them. "doubling" and "halving" keep the channels innermost throughout (`rows_recurrence`); "matrix"
    transposes to SelectiveScan's (B, channels, L) layout and uses its lowering. Everything in float32
    (float64 for float64 inputs), cast back once at the end.
    """
    chunk_size = check_scan_options(chunk_size, method)
    height, width, dim = (_static(x, axis, what) for axis, what in ((1, "height"), (2, "width"), (3, "channels")))
    directions, dstate = _static(Bs, 3, "directions"), _static(Bs, 4, "state size")
    if directions != SCAN_2D_DIRECTIONS:
        raise ValueError(f"portable ONNX lowering: SelectiveScan2D has {SCAN_2D_DIRECTIONS} directions, "
                         f"Bs.shape[3] is {directions}")
    length = height * width
    ct = _compute_type(x)
    out_type = x.dtype
    positions = direction_positions(height, width)                                   # [k, t] -> position
    direction = np.arange(directions, dtype=np.int64)[:, None]
    ir = _ir()

    def indices(array):
        return op.Constant(value=ir.tensor(np.ascontiguousarray(array, dtype=np.int64), dtype=ir.DataType.INT64))

    # (B, K, L, .) in every direction's order, gathered in the input type and then cast: [b, k, t] = row
    # positions[k, t]; for tensors with a direction axis (delta, Bs, Cs) the row of (position p, direction k)
    # is p*K + k.
    by_direction = indices(positions * directions + direction)
    x_seq = _to(op, op.Gather(op.Reshape(x, [-1, length, dim]), indices(positions), axis=1), ct, out_type)
    delta_seq, Bs_seq, Cs_seq = (
        _to(op, op.Gather(op.Reshape(t, [-1, length * directions, size]), by_direction, axis=1), ct, out_type)
        for t, size in ((delta, dim), (Bs, dstate), (Cs, dstate)))
    A, Ds, delta_bias = (None if t is None else _to(op, t, ct) for t in (A, Ds, delta_bias))
    if method == "matrix":
        y = _scan_2d_by_channels(op, x_seq, delta_seq, A, Bs_seq, Cs_seq, delta_bias, delta_softplus,
                                 chunk_size, length, directions, dim, dstate, ct)
    else:
        y = _scan_2d_channel_last(op, x_seq, delta_seq, A, Bs_seq, Cs_seq, delta_bias, delta_softplus,
                                  chunk_size, method, length, directions, dim, dstate, ct)

    # back to positions: [b, k, p] = y of direction k at the step that visits p, summed over k
    steps = np.argsort(positions, axis=1)                                             # [k, p] -> step
    y = op.Gather(op.Reshape(y, [-1, directions * length, dim]), indices(steps + direction * length), axis=1)
    y = op.ReduceSum(y, [1], keepdims=0)                                              # (B, L, D)
    if Ds is not None:   # every direction adds Ds * x at the same position
        x_rows = _to(op, op.Reshape(x, [-1, length, dim]), ct, out_type)
        y = op.Add(y, op.Mul(x_rows, op.ReduceSum(op.Reshape(Ds, [directions, dim]), [0], keepdims=0)))
    return _to(op, op.Reshape(y, [-1, height, width, dim]), out_type, current=ct)


def _scan_2d_by_channels(op, x_seq, delta_seq, A, Bs_seq, Cs_seq, delta_bias, delta_softplus: int,
                         chunk_size: int, length: int, directions: int, dim: int, dstate: int, ct):
    """(B, K, L, D) sequences -> (B, K, L, D) outputs without the D term, through SelectiveScan's (B, K*D, L)
    lowering."""
    channels = directions * dim
    u = op.Reshape(op.Transpose(x_seq, perm=[0, 1, 3, 2]), [-1, channels, length])
    dts = op.Reshape(op.Transpose(delta_seq, perm=[0, 1, 3, 2]), [-1, channels, length])
    y = _scan_core(op, u, dts, A, op.Transpose(Bs_seq, perm=[0, 1, 3, 2]), op.Transpose(Cs_seq, perm=[0, 1, 3, 2]),
                   None, delta_bias, delta_softplus, chunk_size, "matrix", channels, length, directions, dstate, ct)
    return op.Transpose(op.Reshape(y, [-1, directions, dim, length]), perm=[0, 1, 3, 2])


def _scan_2d_channel_last(op, x_seq, delta_seq, A, Bs_seq, Cs_seq, delta_bias, delta_softplus: int,
                          chunk_size: int, method: str, length: int, directions: int, dim: int, dstate: int, ct):
    """(B, K, L, D) sequences -> (B, K, L, D) outputs without the D term, channels innermost throughout."""
    dt = delta_seq
    if delta_bias is not None:
        dt = op.Add(dt, op.Reshape(delta_bias, [directions, 1, dim]))
    if delta_softplus:
        dt = _softplus(op, dt, ct)
    rows = dim * dstate
    if dstate == 1:
        decay = op.Exp(op.Mul(dt, op.Reshape(A, [directions, 1, dim])))
        inputs = op.Mul(op.Mul(dt, x_seq), Bs_seq)                                    # Bs_seq: (B, K, L, 1)
    else:
        decay = op.Exp(op.Mul(op.Unsqueeze(dt, [4]), op.Reshape(A, [directions, 1, dim, dstate])))
        inputs = op.Mul(op.Unsqueeze(op.Mul(dt, x_seq), [4]), op.Unsqueeze(Bs_seq, [3]))   # (B, K, L, D, N)
    h = rows_recurrence(op, op.Reshape(decay, [-1, length, rows]), op.Reshape(inputs, [-1, length, rows]),
                        chunk_size, length, rows, ct, method)
    if dstate == 1:
        return op.Mul(op.Reshape(h, [-1, directions, length, dim]), Cs_seq)
    h = op.Reshape(h, [-1, directions, length, dim, dstate])
    return op.ReduceSum(op.Mul(h, op.Unsqueeze(Cs_seq, [3])), [4], keepdims=0)


# ---------------------------------------------------------------------------------------------------------
# DeformAggregate

def _grid_offsets(out_size: int, in_size: int, stride: int, pad: int, dilation: int, kernel: int, scale: float,
                  taps) -> np.ndarray:
    """(out_size, K) normalised coordinate of every output position and tap at zero offset."""
    half = (dilation * (kernel - 1)) >> 1
    base = np.arange(out_size, dtype=np.float64) * stride - pad + half - half * scale
    pixel = base[:, None] + np.asarray(taps, dtype=np.float64)[None, :] * dilation * scale
    return (pixel * 2.0 + 1.0) / in_size - 1.0


def deform_aggregate_subgraph(op, value, offset_mask, kernel_h: int, kernel_w: int, stride_h: int, stride_w: int,
                              pad_h: int, pad_w: int, dilation_h: int, dilation_w: int, group: int,
                              group_channels: int, offset_scale: float, remove_center: int):
    """Emit DeformAggregate (docs/ops.md) through `op` with GridSample; returns the output (type of value)."""
    height, width = _static(value, 1, "height"), _static(value, 2, "width")
    out_h, out_w = _static(offset_mask, 1, "output height"), _static(offset_mask, 2, "output width")
    points = reference.deform_sampling_points(kernel_h, kernel_w, remove_center)
    k = len(points)
    ct = _compute_type(value)
    out_type = value.dtype
    value, offset_mask = _to(op, value, ct), _to(op, offset_mask, ct)

    om = op.Reshape(op.Slice(offset_mask, [0], [group * k * 3], [3]), [-1, out_h, out_w, group, 3 * k])
    offsets = op.Reshape(op.Slice(om, [0], [2 * k], [4]), [-1, out_h, out_w, group, k, 2])
    mask = op.Slice(om, [2 * k], [3 * k], [4])                                      # (B, Ho, Wo, G, K)

    base_x = np.zeros((1, 1, out_w, 1, k, 2))
    base_x[0, 0, :, 0, :, 0] = _grid_offsets(out_w, width, stride_w, pad_w, dilation_w, kernel_w, offset_scale,
                                             [i for i, _ in points])
    base_y = np.zeros((1, out_h, 1, 1, k, 2))
    base_y[0, :, 0, 0, :, 1] = _grid_offsets(out_h, height, stride_h, pad_h, dilation_h, kernel_h, offset_scale,
                                             [j for _, j in points])
    scale = np.array([2.0 * offset_scale / width, 2.0 * offset_scale / height])
    grid = op.Add(op.Add(op.Mul(offsets, _array(op, scale, ct)), _array(op, base_x, ct)), _array(op, base_y, ct))
    # The K points lie outside the output positions (B*G, K*Ho, Wo), so that the sum over them is a ReduceSum
    # over a middle axis: ONNX Runtime's CUDA ReduceSum over a short innermost axis is slow.
    grid = op.Reshape(op.Transpose(grid, perm=[0, 3, 4, 1, 2, 5]), [-1, k * out_h, out_w, 2])

    planes = op.Transpose(op.Reshape(value, [-1, height, width, group, group_channels]), perm=[0, 3, 4, 1, 2])
    planes = op.Reshape(planes, [-1, group_channels, height, width])               # (B*G, C, H, W)
    samples = op.GridSample(planes, grid, mode="bilinear", padding_mode="zeros", align_corners=0)
    samples = op.Reshape(samples, [-1, group, group_channels, k, out_h * out_w])
    weights = op.Reshape(op.Transpose(mask, perm=[0, 3, 4, 1, 2]), [-1, group, 1, k, out_h * out_w])
    out = op.ReduceSum(op.Mul(samples, weights), [3], keepdims=0)                   # (B, G, C, Ho*Wo)
    out = op.Reshape(op.Transpose(out, perm=[0, 3, 1, 2]), [-1, out_h, out_w, group * group_channels])
    return _to(op, out, out_type, current=ct)


def depthwise_conv_subgraph(op, x, weight, bias, kernel_max: int, kernel_sizes, group_channels,
                            shuffle_groups: int = 1, activation: str = "none"):
    """MultiKernelDepthwiseConv in standard ops, in X's type, as the NCHW graph it replaces: Transpose to
    NCHW, Split by group, one depthwise Conv per group (its central k x k slice of the weights), Concat,
    Transpose back to channel-last, the shuffle as Reshape (B, H, W, S, C/S) -> Transpose -> Reshape, and
    GELU in its erf form (opset 18 has no Gelu). `op` is an IRBuilder (the op has no torch translation)."""
    ir = _ir()
    nchw = op.Transpose(x, perm=[0, 3, 1, 2])
    parts = [nchw]
    if len(group_channels) > 1:
        parts = op.op_multi_out("Split", [nchw, list(group_channels)], {"axis": 1},
                                num_outputs=len(group_channels))
    convs, start = [], 0
    for part, k, c in zip(parts, kernel_sizes, group_channels):
        lo = kernel_max // 2 - k // 2
        w = op.Unsqueeze(op.Slice(weight, [start, lo, lo], [start + c, lo + k, lo + k], [0, 1, 2]), [1])
        b = op.Slice(bias, [start], [start + c], [0])
        convs.append(op.Conv(part, w, b, group=c, kernel_shape=[k, k], pads=[k // 2] * 4))
        start += c
    y = op.Transpose(convs[0] if len(convs) == 1 else op.Concat(*convs, axis=1), perm=[0, 2, 3, 1])
    if shuffle_groups > 1:
        per_group = sum(group_channels) // shuffle_groups
        y = op.Reshape(op.Transpose(op.Reshape(y, [0, 0, 0, shuffle_groups, per_group]), perm=[0, 1, 2, 4, 3]),
                       [0, 0, 0, -1])
    if activation == "gelu":
        numpy_type = ir.DataType(x.dtype).numpy()

        def constant(number):
            return op.Constant(value=ir.tensor(np.array(number, dtype=numpy_type), dtype=x.dtype))
        erf = op.Erf(op.Div(y, constant(np.sqrt(2.0))))
        y = op.Mul(y, op.Mul(op.Add(erf, constant(1.0)), constant(0.5)))
    return y


# ---------------------------------------------------------------------------------------------------------
# Builders and entry points

class IRBuilder:
    """`op.X(*inputs, **attributes)` recording nodes on an onnx_ir tape; int lists become INT64 constants."""

    def __init__(self):
        self.tape = _ir().tape.Tape()

    def _input(self, x):
        ir = _ir()
        if x is None or isinstance(x, ir.Value):
            return x
        if isinstance(x, (list, tuple)) and all(isinstance(v, int) for v in x):
            return self.Constant(value=ir.tensor(np.array(x, dtype=np.int64), dtype=ir.DataType.INT64))
        raise TypeError(f"IRBuilder: unsupported input {x!r}")

    def Constant(self, value):  # noqa: N802  (ONNX op name)
        return self.tape.op("Constant", [], {"value": value})

    def op_multi_out(self, op_type: str, inputs, attributes, num_outputs: int):
        return self.tape.op_multi_out(op_type, [self._input(x) for x in inputs], attributes,
                                      num_outputs=num_outputs)

    def __getattr__(self, op_type: str):
        if op_type.startswith("_"):
            raise AttributeError(op_type)

        def make(*inputs, **attributes):
            return self.tape.op(op_type, [self._input(x) for x in inputs], attributes or None)
        return make


def _attribute_values(node) -> dict:
    return {name: attr.value for name, attr in node.attributes.items()}


def _lower_node(node, chunk_size: int, method: str):
    builder = IRBuilder()
    attrs = _attribute_values(node)
    inputs = list(node.inputs) + [None] * 8
    if node.op_type == "SelectiveScan":
        out = selective_scan_subgraph(builder, *inputs[:7], delta_softplus=int(attrs.get("delta_softplus", 1)),
                                      chunk_size=chunk_size, method=method)
    elif node.op_type == "SelectiveScan2D":
        directions = int(attrs.get("directions", SCAN_2D_DIRECTIONS))
        if directions != SCAN_2D_DIRECTIONS:
            raise ValueError(f"{DOMAIN}::SelectiveScan2D: attribute directions must be {SCAN_2D_DIRECTIONS}, "
                             f"got {directions}")
        scan_inputs = inputs[:7]
        if inputs[7] is not None:   # domain version 6: the dt projection as the nodes it replaced
            scan_inputs[1], scan_inputs[3], scan_inputs[4] = _projected_scan_inputs(builder, node, inputs)
        out = selective_scan_2d_subgraph(builder, *scan_inputs, delta_softplus=int(attrs.get("delta_softplus", 1)),
                                         chunk_size=chunk_size, method=method)
    elif node.op_type == "DeformAggregate":
        out = _lower_deform_aggregate(builder, node, attrs, inputs)
    elif node.op_type == "LayerNorm":   # exactly ONNX's LayerNormalization over the last axis, float32 statistics
        out = builder.LayerNormalization(inputs[0], inputs[1], inputs[2], axis=-1,
                                         epsilon=float(attrs.get("epsilon", LAYER_NORM_EPSILON)), stash_type=1)
    elif node.op_type == "AddLayerNorm":   # Add, then the LayerNorm above: the same values bit for bit
        total = builder.Add(inputs[0], inputs[1])
        out = [builder.LayerNormalization(total, inputs[2], inputs[3], axis=-1,
                                          epsilon=float(attrs.get("epsilon", LAYER_NORM_EPSILON)), stash_type=1),
               total]
    elif node.op_type == "MultiKernelDepthwiseConv":
        out = _lower_depthwise_conv(builder, node, attrs, inputs)
    else:
        raise ValueError(f"no portable lowering for {DOMAIN}::{node.op_type}")
    return builder.tape.nodes, out if isinstance(out, list) else [out]


def _projected_scan_inputs(builder, node, inputs):
    """delta, Bs and Cs of a SelectiveScan2D with a dt_projection (domain version 6), as the nodes the fusion
    replaced: Split of x_proj (B, H, W, K, R + 2N) into the dt inputs, Bs and Cs, and MatMul of the dt inputs
    (B, H, W, K, 1, R) with dt_projection transposed (K, R, D), reshaped to (B, H, W, K*D)."""
    ir = _ir()
    x_proj, A, weight = inputs[1], inputs[2], inputs[7]
    where = f"{DOMAIN}::SelectiveScan2D {node.name!r}"
    if inputs[3] is not None or inputs[4] is not None:
        raise ValueError(f"{where}: with dt_projection, Bs and Cs must be omitted (they are read from x_proj)")
    shapes = [v.shape for v in (x_proj, A, weight)]
    if any(shape is None for shape in shapes) or [len(shape) for shape in shapes] != [5, 2, 3]:
        raise ValueError(f"{where}: the portable lowering needs the shapes of x_proj (B, H, W, K, R + 2N), A "
                         f"(K*D, N) and dt_projection (K, D, R), got {shapes}")
    directions, dim, rank = (_static(weight, axis, "dt_projection") for axis in range(3))
    dstate = _static(A, 1, "A")
    if _static(x_proj, 4, "x_proj") != rank + 2 * dstate:
        raise ValueError(f"{where}: x_proj's last dimension must be R + 2N = {rank + 2 * dstate}, got "
                         f"{x_proj.shape[4]}")
    dts, Bs, Cs = builder.op_multi_out("Split", [x_proj, [rank, dstate, dstate]], {"axis": -1}, 3)
    product = builder.MatMul(builder.Unsqueeze(dts, [-2]), builder.Transpose(weight, perm=[0, 2, 1]))
    delta = builder.Reshape(product, [0, 0, 0, -1])
    lead = list(x_proj.shape)[:4]
    delta.shape, delta.type = ir.Shape(lead[:3] + [directions * dim]), x_proj.type
    for value in (Bs, Cs):
        value.shape, value.type = ir.Shape(lead + [dstate]), x_proj.type
    return delta, Bs, Cs


def _lower_deform_aggregate(builder, node, attrs, inputs):
    """DeformAggregate with the epilogues of domain version 5 as the nodes they replaced: Add of the offset bias
    before it, Sigmoid and Mul (SiLU) after it."""
    from ..export.schemas import DEFORM_ACTIVATIONS
    values = {name: attrs.get(name, _DEFORM_DEFAULTS[name]) for name in DEFORM_ATTRIBUTES}
    activation = str(attrs.get("activation", "none"))
    if activation not in DEFORM_ACTIVATIONS:
        raise ValueError(f"{DOMAIN}::DeformAggregate {node.name!r}: attribute activation must be one of "
                         f"{', '.join(DEFORM_ACTIVATIONS)}, got {activation!r}")
    offset_mask = inputs[1]
    if inputs[2] is not None:
        offset_mask = builder.Add(inputs[1], inputs[2])
        offset_mask.shape, offset_mask.type = inputs[1].shape, inputs[1].type   # the lowering reads both
    out = deform_aggregate_subgraph(builder, inputs[0], offset_mask, **values)
    return builder.Mul(out, builder.Sigmoid(out)) if activation == "silu" else out


def _lower_depthwise_conv(builder, node, attrs, inputs):
    from ..export.schemas import depthwise_conv_attribute_error
    weight_shape = inputs[1].shape
    kernel_max = weight_shape[2] if weight_shape is not None and len(weight_shape) == 3 else None
    if not isinstance(kernel_max, int):
        raise ValueError(f"{DOMAIN}::MultiKernelDepthwiseConv {node.name!r}: the portable lowering needs the "
                         f"weight's shape (C, K, K), got {weight_shape}")
    values = dict(kernel_sizes=[int(k) for k in attrs.get("kernel_sizes", [])],
                  group_channels=[int(c) for c in attrs.get("group_channels", [])],
                  shuffle_groups=int(attrs.get("shuffle_groups", 1)), activation=str(attrs.get("activation", "none")))
    channels = weight_shape[0] if isinstance(weight_shape[0], int) else None
    problem = depthwise_conv_attribute_error(**values, channels=channels, kernel_max=kernel_max)
    if problem:
        raise ValueError(f"{DOMAIN}::MultiKernelDepthwiseConv {node.name!r}: {problem}")
    return depthwise_conv_subgraph(builder, inputs[0], inputs[1], inputs[2], kernel_max, **values)


def lower_to_portable(model, chunk_size: int = None, method: str = DEFAULT_SCAN_LOWERING) -> int:
    """Replace every ssmpose node of the onnx_ir Model `model` (main graph) by its lowering, in place.

    Returns the number of nodes replaced. The replaced nodes' output values keep their names, types and
    shapes, and the `ssmpose` opset import is dropped.
    """
    ir = _ir()
    chunk_size = check_scan_options(chunk_size, method)
    graph = model.graph
    count = 0
    for node in list(graph):
        if node.domain != DOMAIN:
            continue
        new_nodes, outs = _lower_node(node, chunk_size, method)
        olds = list(node.outputs)[:len(outs)]
        names = [old.name for old in olds]
        for out, old in zip(outs, olds):
            out.shape, out.type = old.shape, old.type
        ir.convenience.replace_nodes_and_values(graph, node, [node], new_nodes, olds, outs)
        for out, name in zip(outs, names):
            out.name = name
        count += 1
    if graph.opset_imports.get("", model.opset_imports.get("", 0)) >= 20:
        _rename_grid_sample_modes(graph)
    model.opset_imports.pop(DOMAIN, None)
    graph.opset_imports.pop(DOMAIN, None)
    return count


def _rename_grid_sample_modes(graph) -> None:
    """Opset 20 renamed GridSample's modes "bilinear" / "bicubic" to "linear" / "cubic" (same sampling); the
    lowerings write the opset-18 names, so a graph at opset 20 or later (a custom form) gets the new ones."""
    ir = _ir()
    renamed = {"bilinear": "linear", "bicubic": "cubic"}
    for node in graph:
        mode = node.attributes.get("mode")
        if node.op_type == "GridSample" and node.domain == "" and mode is not None and mode.value in renamed:
            node.attributes["mode"] = ir.AttrString("mode", renamed[mode.value])


def translation_table(chunk_size: int = None, method: str = DEFAULT_SCAN_LOWERING) -> dict:
    """The same lowerings as torch.onnx (dynamo) translation functions for the two torch ops."""
    import torch
    from onnxscript import opset18

    from . import torch_ops  # noqa: F401  (registers torch.ops.ssmpose.*)
    chunk_size = check_scan_options(chunk_size, method)

    def selective_scan(u, delta, A, Bs, Cs, Ds, delta_bias, delta_softplus: int):
        return selective_scan_subgraph(opset18, u, delta, A, Bs, Cs, Ds, delta_bias, int(delta_softplus),
                                       chunk_size=chunk_size, method=method)

    def selective_scan_2d(x, delta, A, Bs, Cs, Ds, delta_bias, delta_softplus: int):
        return selective_scan_2d_subgraph(opset18, x, delta, A, Bs, Cs, Ds, delta_bias, int(delta_softplus),
                                          chunk_size=chunk_size, method=method)

    def deform_aggregate(value, offset_mask, *attributes):
        return deform_aggregate_subgraph(opset18, value, offset_mask, *attributes)

    return {torch.ops.ssmpose.selective_scan.default: selective_scan,
            torch.ops.ssmpose.selective_scan_2d.default: selective_scan_2d,
            torch.ops.ssmpose.deform_aggregate.default: deform_aggregate}
