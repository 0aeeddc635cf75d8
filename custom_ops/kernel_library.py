"""ctypes loader of the compiled kernel libraries, and thin tensor-level wrappers around them.

`libssmpose_kernels.so` (CPU) and `libssmpose_kernels_cuda.so` (CUDA) implement the C ABI of
`custom_ops/csrc/kernels/ssmpose_kernels.h`. They are looked up, in this order, in

1. the folder(s) named by ``$SSMPOSE_KERNELS_DIR`` (``os.pathsep``-separated),
2. the installed package's ``ssmpose/custom_ops/lib/`` folder,
3. a source checkout's CMake build tree ``<repo>/build`` (``build/lib/`` first, then a shallow search).

A library whose ``ssm_abi_version()`` differs from :data:`ABI_VERSION` is refused with an error naming
the file (a stale build). The wrappers take and return torch tensors; they pick the CPU or CUDA library
by the tensors' device, make inputs contiguous, validate dtypes and shapes (``ValueError`` naming the
tensor, expected vs actual shape) and turn a non-zero status into ``RuntimeError``.
"""
from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

ABI_VERSION = 6  # must equal SSM_KERNELS_ABI_VERSION of ssmpose_kernels.h (2: adds LayerNorm; 3: AddLayerNorm,
#                  MultiKernelDepthwiseConv; 4: DeformAggregate's offset bias and activation; 5: SelectiveScan2D
#                  with the dt projection; 6: VSSBlockTail)

CPU_LIBRARY_NAME = "libssmpose_kernels.so"
CUDA_LIBRARY_NAME = "libssmpose_kernels_cuda.so"

# ssm_dtype / ssm_status of the header
SSM_FLOAT32, SSM_FLOAT16, SSM_BFLOAT16 = 0, 1, 2
SSM_OK = 0
_DTYPE_CODES = {torch.float32: SSM_FLOAT32, torch.float16: SSM_FLOAT16, torch.bfloat16: SSM_BFLOAT16}

MAX_DSTATE = 16
SCAN_2D_DIRECTIONS = 4  # SelectiveScan2D: SS2D's four directions, the only value of domain version 2
SCAN_2D_MAX_DT_RANK = 64  # SelectiveScan2D with the dt projection (domain version 6): SSM_SCAN2D_MAX_DT_RANK
DWCONV_MAX_GROUPS = 16  # SSM_DWCONV_MAX_GROUPS
DWCONV_MAX_KERNEL = 15  # SSM_DWCONV_MAX_KERNEL
SSM_ACTIVATION_NONE, SSM_ACTIVATION_GELU, SSM_ACTIVATION_SILU = 0, 1, 2
DEFORM_ACTIVATIONS = {"none": SSM_ACTIVATION_NONE, "silu": SSM_ACTIVATION_SILU}  # DeformAggregate's (domain version 5)


class KernelLibraryError(RuntimeError):
    """A kernel library was found but cannot be used (stale ABI, missing symbol, load failure)."""


class ScanShape(ctypes.Structure):
    """Mirror of `ssm_scan_shape`."""

    _fields_ = [
        ("batch", ctypes.c_int64),
        ("groups", ctypes.c_int64),
        ("dim", ctypes.c_int64),
        ("dstate", ctypes.c_int64),
        ("length", ctypes.c_int64),
        ("delta_softplus", ctypes.c_int32),
        ("dtype", ctypes.c_int32),
    ]


class Scan2DShape(ctypes.Structure):
    """Mirror of `ssm_scan2d_shape`."""

    _fields_ = [
        ("batch", ctypes.c_int64),
        ("height", ctypes.c_int64),
        ("width", ctypes.c_int64),
        ("dim", ctypes.c_int64),
        ("directions", ctypes.c_int64),
        ("dstate", ctypes.c_int64),
        ("delta_softplus", ctypes.c_int32),
        ("dtype", ctypes.c_int32),
    ]


class DeformShape(ctypes.Structure):
    """Mirror of `ssm_deform_shape`."""

    _fields_ = [
        ("batch", ctypes.c_int64),
        ("height", ctypes.c_int64),
        ("width", ctypes.c_int64),
        ("out_height", ctypes.c_int64),
        ("out_width", ctypes.c_int64),
        ("groups", ctypes.c_int64),
        ("group_channels", ctypes.c_int64),
        ("offset_stride", ctypes.c_int64),
        ("kernel_h", ctypes.c_int32),
        ("kernel_w", ctypes.c_int32),
        ("stride_h", ctypes.c_int32),
        ("stride_w", ctypes.c_int32),
        ("pad_h", ctypes.c_int32),
        ("pad_w", ctypes.c_int32),
        ("dilation_h", ctypes.c_int32),
        ("dilation_w", ctypes.c_int32),
        ("remove_center", ctypes.c_int32),
        ("offset_scale", ctypes.c_float),
        ("dtype", ctypes.c_int32),
        ("activation", ctypes.c_int32),
    ]


class LayerNormShape(ctypes.Structure):
    """Mirror of `ssm_layer_norm_shape`."""

    _fields_ = [
        ("rows", ctypes.c_int64),
        ("channels", ctypes.c_int64),
        ("epsilon", ctypes.c_float),
        ("dtype", ctypes.c_int32),
    ]


class VSSTailShape(ctypes.Structure):
    """Mirror of `ssm_vss_tail_shape` (VSSBlockTail)."""

    _fields_ = [
        ("rows", ctypes.c_int64),
        ("inner", ctypes.c_int64),
        ("channels", ctypes.c_int64),
        ("hidden", ctypes.c_int64),
        ("epsilon", ctypes.c_float),
        ("dtype", ctypes.c_int32),
    ]


class VSSTailParams(ctypes.Structure):
    """Mirror of `ssm_vss_tail_params`: the nine parameter pointers in the ONNX inputs' order."""

    _fields_ = [(name, ctypes.c_void_p) for name in (
        "out_norm_weight", "out_norm_bias", "out_proj", "norm_weight", "norm_bias", "fc1_weight", "fc1_bias",
        "fc2_weight", "fc2_bias")]


class DwConvShape(ctypes.Structure):
    """Mirror of `ssm_dwconv_shape` (MultiKernelDepthwiseConv)."""

    _fields_ = [
        ("batch", ctypes.c_int64),
        ("height", ctypes.c_int64),
        ("width", ctypes.c_int64),
        ("channels", ctypes.c_int64),
        ("kernel_max", ctypes.c_int32),
        ("num_groups", ctypes.c_int32),
        ("group_channels", ctypes.c_int32 * DWCONV_MAX_GROUPS),
        ("kernel_sizes", ctypes.c_int32 * DWCONV_MAX_GROUPS),
        ("shuffle_groups", ctypes.c_int32),
        ("activation", ctypes.c_int32),
        ("dtype", ctypes.c_int32),
    ]


_P = ctypes.c_void_p
_SCAN = ctypes.POINTER(ScanShape)
_SCAN2D = ctypes.POINTER(Scan2DShape)
_DEFORM = ctypes.POINTER(DeformShape)
_LAYER_NORM = ctypes.POINTER(LayerNormShape)
_DWCONV = ctypes.POINTER(DwConvShape)
_VSS_TAIL = ctypes.POINTER(VSSTailShape)
_VSS_PARAMS = ctypes.POINTER(VSSTailParams)
_I = ctypes.c_int

# ssm_task_fn and ssm_cpu_executor of the header: a host's thread pool for the CPU kernels' loops, installed per thread
# with ssm_set_cpu_executor (None restores the library's own threads).
TASK_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)
CPU_EXECUTOR = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, TASK_FN, ctypes.c_void_p, ctypes.c_int64)

_COMMON_SIGNATURES = {
    "ssm_abi_version": ([], _I),
    "ssm_status_string": ([_I], ctypes.c_char_p),
}
_CPU_SIGNATURES = {
    "ssm_selective_scan_fwd_cpu": ([_SCAN, _P, _P, _P, _P, _P, _P, _P, _P, _I], _I),
    "ssm_selective_scan_bwd_cpu": ([_SCAN, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _I], _I),
    "ssm_selective_scan_2d_fwd_cpu": ([_SCAN2D, _P, _P, _P, _P, _P, _P, _P, _P, _I], _I),
    "ssm_selective_scan_2d_proj_fwd_cpu": ([_SCAN2D, ctypes.c_int64, _P, _P, _P, _P, _P, _P, _P, _I], _I),
    "ssm_selective_scan_2d_bwd_cpu": ([_SCAN2D, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _I],
                                      _I),
    "ssm_deform_aggregate_fwd_cpu": ([_DEFORM, _P, _P, _P, _P, _I], _I),
    "ssm_deform_aggregate_bwd_cpu": ([_DEFORM, _P, _P, _P, _P, _P, _I], _I),
    "ssm_layer_norm_fwd_cpu": ([_LAYER_NORM, _P, _P, _P, _P, _I], _I),
    "ssm_add_layer_norm_fwd_cpu": ([_LAYER_NORM, _P, _P, _P, _P, _P, _P, _I], _I),
    "ssm_depthwise_conv_fwd_cpu": ([_DWCONV, _P, _P, _P, _P, _I], _I),
    "ssm_vss_block_tail_fwd_cpu": ([_VSS_TAIL, _P, _P, _VSS_PARAMS, _P, _I], _I),
    "ssm_set_cpu_executor": ([_P, _P], None),  # (a CPU_EXECUTOR instance or None, executor_data)
}
_CUDA_SIGNATURES = {
    "ssm_selective_scan_fwd_cuda": ([_SCAN, _P, _P, _P, _P, _P, _P, _P, _P, _P], _I),
    "ssm_selective_scan_bwd_cuda_workspace_size": ([_SCAN], ctypes.c_size_t),
    "ssm_selective_scan_bwd_cuda": ([_SCAN, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P],
                                    _I),
    "ssm_selective_scan_2d_fwd_cuda": ([_SCAN2D, _P, _P, _P, _P, _P, _P, _P, _P, _P], _I),
    "ssm_selective_scan_2d_proj_fwd_cuda": ([_SCAN2D, ctypes.c_int64, _P, _P, _P, _P, _P, _P, _P, _P], _I),
    "ssm_selective_scan_2d_bwd_cuda_workspace_size": ([_SCAN2D], ctypes.c_size_t),
    "ssm_selective_scan_2d_bwd_cuda": ([_SCAN2D, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P,
                                        _P], _I),
    "ssm_deform_aggregate_fwd_cuda": ([_DEFORM, _P, _P, _P, _P, _P], _I),
    "ssm_deform_aggregate_bwd_cuda": ([_DEFORM, _P, _P, _P, _P, _P, _P], _I),
    "ssm_layer_norm_fwd_cuda": ([_LAYER_NORM, _P, _P, _P, _P, _P], _I),
    "ssm_add_layer_norm_fwd_cuda": ([_LAYER_NORM, _P, _P, _P, _P, _P, _P, _P], _I),
    "ssm_depthwise_conv_fwd_cuda": ([_DWCONV, _P, _P, _P, _P, _P], _I),
    "ssm_vss_block_tail_fwd_cuda": ([_VSS_TAIL, _P, _P, _VSS_PARAMS, _P, _P], _I),
}


# ------------------------------------------------------------------------------------------------
# Finding and loading


def search_dirs() -> List[Path]:
    """Folders searched for the libraries, in order (see the module docstring)."""
    dirs: List[Path] = []
    env = os.environ.get("SSMPOSE_KERNELS_DIR")
    if env:
        dirs.extend(Path(p) for p in env.split(os.pathsep) if p)
    here = Path(__file__).resolve().parent  # .../ssmpose/custom_ops (or <repo>/custom_ops)
    dirs.append(here / "lib")
    build = here.parent / "build"
    if build.is_dir():
        dirs.append(build / "lib")
        dirs.append(build)
    return dirs


def _find(name: str) -> Tuple[Optional[Path], List[Path]]:
    """First match of `name` in the search folders. Below a build tree the search goes up to four levels
    deep (e.g. build/<wheel tag>/lib/); the newest file wins at the first depth with a match."""
    dirs = search_dirs()
    for d in dirs:
        candidate = d / name
        if candidate.is_file():
            return candidate, dirs
        if d.name == "build" and d.is_dir():
            # build/<a>/<name>, build/<a>/<b>/<name>, ... up to four levels (build/custom_ops/csrc/...)
            for depth in range(1, 5):
                hits = [p for p in d.glob("/".join(["*"] * depth) + "/" + name) if p.is_file()]
                if hits:
                    return max(hits, key=lambda p: p.stat().st_mtime), dirs
    return None, dirs


def _declare(lib: ctypes.CDLL, path: Path, signatures: Dict[str, tuple]) -> None:
    for fname, (argtypes, restype) in signatures.items():
        try:
            fn = getattr(lib, fname)
        except AttributeError as exc:
            raise KernelLibraryError(f"{path}: missing symbol {fname}; rebuild the kernels") from exc
        fn.argtypes = argtypes
        fn.restype = restype


def _load(path: Path, signatures: Dict[str, tuple]) -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(str(path), mode=getattr(os, "RTLD_LOCAL", 0))
    except OSError as exc:
        raise KernelLibraryError(f"cannot load {path}: {exc}") from exc
    _declare(lib, path, _COMMON_SIGNATURES)
    found = lib.ssm_abi_version()
    if found != ABI_VERSION:
        raise KernelLibraryError(
            f"{path} implements kernel ABI version {found}, this ssmpose needs {ABI_VERSION}: "
            f"the library is stale, rebuild it (cmake --build build) or point SSMPOSE_KERNELS_DIR elsewhere")
    _declare(lib, path, signatures)
    return lib


_lock = threading.Lock()
_cache: Dict[str, Tuple[Optional[ctypes.CDLL], Optional[str]]] = {}


def _library(kind: str) -> Tuple[Optional[ctypes.CDLL], Optional[str]]:
    with _lock:
        if kind not in _cache:
            name = CPU_LIBRARY_NAME if kind == "cpu" else CUDA_LIBRARY_NAME
            sigs = _CPU_SIGNATURES if kind == "cpu" else _CUDA_SIGNATURES
            path, dirs = _find(name)
            if path is None:
                _cache[kind] = (None, f"{name} not found in [{', '.join(str(d) for d in dirs)}]")
            else:
                try:
                    _cache[kind] = (_load(path, sigs), None)
                except KernelLibraryError as exc:
                    _cache[kind] = (None, str(exc))
        return _cache[kind]


def cpu_library() -> Optional[ctypes.CDLL]:
    """The loaded CPU kernel library, or None (see :func:`unavailable_reason`)."""
    return _library("cpu")[0]


def cuda_library() -> Optional[ctypes.CDLL]:
    """The loaded CUDA kernel library, or None (see :func:`unavailable_reason`)."""
    return _library("cuda")[0]


def unavailable_reason(device) -> Optional[str]:
    """Why the kernels for `device` ('cpu', 'cuda', or a torch.device) cannot run; None if they can."""
    kind = torch.device(device).type
    if kind not in ("cpu", "cuda"):
        return f"no ssmpose kernel library for device type {kind!r}"
    if kind == "cuda" and not torch.cuda.is_available():
        return "torch reports no CUDA device"
    return _library(kind)[1]


def reset_cache() -> None:
    """Forget the lookup results (e.g. after building, or changing $SSMPOSE_KERNELS_DIR)."""
    with _lock:
        _cache.clear()


def status_string(status: int, lib: Optional[ctypes.CDLL] = None) -> str:
    lib = lib or cpu_library() or cuda_library()
    if lib is None:
        return f"status {status}"
    return lib.ssm_status_string(status).decode("ascii", "replace")


# ------------------------------------------------------------------------------------------------
# Tensor wrappers


def _ptr(t: Optional[torch.Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def _check_shape(op: str, name: str, t: torch.Tensor, expected: Sequence[int]) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{op}: {name} must have shape {tuple(expected)}, got {tuple(t.shape)}")


def _check_tensors(op: str, named: Sequence[Tuple[str, Optional[torch.Tensor]]]) -> Tuple[torch.dtype, torch.device]:
    first_name, first = named[0]
    if first.dtype not in _DTYPE_CODES:
        raise ValueError(f"{op}: {first_name} has dtype {first.dtype}; supported: float32, float16, bfloat16")
    for name, t in named[1:]:
        if t is None:
            continue
        if t.dtype != first.dtype:
            raise ValueError(f"{op}: {name} has dtype {t.dtype}, expected {first.dtype} (the dtype of {first_name})")
        if t.device != first.device:
            raise ValueError(f"{op}: {name} is on {t.device}, expected {first.device} (the device of {first_name})")
    return first.dtype, first.device


def _contig(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.contiguous()


def _backend(op: str, device: torch.device) -> ctypes.CDLL:
    lib = cpu_library() if device.type == "cpu" else cuda_library() if device.type == "cuda" else None
    if lib is None:
        raise RuntimeError(f"{op}: no kernels for {device}: {unavailable_reason(device)}")
    return lib


def _raise_on_error(op: str, lib: ctypes.CDLL, status: int, fn: str) -> None:
    if status != SSM_OK:
        raise RuntimeError(f"{op}: {fn} failed with status {status} ({status_string(status, lib)})")


def _num_threads() -> int:
    return max(1, torch.get_num_threads())


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


def _scan_prepare(op, u, delta, A, Bs, Cs, Ds, delta_bias, delta_softplus, dy=None):
    named = [("u", u), ("delta", delta), ("A", A), ("Bs", Bs), ("Cs", Cs), ("Ds", Ds), ("delta_bias", delta_bias)]
    if dy is not None:
        named.append(("dy", dy))
    dtype, device = _check_tensors(op, named)
    if u.dim() != 3:
        raise ValueError(f"{op}: u must have shape (batch, groups*dim, length), got {tuple(u.shape)}")
    if Bs.dim() != 4:
        raise ValueError(f"{op}: Bs must have shape (batch, groups, dstate, length), got {tuple(Bs.shape)}")
    batch, channels, length = u.shape
    groups, dstate = Bs.shape[1], Bs.shape[2]
    if groups < 1 or channels % groups != 0:
        raise ValueError(f"{op}: u has {channels} channels, not a multiple of the {groups} groups of Bs")
    if not 1 <= dstate <= MAX_DSTATE:
        raise ValueError(f"{op}: dstate (Bs.shape[2]) must be in 1..{MAX_DSTATE}, got {dstate}")
    _check_shape(op, "delta", delta, u.shape)
    _check_shape(op, "A", A, (channels, dstate))
    _check_shape(op, "Bs", Bs, (batch, groups, dstate, length))
    _check_shape(op, "Cs", Cs, (batch, groups, dstate, length))
    if Ds is not None:
        _check_shape(op, "Ds", Ds, (channels,))
    if delta_bias is not None:
        _check_shape(op, "delta_bias", delta_bias, (channels,))
    if dy is not None:
        _check_shape(op, "dy", dy, u.shape)
    shape = ScanShape(batch, groups, channels // groups if groups else 0, dstate, length,
                      1 if delta_softplus else 0, _DTYPE_CODES[dtype])
    _raise_on_limit(op, scan_limit_error(batch, groups, shape.dim, dstate, length, device.type))
    return shape, dtype, device


def selective_scan_fwd(u, delta, A, Bs, Cs, Ds=None, delta_bias=None, delta_softplus=True) -> torch.Tensor:
    """SelectiveScan forward with the compiled kernels; returns y (B, G*D, L) in u's dtype."""
    op = "SelectiveScan"
    shape, dtype, device = _scan_prepare(op, u, delta, A, Bs, Cs, Ds, delta_bias, delta_softplus)
    y = torch.empty(u.shape, dtype=dtype, device=device)
    if y.numel() == 0:
        return y
    u, delta, A, Bs, Cs, Ds, delta_bias = (_contig(t) for t in (u, delta, A, Bs, Cs, Ds, delta_bias))
    lib = _backend(op, device)
    args = (ctypes.byref(shape), _ptr(u), _ptr(delta), _ptr(A), _ptr(Bs), _ptr(Cs), _ptr(Ds), _ptr(delta_bias),
            _ptr(y))
    if device.type == "cpu":
        fn = "ssm_selective_scan_fwd_cpu"
        status = lib.ssm_selective_scan_fwd_cpu(*args, _num_threads())
    else:
        fn = "ssm_selective_scan_fwd_cuda"
        with torch.cuda.device(device):
            status = lib.ssm_selective_scan_fwd_cuda(*args, _stream(device))
    _raise_on_error(op, lib, status, fn)
    return y


def selective_scan_bwd(u, delta, A, Bs, Cs, Ds, delta_bias, delta_softplus, dy):
    """SelectiveScan backward: the forward's arguments, then dy (B, G*D, L).

    Returns (du, d_delta, dA, dBs, dCs, dDs, d_delta_bias) in the inputs' dtype; dDs / d_delta_bias are
    None when Ds / delta_bias are None.
    """
    op = "SelectiveScan backward"
    shape, dtype, device = _scan_prepare(op, u, delta, A, Bs, Cs, Ds, delta_bias, delta_softplus, dy)
    # The kernels overwrite every output, so they are allocated uninitialised (torch.zeros would also run a
    # parallel fill whose spinning OpenMP workers then compete with the kernel's threads).
    f32 = dict(dtype=torch.float32, device=device)
    du = torch.empty(u.shape, dtype=dtype, device=device)
    d_delta = torch.empty(u.shape, dtype=dtype, device=device)
    dA = torch.empty(A.shape, **f32)
    dBs = torch.empty(Bs.shape, **f32)
    dCs = torch.empty(Cs.shape, **f32)
    dDs = torch.empty(A.shape[0], **f32) if Ds is not None else None
    d_bias = torch.empty(A.shape[0], **f32) if delta_bias is not None else None
    if du.numel() > 0:
        u, delta, A, Bs, Cs, Ds, delta_bias, dy = (
            _contig(t) for t in (u, delta, A, Bs, Cs, Ds, delta_bias, dy))
        lib = _backend(op, device)
        args = (ctypes.byref(shape), _ptr(u), _ptr(delta), _ptr(A), _ptr(Bs), _ptr(Cs), _ptr(Ds),
                _ptr(delta_bias), _ptr(dy), _ptr(du), _ptr(d_delta), _ptr(dA), _ptr(dBs), _ptr(dCs),
                _ptr(dDs), _ptr(d_bias))
        if device.type == "cpu":
            fn = "ssm_selective_scan_bwd_cpu"
            status = lib.ssm_selective_scan_bwd_cpu(*args, _num_threads())
        else:
            fn = "ssm_selective_scan_bwd_cuda"
            with torch.cuda.device(device):
                size = int(lib.ssm_selective_scan_bwd_cuda_workspace_size(ctypes.byref(shape)))
                workspace = torch.empty(max(size, 1), dtype=torch.uint8, device=device)
                status = lib.ssm_selective_scan_bwd_cuda(*args, _ptr(workspace), _stream(device))
        _raise_on_error(op, lib, status, fn)
    else:  # nothing to scan: all gradients are zero
        for t in (du, d_delta, dA, dBs, dCs, dDs, d_bias):
            if t is not None:
                t.zero_()

    def cast(t):
        return None if t is None else t.to(dtype)

    return du, d_delta, cast(dA), cast(dBs), cast(dCs), cast(dDs), cast(d_bias)


def _scan2d_prepare(op, x, delta, A, Bs, Cs, Ds, delta_bias, delta_softplus, dy=None):
    named = [("x", x), ("delta", delta), ("A", A), ("Bs", Bs), ("Cs", Cs), ("Ds", Ds), ("delta_bias", delta_bias)]
    if dy is not None:
        named.append(("dy", dy))
    dtype, device = _check_tensors(op, named)
    if x.dim() != 4:
        raise ValueError(f"{op}: x must have shape (batch, height, width, dim), got {tuple(x.shape)}")
    if Bs.dim() != 5:
        raise ValueError(f"{op}: Bs must have shape (batch, height, width, directions, dstate), "
                         f"got {tuple(Bs.shape)}")
    batch, height, width, dim = x.shape
    directions, dstate = Bs.shape[3], Bs.shape[4]
    if directions != SCAN_2D_DIRECTIONS:
        raise ValueError(f"{op}: Bs.shape[3] is the number of directions, which must be {SCAN_2D_DIRECTIONS}, "
                         f"got {directions}")
    if not 1 <= dstate <= MAX_DSTATE:
        raise ValueError(f"{op}: dstate (Bs.shape[4]) must be in 1..{MAX_DSTATE}, got {dstate}")
    channels = directions * dim
    _check_shape(op, "delta", delta, (batch, height, width, channels))
    _check_shape(op, "A", A, (channels, dstate))
    _check_shape(op, "Bs", Bs, (batch, height, width, directions, dstate))
    _check_shape(op, "Cs", Cs, (batch, height, width, directions, dstate))
    if Ds is not None:
        _check_shape(op, "Ds", Ds, (channels,))
    if delta_bias is not None:
        _check_shape(op, "delta_bias", delta_bias, (channels,))
    if dy is not None:
        _check_shape(op, "dy", dy, x.shape)
    shape = Scan2DShape(batch, height, width, dim, directions, dstate, 1 if delta_softplus else 0,
                        _DTYPE_CODES[dtype])
    _raise_on_limit(op, scan2d_limit_error(batch, height, width, dim, directions, dstate, device.type))
    return shape, dtype, device


def selective_scan_2d_fwd(x, delta, A, Bs, Cs, Ds=None, delta_bias=None, delta_softplus=True) -> torch.Tensor:
    """SelectiveScan2D forward with the compiled kernels; returns y (B, H, W, D) in x's dtype."""
    op = "SelectiveScan2D"
    shape, dtype, device = _scan2d_prepare(op, x, delta, A, Bs, Cs, Ds, delta_bias, delta_softplus)
    y = torch.empty(x.shape, dtype=dtype, device=device)
    if y.numel() == 0:
        return y
    x, delta, A, Bs, Cs, Ds, delta_bias = (_contig(t) for t in (x, delta, A, Bs, Cs, Ds, delta_bias))
    lib = _backend(op, device)
    args = (ctypes.byref(shape), _ptr(x), _ptr(delta), _ptr(A), _ptr(Bs), _ptr(Cs), _ptr(Ds), _ptr(delta_bias),
            _ptr(y))
    if device.type == "cpu":
        fn = "ssm_selective_scan_2d_fwd_cpu"
        status = lib.ssm_selective_scan_2d_fwd_cpu(*args, _num_threads())
    else:
        fn = "ssm_selective_scan_2d_fwd_cuda"
        with torch.cuda.device(device):
            status = lib.ssm_selective_scan_2d_fwd_cuda(*args, _stream(device))
    _raise_on_error(op, lib, status, fn)
    return y


def selective_scan_2d_proj_fwd(x, x_proj, dt_projection, A, Ds=None, delta_bias=None,
                               delta_softplus=True) -> torch.Tensor:
    """SelectiveScan2D with the dt projection folded in (operator domain version 6, forward only).

    x_proj (B, H, W, 4, R + 2N) holds, per position and direction, the dt inputs, B and C; dt_projection
    (4, D, R) forms delta = x_proj[..., :R] @ dt_projection[k].T, rounded to the dtype. Returns y (B, H, W, D).
    """
    op = "SelectiveScan2D"
    named = [("x", x), ("x_proj", x_proj), ("dt_projection", dt_projection), ("A", A), ("Ds", Ds),
             ("delta_bias", delta_bias)]
    dtype, device = _check_tensors(op, named)
    if x.dim() != 4:
        raise ValueError(f"{op}: x must have shape (batch, height, width, dim), got {tuple(x.shape)}")
    if dt_projection.dim() != 3:
        raise ValueError(f"{op}: dt_projection must have shape (directions, dim, dt_rank), "
                         f"got {tuple(dt_projection.shape)}")
    if A.dim() != 2:
        raise ValueError(f"{op}: A must have shape (directions*dim, dstate), got {tuple(A.shape)}")
    batch, height, width, dim = x.shape
    directions, dt_rank = SCAN_2D_DIRECTIONS, dt_projection.shape[2]
    dstate = A.shape[1]
    if not 1 <= dstate <= MAX_DSTATE:
        raise ValueError(f"{op}: dstate (A.shape[1]) must be in 1..{MAX_DSTATE}, got {dstate}")
    if not 1 <= dt_rank <= SCAN_2D_MAX_DT_RANK:
        raise ValueError(f"{op}: dt_rank (dt_projection.shape[2]) must be in 1..{SCAN_2D_MAX_DT_RANK}, "
                         f"got {dt_rank}")
    channels = directions * dim
    _check_shape(op, "dt_projection", dt_projection, (directions, dim, dt_rank))
    _check_shape(op, "A", A, (channels, dstate))
    _check_shape(op, "x_proj", x_proj, (batch, height, width, directions, dt_rank + 2 * dstate))
    if Ds is not None:
        _check_shape(op, "Ds", Ds, (channels,))
    if delta_bias is not None:
        _check_shape(op, "delta_bias", delta_bias, (channels,))
    _raise_on_limit(op, scan2d_limit_error(batch, height, width, dim, directions, dstate, device.type))
    shape = Scan2DShape(batch, height, width, dim, directions, dstate, 1 if delta_softplus else 0,
                        _DTYPE_CODES[dtype])
    y = torch.empty(x.shape, dtype=dtype, device=device)
    if y.numel() == 0:
        return y
    x, x_proj, dt_projection, A, Ds, delta_bias = (_contig(t) for t in (x, x_proj, dt_projection, A, Ds,
                                                                         delta_bias))
    lib = _backend(op, device)
    args = (ctypes.byref(shape), dt_rank, _ptr(x), _ptr(x_proj), _ptr(dt_projection), _ptr(A), _ptr(Ds),
            _ptr(delta_bias), _ptr(y))
    if device.type == "cpu":
        fn = "ssm_selective_scan_2d_proj_fwd_cpu"
        status = lib.ssm_selective_scan_2d_proj_fwd_cpu(*args, _num_threads())
    else:
        fn = "ssm_selective_scan_2d_proj_fwd_cuda"
        with torch.cuda.device(device):
            status = lib.ssm_selective_scan_2d_proj_fwd_cuda(*args, _stream(device))
    _raise_on_error(op, lib, status, fn)
    return y


def selective_scan_2d_bwd(x, delta, A, Bs, Cs, Ds, delta_bias, delta_softplus, dy):
    """SelectiveScan2D backward: the forward's arguments, then dy (B, H, W, D).

    Returns (dx, d_delta, dA, dBs, dCs, dDs, d_delta_bias) in the inputs' dtype; dDs / d_delta_bias are
    None when Ds / delta_bias are None.
    """
    op = "SelectiveScan2D backward"
    shape, dtype, device = _scan2d_prepare(op, x, delta, A, Bs, Cs, Ds, delta_bias, delta_softplus, dy)
    f32 = dict(dtype=torch.float32, device=device)
    dx = torch.empty(x.shape, dtype=dtype, device=device)   # every output is overwritten by the kernel
    d_delta = torch.empty(delta.shape, dtype=dtype, device=device)
    dA = torch.empty(A.shape, **f32)
    dBs = torch.empty(Bs.shape, **f32)
    dCs = torch.empty(Cs.shape, **f32)
    dDs = torch.empty(A.shape[0], **f32) if Ds is not None else None
    d_bias = torch.empty(A.shape[0], **f32) if delta_bias is not None else None
    if dx.numel() > 0:
        x, delta, A, Bs, Cs, Ds, delta_bias, dy = (_contig(t) for t in (x, delta, A, Bs, Cs, Ds, delta_bias, dy))
        lib = _backend(op, device)
        args = (ctypes.byref(shape), _ptr(x), _ptr(delta), _ptr(A), _ptr(Bs), _ptr(Cs), _ptr(Ds),
                _ptr(delta_bias), _ptr(dy), _ptr(dx), _ptr(d_delta), _ptr(dA), _ptr(dBs), _ptr(dCs), _ptr(dDs),
                _ptr(d_bias))
        if device.type == "cpu":
            fn = "ssm_selective_scan_2d_bwd_cpu"
            status = lib.ssm_selective_scan_2d_bwd_cpu(*args, _num_threads())
        else:
            fn = "ssm_selective_scan_2d_bwd_cuda"
            with torch.cuda.device(device):
                size = int(lib.ssm_selective_scan_2d_bwd_cuda_workspace_size(ctypes.byref(shape)))
                workspace = torch.empty(max(size, 1), dtype=torch.uint8, device=device)
                status = lib.ssm_selective_scan_2d_bwd_cuda(*args, _ptr(workspace), _stream(device))
        _raise_on_error(op, lib, status, fn)
    else:  # nothing to scan: all gradients are zero
        for t in (dx, d_delta, dA, dBs, dCs, dDs, d_bias):
            if t is not None:
                t.zero_()

    def cast(t):
        return None if t is None else t.to(dtype)

    return dx, d_delta, cast(dA), cast(dBs), cast(dCs), cast(dDs), cast(d_bias)


# ------------------------------------------------------------------------------------------------
# Shape limits of the kernels (docs/ops.md, "Limits"). The C entry points enforce them (SSM_ERR_BAD_SIZE
# before any memory access); these mirrors turn them into a ValueError that names the limit.

CPU_MAX_ELEMENTS = (1 << 60) - 1  # every tensor and scratch buffer (float32 byte counts stay in int64)
CUDA_MAX_DIM = (1 << 31) - 1      # SelectiveScan: B, G, D, L each
CUDA_MAX_ELEMENTS = (1 << 60) - 1  # SelectiveScan on CUDA: every tensor
CUDA_MAX_BLOCKS = (1 << 31) - 1   # gridDim.x
CUDA_DEFORM_MAX_DIM = (1 << 30) - 1  # DeformAggregate on CUDA: H, W, Hout, Wout, G, C, G*C, P, B, strides, pads
CUDA_DEFORM_MAX_IMAGE = (1 << 31) - 1  # elements of one image of value / output / offset_mask (32-bit offsets)
MAX_DEFORM_POINTS = 1 << 20      # K on the CPU


def scan_limit_error(batch, groups, dim, dstate, length, device_type) -> Optional[str]:
    """Why the `device_type` ('cpu' or 'cuda') kernels refuse this SelectiveScan shape, or None."""
    if min(batch, groups, dim, length) < 1:
        return None  # nothing to scan: the kernels are not called
    if not 1 <= dstate <= MAX_DSTATE:
        return f"dstate {dstate} is outside 1..{MAX_DSTATE}"
    rows = batch * groups * dim
    if device_type == "cpu":
        biggest = max(rows * length, batch * groups * dstate * length, rows * dstate)
        if biggest > CPU_MAX_ELEMENTS:
            return f"a tensor of {biggest} elements exceeds the CPU kernels' limit of 2^60 - 1"
        return None
    for name, v in (("batch", batch), ("groups", groups), ("dim", dim), ("length", length)):
        if v > CUDA_MAX_DIM:
            return f"{name} = {v} exceeds the CUDA kernels' limit of 2^31 - 1"
    biggest = max(rows * length, batch * groups * 16 * length)
    if biggest > CUDA_MAX_ELEMENTS:
        return f"{biggest} elements (B*G*D*L or B*G*16*L) exceed the CUDA kernels' limit of 2^60 - 1"
    need = -(-length // 8)
    lpr = min(32, need)
    fwd_rows = 4 * (32 // lpr)
    bwd_rows = 8 * (32 >> min(5, max(0, (need - 1).bit_length())))
    blocks = max(-(-rows // fwd_rows), batch * groups * -(-dim // bwd_rows))
    if blocks > CUDA_MAX_BLOCKS:
        return f"B*G*D = {rows} needs a launch grid of {blocks} blocks, more than the 2^31 - 1 CUDA allows"
    return None


CUDA_SCAN2D_MAX_POSITIONS = 36864
INT32_MAX = 2 ** 31 - 1


def scan2d_limit_error(batch, height, width, dim, directions, dstate, device_type) -> Optional[str]:
    """Why the `device_type` kernels refuse this SelectiveScan2D shape, or None (the kernels' own checks,
    mirrored so that the error names the limit; docs/ops.md "Limits")."""
    if min(batch, height, width, dim) < 1:
        return None  # nothing to scan: the kernels are not called
    if directions != SCAN_2D_DIRECTIONS:
        return f"directions = {directions}; the kernels take {SCAN_2D_DIRECTIONS}"
    if not 1 <= dstate <= MAX_DSTATE:
        return f"dstate {dstate} is outside 1..{MAX_DSTATE}"
    positions = batch * height * width
    if device_type != "cpu":
        # The CUDA forward sums the four directions of an image in shared memory (H x odd W float32 values).
        if height * (width | 1) > CUDA_SCAN2D_MAX_POSITIONS:
            return (f"a {height}x{width} image exceeds the CUDA kernels' limit of H x (W rounded up to odd) <= "
                    f"{CUDA_SCAN2D_MAX_POSITIONS} positions")
        if height * width * directions * dim > INT32_MAX or batch * dim > INT32_MAX:
            return f"H*W*4*D or B*D beyond 2^31 - 1 (H={height}, W={width}, D={dim}, B={batch}) on CUDA"
        return None
    biggest = max(positions * directions * dim, positions * directions * dstate, batch * directions * dim * dstate)
    if biggest > CPU_MAX_ELEMENTS:
        return f"a tensor of {biggest} elements exceeds the CPU kernels' limit of 2^60 - 1"
    return None


def deform_limit_error(batch, height, width, out_h, out_w, group, group_channels, stride_om, kernel_h, kernel_w,
                       stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, remove_center,
                       device_type, element_size=4) -> Optional[str]:
    """Why the `device_type` kernels refuse this DeformAggregate shape, or None. On CUDA the threads per
    (pixel, group) depend on the channel vector width (element_size, pointer alignment); this assumes
    aligned tensors, the C check is exact."""
    if min(batch, height, width, out_h, out_w, group, group_channels) < 1:
        return None
    points = kernel_h * kernel_w - remove_center
    channels = group * group_channels
    if device_type == "cpu":
        if points > MAX_DEFORM_POINTS:
            return f"{points} sampling points exceed the CPU kernels' limit of 2^20"
        biggest = max(batch * height * width * channels, batch * out_h * out_w * max(stride_om, channels))
        if biggest > CPU_MAX_ELEMENTS:
            return f"a tensor of {biggest} elements exceeds the CPU kernels' limit of 2^60 - 1"
        return None
    dims = dict(batch=batch, height=height, width=width, out_height=out_h, out_width=out_w, group=group,
                group_channels=group_channels, channels=channels, offset_columns=stride_om, stride_h=stride_h,
                stride_w=stride_w, pad_h=abs(pad_h), pad_w=abs(pad_w))
    for name, v in dims.items():
        if v > CUDA_DEFORM_MAX_DIM:
            return f"{name} = {v} exceeds the CUDA kernels' limit of 2^30 - 1"
    if kernel_h >= 4096 or kernel_w >= 4096 or dilation_h >= 65536 or dilation_w >= 65536:
        return "kernel size must be < 4096 and dilation < 65536 on CUDA"
    span_x = (out_w - 1) * stride_w + dilation_w * (kernel_w - 1) + abs(pad_w)
    span_y = (out_h - 1) * stride_h + dilation_h * (kernel_h - 1) + abs(pad_h)
    if max(span_x, span_y) > CUDA_DEFORM_MAX_DIM:
        return f"the sampling window spans {max(span_x, span_y)} pixels, more than the 2^30 - 1 CUDA allows"
    per_image = max(height * width * channels, out_h * out_w * channels, out_h * out_w * stride_om)
    if per_image > CUDA_DEFORM_MAX_IMAGE:
        return (f"one image of a tensor has {per_image} elements, more than the 2^31 - 1 the CUDA kernels "
                f"index with 32-bit offsets")
    vec = 16 // element_size
    while vec > 1 and group_channels % vec:
        vec //= 2
    nvec = group_channels // vec
    tpg = 1 << min(5, max(0, (nvec - 1).bit_length()))
    if out_h * out_w * group * tpg >= (1 << 31) - 256:
        return (f"Hout*Wout*G = {out_h * out_w * group} needs {out_h * out_w * group * tpg} threads per image, "
                f"more than the 2^31 - 257 the CUDA kernels index with 32-bit ints")
    return None


def _raise_on_limit(op: str, error: Optional[str]) -> None:
    if error is not None:
        raise ValueError(f"{op}: shape beyond the kernels' limits: {error} (see docs/ops.md, Limits)")


def deform_output_size(height, width, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                       dilation_w) -> Tuple[int, int]:
    out_h = (height + 2 * pad_h - (dilation_h * (kernel_h - 1) + 1)) // stride_h + 1
    out_w = (width + 2 * pad_w - (dilation_w * (kernel_w - 1) + 1)) // stride_w + 1
    return out_h, out_w


def _deform_prepare(op, value, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                    dilation_w, group, group_channels, offset_scale, remove_center, grad_out=None):
    named = [("value", value), ("offset_mask", offset_mask)]
    if grad_out is not None:
        named.append(("grad_out", grad_out))
    dtype, device = _check_tensors(op, named)
    attrs = dict(kernel_h=kernel_h, kernel_w=kernel_w, stride_h=stride_h, stride_w=stride_w,
                 dilation_h=dilation_h, dilation_w=dilation_w, group=group, group_channels=group_channels)
    for name, v in attrs.items():
        if int(v) < 1:
            raise ValueError(f"{op}: attribute {name} must be >= 1, got {v}")
    if int(remove_center) not in (0, 1):
        raise ValueError(f"{op}: attribute remove_center must be 0 or 1, got {remove_center}")
    points = kernel_h * kernel_w - int(remove_center)
    if points < 1:
        raise ValueError(f"{op}: kernel {kernel_h}x{kernel_w} with remove_center has no sampling points")
    if value.dim() != 4:
        raise ValueError(f"{op}: value must have shape (batch, height, width, group*group_channels), "
                         f"got {tuple(value.shape)}")
    batch, height, width, channels = value.shape
    _check_shape(op, "value", value, (batch, height, width, group * group_channels))
    out_h, out_w = deform_output_size(height, width, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                                      dilation_h, dilation_w)
    if offset_mask.dim() != 4:
        raise ValueError(f"{op}: offset_mask must have shape (batch, out_height, out_width, P), "
                         f"got {tuple(offset_mask.shape)}")
    stride_om = offset_mask.shape[3]
    if stride_om < group * points * 3:
        raise ValueError(f"{op}: offset_mask must have at least group*K*3 = {group * points * 3} columns, "
                         f"got shape {tuple(offset_mask.shape)}")
    _check_shape(op, "offset_mask", offset_mask, (batch, out_h, out_w, stride_om))
    if grad_out is not None:
        _check_shape(op, "grad_out", grad_out, (batch, out_h, out_w, channels))
    shape = DeformShape(batch, height, width, out_h, out_w, group, group_channels, stride_om, kernel_h, kernel_w,
                        stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, int(remove_center),
                        float(offset_scale), _DTYPE_CODES[dtype])
    _raise_on_limit(op, deform_limit_error(batch, height, width, out_h, out_w, group, group_channels, stride_om,
                                           kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                                           dilation_w, int(remove_center), device.type, value.element_size()))
    return shape, dtype, device, (batch, out_h, out_w, channels)


def deform_aggregate_fwd(value, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                         dilation_w, group, group_channels, offset_scale, remove_center, offset_bias=None,
                         activation: str = "none") -> torch.Tensor:
    """DeformAggregate forward with the compiled kernels; returns (B, Hout, Wout, G*C) in value's dtype.
    `offset_bias` (P values, value's dtype and device) and `activation` ("none" or "silu") are the forward-only
    epilogues of domain version 5 (docs/ops.md)."""
    op = "DeformAggregate"
    shape, dtype, device, out_shape = _deform_prepare(
        op, value, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
        group, group_channels, offset_scale, remove_center)
    if activation not in DEFORM_ACTIVATIONS:
        raise ValueError(f"{op}: activation must be one of {', '.join(DEFORM_ACTIVATIONS)}, got {activation!r}")
    shape.activation = DEFORM_ACTIVATIONS[activation]
    if offset_bias is not None:
        _check_shape(op, "offset_bias", offset_bias, (offset_mask.shape[3],))
        if offset_bias.dtype != dtype or offset_bias.device != device:
            raise ValueError(f"{op}: offset_bias must be {dtype} on {device}, got {offset_bias.dtype} on "
                             f"{offset_bias.device}")
        offset_bias = offset_bias.contiguous()
    out = torch.empty(out_shape, dtype=dtype, device=device)
    if out.numel() == 0:
        return out
    value, offset_mask = value.contiguous(), offset_mask.contiguous()
    lib = _backend(op, device)
    args = (ctypes.byref(shape), _ptr(value), _ptr(offset_mask),
            None if offset_bias is None else _ptr(offset_bias), _ptr(out))
    if device.type == "cpu":
        fn = "ssm_deform_aggregate_fwd_cpu"
        status = lib.ssm_deform_aggregate_fwd_cpu(*args, _num_threads())
    else:
        fn = "ssm_deform_aggregate_fwd_cuda"
        with torch.cuda.device(device):
            status = lib.ssm_deform_aggregate_fwd_cuda(*args, _stream(device))
    _raise_on_error(op, lib, status, fn)
    return out


def deform_aggregate_bwd(value, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                         dilation_w, group, group_channels, offset_scale, remove_center, grad_out):
    """DeformAggregate backward: the forward's arguments, then grad_out.

    Returns (grad_value, grad_offset_mask) in value's dtype (padding columns of grad_offset_mask are 0).
    """
    op = "DeformAggregate backward"
    shape, dtype, device, _ = _deform_prepare(
        op, value, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
        group, group_channels, offset_scale, remove_center, grad_out)
    grad_value = torch.empty(value.shape, dtype=torch.float32, device=device)  # overwritten by the kernel
    grad_om = torch.empty(offset_mask.shape, dtype=torch.float32, device=device)
    if grad_value.numel() == 0 or grad_om.numel() == 0:
        grad_value.zero_()
        grad_om.zero_()
    else:
        value, offset_mask, grad_out = value.contiguous(), offset_mask.contiguous(), grad_out.contiguous()
        lib = _backend(op, device)
        args = (ctypes.byref(shape), _ptr(value), _ptr(offset_mask), _ptr(grad_out), _ptr(grad_value),
                _ptr(grad_om))
        if device.type == "cpu":
            fn = "ssm_deform_aggregate_bwd_cpu"
            status = lib.ssm_deform_aggregate_bwd_cpu(*args, _num_threads())
        else:
            fn = "ssm_deform_aggregate_bwd_cuda"
            with torch.cuda.device(device):
                status = lib.ssm_deform_aggregate_bwd_cuda(*args, _stream(device))
        _raise_on_error(op, lib, status, fn)
    return grad_value.to(dtype), grad_om.to(dtype)
