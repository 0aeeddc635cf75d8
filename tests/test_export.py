"""ONNX export of the pose models: both forms checked, the portable form run in ONNX Runtime against PyTorch.

Every model gets non-trivial weights: the zero-initialised DCNv4 offset/mask projections are perturbed, so
that the deformable path really samples off the grid (and out of the image). The weights go through an
ssmpose checkpoint, so the export path with --checkpoint is the one tested.

Each (model, input size) is traced once per test session (the `exported` fixture of conftest.py, shared
with the pipeline tests) and gives both forms (`export_forms`).
Cost on the 2-core CI machine: about 60-90 s per traced model; tiny at 256x192 and the fp16 export run by
default; the other five models and the CLI re-export (byte-identical to the API's) are marked `slow` (see
docs/export.md).
"""
import json
import math

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

ort = pytest.importorskip("onnxruntime")

import ssmpose  # noqa: E402
from ssmpose.checkpoint import CheckpointError, save_checkpoint  # noqa: E402
from conftest import perturb  # noqa: E402
from ssmpose.cli.main import main  # noqa: E402
from ssmpose.export import (DEFAULT_OPSETS, ExportError, export_forms, export_model, inspect_model,  # noqa: E402
                            read_metadata)
from ssmpose.export.exporter import EXPORT_VSS_TAIL_MAX_CHANNELS  # noqa: E402
from ssmpose.export.fusions import MAX_FOLDED_DT_RANK, fuse_erf_gelu  # noqa: E402
from ssmpose.training.codec import decode_heatmaps  # noqa: E402
from ssmpose.training.models.dcnv4 import DCNv4  # noqa: E402
from ssmpose.training.models.hrvmamba import pose_metadata  # noqa: E402
from ssmpose.training.models.hrvmamba_blocks import LPU_KERNELS, HRVMambaBlock  # noqa: E402
from ssmpose.training.models.ss2d import SS2D  # noqa: E402

FAST = {("hrvmamba_tiny", (256, 192))}
# The ssmpose version each default export imports: the lowest that has all its ops (export/exporter.py). tiny: 6
# (its dt ranks 1, 2, 4 fold into SelectiveScan2D, 8 does not; its SE blocks have no VSSBlockTail); small: 7 (its
# blocks of 32 and 64 channels are VSSBlockTails); base: 5 (80 to 640 channels: no tail; dt ranks 5 to 40: none
# fold; DeformAggregate's epilogues are version 5's).
DEFAULT_DOMAIN_VERSION = {"hrvmamba_tiny": 6, "hrvmamba_small": 7, "hrvmamba_base": 5}
CASES = [pytest.param(name, size, id=f"{name}-{size[0]}x{size[1]}",
                      marks=() if (name, size) in FAST else pytest.mark.slow)
         for name in ("hrvmamba_tiny", "hrvmamba_small", "hrvmamba_base") for size in ((256, 192), (384, 288))]


def _session(path, library=None):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.log_severity_level = 3
    if library:
        options.register_custom_ops_library(library)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _ort_library():
    try:
        from ssmpose.custom_ops.ort_library import ort_library_path
        path = ort_library_path()
    except Exception:  # noqa: BLE001  (not built here)
        return None
    return str(path) if path else None


def _images(batch, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, *size, generator=g)


@pytest.mark.parametrize("name,size", CASES)
def test_both_forms_pass_the_full_checker(exported, name, size):
    e = exported(name, size)
    for form, path in e.paths.items():
        onnx.checker.check_model(str(path), full_check=True)
        report = inspect_model(path)
        assert report["portable"] == (form == "portable"), report["portability_problems"]
        assert report["opset_import"]["ai.onnx"] == DEFAULT_OPSETS[form]
        assert report["inputs"] == [{"name": "images", "dtype": "float32", "shape": ["batch", 3, *size]}]
        assert report["outputs"] == [{"name": "heatmaps", "dtype": "float32",
                                      "shape": ["batch", 17, size[0] // 4, size[1] // 4]}]


def _ssmpose_nodes(model, op_type):
    return [n for n in model.graph.node if n.domain == "ssmpose" and n.op_type == op_type]


def _attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


@pytest.mark.parametrize("name,size", CASES)
def test_custom_form_has_one_node_per_op_with_the_attributes(exported, name, size):
    """The default export: one SelectiveScan2D (with its dt projection where the rank is at most 4) and one
    DeformAggregate per SS2D (with its offset bias and SiLU), every LPU one MultiKernelDepthwiseConv with its GELU,
    every block of up to 64 channels without SE (not tiny's) one VSSBlockTail (two LayerNorms and the MLP's GELU
    inside), every other LayerNorm a LayerNorm or AddLayerNorm node."""
    e = exported(name, size)
    model = onnx.load(str(e.paths["custom"]), load_external_data=False)
    ss2d = [m for m in e.model.modules() if isinstance(m, SS2D)]
    scans, deforms = _ssmpose_nodes(model, "SelectiveScan2D"), _ssmpose_nodes(model, "DeformAggregate")
    assert len(scans) == len(deforms) == len(ss2d)
    assert {(o.domain, o.version) for o in model.opset_import} == {("", 20), ("ssmpose", DEFAULT_DOMAIN_VERSION[name])}
    op_types = [n.op_type for n in model.graph.node]
    blocks = [m for m in e.model.modules() if isinstance(m, HRVMambaBlock)]
    lpus = [n for n in _ssmpose_nodes(model, "MultiKernelDepthwiseConv") if _attrs(n)["activation"] == b"gelu"]
    assert len(lpus) == len(blocks)
    assert all((_attrs(n)["kernel_sizes"], _attrs(n)["shuffle_groups"]) == (list(LPU_KERNELS), 4) for n in lpus)
    tails = _ssmpose_nodes(model, "VSSBlockTail")
    narrow = [b for b in blocks if type(b) is HRVMambaBlock and b.mlp.fc2.out_features <= EXPORT_VSS_TAIL_MAX_CHANNELS]
    assert len(tails) == len(narrow)
    gelus = sum(isinstance(m, torch.nn.GELU) for m in e.model.modules())
    assert op_types.count("Gelu") == gelus - len(tails)   # the other MLPs'; the LPUs' F.gelu is in their nodes
    assert "Erf" not in op_types and "LayerNormalization" not in op_types
    norms = sum(isinstance(m, torch.nn.LayerNorm) for m in e.model.modules())
    layer_norms = len(_ssmpose_nodes(model, "LayerNorm")) + len(_ssmpose_nodes(model, "AddLayerNorm"))
    assert layer_norms + 2 * len(tails) == norms
    for node in (n for n in model.graph.node if n.domain == "ssmpose"):
        attrs = _attrs(node)
        assert attrs["plugin_version"] == b"1" and attrs["plugin_namespace"] == b"ssmpose"
    assert {onnx.helper.get_attribute_value(a) for n in scans for a in n.attribute if a.name == "delta_softplus"} == {1}
    folded = [n for n in scans if len(n.input) == 8 and n.input[7]]   # the dt projection inside
    assert len(folded) == sum(m.dt_rank <= MAX_FOLDED_DT_RANK for m in ss2d)
    assert all(n.input[3] == n.input[4] == "" for n in folded)
    groups = sorted({m.conv2d.group for m in ss2d})
    seen = sorted({onnx.helper.get_attribute_value(a) for n in deforms for a in n.attribute if a.name == "group"})
    assert seen == groups
    for node in deforms:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert (attrs["kernel_h"], attrs["stride_h"], attrs["pad_h"], attrs["dilation_h"],
                attrs["remove_center"], attrs["offset_scale"], attrs["group_channels"]) == (3, 1, 1, 1, 0, 1.0, 32)
        assert attrs["activation"] == b"silu" and len(node.input) == 3


@pytest.mark.parametrize("name,size", CASES)
def test_shape_inference_gives_the_custom_nodes_output_shapes(exported, name, size):
    model = onnx.load(str(exported(name, size).paths["custom"]), load_external_data=False)
    recorded = {v.name: v.type.tensor_type.shape for v in model.graph.value_info}
    del model.graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    shapes = {v.name: v.type.tensor_type.shape for v in inferred.graph.value_info}
    custom = [n for n in inferred.graph.node if n.domain == "ssmpose"]
    assert custom
    for node in custom:
        dims, expected = shapes[node.output[0]].dim, recorded[node.output[0]].dim
        assert expected[0].dim_param == "batch" and dims[0].dim_param      # symbolic batch (ONNX names it unk__N)
        assert [d.dim_value for d in dims[1:]] == [d.dim_value for d in expected[1:]], node.name
        assert all(d.dim_value > 0 for d in dims[1:])


@pytest.mark.parametrize("name,size", CASES)
def test_portable_form_matches_pytorch_at_batch_1_and_3(exported, name, size):
    e = exported(name, size)
    session = _session(e.paths["portable"])
    for batch in (1, 3):
        images = _images(batch, size, seed=batch)
        expected = e.torch_heatmaps(images)
        got = session.run(None, {"images": images.numpy()})[0]
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


@pytest.mark.parametrize("name,size", CASES)
def test_custom_form_runs_with_the_ort_library(exported, name, size):
    library = _ort_library()
    if library is None:
        pytest.skip("the ssmpose ONNX Runtime library is not built")
    e = exported(name, size)
    images = _images(2, size, seed=5)
    got = _session(e.paths["custom"], library).run(None, {"images": images.numpy()})[0]
    expected = e.torch_heatmaps(images)
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_portable_form_in_openvino_matches_pytorch(exported):
    """The openvino backend runs the graph at its own precision (OpenVINO's CPU default is bfloat16 where
    the CPU has it, a 1.7 % heatmap error on this model). The custom form: tests/test_openvino_extension.py."""
    pytest.importorskip("openvino")
    from ssmpose import runtimes
    e = exported("hrvmamba_tiny", (256, 192))
    session = runtimes.load(str(e.paths["portable"]), "openvino")
    assert session.precision == "f32"
    images = _images(2, (256, 192), seed=7)
    expected = e.torch_heatmaps(images)
    got = session.run(images.numpy())
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
    with pytest.raises(ValueError, match="precision must be one of"):
        runtimes.load(str(e.paths["portable"]), "openvino", precision="fp64")


@pytest.mark.parametrize("name,size", CASES)
def test_metadata_round_trip(exported, name, size):
    e = exported(name, size)
    meta = e.model.meta
    for form, path in e.paths.items():
        got = read_metadata(path)
        assert got == e.results[form].metadata
        assert got == inspect_model(path)["metadata"]
        for key in ("model", "task", "keypoint_names", "skeleton", "flip_pairs", "mean", "std", "color_order",
                    "num_keypoints", "dcn_variant"):
            assert got[key] == meta[key], key
        assert got["input_size"] == list(size)
        assert got["codec"] == {"type": "MSRAHeatmap", "sigma": meta["codec"]["sigma"],
                                "heatmap_size": [size[0] // 4, size[1] // 4]}
        assert (got["family"], got["variant"]) == ("hrvmamba", name.split("_", 1)[1])
        assert got["export_form"] == form and got["opset"] == DEFAULT_OPSETS[form] and got["dtype"] == "float32"
        assert got["batch"] == "dynamic" and got["input_name"] == "images" and got["output_name"] == "heatmaps"
        assert got["op_domain"] == "ssmpose"
        assert got["op_domain_version"] == DEFAULT_DOMAIN_VERSION[name]   # the custom form's, for both
        assert got["ssmpose_version"] == ssmpose.__version__
        assert (got["chunk_size"] is None) == (form == "custom")
        raw = onnx.load(str(path), load_external_data=False)
        assert all(json.loads(p.value) == got[p.key] for p in raw.metadata_props)


def test_largest_activation_of_the_portable_form(exported):
    """What limits the batch on ONNX Runtime's CUDA EP (runtimes/onnxruntime_backend.py). With the default
    halving lowering it is the larger of a scan's (B, rows, chunks * T) states (rows = 4 directions x d_inner)
    and DeformAggregate's GridSample output (B * group, group_channels, K * H, W), K = kernel_size^2 points;
    the matrix lowering's (B, rows, chunks, T, T) decay tensors would be T times larger than the states."""
    from ssmpose.runtimes.onnx_metadata import largest_activation_per_image
    e = exported("hrvmamba_tiny", (256, 192))
    shapes = []   # (channels, points, L) of every SS2D's DCNv4 output, which feeds its scan

    def record(module, inputs, output):
        shapes.append((output.shape[-1], module.kernel_size ** 2, output.shape[1] * output.shape[2]))
    hooks = [m.conv2d.register_forward_hook(record) for m in e.model.modules() if isinstance(m, SS2D)]
    e.torch_heatmaps(_images(1, (256, 192)))
    for hook in hooks:
        hook.remove()
    metadata = read_metadata(e.paths["portable"])
    chunk = metadata["chunk_size"]
    assert metadata["scan_lowering"] == "halving"
    states = max(4 * c * -(-length // chunk) * chunk for c, _, length in shapes)
    samples = max(c * points * length for c, points, length in shapes)
    graph = onnx.load(str(e.paths["portable"]), load_external_data=False).graph
    assert largest_activation_per_image(graph) == max(states, samples)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["hrvmamba_tiny", "hrvmamba_small", "hrvmamba_base"])
def test_portable_node_count_does_not_grow_with_input_size(exported, name):
    """The sizes are constants of the portable graph. Between 256x192 and 384x288 (2.25x the positions) only the
    end padding changes, in scans whose sequence ends inside a chunk at one size and fills its chunks at the
    other: 12 nodes for each such scan (192 = 16 scans x 12 for each model: the two low-resolution branches). A
    lowering that grew with the sequence would add thousands."""
    counts = {size: exported(name, size).results["portable"].node_count for size in ((256, 192), (384, 288))}
    scans = sum(isinstance(m, SS2D) for m in exported(name, (256, 192)).model.modules())
    assert 0 <= counts[(384, 288)] - counts[(256, 192)] <= 12 * scans, counts


# ---------------------------------------------------------------------------------------------------------
# float16, fixed batch, determinism, command line

@pytest.fixture(scope="module")
def fp16_export(exported):
    return exported("hrvmamba_tiny", (256, 192), fp16=True, batch=2)


def test_fp16_export(fp16_export):
    e = fp16_export
    for form, path in e.paths.items():
        onnx.checker.check_model(str(path), full_check=True)
        meta = read_metadata(path)
        assert meta["dtype"] == "float16" and meta["io_dtype"] == "float32" and meta["batch"] == 2
        model = onnx.load(str(path))
        floats = [i for i in model.graph.initializer if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
        weights16 = sum(np.prod(i.dims) for i in floats if i.data_type == onnx.TensorProto.FLOAT16)
        assert weights16 >= 0.9 * sum(np.prod(i.dims) for i in floats)   # lowering constants stay fp32
        assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    _assert_fp16_parity(e, "portable", None)


def test_fp16_custom_form_runs_with_the_ort_library(fp16_export):
    """The float16 CPU kernels of every op-version-4 operator, through the ONNX Runtime library."""
    library = _ort_library()
    if library is None:
        pytest.skip("the ssmpose ONNX Runtime library is not built")
    _assert_fp16_parity(fp16_export, "custom", library)


def _assert_fp16_parity(e, form, library):
    """The form in ONNX Runtime against PyTorch float32: keypoints within 0.5 px on average (DESIGN.md section 7)."""
    images = _images(2, (256, 192), seed=11)
    got = _session(e.paths[form], library).run(None, {"images": images.numpy()})[0]
    expected = e.torch_heatmaps(images)
    kp_got, _ = decode_heatmaps(torch.from_numpy(got), (256, 192))
    kp_exp, _ = decode_heatmaps(torch.from_numpy(expected), (256, 192))
    assert np.linalg.norm(kp_got - kp_exp, axis=-1).mean() <= 0.5
    assert np.abs(got - expected).max() <= 2e-2 * np.abs(expected).max()


@pytest.mark.slow   # a third export of the tiny model (~65 s)
def test_cli_export_is_byte_identical_to_the_api_export(fp16_export, tmp_path):
    e = fp16_export
    out = tmp_path / "again.onnx"
    result = CliRunner().invoke(main, ["export", "hrvmamba_tiny", "--checkpoint", str(e.checkpoint), "--batch", "2",
                                       "--fp16", "--ops", "portable", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == e.paths["portable"].read_bytes()
    assert list(tmp_path.iterdir()) == [out]


def test_cli_inspect(exported):
    path = exported("hrvmamba_tiny", (256, 192)).paths["custom"]
    result = CliRunner().invoke(main, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    assert "ssmpose::SelectiveScan" in result.output and "portable: no" in result.output
    assert "images: float32 [batchx3x256x192]" in result.output and "hrvmamba_tiny" in result.output
    report = json.loads(CliRunner().invoke(main, ["inspect", str(path), "--json"]).output)
    assert report["metadata"]["model"] == "hrvmamba_tiny" and report["custom_ops"] == [
        "ssmpose::AddLayerNorm", "ssmpose::DeformAggregate", "ssmpose::LayerNorm",
        "ssmpose::MultiKernelDepthwiseConv", "ssmpose::SelectiveScan2D"]


# ---------------------------------------------------------------------------------------------------------
# Bad input: a clear error and no file

def test_unknown_model(tmp_path):
    out = tmp_path / "x.onnx"
    with pytest.raises(ExportError, match="unknown model 'nope'.*hrvmamba_small"):
        export_model("nope", out)
    result = CliRunner().invoke(main, ["export", "nope", "-o", str(out)])
    assert result.exit_code == 2 and "error: unknown model 'nope'; registered models:" in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("size", ["250x192", "256x190", "256", "axb", "0x192"])
def test_bad_input_size(tmp_path, size):
    out = tmp_path / "x.onnx"
    with pytest.raises(ExportError, match="input size"):
        export_model("hrvmamba_tiny", out, input_size=size)
    result = CliRunner().invoke(main, ["export", "hrvmamba_tiny", "--input-size", size, "-o", str(out)])
    assert result.exit_code == 2 and "error: input size" in result.output
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_for_another_variant(tmp_path):
    ckpt = save_checkpoint(ssmpose.build_model("hrvmamba_tiny"), tmp_path / "tiny.safetensors")
    out = tmp_path / "small.onnx"
    with pytest.raises(CheckpointError, match="(?s)does not fit model hrvmamba_small.*looks like hrvmamba_tiny"):
        export_model("hrvmamba_small", out, checkpoint=ckpt)
    result = CliRunner().invoke(main, ["export", "hrvmamba_small", "--checkpoint", str(ckpt), "-o", str(out)])
    assert result.exit_code == 2 and "does not fit model hrvmamba_small" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.safetensors"]


@pytest.mark.parametrize("options,message", [
    (dict(opset=17), "opset 17 is not supported"), (dict(opset=21), "opset 21 is not supported"),
    (dict(opset=20, form="portable"), "opset 20 is not supported for the portable form.*GridSample"),
    (dict(batch=0), "batch must be"), (dict(batch="many"), "batch must be"),
    (dict(form="plain"), "export form must be"), (dict(chunk_size=1), "chunk size must be >= 2"),
    (dict(scan_lowering="loop"), "scan lowering must be one of"),
])
def test_bad_options(tmp_path, options, message):
    with pytest.raises(ExportError, match=message):
        export_model("hrvmamba_tiny", tmp_path / "x.onnx", **options)
    assert list(tmp_path.iterdir()) == []


class ToyPose(torch.nn.Module):
    """A small model with both ops and a pose `meta`: exports in seconds (pipeline tests)."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 16, 4, 4)
        self.dcn = DCNv4(16, group=2)
        self.ssm = SS2D(8)
        self.proj = torch.nn.Conv2d(16, 8, 1)
        self.head = torch.nn.Conv2d(8, 17, 1)
        self.input_size = (64, 32)
        self.meta = pose_metadata("toy_pose", self.input_size, 2.0, 17, "as_run")
        perturb(self)

    def forward(self, images):
        x = self.stem(images)
        x = self.dcn(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.head(self.ssm(self.proj(x)))


def test_failed_export_leaves_no_partial_file_and_keeps_an_existing_one(tmp_path, monkeypatch):
    out = tmp_path / "toy.onnx"
    out.write_bytes(b"previous")
    import ssmpose.export.exporter as exporter

    def fail(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(exporter.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        export_model(ToyPose().eval(), out, form="portable")
    assert out.read_bytes() == b"previous" and list(tmp_path.iterdir()) == [out]


def test_toy_model_both_forms_and_static_batch(tmp_path):
    toy = ToyPose().eval()
    results = export_forms(toy, {"custom": tmp_path / "c.onnx", "portable": tmp_path / "p.onnx"}, batch=3,
                           scan_lowering="doubling", chunk_size=16)
    images = _images(3, (64, 32), seed=2)
    with torch.no_grad():
        expected = toy(images).numpy()
    got = _session(tmp_path / "p.onnx").run(None, {"images": images.numpy()})[0]
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
    meta = results["portable"].metadata
    assert (meta["model"], meta["batch"], meta["chunk_size"], meta["scan_lowering"]) == ("toy_pose", 3, 16, "doubling")
    again = export_model(toy, tmp_path / "p2.onnx", batch=3, form="portable", scan_lowering="doubling", chunk_size=16)
    assert again.path.read_bytes() == (tmp_path / "p.onnx").read_bytes()


class GeluForms(torch.nn.Module):
    """F.gelu whose input is also used elsewhere, and a look-alike with 0.6 instead of 0.5 (not a GELU)."""

    def forward(self, x):
        a = F.gelu(x) + x
        y = x + 1.0
        b = y * (0.6 * (torch.erf(y / math.sqrt(2.0)) + 1.0))
        return F.gelu(a * 2.0) - b


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_erf_gelu_becomes_one_gelu_node(tmp_path, dtype):
    x = torch.randn(3, 8, dtype=dtype)
    program = torch.onnx.export(GeluForms().eval(), (x,), dynamo=True, opset_version=18, optimize=True,
                                verbose=False)
    before = program.model_proto
    after = onnx.ModelProto()
    after.CopyFrom(before)
    assert fuse_erf_gelu(after) == 2
    for entry in after.opset_import:
        if entry.domain == "":
            entry.version = 20
    onnx.checker.check_model(after, full_check=True)
    ops_after = [n.op_type for n in after.graph.node]
    assert ops_after.count("Gelu") == 2 and ops_after.count("Erf") == 1          # the look-alike stays
    feed = {before.graph.input[0].name: x.numpy()}
    expected = ort.InferenceSession(before.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    got = ort.InferenceSession(after.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    reference = GeluForms()(x.double()).numpy()
    tolerance = 2e-3 if dtype == torch.float16 else 1e-6
    assert np.abs(got - reference).max() <= tolerance * np.abs(reference).max()
    assert np.abs(got - expected).max() <= tolerance * np.abs(reference).max()
