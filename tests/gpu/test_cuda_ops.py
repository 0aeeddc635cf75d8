"""GPU-machine tests of the torch.library ops on CUDA and of a whole model (run by tests/gpu/run_all.sh).

Skipped where no CUDA device is present; run_all.sh makes a skip a failure (SSMPOSE_REQUIRE_CUDA=1).
"""
import os

import pytest
import torch

import ssmpose
from ssmpose.custom_ops import kernel_library as kl
from ssmpose.custom_ops import ops, reference

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    if os.environ.get("SSMPOSE_REQUIRE_CUDA") == "1":
        raise RuntimeError("SSMPOSE_REQUIRE_CUDA=1 but torch sees no CUDA device")
    pytest.skip("no CUDA device", allow_module_level=True)


def test_cuda_library_is_loaded():
    assert kl.cuda_library() is not None, kl.unavailable_reason(torch.device("cuda"))


def _scan_args(b, g, d, n, length, device="cuda", dtype=torch.float32):
    c = g * d
    return [torch.randn(b, c, length), torch.randn(b, c, length) - 1, -torch.rand(c, n) - 0.1,
            torch.randn(b, g, n, length), torch.randn(b, g, n, length), torch.randn(c), torch.randn(c)]


@pytest.mark.parametrize("shape", [(2, 4, 64, 1, 3072), (1, 3, 5, 16, 16384), (3, 4, 640, 1, 48), (1, 1, 1, 1, 1)])
def test_scan_op_forward_backward_vs_float64(shape):
    args = _scan_args(*shape)
    ref_in = [a.double().requires_grad_() for a in args]
    y_ref = reference.selective_scan_chunked(*ref_in, True, chunk_size=64)
    dy = torch.randn_like(y_ref)
    grads_ref = torch.autograd.grad(y_ref, ref_in, dy)
    cuda_in = [a.cuda().requires_grad_() for a in args]
    y = ops.selective_scan(*cuda_in, True)
    grads = torch.autograd.grad(y, cuda_in, dy.float().cuda())
    scale = y_ref.abs().max().item()
    assert (y.double().cpu() - y_ref).abs().max().item() <= 1e-5 * scale + 1e-6
    for name, g, g_ref in zip(["u", "delta", "A", "Bs", "Cs", "Ds", "delta_bias"], grads, grads_ref):
        err = (g.double().cpu() - g_ref).abs().max().item()
        assert err <= 2e-4 * g_ref.abs().max().item() + 1e-5, (name, err)


@pytest.mark.parametrize("case", [(2, 64, 48, 2, 32, 56), (1, 8, 6, 40, 32, 1080), (3, 16, 12, 5, 32, 136)])
def test_deform_op_forward_backward_vs_float64(case):
    b, h, w, g, gc, p = case
    value, om = torch.randn(b, h, w, g * gc), torch.randn(b, h, w, p) * 2
    attrs = (3, 3, 1, 1, 1, 1, 1, 1, g, gc, 1.0, 0)
    ref_in = [value.double().requires_grad_(), om.double().requires_grad_()]
    out_ref = reference.deform_aggregate_reference(*ref_in, *attrs)
    grad = torch.randn_like(out_ref)
    g_ref = torch.autograd.grad(out_ref, ref_in, grad)
    cuda_in = [value.cuda().requires_grad_(), om.cuda().requires_grad_()]
    out = ops.deform_aggregate(*cuda_in, *attrs)
    g_cuda = torch.autograd.grad(out, cuda_in, grad.float().cuda())
    assert (out.double().cpu() - out_ref).abs().max() <= 1e-5 * out_ref.abs().max() + 1e-6
    for gc_, gr in zip(g_cuda, g_ref):
        assert (gc_.double().cpu() - gr).abs().max() <= 2e-4 * gr.abs().max() + 1e-5


@pytest.mark.parametrize("name", ["hrvmamba_small", "hrvmamba_base"])
def test_full_model_forward_backward_cuda_vs_reference(name):
    """A whole model with the CUDA kernels against the same model on the reference operators."""
    torch.manual_seed(0)
    # eval mode: BatchNorm uses running statistics and dropout/drop-path are off, so both runs see the
    # same graph; gradients still flow through every operator.
    model = ssmpose.build_model(name).cuda().eval()
    with torch.no_grad():  # make the deformable path really sample (offset/mask are zero-initialised)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    x = torch.randn(2, 3, 256, 192, device="cuda")
    target = torch.randn(2, 17, 64, 48, device="cuda")

    def run():
        model.zero_grad(set_to_none=True)
        out = model(x)
        (out - target).square().mean().backward()
        return out.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}

    torch.backends.cudnn.allow_tf32 = False  # keep convolution noise out of the comparison
    out_k, grads_k = run()
    with ops.force_reference():
        out_r, grads_r = run()
        # float64 ground truth: the float32 reference's own gradient error reaches ~1e-3 on hrvmamba_base
        # (docs/benchmarks.md, "Gradient accuracy of the kernels"), so the kernels are held to 3x of it
        # rather than to a fixed distance from it.
        model.double()
        x, target = x.double(), target.double()
        _, grads_64 = run()
    assert (out_k - out_r).abs().max() <= 1e-3 * out_r.abs().max()
    flat_k = torch.cat([g.flatten() for g in grads_k.values()]).double()
    flat_r = torch.cat([grads_r[n].flatten() for n in grads_k]).double()
    flat_64 = torch.cat([grads_64[n].flatten() for n in grads_k])
    err_k = ((flat_k - flat_64).norm() / flat_64.norm()).item()
    err_r = ((flat_r - flat_64).norm() / flat_64.norm()).item()
    print(f"{name}: gradient rel. error vs float64: kernels {err_k:.2e}, float32 reference {err_r:.2e}")
    assert err_k <= 3 * err_r + 1e-5, (err_k, err_r)
    # Per tensor: the offset/mask projections see the bilinear weights' derivative, which jumps where a
    # sample crosses a pixel boundary; float32 rounding of the sample position decides the side, so a few
    # of those tensors are off more. Bound the typical tensor against the float32 reference's own error.
    names = list(grads_r)

    def rel_errors(grads):
        return torch.tensor([((grads[n].double() - grads_64[n]).norm() / (grads_64[n].norm() + 1e-300)).item()
                             for n in names])

    per_tensor_r = rel_errors(grads_r)
    per_tensor = rel_errors(grads_k)
    worst = names[int(per_tensor.argmax())]
    print(f"{name}: gradient rel. error vs float64, median {per_tensor.median().item():.2e} (float32 reference "
          f"{per_tensor_r.median().item():.2e}), worst {per_tensor.max().item():.2e} ({worst})")
    assert per_tensor.median().item() <= 3 * per_tensor_r.median().item() + 1e-6, per_tensor.median().item()
    assert per_tensor.max().item() <= 0.1, (worst, per_tensor.max().item())
