"""CPU kernel library (libssmpose_kernels.so) against the float64 PyTorch reference.

Tolerances (max abs error over the tensor, relative to the largest reference magnitude):
- float32 forward:   <= 1e-5 * max|ref| + 1e-6
- float32 backward:  <= 1e-4 * max|ref grad| + 1e-6   (reference: autograd of the float64 reference)
- float16 forward:   <= 1e-3 * max|ref|   (output rounding is <= 2^-11 = 4.9e-4 relative; float32 accumulation)
- bfloat16 forward:  <= 8e-3 * max|ref|   (output rounding is <= 2^-8 = 3.9e-3 relative)
The float16 / bfloat16 paths convert to float32, run the float32 kernel and round back, so they are also
checked to be bit-identical to the float32 kernel's output rounded by torch.

The library is looked up as in production (build/ of this checkout, or $SSMPOSE_KERNELS_DIR). Tests skip when
it is not built, unless SSMPOSE_REQUIRE_KERNELS=1 (CI), where its absence is a failure.
"""
from __future__ import annotations

import ctypes
import os

import pytest
import torch

from ssmpose.custom_ops import kernel_library as kl
from ssmpose.custom_ops import reference as ref

LIB = kl.cpu_library()
REASON = kl.unavailable_reason("cpu")
needs_lib = pytest.mark.skipif(LIB is None, reason=f"CPU kernel library not built: {REASON}")

SSM_ERR_NULL_POINTER, SSM_ERR_BAD_SIZE, SSM_ERR_BAD_DTYPE, SSM_ERR_UNSUPPORTED = 1, 2, 3, 4


def test_kernel_library_present():
    """Fails in CI (SSMPOSE_REQUIRE_KERNELS=1) when the library is missing; skips elsewhere."""
    if LIB is None:
        if os.environ.get("SSMPOSE_REQUIRE_KERNELS") == "1":
            pytest.fail(f"SSMPOSE_REQUIRE_KERNELS=1 but the CPU kernel library is unavailable: {REASON}")
        pytest.skip(f"CPU kernel library not built: {REASON}")
    assert LIB.ssm_abi_version() == kl.ABI_VERSION
    assert REASON is None


def max_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return (actual.double() - expected.double()).abs().max().item()


def assert_close(actual, expected, rel, atol=1e-6, what=""):
    err = max_err(actual, expected)
    scale = expected.double().abs().max().item()
    assert err <= rel * scale + atol, f"{what}: max abs err {err:.3e} > {rel:g} * {scale:.3e} + {atol:g}"


# ------------------------------------------------------------------------------------------------
# SelectiveScan

# (batch, groups, dim, dstate, length, softplus, with Ds, with delta_bias)
SCAN_CASES = [
    (1, 1, 1, 1, 1, True, True, True),      # everything 1
    (2, 3, 5, 1, 1, True, True, True),      # L = 1, G not a power of two
    (2, 3, 5, 4, 37, True, True, True),
    (1, 1, 1, 16, 70, True, True, True),    # D = 1, N = 16
    (2, 2, 17, 16, 65, True, False, True),  # D not a multiple of the 16-lane tile, L past one chunk
    (1, 5, 3, 2, 129, False, False, False),  # no softplus, no optional inputs
    (3, 2, 20, 8, 64, True, True, False),   # L exactly one chunk
    (1, 4, 64, 1, 150, True, True, True),   # HRVMamba-like (N = 1), shortened L
]


def scan_inputs(batch, groups, dim, dstate, length, with_ds, with_bias, seed=0, dtype=torch.float32,
                softplus=True):
    g = torch.Generator().manual_seed(seed)
    ch = groups * dim

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    u = rnd(batch, ch, length)
    delta = rnd(batch, ch, length, scale=1.5)
    flat = delta.view(-1)
    if not softplus:  # dt = delta must stay positive, or the recurrence grows without bound
        delta = delta.abs() * 0.3
    elif flat.numel() >= 4:  # both sides of the softplus threshold (20) and a very negative value
        flat[0], flat[1], flat[-1] = 25.0, -30.0, 19.5
    A = (-torch.rand(ch, dstate, generator=g) * 2.0 - 0.05).to(dtype)
    Bs = rnd(batch, groups, dstate, length)
    Cs = rnd(batch, groups, dstate, length)
    Ds = rnd(ch) if with_ds else None
    bias = rnd(ch, scale=0.5) if with_bias else None
    return u, delta, A, Bs, Cs, Ds, bias


def _f64(t):
    return None if t is None else t.double()


@needs_lib
@pytest.mark.parametrize("case", SCAN_CASES, ids=lambda c: "B{}G{}D{}N{}L{}".format(*c[:5]))
def test_selective_scan_forward_float32(case):
    b, g, d, n, l, softplus, with_ds, with_bias = case
    u, delta, A, Bs, Cs, Ds, bias = scan_inputs(b, g, d, n, l, with_ds, with_bias, softplus=softplus)
    y = kl.selective_scan_fwd(u, delta, A, Bs, Cs, Ds, bias, softplus)
    assert y.dtype == torch.float32 and y.shape == u.shape
    expected = ref.selective_scan_reference(*map(_f64, (u, delta, A, Bs, Cs, Ds, bias)), delta_softplus=softplus)
    assert_close(y, expected, 1e-5, what="y")


@needs_lib
@pytest.mark.parametrize("dtype, rel", [(torch.float16, 1e-3), (torch.bfloat16, 8e-3)])
@pytest.mark.parametrize("case", [SCAN_CASES[2], SCAN_CASES[4]], ids=["N4", "N16"])
def test_selective_scan_forward_half(case, dtype, rel):
    b, g, d, n, l, softplus, with_ds, with_bias = case
    inputs = scan_inputs(b, g, d, n, l, with_ds, with_bias, dtype=dtype, softplus=softplus)
    y = kl.selective_scan_fwd(*inputs, softplus)
    assert y.dtype == dtype
    expected = ref.selective_scan_reference(*map(_f64, inputs), delta_softplus=softplus)
    assert_close(y, expected, rel, what=f"y {dtype}")
    # same as the float32 kernel on the same values, rounded to nearest-even by torch
    y32 = kl.selective_scan_fwd(*[None if t is None else t.float() for t in inputs], softplus)
    assert torch.equal(y.view(torch.int16), y32.to(dtype).view(torch.int16))


@needs_lib
@pytest.mark.parametrize("case", SCAN_CASES, ids=lambda c: "B{}G{}D{}N{}L{}".format(*c[:5]))
def test_selective_scan_backward_float32(case):
    b, g, d, n, l, softplus, with_ds, with_bias = case
    if l > 100:  # keep the float64 autograd reference fast
        l = 100
    inputs = scan_inputs(b, g, d, n, l, with_ds, with_bias, seed=1, softplus=softplus)
    dy = torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(2))
    leaves = [None if t is None else t.double().requires_grad_(True) for t in inputs]
    y = ref.selective_scan_reference(*leaves, delta_softplus=softplus)
    present = [t for t in leaves if t is not None]
    grads = iter(torch.autograd.grad(y, present, dy.double()))
    expected = [None if t is None else next(grads) for t in leaves]

    got = kl.selective_scan_bwd(*inputs, softplus, dy)
    names = ["du", "d_delta", "dA", "dBs", "dCs", "dDs", "d_delta_bias"]
    for name, g_k, g_ref, inp in zip(names, got, expected, inputs):
        if inp is None:
            assert g_k is None, name
            continue
        assert g_k.dtype == torch.float32 and g_k.shape == inp.shape, name
        assert_close(g_k, g_ref, 1e-4, what=name)


@needs_lib
def test_selective_scan_backward_half_matches_float32():
    inputs = scan_inputs(2, 3, 5, 4, 37, True, True, seed=3, dtype=torch.float16)
    dy = torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(4)).half()
    got = kl.selective_scan_bwd(*inputs, True, dy)
    ref32 = kl.selective_scan_bwd(*[t.float() for t in inputs], True, dy.float())
    for a, b in zip(got, ref32):
        assert a.dtype == torch.float16
        assert torch.equal(a.view(torch.int16), b.half().view(torch.int16))


@needs_lib
def test_selective_scan_thread_count_does_not_change_results():
    inputs = scan_inputs(2, 3, 40, 3, 150, True, True, seed=5)
    dy = torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(6))
    results = []
    for threads in (1, 2, 3):
        torch_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            results.append((kl.selective_scan_fwd(*inputs, True), *kl.selective_scan_bwd(*inputs, True, dy)))
        finally:
            torch.set_num_threads(torch_threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------
# DeformAggregate

# (batch, H, W, G, C, kh, kw, sh, sw, ph, pw, dh, dw, offset_scale, remove_center, extra P columns, offset scale)
DEFORM_CASES = [
    (2, 9, 7, 3, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1.0, 0, 7, 2.0),     # DCNv4 default, G = 3, padded P
    (1, 8, 10, 2, 5, 3, 3, 2, 2, 0, 0, 2, 2, 0.5, 1, 0, 2.0),    # remove_center, stride/dilation 2, P exact
    (1, 7, 9, 1, 1, 5, 3, 1, 2, 2, 1, 1, 2, 2.0, 0, 3, 1.0),     # C = 1, non-square everything
    (2, 5, 6, 2, 4, 1, 1, 1, 1, 0, 0, 1, 1, 1.0, 0, 2, 1.5),     # 1x1 kernel
    (1, 6, 5, 2, 6, 3, 3, 1, 1, 1, 1, 1, 1, 1.0, 0, 2, 8.0),     # large offsets: many samples outside
    (1, 16, 12, 2, 32, 3, 3, 1, 1, 1, 1, 1, 1, 1.0, 0, 2, 1.0),  # HRVMamba-like, smaller image
]


def deform_inputs(case, seed=0, dtype=torch.float32):
    b, h, w, g, c, kh, kw, sh, sw, ph, pw, dh, dw, scale, rc, extra, offmag = case
    k = kh * kw - rc
    out_h, out_w = ref.deform_output_size(h, w, kh, kw, sh, sw, ph, pw, dh, dw)
    gen = torch.Generator().manual_seed(seed)
    value = torch.randn(b, h, w, g * c, generator=gen).to(dtype)
    om = torch.randn(b, out_h, out_w, g * k * 3 + extra, generator=gen)
    om = om.view(b, out_h, out_w, -1)
    per_group = om[..., : g * k * 3].view(b, out_h, out_w, g, 3 * k)
    per_group[..., : 2 * k] *= offmag  # offsets; masks stay N(0, 1): negative ones included
    attrs = (kh, kw, sh, sw, ph, pw, dh, dw, g, c, scale, rc)
    return value, om.to(dtype), attrs


def deform_id(case):
    return "B{}H{}W{}G{}C{}k{}x{}s{}{}rc{}".format(*case[:7], case[7], case[8], case[14])


@needs_lib
@pytest.mark.parametrize("case", DEFORM_CASES, ids=deform_id)
def test_deform_aggregate_forward_float32(case):
    value, om, attrs = deform_inputs(case)
    out = kl.deform_aggregate_fwd(value, om, *attrs)
    expected = ref.deform_aggregate_reference(value.double(), om.double(), *attrs)
    assert out.shape == expected.shape and out.dtype == torch.float32
    assert_close(out, expected, 1e-5, what="out")


@needs_lib
@pytest.mark.parametrize("dtype, rel", [(torch.float16, 1e-3), (torch.bfloat16, 8e-3)])
def test_deform_aggregate_forward_half(dtype, rel):
    value, om, attrs = deform_inputs(DEFORM_CASES[0], seed=3, dtype=dtype)
    out = kl.deform_aggregate_fwd(value, om, *attrs)
    assert out.dtype == dtype
    expected = ref.deform_aggregate_reference(value.double(), om.double(), *attrs)
    assert_close(out, expected, rel, what=f"out {dtype}")
    out32 = kl.deform_aggregate_fwd(value.float(), om.float(), *attrs)
    assert torch.equal(out.view(torch.int16), out32.to(dtype).view(torch.int16))


@needs_lib
@pytest.mark.parametrize("case", DEFORM_CASES, ids=deform_id)
def test_deform_aggregate_backward_float32(case):
    value, om, attrs = deform_inputs(case, seed=1)
    v = value.double().requires_grad_(True)
    o = om.double().requires_grad_(True)
    out = ref.deform_aggregate_reference(v, o, *attrs)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    g_value, g_om = torch.autograd.grad(out, [v, o], grad_out.double())
    k_value, k_om = kl.deform_aggregate_bwd(value, om, *attrs, grad_out)
    assert k_value.shape == value.shape and k_om.shape == om.shape
    assert_close(k_value, g_value, 1e-4, what="grad_value")
    assert_close(k_om, g_om, 1e-4, what="grad_offset_mask")
    used = attrs[8] * (attrs[0] * attrs[1] - attrs[11]) * 3
    assert torch.all(k_om[..., used:] == 0)  # padding columns


@needs_lib
def test_deform_aggregate_thread_count_does_not_change_results():
    value, om, attrs = deform_inputs(DEFORM_CASES[0], seed=4)
    grad_out = torch.randn(kl.deform_aggregate_fwd(value, om, *attrs).shape)
    results = []
    for threads in (1, 2, 3):
        torch_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            results.append((kl.deform_aggregate_fwd(value, om, *attrs),
                            *kl.deform_aggregate_bwd(value, om, *attrs, grad_out)))
        finally:
            torch.set_num_threads(torch_threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


@needs_lib
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_conversions_are_exact(dtype):
    """A 1x1 DeformAggregate with zero offsets computes out = mask * value exactly (one float32 product
    of two 16-bit numbers), so the output checks the kernels' float16/bfloat16 -> float32 -> 16-bit
    conversion against torch's round-to-nearest-even over every finite input bit pattern, including
    subnormals, overflow to inf and underflow to zero."""
    bits = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
    values = bits.view(dtype)
    values = values[torch.isfinite(values)]
    n = values.numel()
    mask = torch.randn(n, generator=torch.Generator().manual_seed(7)).to(dtype)
    mask = torch.where(torch.arange(n) % 3 == 0, torch.ones_like(mask), mask)  # identity on a third
    value = values.view(1, 1, n, 1)
    om = torch.stack([torch.zeros_like(mask), torch.zeros_like(mask), mask], dim=-1).view(1, 1, n, 3)
    out = kl.deform_aggregate_fwd(value, om, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1.0, 0)
    # + 0.0: the kernel accumulates from +0, so an exact -0 product comes out as +0
    expected = (value.float() * mask.float().view(1, 1, n, 1) + 0.0).to(dtype)
    assert torch.equal(out.view(torch.int16), expected.view(torch.int16))


# ------------------------------------------------------------------------------------------------
# Random sweeps: many shapes and attribute combinations, forward and backward together


def _random_scan_case(seed):
    r = torch.Generator().manual_seed(1000 + seed)

    def pick(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=r))

    n = [1, 2, 3, 5, 8, 13, 16][pick(0, 6)]
    return (pick(1, 3), pick(1, 5), pick(1, 40), n, pick(1, 90), pick(0, 3) > 0, pick(0, 1) == 1, pick(0, 1) == 1)


@needs_lib
@pytest.mark.parametrize("seed", range(12))
def test_selective_scan_random_shapes(seed):
    b, g, d, n, l, softplus, with_ds, with_bias = _random_scan_case(seed)
    inputs = scan_inputs(b, g, d, n, l, with_ds, with_bias, seed=seed, softplus=softplus)
    leaves = [None if t is None else t.double().requires_grad_(True) for t in inputs]
    y_ref = ref.selective_scan_reference(*leaves, delta_softplus=softplus)
    assert_close(kl.selective_scan_fwd(*inputs, softplus), y_ref, 1e-5, what=f"y {b, g, d, n, l}")
    dy = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(seed))
    present = [t for t in leaves if t is not None]
    grads = iter(torch.autograd.grad(y_ref, present, dy.double()))
    for name, got, inp in zip(["du", "d_delta", "dA", "dBs", "dCs", "dDs", "d_delta_bias"],
                              kl.selective_scan_bwd(*inputs, softplus, dy), inputs):
        if inp is not None:
            assert_close(got, next(grads), 1e-4, what=f"{name} {b, g, d, n, l}")


def _random_deform_case(seed):
    r = torch.Generator().manual_seed(2000 + seed)

    def pick(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=r))

    kh, kw = pick(1, 4), pick(1, 4)
    rc = pick(0, 1) if kh * kw > 1 else 0
    dh, dw = pick(1, 2), pick(1, 2)
    ph, pw = pick(0, 2), pick(0, 2)
    h = max(pick(2, 11), dh * (kh - 1) + 1 - 2 * ph)
    w = max(pick(2, 11), dw * (kw - 1) + 1 - 2 * pw)
    scale = [0.5, 1.0, 1.5, 2.0][pick(0, 3)]
    return (pick(1, 2), h, w, pick(1, 5), pick(1, 20), kh, kw, pick(1, 2), pick(1, 2), ph, pw, dh, dw, scale, rc,
            pick(0, 9), [0.5, 2.0, 6.0][pick(0, 2)])


@needs_lib
@pytest.mark.parametrize("seed", range(16))
def test_deform_aggregate_random_shapes(seed):
    case = _random_deform_case(seed)
    value, om, attrs = deform_inputs(case, seed=seed)
    v = value.double().requires_grad_(True)
    o = om.double().requires_grad_(True)
    out_ref = ref.deform_aggregate_reference(v, o, *attrs)
    assert_close(kl.deform_aggregate_fwd(value, om, *attrs), out_ref, 1e-5, what=f"out {case}")
    grad_out = torch.randn(out_ref.shape, generator=torch.Generator().manual_seed(seed))
    g_value, g_om = torch.autograd.grad(out_ref, [v, o], grad_out.double())
    k_value, k_om = kl.deform_aggregate_bwd(value, om, *attrs, grad_out)
    assert_close(k_value, g_value, 1e-4, what=f"grad_value {case}")
    assert_close(k_om, g_om, 1e-4, what=f"grad_offset_mask {case}")


# ------------------------------------------------------------------------------------------------
# Argument validation: error codes, never a crash


def _scan_call(shape, ptrs=None, threads=1):
    t = torch.zeros(64)
    p = t.data_ptr()
    args = ptrs if ptrs is not None else [p] * 8
    return LIB.ssm_selective_scan_fwd_cpu(ctypes.byref(shape) if shape is not None else None, *args[:7], args[7],
                                          threads)


@needs_lib
def test_scan_bad_arguments_return_status():
    ok = kl.ScanShape(1, 1, 2, 2, 4, 1, kl.SSM_FLOAT32)
    buf = torch.zeros(64)
    p = buf.data_ptr()
    assert _scan_call(ok) == 0
    for field, bad in (("dstate", 0), ("dstate", 17), ("batch", 0), ("dim", -1), ("length", 0), ("groups", 0)):
        shape = kl.ScanShape(1, 1, 2, 2, 4, 1, kl.SSM_FLOAT32)
        setattr(shape, field, bad)
        assert _scan_call(shape) == SSM_ERR_BAD_SIZE, field
    assert _scan_call(kl.ScanShape(1, 1, 2, 2, 4, 1, 7)) == SSM_ERR_BAD_DTYPE
    assert _scan_call(None) == SSM_ERR_NULL_POINTER
    assert _scan_call(ok, [None, p, p, p, p, p, p, p]) == SSM_ERR_NULL_POINTER  # u
    assert _scan_call(ok, [p, p, p, p, p, None, None, None]) == SSM_ERR_NULL_POINTER  # y
    assert _scan_call(ok, [p, p, p, p, p, None, None, p]) == 0  # Ds / delta_bias are optional
    assert _scan_call(kl.ScanShape(1 << 40, 1 << 20, 1 << 20, 1, 1 << 20, 1, 0)) == SSM_ERR_BAD_SIZE  # overflow
    bwd = LIB.ssm_selective_scan_bwd_cpu
    assert bwd(ctypes.byref(ok), p, p, p, p, p, None, None, p, p, p, p, p, p, None, None, 1) == 0
    assert bwd(ctypes.byref(ok), p, p, p, p, p, None, None, p, p, p, None, p, p, None, None, 1) == \
        SSM_ERR_NULL_POINTER  # dA
    bad = kl.ScanShape(1, 1, 2, 0, 4, 1, kl.SSM_FLOAT32)
    assert bwd(ctypes.byref(bad), p, p, p, p, p, None, None, p, p, p, p, p, p, None, None, 1) == SSM_ERR_BAD_SIZE


def _deform_shape(**changes):
    s = kl.DeformShape(1, 4, 4, 4, 4, 2, 3, 54, 3, 3, 1, 1, 1, 1, 1, 1, 0, 1.0, kl.SSM_FLOAT32)
    for k, v in changes.items():
        setattr(s, k, v)
    return s


@needs_lib
def test_deform_bad_arguments_return_status():
    buf = torch.zeros(4096)
    p = buf.data_ptr()
    fwd = LIB.ssm_deform_aggregate_fwd_cpu
    bwd = LIB.ssm_deform_aggregate_bwd_cpu
    assert fwd(ctypes.byref(_deform_shape()), p, p, None, p, 2) == 0
    assert bwd(ctypes.byref(_deform_shape()), p, p, p, p, p, 2) == 0
    bad_sizes = dict(offset_stride=53, group_channels=0, groups=0, kernel_h=0, kernel_w=-1, stride_h=0, stride_w=0,
                     dilation_h=0, dilation_w=-2, height=0, out_width=0, batch=-1, remove_center=2)
    for field, value in bad_sizes.items():
        s = _deform_shape(**{field: value})
        assert fwd(ctypes.byref(s), p, p, None, p, 2) == SSM_ERR_BAD_SIZE, field
        assert bwd(ctypes.byref(s), p, p, p, p, p, 2) == SSM_ERR_BAD_SIZE, field
    # 1x1 kernel without its centre has no sampling points
    s = _deform_shape(kernel_h=1, kernel_w=1, remove_center=1, offset_stride=8)
    assert fwd(ctypes.byref(s), p, p, None, p, 2) == SSM_ERR_BAD_SIZE
    assert fwd(ctypes.byref(_deform_shape(dtype=-1)), p, p, None, p, 2) == SSM_ERR_BAD_DTYPE
    assert fwd(None, p, p, None, p, 2) == SSM_ERR_NULL_POINTER
    assert fwd(ctypes.byref(_deform_shape()), None, p, None, p, 2) == SSM_ERR_NULL_POINTER
    # activation (domain version 5): SILU or NONE forward, NONE only backward
    assert fwd(ctypes.byref(_deform_shape(activation=2)), p, p, p, p, 2) == 0
    assert fwd(ctypes.byref(_deform_shape(activation=1)), p, p, None, p, 2) == SSM_ERR_UNSUPPORTED
    assert bwd(ctypes.byref(_deform_shape(activation=2)), p, p, p, p, p, 2) == SSM_ERR_UNSUPPORTED
    assert bwd(ctypes.byref(_deform_shape()), p, p, p, None, p, 2) == SSM_ERR_NULL_POINTER
    assert bwd(ctypes.byref(_deform_shape()), p, p, p, p, None, 2) == SSM_ERR_NULL_POINTER


@needs_lib
def test_status_strings():
    for status in range(0, 6):
        assert LIB.ssm_status_string(status)
    assert b"unknown" in LIB.ssm_status_string(1234)
    with pytest.raises(RuntimeError, match="bad size"):
        kl._raise_on_error("SelectiveScan", LIB, SSM_ERR_BAD_SIZE, "ssm_selective_scan_fwd_cpu")


@needs_lib
def test_wrappers_report_bad_shapes_by_name():
    u, delta, A, Bs, Cs, Ds, bias = scan_inputs(1, 2, 3, 2, 5, True, True)
    with pytest.raises(ValueError, match=r"A must have shape \(6, 2\), got \(6, 3\)"):
        kl.selective_scan_fwd(u, delta, torch.zeros(6, 3), Bs, Cs, Ds, bias, True)
    with pytest.raises(ValueError, match="delta_bias has dtype torch.float64"):
        kl.selective_scan_fwd(u, delta, A, Bs, Cs, Ds, bias.double(), True)
    with pytest.raises(ValueError, match="dstate"):
        kl.selective_scan_fwd(u, delta, torch.zeros(6, 17), torch.zeros(1, 2, 17, 5), torch.zeros(1, 2, 17, 5))
    with pytest.raises(ValueError, match="dtype torch.int64"):
        kl.selective_scan_fwd(u.long(), delta, A, Bs, Cs)
    value, om, attrs = deform_inputs(DEFORM_CASES[0])
    with pytest.raises(ValueError, match="offset_mask must have at least"):
        kl.deform_aggregate_fwd(value, om[..., :10], *attrs)
    with pytest.raises(ValueError, match="offset_mask must have shape"):
        kl.deform_aggregate_fwd(value, om[:, 1:], *attrs)
    with pytest.raises(ValueError, match="grad_out must have shape"):
        kl.deform_aggregate_bwd(value, om, *attrs, torch.zeros(1))


@needs_lib
def test_non_contiguous_inputs_are_accepted():
    u, delta, A, Bs, Cs, Ds, bias = scan_inputs(2, 2, 3, 2, 9, True, True)
    u_nc = u.transpose(0, 2).contiguous().transpose(0, 2)
    assert not u_nc.is_contiguous()
    assert torch.equal(kl.selective_scan_fwd(u_nc, delta, A, Bs, Cs, Ds, bias), kl.selective_scan_fwd(
        u, delta, A, Bs, Cs, Ds, bias))


@needs_lib
def test_stale_library_is_refused(monkeypatch):
    path, _ = kl._find(kl.CPU_LIBRARY_NAME)
    monkeypatch.setattr(kl, "ABI_VERSION", kl.ABI_VERSION + 1)
    with pytest.raises(kl.KernelLibraryError, match="stale") as info:
        kl._load(path, kl._CPU_SIGNATURES)
    assert str(path) in str(info.value)
