"""The `ort-cpu` and `ort-cuda` backends: ONNX Runtime sessions over an exported ONNX file.

Custom-form graphs (with `ssmpose` domain nodes) get the project's custom-op library registered
automatically; a clear error says so when it is missing. `ort-cuda` binds inputs and outputs on the
device (IOBinding) and can report on which execution provider every node runs.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from .base import BackendUnavailable, InputSpec, Session
from .onnx_metadata import read_onnx_metadata

PROVIDERS = {"ort-cpu": "CPUExecutionProvider", "ort-cuda": "CUDAExecutionProvider"}
_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16"}
# ONNX Runtime's CUDA kernels index elements with 32-bit integers (CUDA_LONG): a larger tensor makes them
# read and write out of bounds, an illegal-address error (seen at hrvmamba_small portable batch 128) or a
# silently wrong output (microsoft/onnxruntime issues 28385, 32299).
CUDA_MAX_TENSOR_ELEMENTS = 2 ** 31 - 1


def cuda_max_batch(per_image_elements: Optional[int]) -> Optional[int]:
    """The largest batch whose biggest tensor ORT's CUDA kernels can index (None: no limit known)."""
    return None if not per_image_elements else CUDA_MAX_TENSOR_ELEMENTS // per_image_elements


def batch_limit(backend: str, requested: Optional[int], per_image: Optional[int], fixed_batch: Optional[int],
                where: str) -> Optional[int]:
    """The session's max_batch_per_run: what the caller asked for, checked; on ort-cuda at most (and by
    default) the CUDA indexing limit. A fixed-batch graph cannot be run in slices."""
    if requested is not None and (isinstance(requested, bool) or not isinstance(requested, int) or requested < 1):
        raise ValueError(f"{where}: max_batch_per_run must be a positive integer, got {requested!r}")
    if requested is not None and fixed_batch is not None:
        raise ValueError(f"{where}: the graph's batch is fixed at {fixed_batch}, so it cannot be run in "
                         f"slices (max_batch_per_run={requested}); export it with a dynamic batch")
    if backend != "ort-cuda":
        return requested
    if per_image is not None and per_image > CUDA_MAX_TENSOR_ELEMENTS:
        raise ValueError(f"{where}: the graph's largest tensor has {per_image:,} elements for a single image, "
                         f"more than ONNX Runtime's CUDA kernels can index (2^31 - 1)")
    limit = cuda_max_batch(per_image)
    if limit is not None and fixed_batch is not None and fixed_batch > limit:
        raise ValueError(f"{where}: at its fixed batch {fixed_batch} the graph's largest tensor has "
                         f"{fixed_batch * per_image:,} elements, more than ONNX Runtime's CUDA kernels can index "
                         f"(2^31 - 1); export it with a batch of at most {limit}, or a dynamic batch")
    if requested is not None and limit is not None and requested > limit:
        raise ValueError(f"{where}: max_batch_per_run={requested} is above {limit}, the largest batch whose "
                         f"biggest tensor ({per_image:,} elements per image) ONNX Runtime's CUDA kernels can "
                         f"index (2^31 - 1 elements)")
    if fixed_batch is not None:
        return None
    return requested if requested is not None else limit


def default_cuda_options(compute_dtype: str) -> Dict[str, str]:
    """CUDA EP options ssmpose sets unless the caller does. For float32 graphs cuDNN's heuristic
    convolution choice: on an H200 the exhaustive search (ORT's default) picked engines that wrap the
    convolutions in transposes and ran hrvmamba_small at 301 img/s against 707 (batch 128); for float16
    the exhaustive search was 8 % faster (docs/benchmarks.md)."""
    return {"cudnn_conv_algo_search": "HEURISTIC"} if compute_dtype == "float32" else {}


def _import_ort():
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailable("onnxruntime is not installed (pip install onnxruntime, or onnxruntime-gpu "
                                 "for ort-cuda)") from None
    return onnxruntime


class OrtSession(Session):
    def __init__(self, path, backend: str = "ort-cpu", device_id: int = 0, threads: int = 0,
                 optimization: str = "all", cuda_options: Optional[Dict[str, str]] = None,
                 max_batch_per_run: Optional[int] = None):
        """`cuda_options`: extra CUDA execution provider options for ort-cuda, e.g. {"prefer_nhwc": "1"} or
        {"enable_cuda_graph": "1"} (the session then replays one captured CUDA graph per input shape).
        `max_batch_per_run`: run larger batches in slices of this many images; on ort-cuda it defaults to
        (and may not exceed) the largest batch whose tensors ORT's 32-bit CUDA indexing can address."""
        if cuda_options and backend != "ort-cuda":
            raise ValueError(f"{backend}: cuda_options apply to ort-cuda only")
        ort = _import_ort()
        self.backend = backend
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{backend}: ONNX file {self.path} does not exist")
        metadata, domains, per_image = read_onnx_metadata(self.path)
        provider = PROVIDERS[backend]
        if backend == "ort-cuda":
            try:  # torch's CUDA libraries (cuBLAS, cuDNN) serve ORT's CUDA EP too
                import torch  # noqa: F401
            except ImportError:
                pass
        if provider not in ort.get_available_providers():
            raise BackendUnavailable(f"{backend}: this onnxruntime ({ort.__version__}) has no {provider} "
                                     f"(available: {', '.join(ort.get_available_providers())})")
        self.device_id = device_id
        self.options = ort.SessionOptions()
        self.options.graph_optimization_level = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}[optimization]
        if threads:
            self.options.intra_op_num_threads = threads
        self.custom_ops_library = None
        if "ssmpose" in domains:
            from ..custom_ops.ort_library import ort_library_path, unavailable_reason
            library = ort_library_path()
            if library is None:
                raise BackendUnavailable(f"{backend}: {self.path.name} is a custom-form graph (ssmpose domain "
                                         f"ops) and needs the ssmpose ONNX Runtime library, which is "
                                         f"unavailable: {unavailable_reason()}. Export with --ops portable "
                                         f"to run without it.")
            self.options.register_custom_ops_library(str(library))
            self.custom_ops_library = str(library)
        provider_options = {"device_id": str(device_id),
                            **(default_cuda_options(metadata.get("dtype")) if backend == "ort-cuda" else {}),
                            **{k: str(v) for k, v in (cuda_options or {}).items()}}
        self.cuda_graph = provider_options.get("enable_cuda_graph", "0") in ("1", "True", "true")
        self._graph_buffers: Dict[tuple, tuple] = {}
        self.providers = [(provider, provider_options)] if backend == "ort-cuda" else [provider]
        self.session = ort.InferenceSession(str(self.path), self.options, providers=self.providers)
        inp = self.session.get_inputs()[0]
        if inp.type not in _ORT_TYPES:
            raise ValueError(f"{backend}: {self.path.name} input '{inp.name}' has type {inp.type}; expected "
                             f"float or float16 images")
        shape = [d if isinstance(d, int) else None for d in inp.shape]
        self.output_name = self.session.get_outputs()[0].name
        super().__init__(metadata, InputSpec(inp.name, shape, _ORT_TYPES[inp.type]),
                         batch_limit(backend, max_batch_per_run, per_image, shape[0] if shape else None,
                                     f"{backend}: {self.path.name}"))

    def describe(self) -> dict:
        return {**super().describe(), "file": str(self.path),
                "providers": [p if isinstance(p, str) else {p[0]: p[1]} for p in self.providers],
                "custom_ops_library": self.custom_ops_library}

    def _run_numpy(self, images: np.ndarray) -> np.ndarray:
        if self.cuda_graph:
            import torch
            x = torch.from_numpy(images).cuda(self.device_id)
            return self._run_cuda_graph(x).float().cpu().numpy()
        if self.backend == "ort-cuda":
            ort = _import_ort()
            binding = self.session.io_binding()
            binding.bind_ortvalue_input(self.input_spec.name,
                                        ort.OrtValue.ortvalue_from_numpy(images, "cuda", self.device_id))
            binding.bind_output(self.output_name, "cuda", self.device_id)
            self.session.run_with_iobinding(binding)
            out = binding.copy_outputs_to_cpu()[0]
        else:
            out = self.session.run([self.output_name], {self.input_spec.name: images})[0]
        return out.astype(np.float32, copy=False)

    def _run_torch(self, images):
        if self.backend != "ort-cuda" or not images.is_cuda:
            return super()._run_torch(images)
        import torch
        x = images.to(getattr(torch, self.input_spec.dtype)).contiguous()
        if self.cuda_graph:
            return self._run_cuda_graph(x)
        out = torch.empty(self._output_shape(x), dtype=x.dtype, device=x.device)
        np_type = np.float16 if self.input_spec.dtype == "float16" else np.float32
        binding = self.session.io_binding()
        binding.bind_input(self.input_spec.name, "cuda", x.device.index or 0, np_type, tuple(x.shape), x.data_ptr())
        binding.bind_output(self.output_name, "cuda", x.device.index or 0, np_type, tuple(out.shape), out.data_ptr())
        torch.cuda.current_stream(x.device).synchronize()  # ORT reads x on its own stream
        self.session.run_with_iobinding(binding)            # returns after ORT's stream is done
        return out

    def _output_shape(self, x) -> tuple:
        k = self.session.get_outputs()[0].shape[1]
        k = k if isinstance(k, int) else self.metadata.get("num_keypoints", 17)
        return (x.shape[0], k, x.shape[-2] // 4, x.shape[-1] // 4)

    def _run_cuda_graph(self, x):
        """A captured CUDA graph reads and writes fixed addresses: each input shape gets its own static
        input/output buffers and graph id (ORT captures on the first runs of that id, then replays)."""
        import torch
        key = tuple(x.shape)
        if key not in self._graph_buffers:
            ort = _import_ort()
            static_in = torch.empty_like(x)
            static_out = torch.empty(self._output_shape(x), dtype=x.dtype, device=x.device)
            np_type = np.float16 if self.input_spec.dtype == "float16" else np.float32
            binding = self.session.io_binding()
            device = x.device.index or 0
            binding.bind_input(self.input_spec.name, "cuda", device, np_type, key, static_in.data_ptr())
            binding.bind_output(self.output_name, "cuda", device, np_type, static_out.shape, static_out.data_ptr())
            run_options = ort.RunOptions()
            run_options.add_run_config_entry("gpu_graph_id", str(len(self._graph_buffers) + 1))
            self._graph_buffers[key] = (static_in, static_out, binding, run_options)
        static_in, static_out, binding, run_options = self._graph_buffers[key]
        static_in.copy_(x)
        torch.cuda.current_stream(x.device).synchronize()
        self.session.run_with_iobinding(binding, run_options)
        return static_out.clone()

    def node_placement(self) -> dict:
        """Run once with profiling and count nodes per execution provider; lists nodes not on the EP asked for."""
        ort = _import_ort()
        options = ort.SessionOptions()
        options.graph_optimization_level = self.options.graph_optimization_level
        if self.custom_ops_library:
            options.register_custom_ops_library(self.custom_ops_library)
        options.enable_profiling = True
        with tempfile.TemporaryDirectory() as tmp:
            options.profile_file_prefix = os.path.join(tmp, "placement")
            # placement does not depend on graph capture, which would need device-bound inputs
            providers = [(p[0], {k: v for k, v in p[1].items() if k != "enable_cuda_graph"})
                         if isinstance(p, tuple) else p for p in self.providers]
            session = ort.InferenceSession(str(self.path), options, providers=providers)
            shape = [d or 1 for d in self.input_spec.shape]
            session.run(None, {self.input_spec.name: np.zeros(shape, dtype=self.input_spec.dtype)})
            with open(session.end_profiling()) as f:
                events = json.load(f)
        nodes = {}
        for e in events:
            args = e.get("args", {})
            if e.get("cat") == "Node" and "provider" in args:
                nodes[e["name"].removesuffix("_kernel_time")] = (args.get("op_name"), args["provider"])
        wanted = PROVIDERS[self.backend]
        elsewhere = sorted(f"{name} ({op}) on {prov}" for name, (op, prov) in nodes.items() if prov != wanted)
        return {"providers": dict(Counter(p for _, p in nodes.values())), "all_on_requested": not elsewhere,
                "not_on_requested": elsewhere}
