"""`ssmpose bench`: throughput of a model on one backend."""
from __future__ import annotations

import json

import click

from ..runtimes import BACKENDS


def parse_cuda_options(items) -> dict:
    """--cuda-option KEY=VALUE items -> {KEY: VALUE}."""
    pairs = [item.split("=", 1) for item in items]
    bad = [item for item, pair in zip(items, pairs) if len(pair) != 2 or not pair[0]]
    if bad:
        raise click.UsageError(f"--cuda-option expects KEY=VALUE, got {bad[0]!r}")
    return dict(pairs)


@click.command("bench")
@click.argument("model")
@click.option("--backend", type=click.Choice(BACKENDS), default="torch", show_default=True)
@click.option("--batch", "batches", type=int, multiple=True, default=(1,), show_default=True,
              help="Batch size; repeat the option for several.")
@click.option("--device", default=None, help="torch backend: cpu or cuda (default: cuda when available).")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="torch backend precision (ONNX files carry their own).")
@click.option("--reference-ops", is_flag=True, help="torch backend: use the reference operators.")
@click.option("--cuda-option", "cuda_options", multiple=True, metavar="KEY=VALUE",
              help="ort-cuda: a CUDA execution provider option, e.g. enable_cuda_graph=1; repeatable.")
@click.option("--max-batch-per-run", type=click.IntRange(min=1), default=None,
              help="ort-cpu/ort-cuda: run larger batches in slices of this many images (ort-cuda: at most, "
                   "and by default, the largest batch its 32-bit indexing allows).")
@click.option("--repeats", default=20, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write results here.")
def bench_command(model, backend, batches, device, dtype, reference_ops, cuda_options, max_batch_per_run, repeats,
                  json_path):
    """Time MODEL (name or checkpoint for torch, .onnx file otherwise) and print images/s per batch size."""
    import torch

    from .. import runtimes
    from ..runtimes.benchmark import benchmark_session
    options = {}
    if backend == "torch":
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        options = {"device": device, "dtype": dtype, "reference_ops": reference_ops}
    if cuda_options:
        if backend != "ort-cuda":
            raise click.UsageError("--cuda-option applies to --backend ort-cuda only")
        options["cuda_options"] = parse_cuda_options(cuda_options)
    if max_batch_per_run is not None:
        if backend not in ("ort-cpu", "ort-cuda"):
            raise click.UsageError("--max-batch-per-run applies to --backend ort-cpu or ort-cuda only")
        options["max_batch_per_run"] = max_batch_per_run
    session = runtimes.load(model, backend, **options)
    on_device = backend == "ort-cuda" or (backend == "torch" and device.startswith("cuda"))
    results = []
    click.echo(f"{'backend':<10} {'batch':>6} {'p50 ms':>10} {'p90 ms':>10} {'images/s':>10}")
    for batch in batches:
        r = benchmark_session(session, batch, repeats=repeats, on_device=on_device)
        results.append({**r, "model": session.metadata.get("model"), "options": options})
        click.echo(f"{backend:<10} {batch:>6} {r['p50_s'] * 1e3:>10.2f} {r['p90_s'] * 1e3:>10.2f} "
                   f"{r['images_per_s']:>10.1f}"
                   + (f"  (run in {r['slices']} slices of at most {session.max_batch_per_run})"
                      if r["slices"] > 1 else ""))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=2)
