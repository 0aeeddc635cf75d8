"""Fuzzed single-node `ssmpose` graphs for the runtime libraries (ONNX Runtime library, OpenVINO extension).

Each case is one SelectiveScan, DeformAggregate, SelectiveScan2D, LayerNorm, AddLayerNorm,
MultiKernelDepthwiseConv or VSSBlockTail node built from a small valid configuration plus zero to three mutations drawn from the
list in MUTATIONS (wrong ranks, zero-size and huge dimensions, mismatched B/G/N/L/H/W/C, bad attributes, P too
small, NaN/Inf values, unsupported or mixed dtypes, missing inputs; DeformAggregate's offset_bias and activation;
SelectiveScan2D's dt_projection). The graph imports the `ssmpose` domain at the op's version (OP_VERSIONS; 5 for a
DeformAggregate with its epilogues, 6 for a SelectiveScan2D with a dt_projection). A case is a pure function of (seed, index), so every runtime sees the same cases. A
case knows whether it is valid under docs/ops.md; the verdict (`judge`) is:

- invalid case: the runtime must raise, and the message must name the op and contain one of the case's
  keywords (the input or attribute at fault, or the word for the problem);
- valid case: the runtime must return the float64 reference's result (custom_ops/reference.py) within the
  float32 (float16) tolerance, with NaN and +-Inf where the reference has them; every output (AddLayerNorm: Y
  and S) is compared; LayerNorm / AddLayerNorm allow the float32 rounding of each row's mean besides
  (`_norm_slack`, as docs/ops.md words it);
- anything else (a wrong result, an error not naming the op, a valid case refused) is a failure; a crash,
  a sanitizer report or a hang is seen by the parent process (tests/test_fuzz_runtime_libraries.py).

Huge dimensions are only ever given to zero-size tensors, or to outputs the adapters must refuse before
allocating, so no case needs much memory.

Invalid cases of LayerNorm, AddLayerNorm and MultiKernelDepthwiseConv whose fault is a shape declare their input
shapes statically: OpenVINO converts these ops to its own, and its conversions compare shapes only where they are
known when the model is read (docs/ops.md); the ONNX Runtime library checks them at run time either way.

Run as a script it executes cases in this process and prints one JSON line per case (a "start" line before
it runs, flushed, so the parent can name the case that crashed or hung):
    python tests/fuzz_cases.py --runtime ort --seed 17 --count 300
    python tests/fuzz_cases.py --runtime ov --ops old --count 300 --extra new:60   # as CI does
    python tests/fuzz_cases.py --runtime ov --ops LayerNorm --start 21 --count 1 --no-regressions   # one case
--ops takes op names, or old (SelectiveScan, DeformAggregate), new (the other five) or all (the default); the
ops take turns, case i going to ops[i % len(ops)].
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
OP_VERSIONS = {"SelectiveScan": 1, "DeformAggregate": 1, "SelectiveScan2D": 2, "LayerNorm": 3, "AddLayerNorm": 4,
               "MultiKernelDepthwiseConv": 4, "VSSBlockTail": 7}
ALL_OPS = tuple(OP_VERSIONS)
DEFORM_EPILOGUE_VERSION = 5   # DeformAggregate's offset_bias input and activation attribute
DT_PROJECTION_VERSION = 6     # SelectiveScan2D's dt_projection input
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
        "offset_bias": "valid: an offset_bias input of P values (domain version 5)",
        "silu": "valid: activation \"silu\" (domain version 5)",
        "bias_shape": "offset_bias of the wrong length or rank (domain version 5)",
        "activation_bad": "activation neither \"none\" nor \"silu\": another name or an int (domain version 5)",
    },
    "SelectiveScan2D": {
        "float16": "valid: all inputs float16",
        "optional": "valid: Ds / delta_bias omitted (5 or 6 inputs, or the empty name)",
        "zero_dim": "valid: B, H, W or D is 0 (empty output)",
        "huge_zero": "valid: H or W huge (2^40) with B = 0",
        "nonfinite": "valid: NaN / +Inf / -Inf at random places of random inputs",
        "declared": "valid: graph input shapes declared static, symbolic or not at all",
        "rank": "an input with one dimension too many or too few",
        "mismatch_BHW": "Bs/Cs (B, H, W) != x's, or Cs's shape != Bs's",
        "directions_dim": "Bs/Cs with K != 4 directions",
        "mismatch_D": "delta's last dimension or A's rows != 4*D",
        "mismatch_N": "A's N != Bs's N, or Cs's N != Bs's N",
        "N_range": "N = 0 or N > 16",
        "vec_len": "Ds / delta_bias of the wrong length or rank",
        "dtype_first": "all inputs of an unsupported type",
        "dtype_mix": "one input of another type than x",
        "attr": "delta_softplus not 0/1, a float or a string",
        "directions_attr": "attribute directions != 4 (0, 1, 3, 5, 8, -4, 2^40), a float or a string",
        "missing": "a required input omitted (empty name, or fewer than 5 inputs)",
        "dt_projection": "valid: the dt projection folded in (domain version 6): x_proj (B, H, W, 4, R + 2N) as input "
                         "1, dt_projection (4, D, R), Bs / Cs omitted",
        "proj_shape": "with dt_projection (domain version 6): x_proj's last dimension or (B, H, W) wrong, "
                      "dt_projection of the wrong shape or rank, R = 0, or Bs / Cs given as well",
    },
    "LayerNorm": {
        "float16": "valid: all inputs float16",
        "zero_rows": "valid: a leading dimension 0 (no rows)",
        "huge_zero": "valid: a leading dimension huge (2^40) next to a zero-size one",
        "nonfinite": "valid: NaN / +Inf / -Inf in X, weight or bias",
        "offset": "valid: rows with a large mean (|mean| >> std)",
        "plugin_attrs": "valid: the ignored TensorRT attributes plugin_version / plugin_namespace",
        "declared": "valid: graph input shapes declared static, symbolic or not at all",
        "rank": "X a scalar, or weight / bias of rank 2",
        "channels_zero": "C = 0 (X's last dimension; weight and bias of length 0)",
        "param_len": "weight or bias of length != C (C + 1, C - 1 or 1)",
        "epsilon": "epsilon 0, negative, NaN, +-Inf, an int or a string",
        "dtype_first": "all inputs of an unsupported type",
        "dtype_mix": "one input of another type than X",
        "missing": "a required input omitted (empty name, or fewer inputs)",
    },
    "MultiKernelDepthwiseConv": {
        "float16": "valid: all inputs float16",
        "zero_dim": "valid: B = 0",
        "huge_zero": "valid: B = 0 with H or W huge (2^40)",
        "nonfinite": "valid: NaN / +-Inf in X or bias, or in the weight taps outside every group's kernel",
        "kernel_set": "valid: odd kernel sets [1], [15], [3, 5, 7, 9], 16 groups, K > the largest kernel size",
        "shuffle_one": "valid: shuffle_groups 1 (given or by default)",
        "activation_none": "valid: activation \"none\" (given or by default)",
        "plugin_attrs": "valid: the ignored TensorRT attributes plugin_version / plugin_namespace",
        "declared": "valid: graph input shapes declared static, symbolic or not at all",
        "kernel_even": "a kernel size even",
        "kernel_range": "a kernel size <= 0, > 15, or > the weight's K",
        "group_sum": "group_channels not summing to C (X, weight and bias keep C)",
        "group_len": "kernel_sizes and group_channels of different lengths",
        "group_count": "17 groups (at most 16)",
        "group_nonpos": "a group_channels value <= 0",
        "shuffle": "shuffle_groups not dividing C, or <= 0",
        "activation": "an unknown activation (relu, GELU, empty)",
        "attr_missing": "kernel_sizes or group_channels missing",
        "attr_type": "kernel_sizes / group_channels a single int or floats, shuffle_groups a string, activation an int",
        "rank": "X, weight or bias with one dimension too many or too few",
        "weight_shape": "weight's first dimension != C, an even K, or a non-square kernel",
        "bias_len": "bias of length != C",
        "dtype_first": "all inputs of an unsupported type",
        "dtype_mix": "one input of another type than X",
        "missing": "a required input omitted (empty name, or fewer inputs)",
    },
    "VSSBlockTail": {
        "float16": "valid: all inputs float16",
        "zero_rows": "valid: a leading dimension 0 (no rows)",
        "nonfinite": "valid: NaN / +Inf / -Inf in Y or R",
        "hrvmamba": "valid: hrvmamba_small's widths (D, C, H) = (64, 32, 64) or (128, 64, 128)",
        "plugin_attrs": "valid: the ignored TensorRT attributes plugin_version / plugin_namespace",
        "declared": "valid: graph input shapes declared static, symbolic or not at all",
        "rank": "Y and R scalars, or a parameter with one dimension too many or too few",
        "param_len": "a parameter of the wrong length (one of D, C, H off by one)",
        "R_shape": "R's leading dimensions != Y's",
        "limits": "C = 513 or D / H = 1025 (beyond the kernels' limits)",
        "epsilon": "epsilon 0, negative, NaN, +-Inf, an int or a string",
        "dtype_first": "all inputs of an unsupported type",
        "dtype_mix": "one input of another type than Y",
        "missing": "a required input omitted (empty name, or fewer inputs)",
    },
}
# AddLayerNorm: LayerNorm's mutations plus R's.
MUTATIONS["AddLayerNorm"] = dict(MUTATIONS["LayerNorm"], R_shape="R's shape != X's (one dimension off, a "
                                 "broadcastable 1, or another rank)")
MUTATIONS["AddLayerNorm"]["nonfinite"] = "valid: NaN / +Inf / -Inf in X, R, weight or bias"
# Mutations that make a case invalid only through shapes: for the ops that OpenVINO converts to its own ops
# (LayerNorm, AddLayerNorm, MultiKernelDepthwiseConv) the conversion compares shapes only where they are known
# when the model is read (docs/ops.md), so such cases declare their input shapes statically.
STATIC_SHAPE_MUTATIONS = {"rank", "channels_zero", "param_len", "R_shape", "group_sum", "weight_shape", "bias_len",
                          "kernel_range", "group_count", "limits"}


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
    outputs: Tuple[str, ...] = ("y",)       # node outputs (AddLayerNorm: Y and S)

    @property
    def version(self) -> int:
        """The ssmpose domain version the graph imports: the op's (docs/ops.md), 5 for a DeformAggregate with an
        offset_bias or an activation, 6 for a SelectiveScan2D with a dt_projection."""
        if self.op == "DeformAggregate" and ("offset_bias" in self.inputs or "activation" in self.attrs):
            return DEFORM_EPILOGUE_VERSION
        if self.op == "SelectiveScan2D" and "dt_projection" in self.inputs:
            return DT_PROJECTION_VERSION
        return OP_VERSIONS[self.op]

    def model(self):
        node = helper.make_node(self.op, self.inputs, list(self.outputs), domain="ssmpose", **self.attrs)
        graph_inputs = [helper.make_tensor_value_info(n, t, self.declared.get(n)) for n, t in
                        zip(self.inputs, self.types) if n]
        out_type = self.types[0] if self.types else F32
        graph = helper.make_graph([node], f"{self.op}_fuzz", graph_inputs,
                                  [helper.make_tensor_value_info(o, out_type, None) for o in self.outputs])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                        helper.make_opsetid("ssmpose", self.version)])
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
        name = str(rng.choice([n for n in DEFORM_ATTRS if n in a]))   # not one "attr_missing" removed
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
    if ("offset_bias" in muts or "bias_shape" in muts) and inputs[-1] == "offset_mask":
        columns = feeds["offset_mask"].shape[-1] if feeds["offset_mask"].ndim else 1
        shape = (columns,)
        if "bias_shape" in muts:
            valid = False
            shape = (columns + int(rng.choice([-1, 1])),) if columns > 0 and rng.random() < 0.6 else (1, columns)
            keywords += ["offset_bias"]
        feeds["offset_bias"] = arr(shape, 0.5)
        types["offset_bias"] = types["value"]
        inputs = inputs + ["offset_bias"]
    if "silu" in muts:
        a["activation"] = "silu"
    if "activation_bad" in muts:
        valid = False
        a["activation"] = str(rng.choice(["gelu", "SiLU", "relu", ""])) if rng.random() < 0.7 else 2
        keywords += ["activation"]
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


# ------------------------------------------------------------------------------------------------
# The newer ops: SelectiveScan2D (domain version 2), LayerNorm (3), AddLayerNorm and MultiKernelDepthwiseConv (4)

SCAN2D_INPUTS = ["x", "delta", "A", "Bs", "Cs", "Ds", "delta_bias"]
NORM_INPUTS = {"LayerNorm": ["X", "weight", "bias"], "AddLayerNorm": ["X", "R", "weight", "bias"]}
DWCONV_INPUTS = ["X", "weight", "bias"]
PLUGIN_ATTRS = {"plugin_version": "1", "plugin_namespace": "ssmpose"}


def _draw_mutations(rng, op) -> List[str]:
    pool = [m for m in MUTATIONS[op] if m != "declared"]
    n_mut = int(rng.choice([0, 1, 1, 1, 2, 2, 3]))
    return [str(m) for m in rng.choice(pool, size=n_mut, replace=False)] if n_mut else []


def _randn(rng, shape, scale=1.0, offset=0.0):
    if _size_ok(shape) == 0:
        return np.zeros(shape, np.float32)
    return (rng.standard_normal(shape) * scale + offset).astype(np.float32)


def _bad_dtype(rng, keywords):
    keywords += ["type", "Type", "element"]
    return int(rng.choice(BAD_TYPES))


def _mix_dtype(rng, dtype, name, keywords):
    keywords += [name, "type"]
    return int(rng.choice([F16 if dtype == F32 else F32, F64, TensorProto.INT32]))


def _finish(op, prefix, seed, index, rng, inputs, types, feeds, attrs, valid, keywords, muts, outputs=("y",)):
    _cast_typed(feeds, types)
    if not valid:
        keywords.append(op)  # never alone: see judge()
    declared = _declare(rng, feeds, inputs)
    if not valid and op != "SelectiveScan2D" and set(muts) & STATIC_SHAPE_MUTATIONS:
        declared = {n: list(feeds[n].shape) for n in inputs if n}
    return Case(f"{prefix}{seed}-{index}", op, inputs, [types[n] if n else F32 for n in inputs],
                {n: feeds[n] for n in inputs if n}, attrs, declared, valid, tuple(keywords), tuple(muts),
                tuple(outputs))


def scan2d_case(seed: int, index: int) -> Case:
    return _retry(_scan2d_case, seed, index)


def _scan2d_case(seed: int, index: int, attempt: int) -> Case:
    rng = np.random.default_rng([seed, index, 3, attempt])
    B, H, W, D = int(rng.integers(1, 3)), int(rng.integers(1, 6)), int(rng.integers(1, 6)), int(rng.integers(1, 5))
    N = int(rng.choice([1, 2, 4, 16, int(rng.integers(1, 17))]))
    softplus = int(rng.integers(0, 2))
    muts = _draw_mutations(rng, "SelectiveScan2D")
    valid, keywords = True, []
    if "zero_dim" in muts:
        which = str(rng.choice(["B", "H", "W", "D"]))
        B, H, W, D = [0 if which == w else v for w, v in zip("BHWD", (B, H, W, D))]
    if "huge_zero" in muts:
        B = 0
        if rng.random() < 0.5:
            H = HUGE
        else:
            W = HUGE
    K = 4
    shapes = {"x": (B, H, W, D), "delta": (B, H, W, K * D), "A": (K * D, N), "Bs": (B, H, W, K, N),
              "Cs": (B, H, W, K, N), "Ds": (K * D,), "delta_bias": (K * D,)}

    def fill(shape, kind):
        if _size_ok(shape) == 0:
            return np.zeros(shape, np.float32)
        if kind == "A":
            return (-rng.random(shape) * 2.0 - 0.05).astype(np.float32)
        if kind in ("delta", "delta_bias"):
            x = rng.standard_normal(shape) * (1.5 if kind == "delta" else 0.5)
            return (np.abs(x) * 0.2 if not softplus else x).astype(np.float32)
        return rng.standard_normal(shape).astype(np.float32)

    feeds = {name: fill(shapes[name], name) for name in SCAN2D_INPUTS}
    inputs = list(SCAN2D_INPUTS)
    opt = str(rng.choice(["all", "all", "none", "no_Ds", "Ds_only", "empty_names"])) if "optional" in muts or \
        rng.random() < 0.3 else "all"
    inputs = {"all": SCAN2D_INPUTS, "none": SCAN2D_INPUTS[:5], "no_Ds": SCAN2D_INPUTS[:5] + ["", "delta_bias"],
              "Ds_only": SCAN2D_INPUTS[:6], "empty_names": SCAN2D_INPUTS[:5] + ["", ""]}[opt]
    inputs = list(inputs)
    attrs: Dict[str, object] = {} if softplus == 1 and rng.random() < 0.3 else {"delta_softplus": softplus}
    if rng.random() < 0.3:
        attrs["directions"] = 4
    dtype = F16 if "float16" in muts else F32
    types = {name: dtype for name in SCAN2D_INPUTS}

    if "rank" in muts:
        valid = False
        name = str(rng.choice([n for n in inputs if n]))
        feeds[name] = _reshape_rank(rng, feeds[name])
        keywords += [name, "shape"]
    if "mismatch_BHW" in muts:
        valid = False
        s = list(feeds["Bs"].shape)
        i = int(rng.integers(0, 3)) if len(s) == 5 else 0
        s[i] = s[i] + 1 if s[i] < HUGE else 0
        target = str(rng.choice(["Bs", "Cs", "both"]))
        for nm in ("Bs", "Cs"):
            if target in (nm, "both"):
                feeds[nm] = fill(tuple(s), nm)
        keywords += ["Bs", "Cs"]
    if "directions_dim" in muts:
        valid = False
        for nm in ("Bs", "Cs"):
            s = list(feeds[nm].shape)
            s[-2 if len(s) >= 2 else 0] = int(rng.choice([1, 2, 3, 5, 8]))
            feeds[nm] = fill(tuple(s), nm)
        keywords += ["directions", "K"]
    if "mismatch_D" in muts:
        valid = False
        name = str(rng.choice(["delta", "A"]))
        s = list(feeds[name].shape)
        j = -1 if name == "delta" else 0
        s[j] = s[j] + int(rng.choice([1, -1, D])) if s[j] > 0 else 4
        feeds[name] = fill(tuple(max(0, d) for d in s), name)
        keywords += [name]
    if "mismatch_N" in muts:
        valid = False
        if rng.random() < 0.5:
            a = feeds["A"]
            feeds["A"] = fill((a.shape[0], a.shape[-1] % 16 + 1), "A")
            keywords += ["A"]
        else:
            s = list(feeds["Cs"].shape)
            s[-1] = s[-1] % 16 + 1
            feeds["Cs"] = fill(tuple(s), "Cs")
            keywords += ["Cs"]
    if "N_range" in muts:
        valid = False
        n2 = int(rng.choice([0, 17, 24, 64]))
        feeds["A"] = fill((K * D, n2), "A")
        feeds["Bs"] = fill((B, H, W, K, n2), "Bs")
        feeds["Cs"] = fill((B, H, W, K, n2), "Cs")
        keywords += ["dstate", "N"]
    if "vec_len" in muts:
        valid = False
        name = str(rng.choice(["Ds", "delta_bias"]))
        if name not in inputs:
            inputs = list(SCAN2D_INPUTS)
        feeds[name] = fill((K * D + 1,), name) if rng.random() < 0.6 else fill((K * D, 1), name)
        keywords += [name]
    if "nonfinite" in muts:
        for name in rng.choice(SCAN2D_INPUTS, size=int(rng.integers(1, 3)), replace=False):
            _nonfinite(rng, feeds[str(name)])
    if "dtype_first" in muts:
        valid = False
        t = _bad_dtype(rng, keywords)
        types = {name: t for name in SCAN2D_INPUTS}
    if "dtype_mix" in muts:
        valid = False
        name = str(rng.choice([n for n in inputs[1:] if n]))
        types[name] = _mix_dtype(rng, dtype, name, keywords)
    if "attr" in muts:
        valid = False
        attrs["delta_softplus"] = [-1, 2, 1 << 40, 1.0, "yes"][int(rng.integers(0, 5))]
        keywords += ["delta_softplus"]
    if "directions_attr" in muts:
        valid = False
        attrs["directions"] = [0, 1, 3, 5, 8, -4, 1 << 40, 4.0, "four"][int(rng.integers(0, 9))]
        keywords += ["directions"]
    if "missing" in muts:
        valid = False
        if rng.random() < 0.5:
            k = int(rng.integers(0, 5))
            inputs = list(inputs)
            keywords += [SCAN2D_INPUTS[k], "input", "missing"]
            inputs[k] = ""
        else:
            inputs = SCAN2D_INPUTS[: int(rng.integers(1, 5))]
            keywords += ["input"]
    shape_muts = {"rank", "mismatch_BHW", "directions_dim", "mismatch_D", "mismatch_N", "N_range", "vec_len"}
    projected = {"dt_projection", "proj_shape"} & set(muts)
    if projected and set(muts) & (shape_muts | {"missing", "dtype_mix"}):
        muts = [m for m in muts if m not in projected]   # one change of the inputs' layout at a time
    elif projected:
        inputs = _project_scan2d(rng, feeds, inputs, types, "proj_shape" in muts, keywords)
        valid = valid and "proj_shape" not in muts
        return _finish("SelectiveScan2D", "t", seed, index, rng, inputs, types, feeds, attrs, valid, keywords, muts)
    if not valid and set(muts) <= shape_muts and _scan2d_shapes_ok(feeds, inputs):
        raise _TooBig("the shape mutations cancelled out")
    if valid and not _scan2d_shapes_ok(feeds, inputs):
        raise _TooBig("a valid case with invalid shapes")
    return _finish("SelectiveScan2D", "t", seed, index, rng, inputs, types, feeds, attrs, valid, keywords, muts)


def _project_scan2d(rng, feeds, inputs, types, bad: bool, keywords) -> List[str]:
    """Turns a SelectiveScan2D case into the domain-version-6 form: x_proj = (dt inputs, Bs, Cs) along the last
    axis, a (4, D, R) dt_projection; Ds / delta_bias as they were. `bad`: one shape error of that form."""
    B, H, W, D = feeds["x"].shape
    N = feeds["Bs"].shape[-1]
    R = int(rng.choice([1, 2, 4, int(rng.integers(1, 9))]))
    lead = (B, H, W, 4)
    dts = _randn(rng, lead + (R,), 0.7)
    feeds["x_proj"] = np.concatenate([dts, feeds["Bs"], feeds["Cs"]], axis=-1) if _size_ok(lead) else \
        np.zeros(lead + (R + 2 * N,), np.float32)
    feeds["dt_projection"] = _randn(rng, (4, D, R), 0.5 / np.sqrt(R))
    types["x_proj"] = types["dt_projection"] = types["delta"]
    opt = [n if len(inputs) > i and inputs[i] == n else "" for i, n in ((5, "Ds"), (6, "delta_bias"))]
    inputs = ["x", "x_proj", "A", "", ""] + opt + ["dt_projection"]
    if bad:
        kind = str(rng.choice(["row", "lead", "weight_D", "weight_rank", "rank_zero", "with_bc"]))
        if kind == "row":
            feeds["x_proj"] = _randn(rng, lead + (R + 2 * N + int(rng.choice([-1, 1])),))
            keywords += ["x_proj"]
        elif kind == "lead":
            feeds["x_proj"] = _randn(rng, (B, H + 1, W, 4, R + 2 * N))
            keywords += ["x_proj"]
        elif kind == "weight_D":
            feeds["dt_projection"] = _randn(rng, (4, D + 1, R))
            keywords += ["dt_projection"]
        elif kind == "weight_rank":
            feeds["dt_projection"] = _randn(rng, (4 * D, R))
            keywords += ["dt_projection"]
        elif kind == "rank_zero":
            feeds["dt_projection"] = _randn(rng, (4, D, 0))
            feeds["x_proj"] = _randn(rng, lead + (2 * N,))
            keywords += ["dt_rank", "dt_projection"]
        else:
            name = str(rng.choice(["Bs", "Cs"]))
            inputs[SCAN2D_INPUTS.index(name)] = name
            keywords += ["Bs and Cs must be omitted", "omitted"]
    return inputs


def _scan2d_shapes_ok(feeds, inputs) -> bool:
    """The shape rules of docs/ops.md for SelectiveScan2D's present inputs."""
    sh = {n: tuple(feeds[n].shape) for n in inputs if n}
    if any(sh.get(n) is None for n in SCAN2D_INPUTS[:5]):
        return False
    x, Bs = sh["x"], sh["Bs"]
    if len(x) != 4 or len(Bs) != 5 or sh["Cs"] != Bs or Bs[:3] != x[:3] or Bs[3] != 4:
        return False
    N, C = Bs[4], 4 * x[3]
    if not 1 <= N <= 16 or sh["delta"] != x[:3] + (C,) or sh["A"] != (C, N):
        return False
    return all(sh[n] == (C,) for n in ("Ds", "delta_bias") if n in sh)


def _epsilon_and_input_mutations(rng, muts, names, inputs, types, dtype, attrs, keywords):
    """The mutations LayerNorm, AddLayerNorm and VSSBlockTail share: a bad epsilon, bad or mixed dtypes, a missing
    input. Changes attrs, types and keywords in place; returns (still valid, the node's inputs)."""
    valid = True
    if "epsilon" in muts:
        valid = False
        attrs["epsilon"] = [0.0, -1e-5, float("nan"), float("inf"), -float("inf"), 0, "1e-5"][int(rng.integers(0, 7))]
        keywords += ["epsilon"]
    if "dtype_first" in muts:
        valid = False
        t = _bad_dtype(rng, keywords)
        types.update({n: t for n in names})
    if "dtype_mix" in muts:
        valid = False
        name = str(rng.choice(names[1:]))
        types[name] = _mix_dtype(rng, dtype, name, keywords)
    if "missing" in muts:
        valid = False
        if rng.random() < 0.5:
            k = int(rng.integers(0, len(names)))
            inputs = list(inputs)
            inputs[k] = ""
            keywords += [names[k], "input", "missing"]
        else:
            inputs = names[: int(rng.integers(1, len(names)))]
            keywords += ["input"]
    return valid, inputs


def layer_norm_case(seed: int, index: int) -> Case:
    return _retry(lambda s, i, a: _norm_case("LayerNorm", s, i, a), seed, index)


def add_layer_norm_case(seed: int, index: int) -> Case:
    return _retry(lambda s, i, a: _norm_case("AddLayerNorm", s, i, a), seed, index)


def _norm_case(op: str, seed: int, index: int, attempt: int) -> Case:
    rng = np.random.default_rng([seed, index, 4 if op == "LayerNorm" else 5, attempt])
    names = NORM_INPUTS[op]
    rank = int(rng.choice([1, 2, 3, 3, 4]))
    C = int(rng.choice([1, 2, 3, 8, 16, 32, 33, 64, int(rng.integers(1, 100))]))
    lead = [int(rng.integers(1, 5)) for _ in range(rank - 1)]
    muts = _draw_mutations(rng, op)
    valid, keywords = True, []
    if "zero_rows" in muts:
        lead = lead or [1]
        lead[int(rng.integers(0, len(lead)))] = 0
    if "huge_zero" in muts:
        lead = [0, HUGE] if rng.random() < 0.5 else [HUGE, 0, int(rng.integers(1, 3))]
    if "channels_zero" in muts:
        valid = False
        C = 0
        keywords += ["last dimension"]
    shape = tuple(lead) + (C,)
    offset = float(rng.choice([10.0, -30.0, 100.0])) if "offset" in muts else float(rng.choice([0.0, 0.0, 0.5]))
    scale = float(rng.choice([1.0, 1.0, 0.1, 3.0]))
    feeds = {"X": _randn(rng, shape, scale, offset), "weight": _randn(rng, (C,), 1.0, 0.5),
             "bias": _randn(rng, (C,), 0.5)}
    if op == "AddLayerNorm":
        feeds["R"] = _randn(rng, shape, float(rng.choice([1.0, 0.1])))
    inputs = list(names)
    attrs: Dict[str, object] = {}
    if rng.random() < 0.6:
        attrs["epsilon"] = float(rng.choice([1e-5, 1e-6, 1e-3, 0.1, 1.0]))
    if "plugin_attrs" in muts:
        attrs.update(PLUGIN_ATTRS)
    dtype = F16 if "float16" in muts else F32
    types = {n: dtype for n in names}

    if "rank" in muts:
        valid = False
        if rng.random() < 0.4:
            feeds["X"] = np.asarray(feeds["X"].reshape(-1)[:1].reshape(()) if feeds["X"].size else np.float32(1.0))
            if op == "AddLayerNorm":
                feeds["R"] = np.asarray(np.float32(0.5))
            keywords += ["rank", "scalar"]
        else:
            name = str(rng.choice(["weight", "bias"]))
            v = feeds[name]
            feeds[name] = v.reshape((1, -1) if rng.random() < 0.5 else (-1, 1))
            keywords += [name]
    if "param_len" in muts:
        valid = False
        name = str(rng.choice(["weight", "bias"]))
        n = feeds[name].shape[-1] if feeds[name].ndim else 1
        new = int(rng.choice([n + 1, n - 1, 1])) if n > 1 else n + 1
        feeds[name] = _randn(rng, (new,))
        keywords += [name]
    if "R_shape" in muts:
        valid = False
        r = list(feeds["R"].shape)
        kind = rng.choice(["off", "one", "rank"])
        if kind == "off" and r:
            i = int(rng.integers(0, len(r)))
            r[i] = r[i] + 1 if r[i] < HUGE else 0
        elif kind == "one" and r and any(d != 1 for d in r[:-1]):
            i = int(rng.choice([j for j, d in enumerate(r[:-1]) if d != 1]))
            r[i] = 1
        else:
            r = r[1:] if len(r) > 1 and rng.random() < 0.5 else [1] + r
        feeds["R"] = _randn(rng, tuple(r))
        keywords += ["R must have X's shape"]
    if "nonfinite" in muts:
        for name in rng.choice(names, size=int(rng.integers(1, 3)), replace=False):
            _nonfinite(rng, feeds[str(name)])
    shared_valid, inputs = _epsilon_and_input_mutations(rng, muts, names, inputs, types, dtype, attrs, keywords)
    valid = valid and shared_valid
    if valid and not _norm_shapes_ok(op, feeds):
        raise _TooBig("a valid case with invalid shapes")
    if not valid and set(muts) <= STATIC_SHAPE_MUTATIONS and _norm_shapes_ok(op, feeds):
        raise _TooBig("the shape mutations cancelled out")
    outputs = ("Y", "S") if op == "AddLayerNorm" else ("Y",)
    return _finish(op, "n" if op == "LayerNorm" else "a", seed, index, rng, inputs, types, feeds, attrs, valid,
                   keywords, muts, outputs)


def _norm_shapes_ok(op, feeds) -> bool:
    x = feeds["X"].shape
    if len(x) < 1 or x[-1] < 1 or feeds["weight"].shape != (x[-1],) or feeds["bias"].shape != (x[-1],):
        return False
    return op == "LayerNorm" or feeds["R"].shape == x


def dwconv_case(seed: int, index: int) -> Case:
    return _retry(_dwconv_case, seed, index)


KERNEL_SETS = ([1], [15], [3, 5, 7, 9], [3, 5, 7, 9], [1, 15], [3] * 16, [1, 3, 5, 7, 9, 11, 13, 15] * 2)


def _dwconv_case(seed: int, index: int, attempt: int) -> Case:
    rng = np.random.default_rng([seed, index, 6, attempt])
    op = "MultiKernelDepthwiseConv"
    muts = _draw_mutations(rng, op)
    valid, keywords = True, []
    if "kernel_set" in muts:
        ks = list(KERNEL_SETS[int(rng.integers(0, len(KERNEL_SETS)))])
    else:
        ks = [int(rng.choice([1, 3, 3, 5, 5, 7, 9])) for _ in range(int(rng.choice([1, 2, 3, 4, 4])))]
    gc = [int(rng.integers(1, 4 if len(ks) > 4 else 6)) for _ in ks]
    C = sum(gc)
    K = min(15, max(ks) + 2 * int(rng.choice([0, 0, 0, 1, 2]) if "kernel_set" not in muts else rng.choice([0, 1])))
    divisors = [d for d in range(2, C + 1) if C % d == 0]
    S = 1 if "shuffle_one" in muts or not divisors or rng.random() < 0.4 else int(rng.choice(divisors))
    act = "none" if "activation_none" in muts else str(rng.choice(["none", "gelu", "gelu"]))
    B, H, W = int(rng.integers(1, 3)), int(rng.integers(1, 8)), int(rng.integers(1, 8))
    if "zero_dim" in muts:
        B = 0
    if "huge_zero" in muts:
        B = 0
        if rng.random() < 0.5:
            H = HUGE
        else:
            W = HUGE
    feeds = {"X": _randn(rng, (B, H, W, C)), "weight": _randn(rng, (C, K, K), 0.4), "bias": _randn(rng, (C,), 0.5)}
    # The taps outside each group's central k x k are never read: give them values that would show if they were.
    start = 0
    unused = np.ones((C, K, K), bool)
    for k, c in zip(ks, gc):
        lo = K // 2 - k // 2
        unused[start:start + c, lo:lo + k, lo:lo + k] = False
        start += c
    feeds["weight"][unused] = float(rng.choice([0.0, 1e3, -7.0]))
    if "nonfinite" in muts:
        for name in rng.choice(DWCONV_INPUTS, size=int(rng.integers(1, 3)), replace=False):
            if name == "weight":
                if unused.any():
                    idx = np.argwhere(unused)
                    for i in rng.choice(len(idx), size=min(len(idx), 3), replace=False):
                        feeds["weight"][tuple(idx[i])] = rng.choice([np.nan, np.inf, -np.inf])
            else:
                _nonfinite(rng, feeds[str(name)])
    attrs: Dict[str, object] = {"kernel_sizes": list(ks), "group_channels": list(gc)}
    if S != 1 or rng.random() < 0.5:
        attrs["shuffle_groups"] = S
    if act != "none" or rng.random() < 0.5:
        attrs["activation"] = act
    if "plugin_attrs" in muts:
        attrs.update(PLUGIN_ATTRS)
    inputs = list(DWCONV_INPUTS)
    dtype = F16 if "float16" in muts else F32
    types = {n: dtype for n in DWCONV_INPUTS}

    if "kernel_even" in muts:
        valid = False
        g = int(rng.integers(0, len(ks)))
        attrs["kernel_sizes"] = [int(rng.choice([2, 4, K - 1 if K > 1 else 2])) if i == g else k
                                 for i, k in enumerate(attrs["kernel_sizes"])]
        keywords += ["kernel_sizes"]
    if "kernel_range" in muts:
        valid = False
        g = int(rng.integers(0, len(ks)))
        bad = int(rng.choice([0, -1, -3, 17, 1 << 33] + ([K + 2] if K + 2 <= 15 else [])))
        attrs["kernel_sizes"] = [bad if i == g else k for i, k in enumerate(attrs["kernel_sizes"])]
        keywords += ["kernel_sizes"]
    if "group_sum" in muts:
        valid = False
        g = int(rng.integers(0, len(gc)))
        attrs["group_channels"] = [c + 1 if i == g else c for i, c in enumerate(attrs["group_channels"])]
        keywords += ["group_channels"]
    if "group_len" in muts:
        valid = False
        name = str(rng.choice(["kernel_sizes", "group_channels"]))
        v = list(attrs[name])
        attrs[name] = v[:-1] if len(v) > 1 and rng.random() < 0.5 else v + [1]
        keywords += ["kernel_sizes", "group_channels"]
    if "group_count" in muts:
        valid = False
        attrs["kernel_sizes"], attrs["group_channels"] = [1] * 17, [1] * 17
        feeds["X"] = _randn(rng, feeds["X"].shape[:3] + (17,))
        feeds["weight"] = _randn(rng, (17, K, K))
        feeds["bias"] = _randn(rng, (17,))
        attrs.pop("shuffle_groups", None)
        keywords += ["channel groups"]
    if "group_nonpos" in muts:
        valid = False
        g = int(rng.integers(0, len(attrs["group_channels"])))
        attrs["group_channels"] = [int(rng.choice([0, -1, -(1 << 40)])) if i == g else c
                                   for i, c in enumerate(attrs["group_channels"])]
        keywords += ["group_channels"]
    if "shuffle" in muts:
        valid = False
        non_div = [d for d in range(2, 2 * C + 3) if C % d]
        attrs["shuffle_groups"] = int(rng.choice(non_div + [0, -2])) if non_div else 0
        keywords += ["shuffle_groups"]
    if "activation" in muts:
        valid = False
        attrs["activation"] = str(rng.choice(["relu", "GELU", "", "gelu_tanh"]))
        keywords += ["activation"]
    if "attr_missing" in muts:
        valid = False
        name = str(rng.choice(["kernel_sizes", "group_channels"]))
        attrs.pop(name)
        keywords += [name]
    if "attr_type" in muts:
        valid = False
        name = str(rng.choice(["kernel_sizes", "group_channels", "shuffle_groups", "activation"]))
        if name in ("kernel_sizes", "group_channels"):
            attrs[name] = int(attrs[name][0]) if rng.random() < 0.5 else [float(v) for v in attrs[name]]
        elif name == "shuffle_groups":
            attrs[name] = str(rng.choice(["two", "1"]))
        else:
            attrs[name] = 1
        keywords += [name]
    if "rank" in muts:
        valid = False
        name = str(rng.choice(DWCONV_INPUTS))
        feeds[name] = _reshape_rank(rng, feeds[name])
        keywords += {"X": ["X must be"], "weight": ["weight"], "bias": ["bias"]}[name]
    if "weight_shape" in muts:
        valid = False
        c0, k0 = feeds["weight"].shape[0], feeds["weight"].shape[-1]
        kind = str(rng.choice(["C", "even", "square"]))
        shape = {"C": (c0 + 1, k0, k0), "even": (c0, k0 + 1, k0 + 1), "square": (c0, k0, k0 + 2)}[kind]
        feeds["weight"] = _randn(rng, shape)
        keywords += ["weight"]
    if "bias_len" in muts:
        valid = False
        n = feeds["bias"].shape[0]
        feeds["bias"] = _randn(rng, (n + 1,) if n == 1 or rng.random() < 0.5 else (n - 1,))
        keywords += ["bias"]
    if "dtype_first" in muts:
        valid = False
        t = _bad_dtype(rng, keywords)
        types = {n: t for n in DWCONV_INPUTS}
    if "dtype_mix" in muts:
        valid = False
        name = str(rng.choice(DWCONV_INPUTS[1:]))
        types[name] = _mix_dtype(rng, dtype, name, keywords)
    if "missing" in muts:
        valid = False
        if rng.random() < 0.5:
            k = int(rng.integers(0, 3))
            inputs[k] = ""
            keywords += [DWCONV_INPUTS[k], "input", "missing"]
        else:
            inputs = DWCONV_INPUTS[: int(rng.integers(1, 3))]
            keywords += ["input"]
    return _finish(op, "c", seed, index, rng, inputs, types, feeds, attrs, valid, keywords, muts)


VSS_TAIL_INPUTS = ["Y", "R", "out_norm_weight", "out_norm_bias", "out_proj", "norm_weight", "norm_bias", "fc1_weight",
                   "fc1_bias", "fc2_weight", "fc2_bias"]


def vss_tail_case(seed: int, index: int) -> Case:
    return _retry(_vss_tail_case, seed, index)


def _vss_tail_param_shapes(D: int, C: int, H: int) -> Dict[str, tuple]:
    return {"out_norm_weight": (D,), "out_norm_bias": (D,), "out_proj": (D, C), "norm_weight": (C,),
            "norm_bias": (C,), "fc1_weight": (C, H), "fc1_bias": (H,), "fc2_weight": (H, C), "fc2_bias": (C,)}


def _vss_tail_case(seed: int, index: int, attempt: int) -> Case:
    rng = np.random.default_rng([seed, index, 7, attempt])
    op, names = "VSSBlockTail", list(VSS_TAIL_INPUTS)
    muts = _draw_mutations(rng, op)
    D, C, H = (int(rng.integers(1, 48)) for _ in range(3))
    if "hrvmamba" in muts:
        D, C, H = [(64, 32, 64), (128, 64, 128)][int(rng.integers(0, 2))]
    valid, keywords = True, []
    if "limits" in muts:
        valid = False
        which = int(rng.integers(0, 3))
        D, C, H = (1025 if which == 0 else min(D, 16), 513 if which == 1 else min(C, 16),
                   1025 if which == 2 else min(H, 16))
        keywords += ["outside", "limit"]
    rank = int(rng.choice([1, 2, 3, 4]))
    lead = [int(rng.integers(1, 4)) for _ in range(rank - 1)]
    if "zero_rows" in muts:
        lead = lead or [1]
        lead[int(rng.integers(0, len(lead)))] = 0
    feeds = {"Y": _randn(rng, tuple(lead) + (D,)), "R": _randn(rng, tuple(lead) + (C,))}
    for name, shape in _vss_tail_param_shapes(D, C, H).items():
        if name.endswith("_weight") and len(shape) == 1:
            feeds[name] = _randn(rng, shape, 0.3, 1.0)
        elif len(shape) == 2:
            feeds[name] = _randn(rng, shape, 1.0 / np.sqrt(shape[0]))
        else:
            feeds[name] = _randn(rng, shape, 0.2)
    inputs = list(names)
    attrs: Dict[str, object] = {}
    if rng.random() < 0.5:
        attrs["epsilon"] = float(rng.choice([1e-5, 1e-6, 1e-3, 0.1]))
    if "plugin_attrs" in muts:
        attrs.update(PLUGIN_ATTRS)
    dtype = F16 if "float16" in muts else F32
    types = {n: dtype for n in names}

    if "rank" in muts:
        valid = False
        if rng.random() < 0.3:
            feeds["Y"], feeds["R"] = np.asarray(np.float32(0.5)), np.asarray(np.float32(0.25))
            keywords += ["rank"]
        else:
            name = str(rng.choice(names[2:]))
            v = feeds[name]
            feeds[name] = v.reshape((1,) + v.shape) if rng.random() < 0.5 or v.ndim == 1 else v.reshape(-1)
            keywords += [name]
    if "param_len" in muts:
        valid = False
        name = str(rng.choice(names[2:]))
        shape = list(feeds[name].shape)
        axis = int(rng.integers(0, len(shape))) if shape else 0
        if shape:
            shape[axis] += 1
        feeds[name] = _randn(rng, tuple(shape))
        keywords += [name]
    if "R_shape" in muts:
        valid = False
        r = list(feeds["R"].shape)
        if len(r) > 1:
            r[0] += 1
        else:
            r = [2] + r
        feeds["R"] = _randn(rng, tuple(r))
        keywords += ["leading dimensions", "every dimension but the last", "rank"]
    if "nonfinite" in muts:
        for name in rng.choice(["Y", "R"], size=int(rng.integers(1, 3)), replace=False):
            _nonfinite(rng, feeds[str(name)])
    shared_valid, inputs = _epsilon_and_input_mutations(rng, muts, names, inputs, types, dtype, attrs, keywords)
    valid = valid and shared_valid
    if valid and not _vss_tail_shapes_ok(feeds):
        raise _TooBig("a valid case with invalid shapes")
    benign = {"float16", "zero_rows", "nonfinite", "hrvmamba", "plugin_attrs"}
    if not valid and set(muts) <= STATIC_SHAPE_MUTATIONS | benign and _vss_tail_shapes_ok(feeds):
        raise _TooBig("the shape mutations cancelled out")
    return _finish(op, "t", seed, index, rng, inputs, types, feeds, attrs, valid, keywords, muts, ("Z",))


def _vss_tail_shapes_ok(feeds) -> bool:
    y, r = feeds["Y"].shape, feeds["R"].shape
    if len(y) < 1 or len(r) != len(y) or y[:-1] != r[:-1]:
        return False
    D, C = y[-1], r[-1]
    fc1 = feeds["fc1_weight"].shape
    if len(fc1) != 2:
        return False
    H = fc1[1]
    if not (1 <= D <= 1024 and 1 <= C <= 512 and 1 <= H <= 1024):
        return False
    return all(feeds[n].shape == s for n, s in _vss_tail_param_shapes(D, C, H).items())


NEW_OPS = ("SelectiveScan2D", "LayerNorm", "AddLayerNorm", "MultiKernelDepthwiseConv", "VSSBlockTail")
MAKERS = {"SelectiveScan": scan_case, "DeformAggregate": deform_case, "SelectiveScan2D": scan2d_case,
          "LayerNorm": layer_norm_case, "AddLayerNorm": add_layer_norm_case, "MultiKernelDepthwiseConv": dwconv_case,
          "VSSBlockTail": vss_tail_case}


def make_cases(seed: int, count: int, ops: Sequence[str] = ALL_OPS) -> List[Case]:
    """`count` cases, alternating between the ops; a pure function of (seed, count, ops). Case i of an op is the
    same whatever the other ops (its generator draws from (seed, i)), only which i each op gets changes."""
    unknown = [op for op in ops if op not in MAKERS]
    if unknown:
        raise ValueError(f"unknown ops {unknown}; known: {list(MAKERS)}")
    return [MAKERS[ops[i % len(ops)]](seed, i) for i in range(count)]


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

    if case.op in NEW_OPS:
        return _reference_new(case, t)
    if case.op == "SelectiveScan":
        if case.feeds["u"].size == 0:  # empty output (the reference cannot allocate huge empty states)
            return np.zeros(case.feeds["u"].shape)
        args = [t(case.feeds[n]) if n else None for n in case.inputs + [""] * (7 - len(case.inputs))]
        return ref.selective_scan_reference(*args, delta_softplus=bool(case.attrs.get("delta_softplus", 1))).numpy()
    value, om = case.feeds["value"], case.feeds["offset_mask"]
    out_h, out_w = deform_output_size(value.shape[1], value.shape[2], case.attrs)
    if value.size == 0 or om.size == 0:  # empty output (the reference cannot reshape huge empty tensors)
        return np.zeros((value.shape[0], out_h, out_w, value.shape[3]))
    if "offset_bias" in case.feeds:  # the epilogues (docs/ops.md): the Add rounded to the type, SiLU of the rounded out
        with np.errstate(over="ignore", invalid="ignore"):
            om = (om.astype(np.float32) + case.feeds["offset_bias"].astype(np.float32)).astype(om.dtype)
    if _has_nonfinite(case):
        out = deform_spec(value, om, case.attrs)
    else:
        out = ref.deform_aggregate_reference(t(value), t(om), *[case.attrs[k] for k in DEFORM_ATTRS]).numpy()
    if case.attrs.get("activation") == "silu":
        with np.errstate(over="ignore", invalid="ignore"):
            z = out.astype(value.dtype).astype(np.float64)
            out = z / (1.0 + np.exp(-z))
    return out


def _reference_new(case: Case, t):
    """Float64 results of custom_ops/reference.py for the newer ops (a list of two arrays for AddLayerNorm)."""
    from ssmpose.custom_ops import reference as ref

    f = case.feeds
    if case.op == "SelectiveScan2D":
        if f["x"].size == 0:  # empty output (B, H, W or D = 0; H or W may be huge)
            return np.zeros(f["x"].shape)
        opt = [t(f[n]) if n in case.inputs else None for n in ("Ds", "delta_bias")]
        if "dt_projection" in case.inputs:
            return ref.selective_scan_2d_proj_reference(t(f["x"]), t(f["x_proj"]), t(f["dt_projection"]), t(f["A"]),
                                                        *opt, delta_softplus=bool(case.attrs.get("delta_softplus",
                                                                                                1))).numpy()
        return ref.selective_scan_2d_reference(t(f["x"]), t(f["delta"]), t(f["A"]), t(f["Bs"]), t(f["Cs"]), *opt,
                                               delta_softplus=bool(case.attrs.get("delta_softplus", 1))).numpy()
    eps = float(case.attrs.get("epsilon", 1e-5))
    if case.op == "VSSBlockTail":
        return _vss_tail_reference(case, eps)
    if case.op == "LayerNorm":
        if f["X"].size == 0:
            return np.zeros(f["X"].shape)
        return ref.layer_norm_reference(t(f["X"]), t(f["weight"]), t(f["bias"]), eps).numpy()
    if case.op == "AddLayerNorm":
        if f["X"].size == 0:
            return [np.zeros(f["X"].shape), np.zeros(f["X"].shape)]
        # S = X + R in float32, rounded to the type (docs/ops.md), then the float64 LayerNorm of S as rounded
        with np.errstate(over="ignore", invalid="ignore"):
            total = (f["X"].astype(np.float32) + f["R"].astype(np.float32)).astype(f["X"].dtype)
        y, s = ref.add_layer_norm_reference(t(total), t(np.zeros_like(total)), t(f["weight"]), t(f["bias"]), eps)
        return [y.numpy(), s.numpy()]
    if f["X"].size == 0:
        return np.zeros(f["X"].shape)
    a = case.attrs
    return ref.multi_kernel_depthwise_conv_reference(t(f["X"]), t(f["weight"]), t(f["bias"]), a["kernel_sizes"],
                                                     a["group_channels"], int(a.get("shuffle_groups", 1)),
                                                     str(a.get("activation", "none"))).numpy()


def _vss_tail_reference(case: Case, eps: float) -> np.ndarray:
    """VSSBlockTail in float64 as docs/ops.md words it: the operands a, b, g of the three products rounded to the
    type (float16 cases), X1 not rounded. (custom_ops/reference.py's vss_block_tail_reference does the same in
    float32 for float16 tensors; here the rest stays float64.)"""
    import torch
    import torch.nn.functional as F

    f = {n: torch.from_numpy(np.asarray(v, dtype=np.float64)) for n, v in case.feeds.items()}
    half = case.types[0] == F16

    def operand(v):
        return v.to(torch.float16).to(torch.float64) if half else v

    def norm(v, w, b):
        mean = v.mean(-1, keepdim=True)
        var = (v - mean).square().mean(-1, keepdim=True)
        return (v - mean) / torch.sqrt(var + float(np.float32(eps))) * w + b

    with np.errstate(all="ignore"):
        a = operand(norm(f["Y"], f["out_norm_weight"], f["out_norm_bias"]))
        x1 = f["R"] + a @ f["out_proj"]
        b = operand(norm(x1, f["norm_weight"], f["norm_bias"]))
        g = operand(F.gelu(b @ f["fc1_weight"] + f["fc1_bias"]))
        return (x1 + g @ f["fc2_weight"] + f["fc2_bias"]).numpy()


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


def compare(case: Case, out) -> Optional[str]:
    """None if `out` is the reference's result (NaN and +-Inf where the reference has them); for an op of several
    outputs, `out` is the list of them, each compared with the reference's."""
    expected = reference(case)
    slack = _norm_slack(case)
    if len(case.outputs) == 1:
        return _compare_one(case, out, expected, slack)
    if not isinstance(out, (list, tuple)) or len(out) != len(case.outputs):
        return f"expected {len(case.outputs)} outputs {list(case.outputs)}, got {type(out).__name__}"
    for i, (name, got, want) in enumerate(zip(case.outputs, out, expected)):
        problem = _compare_one(case, got, want, slack if i == 0 else 0.0)
        if problem:
            return f"output {name}: {problem}"
    return None


def _norm_slack(case: Case):
    """LayerNorm / AddLayerNorm: the error the contract allows on top of the float32 tolerance, per row. The
    statistics are float32 (docs/ops.md): the rounding of the row's mean, up to about C * max|row| * 2^-24, reaches
    Y divided by the row's std (times |weight|). Rows with |mean| >> std (the "offset" mutation) need it."""
    if case.op not in ("LayerNorm", "AddLayerNorm") or case.feeds["X"].size == 0:
        return 0.0
    f = case.feeds
    with np.errstate(over="ignore", invalid="ignore"):
        rows = f["X"].astype(np.float32) + (f["R"].astype(np.float32) if case.op == "AddLayerNorm" else 0)
        rows = rows.astype(f["X"].dtype).astype(np.float64)
        C = rows.shape[-1]
        std = np.sqrt(rows.var(axis=-1, keepdims=True) + float(case.attrs.get("epsilon", 1e-5)))
        w = np.abs(f["weight"].astype(np.float64)).max()
        slack = (C + 2) * np.abs(rows).max(axis=-1, keepdims=True) * 2.0 ** -24 * w / std
    return np.nan_to_num(slack, nan=0.0, posinf=0.0)


def _compare_one(case: Case, out: np.ndarray, expected: np.ndarray, slack=0.0) -> Optional[str]:
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
    rel, atol = (2e-3, 1e-3) if case.types[0] == F16 else (1e-5, 1e-6)
    if out.dtype == np.float16 and scale > 6e4:
        return None  # float16 overflow territory: only the non-finite pattern is checked
    excess = np.abs(got[finite] - expected[finite]) - np.broadcast_to(slack, expected.shape)[finite]
    err = excess.max()
    if err > rel * scale + atol:
        extra = " (beyond the float32 statistics' allowance)" if np.any(slack) else ""
        return f"max abs error {err:.3e}{extra} > {rel:g} * {scale:.3e} + {atol:g}"
    return None


def known_crash(case: Case, runtime: str) -> Optional[str]:
    """Why `case` is known to crash the process of `runtime` (a library bug found by this fuzzer and not fixed yet),
    or None. In-process runs skip such cases, since a crash would end the test session; the subprocess runs
    (tests/test_fuzz_runtime_libraries.py) do not, so the bug stays visible."""
    return None  # none known (the LayerNorm / AddLayerNorm SIGFPE on X with no rows is fixed)


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
        outs = payload if isinstance(payload, (list, tuple)) else [payload]
        return f"invalid case accepted (output shapes {[tuple(o.shape) for o in outs]})"
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
            outs = sess.run(None, case.feeds)
            return "ok", outs[0] if len(case.outputs) == 1 else outs
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
            outs = [np.asarray(result[out]) for out in compiled.outputs]
            return "ok", outs[0] if len(case.outputs) == 1 else outs
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
    p.add_argument("--ops", default=",".join(ALL_OPS),
                   help=f"comma-separated ops to generate, in turn (default: all: {','.join(ALL_OPS)}; "
                        f"'old' and 'new' name {','.join(ALL_OPS[:2])} and {','.join(NEW_OPS)})")
    p.add_argument("--extra", action="append", default=[], metavar="OPS:COUNT",
                   help="then COUNT more cases (indices from 0) of OPS, e.g. new:60; may be repeated")
    p.add_argument("--skip-known-crashes", action="store_true",
                   help="leave out the cases known_crash() names for this runtime (known library bugs)")
    args = p.parse_args(argv)

    def parse_ops(text):
        ops = [o for part in text.split(",") if part.strip()
               for o in {"old": ALL_OPS[:2], "new": NEW_OPS, "all": ALL_OPS}.get(part.strip(), (part.strip(),))]
        unknown = [o for o in ops if o not in MAKERS]
        if unknown or not ops:
            p.error(f"unknown ops {unknown or text!r}; known: {', '.join(MAKERS)} (or old, new, all)")
        return ops

    cases = make_cases(args.seed, args.start + args.count, parse_ops(args.ops))[args.start:]
    if not args.no_regressions:
        cases = regression_cases() + cases
    for extra in args.extra:
        ops_text, _, count = extra.rpartition(":")
        if not ops_text or not count.isdigit():
            p.error(f"--extra takes OPS:COUNT, got {extra!r}")
        cases += make_cases(args.seed, int(count), parse_ops(ops_text))
    if args.skip_known_crashes:
        cases = [c for c in cases if not known_crash(c, args.runtime)]
    runner = OrtRunner() if args.runtime == "ort" else OvRunner()
    counts = run_cases(runner, cases)
    return 1 if counts["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
