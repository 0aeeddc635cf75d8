"""The `tensorrt` backend: a TensorRT engine built from an exported ONNX file, run on CUDA tensors.

Custom-form files (``ssmpose`` domain nodes) need the project's plugin library ``libssmpose_trt.so``
(``custom_ops/csrc/tensorrt``, docs/tensorrt.md), which is loaded into TensorRT's plugin registry before the file is
parsed or a cached engine is deserialised; portable files need nothing but TensorRT. The library carries a plugin
for every op of the domain, versions 1 to 7 (2 added SelectiveScan2D, 3 LayerNorm, 4 AddLayerNorm and
MultiKernelDepthwiseConv, 5 DeformAggregate's offset_bias input and activation field, 7 VSSBlockTail), so files
exported with op versions 1 to 5 build, and so do files of version 7 without version 6's feature. Version 6's
feature, SelectiveScan2D's dt_projection input (the export default for HRVMamba), is not covered: a file with such a
node (whatever its version) is refused before TensorRT parses it, with a message asking for ``--op-version 5``.

Precision: a float32 export builds an fp32 engine (TF32 off, so that results stay within the fp32 parity
tolerance) unless ``precision="fp16"``, which lets TensorRT pick float16 kernels (the ssmpose plugins then
negotiate float16 too). A float16 export is built as a strongly typed network: its own types decide.

Engines are cached (``~/.cache/ssmpose/trt``, or ``$SSMPOSE_TRT_CACHE``) under a key of the ONNX file's sha256
(with its external data), the TensorRT version, the GPU (name and compute capability), the precision, the batch
range of the optimisation profile, the input shape and the plugin library's interface version.

Video models' files take clips (batch, T, 3, H, W); the profile varies the batch only.

Nothing here imports TensorRT or torch at module import time; a missing TensorRT, CUDA device or plugin library
raises ``BackendUnavailable`` naming what is missing.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import sys
import threading
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .base import BackendUnavailable, InputSpec, Session
from .onnx_metadata import read_onnx_metadata

PLUGIN_LIBRARY_NAME = "libssmpose_trt.so"
# Must equal SSMPOSE_TRT_LIBRARY_VERSION of custom_ops/csrc/tensorrt/trt_common.h. 2: SelectiveScan2D (domain
# version 2) added; 3: LayerNorm (domain version 3) added; 4: AddLayerNorm and MultiKernelDepthwiseConv (domain
# version 4) added; 5: DeformAggregate's offset_bias input and activation field (domain version 5); 6: VSSBlockTail
# (domain version 7) added. An older library is refused as stale.
PLUGIN_LIBRARY_VERSION = 6
PLUGIN_NAMESPACE = "ssmpose"
# The plugins' ops and inputs are those of domain versions 1 to 7, except version 6's: SelectiveScan2D's
# dt_projection input (refused by node, whatever the file's version: _dt_projection_nodes).
MAX_OP_DOMAIN_VERSION = 7
UNSUPPORTED_DOMAIN_VERSION = 6  # SelectiveScan2D's dt_projection
SUPPORTED_OP_VERSION = 5  # the --op-version to advise for a file the plugins cannot take
PLUGIN_VERSION = "1"  # of every plugin, later ones included (the domain version is not the plugin version)
PLUGIN_NAMES = ("SelectiveScan", "DeformAggregate", "SelectiveScan2D", "LayerNorm", "AddLayerNorm",
                "MultiKernelDepthwiseConv", "VSSBlockTail")  # every op of the ssmpose domain
MIN_TENSORRT_MAJOR = 10  # IPluginV3
DEFAULT_BATCH_RANGE = (1, 32, 128)  # (min, opt, max) of the optimisation profile for a dynamic-batch file
PRECISIONS = ("fp32", "fp16")


# ------------------------------------------------------------------------------------------------
# What is needed, and whether it is here

def _import_tensorrt():
    try:
        import tensorrt
    except ImportError as err:
        raise BackendUnavailable(
            "tensorrt backend: the TensorRT Python package is not installed (pip install tensorrt, TensorRT >= "
            f"{MIN_TENSORRT_MAJOR}; it needs an NVIDIA GPU and driver) [{err}]") from None
    major = tensorrt_major(getattr(tensorrt, "__version__", "0"))
    if major < MIN_TENSORRT_MAJOR:
        raise BackendUnavailable(f"tensorrt backend: TensorRT {tensorrt.__version__} is installed; ssmpose needs "
                                 f"TensorRT >= {MIN_TENSORRT_MAJOR} (IPluginV3 plugins, execute_async_v3)")
    return tensorrt


def tensorrt_major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return 0


def _cuda_device(device_id: int):
    try:
        import torch
    except ImportError:
        raise BackendUnavailable("tensorrt backend: PyTorch is not installed (the backend runs on torch CUDA "
                                 "tensors)") from None
    if not torch.cuda.is_available():
        raise BackendUnavailable("tensorrt backend: no CUDA device is available (torch.cuda.is_available() is "
                                 "False)")
    if not 0 <= device_id < torch.cuda.device_count():
        raise BackendUnavailable(f"tensorrt backend: CUDA device {device_id} does not exist "
                                 f"({torch.cuda.device_count()} device(s))")
    return torch.device("cuda", device_id)


def gpu_identity(device_id: int = 0) -> str:
    """The GPU an engine is built for: name and compute capability (engines are not portable across them)."""
    import torch
    props = torch.cuda.get_device_properties(device_id)
    return f"{props.name} (sm_{props.major}{props.minor})"


def plugin_search_dirs() -> List[Path]:
    """Where libssmpose_trt.so is looked for: the folder of $SSMPOSE_TRT_PLUGIN (a file), then the kernel libraries'
    folders ($SSMPOSE_KERNELS_DIR, the package's lib/, a checkout's build tree)."""
    from ..custom_ops.ort_library import search_dirs
    dirs = []
    explicit = os.environ.get("SSMPOSE_TRT_PLUGIN")
    if explicit:
        dirs.append(Path(explicit).parent)
    return dirs + search_dirs()


def _find_plugin_library() -> Tuple[Optional[Path], List[Path]]:
    explicit = os.environ.get("SSMPOSE_TRT_PLUGIN")
    if explicit and Path(explicit).is_file():
        return Path(explicit), [Path(explicit)]
    dirs = plugin_search_dirs()
    for d in dirs:
        candidate = d / PLUGIN_LIBRARY_NAME
        if candidate.is_file():
            return candidate, dirs
        if d.name == "build" and d.is_dir():
            for depth in range(1, 5):
                hits = sorted(d.glob("/".join(["*"] * depth) + "/" + PLUGIN_LIBRARY_NAME))
                if hits:
                    return hits[0], dirs
    return None, dirs


def query_plugin_library(path) -> Dict[str, object]:
    """The library's version queries and whether its CUDA kernels load: {"version", "kernels_abi_version",
    "tensorrt_version" (of the headers it was built with, as "major.minor.patch"), "kernels_error" (None when
    libssmpose_kernels_cuda.so loads)}. RuntimeError naming the file when it cannot be loaded or queried."""
    try:
        lib = ctypes.CDLL(str(path), mode=getattr(os, "RTLD_LOCAL", 0))
    except OSError as exc:
        raise RuntimeError(f"cannot load {path}: {exc}") from exc
    info: Dict[str, object] = {}
    for key, symbol in (("version", "ssmpose_trt_version"), ("kernels_abi_version", "ssmpose_trt_kernels_abi_version"),
                        ("tensorrt_version", "ssmpose_trt_tensorrt_version")):
        try:
            fn = getattr(lib, symbol)
        except AttributeError as exc:
            raise RuntimeError(f"{path}: missing symbol {symbol}; rebuild it") from exc
        fn.argtypes, fn.restype = [], ctypes.c_int
        info[key] = int(fn())
    v = int(info["tensorrt_version"])
    info["tensorrt_version"] = f"{v // 10000}.{v // 100 % 100}.{v % 100}"
    load = lib.ssmpose_trt_load_kernels
    load.argtypes, load.restype = [ctypes.c_char_p, ctypes.c_size_t], ctypes.c_int
    buf = ctypes.create_string_buffer(2048)
    info["kernels_error"] = None if load(buf, len(buf)) == 0 else buf.value.decode(errors="replace")
    return info


def plugin_library() -> Tuple[Optional[Path], Optional[str], Dict[str, object]]:
    """(path of a usable libssmpose_trt.so or None, the reason when None, its version info)."""
    path, dirs = _find_plugin_library()
    if path is None:
        return None, (f"{PLUGIN_LIBRARY_NAME} not found in [{', '.join(str(d) for d in dirs)}]; build it with "
                      f"TensorRT headers (docs/tensorrt.md: -DTENSORRT_ROOT=... or "
                      f"-DSSMPOSE_TENSORRT_INCLUDE_DIR=...)"), {}
    try:
        info = query_plugin_library(path)
    except RuntimeError as exc:
        return None, str(exc), {}
    if info["version"] != PLUGIN_LIBRARY_VERSION:
        return None, (f"{path} is plugin library version {info['version']}, this ssmpose needs "
                      f"{PLUGIN_LIBRARY_VERSION}: the library is stale, rebuild it"), info
    if info["kernels_error"]:
        return None, f"{path} cannot run its plugins: {info['kernels_error']}", info
    return path, None, info


def _dt_projection_nodes(path) -> List[str]:
    """Names (or indices) of the file's SelectiveScan2D nodes with a dt_projection input (domain version 6), which
    the plugins do not take. Reads the graph without its external data."""
    import onnx

    from ..export.schemas import DOMAIN, uses_dt_projection
    model = onnx.load(str(path), load_external_data=False)
    return [node.name or f"#{i}" for i, node in enumerate(model.graph.node)
            if node.domain == DOMAIN and uses_dt_projection(node)]


def check_op_domain(path, metadata: dict, where: str) -> None:
    """Refuses, before TensorRT parses it, a custom-form file the plugins cannot build: one that imports a later
    ssmpose domain version than MAX_OP_DOMAIN_VERSION, or has a SelectiveScan2D node with a dt_projection input
    (version 6's feature: that node omits its Bs and Cs inputs, and the plugins take their inputs by position).
    Version 7's VSSBlockTail is covered."""
    version = int(metadata.get("op_domain_version", 1))
    if version > MAX_OP_DOMAIN_VERSION:
        raise ValueError(f"{where} imports ssmpose domain version {version}; the TensorRT plugins cover versions 1 "
                         f"to {MAX_OP_DOMAIN_VERSION}. Export with --op-version {SUPPORTED_OP_VERSION} for "
                         f"TensorRT.")
    projected = _dt_projection_nodes(path)
    if projected:
        shown = ", ".join(repr(n) for n in projected[:3]) + (f" and {len(projected) - 3} more"
                                                             if len(projected) > 3 else "")
        raise ValueError(f"{where} imports ssmpose domain version {max(version, UNSUPPORTED_DOMAIN_VERSION)}; the "
                         f"TensorRT plugins cover versions 1 to {SUPPORTED_OP_VERSION} and version 7's VSSBlockTail, "
                         f"not version 6's SelectiveScan2D with a dt_projection input (nodes {shown}: such a node "
                         f"omits its Bs and Cs inputs; the plugins take their inputs by position). Export with "
                         f"--op-version {SUPPORTED_OP_VERSION} for TensorRT.")


_registry_lock = threading.Lock()
_loaded_libraries: Dict[str, object] = {}


def load_plugins(trt, path: Path):
    """Register the library's plugin creators with TensorRT's plugin registry (once per process)."""
    key = str(Path(path).resolve())
    with _registry_lock:
        if key not in _loaded_libraries:
            handle = trt.get_plugin_registry().load_library(key)
            if handle is None:
                raise RuntimeError(f"TensorRT could not load the plugin library {key} (see TensorRT's log)")
            _loaded_libraries[key] = handle
        registry = trt.get_plugin_registry()
        missing = [name for name in PLUGIN_NAMES
                   if _get_creator(registry, name) is None]
        if missing:
            raise RuntimeError(f"{key} was loaded but TensorRT's registry has no creator for "
                               f"{', '.join(missing)} (version {PLUGIN_VERSION}, namespace {PLUGIN_NAMESPACE})")
        return _loaded_libraries[key]


def _get_creator(registry, name: str):
    get = getattr(registry, "get_creator", None) or registry.get_plugin_creator
    try:
        return get(name, PLUGIN_VERSION, PLUGIN_NAMESPACE)
    except Exception:  # noqa: BLE001 -- older bindings raise for unknown creators
        return None


# ------------------------------------------------------------------------------------------------
# Engine cache

def default_cache_dir() -> Path:
    env = os.environ.get("SSMPOSE_TRT_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ssmpose" / "trt"


def onnx_file_digest(path) -> str:
    """sha256 of an ONNX file and of the external-data files it references (in name order)."""
    path = Path(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    for name in _external_data_files(path):
        data = path.parent / name
        h.update(b"\0external:" + name.encode())
        if data.is_file():
            with open(data, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def _external_data_files(path: Path) -> List[str]:
    try:
        import onnx
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 -- not ONNX (the caller reports that); hash the bytes only
        return []
    names = set()
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                names.add(entry.value)
    return sorted(names)


def engine_cache_key(onnx_sha256: str, tensorrt_version: str, gpu: str, precision: str,
                     batch_range: Sequence[int], input_shape: Sequence[int],
                     plugin_version: Optional[int] = None, options: Optional[dict] = None) -> str:
    """Hex key of an engine: equal keys mean an engine built for one can be reused for the other."""
    payload = {"onnx_sha256": onnx_sha256, "tensorrt": str(tensorrt_version), "gpu": gpu, "precision": precision,
               "batch_range": [int(b) for b in batch_range], "input_shape": [int(d) for d in input_shape],
               "plugin_library_version": plugin_version, "options": options or {}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def check_batch_range(batch_range, fixed_batch: Optional[int], where: str) -> Tuple[int, int, int]:
    """(min, opt, max) of the profile: the fixed batch of a fixed-batch file, else `batch_range` checked."""
    if fixed_batch is not None:
        if batch_range is not None and tuple(batch_range) != (fixed_batch,) * 3:
            raise ValueError(f"{where}: the graph's batch is fixed at {fixed_batch}; batch_range={batch_range!r} "
                             f"cannot apply (export with a dynamic batch)")
        return (fixed_batch,) * 3
    rng = DEFAULT_BATCH_RANGE if batch_range is None else tuple(batch_range)
    if (len(rng) != 3 or not all(isinstance(b, int) and not isinstance(b, bool) for b in rng)
            or not 1 <= rng[0] <= rng[1] <= rng[2]):
        raise ValueError(f"{where}: batch_range must be three integers 1 <= min <= opt <= max, got {batch_range!r}")
    return rng  # type: ignore[return-value]


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------
# Building and running engines

def _make_logger(trt, echo_severity=None):
    """A TensorRT logger that keeps the errors (for exception messages) and prints warnings and worse."""
    echo = trt.ILogger.Severity.WARNING if echo_severity is None else echo_severity

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: List[str] = []

        def log(self, severity, msg):
            if int(severity) <= int(trt.ILogger.Severity.ERROR):
                self.errors.append(str(msg))
            if int(severity) <= int(echo):
                print(f"[TensorRT {severity.name}] {msg}", file=sys.stderr)

    return _Logger()


def build_serialized_engine(trt, logger, onnx_path, profile_shapes: Dict[str, Tuple[tuple, tuple, tuple]],
                            precision: str = "fp32", strongly_typed: bool = False,
                            workspace_bytes: Optional[int] = None, builder_optimization_level: Optional[int] = None
                            ) -> bytes:
    """Parse `onnx_path` and build a serialised engine with one optimisation profile ({input name: (min, opt,
    max) shapes}). The ssmpose plugins must be in the registry already for a custom-form file."""
    if precision not in PRECISIONS:
        raise ValueError(f"tensorrt: precision must be one of {PRECISIONS}, got {precision!r}")
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "; ".join(logger.errors)
        raise RuntimeError(f"tensorrt: TensorRT's ONNX parser refused {Path(onnx_path).name}: {errors}")
    config = builder.create_builder_config()
    if not strongly_typed:
        if precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        else:
            config.clear_flag(trt.BuilderFlag.TF32)  # fp32 means fp32: parity with torch float32
    if workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if builder_optimization_level is not None:
        config.builder_optimization_level = int(builder_optimization_level)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile_shapes.items():
        profile.set_shape(name, tuple(lo), tuple(opt), tuple(hi))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"tensorrt: building an engine for {Path(onnx_path).name} failed: "
                           f"{'; '.join(logger.errors) or 'see the TensorRT log above'}")
    return bytes(serialized)


_TORCH_TYPES = {"FLOAT": "float32", "HALF": "float16", "INT32": "int32", "INT64": "int64", "BF16": "bfloat16",
                "BOOL": "bool", "INT8": "int8", "UINT8": "uint8"}


class TrtEngine:
    """A deserialised engine with one execution context; `run` takes and returns torch CUDA tensors."""

    def __init__(self, trt, logger, engine_bytes: bytes, device):
        import torch
        self.trt, self.logger, self.device = trt, logger, device
        self.runtime = trt.Runtime(logger)
        with torch.cuda.device(device):
            self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
            if self.engine is None:
                raise RuntimeError(f"tensorrt: the engine cannot be deserialised: {'; '.join(logger.errors)}")
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    def dtype(self, name: str) -> str:
        kind = self.engine.get_tensor_dtype(name).name
        return _TORCH_TYPES.get(kind, kind.lower())

    def run(self, feeds: Dict[str, "object"]) -> Dict[str, "object"]:
        """Enqueue on the current torch stream of the device; outputs are ordered on that stream."""
        import torch
        keep = []
        for name in self.inputs:
            if name not in feeds:
                raise ValueError(f"tensorrt: missing input '{name}' (inputs: {', '.join(self.inputs)})")
            x = feeds[name].to(device=self.device, dtype=getattr(torch, self.dtype(name))).contiguous()
            keep.append(x)
            if not self.context.set_input_shape(name, tuple(x.shape)):
                raise ValueError(f"tensorrt: input '{name}' of shape {tuple(x.shape)} is outside the engine's "
                                 f"optimisation profile: {'; '.join(self.logger.errors[-1:])}")
            self.context.set_tensor_address(name, x.data_ptr())
        outputs = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            out = torch.empty(shape, dtype=getattr(torch, self.dtype(name)), device=self.device)
            self.context.set_tensor_address(name, out.data_ptr())
            outputs[name] = out
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"tensorrt: execution failed: {'; '.join(self.logger.errors[-3:])}")
        # Inputs converted here must outlive the enqueued work on this stream.
        for x in keep:
            x.record_stream(stream)
        return outputs


# ------------------------------------------------------------------------------------------------
# The session

class TensorRTSession(Session):
    backend = "tensorrt"

    def __init__(self, path, device_id: int = 0, precision: Optional[str] = None,
                 batch_range: Optional[Sequence[int]] = None, cache_dir=None, use_cache: bool = True,
                 workspace_bytes: Optional[int] = None, builder_optimization_level: Optional[int] = None,
                 verbose: bool = False):
        """`precision`: "fp32" or "fp16" (default: the file's own, fp16 for a float16 export). `batch_range`: (min,
        opt, max) batch of the optimisation profile for a dynamic-batch file (default (1, 32, 128)); larger batches
        are run in slices of max. `cache_dir`: engine cache folder (default ~/.cache/ssmpose/trt or
        $SSMPOSE_TRT_CACHE); `use_cache=False` always builds (and stores nothing)."""
        trt = _import_tensorrt()
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"tensorrt: ONNX file {self.path} does not exist")
        metadata, domains, _ = read_onnx_metadata(self.path)
        where = f"tensorrt: {self.path.name}"
        if "ssmpose" in domains:
            check_op_domain(self.path, metadata, where)
        self.device = _cuda_device(device_id)
        file_dtype = metadata.get("dtype", "float32")
        strongly_typed = file_dtype == "float16"
        if precision is None:
            precision = "fp16" if strongly_typed else "fp32"
        if precision not in PRECISIONS:
            raise ValueError(f"{where}: precision must be one of {PRECISIONS}, got {precision!r}")
        if strongly_typed and precision != "fp16":
            raise ValueError(f"{where} is a float16 export (built as a strongly typed network); precision "
                             f"{precision} needs a float32 export")
        self.precision, self.strongly_typed = precision, strongly_typed

        self.plugin_library, self.plugin_info = None, {}
        if "ssmpose" in domains:
            library, reason, info = plugin_library()
            if library is None:
                raise BackendUnavailable(f"{where} is a custom-form graph (ssmpose domain ops) and needs the ssmpose "
                                         f"TensorRT plugin library, which is unavailable: {reason}. Export with "
                                         f"--ops portable to run without it.")
            self.plugin_library, self.plugin_info = library, info
        self.logger = _make_logger(trt, trt.ILogger.Severity.VERBOSE if verbose else None)
        if self.plugin_library is not None:
            load_plugins(trt, self.plugin_library)

        name, shape = _graph_input(self.path)
        h, w = shape[-2], shape[-1]
        if h is None or w is None:
            if not metadata.get("input_size"):
                raise ValueError(f"{where}: the input's height and width are symbolic and the file carries no "
                                 f"input_size metadata")
            h, w = metadata["input_size"]
        fixed = shape[0]
        item = (*shape[1:-2], int(h), int(w))     # one input without the batch: (3, H, W) or (T, 3, H, W)
        self.batch_range = check_batch_range(batch_range, fixed, where)
        lo, opt, hi = ((b, *item) for b in self.batch_range)
        options = {"strongly_typed": strongly_typed, "workspace_bytes": workspace_bytes, "tf32": False,
                   "builder_optimization_level": builder_optimization_level}
        self.cache_key = engine_cache_key(onnx_file_digest(self.path), trt.__version__, gpu_identity(device_id),
                                          precision, self.batch_range, item,
                                          self.plugin_info.get("version"), options)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.engine_path = self.cache_dir / f"{self.path.stem}-{self.cache_key[:24]}.engine"
        self.cache_hit = False
        engine_bytes = None
        if use_cache and self.engine_path.is_file():
            engine_bytes = self.engine_path.read_bytes()
            self.cache_hit = True
        try:
            if engine_bytes is None:
                raise LookupError
            self.engine = TrtEngine(trt, self.logger, engine_bytes, self.device)
        except (LookupError, RuntimeError):  # not cached, or a cached engine TensorRT no longer accepts
            self.cache_hit = False
            import torch
            with torch.cuda.device(self.device):
                engine_bytes = build_serialized_engine(trt, self.logger, self.path, {name: (lo, opt, hi)}, precision,
                                                       strongly_typed, workspace_bytes, builder_optimization_level)
            if use_cache:
                _write_atomic(self.engine_path, engine_bytes)
                _write_atomic(self.engine_path.with_suffix(".json"), json.dumps(
                    {"onnx": str(self.path.resolve()), "key": self.cache_key, "tensorrt": trt.__version__,
                     "gpu": gpu_identity(device_id), "precision": precision, "batch_range": list(self.batch_range),
                     "input_shape": list(item), "plugin_library": str(self.plugin_library or ""),
                     "options": options}, indent=1).encode())
            self.engine = TrtEngine(trt, self.logger, engine_bytes, self.device)
        if len(self.engine.inputs) != 1 or not self.engine.outputs:
            raise ValueError(f"{where}: expected one image input and at least one output, the engine has inputs "
                             f"{self.engine.inputs} and outputs {self.engine.outputs}")
        self.input_name, self.output_name = self.engine.inputs[0], self.engine.outputs[0]
        io_dtype = self.engine.dtype(self.input_name)
        if io_dtype not in ("float32", "float16"):
            raise ValueError(f"{where}: input '{self.input_name}' has type {io_dtype}; expected float or float16 "
                             f"images")
        super().__init__(metadata, InputSpec(self.input_name, [fixed, *item], io_dtype),
                         None if fixed is not None else self.batch_range[2])

    def describe(self) -> dict:
        return {**super().describe(), "file": str(self.path), "precision": self.precision,
                "strongly_typed": self.strongly_typed, "batch_range": list(self.batch_range),
                "engine": str(self.engine_path), "cache_hit": self.cache_hit,
                "plugin_library": str(self.plugin_library) if self.plugin_library else None}

    def _run_numpy(self, images: np.ndarray) -> np.ndarray:
        import torch
        out = self._run_torch(torch.from_numpy(images))
        return out.float().cpu().numpy()  # .cpu() waits for the stream

    def _run_torch(self, images):
        import torch
        x = images.to(self.device, dtype=getattr(torch, self.input_spec.dtype))
        return self.engine.run({self.input_name: x})[self.output_name]


def _graph_input(path: Path) -> Tuple[str, List[Optional[int]]]:
    """Name and (batch, C, H, W), or (batch, T, C, H, W) for a video model, of the graph's image input, None for
    symbolic dimensions."""
    import onnx
    model = onnx.load(str(path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ValueError(f"tensorrt: {path.name} has {len(inputs)} graph inputs; expected one image input")
    dims = inputs[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    if len(shape) not in (4, 5) or (len(shape) == 5 and shape[1] is None):
        raise ValueError(f"tensorrt: {path.name} input '{inputs[0].name}' has shape {shape}; expected images "
                         f"(B, 3, H, W) or clips (B, T, 3, H, W) with a fixed T")
    return inputs[0].name, shape


def load_tensorrt(model, **options):
    return TensorRTSession(model, **options)
