"""benchmarks/graph_traffic.py: the bytes it charges each node, against sizes worked out by hand."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "graph_traffic.py"


def load_script():
    spec = importlib.util.spec_from_file_location("graph_traffic", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tiny_model(tmp_path):
    """X (N, 4) float32 -> Add a (4,) weight -> Slice the first 2 columns -> Reshape to (-1,)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    ints = lambda name, values: numpy_helper.from_array(np.array(values, dtype=np.int64), name)  # noqa: E731
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"]),
         helper.make_node("Slice", ["y", "starts", "ends", "axes"], ["z"]),
         helper.make_node("Reshape", ["z", "flat"], ["out"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.ones(4, dtype=np.float32), "w"), ints("starts", [0]), ints("ends", [2]),
         ints("axes", [1]), ints("flat", [-1])])
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_bytes_per_node_at_a_given_batch(tiny_model):
    report = load_script().graph_traffic(tiny_model, batch=3)
    # Add: x (3x4 float32, 48 B) + w (16 B) + y (48 B); Slice: the 24 B it copies of y, three one-element
    # int64 inputs (24 B), z (24 B); Reshape is free.
    assert report["per_op"] == {"Add": {"count": 1, "bytes": 112}, "Slice": {"count": 1, "bytes": 72}}
    assert report["total_bytes"] == 184 and report["unknown"] == 0


def test_only_tensors_above_the_size_floor(tiny_model):
    report = load_script().graph_traffic(tiny_model, batch=3, min_tensor_bytes=40)
    assert report["per_op"]["Add"]["bytes"] == 96 and report["per_op"]["Slice"]["bytes"] == 0


def test_missing_file_is_named(tmp_path):
    with pytest.raises(SystemExit, match="no_such.onnx: no such ONNX file"):
        load_script().main([str(tmp_path / "no_such.onnx")])


def test_a_file_that_is_not_onnx_is_named(tmp_path):
    bad = tmp_path / "notes.onnx"
    bad.write_text("not a model")
    with pytest.raises(SystemExit, match="notes.onnx: cannot read as an ONNX model"):
        load_script().main([str(bad)])
