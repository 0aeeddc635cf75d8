"""Export with `op_version=4` (and 5, the default): HRVMamba's LPU convolution chains and its position convolutions
become `ssmpose::MultiKernelDepthwiseConv`, each residual Add feeding a LayerNorm becomes `ssmpose::AddLayerNorm`
(domain version 4). The fusions leave look-alikes alone, the fused graph runs in ONNX Runtime and matches
PyTorch, and it lowers back to standard ops. The fusions applied to a version-2 export give the default
export."""
import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from ssmpose.custom_ops.reference import multi_kernel_depthwise_conv_reference
from ssmpose.export import read_metadata
from ssmpose.export.fusions import (use_add_layer_norm_op, use_block_diagonal_matmul, use_deform_aggregate_epilogues,
                                    use_depthwise_conv_op, use_layer_norm_op, use_scan_dt_projection)
from ssmpose.training.models.hrvmamba_blocks import LPU_KERNELS, HRVMambaBlock, HRVMambaSEBlock
from ssmpose.training.models.layers import channel_shuffle_to_channels_last

ort = pytest.importorskip("onnxruntime")


def _session(model_or_path, custom: bool = True):
    from ssmpose.custom_ops.ort_library import ort_library_path
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    if custom:
        options.register_custom_ops_library(str(ort_library_path()))
    source = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _padded_lpu_weights(conv_module):
    """The (C, 9, 9) weight and (C) bias of a MultiKernelDWConv, each kernel centred, zeros around it."""
    kernel_max = max(LPU_KERNELS)
    weights, biases = [], []
    for conv, k in zip(conv_module, LPU_KERNELS):
        pad = (kernel_max - k) // 2
        weights.append(F.pad(conv.weight[:, 0], (pad, pad, pad, pad)))
        biases.append(conv.bias)
    return torch.cat(weights), torch.cat(biases)


@pytest.mark.parametrize("channels", [32, 36, 64])
def test_reference_op_is_the_pytorch_lpu(channels):
    torch.manual_seed(channels)
    block = HRVMambaBlock(channels).double()
    x = torch.randn(2, 7, 5, channels, dtype=torch.float64)
    expected = F.gelu(channel_shuffle_to_channels_last(block.conv2d(x.permute(0, 3, 1, 2)), 4))
    weight, bias = _padded_lpu_weights(block.conv2d)
    got = multi_kernel_depthwise_conv_reference(x, weight, bias, LPU_KERNELS, block.conv2d.splits, 4, "gelu")
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


# --- the fusions on small hand-made graphs -------------------------------------------------------------------

def _lpu_graph(shape=(2, 5, 6, 8), kernels=(3, 5, 7, 9), groups=(2, 2, 2, 2), shuffle=4, gelu=True,
               stride=1, pads=None, extra_user=False, seed=0):
    """X (B, H, W, C) -> Transpose -> Split -> depthwise Convs -> Concat -> shuffle back to channel-last ->
    Gelu, as torch.onnx writes HRVMamba's LPU; shapes inferred. The knobs make look-alikes."""
    rng = np.random.default_rng(seed)
    b, h, w, c = shape
    nodes = [helper.make_node("Transpose", ["x"], ["nchw"], perm=[0, 3, 1, 2])]
    inits = [numpy_helper.from_array(np.array(groups, np.int64), "splits")]
    parts = [f"part{i}" for i in range(len(groups))]
    nodes.append(helper.make_node("Split", ["nchw", "splits"], parts, axis=1))
    for i, (k, g) in enumerate(zip(kernels, groups)):
        inits += [numpy_helper.from_array(rng.standard_normal((g, 1, k, k)).astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(rng.standard_normal(g).astype(np.float32), f"b{i}")]
        nodes.append(helper.make_node("Conv", [parts[i], f"w{i}", f"b{i}"], [f"conv{i}"], group=g,
                                      kernel_shape=[k, k], pads=pads or [k // 2] * 4, strides=[stride, stride]))
    nodes.append(helper.make_node("Concat", [f"conv{i}" for i in range(len(groups))], ["cat"], axis=1))
    oh, ow = (h + stride - 1) // stride, (w + stride - 1) // stride
    if shuffle > 1:
        inits += [numpy_helper.from_array(np.array([-1, shuffle, c // shuffle, oh, ow], np.int64), "split_shape"),
                  numpy_helper.from_array(np.array([-1, oh, ow, c], np.int64), "merge_shape")]
        nodes += [helper.make_node("Reshape", ["cat", "split_shape"], ["grouped"]),
                  helper.make_node("Transpose", ["grouped"], ["shuffled"], perm=[0, 3, 4, 2, 1]),
                  helper.make_node("Reshape", ["shuffled", "merge_shape"], ["nhwc"])]
    else:
        nodes.append(helper.make_node("Transpose", ["cat"], ["nhwc"], perm=[0, 2, 3, 1]))
    outputs = ["y"]
    nodes.append(helper.make_node("Gelu", ["nhwc"], ["y"]) if gelu else helper.make_node("Identity", ["nhwc"], ["y"]))
    if extra_user:
        nodes.append(helper.make_node("Identity", ["cat"], ["cat_copy"]))
        outputs.append("cat_copy")
    graph = helper.make_graph(nodes, "lpu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    return onnx.shape_inference.infer_shapes(model)


def _fused_copy(model, fusion, domain_version=4):
    fused = onnx.ModelProto()
    fused.CopyFrom(model)
    made = fusion(fused)
    fused.opset_import.add(domain="ssmpose", version=domain_version)
    return fused, made


@pytest.mark.parametrize("options", [
    dict(), dict(gelu=False), dict(shuffle=1), dict(shuffle=2),
    dict(kernels=(3, 7), groups=(5, 3), shuffle=1), dict(shape=(1, 3, 2, 8)),
])
def test_lpu_chain_becomes_one_node_with_the_same_output(options):
    model = _lpu_graph(**options)
    fused, made = _fused_copy(model, use_depthwise_conv_op)
    assert made == 1
    assert [n.op_type for n in fused.graph.node if n.op_type != "Identity"] == ["MultiKernelDepthwiseConv"]
    onnx.checker.check_model(fused, full_check=True)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    expected = _session(model, custom=False).run(None, {"x": x})[0]
    got = _session(fused).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("options", [dict(stride=2), dict(pads=[1, 1, 2, 2]), dict(extra_user=True)])
def test_lpu_look_alikes_are_left_alone(options):
    model = _lpu_graph(**options)
    before = [n.op_type for n in model.graph.node]
    fused, made = _fused_copy(model, use_depthwise_conv_op)
    assert made == 0 and [n.op_type for n in fused.graph.node] == before


def _residual_graph(r_shape=(2, 3, 4, 8), r_initializer=False):
    """a, r -> Add -> LayerNormalization -> y, and the sum is a second output (the residual stream)."""
    shape = [2, 3, 4, 8]
    inits = [numpy_helper.from_array(np.linspace(0.5, 1.5, 8).astype(np.float32), "scale"),
             numpy_helper.from_array(np.linspace(-1, 1, 8).astype(np.float32), "bias")]
    inputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, shape)]
    if r_initializer:
        inits.append(numpy_helper.from_array(np.ones(r_shape, np.float32), "r"))
    else:
        inputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, list(r_shape)))
    nodes = [helper.make_node("Add", ["a", "r"], ["s"]),
             helper.make_node("LayerNormalization", ["s", "scale", "bias"], ["y"], axis=-1)]
    graph = helper.make_graph(nodes, "residual", inputs,
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("y", "s")], inits)
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]))
    use_layer_norm_op(model)
    return model


def test_residual_add_and_layer_norm_become_one_node_with_both_outputs():
    model = _residual_graph()
    fused, made = _fused_copy(model, use_add_layer_norm_op)
    assert made == 1 and [n.op_type for n in fused.graph.node] == ["AddLayerNorm"]
    assert list(fused.graph.node[0].output) == ["y", "s"]
    onnx.checker.check_model(fused, full_check=True)
    rng = np.random.default_rng(2)
    feeds = {"a": rng.standard_normal((2, 3, 4, 8)).astype(np.float32),
             "r": rng.standard_normal((2, 3, 4, 8)).astype(np.float32)}
    model.opset_import.add(domain="ssmpose", version=3)
    for expected, got in zip(_session(model).run(None, feeds), _session(fused).run(None, feeds)):
        np.testing.assert_array_equal(got, expected)   # the same Add and the same LayerNorm arithmetic


@pytest.mark.parametrize("options", [dict(r_shape=(1, 1, 1, 8)), dict(r_initializer=True)])
def test_broadcasting_or_constant_adds_are_left_alone(options):
    model = _residual_graph(**options)
    fused, made = _fused_copy(model, use_add_layer_norm_op)
    assert made == 0 and [n.op_type for n in fused.graph.node] == ["Add", "LayerNorm"]


def _einsum_graph(equation="bhwkr,kdr->bhwkd", reshape_after=True, weight_is_input=False):
    """x (2, 3, 4, K=4, R=3) -> Einsum with a (4, 5, 3) weight [-> Reshape (-1, 3, 4, 20)] -> y."""
    weight = np.random.default_rng(3).standard_normal((4, 5, 3)).astype(np.float32)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 4, 3])]
    inits = [numpy_helper.from_array(np.array([-1, 3, 4, 20], np.int64), "shape")] if reshape_after else []
    if weight_is_input:
        inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, list(weight.shape)))
    else:
        inits.append(numpy_helper.from_array(weight, "w"))
    nodes = [helper.make_node("Einsum", ["x", "w"], ["e" if reshape_after else "y"], equation=equation)]
    if reshape_after:
        nodes.append(helper.make_node("Reshape", ["e", "shape"], ["y"], allowzero=1))
    graph = helper.make_graph(nodes, "einsum", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              inits)
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]))
    return model, weight


@pytest.mark.parametrize("reshape_after", [True, False])
def test_per_direction_einsum_becomes_one_matmul(reshape_after):
    model, weight = _einsum_graph(reshape_after=reshape_after)
    fused, made = _fused_copy(model, use_block_diagonal_matmul)
    assert made == 1
    op_types = [n.op_type for n in fused.graph.node]
    assert op_types == (["Reshape", "MatMul", "Reshape"])   # the Reshape after it is reused when there is one
    onnx.checker.check_model(fused, full_check=True)
    x = np.random.default_rng(4).standard_normal((2, 3, 4, 4, 3)).astype(np.float32)
    expected = np.einsum("bhwkr,kdr->bhwkd", x.astype(np.float64), weight.astype(np.float64))
    if reshape_after:
        expected = expected.reshape(-1, 3, 4, 20)
    got = _session(fused, custom=False).run(None, {"x": x})[0]
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("options", [
    dict(equation="bhwkr,kdr->bhwdk"),        # another output order
    dict(equation="bhwkr,krd->bhwkd"),        # the weight laid out (K, R, D)
    dict(equation="bhwkr,kdr->bhkd"),         # a sum over w as well
    dict(weight_is_input=True),               # not a constant
])
def test_einsum_look_alikes_are_left_alone(options):
    model, _ = _einsum_graph(reshape_after=False, **options)
    fused, made = _fused_copy(model, use_block_diagonal_matmul)
    assert made == 0 and [n.op_type for n in fused.graph.node] == ["Einsum"]


@pytest.mark.parametrize("attributes,message", [
    (dict(kernel_sizes=[3, 4], group_channels=[4, 4]), "kernel_sizes must be odd"),
    (dict(kernel_sizes=[3, 11], group_channels=[4, 4]), "kernel_sizes must be odd, 1 to 9"),
    (dict(kernel_sizes=[3, 5], group_channels=[4, 3]), "sum to 7, X has 8 channels"),
    (dict(kernel_sizes=[3], group_channels=[4, 4]), "same length"),
    (dict(kernel_sizes=[3, 5], group_channels=[4, 4], shuffle_groups=3), "shuffle_groups must be >= 1 and divide"),
    (dict(kernel_sizes=[3, 5], group_channels=[4, 4], activation="relu"), "activation must be one of"),
])
def test_schema_refuses_bad_attributes(attributes, message):
    node = helper.make_node("MultiKernelDepthwiseConv", ["x", "w", "b"], ["y"], domain="ssmpose", **attributes)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.zeros((8, 9, 9), np.float32), "w"),
         numpy_helper.from_array(np.zeros(8, np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("ssmpose", 4)])
    with pytest.raises(onnx.shape_inference.InferenceError, match=message):
        onnx.shape_inference.infer_shapes(model, strict_mode=True)


# --- a whole model ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported_v4(exported):
    """hrvmamba_tiny's default export, op version 6 (traced once per session, tests/conftest.py)."""
    e = exported("hrvmamba_tiny", (256, 192))
    return e, e.paths["custom"]


def _fused_v2(path):
    """A version-2 custom export with the fusions of versions 3 to 6 applied in the order `export_forms` applies
    them; returns the model and what each fusion changed."""
    model = onnx.load(str(path))
    made = [use_layer_norm_op(model), use_depthwise_conv_op(model), use_add_layer_norm_op(model),
            use_deform_aggregate_epilogues(model), use_scan_dt_projection(model)]
    for entry in model.opset_import:
        if entry.domain == "ssmpose":
            entry.version = 6
    return model, made


def test_hrvmamba_v4_graph_has_the_fused_nodes(exported_v4):
    e, path = exported_v4
    custom = onnx.load(str(path), load_external_data=False)
    onnx.checker.check_model(custom, full_check=True)
    assert {o.domain: o.version for o in custom.opset_import}["ssmpose"] == 6   # with the dt projections
    assert "LayerNormalization" not in {n.op_type for n in custom.graph.node}
    op_types = [n.op_type for n in custom.graph.node]
    blocks = [m for m in e.model.modules() if isinstance(m, HRVMambaBlock)]
    position_convs = sum(2 for m in blocks if isinstance(m, HRVMambaSEBlock))   # cpe1, cpe2
    fused = op_types.count("MultiKernelDepthwiseConv")
    producers = {out: n for n in custom.graph.node for out in n.output}
    attributes = [(n, {a.name: helper.get_attribute_value(a) for a in n.attribute}) for n in custom.graph.node]
    left = [n for n, a in attributes if n.op_type == "Conv" and a.get("group", 1) > 1 and a.get("strides") == [1, 1]]
    # A branch's first cpe1 reads the NCHW branch input directly (the exporter cancelled the transposes): no
    # channel-last convolution there to fuse. Every other one is fused.
    assert all(producers[n.input[0]].op_type != "Transpose" for n in left)
    assert fused == len(blocks) + position_convs - len(left) and len(left) <= 2
    scans = [n for n in custom.graph.node if n.op_type == "SelectiveScan2D"]
    unfolded = [n for n in scans if len(n.input) < 8 or not n.input[7]]   # dt ranks above MAX_FOLDED_DT_RANK
    assert 0 < len(unfolded) < len(scans)   # hrvmamba_tiny's ranks: 1, 2, 4 fold, 8 does not
    assert op_types.count("Split") == len(unfolded) and op_types.count("Gelu") == len(blocks)   # the MLPs'
    assert "Einsum" not in op_types   # each dt projection is one MatMul (use_block_diagonal_matmul)
    norms = sum(isinstance(m, torch.nn.LayerNorm) for m in e.model.modules())
    assert op_types.count("AddLayerNorm") + op_types.count("LayerNorm") == norms
    assert op_types.count("AddLayerNorm") >= 3 * len(blocks)
    assert _fused_v2(path)[1] == [0, 0, 0, 0, 0]   # nothing left to fuse


def test_fusions_of_a_version_2_export_give_the_default_export(exported):
    """mamkpd_small's version-2 export (the one test_scan_2d_models.py and test_openvino_scan_2d.py use) with
    the fusions applied is its default export (tests/test_mamkpd.py runs that), value for value. MamKPD has no
    LPU and no DeformAggregate, a Transpose stands between each residual Add and its channel-first LayerNorm, and
    its dt ranks (6 to 24) are above what the export folds: only the LayerNorms fuse, so the default export imports
    ssmpose version 3, the lowest with its ops."""
    v2 = exported("mamkpd_small", (256, 192), op_version=2)
    default = exported("mamkpd_small", (256, 192))
    fused, made = _fused_v2(v2.paths["custom"])
    norms = sum(isinstance(m, torch.nn.LayerNorm) for m in default.model.modules())   # LayerNorm2d too
    assert made == [norms, 0, 0, 0, 0]
    expected = onnx.load(str(default.paths["custom"]))
    for node in list(fused.graph.node) + list(expected.graph.node):
        node.ClearField("doc_string")   # the exporter sets it empty after fusing, make_node leaves it unset
    assert fused.graph.SerializeToString(deterministic=True) == expected.graph.SerializeToString(deterministic=True)
    assert {o.domain: o.version for o in expected.opset_import}["ssmpose"] == 3
    assert read_metadata(default.paths["custom"])["op_domain_version"] == 3


def test_hrvmamba_v4_custom_and_lowered_graphs_match_pytorch(exported_v4, tmp_path):
    import onnx_ir as ir

    from ssmpose.custom_ops.portable import lower_to_portable
    e, path = exported_v4
    graph = ir.load(str(path))
    custom_nodes = sum(1 for n in graph.graph if n.domain == "ssmpose")
    assert lower_to_portable(graph) == custom_nodes
    lowered = ir.serde.serialize_model(graph)
    modes = {helper.get_attribute_value(a) for n in lowered.graph.node if n.op_type == "GridSample"
             for a in n.attribute if a.name == "mode"}
    assert modes == {b"linear"}   # opset 20's name for bilinear
    out = tmp_path / "lowered.onnx"
    onnx.save(lowered, str(out))
    images = torch.randn(2, 3, 256, 192, generator=torch.Generator().manual_seed(5))
    expected = e.torch_heatmaps(images)
    scale = np.abs(expected).max()
    for source, custom in ((path, True), (out, False)):
        got = _session(source, custom).run(None, {"images": images.numpy()})[0]
        assert np.abs(got - expected).max() <= 1e-5 * scale, source
