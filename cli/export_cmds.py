"""`ssmpose export` and `ssmpose inspect`: ONNX export of a registered model, and what an ONNX file holds."""
from __future__ import annotations

import json

import click

FORMS = ("custom", "portable")
SCAN_LOWERINGS = ("halving", "doubling", "matrix")   # = custom_ops.portable.SCAN_LOWERINGS (a test checks)


@click.command("export")
@click.argument("model_name", metavar="MODEL")
@click.option("--checkpoint", default=None, type=click.Path(dir_okay=False),
              help="Official (mmpose-style) or ssmpose checkpoint of MODEL. Default: seeded random weights.")
@click.option("--input-size", default=None, metavar="HxW",
              help="Input height x width (default: the model's, e.g. 256x192); HRVMamba needs multiples of 32.")
@click.option("--batch", default="dynamic", show_default=True, metavar="N|dynamic",
              help="Fixed batch size, or 'dynamic' for a symbolic batch dimension.")
@click.option("--ops", "form", type=click.Choice(FORMS), default="custom", show_default=True,
              help="custom: ssmpose-domain SelectiveScan/DeformAggregate nodes (needs the ssmpose runtime "
                   "library); portable: standard ONNX operators only.")
@click.option("--opset", default=None, type=int,
              help="ONNX opset: custom form 18, 19 or 20 (default; GELU as one Gelu node), portable 18 "
                   "(default) or 19.")
@click.option("--fp16", is_flag=True, help="float16 weights and activations (float32 I/O; the scan, the "
                                            "deformable sampling and LayerNorm statistics compute in "
                                            "float32).")
@click.option("--chunk-size", default=None, type=int,
              help="Portable form: chunk length of the scan lowering (default 32 for matrix, 64 for doubling).")
@click.option("--scan-lowering", type=click.Choice(SCAN_LOWERINGS), default=None,
              help="Portable form: how the scan's chunks are computed: halving (default; pairs of steps merged "
                   "three times, then prefix doubling; the fastest on CPU and GPU), doubling (prefix doubling) or "
                   "matrix (T x T decay matrices, DESIGN.md's form).")
@click.option("--op-version", type=click.IntRange(1, 7), default=7, show_default=True,   # = DEFAULT_OP_VERSION
              help="ssmpose domain version of the custom form's nodes. 7: as 6 with the chain after the scan of "
                   "each VMamba block of up to 64 channels (norms, projections, MLP, residual adds) as one "
                   "VSSBlockTail (the fastest on ONNX Runtime's CUDA EP: docs/export.md); 6: one "
                   "SelectiveScan2D node per SS2D with "
                   "its dt projection inside, the LayerNorms as ssmpose::LayerNorm, each residual Add + LayerNorm "
                   "as one AddLayerNorm, each LPU convolution chain as one MultiKernelDepthwiseConv, and each "
                   "DeformAggregate with its offset bias and SiLU inside (for runtime libraries built before "
                   "version 7); 5: as 6 with the dt projection as Split and MatMul nodes (for TensorRT, and runtime "
                   "libraries built before version 6); 4: as 5 with DeformAggregate's bias Add and SiLU as "
                   "separate nodes; 3: SelectiveScan2D and LayerNorm only; 2: SelectiveScan2D only; 1: "
                   "cross-scan -> SelectiveScan -> cross-merge (for libraries built before version 2).")
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False),
              help="Output file (default: MODEL_HxW_FORM[_fp16].onnx in the current folder).")
@click.option("--json", "as_json", is_flag=True, help="Print the export summary as JSON.")
def export_command(model_name, checkpoint, input_size, batch, form, opset, fp16, chunk_size, scan_lowering, op_version,
                   output, as_json):
    """Export MODEL (a registered name, see `ssmpose models`) to ONNX."""
    from ..export import export_model, parse_input_size
    from ..training.models import model_spec
    if output is None:
        size = parse_input_size(input_size) if input_size else model_spec(model_name).default_input_size
        output = f"{model_name}_{size[0]}x{size[1]}_{form}{'_fp16' if fp16 else ''}.onnx"
    result = export_model(model_name, output, checkpoint=checkpoint, input_size=input_size, batch=batch, form=form,
                          opset=opset, fp16=fp16, chunk_size=chunk_size, scan_lowering=scan_lowering,
                          op_version=op_version)
    graph_input = result.model.graph.input[0].type.tensor_type.shape.dim
    summary = {"path": str(result.path), "model": result.metadata.get("model"), "form": form,
               "input_size": result.metadata.get("input_size"), "batch": result.metadata.get("batch"),
               "input_shape": [d.dim_param or d.dim_value for d in graph_input],
               "dtype": result.metadata.get("dtype"), "opset": result.metadata.get("opset"), "nodes": result.node_count,
               "size_bytes": result.size_bytes, "seconds": round(result.seconds, 2),
               "stages": {k: round(v, 2) for k, v in result.stages.items()}}
    if form == "portable":
        summary.update(chunk_size=result.metadata.get("chunk_size"),
                       scan_lowering=result.metadata.get("scan_lowering"))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    shape = "x".join(str(d) for d in summary["input_shape"])
    click.echo(f"wrote {summary['path']}: {summary['model']} input {shape}, batch {summary['batch']}, {form} form, "
               f"{summary['dtype']}, opset {summary['opset']}")
    click.echo(f"{summary['nodes']} nodes, {summary['size_bytes'] / 1e6:.1f} MB, {summary['seconds']:.1f} s")


@click.command("inspect")
@click.argument("onnx_file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def inspect_command(onnx_file, as_json):
    """Show an ONNX file's ssmpose metadata, inputs/outputs, op histogram and whether it is portable."""
    from ..export import format_report, inspect_model
    report = inspect_model(onnx_file)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(format_report(report))
