"""The reference operators against per-element float64 loops, and their gradients (gradcheck)."""
import pytest
import torch

from naive_ops import naive_deform_aggregate, naive_selective_scan
from ssmpose.custom_ops import ops
from ssmpose.custom_ops.reference import (deform_aggregate_reference, deform_output_size,
                                          selective_scan_chunked, selective_scan_reference)

F64 = torch.float64


def scan_inputs(batch, groups, dim, dstate, length, with_d=True, with_bias=True, dtype=F64):
    channels = groups * dim
    return dict(
        u=torch.randn(batch, channels, length, dtype=dtype),
        delta=torch.randn(batch, channels, length, dtype=dtype) * 2,
        A=-torch.rand(channels, dstate, dtype=dtype) * 2 - 0.05,
        Bs=torch.randn(batch, groups, dstate, length, dtype=dtype),
        Cs=torch.randn(batch, groups, dstate, length, dtype=dtype),
        Ds=torch.randn(channels, dtype=dtype) if with_d else None,
        delta_bias=torch.randn(channels, dtype=dtype) if with_bias else None,
    )


SCAN_SHAPES = [  # batch, groups, dim, dstate, length
    (1, 1, 1, 1, 1), (2, 3, 2, 1, 9), (1, 4, 3, 4, 17), (2, 5, 1, 16, 6), (1, 2, 2, 2, 1), (3, 1, 4, 3, 33),
]


@pytest.mark.parametrize("shape", SCAN_SHAPES)
@pytest.mark.parametrize("softplus", [True, False])
def test_selective_scan_matches_loops(shape, softplus):
    x = scan_inputs(*shape, with_d=shape[3] != 4, with_bias=shape[2] != 3)
    if not softplus:
        x["delta"] = x["delta"].abs()
    want = torch.tensor(naive_selective_scan(**x, delta_softplus=softplus), dtype=F64)
    got = selective_scan_reference(**x, delta_softplus=softplus)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SCAN_SHAPES + [(1, 4, 8, 1, 3072), (2, 2, 3, 16, 7000)])
@pytest.mark.parametrize("chunk", [2, 5, 16, 64])
def test_chunked_scan_equals_sequential(shape, chunk):
    x = scan_inputs(*shape)
    torch.testing.assert_close(selective_scan_chunked(**x, chunk_size=chunk), selective_scan_reference(**x),
                               rtol=1e-10, atol=1e-10)


def test_softplus_threshold_is_identity_above_20():
    x = scan_inputs(1, 1, 2, 1, 4)
    x["delta"] = torch.full_like(x["delta"], 25.0)
    x["delta_bias"] = None
    x["A"] = torch.full_like(x["A"], -1e-3)
    want = torch.tensor(naive_selective_scan(**x, delta_softplus=True), dtype=F64)
    torch.testing.assert_close(selective_scan_reference(**x), want, rtol=1e-12, atol=1e-12)


def test_float16_inputs_compute_in_float32():
    x = scan_inputs(1, 2, 3, 2, 40, dtype=torch.float16)
    y = selective_scan_reference(**x)
    assert y.dtype == torch.float16
    want = selective_scan_reference(**{k: v.double() if v is not None else None for k, v in x.items()})
    assert (y.double() - want).abs().max() <= 2e-3 * want.abs().max()


def test_scan_gradcheck():
    x = scan_inputs(1, 2, 2, 2, 5)
    names = list(x)
    tensors = [x[k].requires_grad_() for k in names]
    for fn in (selective_scan_reference, lambda *a: selective_scan_chunked(*a, chunk_size=2)):
        assert torch.autograd.gradcheck(lambda *t: fn(*t, True), tensors)


DEFORM_CASES = [
    # batch, H, W, group, gc, kh, kw, sh, sw, ph, pw, dh, dw, scale, remove_center, extra columns
    (1, 5, 6, 1, 2, 3, 3, 1, 1, 1, 1, 1, 1, 1.0, 0, 5),
    (2, 4, 7, 3, 2, 3, 3, 1, 1, 1, 1, 1, 1, 1.0, 0, 3),
    (1, 6, 5, 2, 3, 3, 3, 2, 2, 1, 1, 1, 1, 1.0, 1, 0),
    (1, 7, 7, 5, 1, 5, 3, 1, 2, 2, 0, 2, 1, 0.5, 0, 2),
    (1, 3, 4, 2, 2, 1, 1, 1, 1, 0, 0, 1, 1, 2.0, 0, 0),
    (1, 6, 6, 1, 4, 3, 5, 1, 1, 2, 3, 2, 2, 1.5, 1, 7),
]


def deform_inputs(case, dtype=F64):
    b, h, w, g, gc, kh, kw, sh, sw, ph, pw, dh, dw, scale, rc, extra = case
    out_h, out_w = deform_output_size(h, w, kh, kw, sh, sw, ph, pw, dh, dw)
    k = kh * kw - rc
    value = torch.randn(b, h, w, g * gc, dtype=dtype)
    offset_mask = torch.randn(b, out_h, out_w, g * k * 3 + extra, dtype=dtype)
    # Offsets large enough that many samples leave the image; masks of both signs.
    offset_mask[..., : g * k * 3] *= 2.5
    attrs = (kh, kw, sh, sw, ph, pw, dh, dw, g, gc, scale, rc)
    return value, offset_mask, attrs


@pytest.mark.parametrize("case", DEFORM_CASES)
def test_deform_aggregate_matches_loops(case):
    value, offset_mask, attrs = deform_inputs(case)
    want = torch.tensor(naive_deform_aggregate(value, offset_mask, *attrs), dtype=F64)
    got = deform_aggregate_reference(value, offset_mask, *attrs)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_deform_padding_columns_are_ignored():
    value, offset_mask, attrs = deform_inputs(DEFORM_CASES[0])
    base = deform_aggregate_reference(value, offset_mask, *attrs)
    offset_mask[..., -5:] = 1e6
    torch.testing.assert_close(deform_aggregate_reference(value, offset_mask, *attrs), base)


def test_deform_samples_far_outside_contribute_nothing():
    value, offset_mask, attrs = deform_inputs(DEFORM_CASES[0])
    k = 9
    offset_mask[..., : 2 * k] = 1000.0
    assert deform_aggregate_reference(value, offset_mask, *attrs).abs().max() == 0


def test_deform_nan_locations_and_points_outside_contribute_nothing_whatever_their_mask():
    """docs/ops.md: such points are skipped, so a NaN offset or an infinite mask there does not reach the
    output (a zero weight times inf would be NaN)."""
    value, offset_mask, attrs = deform_inputs(DEFORM_CASES[1])  # G = 3, K = 9
    g, k = attrs[8], 9
    per_group = offset_mask[..., : g * k * 3].view(*offset_mask.shape[:3], g, 3 * k)
    per_group[..., 0] = float("nan")          # point 0: x offset NaN -> NaN location
    per_group[..., 2] = 1000.0                # point 1: far outside the image ...
    per_group[..., 2 * k + 1] = float("inf")  # ... with an infinite mask
    silenced = offset_mask.clone()
    silenced_groups = silenced[..., : g * k * 3].view(*silenced.shape[:3], g, 3 * k)
    silenced_groups[..., 0] = 0.0
    silenced_groups[..., 2 * k + 0] = 0.0     # point 0 without weight
    silenced_groups[..., 2 * k + 1] = 0.0     # point 1 without weight
    got = deform_aggregate_reference(value, offset_mask, *attrs)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, deform_aggregate_reference(value, silenced, *attrs), rtol=0, atol=0)


def test_deform_gradcheck():
    value, offset_mask, attrs = deform_inputs(DEFORM_CASES[1])
    value = value[:, :3, :4].contiguous().requires_grad_()
    out_h, out_w = deform_output_size(3, 4, 3, 3, 1, 1, 1, 1, 1, 1)
    offset_mask = offset_mask[:, :out_h, :out_w].contiguous().requires_grad_()
    assert torch.autograd.gradcheck(lambda v, o: deform_aggregate_reference(v, o, *attrs), (value, offset_mask))


def test_op_layer_rejects_bad_shapes_by_name():
    x = scan_inputs(1, 2, 2, 1, 5)
    with pytest.raises(ValueError, match="SelectiveScan: A must be"):
        ops.selective_scan(x["u"], x["delta"], x["A"][:, :0], x["Bs"], x["Cs"])
    with pytest.raises(ValueError, match="delta shape"):
        ops.selective_scan(x["u"], x["delta"][..., :3], x["A"], x["Bs"], x["Cs"])
    value, offset_mask, attrs = deform_inputs(DEFORM_CASES[1])
    with pytest.raises(ValueError, match="DeformAggregate: offset_mask has 80 columns"):
        ops.deform_aggregate(value, offset_mask[..., :80], *attrs)
    with pytest.raises(ValueError, match="group\\*group_channels"):
        ops.deform_aggregate(value, offset_mask, *attrs[:8], 2, 2, *attrs[10:])
