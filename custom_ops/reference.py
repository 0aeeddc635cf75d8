"""Pure-PyTorch reference implementations of the two ssmpose operators.

These are the ground truth every kernel, export and runtime is compared with (docs/ops.md defines
the operators). They are differentiable, work in float64, and compute float16/bfloat16 inputs in
float32 before casting the result back, as the kernels do.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

SOFTPLUS_THRESHOLD = 20.0
DEFAULT_SCAN_CHUNK = 64


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _softplus(x: torch.Tensor) -> torch.Tensor:
    # Same threshold rule as the kernels: identity above 20.
    return torch.where(x <= SOFTPLUS_THRESHOLD, torch.log1p(torch.exp(x.clamp(max=SOFTPLUS_THRESHOLD))), x)


def _scan_inputs(u, delta, A, Bs, Cs, Ds, delta_bias, delta_softplus):
    """Common preparation: returns dt (B,G,D,L), A (G,D,N), Bs/Cs (B,G,1,N,L), u (B,G,D,L), Ds."""
    batch, channels, length = u.shape
    groups, dstate = Bs.shape[1], Bs.shape[2]
    dim = channels // groups
    ct = _compute_dtype(u)
    u_ = u.to(ct)
    dt = delta.to(ct)
    if delta_bias is not None:
        dt = dt + delta_bias.to(ct)[None, :, None]
    if delta_softplus:
        dt = _softplus(dt)
    shaped = dict(
        u=u_.view(batch, groups, dim, length),
        dt=dt.view(batch, groups, dim, length),
        A=A.to(ct).view(groups, dim, dstate),
        Bs=Bs.to(ct).unsqueeze(2),
        Cs=Cs.to(ct).unsqueeze(2),
    )
    return shaped, ct


def _scan_output(y_state, u, Ds, out_dtype, shape):
    if Ds is not None:
        y_state = y_state + Ds.to(y_state.dtype)[None, :, None] * u.reshape(shape)
    return y_state.to(out_dtype)


def selective_scan_reference(u, delta, A, Bs, Cs, Ds=None, delta_bias=None, delta_softplus=True):
    """Sequential formulation: one step per time index, exactly the recurrence of docs/ops.md."""
    s, _ = _scan_inputs(u, delta, A, Bs, Cs, Ds, delta_bias, delta_softplus)
    batch, groups, dim, length = s["u"].shape
    dstate = s["A"].shape[-1]
    h = s["u"].new_zeros(batch, groups, dim, dstate)
    ys = []
    for t in range(length):
        dt_t = s["dt"][..., t, None]  # (B,G,D,1)
        h = torch.exp(dt_t * s["A"]) * h + dt_t * s["Bs"][..., t] * s["u"][..., t, None]
        ys.append((h * s["Cs"][..., t]).sum(-1))
    y = torch.stack(ys, dim=-1).reshape(u.shape)
    return _scan_output(y, s["u"], Ds, u.dtype, u.shape)


def chunked_linear_recurrence(log_a: torch.Tensor, x: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """All states of h_t = exp(log_a_t) * h_{t-1} + x_t (h_{-1} = 0) along the last dim, without a loop over t.

    Within a chunk, h_t = sum_{s<=t} exp(S_t - S_s) x_s + exp(S_t) h_in with S the inclusive cumulative
    sum of log_a; the states entering the chunks obey the same recurrence one level up (chunk decays and
    chunk end-states), which is solved the same way until one chunk holds everything.
    """
    length = x.shape[-1]
    num_chunks = -(-length // chunk_size)
    pad = num_chunks * chunk_size - length
    if pad:  # padded steps: no decay, no input
        log_a, x = F.pad(log_a, (0, pad)), F.pad(x, (0, pad))
    shape = x.shape[:-1] + (num_chunks, chunk_size)
    log_a, x = log_a.reshape(shape), x.reshape(shape)
    cum = log_a.cumsum(-1)
    causal = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=x.device).tril()
    pair = (cum.unsqueeze(-1) - cum.unsqueeze(-2)).masked_fill(~causal, float("-inf"))
    h = (pair.exp() @ x.unsqueeze(-1)).squeeze(-1)
    if num_chunks > 1:
        after = chunked_linear_recurrence(cum[..., -1], h[..., -1], chunk_size)   # state after each chunk
        entering = F.pad(after[..., :-1], (1, 0))
        h = h + cum.exp() * entering.unsqueeze(-1)
    return h.reshape(shape[:-2] + (-1,))[..., :length]


def selective_scan_chunked(u, delta, A, Bs, Cs, Ds=None, delta_bias=None, delta_softplus=True,
                           chunk_size: int = DEFAULT_SCAN_CHUNK):
    """Chunked closed form of the same recurrence (the form the portable ONNX lowering uses)."""
    if chunk_size < 2:
        raise ValueError(f"chunk_size must be >= 2, got {chunk_size}")
    s, _ = _scan_inputs(u, delta, A, Bs, Cs, Ds, delta_bias, delta_softplus)
    log_decay = s["dt"].unsqueeze(-2) * s["A"].unsqueeze(-1)          # (B,G,D,N,L)
    inject = (s["dt"] * s["u"]).unsqueeze(-2) * s["Bs"]               # (B,G,D,N,L)
    h = chunked_linear_recurrence(log_decay, inject, chunk_size)
    y = (h * s["Cs"]).sum(-2)
    return _scan_output(y.reshape(u.shape), s["u"], Ds, u.dtype, u.shape)


SCAN_2D_DIRECTIONS = 4


def _in_direction_order(t: torch.Tensor, k: int) -> torch.Tensor:
    """(B, H, W, ...) -> (B, H*W, ...): the positions in the order direction k visits them (docs/ops.md:
    0 row-major, 1 column-major, 2 and 3 their reverses)."""
    b, h, w = t.shape[:3]
    seq = (t if k % 2 == 0 else t.transpose(1, 2)).reshape(b, h * w, *t.shape[3:])
    return seq.flip(1) if k >= 2 else seq


def _from_direction_order(seq: torch.Tensor, k: int, height: int, width: int) -> torch.Tensor:
    """Inverse of `_in_direction_order`: (B, H*W, ...) in direction k's order -> (B, H, W, ...)."""
    if k >= 2:
        seq = seq.flip(1)
    rest = seq.shape[2:]
    if k % 2 == 0:
        return seq.reshape(seq.shape[0], height, width, *rest)
    return seq.reshape(seq.shape[0], width, height, *rest).transpose(1, 2)


def selective_scan_2d_reference(x, delta, A, Bs, Cs, Ds=None, delta_bias=None, delta_softplus=True,
                                chunk_size=None):
    """SelectiveScan2D by its definition (docs/ops.md): cross-scan, SelectiveScan, cross-merge.

    x (B, H, W, D), delta (B, H, W, 4*D), A (4*D, N), Bs/Cs (B, H, W, 4, N), Ds/delta_bias (4*D) or None ->
    y (B, H, W, D). The four directions' sequences are laid out as SelectiveScan's groups (direction k in
    channels k*D .. k*D+D-1, B/C in group k), scanned by `selective_scan_reference` (sequential), or by
    `selective_scan_chunked` when a chunk_size is given, and mapped back to row-major and summed. The sum
    is taken in the compute dtype (float32 for float16/bfloat16 inputs) and cast once, as the kernels do.
    """
    batch, height, width, dim = x.shape
    k_dirs = SCAN_2D_DIRECTIONS
    ct = _compute_dtype(x)
    x_, delta_, A_, Bs_, Cs_ = (t.to(ct) for t in (x, delta, A, Bs, Cs))
    Ds_, bias_ = (None if t is None else t.to(ct) for t in (Ds, delta_bias))
    delta_ = delta_.reshape(batch, height, width, k_dirs, dim)
    u = torch.cat([_in_direction_order(x_, k) for k in range(k_dirs)], dim=2)                 # (B, L, K*D)
    dts = torch.cat([_in_direction_order(delta_[..., k, :], k) for k in range(k_dirs)], dim=2)
    bs = torch.stack([_in_direction_order(Bs_[..., k, :], k) for k in range(k_dirs)], dim=1)  # (B, K, L, N)
    cs = torch.stack([_in_direction_order(Cs_[..., k, :], k) for k in range(k_dirs)], dim=1)
    args = (u.transpose(1, 2), dts.transpose(1, 2), A_, bs.transpose(2, 3), cs.transpose(2, 3), Ds_, bias_,
            delta_softplus)
    if chunk_size is None:
        ys = selective_scan_reference(*args)
    else:
        ys = selective_scan_chunked(*args, chunk_size=chunk_size)
    ys = ys.transpose(1, 2).reshape(batch, height * width, k_dirs, dim)                          # (B, L, K, D)
    y = sum(_from_direction_order(ys[:, :, k], k, height, width) for k in range(k_dirs))
    return y.to(x.dtype)


def deform_sampling_points(kernel_h: int, kernel_w: int, remove_center: int):
    """Kernel (i, j) pairs in docs/ops.md order: x index i outer, y index j inner, centre skipped."""
    points = []
    for i in range(kernel_w):
        for j in range(kernel_h):
            if remove_center and i == kernel_w // 2 and j == kernel_h // 2:
                continue
            points.append((i, j))
    return points


def deform_output_size(height, width, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                       dilation_h, dilation_w):
    out_h = (height + 2 * pad_h - (dilation_h * (kernel_h - 1) + 1)) // stride_h + 1
    out_w = (width + 2 * pad_w - (dilation_w * (kernel_w - 1) + 1)) // stride_w + 1
    return out_h, out_w


def scan_2d_projected_inputs(x_proj, dt_projection):
    """delta (B, H, W, 4*D), Bs, Cs (B, H, W, 4, N) from SelectiveScan2D's folded dt projection (domain version 6).

    x_proj (B, H, W, 4, R + 2N) holds per position and direction the dt inputs, B and C; dt_projection (4, D, R).
    delta[..., k*D + c] = sum_r x_proj[..., k, r] * dt_projection[k, c, r], computed in the compute dtype and
    rounded to x_proj's dtype, as the MatMul node it replaces."""
    rank = dt_projection.shape[2]
    dstate = (x_proj.shape[-1] - rank) // 2
    ct = _compute_dtype(x_proj)
    dts = x_proj[..., :rank].to(ct)
    delta = torch.einsum("bhwkr,kdr->bhwkd", dts, dt_projection.to(ct)).to(x_proj.dtype)
    delta = delta.reshape(*x_proj.shape[:3], -1)
    return delta, x_proj[..., rank:rank + dstate], x_proj[..., rank + dstate:]


def selective_scan_2d_proj_reference(x, x_proj, dt_projection, A, Ds=None, delta_bias=None, delta_softplus=True):
    """SelectiveScan2D with the dt projection folded in: `scan_2d_projected_inputs`, then
    `selective_scan_2d_reference`."""
    delta, Bs, Cs = scan_2d_projected_inputs(x_proj, dt_projection)
    return selective_scan_2d_reference(x, delta, A, Bs, Cs, Ds, delta_bias, delta_softplus)


def deform_aggregate_reference(value, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                               dilation_h, dilation_w, group, group_channels, offset_scale,
                               remove_center, offset_bias=None, activation: str = "none"):
    """DCNv4 aggregation with explicit bilinear sampling (corners outside the image are zero).

    The epilogues of domain version 5 (docs/ops.md): `offset_bias` (P values) is added to offset_mask first
    and the sum rounded to its dtype, as an Add node; activation "silu" applies x * sigmoid(x) to the output
    rounded to value's dtype, computed in the compute dtype, then rounds again."""
    if activation not in ("none", "silu"):
        raise ValueError(f"DeformAggregate: activation must be 'none' or 'silu', got {activation!r}")
    if offset_bias is not None:
        ct = _compute_dtype(offset_mask)
        offset_mask = (offset_mask.to(ct) + offset_bias.to(ct)).to(offset_mask.dtype)
    out = _deform_aggregate(value, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                            dilation_w, group, group_channels, offset_scale, remove_center)
    if activation == "silu":
        z = out.to(_compute_dtype(out))
        out = (z * torch.sigmoid(z)).to(out.dtype)
    return out


def _deform_aggregate(value, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                      dilation_w, group, group_channels, offset_scale, remove_center):
    batch, height, width, channels = value.shape
    _, out_h, out_w, _ = offset_mask.shape
    points = deform_sampling_points(kernel_h, kernel_w, remove_center)
    k = len(points)
    ct = _compute_dtype(value)
    val = value.to(ct).reshape(batch, height * width, group, group_channels)
    om = offset_mask.to(ct)[..., : group * k * 3].reshape(batch, out_h, out_w, group, 3 * k)
    offsets = om[..., : 2 * k].reshape(batch, out_h, out_w, group, k, 2)
    mask = om[..., 2 * k:]

    half_w = (dilation_w * (kernel_w - 1)) >> 1
    half_h = (dilation_h * (kernel_h - 1)) >> 1
    base_x = torch.arange(out_w, dtype=ct, device=value.device) * stride_w - pad_w + half_w
    base_y = torch.arange(out_h, dtype=ct, device=value.device) * stride_h - pad_h + half_h
    tap_x = torch.tensor([i * dilation_w for i, _ in points], dtype=ct, device=value.device)
    tap_y = torch.tensor([j * dilation_h for _, j in points], dtype=ct, device=value.device)
    px = (base_x[None, :, None, None] - half_w * offset_scale
          + (tap_x + offsets[..., 0]) * offset_scale)                  # (B,Ho,Wo,G,K)
    py = (base_y[:, None, None, None] - half_h * offset_scale
          + (tap_y + offsets[..., 1]) * offset_scale)
    inside = (px > -1) & (py > -1) & (px < width) & (py < height)

    x0 = px.floor()
    y0 = py.floor()
    fx = px - x0
    fy = py - y0
    result = 0
    group_index = torch.arange(group, device=value.device).view(1, 1, 1, group, 1)
    for cy, cx, weight in ((y0, x0, (1 - fy) * (1 - fx)), (y0, x0 + 1, (1 - fy) * fx),
                           (y0 + 1, x0, fy * (1 - fx)), (y0 + 1, x0 + 1, fy * fx)):
        valid = inside & (cx >= 0) & (cx < width) & (cy >= 0) & (cy < height)  # False for a NaN location
        # Invalid corners read pixel 0 and are then dropped with `where`, not multiplied by 0: "contributes
        # nothing" holds for NaN/Inf masks and values there too (docs/ops.md), as in the kernels.
        flat = torch.where(valid, cy * width + cx, 0).long()
        # gather value[b, flat, g, :] for every (b, y, x, g, k)
        index = (flat * group + group_index).reshape(batch, -1)
        picked = val.reshape(batch, height * width * group, group_channels).gather(
            1, index.unsqueeze(-1).expand(-1, -1, group_channels))
        picked = picked.reshape(batch, out_h, out_w, group, k, group_channels)
        term = (weight * mask).unsqueeze(-1) * picked
        result = result + torch.where(valid.unsqueeze(-1), term, 0).sum(-2)
    return result.reshape(batch, out_h, out_w, group * group_channels).to(value.dtype)


def layer_norm_reference(x, weight, bias, epsilon: float = 1e-5):
    """LayerNorm over the last axis (docs/ops.md), statistics in float32 (float64 for float64 inputs)."""
    dtype = _compute_dtype(x)
    xc = x.to(dtype)
    mean = xc.mean(dim=-1, keepdim=True)
    var = (xc - mean).square().mean(dim=-1, keepdim=True)
    y = (xc - mean) / torch.sqrt(var + epsilon) * weight.to(dtype) + bias.to(dtype)
    return y.to(x.dtype)


def add_layer_norm_reference(x, residual, weight, bias, epsilon: float = 1e-5):
    """AddLayerNorm (docs/ops.md): returns (Y, S) with S = X + R rounded to X's type and Y its LayerNorm."""
    if residual.shape != x.shape:
        raise ValueError(f"AddLayerNorm: R has shape {tuple(residual.shape)}, X has {tuple(x.shape)}")
    dtype = _compute_dtype(x)
    total = (x.to(dtype) + residual.to(dtype)).to(x.dtype)
    return layer_norm_reference(total, weight, bias, epsilon), total


def multi_kernel_depthwise_conv_reference(x, weight, bias, kernel_sizes, group_channels, shuffle_groups: int = 1,
                                          activation: str = "none"):
    """MultiKernelDepthwiseConv (docs/ops.md): x (B, H, W, C) channel-last, weight (C, K, K), bias (C).
    Group g (consecutive channels) convolves with the central kernel_sizes[g] taps of its weights, zero
    "same" padding; then ShuffleNet's channel shuffle over `shuffle_groups` and the activation."""
    channels, kernel_max = weight.shape[0], weight.shape[-1]
    if len(kernel_sizes) != len(group_channels) or sum(group_channels) != channels:
        raise ValueError(f"MultiKernelDepthwiseConv: groups {list(group_channels)} with kernels "
                         f"{list(kernel_sizes)} do not cover {channels} channels")
    if channels % shuffle_groups:
        raise ValueError(f"MultiKernelDepthwiseConv: {channels} channels are not divisible into "
                         f"{shuffle_groups} shuffle groups")
    if activation not in ("none", "gelu"):
        raise ValueError(f"MultiKernelDepthwiseConv: activation must be 'none' or 'gelu', got {activation!r}")
    dtype = _compute_dtype(x)
    nchw = x.to(dtype).permute(0, 3, 1, 2)
    outputs, start = [], 0
    for k, c in zip(kernel_sizes, group_channels):
        lo = kernel_max // 2 - k // 2
        w = weight[start:start + c, lo:lo + k, lo:lo + k].to(dtype).unsqueeze(1)
        outputs.append(F.conv2d(nchw[:, start:start + c], w, bias[start:start + c].to(dtype), padding=k // 2,
                                groups=c))
        start += c
    z = torch.cat(outputs, dim=1)
    b, _, h, w_ = z.shape
    z = z.reshape(b, shuffle_groups, channels // shuffle_groups, h, w_).permute(0, 3, 4, 2, 1)
    z = z.reshape(b, h, w_, channels)
    if activation == "gelu":
        z = F.gelu(z)
    return z.to(x.dtype)


VSS_TAIL_PARAMS = ("out_norm_weight", "out_norm_bias", "out_proj", "norm_weight", "norm_bias", "fc1_weight",
                   "fc1_bias", "fc2_weight", "fc2_bias")


def vss_block_tail_reference(y, residual, out_norm_weight, out_norm_bias, out_proj, norm_weight, norm_bias,
                             fc1_weight, fc1_bias, fc2_weight, fc2_bias, epsilon: float = 1e-5):
    """VSSBlockTail (docs/ops.md): y (..., D) the scan's output, residual (..., C); returns Z (..., C) with
    x1 = residual + round(LN(y)) @ out_proj, Z = x1 + round(GELU(round(LN(x1)) @ fc1 + b1)) @ fc2 + b2.
    The operands of the three products are rounded to y's type, as the kernels feed them to tensor cores;
    everything else is float32 (float64 for float64 inputs)."""
    inner, channels = y.shape[-1], residual.shape[-1]
    hidden = fc1_weight.shape[-1]
    expected = {"out_norm_weight": (inner,), "out_norm_bias": (inner,), "out_proj": (inner, channels),
                "norm_weight": (channels,), "norm_bias": (channels,), "fc1_weight": (channels, hidden),
                "fc1_bias": (hidden,), "fc2_weight": (hidden, channels), "fc2_bias": (channels,)}
    given = dict(zip(VSS_TAIL_PARAMS, (out_norm_weight, out_norm_bias, out_proj, norm_weight, norm_bias,
                                       fc1_weight, fc1_bias, fc2_weight, fc2_bias)))
    for name, shape in expected.items():
        if tuple(given[name].shape) != shape:
            raise ValueError(f"VSSBlockTail: {name} has shape {tuple(given[name].shape)}, expected {shape}")
    if y.shape[:-1] != residual.shape[:-1]:
        raise ValueError(f"VSSBlockTail: Y {tuple(y.shape)} and R {tuple(residual.shape)} differ before the "
                         "last axis")
    dtype = _compute_dtype(y)
    p = {name: t.to(dtype) for name, t in given.items()}

    def operand(t):
        return t.to(y.dtype).to(dtype)

    a = operand(layer_norm_reference(y.to(dtype), p["out_norm_weight"], p["out_norm_bias"], epsilon))
    x1 = residual.to(dtype) + a @ p["out_proj"]
    b = operand(layer_norm_reference(x1, p["norm_weight"], p["norm_bias"], epsilon))
    g = operand(F.gelu(b @ p["fc1_weight"] + p["fc1_bias"]))
    return (x1 + g @ p["fc2_weight"] + p["fc2_bias"]).to(y.dtype)
