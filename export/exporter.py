"""ONNX export of the registered models, in the custom and the portable form.

Pipeline (docs/export.md explains each step):

1. Build the model (registered name [+ checkpoint]; seeded weights without one) or take the given
   module; eval mode. fp16: a half-precision copy behind float32 input/output casts.
2. `torch.export.export` (batch dimension symbolic unless a fixed batch is asked for). The two ssmpose
   ops are torch.library custom ops with fake kernels, so tracing never runs them. A video model
   (meta `num_frames` T > 1) is traced with clips (batch, T, 3, H, W): T, H and W are fixed.
3. `torch.onnx.export` of that program (the dynamo exporter) with a `custom_translation_table` that
   turns each op into one `ssmpose`-domain node (export/translations.py): the custom form.
4. Portable form: every ssmpose node is replaced by its standard-op lowering
   (`ssmpose.custom_ops.portable.lower_to_portable`). One trace can serve both forms (`export_forms`).
5. Clean-up (export/optimize.py), normalisation for byte-identical output (no doc strings, stack traces
   or source paths; fixed producer fields), metadata, `onnx.checker.check_model(full_check=True)`.
6. The file is written to a temporary name beside the target and renamed, so a failed export never
   leaves a partial file.
"""
from __future__ import annotations

import contextlib
import copy
import io
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple, Union

import onnx
import torch
import torch.nn as nn

from ..custom_ops import ops
from .metadata import build_metadata, write_metadata
from .fusions import (fuse_erf_gelu, use_add_layer_norm_op, use_block_diagonal_matmul, use_deform_aggregate_epilogues,
                      use_depthwise_conv_op, use_layer_norm_op, use_scan_dt_projection, use_vss_block_tail_op)
from .schemas import (DOMAIN, DT_PROJECTION_DOMAIN_VERSION, EPILOGUE_DOMAIN_VERSION, FUSED_DOMAIN_VERSION,
                      LAYER_NORM_DOMAIN_VERSION, VSS_TAIL_DOMAIN_VERSION, nodes_domain_version, op_domain_version,
                      register_schemas)

FORMS = ("custom", "portable")
OP_VERSIONS = (1, 2, 3, 4, 5, 6, 7)
DEFAULT_OP_VERSION = VSS_TAIL_DOMAIN_VERSION   # `ssmpose export --op-version` defaults to the same (cli/export_cmds.py)
# Version 7 fuses the chain after a block's scan only up to this many channels: there the CUDA kernel keeps the
# weights in shared memory and the fused graph measured faster at batch 1, 32 and 128; wider blocks stay unfused,
# their fused kernel being slower than ONNX Runtime's chain at large batches (docs/benchmarks.md, fifteenth session).
EXPORT_VSS_TAIL_MAX_CHANNELS = 64
# Opset 20 brings the one-node Gelu (five nodes below it). The portable form stays below 20: TensorRT's parser
# knows only GridSample's opset-16 mode names and samples nearest-neighbour with opset 20's "linear".
SUPPORTED_OPSETS = {"custom": (18, 19, 20), "portable": (18, 19)}
DEFAULT_OPSETS = {"custom": 20, "portable": 18}
GELU_OPSET = 20
INPUT_NAME = "images"
BATCH_DIM = "batch"
PRODUCER_NAME = "ssmpose"
SEED = 0   # weights of a model exported by name without a checkpoint (as `ssmpose demo`)


class ExportError(ValueError):
    """The export cannot be done as asked (bad option, model, checkpoint or input size); nothing was written."""


@dataclass
class ExportResult:
    model: onnx.ModelProto
    path: Optional[Path]
    metadata: dict
    seconds: float
    stages: dict = field(default_factory=dict)

    @property
    def node_count(self) -> int:
        return len(self.model.graph.node)

    @property
    def size_bytes(self) -> int:
        return self.model.ByteSize() if self.path is None else self.path.stat().st_size


# ---------------------------------------------------------------------------------------------------------
# Options and model resolution

def parse_input_size(value) -> Tuple[int, int]:
    """'256x192', (256, 192) or [256, 192] -> (256, 192), positive; each model checks its own divisibility
    (HRVMamba 32, MamKPD 16, GLSMamba its patch and windows) when it is built."""
    if isinstance(value, str):
        parts = value.lower().replace("*", "x").split("x")
        try:
            value = tuple(int(p) for p in parts)
        except ValueError:
            raise ExportError(f"input size must look like HxW (e.g. 256x192), got {value!r}") from None
    try:
        h, w = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ExportError(f"input size must be (H, W), got {value!r}") from None
    if h <= 0 or w <= 0:
        raise ExportError(f"input size {h}x{w} is not supported: height and width must be positive")
    return h, w


def parse_batch(value) -> Union[str, int]:
    if value is None or (isinstance(value, str) and value.lower() == "dynamic"):
        return "dynamic"
    try:
        batch = int(value)
    except (TypeError, ValueError):
        raise ExportError(f"batch must be a positive integer or 'dynamic', got {value!r}") from None
    if batch < 1:
        raise ExportError(f"batch must be a positive integer or 'dynamic', got {value!r}")
    return batch


def resolve_model(model: Union[str, nn.Module], checkpoint=None, input_size=None) -> Tuple[nn.Module, Tuple[int, int]]:
    """A registered name (with an optional checkpoint) or a module -> (model in eval mode, input size)."""
    from ..checkpoint import CheckpointError, load_checkpoint
    from ..training.models import build_model, model_spec
    if isinstance(model, nn.Module):
        if checkpoint is not None:
            raise ExportError("pass either a model name with a checkpoint, or a built module (not both)")
        size = parse_input_size(input_size if input_size is not None else getattr(model, "input_size", None))
        if not isinstance(getattr(model, "meta", None), dict):
            raise ExportError(f"{type(model).__name__} has no `meta` dict; build it with ssmpose.build_model()")
        return model.eval(), size
    if not isinstance(model, str):
        raise ExportError(f"model must be a registered name or an nn.Module, got {type(model).__name__}")
    try:
        spec = model_spec(model)
    except KeyError as err:
        raise ExportError(err.args[0]) from None
    size = parse_input_size(input_size if input_size is not None else spec.default_input_size)
    try:
        if checkpoint is not None:
            built = load_checkpoint(checkpoint, model, input_size=size)   # CheckpointError names the mismatch
        else:  # seeded, so that exporting a name twice gives the same file
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(SEED)
                built = build_model(model, input_size=size)
    except ValueError as err:
        size_problem = any(word in str(err) for word in ("input_size", "divisible", "multiple"))
        if isinstance(err, CheckpointError) or not size_problem:
            raise
        raise ExportError(f"input size {size[0]}x{size[1]} is not supported: {err}") from None
    return built.eval(), size


# ---------------------------------------------------------------------------------------------------------
# Module preparation

class _ExportWrapper(nn.Module):
    """Fixes the graph's I/O: float32 images in, float32 out; the wrapped model may run in float16."""

    def __init__(self, model: nn.Module, compute_dtype: torch.dtype):
        super().__init__()
        self.model = model
        self.compute_dtype = compute_dtype

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model(images.to(self.compute_dtype))
        return out.to(torch.float32)


def prepare_module(model: nn.Module, fp16: bool) -> nn.Module:
    """The module that is traced. fp16: a half copy (the caller's model is left alone).

    LayerNorms run in float16 too: ONNX LayerNormalization computes its statistics in float32 (stash_type 1),
    as PyTorch's half LayerNorm does, so keeping them float32 would only add two Casts (and float32 layout
    copies) around each of them; on the GPU those cost more time than the LayerNorms themselves."""
    if not fp16:
        return _ExportWrapper(model, torch.float32).eval()
    return _ExportWrapper(copy.deepcopy(model).half().eval(), torch.float16).eval()


# ---------------------------------------------------------------------------------------------------------
# Export

@contextlib.contextmanager
def _quiet():
    """torch.onnx prints progress lines and warns about things that do not concern the user here."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        import logging
        loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
        levels = [lg.level for lg in loggers]
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def _normalise(model: onnx.ModelProto, graph_name: str, form: str, opset: int) -> None:
    """Strip what varies between runs or machines; fix producer fields and the opset imports."""
    from .._version import __version__

    def clean_graph(graph):
        graph.doc_string = ""
        del graph.metadata_props[:]
        for seq in (graph.input, graph.output, graph.value_info):
            for v in seq:
                v.doc_string = ""
                del v.metadata_props[:]
        for init in graph.initializer:
            init.doc_string = ""
            del init.metadata_props[:]
        for node in graph.node:
            node.doc_string = ""
            del node.metadata_props[:]
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    clean_graph(attr.g)
                for g in attr.graphs:
                    clean_graph(g)

    clean_graph(model.graph)
    _rename_batch_symbol(model.graph)
    model.graph.name = graph_name
    model.producer_name = PRODUCER_NAME
    model.producer_version = __version__
    model.domain = "ai.ssmpose"
    model.model_version = 1
    model.doc_string = f"{graph_name} exported by ssmpose {__version__} ({form} form)"
    used = {n.domain for n in model.graph.node}
    imports = {"": int(opset)}
    if DOMAIN in used:   # version 2 only where a SelectiveScan2D node needs it
        imports[DOMAIN] = nodes_domain_version(n for n in model.graph.node if n.domain == DOMAIN)
    for entry in model.opset_import:
        if entry.domain not in imports and entry.domain in used:
            imports[entry.domain] = entry.version
    del model.opset_import[:]
    for domain in sorted(imports):
        model.opset_import.add(domain=domain, version=imports[domain])


def _rename_batch_symbol(graph) -> None:
    """torch.export names the symbolic batch size s0, s34, ...; call it "batch" everywhere."""
    import re
    dims = graph.input[0].type.tensor_type.shape.dim if graph.input else []
    if not dims or not dims[0].dim_param:
        return
    pattern = re.compile(rf"\b{re.escape(dims[0].dim_param)}\b")
    for seq in (graph.input, graph.output, graph.value_info):
        for v in seq:
            for d in v.type.tensor_type.shape.dim:
                if d.dim_param:
                    d.dim_param = pattern.sub(BATCH_DIM, d.dim_param)


def input_shape(net: nn.Module, size) -> Tuple[int, ...]:
    """One input of the model without the batch: (3, H, W), or (T, 3, H, W) for a video model."""
    frames = getattr(net, "meta", {}).get("num_frames", 1)
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise ExportError(f"{getattr(net, 'meta', {}).get('model', type(net).__name__)}: meta num_frames must be a "
                          f"positive integer, got {frames!r}")
    return (3, *size) if frames == 1 else (frames, 3, *size)


def _portable_violations(model: onnx.ModelProto):
    return sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node
                   if n.domain not in ("", "ai.onnx") or n.op_type in ("Loop", "Scan")})


def export_model(model: Union[str, nn.Module], output=None, *, checkpoint=None, input_size=None,
                 batch: Union[str, int] = "dynamic", form: str = "custom", opset: Optional[int] = None,
                 fp16: bool = False, chunk_size: Optional[int] = None, scan_lowering: Optional[str] = None,
                 op_version: int = DEFAULT_OP_VERSION, check: bool = True) -> ExportResult:
    """Export a model to ONNX; returns an ExportResult (the ModelProto, the path written, timings).

    model       registered model name (e.g. "hrvmamba_small") or a module built by ssmpose.build_model
    output      file to write (written atomically); None: only return the ModelProto
    checkpoint  official or ssmpose checkpoint for `model` (a name); must belong to that model
    input_size  (H, W) or "HxW", multiples of 32; default: the model's
    batch       "dynamic" (symbolic batch dimension) or a fixed batch size
    form        "custom" (ssmpose-domain SelectiveScan/DeformAggregate nodes) or "portable" (standard ops)
    opset       ONNX opset of the default domain: custom form 18, 19 or 20 (default; GELU as one Gelu node),
                portable form 18 (default) or 19
    fp16        float16 weights and activations (float32 I/O; scan, sampling and LayerNorm statistics
                computed in float32)
    chunk_size  portable form: chunk length of the scan lowering (default: the lowering's, 64 / 64 / 32)
    scan_lowering  portable form: "halving" (default), "doubling" or "matrix" (docs/export.md)
    op_version  ssmpose domain version of the custom form's nodes. 7: as 6, and each VMamba block's chain
                after its scan (out_norm, out_proj, residual add, norm2, MLP, residual add) as one
                ssmpose::VSSBlockTail (not the default: slower on ort-cuda so far, docs/export.md); 6 (default):
                as 5, and SS2D's dt projection inside SelectiveScan2D where its rank is at most 4; 5: one
                SelectiveScan2D node per SS2D, every LayerNorm over the last axis as ssmpose::LayerNorm, the residual Add before a
                LayerNorm fused with it (ssmpose::AddLayerNorm), the LPU's and position convolutions as
                ssmpose::MultiKernelDepthwiseConv, and the offset bias and SiLU around each DeformAggregate
                inside it (TensorRT's plugins stop here); 4: as 5 without the DeformAggregate epilogues; 3:
                SelectiveScan2D and LayerNorm only; 2: SelectiveScan2D only (for runtime libraries built before
                version 3); 1: SS2D's scan as cross-scan -> SelectiveScan -> cross-merge (for libraries built
                before version 2). The graph imports the lowest version that has all its ops. The fusions of 3
                to 7 apply to the custom form only.
    """
    if form not in FORMS:
        raise ExportError(f"export form must be one of {', '.join(FORMS)}, got {form!r}")
    results = export_forms(model, {form: output}, checkpoint=checkpoint, input_size=input_size, batch=batch,
                           opset=opset, fp16=fp16, chunk_size=chunk_size, scan_lowering=scan_lowering,
                           op_version=op_version, check=check)
    return results[form]


def export_forms(model: Union[str, nn.Module], outputs: dict, *, checkpoint=None, input_size=None,
                 batch: Union[str, int] = "dynamic", opset: Optional[int] = None, fp16: bool = False,
                 chunk_size: Optional[int] = None, scan_lowering: Optional[str] = None,
                 op_version: int = DEFAULT_OP_VERSION, check: bool = True) -> dict:
    """Export several forms from one trace: `outputs` maps form -> file (or None); returns form -> ExportResult.

    The portable form is the traced custom form with every ssmpose node replaced by its standard-op
    lowering (`ssmpose.custom_ops.portable.lower_to_portable`), so both forms share everything else.
    Options as in `export_model`; opset None: each form's default.
    """
    from ..custom_ops.portable import DEFAULT_SCAN_LOWERING, check_scan_options
    start = time.perf_counter()
    forms = list(outputs)
    for form in forms:
        if form not in FORMS:
            raise ExportError(f"export form must be one of {', '.join(FORMS)}, got {form!r}")
    if not forms:
        raise ExportError("no export form requested")
    scan_lowering = DEFAULT_SCAN_LOWERING if scan_lowering is None else scan_lowering
    try:
        chunk_size = check_scan_options(chunk_size, scan_lowering)
    except (TypeError, ValueError) as err:
        raise ExportError(str(err)) from None
    opsets = {form: DEFAULT_OPSETS[form] if opset is None else opset for form in forms}
    for form, form_opset in opsets.items():
        _check_opset(form_opset, form)
    if op_version not in OP_VERSIONS:
        raise ExportError(f"op_version must be one of {OP_VERSIONS}, got {op_version!r}")
    batch = parse_batch(batch)
    paths = {form: (Path(out) if out is not None else None) for form, out in outputs.items()}
    for path in paths.values():
        if path is not None and path.is_dir():
            raise ExportError(f"output {path} is a directory; give a file name")
    net, size = resolve_model(model, checkpoint, input_size)
    register_schemas()
    meta_in = getattr(net, "meta", {})
    output_name = "heatmaps" if meta_in.get("task", "pose") == "pose" else "logits"
    name = meta_in.get("model", getattr(net, "name", type(net).__name__))

    stages = {}
    with ops.scan_2d(op_version >= 2):
        # traced below opset 20 (the portable lowerings need it); the custom form is raised to 20 afterwards
        traced = _trace(net, size, batch, fp16, min(min(opsets.values()), GELU_OPSET - 1), output_name, stages)
    # The metadata of both forms records the custom form's domain version, which the fusions decide: the
    # custom form is made first; without it (op_version >= 3), a copy is made and fused to learn the version.
    domain_version = op_domain_version(n.op_type for n in traced.graph if n.domain == DOMAIN)
    forms.sort(key=lambda f: f != "custom")
    if forms[0] != "custom" and op_version >= LAYER_NORM_DOMAIN_VERSION:
        probe = _finish(_copy_ir(traced), "custom", chunk_size, scan_lowering, {})
        use_block_diagonal_matmul(probe)   # as for the custom form below: the dt projection fusion needs it
        _fuse_custom(probe, op_version)
        domain_version = _custom_domain_version(probe)
    shared_s = time.perf_counter() - start
    results = {}
    for i, form in enumerate(forms):
        t0 = time.perf_counter()
        ir_model = traced if i == len(forms) - 1 else _copy_ir(traced)
        form_stages = dict(stages)
        proto = _finish(ir_model, form, chunk_size, scan_lowering, form_stages)
        use_block_diagonal_matmul(proto)
        if opsets[form] >= GELU_OPSET:
            fuse_erf_gelu(proto)
        if form == "custom":
            _fuse_custom(proto, op_version)
            domain_version = _custom_domain_version(proto)
        _normalise(proto, name, form, opsets[form])
        if form == "portable" and _portable_violations(proto):
            raise ExportError(f"portable export produced non-standard nodes: {_portable_violations(proto)}")
        metadata = build_metadata(meta_in, input_size=size, batch=batch, form=form, opset=opsets[form],
                                  dtype="float16" if fp16 else "float32", io_dtype="float32",
                                  chunk_size=chunk_size if form == "portable" else None,
                                  scan_lowering=scan_lowering if form == "portable" else None,
                                  input_name=INPUT_NAME, output_name=output_name,
                                  op_domain_version=domain_version)
        write_metadata(proto, metadata)
        if check:
            t = time.perf_counter()
            onnx.checker.check_model(proto, full_check=True)
            form_stages["check_s"] = time.perf_counter() - t
        if paths[form] is not None:
            t = time.perf_counter()
            _atomic_write(paths[form], proto.SerializeToString(deterministic=True))
            form_stages["write_s"] = time.perf_counter() - t
        seconds = shared_s + time.perf_counter() - t0
        results[form] = ExportResult(proto, paths[form], metadata, seconds, form_stages)
    return {form: results[form] for form in outputs}


def _fuse_custom(proto: onnx.ModelProto, op_version: int) -> None:
    """The custom form's fusions of `op_version` (export/fusions.py): 3: LayerNorm; 4: also MultiKernelDepthwiseConv
    and AddLayerNorm (which fuses the Adds before LayerNorm nodes, so it runs after the LayerNorm fusion); 5: also
    DeformAggregate's offset bias and SiLU; 6: also SelectiveScan2D's dt projection; 7: also VSSBlockTail (after the
    AddLayerNorm fusion, whose nodes it matches)."""
    if op_version >= LAYER_NORM_DOMAIN_VERSION:
        use_layer_norm_op(proto)
    if op_version >= FUSED_DOMAIN_VERSION:
        use_depthwise_conv_op(proto)
        use_add_layer_norm_op(proto)
    if op_version >= EPILOGUE_DOMAIN_VERSION:
        use_deform_aggregate_epilogues(proto)
    if op_version >= DT_PROJECTION_DOMAIN_VERSION:
        use_scan_dt_projection(proto)
    if op_version >= VSS_TAIL_DOMAIN_VERSION:
        use_vss_block_tail_op(proto, max_channels=EXPORT_VSS_TAIL_MAX_CHANNELS)


def _custom_domain_version(proto: onnx.ModelProto) -> int:
    return nodes_domain_version(n for n in proto.graph.node if n.domain == DOMAIN)


def _check_opset(opset, form: str) -> None:
    supported = SUPPORTED_OPSETS[form]
    if opset not in supported:
        why = ("; GridSample must stay below opset 20 (TensorRT's parser turns GridSample into "
               "nearest-neighbour sampling from opset 20)" if form == "portable" else "")
        raise ExportError(f"opset {opset} is not supported for the {form} form; choose one of {supported} "
                          f"(torch.onnx's exporter emits opset >= 18{why})")


def _trace(net: nn.Module, size, batch, fp16: bool, opset: int, output_name: str, stages: dict):
    """torch.export + torch.onnx translation with ssmpose-domain nodes -> onnx_ir Model (not optimised)."""
    from .translations import custom_translation_table
    module = prepare_module(net, fp16)
    example_batch = 2 if batch == "dynamic" else batch   # 1 would be specialised by torch.export
    example = torch.zeros(example_batch, *input_shape(net, size))
    dynamic_shapes = {"images": {0: torch.export.Dim(BATCH_DIM)}} if batch == "dynamic" else None
    t = time.perf_counter()
    with _quiet(), torch.no_grad():
        program = torch.export.export(module, (example,), dynamic_shapes=dynamic_shapes, strict=False)
    stages["torch_export_s"] = time.perf_counter() - t
    t = time.perf_counter()
    with _quiet():
        onnx_program = torch.onnx.export(
            program, (example,), dynamo=True, opset_version=int(opset), optimize=False, verbose=False,
            input_names=[INPUT_NAME], output_names=[output_name],
            custom_translation_table=custom_translation_table())
    stages["translate_s"] = time.perf_counter() - t
    return onnx_program.model


def _copy_ir(model):
    import onnx_ir as ir
    return ir.serde.deserialize_model(ir.serde.serialize_model(model))


def _finish(ir_model, form: str, chunk_size: int, scan_lowering: str, stages: dict) -> onnx.ModelProto:
    """Lower (portable form), optimise, and return the ModelProto."""
    import onnx_ir as ir

    from ..custom_ops.portable import lower_to_portable
    from .optimize import optimize_model
    if form == "portable":
        t = time.perf_counter()
        lower_to_portable(ir_model, chunk_size, scan_lowering)
        stages["lower_s"] = time.perf_counter() - t
    t = time.perf_counter()
    with _quiet():
        optimize_model(ir_model)
    stages["optimize_s"] = time.perf_counter() - t
    t = time.perf_counter()
    # record the shapes of the values the lowering created (the traced ones have them already)
    proto = onnx.shape_inference.infer_shapes(ir.serde.serialize_model(ir_model))
    stages["shape_inference_s"] = time.perf_counter() - t
    return proto


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)   # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
