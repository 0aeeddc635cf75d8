"""Locator of the ONNX Runtime custom-op library ``libssmpose_ort.so``.

The library registers the ``ssmpose`` operator domain (SelectiveScan, DeformAggregate; SelectiveScan2D from domain
version 2, LayerNorm from version 3, AddLayerNorm and MultiKernelDepthwiseConv from version 4, VSSBlockTail from
version 7) with ONNX Runtime; see ``custom_ops/csrc/onnxruntime/README.md``. It is looked up in the same folders, in the same order, as the kernel
libraries (:mod:`kernel_library`):

1. the folder(s) named by ``$SSMPOSE_KERNELS_DIR`` (``os.pathsep``-separated),
2. the installed package's ``ssmpose/custom_ops/lib/`` folder,
3. a source checkout's CMake build tree ``<repo>/build`` (``build/lib/`` first, then a shallow search).

A library whose ``ssmpose_ort_version()`` differs from :data:`ORT_LIBRARY_VERSION` is refused with a reason
naming the file (a stale build). This module imports neither torch nor onnxruntime.

Use::

    so = onnxruntime.SessionOptions()
    so.register_custom_ops_library(str(ort_library_path()))   # or: register(so)
"""
from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path
from typing import Dict, List, Optional, Tuple

LIBRARY_NAME = "libssmpose_ort.so"
ORT_LIBRARY_VERSION = 7  # must equal SSMPOSE_ORT_LIBRARY_VERSION of csrc/onnxruntime/register.cpp (3: LayerNorm;
#                          4: AddLayerNorm, MultiKernelDepthwiseConv; 5: DeformAggregate's epilogues;
#                          6: SelectiveScan2D's dt_projection; 7: VSSBlockTail)
ORT_API_VERSION = 16  # the ONNX Runtime C API version the library requests
MIN_ORT_VERSION = "1.16"  # the first ONNX Runtime with that API version
DOMAIN = "ssmpose"
DOMAIN_VERSION = 1


def search_dirs() -> List[Path]:
    """Folders searched for the library, in order (see the module docstring)."""
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


def find_library(name: str) -> Tuple[Optional[Path], List[Path]]:
    """First `name` in the search folders (and the folders searched); also used for the OpenVINO extension."""
    dirs = search_dirs()
    for d in dirs:
        candidate = d / name
        if candidate.is_file():
            return candidate, dirs
        if d.name == "build" and d.is_dir():
            for depth in range(1, 5):  # build/<a>/..., e.g. build/<wheel tag>/lib or build/custom_ops/csrc/...
                hits = sorted(d.glob("/".join(["*"] * depth) + "/" + name))
                if hits:
                    return hits[0], dirs
    return None, dirs


def _query(path: Path) -> Dict[str, int]:
    """The library's version queries (loads it with ctypes; ONNX Runtime later reuses the same mapping)."""
    try:
        lib = ctypes.CDLL(str(path), mode=getattr(os, "RTLD_LOCAL", 0))
    except OSError as exc:
        raise RuntimeError(f"cannot load {path}: {exc}") from exc
    info = {}
    for key, symbol in (("version", "ssmpose_ort_version"), ("api_version", "ssmpose_ort_api_version"),
                        ("has_cuda", "ssmpose_ort_has_cuda")):
        try:
            fn = getattr(lib, symbol)
        except AttributeError as exc:
            raise RuntimeError(f"{path}: missing symbol {symbol}; rebuild it") from exc
        fn.argtypes = []
        fn.restype = ctypes.c_int
        info[key] = int(fn())
    return info


_lock = threading.Lock()
_cache: Dict[str, Tuple[Optional[Path], Optional[str], Dict[str, int]]] = {}


def _lookup() -> Tuple[Optional[Path], Optional[str], Dict[str, int]]:
    with _lock:
        if "ort" not in _cache:
            path, dirs = find_library(LIBRARY_NAME)
            if path is None:
                _cache["ort"] = (None, f"{LIBRARY_NAME} not found in [{', '.join(str(d) for d in dirs)}]", {})
            else:
                try:
                    info = _query(path)
                except RuntimeError as exc:
                    _cache["ort"] = (None, str(exc), {})
                else:
                    if info["version"] != ORT_LIBRARY_VERSION:
                        _cache["ort"] = (None, f"{path} is library version {info['version']}, this ssmpose needs "
                                               f"{ORT_LIBRARY_VERSION}: the library is stale, rebuild it (cmake "
                                               f"--build build) or point SSMPOSE_KERNELS_DIR elsewhere", info)
                    else:
                        _cache["ort"] = (path, None, info)
        return _cache["ort"]


def ort_library_path() -> Optional[Path]:
    """Path of a usable libssmpose_ort.so, or None (see :func:`unavailable_reason`)."""
    return _lookup()[0]


def unavailable_reason() -> Optional[str]:
    """Why no usable libssmpose_ort.so was found; None if one was."""
    return _lookup()[1]


def library_info() -> Dict[str, int]:
    """``{"version", "api_version", "has_cuda"}`` of the library found (empty if none could be loaded)."""
    return dict(_lookup()[2])


def register(session_options) -> Path:
    """Register the library with an ``onnxruntime.SessionOptions``; RuntimeError saying why if unavailable."""
    path = ort_library_path()
    if path is None:
        raise RuntimeError(f"ssmpose ONNX Runtime custom ops unavailable: {unavailable_reason()}")
    session_options.register_custom_ops_library(str(path))
    return path


def reset_cache() -> None:
    """Forget the lookup result (e.g. after building, or changing $SSMPOSE_KERNELS_DIR)."""
    with _lock:
        _cache.clear()
