"""The kernels' gradients are as accurate as float32 rounding of the reference allows (issue 17).

On HRVMamba-like shapes (one SS2D scan of stage 1: 4 directions, D = 64, N = 1, L = 3072, softplus; one
DCNv4 aggregation of the same stage), each gradient of the CPU kernels is compared with a float64 run of
the reference, and must be within 3x of the error of the float32 reference (the model's op layer,
chunk 16) against the same float64 run.
"""
from __future__ import annotations

import pytest
import torch

from ssmpose.custom_ops import kernel_library as kl
from ssmpose.custom_ops import reference, torch_ops

pytestmark = pytest.mark.skipif(kl.cpu_library() is None, reason="CPU kernel library not built")

SCAN_GRADS = ("du", "d_delta", "dA", "dBs", "dCs", "dDs", "d_delta_bias")


def _rel(x, exact):
    return ((x.double() - exact).norm() / exact.norm()).item()


def _grads(fn, inputs, dy, dtype):
    leaves = [t.to(dtype).requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    return torch.autograd.grad(out, leaves, dy.to(dtype))


def _scan_inputs(batch=1, groups=4, dim=64, dstate=1, length=3072, seed=0):
    g = torch.Generator().manual_seed(seed)
    channels = groups * dim
    # as ss2d after training-like perturbation: A = -exp(A_logs), D = 1, dt bias = softplus^-1(dt in [1e-3, 0.1])
    u = torch.randn(batch, channels, length, generator=g)
    delta = torch.randn(batch, channels, length, generator=g) * 0.5
    A = -torch.exp(torch.randn(channels, dstate, generator=g) * 0.02)
    Bs = torch.randn(batch, groups, dstate, length, generator=g)
    Cs = torch.randn(batch, groups, dstate, length, generator=g)
    Ds = 1 + 0.02 * torch.randn(channels, generator=g)
    dt = torch.exp(torch.rand(channels, generator=g) * (torch.log(torch.tensor(0.1)) - torch.log(torch.tensor(1e-3)))
                   + torch.log(torch.tensor(1e-3)))
    bias = dt + torch.log(-torch.expm1(-dt))
    dy = torch.randn(batch, channels, length, generator=g)
    return (u, delta, A, Bs, Cs, Ds, bias), dy


def test_selective_scan_gradients_within_3x_of_float32_reference():
    inputs, dy = _scan_inputs()
    exact = _grads(lambda *a: reference.selective_scan_chunked(*a, True, chunk_size=64), inputs, dy, torch.float64)
    ref32 = _grads(lambda *a: reference.selective_scan_chunked(*a, True, chunk_size=torch_ops.REFERENCE_SCAN_CHUNK),
                   inputs, dy, torch.float32)
    kern = _grads(lambda *a: torch.ops.ssmpose.selective_scan(*a, 1), inputs, dy, torch.float32)
    for name, e, r, k in zip(SCAN_GRADS, exact, ref32, kern):
        err_k, err_r = _rel(k, e), _rel(r, e)
        assert err_k <= 3 * err_r + 1e-7, f"{name}: kernel {err_k:.2e}, float32 reference {err_r:.2e}"


def test_deform_aggregate_gradients_within_3x_of_float32_reference():
    g = torch.Generator().manual_seed(0)
    group, gc = 2, 32
    value = torch.randn(1, 64, 48, group * gc, generator=g)
    om = torch.randn(1, 64, 48, 56, generator=g) * 0.5  # offsets of a fraction of a pixel, masks around 0
    grad_out = torch.randn(1, 64, 48, group * gc, generator=g)
    attrs = (3, 3, 1, 1, 1, 1, 1, 1, group, gc, 1.0, 0)
    exact = _grads(lambda v, o: reference.deform_aggregate_reference(v, o, *attrs), (value, om), grad_out,
                   torch.float64)
    ref32 = _grads(lambda v, o: reference.deform_aggregate_reference(v, o, *attrs), (value, om), grad_out,
                   torch.float32)
    kern = _grads(lambda v, o: torch.ops.ssmpose.deform_aggregate(v, o, *attrs), (value, om), grad_out,
                  torch.float32)
    for name, e, r, k in zip(("grad_value", "grad_offset_mask"), exact, ref32, kern):
        err_k, err_r = _rel(k, e), _rel(r, e)
        assert err_k <= 3 * err_r + 1e-7, f"{name}: kernel {err_k:.2e}, float32 reference {err_r:.2e}"
