"""Entry point of the `ssmpose` console script."""
from __future__ import annotations

import json
import sys

import click

from .._version import __version__


class _CleanErrors(click.Group):
    """Report the library's validation errors as one clear line instead of a traceback."""

    def invoke(self, ctx):
        from ..checkpoint import CheckpointError
        from ..runtimes import BackendUnavailable
        try:
            return super().invoke(ctx)
        except (CheckpointError, ValueError, KeyError, TypeError, FileNotFoundError, BackendUnavailable) as err:
            message = err.args[0] if isinstance(err, KeyError) and err.args else err
            click.echo(f"error: {message}", err=True)
            sys.exit(2)


@click.group(cls=_CleanErrors)
@click.version_option(__version__, prog_name="ssmpose")
def main():
    """ssmpose: state-space pose models, from PyTorch training to any inference runtime."""


@main.command("models")
@click.option("--task", type=click.Choice(["pose", "classification"]), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def models_command(task, as_json):
    """List the registered models with parameter counts, input sizes and outputs."""
    from ..model_info import describe_models
    rows = describe_models(task)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'model':<22} {'task':<15} {'params':>12} {'input sizes (HxW)':<20} outputs")
    for r in rows:
        sizes = ", ".join(f"{h}x{w}" for h, w in r["input_sizes"])
        click.echo(f"{r['name']:<22} {r['task']:<15} {r['params']:>12,} {sizes:<20} {r['outputs']}")


@main.command("convert")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output .safetensors file.")
@click.option("--model", "model_name", default=None, help="Model name (default: inferred from the checkpoint).")
def convert_command(checkpoint, output, model_name):
    """Convert an official (mmpose-style) checkpoint to the ssmpose safetensors format, strictly checked."""
    from ..checkpoint import convert_checkpoint
    path = convert_checkpoint(checkpoint, output, model_name)
    click.echo(f"wrote {path}")


@main.command("demo")
@click.option("--model", "model_name", default="hrvmamba_small", show_default=True)
@click.option("--output-dir", default="outputs/demo", show_default=True, type=click.Path(file_okay=False),
              help="Where the exported ONNX files go.")
@click.option("--backend", "backends", multiple=True, help="Only these backends (default: every one available).")
@click.option("--json", "json_path", default=None, type=click.Path(dir_okay=False), help="Also write the report here.")
def demo_command(model_name, output_dir, backends, json_path):
    """Main job: export MODEL in both ONNX forms and run it on every backend here; print one parity table."""
    from ..deploy_demo import run_deploy_demo
    report = run_deploy_demo(model_name, output_dir, backends=list(backends) or None)
    click.echo(f"model {report['model']}, weights: {report['weights']}")
    click.echo(f"inputs: {report['inputs']}, shape {report['input_shape']}")
    for form, e in report["exports"].items():
        click.echo(f"exported {form:<8} {e['path']}: {e['nodes']} nodes, {e['bytes'] / 1e6:.1f} MB, {e['seconds']:.0f} s")
    click.echo(f"\n{'backend':<10} {'form':<20} {'max abs err':>12} {'err/max|ref|':>13} {'argmax agree':>13} "
               f"{'latency ms':>11}")
    for r in report["rows"]:
        if r["status"] != "ok":
            click.echo(f"{r['backend']:<10} {r['form']:<20} {r['status']}")
            continue
        click.echo(f"{r['backend']:<10} {r['form']:<20} {r['max_abs_error']:>12.2e} "
                   f"{r['max_abs_error_over_max_ref']:>13.2e} {r['argmax_agreement']:>13.3f} {r['latency_ms']:>11.1f}")
    click.echo("\nreference: torch fp32 eager with the CPU kernels; errors are against its heatmaps.")
    if report["overlay"]:
        click.echo(f"overlay (whole pipeline, flip test, seeded weights: the keypoints mean nothing): {report['overlay']}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(report, f, indent=2)


@main.command("figure")
@click.option("--model", "model_name", default="hrvmamba_small", show_default=True)
@click.option("--checkpoint", default=None, type=click.Path(dir_okay=False), help="Official or ssmpose checkpoint.")
@click.option("--seed", default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def figure_command(model_name, checkpoint, seed, as_json):
    """Run a model on a figure the project draws itself; print shapes, decoded keypoints and latency."""
    from ..demo import run_demo
    report = run_demo(model_name, seed=seed, checkpoint=checkpoint)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"model {report['model']}  weights: {report['weights']}")
    click.echo(f"input {report['input_shape']} -> heatmaps {report['heatmap_shape']}")
    click.echo(f"{'keypoint':<16} {'x':>8} {'y':>8} {'score':>8}   drawn at")
    for name, (x, y), s, (tx, ty) in zip(report["keypoint_names"], report["keypoints"], report["scores"],
                                         report["drawn_keypoints"]):
        click.echo(f"{name:<16} {x:8.1f} {y:8.1f} {s:8.4f}   ({tx:.0f}, {ty:.0f})")
    click.echo(f"latency (median of {report['repeats']}, CPU, {report['threads']} threads): "
               f"{report['latency_ms_median']:.1f} ms")
    if checkpoint is None:
        click.echo("note: seeded random weights, so the keypoints are not meaningful; pass --checkpoint "
                   "with official weights for real predictions.")


from .export_cmds import export_command, inspect_command  # noqa: E402
from .pose_cmds import eval_command, infer_command, parity_command  # noqa: E402
from .runtime_cmds import bench_command  # noqa: E402
from .synth_cmds import synth_data_command  # noqa: E402
from .train_cmds import train_command  # noqa: E402

main.add_command(export_command)
main.add_command(inspect_command)
main.add_command(bench_command)
main.add_command(infer_command)
main.add_command(eval_command)
main.add_command(parity_command)
main.add_command(train_command)
main.add_command(synth_data_command)

if __name__ == "__main__":
    main()
