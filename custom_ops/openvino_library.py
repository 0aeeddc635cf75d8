"""Locator of the OpenVINO extension ``libssmpose_ov.so``.

The extension defines the ``ssmpose`` ops (SelectiveScan, SelectiveScan2D, DeformAggregate) for OpenVINO, with
a CPU evaluate through the project's CPU kernels, and converts ``ssmpose``-domain ONNX nodes (domain versions 1
to 7) to them. Four nodes become OpenVINO's own ops instead: LayerNorm (version 3) MVN, Multiply and Add;
AddLayerNorm (version 4) an Add and the same; MultiKernelDepthwiseConv (version 4) Transpose, Split,
GroupConvolution, Concat, the channel shuffle and Gelu; VSSBlockTail (version 7) the LayerNorm conversion twice,
three MatMuls, the Adds and Gelu (erf), with the float16 rounding of the products' operands done by arithmetic.
See ``custom_ops/csrc/openvino/``. It is searched for in the same folders as the ONNX Runtime library
(:func:`ort_library.find_library`).

An OpenVINO extension is C++ compiled against one OpenVINO release; loading it into another release can
crash. The library therefore reports the release it was built against, and it is refused, with the reason,
when that differs from the running ``openvino``, when its own version differs from
:data:`OV_LIBRARY_VERSION` or when its kernel ABI is stale. ``tools/setup.sh`` builds it against the installed
``openvino`` wheel.

Use::

    core = openvino.Core()
    add_to_core(core)        # or core.add_extension(str(openvino_library_path()))
"""
from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path
from typing import Dict, Optional, Tuple

from .ort_library import find_library

LIBRARY_NAME = "libssmpose_ov.so"
OV_LIBRARY_VERSION = 7  # must equal SSMPOSE_OV_LIBRARY_VERSION of csrc/openvino/extension.cpp
KERNELS_ABI_VERSION = 6  # kernel_library.ABI_VERSION (not imported: that module imports torch)


def _release(version: str) -> str:
    """'2026.4.1-20719-abc...' -> '2026.4.1' (the part an extension is tied to)."""
    return version.split("-")[0]


def _query(path: Path) -> Dict[str, object]:
    import openvino  # first, so that the library binds to the libopenvino this process uses

    try:
        lib = ctypes.CDLL(str(path), mode=getattr(os, "RTLD_LOCAL", 0))
    except OSError as exc:
        raise RuntimeError(f"cannot load {path}: {exc}") from exc
    info: Dict[str, object] = {"running_openvino": _release(openvino.get_version())}
    for key, symbol, restype in (("version", "ssmpose_ov_version", ctypes.c_int),
                                 ("kernels_abi", "ssmpose_ov_kernels_abi_version", ctypes.c_int),
                                 ("openvino", "ssmpose_ov_openvino_version", ctypes.c_char_p)):
        try:
            fn = getattr(lib, symbol)
        except AttributeError as exc:
            raise RuntimeError(f"{path}: missing symbol {symbol}; rebuild it") from exc
        fn.argtypes = []
        fn.restype = restype
        value = fn()
        info[key] = value.decode() if isinstance(value, bytes) else int(value)
    return info


def _problem(path: Path, info: Dict[str, object]) -> Optional[str]:
    rebuild = "rebuild it (bash tools/setup.sh) or point SSMPOSE_KERNELS_DIR elsewhere"
    if info["version"] != OV_LIBRARY_VERSION:
        return (f"{path} is extension version {info['version']}, this ssmpose needs {OV_LIBRARY_VERSION}: the "
                f"library is stale, {rebuild}")
    if info["kernels_abi"] != KERNELS_ABI_VERSION:
        return (f"{path} uses kernel ABI {info['kernels_abi']}, this ssmpose needs {KERNELS_ABI_VERSION}: {rebuild}")
    if info["openvino"] != info["running_openvino"]:
        return (f"{path} was built against OpenVINO {info['openvino']} but OpenVINO {info['running_openvino']} "
                f"is running; an extension only loads into the release it was compiled for: {rebuild}")
    return None


_lock = threading.Lock()
_cache: Dict[str, Tuple[Optional[Path], Optional[str], Dict[str, object]]] = {}


def _lookup() -> Tuple[Optional[Path], Optional[str], Dict[str, object]]:
    with _lock:
        if "ov" not in _cache:
            path, dirs = find_library(LIBRARY_NAME)
            if path is None:
                _cache["ov"] = (None, f"{LIBRARY_NAME} not found in [{', '.join(str(d) for d in dirs)}] (it is "
                                      f"built when OpenVINO's CMake config is found: bash tools/setup.sh)", {})
            else:
                try:
                    info = _query(path)
                except (RuntimeError, ImportError) as exc:
                    _cache["ov"] = (None, str(exc), {})
                else:
                    problem = _problem(path, info)
                    _cache["ov"] = (None if problem else path, problem, info)
        return _cache["ov"]


def openvino_library_path() -> Optional[Path]:
    """Path of a usable libssmpose_ov.so, or None (see :func:`unavailable_reason`)."""
    return _lookup()[0]


def unavailable_reason() -> Optional[str]:
    """Why no usable libssmpose_ov.so was found; None if one was."""
    return _lookup()[1]


def library_info() -> Dict[str, object]:
    """``{"version", "kernels_abi", "openvino", "running_openvino"}`` of the library found (empty if none)."""
    return dict(_lookup()[2])


def add_to_core(core) -> Path:
    """Add the extension to an ``openvino.Core``; RuntimeError saying why if it is unavailable."""
    path = openvino_library_path()
    if path is None:
        raise RuntimeError(f"ssmpose OpenVINO extension unavailable: {unavailable_reason()}")
    core.add_extension(str(path))
    return path


def reset_cache() -> None:
    """Forget the lookup result (e.g. after building, or changing $SSMPOSE_KERNELS_DIR)."""
    with _lock:
        _cache.clear()
