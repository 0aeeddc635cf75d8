"""The portable lowerings (custom_ops/portable.py) against the reference operators, and the ssmpose schemas.

Each lowering is emitted on its own into a one-node-replacement ONNX graph and run in ONNX Runtime (CPU):
the scan in float64, the deformable aggregation in float32 (ONNX Runtime's GridSample has no float64).
"""
import numpy as np
import onnx
import pytest
import torch

ort = pytest.importorskip("onnxruntime")
ir = pytest.importorskip("onnx_ir")

from ssmpose.custom_ops import portable, reference  # noqa: E402
from ssmpose.export import schemas  # noqa: E402
from op_cases import pad_widths  # noqa: E402

schemas.register_schemas()
F64, F32 = ir.DataType.DOUBLE, ir.DataType.FLOAT


def _value(name, shape, dtype):
    return ir.Value(name=name, shape=ir.Shape(shape), type=ir.TensorType(dtype))


def _model(inputs, output, nodes):
    output.name = "y"
    graph = ir.Graph(inputs, [output], nodes=nodes, opset_imports={"": 18}, name="lowering")
    return ir.serde.serialize_model(ir.Model(graph, ir_version=10))


def _session(proto):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def scan_graph(groups, dim, dstate, length, chunk_size=None, method=portable.DEFAULT_SCAN_LOWERING, dtype=F64):
    """SelectiveScan lowering with a symbolic batch dimension; returns (ModelProto, node count)."""
    c = groups * dim
    inputs = [_value("u", ["batch", c, length], dtype), _value("delta", ["batch", c, length], dtype),
              _value("A", [c, dstate], dtype), _value("Bs", ["batch", groups, dstate, length], dtype),
              _value("Cs", ["batch", groups, dstate, length], dtype), _value("Ds", [c], dtype),
              _value("delta_bias", [c], dtype)]
    builder = portable.IRBuilder()
    y = portable.selective_scan_subgraph(builder, *inputs, delta_softplus=1, chunk_size=chunk_size, method=method)
    nodes = builder.tape.nodes
    return _model(inputs, y, nodes), sum(1 for n in nodes if n.op_type != "Constant")


def deform_graph(batch, height, width, p, out_h, out_w, attrs):
    channels = attrs["group"] * attrs["group_channels"]
    inputs = [_value("value", [batch, height, width, channels], F32),
              _value("offset_mask", [batch, out_h, out_w, p], F32)]
    builder = portable.IRBuilder()
    y = portable.deform_aggregate_subgraph(builder, *inputs, **attrs)
    nodes = builder.tape.nodes
    return _model(inputs, y, nodes), sum(1 for n in nodes if n.op_type != "Constant")


def _scan_args(batch, groups, dim, dstate, length, seed):
    g = torch.Generator().manual_seed(seed)
    c = groups * dim
    t = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    u, delta = t(batch, c, length), t(batch, c, length) - 1.0
    A = -torch.exp(t(c, dstate) * 0.5)               # as the models build it: A = -exp(A_logs)
    return u, delta, A, t(batch, groups, dstate, length), t(batch, groups, dstate, length), t(c), t(c)


# (batch, groups, dim, dstate, length): N = 1 and 16, L from 1 to 7000, chunk edges (L = T-1, T, T+1)
SCAN_SHAPES = [(1, 1, 3, 1, 1), (2, 2, 3, 16, 2), (1, 3, 2, 1, 31), (2, 1, 4, 16, 32), (1, 2, 2, 1, 33),
               (3, 2, 3, 16, 100), (1, 4, 2, 1, 1000), (2, 1, 2, 16, 1729), (1, 2, 2, 1, 6912), (1, 1, 2, 16, 7000)]


@pytest.mark.parametrize("method", portable.SCAN_LOWERINGS)
@pytest.mark.parametrize("shape", SCAN_SHAPES, ids=lambda s: "B{}G{}D{}N{}L{}".format(*s))
def test_scan_lowering_matches_reference_float64(shape, method):
    batch, groups, dim, dstate, length = shape
    args = _scan_args(*shape, seed=length)
    proto, _ = scan_graph(groups, dim, dstate, length, method=method)
    session = _session(proto)
    y = session.run(None, {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)})[0]
    expected = reference.selective_scan_reference(*args, delta_softplus=True).numpy()
    assert np.abs(y - expected).max() <= 1e-10 * max(1.0, np.abs(expected).max())


@pytest.mark.parametrize("method", portable.SCAN_LOWERINGS)
@pytest.mark.parametrize("chunk_size", [2, 5, 16, 64, 128])
def test_scan_lowering_any_chunk_size(chunk_size, method):
    shape = (2, 2, 3, 1, 300)
    args = _scan_args(*shape, seed=chunk_size)
    session = _session(scan_graph(2, 3, 1, 300, chunk_size=chunk_size, method=method)[0])
    y = session.run(None, {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)})[0]
    expected = reference.selective_scan_reference(*args, delta_softplus=True).numpy()
    assert np.abs(y - expected).max() <= 1e-10 * np.abs(expected).max()


@pytest.mark.parametrize("method", portable.SCAN_LOWERINGS)
def test_a_sequence_shorter_than_the_chunk_is_not_padded(method):
    """L = 5 (GLSMamba's temporal scans) with the default chunk gives exactly the graph of chunk 5: no
    padding to 32 or 64 (the decay matrices of millions of such sequences would not fit in memory)."""
    default, _ = scan_graph(2, 3, 4, 5, method=method)
    exact, _ = scan_graph(2, 3, 4, 5, chunk_size=5, method=method)
    assert default.graph.SerializeToString() == exact.graph.SerializeToString()
    args = _scan_args(3, 2, 3, 4, 5, seed=11)
    session = _session(default)
    y = session.run(None, {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)})[0]
    expected = reference.selective_scan_reference(*args, delta_softplus=True).numpy()
    assert np.abs(y - expected).max() <= 1e-10 * np.abs(expected).max()


@pytest.mark.parametrize("chunk_size,levels", [(2, 1), (5, 0), (12, 2), (48, 3), (64, 3), (128, 3)])
def test_halving_levels_follow_the_chunk(chunk_size, levels):
    """As many pair merges as 2 divides the chunk, at most three; the merged sequence still matches."""
    assert portable.halving_levels(chunk_size) == levels
    args = _scan_args(2, 1, 2, 1, 2 * chunk_size + 3, seed=chunk_size)
    session = _session(scan_graph(1, 2, 1, 2 * chunk_size + 3, chunk_size=chunk_size, method="halving")[0])
    y = session.run(None, {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)})[0]
    expected = reference.selective_scan_reference(*args, delta_softplus=True).numpy()
    assert np.abs(y - expected).max() <= 1e-10 * np.abs(expected).max()


def test_cli_offers_every_scan_lowering():
    from ssmpose.cli.export_cmds import SCAN_LOWERINGS
    assert set(SCAN_LOWERINGS) == set(portable.SCAN_LOWERINGS) and portable.DEFAULT_SCAN_LOWERING == "halving"


def test_scan_lowering_float32_strong_decay_is_finite_and_accurate():
    """Large |dt * A| (chunk totals far beyond float32's exp range) must not produce inf or NaN."""
    args = list(_scan_args(1, 2, 3, 1, 500, seed=3))
    args[1] = args[1] * 4 + 8          # dt up to ~20: chunk totals of several hundred
    args[2] = args[2] * 5
    args32 = [a.float() for a in args]
    for method in portable.SCAN_LOWERINGS:
        session = _session(scan_graph(2, 3, 1, 500, method=method, dtype=F32)[0])
        y = session.run(None, {i.name: a.numpy() for i, a in zip(session.get_inputs(), args32)})[0]
        expected = reference.selective_scan_reference(*args, delta_softplus=True).numpy()
        assert np.isfinite(y).all()
        assert np.abs(y - expected).max() <= 1e-5 * np.abs(expected).max()


@pytest.mark.parametrize("method", portable.SCAN_LOWERINGS)
def test_scan_lowering_node_count_does_not_grow_with_length(method):
    """The same nodes for every sequence of whole chunks, and for every longer one that ends inside a chunk (the
    end padding adds its nodes); a sequence shorter than the chunk (whose chunk is the sequence) never needs
    more."""
    chunk = portable.DEFAULT_CHUNKS[method]
    counts = {length: scan_graph(2, 3, 1, length, method=method)[1]
              for length in (1, 5, 48, 3072, 6912, 7000, 9001)}
    whole = {n for length, n in counts.items() if length >= chunk and length % chunk == 0}
    partial = {n for length, n in counts.items() if length > chunk and length % chunk}
    assert len(whole) == 1 and len(partial) == 1, counts
    assert max(counts.values()) == max(whole | partial), counts
    proto, _ = scan_graph(2, 3, 1, 6912, method=method)
    ops = {n.op_type for n in proto.graph.node}
    assert not ops & {"Loop", "Scan", "If"}


@pytest.mark.parametrize("method", portable.SCAN_LOWERINGS)
def test_scan_lowering_pads_only_the_last_two_axes_of_4d_tensors(method):
    """The shifts and the end padding (7000 steps end inside a chunk) pad the last two axes of 4-D tensors, the
    only Pad that ONNX Runtime's CUDA EP runs with its fast kernel (docs/benchmarks.md)."""
    pads = pad_widths(scan_graph(2, 3, 1, 7000, method=method)[0])
    assert pads
    for p in pads:
        assert len(p) == 8 and not p[[0, 1, 4, 5]].any(), p


DEFORM_CASES = [
    # (batch, H, W, extra P columns, attributes)
    (2, 7, 9, 3, dict(kernel_h=3, kernel_w=3, stride_h=1, stride_w=1, pad_h=1, pad_w=1, dilation_h=1, dilation_w=1,
                      group=2, group_channels=4, offset_scale=1.0, remove_center=0)),
    (1, 9, 8, 0, dict(kernel_h=3, kernel_w=3, stride_h=2, stride_w=2, pad_h=1, pad_w=1, dilation_h=1, dilation_w=1,
                      group=3, group_channels=2, offset_scale=0.5, remove_center=1)),
    (1, 8, 10, 5, dict(kernel_h=5, kernel_w=3, stride_h=1, stride_w=2, pad_h=2, pad_w=1, dilation_h=2, dilation_w=1,
                       group=1, group_channels=3, offset_scale=1.3, remove_center=0)),
]


@pytest.mark.parametrize("case", DEFORM_CASES, ids=["3x3", "stride2-rc", "5x3-dil2"])
def test_deform_lowering_matches_reference(case):
    batch, height, width, extra, attrs = case
    k = attrs["kernel_h"] * attrs["kernel_w"] - attrs["remove_center"]
    out_h, out_w = reference.deform_output_size(height, width, attrs["kernel_h"], attrs["kernel_w"],
                                                attrs["stride_h"], attrs["stride_w"], attrs["pad_h"], attrs["pad_w"],
                                                attrs["dilation_h"], attrs["dilation_w"])
    p = attrs["group"] * k * 3 + extra
    g = torch.Generator().manual_seed(k)
    value = torch.randn(batch, height, width, attrs["group"] * attrs["group_channels"], generator=g)
    offset_mask = torch.randn(batch, out_h, out_w, p, generator=g) * 2.5   # many points leave the image
    offset_mask[0, 0, 0, :2] = torch.tensor([-40.0, 3.0])                   # px <= -1: contributes nothing
    proto, _ = deform_graph(batch, height, width, p, out_h, out_w, attrs)
    y = _session(proto).run(None, {"value": value.numpy(), "offset_mask": offset_mask.numpy()})[0]
    args = [attrs[n] for n in portable.DEFORM_ATTRIBUTES]
    expected = reference.deform_aggregate_reference(value.double(), offset_mask.double(), *args).numpy()
    assert np.abs(y - expected).max() <= 1e-5 * np.abs(expected).max()


def test_deform_lowering_node_count_does_not_depend_on_size():
    attrs = DEFORM_CASES[0][4]
    counts = {(h, w): deform_graph(1, h, w, 56, h, w, attrs)[1] for h, w in ((64, 48), (96, 72), (8, 6))}
    assert len(set(counts.values())) == 1, counts


def test_lower_to_portable_replaces_custom_nodes():
    """A graph of ssmpose nodes -> standard ops only, same results as the reference."""
    groups, dim, length = 2, 3, 40
    c = groups * dim
    nodes = [onnx.helper.make_node("SelectiveScan", ["u", "delta", "A", "Bs", "Cs", "", "bias"], ["y"],
                                   domain="ssmpose", delta_softplus=1, plugin_version="1", plugin_namespace="ssmpose")]
    vi = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph(
        nodes, "g", [vi("u", onnx.TensorProto.FLOAT, ["b", c, length]), vi("delta", onnx.TensorProto.FLOAT, ["b", c, length]),
                     vi("A", onnx.TensorProto.FLOAT, [c, 1]), vi("Bs", onnx.TensorProto.FLOAT, ["b", groups, 1, length]),
                     vi("Cs", onnx.TensorProto.FLOAT, ["b", groups, 1, length]), vi("bias", onnx.TensorProto.FLOAT, [c])],
        [vi("y", onnx.TensorProto.FLOAT, ["b", c, length])])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18),
                                                         onnx.helper.make_opsetid("ssmpose", 1)])
    onnx.checker.check_model(model, full_check=True)
    ir_model = ir.serde.deserialize_model(model)
    assert portable.lower_to_portable(ir_model) == 1
    lowered = ir.serde.serialize_model(ir_model)
    assert {n.domain for n in lowered.graph.node} == {""}
    assert "ssmpose" not in {o.domain for o in lowered.opset_import}
    onnx.checker.check_model(lowered, full_check=True)
    u, delta, A, Bs, Cs, _, bias = _scan_args(2, groups, dim, 1, length, seed=1)
    feeds = {"u": u, "delta": delta, "A": A, "Bs": Bs, "Cs": Cs, "bias": bias}
    y = _session(lowered).run(None, {k: v.float().numpy() for k, v in feeds.items()})[0]
    expected = reference.selective_scan_reference(u, delta, A, Bs, Cs, None, bias, True).numpy()
    assert np.abs(y - expected).max() <= 1e-5 * np.abs(expected).max()


@pytest.mark.parametrize("method", portable.SCAN_LOWERINGS)
def test_translation_table_matches_reference(method):
    """The same lowering as torch.onnx translation functions (for users exporting their own modules)."""
    class Scan(torch.nn.Module):
        def forward(self, u, delta, A, Bs, Cs, Ds, bias):
            return torch.ops.ssmpose.selective_scan(u, delta, A, Bs, Cs, Ds, bias, 1)

    args = _scan_args(2, 2, 3, 1, 70, seed=7)
    program = torch.onnx.export(Scan().eval(), args, dynamo=True, opset_version=18, optimize=False, verbose=False,
                                custom_translation_table=portable.translation_table(16, method))
    session = _session(program.model_proto)
    y = session.run(None, {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)})[0]
    expected = reference.selective_scan_reference(*args, delta_softplus=True).numpy()
    assert np.abs(y - expected).max() <= 1e-10 * np.abs(expected).max()


def _custom_node_model(with_value_info: bool):
    vi = onnx.helper.make_tensor_value_info
    f = onnx.TensorProto.FLOAT
    nodes = [
        onnx.helper.make_node("DeformAggregate", ["value", "om"], ["agg"], domain="ssmpose", kernel_h=3, kernel_w=3,
                              stride_h=1, stride_w=1, pad_h=1, pad_w=1, dilation_h=1, dilation_w=1, group=2,
                              group_channels=8, offset_scale=1.0, remove_center=0, plugin_version="1",
                              plugin_namespace="ssmpose"),
        onnx.helper.make_node("Reshape", ["agg", "shape"], ["u"]),
        onnx.helper.make_node("SelectiveScan", ["u", "u", "A", "Bs", "Bs", "Ds", "Ds"], ["y"], domain="ssmpose",
                              delta_softplus=1, plugin_version="1", plugin_namespace="ssmpose"),
    ]
    inits = [onnx.numpy_helper.from_array(np.array([0, 16, 48], dtype=np.int64), "shape"),
             onnx.numpy_helper.from_array(-np.ones((16, 1), np.float32), "A"),
             onnx.numpy_helper.from_array(np.ones(16, np.float32), "Ds")]
    graph = onnx.helper.make_graph(nodes, "g", [vi("value", f, ["b", 6, 8, 16]), vi("om", f, ["b", 6, 8, 56]),
                                                vi("Bs", f, ["b", 2, 1, 48])],
                                   [vi("y", f, ["b", 16, 48])], initializer=inits)
    if with_value_info:
        graph.value_info.extend([vi("agg", f, ["b", 6, 8, 16]), vi("u", f, ["b", 16, 48])])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18),
                                                        onnx.helper.make_opsetid("ssmpose", 1)])


def test_custom_schemas_check_and_infer_shapes():
    model = _custom_node_model(with_value_info=False)
    onnx.checker.check_model(model, full_check=True)
    model.graph.output[0].type.tensor_type.ClearField("shape")
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    shapes = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    assert shapes["agg"] == ["b", 6, 8, 16]
    assert shapes["y"] == ["b", 16, 48]


def test_custom_schema_rejects_bad_rank():
    model = _custom_node_model(with_value_info=False)
    model.graph.input[0].type.tensor_type.shape.dim.pop()     # value of rank 3
    with pytest.raises(Exception, match="rank"):
        onnx.shape_inference.infer_shapes(model, strict_mode=True)
