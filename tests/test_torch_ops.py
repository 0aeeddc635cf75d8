"""The torch.library ops: dispatch, autograd through the compiled CPU path, tracing, and the fallback."""
import warnings

import pytest
import torch

import ssmpose
from ssmpose.custom_ops import kernel_library as kl
from ssmpose.custom_ops import ops, reference, torch_ops

needs_kernels = pytest.mark.skipif(kl.cpu_library() is None, reason=f"CPU kernels not built: "
                                                                    f"{kl.unavailable_reason('cpu')}")


def scan_args(b=2, g=3, d=4, n=2, length=50, dtype=torch.float32):
    c = g * d
    return [torch.randn(b, c, length, dtype=dtype), torch.randn(b, c, length, dtype=dtype) - 1,
            -torch.rand(c, n, dtype=dtype) - 0.1, torch.randn(b, g, n, length, dtype=dtype),
            torch.randn(b, g, n, length, dtype=dtype), torch.randn(c, dtype=dtype), torch.randn(c, dtype=dtype)]


def deform_args(dtype=torch.float32):
    value = torch.randn(2, 7, 6, 3 * 8, dtype=dtype)
    om = torch.randn(2, 7, 6, 3 * 27 + 5, dtype=dtype) * 2
    return value, om, (3, 3, 1, 1, 1, 1, 1, 1, 3, 8, 1.0, 0)


@needs_kernels
def test_scan_autograd_through_cpu_kernels_matches_float64_reference():
    args = scan_args()
    ref_in = [a.double().requires_grad_() for a in args]
    y_ref = reference.selective_scan_reference(*ref_in, True)
    dy = torch.randn_like(y_ref)
    grads_ref = torch.autograd.grad(y_ref, ref_in, dy)
    k_in = [a.clone().requires_grad_() for a in args]
    y = ops.selective_scan(*k_in, True)
    grads = torch.autograd.grad(y, k_in, dy.float())
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-5, atol=1e-5 * y_ref.abs().max().item())
    for name, g, g_ref in zip(["u", "delta", "A", "Bs", "Cs", "Ds", "delta_bias"], grads, grads_ref):
        torch.testing.assert_close(g.double(), g_ref, rtol=1e-4, atol=1e-4 * g_ref.abs().max().item(), msg=name)


@needs_kernels
def test_deform_autograd_through_cpu_kernels_matches_float64_reference():
    value, om, attrs = deform_args()
    ref_in = [value.double().requires_grad_(), om.double().requires_grad_()]
    out_ref = reference.deform_aggregate_reference(*ref_in, *attrs)
    grad = torch.randn_like(out_ref)
    g_ref = torch.autograd.grad(out_ref, ref_in, grad)
    k_in = [value.clone().requires_grad_(), om.clone().requires_grad_()]
    out = ops.deform_aggregate(*k_in, *attrs)
    g_k = torch.autograd.grad(out, k_in, grad.float())
    torch.testing.assert_close(out.double(), out_ref, rtol=1e-5, atol=1e-5 * out_ref.abs().max().item())
    for g, gr in zip(g_k, g_ref):
        torch.testing.assert_close(g.double(), gr, rtol=1e-4, atol=1e-4 * gr.abs().max().item())


def test_float64_uses_the_reference_and_supports_gradcheck():
    args = [a.double().requires_grad_() for a in scan_args(1, 2, 2, 1, 6)]
    assert torch.autograd.gradcheck(lambda *t: torch.ops.ssmpose.selective_scan(*t, 1), args)
    value, om, attrs = deform_args(torch.float64)
    value, om = value[:1, :3, :3].contiguous().requires_grad_(), om[:1, :3, :3].contiguous().requires_grad_()
    assert torch.autograd.gradcheck(lambda v, o: torch.ops.ssmpose.deform_aggregate(v, o, *attrs), (value, om))


def test_ops_pass_torch_library_checks():
    args = scan_args(1, 2, 2, 1, 5)
    torch.library.opcheck(torch.ops.ssmpose.selective_scan.default, (*args, 1))
    value, om, attrs = deform_args()
    torch.library.opcheck(torch.ops.ssmpose.deform_aggregate.default, (value, om, *attrs))


@pytest.mark.parametrize("scan_2d", [True, False])
def test_model_traces_with_torch_export(scan_2d):
    """Fake kernels let torch.export trace the whole model without running the operators (SelectiveScan2D by
    default, SelectiveScan on the version-1 path)."""
    model = ssmpose.build_model("hrvmamba_tiny").eval()
    with ops.scan_2d(scan_2d):
        program = torch.export.export(model, (torch.randn(1, 3, 64, 64),))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert ("ssmpose.selective_scan_2d.default" in targets) == scan_2d
    assert ("ssmpose.selective_scan.default" in targets) != scan_2d
    assert "ssmpose.deform_aggregate.default" in targets


@needs_kernels
def test_kernels_and_reference_agree_on_a_whole_model():
    torch.manual_seed(3)
    model = ssmpose.build_model("hrvmamba_tiny").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        x = torch.randn(2, 3, 128, 96)
        fast = model(x)
        with ops.force_reference():
            slow = model(x)
    assert (fast - slow).abs().max() <= 1e-5 * slow.abs().max()


def test_missing_library_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(kl, "cpu_library", lambda: None)
    monkeypatch.setattr(kl, "unavailable_reason", lambda device: "libssmpose_kernels.so not found in [/nowhere]")
    monkeypatch.setattr(torch_ops, "_warned", set())
    args = scan_args(1, 2, 2, 1, 8)
    with pytest.warns(RuntimeWarning, match="compiled CPU kernels are unavailable.*not found in"):
        y = ops.selective_scan(*args, True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ops.selective_scan(*args, True)  # warned once only
    torch.testing.assert_close(y, reference.selective_scan_reference(*args, True), rtol=1e-5, atol=1e-5)
