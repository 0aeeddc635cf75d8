"""TensorRT plugins (custom_ops/csrc/tensorrt) and the `tensorrt` backend (runtimes/tensorrt_backend.py).

Three layers, each skipping with its reason where what it needs is absent:

1. Stand-in unit tests (need TensorRT's public headers, a C++ compiler, CMake and the CUDA headers; no TensorRT
   runtime, no GPU): the plugin folder is configured on its own into a temporary build, which compiles
   libssmpose_trt.so and ssmpose_trt_unit_tests (the real plugin sources against fakes of IExprBuilder /
   IDimensionExpr and hand-made field collections and tensor descriptors). The program's checks are asserted here,
   its output-size expressions are compared with the Python reference, SelectiveScan2D's shape rules with
   ops.check_selective_scan_2d_args (same verdicts, same words), LayerNorm's, AddLayerNorm's and
   MultiKernelDepthwiseConv's (fields included) and VSSBlockTail's with their ONNX schemas' shape inference (same
   verdicts; VSSBlockTail's messages word for word), its field
   names and types with the ONNX schemas, and
   the library's exported symbols and dependencies are inspected. Headers are looked up in
   $SSMPOSE_TENSORRT_INCLUDE_DIR, $TENSORRT_ROOT/include, the project build's CMake cache, an installed kernel_lens
   package and <repo>/build/third_party/kernel_lens (docs/tensorrt.md). With SSMPOSE_REQUIRE_TRT_PLUGINS=1 (CI)
   their absence is a failure, not a skip.
2. Backend helpers that need no TensorRT (cache key, file digest, batch range, error messages).
3. Engine tests (need the tensorrt package, a CUDA device and the project build's libssmpose_trt.so with
   libssmpose_kernels_cuda.so): single-node custom-form graphs built into engines and compared with the reference.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ssmpose import runtimes
from ssmpose.custom_ops import reference as ref
from ssmpose.runtimes import tensorrt_backend as trt_backend

REPO = Path(__file__).resolve().parents[1]
PLUGIN_DIR = REPO / "custom_ops" / "csrc" / "tensorrt"
REQUIRED = os.environ.get("SSMPOSE_REQUIRE_TRT_PLUGINS") == "1"
EXPORTED = {"getCreators", "setLoggerFinder", "ssmpose_trt_version", "ssmpose_trt_kernels_abi_version",
            "ssmpose_trt_tensorrt_version", "ssmpose_trt_load_kernels"}


def _skip_or_fail(reason: str):
    if REQUIRED:
        pytest.fail(f"SSMPOSE_REQUIRE_TRT_PLUGINS=1 but {reason}")
    pytest.skip(reason)


def _has_headers(folder) -> bool:
    return folder is not None and (Path(folder) / "NvInferRuntime.h").is_file()


def find_tensorrt_headers():
    """(folder with TensorRT's headers or None, where it was looked for)."""
    tried = []
    candidates = []
    if os.environ.get("SSMPOSE_TENSORRT_INCLUDE_DIR"):
        candidates.append(Path(os.environ["SSMPOSE_TENSORRT_INCLUDE_DIR"]))
    if os.environ.get("TENSORRT_ROOT"):
        candidates.append(Path(os.environ["TENSORRT_ROOT"]) / "include")
    build = REPO / "build"
    if build.is_dir():
        for cache in sorted(build.glob("*/CMakeCache.txt")) + sorted(build.glob("CMakeCache.txt")):
            m = re.search(r"^SSMPOSE_TENSORRT_INCLUDE_DIR:\w+=(.+)$", cache.read_text(errors="replace"), re.M)
            if m and m.group(1).strip():
                candidates.append(Path(m.group(1).strip()))
    spec = importlib.util.find_spec("kernel_lens")  # finds the package without importing it
    if spec is not None and spec.origin:
        candidates.append(Path(spec.origin).parent / "include" / "tensorrt")
    candidates.append(build / "third_party" / "kernel_lens" / "kernel_lens" / "include" / "tensorrt")
    for c in candidates:
        tried.append(str(c))
        if _has_headers(c):
            return c, tried
    return None, tried


@pytest.fixture(scope="module")
def unit_build(tmp_path_factory):
    """Standalone CMake build of the plugin folder: (unit-test program, libssmpose_trt.so)."""
    headers, tried = find_tensorrt_headers()
    if headers is None:
        _skip_or_fail("no TensorRT headers (NvInferRuntime.h) found; looked in: " + ", ".join(tried) +
                      " (set SSMPOSE_TENSORRT_INCLUDE_DIR; docs/tensorrt.md)")
    if shutil.which("cmake") is None:
        _skip_or_fail("cmake is not installed")
    out = tmp_path_factory.mktemp("trt_build")
    configure = subprocess.run(["cmake", "-S", str(PLUGIN_DIR), "-B", str(out), "-DCMAKE_BUILD_TYPE=Release",
                                f"-DSSMPOSE_TENSORRT_INCLUDE_DIR={headers}"], capture_output=True, text=True)
    if configure.returncode != 0:
        pytest.fail(f"configuring {PLUGIN_DIR} failed:\n{configure.stdout}\n{configure.stderr}")
    skipped = re.search(r"libssmpose_trt\) not built: (.*)", configure.stdout)
    if skipped:
        _skip_or_fail(f"the plugin folder configured to nothing: {skipped.group(1)}")
    build = subprocess.run(["cmake", "--build", str(out), "-j2"], capture_output=True, text=True)
    if build.returncode != 0:
        pytest.fail(f"building the TensorRT plugins failed:\n{build.stdout[-6000:]}\n{build.stderr[-6000:]}")
    assert "warning" not in (build.stdout + build.stderr).lower(), build.stdout + build.stderr
    program, library = out / "ssmpose_trt_unit_tests", out / "lib" / "libssmpose_trt.so"
    assert program.is_file() and library.is_file()
    return program, library


@pytest.fixture(scope="module")
def unit_results(unit_build):
    program, _ = unit_build
    run = subprocess.run([str(program)], capture_output=True, text=True, timeout=60)
    results, fields = {}, {}
    for line in run.stdout.splitlines():
        if line.startswith("ok "):
            results[line[3:]] = None
        elif line.startswith("FAIL "):
            name, _, why = line[5:].partition(": ")
            results[name] = why
        elif line.startswith("fields "):
            parts = line.split()
            fields[parts[1]] = [tuple(p.split(":")) for p in parts[2:]]
    return {"returncode": run.returncode, "stdout": run.stdout, "stderr": run.stderr, "results": results,
            "fields": fields}


# ------------------------------------------------------------------------------------------------
# 1. Stand-in unit tests


def test_unit_program_passes(unit_results):
    failed = {k: v for k, v in unit_results["results"].items() if v is not None}
    assert not failed, failed
    assert unit_results["returncode"] == 0, unit_results["stdout"][-3000:] + unit_results["stderr"]
    assert re.search(r"^passed (\d+) failed 0$", unit_results["stdout"], re.M)
    assert len(unit_results["results"]) >= 250


@pytest.mark.parametrize("group", ["creators.", "scan.fields.", "scan.create.", "deform.fields.", "deform.create.",
                                   "plugin.", "formats.", "types.", "scan.shapes.", "deform.shapes.", "configure.",
                                   "runtime.", "serialize.",
                                   # SelectiveScan2D, in every area
                                   "creators.SelectiveScan2D.", "scan2d.fields.", "scan2d.create.", "plugin.scan2d_",
                                   "formats.scan2d_", "types.scan2d_", "scan2d.shapes.", "scan2d.shapes.partial_",
                                   "configure.scan2d_", "runtime.scan2d_", "serialize.scan2d_",
                                   # LayerNorm, in every area
                                   "creators.LayerNorm.", "layernorm.fields.", "layernorm.create.",
                                   "plugin.layernorm_", "formats.layernorm_", "types.layernorm_", "layernorm.shapes.",
                                   "configure.layernorm_", "runtime.layernorm_", "serialize.layernorm_",
                                   # AddLayerNorm, in every area
                                   "creators.AddLayerNorm.", "addlayernorm.fields.", "addlayernorm.create.",
                                   "plugin.addlayernorm_", "formats.addlayernorm_", "types.addlayernorm_",
                                   "addlayernorm.shapes.", "configure.addlayernorm_", "runtime.addlayernorm_",
                                   "serialize.addlayernorm_",
                                   # MultiKernelDepthwiseConv, in every area
                                   "creators.MultiKernelDepthwiseConv.", "dwconv.fields.", "dwconv.create.",
                                   "plugin.dwconv_", "formats.dwconv_", "types.dwconv_", "dwconv.shapes.",
                                   "configure.dwconv_", "runtime.dwconv_", "serialize.dwconv_",
                                   # VSSBlockTail, in every area
                                   "creators.VSSBlockTail.", "vsstail.fields.", "vsstail.create.",
                                   "plugin.vsstail_", "formats.vsstail_", "types.vsstail_", "vsstail.shapes.",
                                   "vsstail.shapes.bad_partial_", "configure.vsstail_", "runtime.vsstail_",
                                   "runtime.vsstail_launch_", "serialize.vsstail_"])
def test_unit_group(unit_results, group):
    """Each area is covered by at least one check, and none of its checks failed."""
    checks = {k: v for k, v in unit_results["results"].items() if k.startswith(group)}
    assert checks, f"no checks named {group}*"
    failed = {k: v for k, v in checks.items() if v is not None}
    assert not failed, failed


def test_plugin_fields_are_the_onnx_attributes(unit_results):
    """The creators' field names (what TensorRT's ONNX parser looks up on the node) are the operators' ONNX
    attributes, minus the TensorRT-only plugin_version / plugin_namespace, with matching types (the parser passes
    INT as int32, FLOAT as float32, INTS as an int32 array, STRING as char)."""
    import onnx
    from onnx import AttributeProto

    from ssmpose.export import schemas
    schemas.register_schemas()
    kinds = {AttributeProto.INT: "int32", AttributeProto.FLOAT: "float32", AttributeProto.INTS: "int32s",
             AttributeProto.STRING: "char"}
    assert set(unit_results["fields"]) == set(schemas.OP_SINCE_VERSION)  # every op of the domain has a plugin
    for op in schemas.OP_SINCE_VERSION:   # each op's latest schema (DeformAggregate: version 5's activation)
        schema = onnx.defs.get_schema(op, schemas.LATEST_DOMAIN_VERSION, schemas.DOMAIN)
        expected = {name: kinds.get(attr.type, "other") for name, attr in schema.attributes.items()
                    if name not in ("plugin_version", "plugin_namespace")}
        assert dict(unit_results["fields"][op]) == expected


def test_plugin_names_are_the_backends():
    """The backend checks TensorRT's registry for every plugin the library declares, and every op of the domain."""
    from ssmpose.export import schemas
    assert set(trt_backend.PLUGIN_NAMES) == set(schemas.OP_SINCE_VERSION)


OUTSIZE_CASES = [
    # H, W, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w
    (64, 48, 3, 3, 1, 1, 1, 1, 1, 1),
    (64, 48, 3, 3, 2, 2, 1, 1, 1, 1),
    (63, 47, 3, 3, 2, 2, 1, 1, 1, 1),
    (17, 9, 5, 3, 3, 2, 0, 2, 2, 1),
    (1, 1, 1, 1, 1, 1, 0, 0, 1, 1),
    (2, 3, 3, 3, 1, 1, 0, 0, 1, 1),   # Hout = 0: an empty output
    (1, 5, 3, 3, 1, 1, 0, 0, 1, 1),   # Hout = -1: refused
    (7, 7, 7, 1, 4, 1, 3, 0, 3, 1),
    (100, 33, 4, 2, 3, 5, 2, 1, 2, 3),
    (5, 5, 2, 2, 7, 7, 9, 9, 1, 1),
]


@pytest.mark.parametrize("case", OUTSIZE_CASES, ids=lambda c: "x".join(map(str, c)))
def test_output_size_expression_matches_reference(unit_build, case):
    """The plugin's output size, from constant dims and from its IExprBuilder expression (kFLOOR_DIV) evaluated at
    H, W, equals reference.deform_output_size; a negative size is refused with a message."""
    program, _ = unit_build
    run = subprocess.run([str(program), "outsize", *map(str, case)], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    out_h, out_w = ref.deform_output_size(*case)
    if out_h < 0 or out_w < 0:
        assert run.stdout.startswith("error: DeformAggregate (layer 'o'): value's image (H, W)"), run.stdout
    else:
        assert [int(v) for v in run.stdout.split()] == [out_h, out_w, out_h, out_w]


SCAN2D_GOOD = {"x": (2, 5, 3, 6), "delta": (2, 5, 3, 24), "A": (24, 3), "Bs": (2, 5, 3, 4, 3),
               "Cs": (2, 5, 3, 4, 3), "Ds": (24,), "delta_bias": (24,)}
SCAN2D_CASES = [
    # id, changed shapes, number of inputs (5: no Ds / delta_bias, 6: Ds, 7: both)
    ("valid", {}, 7),
    ("valid-no-optional", {}, 5),
    ("valid-Ds-only", {}, 6),
    ("valid-1x1", {"x": (1, 1, 1, 2), "delta": (1, 1, 1, 8), "A": (8, 16), "Bs": (1, 1, 1, 4, 16),
                   "Cs": (1, 1, 1, 4, 16), "Ds": (8,), "delta_bias": (8,)}, 7),
    ("empty-batch", {"x": (0, 5, 3, 6), "delta": (0, 5, 3, 24), "Bs": (0, 5, 3, 4, 3), "Cs": (0, 5, 3, 4, 3)}, 7),
    ("empty-D", {"x": (2, 5, 3, 0), "delta": (2, 5, 3, 0), "A": (0, 3), "Ds": (0,), "delta_bias": (0,)}, 7),
    ("x-rank-3", {"x": (2, 5, 3)}, 7),
    ("x-rank-5", {"x": (2, 5, 3, 6, 1)}, 5),
    ("Bs-rank", {"Bs": (2, 15, 4, 3)}, 7),
    ("Bs-width", {"Bs": (2, 5, 4, 4, 3), "Cs": (2, 5, 4, 4, 3)}, 7),
    ("Bs-batch", {"Bs": (1, 5, 3, 4, 3)}, 7),
    ("directions-2", {"Bs": (2, 5, 3, 2, 3), "Cs": (2, 5, 3, 2, 3), "delta": (2, 5, 3, 12), "A": (12, 3)}, 5),
    ("directions-8", {"Bs": (2, 5, 3, 8, 3), "Cs": (2, 5, 3, 8, 3)}, 7),
    ("Cs-dstate", {"Cs": (2, 5, 3, 4, 2)}, 7),
    ("Cs-rank", {"Cs": (2, 5, 3, 4)}, 7),
    ("delta-channels", {"delta": (2, 5, 3, 6)}, 7),
    ("delta-rank", {"delta": (2, 15, 24)}, 7),
    ("delta-transposed", {"delta": (2, 3, 5, 24)}, 7),
    ("A-dstate", {"A": (24, 4)}, 7),
    ("A-rows", {"A": (6, 3)}, 7),
    ("A-rank", {"A": (24,)}, 7),
    ("Ds", {"Ds": (6,)}, 6),
    ("delta_bias", {"delta_bias": (24, 1)}, 7),
    ("dstate-17", {"A": (24, 17), "Bs": (2, 5, 3, 4, 17), "Cs": (2, 5, 3, 4, 17)}, 7),
]


@pytest.mark.parametrize("case", SCAN2D_CASES, ids=lambda c: c[0])
def test_scan2d_shape_rules_match_ops(unit_build, case):
    """SelectiveScan2D's shape rules in the plugin, from constant dims (getOutputShapes) and at run time
    (onShapeChange), give the verdict of ops.check_selective_scan_2d_args in the same words. The kernels' limit on
    N (1..16), which the Python check leaves to the kernels, is the plugin's own message (the ONNX Runtime
    adapter's words)."""
    import torch

    from ssmpose.custom_ops import ops
    program, _ = unit_build
    _, changes, count = case
    shapes = {**SCAN2D_GOOD, **changes}
    names = list(SCAN2D_GOOD)[:count]
    run = subprocess.run([str(program), "scan2d", *(",".join(map(str, shapes[n])) for n in names)],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["build", "run"], run.stdout
    tensors = {n: torch.empty(shapes[n], device="meta") if n in names else None for n in SCAN2D_GOOD}
    try:
        ops.check_selective_scan_2d_args(*tensors.values())
        expected = None
    except ValueError as err:
        expected = str(err)
        assert expected.startswith("SelectiveScan2D: ")
    if expected is None and shapes["A"][1] > 16:
        expected = f"SelectiveScan2D: dstate N = Bs.shape[4] must be in 1..16, got {shapes['A'][1]}"
    for line in lines:
        stage = line.split()[0]
        if expected is None:
            assert line == f"{stage} " + " ".join(map(str, shapes["x"])), line
        else:
            assert line == f"{stage} error: " + expected.replace("SelectiveScan2D: ", "SelectiveScan2D (layer 'c'): ",
                                                                 1), line


LAYER_NORM_CASES = [
    # id, X, weight, bias shapes; None: the ONNX schema's verdict, else the plugin's own (stricter) message
    ("rank-3", (2, 5, 96), (96,), (96,), None),
    ("rank-1", (768,), (768,), (768,), None),
    ("rank-5", (1, 2, 3, 4, 32), (32,), (32,), None),
    ("one-channel", (7, 1), (1,), (1,), None),
    ("no-rows", (0, 96), (96,), (96,), None),
    ("no-rows-inner", (2, 0, 32), (32,), (32,), None),
    ("scalar", (), (96,), (96,), None),
    ("weight-length", (2, 5, 96), (32,), (96,), None),
    ("bias-length", (2, 5, 96), (96,), (95,), None),
    ("weight-rank", (2, 5, 96), (1, 96), (96,), None),
    ("bias-rank", (2, 5, 96), (96,), (96, 1), None),
    ("weight-scalar", (2, 5, 96), (), (96,), None),
    ("no-channels", (4, 0), (0,), (0,), None),
]


@pytest.mark.parametrize("case", LAYER_NORM_CASES, ids=lambda c: c[0])
def test_layer_norm_shape_rules_match_schema(unit_build, case):
    """LayerNorm's shape rules in the plugin, from constant dims (getOutputShapes) and at run time (onShapeChange),
    give the verdict of the ONNX schema's shape inference (export/schemas.py), and Y's shape when accepted."""
    import onnx
    from onnx import TensorProto, helper

    from ssmpose.export import schemas
    program, _ = unit_build
    _, x, weight, bias, own_message = case
    run = subprocess.run([str(program), "layernorm", *(",".join(map(str, s)) for s in (x, weight, bias))],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["build", "run"], run.stdout

    schemas.register_schemas()
    node = helper.make_node("LayerNorm", ["X", "weight", "bias"], ["Y"], domain=schemas.DOMAIN, epsilon=1e-5,
                            plugin_version="1", plugin_namespace="ssmpose")
    graph = helper.make_graph([node], "ln", [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s))
                                             for n, s in (("X", x), ("weight", weight), ("bias", bias))],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid(schemas.DOMAIN,
                                                                        schemas.OP_SINCE_VERSION["LayerNorm"])])
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        schema_ok = True
        y = [d.dim_value for d in inferred.graph.output[0].type.tensor_type.shape.dim]
        assert y == list(x)
    except onnx.shape_inference.InferenceError:
        schema_ok = False
    for line in lines:
        stage = line.split()[0]
        if own_message is not None:
            assert schema_ok and line == f"{stage} error: LayerNorm (layer 'c'): {own_message}", line
        elif schema_ok:
            assert line == " ".join(map(str, (stage, *x))), line
        else:
            assert line.startswith(f"{stage} error: LayerNorm (layer 'c'): "), line


def _schema_verdict(op, inputs, outputs, attrs):
    """(accepted, the first output's dims) by the ONNX schema's strict shape inference of one `op` node whose inputs
    have the given shapes."""
    import onnx
    from onnx import TensorProto, helper

    from ssmpose.export import schemas
    schemas.register_schemas()
    if op not in schemas.OP_SINCE_VERSION:
        pytest.skip(f"export/schemas.py has no schema of {op}")
    node = helper.make_node(op, [n for n, _ in inputs], outputs, domain=schemas.DOMAIN, plugin_version="1",
                            plugin_namespace="ssmpose", **attrs)
    graph = helper.make_graph([node], "one", [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s))
                                              for n, s in inputs],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid(schemas.DOMAIN, schemas.OP_SINCE_VERSION[op])])
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except onnx.shape_inference.InferenceError:
        return False, None
    return True, [[d.dim_value for d in out.type.tensor_type.shape.dim] for out in inferred.graph.output]


ADD_LAYER_NORM_CASES = [
    # id, X, R, weight, bias shapes
    ("rank-3", (2, 5, 96), (2, 5, 96), (96,), (96,)),
    ("rank-1", (768,), (768,), (768,), (768,)),
    ("one-channel", (7, 1), (7, 1), (1,), (1,)),
    ("no-rows", (0, 96), (0, 96), (96,), (96,)),
    ("scalar", (), (), (96,), (96,)),
    ("R-broadcast", (2, 5, 96), (1, 5, 96), (96,), (96,)),
    ("R-rank", (2, 5, 96), (5, 96), (96,), (96,)),
    ("R-channels", (2, 5, 96), (2, 5, 95), (96,), (96,)),
    ("weight-length", (2, 5, 96), (2, 5, 96), (32,), (96,)),
    ("bias-rank", (2, 5, 96), (2, 5, 96), (96,), (96, 1)),
    ("no-channels", (4, 0), (4, 0), (0,), (0,)),
]


@pytest.mark.parametrize("case", ADD_LAYER_NORM_CASES, ids=lambda c: c[0])
def test_add_layer_norm_shape_rules_match_schema(unit_build, case):
    """AddLayerNorm's shape rules in the plugin, from constant dims (getOutputShapes) and at run time
    (onShapeChange), give the verdict of the ONNX schema's shape inference, and Y's and S's shape (X's) when
    accepted."""
    program, _ = unit_build
    _, x, r, weight, bias = case
    run = subprocess.run([str(program), "addlayernorm", *(",".join(map(str, s)) for s in (x, r, weight, bias))],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["build", "run"], run.stdout
    ok, outputs = _schema_verdict("AddLayerNorm", [("X", x), ("R", r), ("weight", weight), ("bias", bias)],
                                  ["Y", "S"], {"epsilon": 1e-5})
    if ok:
        assert outputs == [list(x), list(x)]
    for line in lines:
        stage = line.split()[0]
        if ok:
            assert line == " ".join(map(str, (stage, *x))), line
        else:
            assert line.startswith(f"{stage} error: AddLayerNorm (layer 'c'): "), line


DWCONV_GOOD = {"X": (2, 9, 7, 32), "weight": (32, 9, 9), "bias": (32,), "kernel_sizes": [3, 5, 7, 9],
               "group_channels": [8, 8, 8, 8], "shuffle_groups": 4, "activation": "gelu"}
DWCONV_CASES = [
    # id, changes to DWCONV_GOOD; None: the schema's verdict, else the plugin's own (stricter) message
    ("lpu", {}, None),
    ("one-group", {"X": (1, 4, 6, 5), "weight": (5, 3, 3), "bias": (5,), "kernel_sizes": [3], "group_channels": [5],
                   "shuffle_groups": 1, "activation": "none"}, None),
    ("wide-weight", {"weight": (32, 11, 11)}, None),
    ("k15", {"X": (2, 3, 20, 16), "weight": (16, 15, 15), "bias": (16,), "kernel_sizes": [1, 15, 7],
             "group_channels": [1, 2, 13], "shuffle_groups": 2}, None),
    ("empty-batch", {"X": (0, 9, 7, 32)}, None),
    ("empty-image", {"X": (2, 0, 7, 32)}, None),
    ("x-rank-3", {"X": (2, 9, 32)}, None),
    ("x-nchw", {"X": (2, 32, 9, 7)}, None),
    ("channels", {"X": (2, 9, 7, 30)}, None),
    ("weight-rank", {"weight": (32, 81)}, None),
    ("weight-not-square", {"weight": (32, 9, 7)}, None),
    ("weight-even", {"weight": (32, 10, 10)}, None),
    ("weight-17", {"weight": (32, 17, 17)}, None),
    ("weight-small", {"weight": (32, 7, 7)}, None),
    ("bias-rank", {"bias": (32, 1)}, None),
    ("weight-channels", {"weight": (16, 9, 9)},
     "weight must be (C, K, K) = (32, K, K) with K odd in [1, 15], got (16, 9, 9)"),
    ("bias-length", {"bias": (31,)}, "bias must be (C,) = (32,), got (31,)"),
    # fields
    ("kernel-even", {"kernel_sizes": [3, 4, 7, 9]}, None),
    ("kernel-17", {"kernel_sizes": [3, 5, 7, 17]}, None),
    ("lengths", {"kernel_sizes": [3, 5, 7]}, None),
    ("groups-17", {"X": (2, 9, 7, 17), "weight": (17, 3, 3), "bias": (17,), "kernel_sizes": [3] * 17,
                   "group_channels": [1] * 17, "shuffle_groups": 1}, None),
    ("group-zero", {"group_channels": [8, 0, 8, 16]}, None),
    ("shuffle-3", {"shuffle_groups": 3}, None),
    ("shuffle-0", {"shuffle_groups": 0}, None),
    ("activation-relu", {"activation": "relu"}, None),
]


@pytest.mark.parametrize("case", DWCONV_CASES, ids=lambda c: c[0])
def test_dwconv_rules_match_schema(unit_build, case):
    """MultiKernelDepthwiseConv's field rules (the creator) and shape rules (getOutputShapes, onShapeChange) give
    the verdict of the ONNX schema's inference over the node's attributes and input shapes, and Y's shape (X's)
    when accepted. The schema does not compare weight's and bias's channels with C; the plugin does."""
    program, _ = unit_build
    _, changes, own_message = case
    c = {**DWCONV_GOOD, **changes}
    args = [",".join(map(str, c[k])) for k in ("X", "weight", "bias", "kernel_sizes", "group_channels")]
    run = subprocess.run([str(program), "dwconv", *args, str(c["shuffle_groups"]), c["activation"]],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    stages = [line.split()[0] for line in lines]
    assert stages in (["create"], ["build", "run"]), run.stdout
    ok, outputs = _schema_verdict("MultiKernelDepthwiseConv", [(k, c[k]) for k in ("X", "weight", "bias")], ["Y"],
                                  {k: c[k] for k in ("kernel_sizes", "group_channels", "shuffle_groups",
                                                     "activation")})
    if ok:
        assert outputs == [list(c["X"])]
    for line in lines:
        stage = line.split()[0]
        if own_message is not None:
            assert ok and line == f"{stage} error: MultiKernelDepthwiseConv (layer 'c'): {own_message}", line
        elif ok:
            assert line == " ".join(map(str, (stage, *c["X"]))), line
        else:
            assert line.startswith(f"{stage} error: MultiKernelDepthwiseConv (layer 'c'): "), line


VSS_TAIL_INPUTS = ("Y", "R", "out_norm_weight", "out_norm_bias", "out_proj", "norm_weight", "norm_bias",
                   "fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias")


def _vss_tail_shapes(lead=(2, 5), inner=96, channels=48, hidden=192):
    """The eleven input shapes of a VSSBlockTail node: Y (*lead, D), R (*lead, C) and the parameters."""
    d, c, h = inner, channels, hidden
    return {"Y": (*lead, d), "R": (*lead, c), "out_norm_weight": (d,), "out_norm_bias": (d,), "out_proj": (d, c),
            "norm_weight": (c,), "norm_bias": (c,), "fc1_weight": (c, h), "fc1_bias": (h,), "fc2_weight": (h, c),
            "fc2_bias": (c,)}


VSS_TAIL_CASES = [
    # id, input shapes, None (accepted: Z has R's shape) or the plugin's message after "VSSBlockTail (layer 'c'): "
    ("hrvmamba-stage", _vss_tail_shapes(), None),
    ("rank-4", _vss_tail_shapes((2, 16, 12), 192, 96, 384), None),
    ("rank-1", _vss_tail_shapes((), 64, 32, 128), None),
    ("no-rows", _vss_tail_shapes((0,)), None),
    ("no-rows-inner", _vss_tail_shapes((2, 0, 3), 8, 8, 8), None),
    ("widths-1", _vss_tail_shapes((7,), 1, 1, 1), None),
    ("limits", _vss_tail_shapes((3,), 1024, 512, 1024), None),
    ("C-above-D", _vss_tail_shapes((33,), 24, 40, 72), None),
    ("Y-scalar", {**_vss_tail_shapes(), "Y": ()},
     "Y must have rank >= 1 (its last axis holds the D channels), got shape ()"),
    ("R-scalar", {**_vss_tail_shapes(), "R": ()},
     "R must have rank >= 1 (its last axis holds the C channels), got shape ()"),
    ("R-rows", {**_vss_tail_shapes(), "R": (2, 4, 48)},
     "Y and R must agree in every dimension but the last, got Y (2, 5, 96) and R (2, 4, 48)"),
    ("R-broadcast", {**_vss_tail_shapes(), "R": (1, 5, 48)},
     "Y and R must agree in every dimension but the last, got Y (2, 5, 96) and R (1, 5, 48)"),
    ("R-rank", {**_vss_tail_shapes(), "R": (10, 48)},
     "Y and R must agree in every dimension but the last, got Y (2, 5, 96) and R (10, 48)"),
    ("out_norm_weight", {**_vss_tail_shapes(), "out_norm_weight": (95,)},
     "out_norm_weight must be (D,) = (96,), got (95,) (D = 96 from Y)"),
    ("out_norm_bias-rank", {**_vss_tail_shapes(), "out_norm_bias": (96, 1)},
     "out_norm_bias must be (D,) = (96,), got (96, 1) (D = 96 from Y)"),
    ("out_proj-transposed", {**_vss_tail_shapes(), "out_proj": (48, 96)},
     "out_proj must be (D, C) = (96, 48), got (48, 96) (D = 96 from Y, C = 48 from R)"),
    ("norm_weight", {**_vss_tail_shapes(), "norm_weight": (96,)},
     "norm_weight must be (C,) = (48,), got (96,) (C = 48 from R)"),
    ("norm_bias-scalar", {**_vss_tail_shapes(), "norm_bias": ()},
     "norm_bias must be (C,) = (48,), got () (C = 48 from R)"),
    ("fc1_weight-transposed", {**_vss_tail_shapes(), "fc1_weight": (192, 48)},
     "fc1_weight must be (C, H) = (48, ?), got (192, 48) (C = 48 from R)"),
    ("fc1_bias", {**_vss_tail_shapes(), "fc1_bias": (191,)},
     "fc1_bias must be (H,) = (192,), got (191,) (H = 192 from fc1_weight)"),
    ("fc2_weight-transposed", {**_vss_tail_shapes(), "fc2_weight": (48, 192)},
     "fc2_weight must be (H, C) = (192, 48), got (48, 192) (H = 192 from fc1_weight, C = 48 from R)"),
    ("fc2_bias", {**_vss_tail_shapes(), "fc2_bias": (192,)},
     "fc2_bias must be (C,) = (48,), got (192,) (C = 48 from R)"),
    # the kernels' limits (export/schemas.py vss_tail_shape_error's words)
    ("D-2048", _vss_tail_shapes(inner=2048), "D (Y's channels) = 2048 is outside 1..1024"),
    ("C-640", _vss_tail_shapes(channels=640), "C (R's channels) = 640 is outside 1..512"),
    ("H-1025", _vss_tail_shapes(hidden=1025), "H (fc1's outputs) = 1025 is outside 1..1024"),
    ("D-0", _vss_tail_shapes(inner=0), "D (Y's channels) = 0 is outside 1..1024"),
    ("C-0", _vss_tail_shapes(channels=0), "C (R's channels) = 0 is outside 1..512"),
    ("H-0", _vss_tail_shapes(hidden=0), "H (fc1's outputs) = 0 is outside 1..1024"),
]


@pytest.mark.parametrize("case", VSS_TAIL_CASES, ids=lambda c: c[0])
def test_vss_tail_shape_rules_match_schema(unit_build, case):
    """VSSBlockTail's shape rules in the plugin, from constant dims (getOutputShapes) and at run time
    (onShapeChange): the expected message word for word, the verdict of the ONNX schema's shape inference, and Z's
    shape (R's) when accepted. The limits are in the schema's own words (vss_tail_shape_error)."""
    from ssmpose.export import schemas
    program, _ = unit_build
    _, shapes, message = case
    run = subprocess.run([str(program), "vsstail", *(",".join(map(str, shapes[n])) for n in VSS_TAIL_INPUTS)],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["build", "run"], run.stdout
    assert tuple(schemas.VSS_TAIL_INPUTS) == VSS_TAIL_INPUTS
    ok, outputs = _schema_verdict("VSSBlockTail", [(n, shapes[n]) for n in VSS_TAIL_INPUTS], ["Z"],
                                  {"epsilon": 1e-5})
    assert ok == (message is None), (ok, message)
    if ok:
        assert outputs == [list(shapes["R"])]
    else:
        limit = schemas.vss_tail_shape_error(shapes["Y"][-1] if shapes["Y"] else 1,
                                             shapes["R"][-1] if shapes["R"] else 1, shapes["fc1_weight"][-1])
        if " is outside 1.." in message:
            assert message == limit
    for line in lines:
        stage = line.split()[0]
        if message is None:
            assert line == " ".join(map(str, (stage, *shapes["R"]))), line
        else:
            assert line == f"{stage} error: VSSBlockTail (layer 'c'): {message}", line


def test_library_exports_only_the_entry_points(unit_build):
    _, library = unit_build
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm (binutils) is not installed")
    defined = subprocess.run([nm, "-D", "--defined-only", str(library)], capture_output=True, text=True, check=True)
    symbols = {line.split()[-1] for line in defined.stdout.splitlines() if line.strip()}
    assert symbols == EXPORTED
    undefined = subprocess.run([nm, "-D", "--undefined-only", str(library)], capture_output=True, text=True,
                               check=True).stdout
    assert "nvinfer" not in undefined.lower() and "cuda" not in undefined.lower(), undefined
    readelf = shutil.which("readelf")
    if readelf:
        needed = subprocess.run([readelf, "-d", str(library)], capture_output=True, text=True, check=True).stdout
        assert "libnvinfer" not in needed and "libcudart" not in needed, needed


def test_version_queries(unit_build):
    """In a fresh process (so that no libssmpose_kernels_cuda.so is already loaded): the versions, and a clear
    message when the CUDA kernel library is not next to the plugin library."""
    _, library = unit_build
    code = ("import json, sys; from ssmpose.runtimes import tensorrt_backend as t; "
            "print(json.dumps(t.query_plugin_library(sys.argv[1])))")
    run = subprocess.run([sys.executable, "-c", code, str(library)], capture_output=True, text=True, timeout=120,
                         cwd=str(REPO), env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stderr
    import json
    info = json.loads(run.stdout.strip().splitlines()[-1])
    assert info["version"] == trt_backend.PLUGIN_LIBRARY_VERSION
    header = (REPO / "custom_ops" / "csrc" / "kernels" / "ssmpose_kernels.h").read_text()
    assert info["kernels_abi_version"] == int(re.search(r"#define SSM_KERNELS_ABI_VERSION (\d+)", header).group(1))
    assert int(info["tensorrt_version"].split(".")[0]) >= 10
    if info["kernels_error"] is not None:
        assert "cannot load the CUDA kernel library" in info["kernels_error"]
        assert "libssmpose_kernels_cuda.so" in info["kernels_error"]


def test_plugin_folder_configures_to_nothing_without_headers(tmp_path):
    """No headers (or too old ones): a STATUS message, never a configure error."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    old = tmp_path / "old"
    old.mkdir()
    (old / "NvInferVersion.h").write_text("#define NV_TENSORRT_MAJOR 8\n#define NV_TENSORRT_MINOR 6\n"
                                          "#define NV_TENSORRT_PATCH 1\n")
    (old / "NvInferRuntime.h").write_text("// TensorRT 8\n")
    for args, reason in (([], "no TensorRT headers given"),
                         ([f"-DSSMPOSE_TENSORRT_INCLUDE_DIR={tmp_path / 'none'}"], "no NvInferRuntime.h"),
                         ([f"-DSSMPOSE_TENSORRT_INCLUDE_DIR={old}"], "TensorRT 8.6.1; the plugins implement "
                                                                     "IPluginV3 (TensorRT >= 10)")):
        env = {k: v for k, v in os.environ.items() if k != "TENSORRT_ROOT"}
        run = subprocess.run(["cmake", "-S", str(PLUGIN_DIR), "-B", str(tmp_path / f"b{len(reason)}"), *args],
                             capture_output=True, text=True, env=env)
        assert run.returncode == 0, run.stderr
        assert "libssmpose_trt) not built: " in run.stdout and reason in run.stdout, run.stdout


# ------------------------------------------------------------------------------------------------
# 2. Backend helpers (no TensorRT needed)


def test_backend_unavailable_without_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt raises ImportError
    with pytest.raises(runtimes.BackendUnavailable, match="TensorRT Python package is not installed"):
        runtimes.load("missing.onnx", "tensorrt")


def test_backend_refuses_old_tensorrt(monkeypatch):
    fake = type(sys)("tensorrt")
    fake.__version__ = "8.6.1"
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    with pytest.raises(runtimes.BackendUnavailable, match=r"TensorRT 8\.6\.1 is installed; ssmpose needs TensorRT >= 10"):
        runtimes.load("missing.onnx", "tensorrt")


def test_engine_cache_key():
    base = dict(onnx_sha256="ab" * 32, tensorrt_version="10.14.1", gpu="NVIDIA H100 (sm_90)", precision="fp32",
                batch_range=(1, 32, 128), input_shape=(3, 256, 192), plugin_version=1, options={"tf32": False})
    key = trt_backend.engine_cache_key(**base)
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    assert trt_backend.engine_cache_key(**base) == key
    changes = dict(onnx_sha256="cd" * 32, tensorrt_version="10.15.0", gpu="NVIDIA H200 (sm_90)", precision="fp16",
                   batch_range=(1, 32, 64), input_shape=(3, 384, 288), plugin_version=2, options={"tf32": True})
    for name, value in changes.items():
        assert trt_backend.engine_cache_key(**{**base, name: value}) != key, name


def test_onnx_file_digest(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.arange(4096, dtype=np.float32).reshape(64, 64), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [weight])
    model = helper.make_model(graph)
    inline = tmp_path / "inline.onnx"
    onnx.save(model, str(inline))
    assert trt_backend.onnx_file_digest(inline) == hashlib.sha256(inline.read_bytes()).hexdigest()
    external = tmp_path / "external.onnx"
    onnx.save(model, str(external), save_as_external_data=True, location="external.data", size_threshold=0)
    digest = trt_backend.onnx_file_digest(external)
    assert digest != hashlib.sha256(external.read_bytes()).hexdigest()  # the weights count
    data = tmp_path / "external.data"
    data.write_bytes(data.read_bytes()[:-4] + b"\0\0\0\1")
    assert trt_backend.onnx_file_digest(external) != digest


def test_check_batch_range():
    check = trt_backend.check_batch_range
    assert check(None, None, "w") == trt_backend.DEFAULT_BATCH_RANGE
    assert check((1, 4, 8), None, "w") == (1, 4, 8)
    assert check(None, 16, "w") == (16, 16, 16)
    with pytest.raises(ValueError, match="batch is fixed at 16"):
        check((1, 4, 8), 16, "w")
    for bad in ((0, 1, 2), (4, 2, 8), (1, 2), (1, 2.0, 4), (True, 1, 1)):
        with pytest.raises(ValueError, match="batch_range must be three integers"):
            check(bad, None, "w")


def test_check_op_domain(tmp_path):
    """Domain version 7's VSSBlockTail passes the backend's check; a SelectiveScan2D node with a dt_projection input
    (version 6's feature, in a version-6 or version-7 file) and a later domain version are refused with the advice
    to export with --op-version 5."""
    onnx = pytest.importorskip("onnx")
    from onnx import helper

    def save(name, nodes):
        graph = helper.make_graph(nodes, "g", [], [])
        path = tmp_path / f"{name}.onnx"
        onnx.save(helper.make_model(graph), str(path))
        return path

    tail = helper.make_node("VSSBlockTail", list(VSS_TAIL_INPUTS), ["Z"], name="block_0_tail", domain="ssmpose")
    scan = helper.make_node("SelectiveScan2D", ["x", "delta", "A", "Bs", "Cs", "Ds", "delta_bias"], ["y"],
                            name="ss2d_0", domain="ssmpose")
    proj = helper.make_node("SelectiveScan2D", ["x", "x_proj", "A", "", "", "Ds", "delta_bias", "dt_projection"],
                            ["y"], name="ss2d_1", domain="ssmpose")
    check = trt_backend.check_op_domain
    check(save("v7", [scan, tail]), {"op_domain_version": 7}, "tensorrt: v7.onnx")
    check(save("v5", [scan]), {"op_domain_version": 5}, "tensorrt: v5.onnx")
    for version, nodes in ((6, [proj]), (7, [proj, tail])):
        with pytest.raises(ValueError, match=rf"^tensorrt: f\.onnx imports ssmpose domain version {version}; the "
                                             r"TensorRT plugins cover versions 1 to 5 and version 7's VSSBlockTail, "
                                             r"not version 6's SelectiveScan2D with a dt_projection input \(nodes "
                                             r"'ss2d_1': .* Export with --op-version 5 for TensorRT\.$"):
            check(save(f"v{version}_proj", nodes), {"op_domain_version": version}, "tensorrt: f.onnx")
    with pytest.raises(ValueError, match=r"imports ssmpose domain version 8; the TensorRT plugins cover versions 1 "
                                         r"to 7\. Export with --op-version 5 for TensorRT\."):
        check(save("v8", [tail]), {"op_domain_version": 8}, "tensorrt: f.onnx")
    assert trt_backend.MAX_OP_DOMAIN_VERSION == 7 and trt_backend.PLUGIN_LIBRARY_VERSION == 6


def test_plugin_library_reasons(monkeypatch, tmp_path):
    not_a_library = tmp_path / "libssmpose_trt.so"
    not_a_library.write_text("not an ELF file")
    monkeypatch.setenv("SSMPOSE_TRT_PLUGIN", str(not_a_library))
    path, reason, _ = trt_backend.plugin_library()
    assert path is None and reason.startswith(f"cannot load {not_a_library}")
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("SSMPOSE_TRT_PLUGIN", str(empty / "libssmpose_trt.so"))
    monkeypatch.setenv("SSMPOSE_KERNELS_DIR", str(empty))
    found, dirs = trt_backend._find_plugin_library()
    if found is None:  # unless this checkout's build/ has one
        path, reason, _ = trt_backend.plugin_library()
        assert path is None and "libssmpose_trt.so not found in [" in reason and "docs/tensorrt.md" in reason


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SSMPOSE_TRT_CACHE", str(tmp_path / "c"))
    assert trt_backend.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("SSMPOSE_TRT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert trt_backend.default_cache_dir() == tmp_path / "ssmpose" / "trt"


# ------------------------------------------------------------------------------------------------
# 3. Engines (TensorRT runtime and a GPU)


def _tensorrt_or_skip():
    try:
        import tensorrt
    except ImportError:
        pytest.skip("the TensorRT Python package is not installed (the full TensorRT libraries are not on any "
                    "registry reachable from this project's machines; docs/tensorrt.md)")
    import torch
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    library, reason, _ = trt_backend.plugin_library()
    if library is None:
        pytest.skip(f"libssmpose_trt.so with its CUDA kernels is unavailable: {reason}")
    return tensorrt, library


def _engine_for(tmp_path, node, inputs, output, shapes, domain_version=1):
    """Build an engine of a one-node ssmpose graph through the backend's helpers (`output`: a name, or a list of
    names)."""
    import torch
    from onnx import TensorProto, helper
    import onnx

    trt, library = _tensorrt_or_skip()
    outputs = [output] if isinstance(output, str) else list(output)
    graph = helper.make_graph([node], "one", [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                                              for n in inputs],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("ssmpose", domain_version)])
    path = tmp_path / "one.onnx"
    onnx.save(model, str(path))
    logger = trt_backend._make_logger(trt)
    trt_backend.load_plugins(trt, library)
    profiles = {n: (s, s, s) for n, s in shapes.items()}
    engine = trt_backend.build_serialized_engine(trt, logger, path, profiles)
    return trt_backend.TrtEngine(trt, logger, engine, torch.device("cuda", 0))


def test_engine_selective_scan(tmp_path):
    import torch
    from onnx import helper

    b, g, d, n, l = 2, 2, 3, 4, 9
    gen = torch.Generator().manual_seed(0)
    arrays = {"u": torch.randn(b, g * d, l, generator=gen), "delta": torch.randn(b, g * d, l, generator=gen) * 0.5,
              "A": -torch.rand(g * d, n, generator=gen), "Bs": torch.randn(b, g, n, l, generator=gen),
              "Cs": torch.randn(b, g, n, l, generator=gen), "Ds": torch.randn(g * d, generator=gen),
              "delta_bias": torch.randn(g * d, generator=gen) * 0.1}
    names = list(arrays)
    node = helper.make_node("SelectiveScan", names, ["y"], domain="ssmpose", delta_softplus=1, plugin_version="1",
                            plugin_namespace="ssmpose")
    engine = _engine_for(tmp_path, node, names, "y", {k: tuple(v.shape) for k, v in arrays.items()})
    y = engine.run({k: v.cuda() for k, v in arrays.items()})["y"].cpu()
    expected = ref.selective_scan_reference(*(arrays[k].double() for k in names), delta_softplus=True)
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5)


def test_engine_deform_aggregate(tmp_path):
    import torch
    from onnx import helper

    attrs = dict(kernel_h=3, kernel_w=3, stride_h=1, stride_w=1, pad_h=1, pad_w=1, dilation_h=1, dilation_w=1,
                 group=2, group_channels=8, offset_scale=1.0, remove_center=0)
    gen = torch.Generator().manual_seed(0)
    value = torch.randn(2, 7, 5, 16, generator=gen)
    om = torch.randn(2, 7, 5, 56, generator=gen)
    node = helper.make_node("DeformAggregate", ["value", "offset_mask"], ["out"], domain="ssmpose",
                            plugin_version="1", plugin_namespace="ssmpose", **attrs)
    engine = _engine_for(tmp_path, node, ["value", "offset_mask"], "out",
                         {"value": tuple(value.shape), "offset_mask": tuple(om.shape)})
    out = engine.run({"value": value.cuda(), "offset_mask": om.cuda()})["out"].cpu()
    expected = ref.deform_aggregate_reference(value.double(), om.double(), *attrs.values())
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_engine_selective_scan_2d(tmp_path):
    """A SelectiveScan2D node (domain version 2) as the exporter writes it, on a non-square image."""
    import torch
    from onnx import helper

    b, h, w, d, n = 2, 5, 7, 3, 4
    gen = torch.Generator().manual_seed(0)
    arrays = {"x": torch.randn(b, h, w, d, generator=gen), "delta": torch.randn(b, h, w, 4 * d, generator=gen) * 0.5,
              "A": -torch.rand(4 * d, n, generator=gen), "Bs": torch.randn(b, h, w, 4, n, generator=gen),
              "Cs": torch.randn(b, h, w, 4, n, generator=gen), "Ds": torch.randn(4 * d, generator=gen),
              "delta_bias": torch.randn(4 * d, generator=gen) * 0.1}
    names = list(arrays)
    node = helper.make_node("SelectiveScan2D", names, ["y"], domain="ssmpose", delta_softplus=1, directions=4,
                            plugin_version="1", plugin_namespace="ssmpose")
    engine = _engine_for(tmp_path, node, names, "y", {k: tuple(v.shape) for k, v in arrays.items()},
                         domain_version=2)
    y = engine.run({k: v.cuda() for k, v in arrays.items()})["y"].cpu()
    expected = ref.selective_scan_2d_reference(*(arrays[k].double() for k in names), delta_softplus=True)
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 7, 96), (3, 768)], ids=lambda s: "x".join(map(str, s)))
def test_engine_layer_norm(tmp_path, shape):
    """A LayerNorm node (domain version 3) as the exporter writes it, against float64 layer normalisation."""
    import torch
    from onnx import helper

    channels = shape[-1]
    gen = torch.Generator().manual_seed(0)
    arrays = {"X": torch.randn(*shape, generator=gen) * 2 + 3, "weight": torch.rand(channels, generator=gen) + 0.5,
              "bias": torch.randn(channels, generator=gen) * 0.2}
    names = list(arrays)
    node = helper.make_node("LayerNorm", names, ["Y"], domain="ssmpose", epsilon=1e-3, plugin_version="1",
                            plugin_namespace="ssmpose")
    engine = _engine_for(tmp_path, node, names, "Y", {k: tuple(v.shape) for k, v in arrays.items()},
                         domain_version=3)
    y = engine.run({k: v.cuda() for k, v in arrays.items()})["Y"].cpu()
    expected = torch.nn.functional.layer_norm(arrays["X"].double(), (channels,), arrays["weight"].double(),
                                              arrays["bias"].double(), eps=1e-3)
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 7, 96), (3, 768)], ids=lambda s: "x".join(map(str, s)))
def test_engine_add_layer_norm(tmp_path, shape):
    """An AddLayerNorm node (domain version 4) as the exporter writes it: Y against float64 layer normalisation of
    S, and S = X + R."""
    import torch
    from onnx import helper

    channels = shape[-1]
    gen = torch.Generator().manual_seed(0)
    arrays = {"X": torch.randn(*shape, generator=gen) * 2 + 3, "R": torch.randn(*shape, generator=gen) - 1,
              "weight": torch.rand(channels, generator=gen) + 0.5, "bias": torch.randn(channels, generator=gen) * 0.2}
    names = list(arrays)
    node = helper.make_node("AddLayerNorm", names, ["Y", "S"], domain="ssmpose", epsilon=1e-3, plugin_version="1",
                            plugin_namespace="ssmpose")
    engine = _engine_for(tmp_path, node, names, ["Y", "S"], {k: tuple(v.shape) for k, v in arrays.items()},
                         domain_version=4)
    out = {k: v.cpu() for k, v in engine.run({k: v.cuda() for k, v in arrays.items()}).items()}
    y, s = ref.add_layer_norm_reference(*(arrays[k].double() for k in names), epsilon=1e-3)
    torch.testing.assert_close(out["S"].double(), s, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out["Y"].double(), y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation", ["gelu", "none"])
def test_engine_depthwise_conv(tmp_path, activation):
    """A MultiKernelDepthwiseConv node (domain version 4) as the exporter writes it (INTS and STRING attributes),
    HRVMamba's LPU layout on a non-square image, against the float64 reference."""
    import torch
    from onnx import helper

    attrs = dict(kernel_sizes=[3, 5, 7, 9], group_channels=[8, 8, 8, 8], shuffle_groups=4, activation=activation)
    gen = torch.Generator().manual_seed(0)
    arrays = {"X": torch.randn(2, 9, 7, 32, generator=gen), "weight": torch.randn(32, 9, 9, generator=gen) * 0.3,
              "bias": torch.randn(32, generator=gen) * 0.1}
    names = list(arrays)
    node = helper.make_node("MultiKernelDepthwiseConv", names, ["Y"], domain="ssmpose", plugin_version="1",
                            plugin_namespace="ssmpose", **attrs)
    engine = _engine_for(tmp_path, node, names, "Y", {k: tuple(v.shape) for k, v in arrays.items()},
                         domain_version=4)
    y = engine.run({k: v.cuda() for k, v in arrays.items()})["Y"].cpu()
    expected = ref.multi_kernel_depthwise_conv_reference(*(arrays[k].double() for k in names), **attrs)
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lead", [(2, 7), (3,)], ids=lambda s: "x".join(map(str, s)))
def test_engine_vss_block_tail(tmp_path, lead):
    """A VSSBlockTail node (domain version 7) as the exporter writes it, against the float64 reference
    (reference.vss_block_tail_reference)."""
    import torch
    from onnx import helper

    inner, channels, hidden = 96, 48, 192
    shapes = _vss_tail_shapes(lead, inner, channels, hidden)
    gen = torch.Generator().manual_seed(0)
    scale = {"Y": 2.0, "R": 1.0, "out_norm_bias": 0.2, "out_proj": inner ** -0.5, "norm_bias": 0.2,
             "fc1_weight": channels ** -0.5, "fc1_bias": 0.1, "fc2_weight": hidden ** -0.5, "fc2_bias": 0.1}
    arrays = {}
    for name in VSS_TAIL_INPUTS:
        if name in ("out_norm_weight", "norm_weight"):
            arrays[name] = torch.rand(*shapes[name], generator=gen) + 0.5
        else:
            arrays[name] = torch.randn(*shapes[name], generator=gen) * scale[name] + (1.0 if name == "Y" else 0.0)
    names = list(VSS_TAIL_INPUTS)
    node = helper.make_node("VSSBlockTail", names, ["Z"], domain="ssmpose", epsilon=1e-5, plugin_version="1",
                            plugin_namespace="ssmpose")
    engine = _engine_for(tmp_path, node, names, "Z", {k: tuple(v.shape) for k, v in arrays.items()},
                         domain_version=7)
    z = engine.run({k: v.cuda() for k, v in arrays.items()})["Z"].cpu()
    expected = ref.vss_block_tail_reference(*(arrays[k].double() for k in names), epsilon=1e-5)
    assert z.shape == tuple(shapes["R"])
    torch.testing.assert_close(z.double(), expected, rtol=1e-4, atol=1e-4)
