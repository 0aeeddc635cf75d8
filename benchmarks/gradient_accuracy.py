"""How accurate the kernels' parameter gradients are, against a float64 run of the reference operators
(not a test: prints a summary, writes JSON).

Three backward passes of one loss on the same perturbed model: the kernels in float32 on --device, the
reference operators in float32, and the reference operators in float64 on the CPU. Relative errors are
against float64, as a whole (all gradients flattened) and per parameter tensor, so that the kernels'
error can be told apart from float32 rounding, which the float32 reference row shows.

    python benchmarks/gradient_accuracy.py --model hrvmamba_base --device cuda --json grads.json
"""
from __future__ import annotations

import argparse
import json
import statistics

import torch

import ssmpose
from ssmpose.custom_ops import ops


def gradients(model, images, target) -> dict:
    model.zero_grad(set_to_none=True)
    (model(images) - target).square().mean().backward()
    return {name: p.grad.detach().double().cpu() for name, p in model.named_parameters()}


def relative_errors(grads: dict, exact: dict) -> dict:
    flat = torch.cat([grads[n].flatten() for n in exact])
    flat_exact = torch.cat([g.flatten() for g in exact.values()])
    per_tensor = {n: ((grads[n] - g).norm() / (g.norm() + 1e-300)).item() for n, g in exact.items()}
    worst = sorted(per_tensor.items(), key=lambda kv: -kv[1])[:5]
    return {"flat": ((flat - flat_exact).norm() / flat_exact.norm()).item(),
            "per_tensor_median": statistics.median(per_tensor.values()), "worst": worst}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="hrvmamba_base")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = ssmpose.build_model(args.model).eval()
    with torch.no_grad():   # as tests/gpu/test_cuda_ops.py: make the deformable path really sample
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    h, w = model.meta["input_size"]
    images = torch.randn(args.batch, 3, h, w)
    target = torch.randn(args.batch, model.meta["num_keypoints"], h // 4, w // 4)
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device(args.device)
    kernels = gradients(model.to(device), images.to(device), target.to(device))
    with ops.force_reference():
        reference32 = gradients(model, images.to(device), target.to(device))
        exact = gradients(model.cpu().double(), images.double(), target.double())
    result = {"model": args.model, "device": args.device, "batch": args.batch,
              "kernels_float32": relative_errors(kernels, exact),
              "reference_float32": relative_errors(reference32, exact)}
    for label in ("kernels_float32", "reference_float32"):
        r = result[label]
        print(f"{label:<18} flat {r['flat']:.2e}  per-tensor median {r['per_tensor_median']:.2e}  worst "
              + ", ".join(f"{n} {e:.2e}" for n, e in r["worst"][:3]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
