"""Fuzzed single-node `ssmpose` graphs for the runtime libraries (ONNX Runtime library, OpenVINO extension).

Each case is one SelectiveScan or DeformAggregate node built from a small valid configuration plus zero to
three mutations drawn from the list in MUTATIONS (wrong ranks, zero-size and huge dimensions, mismatched
B/G/N/L, bad attributes, P too small, NaN/Inf values, unsupported or mixed dtypes, missing inputs). A case is
a pure function of (seed, index), so every runtime sees the same cases. A case knows whether it is valid
under docs/ops.md; the verdict (`judge`) is:

- invalid case: the runtime must raise, and the message must name the op and contain one of the case's
  keywords (the input or attribute at fault, or the word for the problem);
- valid case: the runtime must return the float64 reference's result (custom_ops/reference.py) within the
  float32 (float16) tolerance, with NaN and +-Inf where the reference has them;
- anything else (a wrong result, an error not naming the op, a valid case refused) is a failure; a crash,
  a sanitizer report or a hang is seen by the parent process (tests/test_fuzz_runtime_libraries.py).

Huge dimensions are only ever given to zero-size tensors, or to outputs the adapters must refuse before
allocating, so no case needs much memory.

Run as a script it executes cases in this process and prints one JSON line per case (a "start" line before
it runs, flushed, so the parent can name the case that crashed or hung):
    python tests/fuzz_cases.py --runtime ort --seed 17 --count 300
"""
from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from onnx import TensorProto, helper

F32, F16, F64 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE
NP_OF = {F32: np.float32, F16: np.float16, F64: np.float64, TensorProto.INT32: np.int32,
         TensorProto.INT64: np.int64, TensorProto.BOOL: np.bool_, TensorProto.UINT8: np.uint8}
BAD_TYPES = [F64, TensorProto.INT32, TensorProto.INT64, TensorProto.BOOL, TensorProto.UINT8]
SCAN_INPUTS = ["u", "delta", "A", "Bs", "Cs", "Ds", "delta_bias"]
DEFORM_ATTRS = ("kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w", "dilation_h", "dilation_w",
                "group", "group_channels", "offset_scale", "remove_center")
HUGE = 1 << 40  # a dimension no tensor could hold; only ever next to a zero-size dimension
INT32_MAX = (1 << 31) - 1

# What the fuzzer generates, per op. Mutations marked valid keep the node valid under docs/ops.md.
MUTATIONS = {
    "SelectiveScan": {
        "float16": "valid: all inputs float16",
        "optional": "valid: Ds / delta_bias omitted (5 or 6 inputs, or the empty name)",
        "zero_dim": "valid: B, G*D or L is 0 (empty output)",
        "huge_zero": "valid: L or B huge (2^40) next to a zero-size dimension",
        "nonfinite": "valid: NaN / +Inf / -Inf at random places of random inputs",
        "declared": "valid: graph input shapes declared static, symbolic or not at all",
        "rank": "an input with one dimension too many or too few",
        "mismatch_B": "Bs/Cs batch != u batch",
        "mismatch_L": "delta or Bs/Cs length != u length",
        "mismatch_G": "Bs groups not dividing G*D, or Cs groups != Bs groups",
        "mismatch_N": "A's N != Bs's N, or Cs's N != Bs's N",
        "N_range": "N = 0 or N > 16",
        "vec_len": "Ds / delta_bias of the wrong length or rank",
        "dtype_first": "all inputs of an unsupported type (float64, int32, int64, bool, uint8)",
        "dtype_mix": "one input of another type than u",
        "attr": "delta_softplus negative, > 1, huge, a float or a string",
        "missing": "a required input omitted (empty name, or fewer than 5 inputs)",
        "huge_invalid": "a huge dimension in a zero-size tensor with another dimension mismatched or N = 0",
    },
    "DeformAggregate": {
        "float16": "valid: both inputs float16",
        "zero_dim": "valid: B = 0, or Hout = 0 (the kernel does not fit)",
        "huge_zero": "valid: B = 0 with H or W huge (2^40)",
        "nonfinite": "valid: NaN / +Inf / -Inf in value, offsets or masks",
        "far_offsets": "valid: offsets far outside the image or on its border (-1, W, H)",
        "extra_cols": "valid: P larger than group*K*3",
        "declared": "valid: graph input shapes declared static, symbolic or not at all",
        "rank": "value or offset_mask with one dimension too many or too few",
        "channels": "value channels != group*group_channels",
        "lead": "offset_mask (B, Hout, Wout) != the expected",
        "P_small": "P < group*K*3 (by one, or 0)",
        "attr_range": "kernel/stride/dilation/group/group_channels <= 0, pad < 0, remove_center not 0/1, "
                      "values >= 2^31, a 1x1 kernel with remove_center, kernel_h*kernel_w > 2^20",
        "attr_missing": "a required attribute missing",
        "attr_type": "an attribute of the wrong type (float for int, string)",
        "scale_nonfinite": "offset_scale NaN or +-Inf",
        "dtype_first": "both inputs of an unsupported type",
        "dtype_mix": "offset_mask of another type than value",
        "missing": "one input only",
        "empty_image": "H or W = 0 while the output is not empty (with group_channels = 2^31-1: the output "
                       "must be refused before it is allocated)",
    },
}


@dataclasses.dataclass
class Case:
    id: str
    op: str
    inputs: List[str]                       # node inputs; "" for an omitted optional input
    types: List[int]                        # element type per node input
    feeds: Dict[str, np.ndarray]
    attrs: Dict[str, object]
    declared: Dict[str, Optional[list]]     # declared graph input shapes (None: unknown)
    valid: bool
    keywords: Tuple[str, ...] = ()          # one must appear in the error of an invalid case
    mutations: Tuple[str, ...] = ()

    def model(self):
        node = helper.make_node(self.op, self.inputs, ["y"], domain="ssmpose", **self.attrs)
        graph_inputs = [helper.make_tensor_value_info(n, t, self.declared.get(n)) for n, t in
                        zip(self.inputs, self.types) if n]
        out_type = self.types[0] if self.types else F32
        graph = helper.make_graph([node], f"{self.op}_fuzz", graph_inputs,
                                  [helper.make_tensor_value_info("y", out_type, None)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                        helper.make_opsetid("ssmpose", 1)])
        model.ir_version = 8
        return model

    def describe(self) -> str:
        shapes = {k: list(v.shape) for k, v in self.feeds.items()}
        types = [TensorProto.DataType.Name(t) for t in self.types]
        return (f"{self.id} {self.op} mutations={list(self.mutations)} valid={self.valid} inputs={self.inputs} "
                f"types={types} shapes={shapes} declared={self.declared} attrs={self.attrs}")


# ------------------------------------------------------------------------------------------------
# Generation


def _zeros(shape, dtype=np.float32):
    _size_ok(shape)
    return np.zeros(shape, dtype=dtype)


def _declare(rng, feeds, inputs):
    """Declared graph input shapes: the exact static shapes, all symbolic, or none."""
    mode = rng.choice(["static", "static", "symbolic", "none"])
    declared = {}
    for name in inputs:
        if not name:
            continue
        shape = list(feeds[name].shape)
        if mode == "static":
            declared[name] = shape
        elif mode == "symbolic":
            declared[name] = [f"{name}_d{i}" if rng.random() < 0.7 else d for i, d in enumerate(shape)]
        else:
            declared[name] = None
    return declared


def _nonfinite(rng, arr, count=None):
    if arr.size == 0:
        return
    flat = arr.reshape(-1)
    for _ in range(count or int(rng.integers(1, 4))):
        flat[rng.integers(0, flat.size)] = rng.choice([np.nan, np.inf, -np.inf])


def _cast_all(feeds, dtype):
    for k, v in feeds.items():
        if dtype == np.bool_:
            feeds[k] = v > 0
        else:
            feeds[k] = v.astype(dtype)


def _reshape_rank(rng, arr):
    """One dimension more or fewer."""
    if arr.ndim > 1 and rng.random() < 0.5:
        _size_ok(arr.shape[:-2] + (arr.shape[-2] * arr.shape[-1],))
        return arr.reshape(arr.shape[:-2] + (arr.shape[-2] * arr.shape[-1],))
    return arr.reshape(arr.shape + (1,)) if rng.random() < 0.5 else arr.reshape((1,) + arr.shape)


class _TooBig(Exception):
    """A combination of mutations asked for a non-empty tensor with a huge dimension: draw the case again."""


def _size_ok(shape):
    n = int(np.prod(shape, dtype=object))
    if n > (1 << 22):
        raise _TooBig(shape)
    return n


def _retry(make, seed, index):
    for attempt in range(100):
        try:
            return make(seed, index, attempt)
        except _TooBig:
            continue
    raise RuntimeError(f"no case of size found for seed {seed} index {index}")


def scan_case(seed: int, index: int) -> Case:
    return _retry(_scan_case, seed, index)


def deform_case(seed: int, index: int) -> Case:
    return _retry(_deform_case, seed, index)


def _scan_case(seed: int, index: int, attempt: int) -> Case:
    rng = np.random.default_rng([seed, index, 1, attempt])
    B, G, D = int(rng.integers(1, 3)), int(rng.integers(1, 4)), int(rng.integers(1, 5))
    N = int(rng.choice([1, 1, 2, 4, 16, int(rng.integers(1, 17))]))
    L = int(rng.integers(1, 41))
    softplus = int(rng.integers(0, 2))
    pool = list(MUTATIONS["SelectiveScan"])
    pool.remove("declared")
    n_mut = int(rng.choice([0, 1, 1, 1, 2, 2, 3]))
    muts = [str(m) for m in rng.choice(pool, size=n_mut, replace=False)] if n_mut else []
    valid = True
    keywords: List[str] = []
    C = G * D
    if "zero_dim" in muts:
        which = rng.choice(["B", "D", "L"])
        B, D, L = (0 if which == "B" else B), (0 if which == "D" else D), (0 if which == "L" else L)
        C = G * D
    if "huge_zero" in muts or "huge_invalid" in muts:
        if rng.random() < 0.5:
            B, L = 0, HUGE
        else:
            B, L = HUGE, 0
    shapes = {"u": (B, C, L), "delta": (B, C, L), "A": (C, N), "Bs": (B, G, N, L), "Cs": (B, G, N, L),
              "Ds": (C,), "delta_bias": (C,)}

    def fill(shape, kind):
        if _size_ok(shape) == 0:
            return np.zeros(shape, np.float32)
        if kind == "A":
            return (-rng.random(shape) * 2.0 - 0.05).astype(np.float32)
        if kind == "delta":
            x = rng.standard_normal(shape) * 1.5
            return (np.abs(x) * 0.3 if not softplus else x).astype(np.float32)
        if kind == "delta_bias":
            x = rng.standard_normal(shape) * 0.5
            return (np.abs(x) * 0.1 if not softplus else x).astype(np.float32)
        return rng.standard_normal(shape).astype(np.float32)

    feeds = {name: fill(shapes[name], name) for name in SCAN_INPUTS}
    inputs = list(SCAN_INPUTS)
    opt = rng.choice(["all", "all", "none", "no_Ds", "Ds_only", "empty_names"]) if "optional" in muts or \
        rng.random() < 0.3 else "all"
    if opt == "none":
        inputs = SCAN_INPUTS[:5]
    elif opt == "no_Ds":
        inputs = SCAN_INPUTS[:5] + ["", "delta_bias"]
    elif opt == "Ds_only":
        inputs = SCAN_INPUTS[:6]
    elif opt == "empty_names":
        inputs = SCAN_INPUTS[:5] + ["", ""]
    attrs: Dict[str, object] = {} if softplus == 1 and rng.random() < 0.3 else {"delta_softplus": softplus}
    dtype = F16 if "float16" in muts else F32
    types = {name: dtype for name in SCAN_INPUTS}

    if "huge_invalid" in muts:
        valid = False
        kind = rng.choice(["L", "N0", "B"])
        if kind == "L":  # delta differs from u in its huge (or zero) dimension
            d = list(feeds["delta"].shape)
            d[2] = HUGE - 1 if d[2] == HUGE else 1
            if d[0] == HUGE:
                d[0], d[2] = HUGE, 0
                d[1] = d[1] + 1
            feeds["delta"] = _zeros(tuple(d))
            keywords += ["delta"]
        elif kind == "N0":  # N = 0: A (C_huge... ) is impossible, so (C, 0) with zero-size Bs/Cs
            feeds["A"] = _zeros((C, 0))
            feeds["Bs"] = _zeros((B, G, 0, L))
            feeds["Cs"] = _zeros((B, G, 0, L))
            keywords += ["dstate", "N"]
        else:  # Bs batch huge while u's is not
            b2 = HUGE if B != HUGE else 0
            l2 = 0 if b2 == HUGE else L
            feeds["Bs"] = _zeros((b2, G, N, l2))
            feeds["Cs"] = _zeros((b2, G, N, l2))
            keywords += ["Bs"]
    if "rank" in muts:
        valid = False
        name = str(rng.choice([n for n in inputs if n]))
        feeds[name] = _reshape_rank(rng, feeds[name])
        keywords += [name, "shape"]
    if "mismatch_B" in muts:
        valid = False
        s = feeds["Bs"].shape
        nb = s[0] + 1 if s[0] != HUGE else 0
        new = (nb,) + s[1:] if nb != 0 or s[3] != HUGE else (nb,) + s[1:]
        if new[0] == HUGE + 1:
            new = (0,) + s[1:]
        target = rng.choice(["Bs", "Cs", "both"])
        if target in ("Bs", "both"):
            feeds["Bs"] = fill(new, "Bs")
        if target in ("Cs", "both"):
            feeds["Cs"] = fill(new, "Cs")
        keywords += ["Bs", "Cs"]
    if "mismatch_L" in muts:
        valid = False
        name = str(rng.choice(["delta", "Bs", "Cs"]))
        s = list(feeds[name].shape)
        s[-1] = s[-1] + 1 if s[-1] < HUGE else 3
        if s[0] == HUGE:
            s[0] = 0
            s[-1] = 5
            if name == "delta":
                s[0] = HUGE
                s[-1] = 0
                s[1] += 1
        feeds[name] = fill(tuple(s), name)
        keywords += [name, "Bs", "Cs"]
    if "mismatch_G" in muts:
        valid = False
        s = list(feeds["Bs"].shape)
        if rng.random() < 0.5:
            s[1] = C + 1 if C > 0 else 0  # does not divide C (or 0 groups)
            for nm in ("Bs", "Cs"):
                feeds[nm] = fill(tuple(s), nm)
            keywords += ["group", "Bs"]
        else:
            s[1] = s[1] + 1
            feeds["Cs"] = fill(tuple(s), "Cs")
            keywords += ["Cs", "group"]
    if "mismatch_N" in muts:
        valid = False
        if rng.random() < 0.5:
            feeds["A"] = fill((feeds["A"].shape[0], feeds["A"].shape[1] % 16 + 1 if feeds["A"].ndim == 2 else 2), "A")
            keywords += ["A"]
        else:
            s = list(feeds["Cs"].shape)
            if len(s) == 4:
                s[2] = s[2] % 16 + 1
            else:
                s.append(2)
            feeds["Cs"] = fill(tuple(s), "Cs")
            keywords += ["Cs"]
    if "N_range" in muts:
        valid = False
        n2 = int(rng.choice([0, 17, 24, 64]))
        feeds["A"] = fill((C, n2), "A")
        feeds["Bs"] = fill((B, G, n2, L), "Bs")
        feeds["Cs"] = fill((B, G, n2, L), "Cs")
        keywords += ["dstate", "N"]
    if "vec_len" in muts:
        valid = False
        name = str(rng.choice(["Ds", "delta_bias"]))
        if name not in inputs:
            inputs = list(SCAN_INPUTS)
        feeds[name] = fill((C + 1,), name) if rng.random() < 0.6 else fill((C, 1), name)
        keywords += [name]
    if "nonfinite" in muts:
        for name in rng.choice(SCAN_INPUTS, size=int(rng.integers(1, 3)), replace=False):
            _nonfinite(rng, feeds[str(name)])
    if "dtype_first" in muts:
        valid = False
        t = int(rng.choice(BAD_TYPES))
        types = {name: t for name in SCAN_INPUTS}
        keywords += ["type", "Type", "element"]
    if "dtype_mix" in muts:
        valid = False
        present = [n for n in inputs[1:] if n]
        name = str(rng.choice(present))
        types[name] = int(rng.choice([F16 if dtype == F32 else F32, F64, TensorProto.INT32]))
        keywords += [name, "type"]
    if "attr" in muts:
        valid = False
        bad = rng.choice(["neg", "two", "huge", "float", "string"])
        attrs["delta_softplus"] = {"neg": -1, "two": 2, "huge": -(1 << 40), "float": 1.0, "string": "yes"}[bad]
        keywords += ["delta_softplus"]
    if "missing" in muts:
        valid = False
        if rng.random() < 0.5:
            k = int(rng.integers(0, 5))
            inputs = list(inputs)
            keywords += [SCAN_INPUTS[k], "input", "missing"]
            inputs[k] = ""
        else:
            inputs = SCAN_INPUTS[: int(rng.integers(1, 5))]
            keywords += ["input"]
    shape_muts = {"rank", "mismatch_B", "mismatch_L", "mismatch_G", "mismatch_N", "N_range", "vec_len",
                  "huge_invalid"}
    if not valid and set(muts) <= shape_muts and _scan_shapes_ok(feeds, inputs):
        raise _TooBig("the shape mutations cancelled out")  # draw again
    if valid and not _scan_shapes_ok(feeds, inputs):
        raise _TooBig("a valid case with invalid shapes")
    _cast_typed(feeds, types)
    if not valid:
        keywords.append("SelectiveScan")  # never alone: see judge()
    declared = _declare(rng, feeds, inputs)
    return Case(f"s{seed}-{index}", "SelectiveScan", inputs, [types[n] if n else F32 for n in inputs],
                {n: feeds[n] for n in inputs if n}, attrs, declared, valid, tuple(keywords), tuple(muts))


def _scan_shapes_ok(feeds, inputs) -> bool:
    """The shape rules of docs/ops.md (ops.check_selective_scan_args) for the present inputs."""
    sh = {n: tuple(feeds[n].shape) for n in inputs if n}
    u, A, Bs = sh.get("u"), sh.get("A"), sh.get("Bs")
    if any(sh.get(n) is None for n in SCAN_INPUTS[:5]):
        return False
    if len(u) != 3 or sh["delta"] != u or len(Bs) != 4 or sh["Cs"] != Bs or len(A) != 2:
        return False
    B, C, L = u
    G, N = Bs[1], Bs[2]
    if Bs[0] != B or Bs[3] != L or G < 1 or C % G or A != (C, N) or not 1 <= N <= 16:
        return False
    return all(sh[n] == (C,) for n in ("Ds", "delta_bias") if n in sh)


def _cast_typed(feeds, types):
    for name, arr in list(feeds.items()):
        np_t = NP_OF[types[name]]
        if arr.dtype != np_t:
            with np.errstate(invalid="ignore", over="ignore"):
                feeds[name] = (arr > 0) if np_t is np.bool_ else np.nan_to_num(arr).astype(np_t) \
                            if np.issubdtype(np_t, np.integer) else arr.astype(np_t)
    # (NaN/Inf become 0 / the integer limits in integer feeds: those cases are refused for their type anyway)


def deform_output_size(h, w, a):
    out_h = (h + 2 * a["pad_h"] - (a["dilation_h"] * (a["kernel_h"] - 1) + 1)) // a["stride_h"] + 1
    out_w = (w + 2 * a["pad_w"] - (a["dilation_w"] * (a["kernel_w"] - 1) + 1)) // a["stride_w"] + 1
    return out_h, out_w


def _deform_case(seed: int, index: int, attempt: int) -> Case:
    rng = np.random.default_rng([seed, index, 2, attempt])
    a: Dict[str, object] = {}
    a["kernel_h"], a["kernel_w"] = int(rng.integers(1, 5)), int(rng.integers(1, 5))
    a["stride_h"], a["stride_w"] = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    a["dilation_h"], a["dilation_w"] = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    a["pad_h"], a["pad_w"] = int(rng.integers(0, 3)), int(rng.integers(0, 3))
    a["group"], a["group_channels"] = int(rng.integers(1, 4)), int(rng.integers(1, 9))
    a["offset_scale"] = float(rng.choice([0.5, 1.0, 1.0, 2.0, 0.25]))
    a["remove_center"] = int(rng.integers(0, 2)) if a["kernel_h"] * a["kernel_w"] > 1 else 0
    B = int(rng.integers(1, 3))
    span_h = a["dilation_h"] * (a["kernel_h"] - 1) + 1
    span_w = a["dilation_w"] * (a["kernel_w"] - 1) + 1
    H = max(1, span_h - 2 * a["pad_h"]) + int(rng.integers(0, 8))
    W = max(1, span_w - 2 * a["pad_w"]) + int(rng.integers(0, 8))
    pool = list(MUTATIONS["DeformAggregate"])
    pool.remove("declared")
    n_mut = int(rng.choice([0, 1, 1, 1, 2, 2, 3]))
    muts = [str(m) for m in rng.choice(pool, size=n_mut, replace=False)] if n_mut else []
    valid = True
    keywords: List[str] = []
    huge_image = False

    if "zero_dim" in muts:
        if rng.random() < 0.5:
            B = 0
        else:  # Hout = 0: H + 2*pad_h - span_h in [-stride_h, -1]
            a["kernel_h"] = max(int(a["kernel_h"]), 2)
            a["remove_center"] = 0 if a["kernel_h"] * a["kernel_w"] <= 1 else a["remove_center"]
            span_h = a["dilation_h"] * (a["kernel_h"] - 1) + 1
            a["pad_h"] = 0
            H = max(1, span_h - int(a["stride_h"]))
            if deform_output_size(H, W, a)[0] != 0:
                H = span_h - 1
                a["stride_h"] = 1
    if "huge_zero" in muts:
        B = 0
        huge_image = True
        if rng.random() < 0.5:
            H = HUGE
        else:
            W = HUGE
    if "empty_image" in muts:
        valid = False
        keywords += ["empty", "image"]
        a["pad_h"], a["pad_w"] = 11, 11
        a["kernel_h"] = a["kernel_w"] = 1
        a["remove_center"] = 0
        a["stride_h"] = a["stride_w"] = 1
        if B == 0:
            B = 1
        H, W = (0, 0) if rng.random() < 0.5 else (0, 3)
        if rng.random() < 0.5:
            a["group"], a["group_channels"] = 1, INT32_MAX
    K = int(a["kernel_h"]) * int(a["kernel_w"]) - int(a["remove_center"])
    out_h, out_w = deform_output_size(H, W, a)
    G, Cg = int(a["group"]), int(a["group_channels"])
    extra = int(rng.integers(0, 6)) if "extra_cols" in muts else int(rng.choice([0, 0, 1, 5]))
    P = G * K * 3 + extra
    GC = G * Cg

    def arr(shape, scale=1.0):
        if _size_ok(shape) == 0:
            return np.zeros(shape, np.float32)
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    value = arr((B, H, W, GC))
    om = arr((B, out_h, out_w, P)) if out_h >= 0 and out_w >= 0 else np.zeros((B, 1, 1, P), np.float32)
    if om.size:
        per = om[..., : G * K * 3].reshape(B, om.shape[1], om.shape[2], G, 3 * K)
        per[..., : 2 * K] *= float(rng.choice([0.5, 1.5, 3.0]))
        if "far_offsets" in muts:
            picks = rng.random(per[..., : 2 * K].shape) < 0.4
            borders = rng.choice([-1.0, -1.0001, -0.9999, float(W), float(H), 1e6, -1e6, 1e30, float(W) - 1e-4],
                                 size=per[..., : 2 * K].shape)
            per[..., : 2 * K] = np.where(picks, borders, per[..., : 2 * K])
        om[..., : G * K * 3] = per.reshape(B, om.shape[1], om.shape[2], G * K * 3)
    feeds = {"value": value, "offset_mask": om}
    inputs = ["value", "offset_mask"]
    types = {"value": F16 if "float16" in muts else F32}
    types["offset_mask"] = types["value"]

    if "nonfinite" in muts:
        for name in rng.choice(inputs, size=int(rng.integers(1, 3)), replace=False):
            _nonfinite(rng, feeds[str(name)])
    if "rank" in muts:
        valid = False
        name = str(rng.choice(inputs))
        feeds[name] = _reshape_rank(rng, feeds[name])
        keywords += [name, "shape"]
    if "channels" in muts:
        valid = False
        v = feeds["value"]
        if v.ndim == 4 and not huge_image:
            feeds["value"] = arr(v.shape[:3] + (v.shape[3] + int(rng.choice([-1, 1, G])) if v.shape[3] > 1 else 2,))
        else:
            a["group_channels"] = int(a["group_channels"]) + 1
        keywords += ["channels", "value"]
    if "lead" in muts:
        valid = False
        s = list(feeds["offset_mask"].shape)
        i = int(rng.integers(0, min(3, len(s))))
        s[i] = s[i] + 1 if s[i] < HUGE else 0
        feeds["offset_mask"] = arr(tuple(s))
        keywords += ["offset_mask"]
    if "P_small" in muts:
        valid = False
        s = list(feeds["offset_mask"].shape)
        s[-1] = G * K * 3 - 1 if rng.random() < 0.7 else 0
        feeds["offset_mask"] = arr(tuple(s))
        keywords += ["offset_mask", "columns"]
    if "attr_range" in muts:
        valid = False
        name, bad = _bad_deform_attr(rng, a)
        a.update(bad)
        keywords += [name, "kernel", "attribute", "points", "overflow"]
    if "attr_missing" in muts:
        valid = False
        name = str(rng.choice(DEFORM_ATTRS))
        del a[name]
        keywords += [name]
    if "attr_type" in muts:
        valid = False
        name = str(rng.choice(DEFORM_ATTRS))
        a[name] = "three" if rng.random() < 0.4 or name == "offset_scale" else float(a[name]) + 0.5
        keywords += [name]
    if "scale_nonfinite" in muts:
        valid = False
        a["offset_scale"] = float(rng.choice([np.nan, np.inf, -np.inf]))
        keywords += ["offset_scale"]
    if "dtype_first" in muts:
        valid = False
        t = int(rng.choice(BAD_TYPES))
        types = {"value": t, "offset_mask": t}
        keywords += ["type", "Type", "element"]
    if "dtype_mix" in muts:
        valid = False
        types["offset_mask"] = int(rng.choice([F16 if types["value"] == F32 else F32, F64, TensorProto.INT64]))
        keywords += ["offset_mask", "type"]
    if "missing" in muts:
        valid = False
        inputs = ["value"] if rng.random() < 0.5 else ["value", ""]
        keywords += ["input", "offset_mask"]
    _cast_typed(feeds, types)
    if not valid:
        keywords.append("DeformAggregate")
    declared = _declare(rng, feeds, inputs)
    return Case(f"d{seed}-{index}", "DeformAggregate", inputs, [types[n] if n else F32 for n in inputs],
                {n: feeds[n] for n in inputs if n}, a, declared, valid, tuple(keywords), tuple(muts))


def _bad_deform_attr(rng, a):
    kind = rng.choice(["nonpos", "negpad", "rc", "big", "rc1x1", "points"])
    if kind == "nonpos":
        name = str(rng.choice(["kernel_h", "kernel_w", "stride_h", "stride_w", "dilation_h", "dilation_w", "group",
                               "group_channels"]))
        return name, {name: int(rng.choice([0, -1, -(1 << 40)]))}
    if kind == "negpad":
        name = str(rng.choice(["pad_h", "pad_w"]))
        return name, {name: int(rng.choice([-1, -3]))}
    if kind == "rc":
        return "remove_center", {"remove_center": int(rng.choice([-1, 2]))}
    if kind == "big":
        name = str(rng.choice(DEFORM_ATTRS[:10]))
        return name, {name: int(rng.choice([1 << 31, 1 << 40, (1 << 63) - 1]))}
    if kind == "rc1x1":
        return "remove_center", {"kernel_h": 1, "kernel_w": 1, "remove_center": 1}
    return "kernel_h", {"kernel_h": 1 << 11, "kernel_w": (1 << 9) + 1}  # 2^20 + 2^11 points


def make_cases(seed: int, count: int, ops: Sequence[str] = ("SelectiveScan", "DeformAggregate")) -> List[Case]:
    """`count` cases, alternating between the ops; a pure function of (seed, count, ops)."""
    makers = {"SelectiveScan": scan_case, "DeformAggregate": deform_case}
    return [makers[ops[i % len(ops)]](seed, i) for i in range(count)]


# Regression cases: nodes that failed before a fix (docs/reliability.md), run on every runtime in every run.
def regression_cases() -> List[Case]:
    cases = []
    base = dict(kernel_h=1, kernel_w=1, stride_h=1, stride_w=1, pad_h=11, pad_w=11, dilation_h=1, dilation_w=1,
                group=1, group_channels=INT32_MAX, offset_scale=1.0, remove_center=0)
    # An empty image with a non-empty output of 1*22*22*(2^31-1) float32 (4.2 TB): refused before allocating.
    # "symbolic": H unknown when the model is read while offset_mask's dims are known; OpenVINO made the output
    # static from them and its CPU plugin allocated it before any check.
    for declared in (None, "static", "symbolic"):
        feeds = {"value": np.zeros((1, 0, 0, INT32_MAX), np.float32),
                 "offset_mask": np.zeros((1, 22, 22, 3), np.float32)}
        decl = {k: list(v.shape) if declared else None for k, v in feeds.items()}
        if declared == "symbolic":
            decl = {"value": [1, "h", 0, "c"], "offset_mask": ["b", 22, 22, "p"]}
        cases.append(Case(f"reg-empty-image-{declared}", "DeformAggregate", ["value", "offset_mask"], [F32, F32],
                          feeds, dict(base), decl, False, ("empty", "DeformAggregate"), ("empty_image",)))
    # offset_scale non-finite: the ONNX Runtime library accepted it (OpenVINO refused it).
    rng = np.random.default_rng(0)
    for scale in (float("nan"), float("inf")):
        attrs = dict(base, kernel_h=3, kernel_w=3, pad_h=1, pad_w=1, group_channels=2, offset_scale=scale)
        feeds = {"value": rng.standard_normal((1, 4, 4, 2)).astype(np.float32),
                 "offset_mask": rng.standard_normal((1, 4, 4, 27)).astype(np.float32)}
        cases.append(Case(f"reg-scale-{scale}", "DeformAggregate", ["value", "offset_mask"], [F32, F32], feeds,
                          attrs, {k: None for k in feeds}, False, ("offset_scale", "DeformAggregate"),
                          ("scale_nonfinite",)))
    return cases


# ------------------------------------------------------------------------------------------------
# Reference and verdict


def reference(case: Case) -> np.ndarray:
    import torch

    from ssmpose.custom_ops import reference as ref

    def t(x):
        return None if x is None else torch.from_numpy(np.asarray(x, dtype=np.float64))

    if case.op == "SelectiveScan":
        if case.feeds["u"].size == 0:  # empty output (the reference cannot allocate huge empty states)
            return np.zeros(case.feeds["u"].shape)
        args = [t(case.feeds[n]) if n else None for n in case.inputs + [""] * (7 - len(case.inputs))]
        return ref.selective_scan_reference(*args, delta_softplus=bool(case.attrs.get("delta_softplus", 1))).numpy()
    value, om = case.feeds["value"], case.feeds["offset_mask"]
    out_h, out_w = deform_output_size(value.shape[1], value.shape[2], case.attrs)
    if value.size == 0 or om.size == 0:  # empty output (the reference cannot reshape huge empty tensors)
        return np.zeros((value.shape[0], out_h, out_w, value.shape[3]))
    if _has_nonfinite(case):
        return deform_spec(value, om, case.attrs)
    return ref.deform_aggregate_reference(t(value), t(om), *[case.attrs[k] for k in DEFORM_ATTRS]).numpy()


def deform_spec(value: np.ndarray, om: np.ndarray, a: Dict[str, object]) -> np.ndarray:
    """DeformAggregate in float64 exactly as docs/ops.md words it, for inputs with NaN/Inf: a sampling location
    outside (-1, W) x (-1, H), or NaN, contributes nothing, and a corner outside the image contributes nothing
    (its value is never read). custom_ops/reference.py instead multiplies such terms by 0 (0 * NaN = NaN, and a
    clamped corner's NaN/Inf leaks in) and cannot index a NaN location at all; see docs/reliability.md."""
    value, om = value.astype(np.float64), om.astype(np.float64)
    B, H, W, _ = value.shape
    _, Ho, Wo, _ = om.shape
    G, C, scale = int(a["group"]), int(a["group_channels"]), float(a["offset_scale"])
    kh, kw, rc = int(a["kernel_h"]), int(a["kernel_w"]), int(a["remove_center"])
    points = [(i, j) for i in range(kw) for j in range(kh) if not (rc and i == kw // 2 and j == kh // 2)]
    K = len(points)
    o = om[..., : G * K * 3].reshape(B, Ho, Wo, G, 3 * K)
    dx, dy, m = o[..., 0:2 * K:2], o[..., 1:2 * K:2], o[..., 2 * K:]
    half_w = (int(a["dilation_w"]) * (kw - 1)) >> 1
    half_h = (int(a["dilation_h"]) * (kh - 1)) >> 1
    base_x = np.arange(Wo) * int(a["stride_w"]) - int(a["pad_w"]) + half_w
    base_y = np.arange(Ho) * int(a["stride_h"]) - int(a["pad_h"]) + half_h
    tap_x = np.array([i * int(a["dilation_w"]) for i, _ in points], np.float64)
    tap_y = np.array([j * int(a["dilation_h"]) for _, j in points], np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        px = base_x[None, None, :, None, None] - half_w * scale + (tap_x + dx) * scale  # (B, Ho, Wo, G, K)
        py = base_y[None, :, None, None, None] - half_h * scale + (tap_y + dy) * scale
        inside = (px > -1) & (py > -1) & (px < W) & (py < H)
        x0 = np.where(inside, np.floor(np.where(inside, px, 0)), 0)
        y0 = np.where(inside, np.floor(np.where(inside, py, 0)), 0)
        fx, fy = np.where(inside, px - x0, 0), np.where(inside, py - y0, 0)
        val = value.reshape(B, H * W, G, C)
        b_idx = np.arange(B)[:, None, None, None, None]
        g_idx = np.arange(G)[None, None, None, :, None]
        result = np.zeros((B, Ho, Wo, G, C))
        for cy, cx, w in ((y0, x0, (1 - fy) * (1 - fx)), (y0, x0 + 1, (1 - fy) * fx), (y0 + 1, x0, fy * (1 - fx)),
                          (y0 + 1, x0 + 1, fy * fx)):
            ok = inside & (cx >= 0) & (cx < W) & (cy >= 0) & (cy < H)
            flat = (np.clip(cy, 0, H - 1) * W + np.clip(cx, 0, W - 1)).astype(np.int64)
            picked = val[b_idx, flat, g_idx]  # (B, Ho, Wo, G, K, C)
            terms = np.where(ok[..., None], (w * m)[..., None] * picked, 0.0)
            result += terms.sum(axis=4)
    return result.reshape(B, Ho, Wo, G * C)


def _has_nonfinite(case: Case) -> bool:
    return any(np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all() for v in case.feeds.values())


def compare(case: Case, out: np.ndarray) -> Optional[str]:
    """None if `out` is the reference's result (NaN and +-Inf where the reference has them)."""
    expected = reference(case)
    if tuple(out.shape) != tuple(expected.shape):
        return f"output shape {tuple(out.shape)} != reference {tuple(expected.shape)}"
    want_type = NP_OF[case.types[0]]
    if out.dtype != want_type:
        return f"output dtype {out.dtype} != {np.dtype(want_type)}"
    if out.size == 0:
        return None
    got = out.astype(np.float64)
    for what, mask_fn in (("NaN", np.isnan), ("+Inf", lambda x: np.isposinf(x)), ("-Inf", np.isneginf)):
        e, g = mask_fn(expected), mask_fn(got)
        if (e != g).any():
            where = tuple(int(i) for i in np.argwhere(e != g)[0])
            return (f"{what} pattern differs from the reference at {int((e != g).sum())} of {e.size} elements, "
                    f"first {where}: got {got[where]!r}, reference {expected[where]!r}")
    finite = np.isfinite(expected)
    if not finite.any():
        return None
    scale = np.abs(expected[finite]).max()
    err = np.abs(got[finite] - expected[finite]).max()
    rel, atol = (2e-3, 1e-3) if case.types[0] == F16 else (1e-5, 1e-6)
    if out.dtype == np.float16 and scale > 6e4:
        return None  # float16 overflow territory: only the non-finite pattern is checked
    if err > rel * scale + atol:
        return f"max abs error {err:.3e} > {rel:g} * {scale:.3e} + {atol:g}"
    return None


def judge(case: Case, outcome: str, payload) -> Optional[str]:
    """None when the case ended as it must (module docstring); else the failure in words."""
    if outcome == "error":
        message = str(payload)
        if case.op not in message:
            return f"error does not name {case.op}: {message[:600]}"
        if not case.valid:
            hits = [k for k in case.keywords if k != case.op and k in message]
            if not hits:
                return f"error names none of {list(case.keywords[:-1])}: {message[:600]}"
            return None
        return f"valid case refused: {message[:600]}"
    if not case.valid:
        return f"invalid case accepted (output shape {tuple(payload.shape)})"
    return compare(case, payload)


# ------------------------------------------------------------------------------------------------
# Runners (in this process)


class OrtRunner:
    name = "ort"

    def __init__(self):
        import onnxruntime as ort

        from ssmpose.custom_ops import ort_library

        self.ort, self.lib = ort, ort_library
        if ort_library.ort_library_path() is None:
            raise RuntimeError(f"libssmpose_ort.so unavailable: {ort_library.unavailable_reason()}")

    def __call__(self, case: Case):
        so = self.ort.SessionOptions()
        self.lib.register(so)
        so.log_severity_level = 4
        so.intra_op_num_threads = 1
        try:
            sess = self.ort.InferenceSession(case.model().SerializeToString(), so,
                                             providers=["CPUExecutionProvider"])
            return "ok", sess.run(None, case.feeds)[0]
        except Exception as exc:  # noqa: BLE001 - the verdict reads the message
            return "error", f"{type(exc).__name__}: {exc}"


class OvRunner:
    name = "ov"

    def __init__(self):
        import openvino as ov

        from ssmpose.custom_ops import openvino_library

        self.ov = ov
        self.core = ov.Core()
        openvino_library.add_to_core(self.core)

    def __call__(self, case: Case):
        try:
            model = self.core.read_model(case.model().SerializeToString(), b"")
            if any(p.get_partial_shape().rank.is_dynamic for p in model.inputs):
                # The CPU plugin compiles no input of unknown rank: give the feeds' shapes (the op's shape checks
                # run here, in validate_and_infer_types).
                model.reshape({p.get_any_name(): self.ov.PartialShape(list(case.feeds[p.get_any_name()].shape))
                               for p in model.inputs})
            compiled = self.core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
            result = compiled({name: arr for name, arr in case.feeds.items()})
            return "ok", np.asarray(result[compiled.output(0)])
        except Exception as exc:  # noqa: BLE001
            return "error", f"{type(exc).__name__}: {exc}"


def run_cases(runner, cases: Sequence[Case], out=sys.stdout, case_timeout: float = 60.0) -> Dict[str, int]:
    """Runs and judges `cases`, printing a JSON line before ("start") and after ("result") each one."""
    counts = {"cases": 0, "errors": 0, "results": 0, "failures": 0}
    for case in cases:
        print(json.dumps({"start": case.id, "describe": case.describe()}), file=out, flush=True)
        faulthandler.dump_traceback_later(case_timeout, exit=True)  # a hang ends the process, naming the case
        t0 = time.perf_counter()
        outcome, payload = runner(case)
        faulthandler.cancel_dump_traceback_later()
        try:
            problem = judge(case, outcome, payload)
        except Exception as exc:  # noqa: BLE001 - a harness error is reported like a failure, with the case
            problem = f"judging failed: {type(exc).__name__}: {exc}"
        counts["cases"] += 1
        counts["errors" if outcome == "error" else "results"] += 1
        counts["failures"] += problem is not None
        record = {"result": case.id, "outcome": outcome, "ok": problem is None,
                  "seconds": round(time.perf_counter() - t0, 3)}
        if problem is not None:
            record["problem"] = problem
            record["describe"] = case.describe()
        elif outcome == "error":
            record["message"] = str(payload)[:300]
        print(json.dumps(record), file=out, flush=True)
    print(json.dumps({"summary": counts}), file=out, flush=True)
    return counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runtime", choices=["ort", "ov"], required=True)
    p.add_argument("--seed", type=int, default=17)
    p.add_argument("--count", type=int, default=300)
    p.add_argument("--start", type=int, default=0, help="first case index (to replay one case)")
    p.add_argument("--no-regressions", action="store_true")
    args = p.parse_args(argv)
    runner = OrtRunner() if args.runtime == "ort" else OvRunner()
    cases = make_cases(args.seed, args.start + args.count)[args.start:]
    if not args.no_regressions:
        cases = regression_cases() + cases
    counts = run_cases(runner, cases)
    return 1 if counts["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
