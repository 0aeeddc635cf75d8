"""Memory traffic of an ONNX graph, node by node: a lower bound on its time when every node is its own kernel
(not a test: prints a table, optionally writes JSON).

Shapes come from ONNX shape inference with the symbolic batch set to --batch. Each node is charged the bytes
of its inputs and outputs once (weights and constants included; Slice and Gather only the part of their data
that they copy), the least a kernel that reads its inputs and writes its outputs can move; metadata-only
nodes (Reshape, Squeeze, Unsqueeze, Shape, Constant, Identity, Flatten) are free. Divided by a copy bandwidth,
that is the time the graph cannot beat on that device when run one kernel per node (as ONNX Runtime's CUDA EP
does, apart from its few fusions) with no tensor kept in the cache between kernels. With --min-tensor-mb at
the GPU's L2 size only tensors too large to stay in the cache are counted, so that bound holds whatever the
cache does:

    python benchmarks/graph_traffic.py model.onnx --batch 32 --bandwidth-tb-s 2.94 --json traffic.json
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

FREE_OPS = {"Reshape", "Squeeze", "Unsqueeze", "Shape", "Constant", "Identity", "Flatten"}
READS_WHAT_IT_WRITES = {"Slice", "Gather"}   # their data input is charged at most the size of their outputs


def _with_batch(model, batch: int):
    """The model with every symbolic (or unknown) leading input dimension set to `batch`."""
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].Clear()
            dims[0].dim_value = batch
    return model


def _value_bytes(model) -> dict:
    """name -> bytes of every tensor with a fully known static shape (inferred values, inputs, outputs,
    initializers, Constant outputs)."""
    import numpy as np
    from onnx import helper, numpy_helper

    sizes = {}
    for value in (*model.graph.value_info, *model.graph.input, *model.graph.output):
        tensor_type = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
        if tensor_type.HasField("shape") and None not in dims and tensor_type.elem_type:
            itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)).itemsize
            sizes[value.name] = int(np.prod(dims, dtype=np.int64)) * itemsize
    for init in model.graph.initializer:
        sizes[init.name] = numpy_helper.to_array(init).nbytes
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].type == 4:   # a tensor
            sizes[node.output[0]] = numpy_helper.to_array(node.attribute[0].t).nbytes
    return sizes


def graph_traffic(path: Path, batch: int, min_tensor_bytes: int = 0) -> dict:
    """{"nodes", "unknown", "per_op": {op: {"count", "bytes"}}, "total_bytes"} for the graph at `batch`,
    counting only tensors of at least `min_tensor_bytes`."""
    import onnx

    from ssmpose.export.schemas import register_schemas
    register_schemas()   # the custom form's shapes come from the ssmpose schemas' inference functions
    model = _with_batch(onnx.load(str(path)), batch)
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    sizes = _value_bytes(model)
    per_op = defaultdict(lambda: {"count": 0, "bytes": 0})
    unknown = 0
    for node in model.graph.node:
        if node.op_type in FREE_OPS:
            continue
        names = [n for n in (*node.input, *node.output) if n]
        if any(n not in sizes for n in names):
            unknown += 1
        counted = [sizes.get(n, 0) for n in names]
        if node.op_type in READS_WHAT_IT_WRITES:
            counted[0] = min(counted[0], sum(sizes.get(n, 0) for n in node.output))
        entry = per_op[f"{node.domain + '::' if node.domain else ''}{node.op_type}"]
        entry["count"] += 1
        entry["bytes"] += sum(size for size in counted if size >= min_tensor_bytes)
    total = sum(v["bytes"] for v in per_op.values())
    return {"nodes": len(model.graph.node), "unknown": unknown, "per_op": dict(per_op), "total_bytes": total}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("onnx", nargs="+", type=Path)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--bandwidth-tb-s", type=float, default=2.94,
                        help="copy bandwidth for the time bound (default: 2.94, an H100's measured copy rate)")
    parser.add_argument("--min-tensor-mb", type=float, default=0.0,
                        help="count only tensors of at least this many MB: with the GPU's L2 size (50 on an H100), "
                             "a tensor written by one kernel and read by the next cannot stay in the cache, so "
                             "the bound holds whatever the cache does")
    parser.add_argument("--top", type=int, default=12, help="op types listed per graph")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    for path in args.onnx:
        if not path.is_file():
            raise SystemExit(f"{path}: no such ONNX file")
    reports = {}
    for path in args.onnx:
        try:
            report = graph_traffic(path, args.batch, int(args.min_tensor_mb * 1e6))
        except Exception as exc:   # protobuf's DecodeError, onnx's shape inference errors, missing external data
            raise SystemExit(f"{path}: cannot read as an ONNX model with inferable shapes "
                             f"({type(exc).__name__}: {exc})")
        report["bound_ms"] = report["total_bytes"] / (args.bandwidth_tb_s * 1e12) * 1e3
        reports[str(path)] = report
        print(f"{path.name}: {report['nodes']} nodes, batch {args.batch}: {report['total_bytes'] / 1e9:.2f} GB "
              f"moved, >= {report['bound_ms']:.1f} ms at {args.bandwidth_tb_s} TB/s"
              + (f" ({report['unknown']} nodes with unknown shapes counted in part)" if report["unknown"] else ""))
        ranked = sorted(report["per_op"].items(), key=lambda kv: -kv[1]["bytes"])
        for op, entry in ranked[:args.top]:
            share = entry["bytes"] / max(report["total_bytes"], 1)
            print(f"    {op:<32} x{entry['count']:<5} {entry['bytes'] / 1e9:8.3f} GB  {share:6.1%}")
    if args.json:
        args.json.write_text(json.dumps({"batch": args.batch, "bandwidth_tb_s": args.bandwidth_tb_s,
                                         "min_tensor_mb": args.min_tensor_mb,
                                         "graphs": reports}, indent=1))


if __name__ == "__main__":
    main()
