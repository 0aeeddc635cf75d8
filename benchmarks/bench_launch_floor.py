"""Per-kernel floor of a replayed graph on one GPU: what a graph of N nodes costs when the nodes do no work.

A chain of N tiny Add nodes (fp16, 64 elements) run by ONNX Runtime's CUDA EP with its CUDA graph, and the same
chain captured as a PyTorch CUDA graph. The time per node is the least a node of the exported model can cost at
batch 1, whatever its kernel does, so N x that is a lower bound on the model's batch-1 latency (not a test:
prints a table, writes JSON).

    python benchmarks/bench_launch_floor.py --nodes 1186 --json floor.json      # on the GPU machine
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def chain_model(nodes: int, size: int) -> onnx.ModelProto:
    one = numpy_helper.from_array(np.ones(size, dtype=np.float16) * np.float16(1e-3), "step")
    graph_nodes, name = [], "x"
    for i in range(nodes):
        out = "y" if i == nodes - 1 else f"t{i}"
        graph_nodes.append(helper.make_node("Add", [name, "step"], [out]))
        name = out
    graph = helper.make_graph(graph_nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [size])], initializer=[one])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)  # ORT 1.17+


def median_ms(run, repeats: int) -> float:
    import torch
    for _ in range(5):
        run()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def ort_chain_ms(nodes: int, size: int, repeats: int) -> float:
    import onnxruntime as ort
    import torch
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "chain.onnx"
        onnx.save(chain_model(nodes, size), str(path))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL   # keep every node
        session = ort.InferenceSession(str(path), options, providers=[
            ("CUDAExecutionProvider", {"enable_cuda_graph": "1"})])
    x = torch.zeros(size, dtype=torch.float16, device="cuda")
    y = torch.empty_like(x)
    binding = session.io_binding()
    binding.bind_input("x", "cuda", 0, np.float16, [size], x.data_ptr())
    binding.bind_output("y", "cuda", 0, np.float16, [size], y.data_ptr())
    return median_ms(lambda: session.run_with_iobinding(binding), repeats)


def torch_chain_ms(nodes: int, size: int, repeats: int) -> float:
    import torch
    x = torch.zeros(size, dtype=torch.float16, device="cuda")
    step = torch.full_like(x, 1e-3)
    buffers = [torch.empty_like(x) for _ in range(2)]

    def chain():
        src = x
        for i in range(nodes):
            torch.add(src, step, out=buffers[i % 2])
            src = buffers[i % 2]
    chain()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        chain()
    return median_ms(graph.replay, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", nargs="+", type=int, default=[500, 1186, 2000])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    import torch
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "size": args.size, "rows": []}
    print(f"{'nodes':>6} {'runtime':<26} {'ms':>8} {'us/node':>8}")
    for nodes in args.nodes:
        for label, fn in (("ort-cuda + CUDA graph", ort_chain_ms), ("torch CUDA graph", torch_chain_ms)):
            ms = fn(nodes, args.size, args.repeats)
            result["rows"].append({"nodes": nodes, "runtime": label, "ms": ms, "us_per_node": ms * 1e3 / nodes})
            print(f"{nodes:>6} {label:<26} {ms:8.3f} {ms * 1e3 / nodes:8.2f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
