"""Op version 3: every LayerNorm over the last axis becomes one `ssmpose::LayerNorm` node (domain version 3) in
the custom form; the portable form keeps ONNX LayerNormalization, and a version-3 custom graph lowers back to it.
Both run in ONNX Runtime and match PyTorch. MamKPD's default export is such a graph (its LayerNorms are all the
default fusions find in it: tests/test_fused_export.py), shared with the other tests (tests/conftest.py);
`--op-version 3` is exported by the command line below."""
import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from ssmpose.cli.main import main
from ssmpose.export import read_metadata
from ssmpose.export.fusions import use_layer_norm_op

ort = pytest.importorskip("onnxruntime")
SIZE = (256, 192)   # the size of the shared MamKPD export


def _layer_norm_graph(**attributes):
    """x (2, 3, 4, 8) -> LayerNormalization(**attributes) -> y."""
    inputs = ["x", "scale", "bias"] if attributes.pop("bias", True) else ["x", "scale"]
    outputs = ["y", "mean"] if attributes.pop("with_mean", False) else ["y"]
    node = helper.make_node("LayerNormalization", inputs, outputs, name="ln", **attributes)
    axis = attributes.get("axis", -1)
    channels = 8 if axis in (-1, 3) else 3
    inits = [numpy_helper.from_array(np.linspace(0.5, 1.5, channels).astype(np.float32), "scale"),
             numpy_helper.from_array(np.linspace(-1, 1, channels).astype(np.float32), "bias")]
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 8])],
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs],
                              inits[:len(inputs) - 1])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("attributes,replaced", [
    (dict(), 1), (dict(axis=-1, epsilon=1e-3), 1), (dict(axis=3), 1),
    (dict(axis=1), 0), (dict(stash_type=0), 0), (dict(bias=False), 0), (dict(with_mean=True), 0),
])
def test_only_last_axis_float32_statistics_layer_norms_are_replaced(attributes, replaced):
    model = _layer_norm_graph(**attributes)
    epsilon = attributes.get("epsilon", 1e-5)
    assert use_layer_norm_op(model) == replaced
    node = model.graph.node[0]
    assert (node.domain, node.op_type) == (("ssmpose", "LayerNorm") if replaced else ("", "LayerNormalization"))
    if replaced:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["epsilon"] == pytest.approx(epsilon) and attrs["plugin_namespace"] == b"ssmpose"
        assert list(node.input) == ["x", "scale", "bias"] and list(node.output) == ["y"]


def test_schema_checks_the_weight_length():
    model = _layer_norm_graph()
    use_layer_norm_op(model)
    model.opset_import.add(domain="ssmpose", version=3)
    model.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.zeros(5, np.float32), "bias"))
    with pytest.raises(onnx.shape_inference.InferenceError, match="LayerNorm: bias has 5 values, X has 8 channels"):
        onnx.shape_inference.infer_shapes(model, strict_mode=True)


@pytest.fixture(scope="module")
def exported_v3(exported):
    e = exported("mamkpd_small", SIZE)
    return e.model, e.paths, e.results


def _run(path, images):
    from ssmpose.custom_ops.ort_library import ort_library_path
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.register_custom_ops_library(str(ort_library_path()))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images.numpy()})[0]


def test_custom_form_has_one_layer_norm_node_per_layer_norm_and_runs(exported_v3):
    model, paths, results = exported_v3
    custom = onnx.load(str(paths["custom"]), load_external_data=False)
    norms = sum(isinstance(m, torch.nn.LayerNorm) for m in model.modules())
    op_types = [n.op_type for n in custom.graph.node]
    assert op_types.count("LayerNorm") == norms and "LayerNormalization" not in op_types
    assert {o.domain: o.version for o in custom.opset_import}["ssmpose"] == 3
    assert read_metadata(paths["custom"])["op_domain_version"] == 3
    portable = onnx.load(str(paths["portable"]), load_external_data=False)
    assert [n.op_type for n in portable.graph.node].count("LayerNormalization") == norms
    assert "ssmpose" not in {n.domain for n in portable.graph.node}
    images = torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = model(images).numpy()
    for form, path in paths.items():
        got = _run(path, images)
        assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max(), form


def test_version_3_custom_graph_lowers_back_to_layer_normalization(exported_v3, tmp_path):
    import onnx_ir as ir

    from ssmpose.custom_ops.portable import lower_to_portable
    model, paths, _ = exported_v3
    graph = ir.load(str(paths["custom"]))
    custom_nodes = sum(1 for n in graph.graph if n.domain == "ssmpose")
    assert lower_to_portable(graph) == custom_nodes
    lowered = ir.serde.serialize_model(graph)
    assert "ssmpose" not in {n.domain for n in lowered.graph.node}
    out = tmp_path / "lowered.onnx"
    onnx.save(lowered, str(out))
    images = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = model(images).numpy()
    assert np.abs(_run(out, images) - expected).max() <= 1e-5 * np.abs(expected).max()


def test_cli_op_version_3(tmp_path):
    out = tmp_path / "v3.onnx"
    result = CliRunner().invoke(main, ["export", "mamkpd_small", "--input-size", "64x48", "--op-version", "3",
                                       "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert read_metadata(out)["op_domain_version"] == 3
    result = CliRunner().invoke(main, ["export", "mamkpd_small", "--op-version", "8", "-o", str(out)])
    assert result.exit_code == 2 and "op-version" in result.output
