"""torch.onnx (dynamo) translations of the ssmpose torch ops into `ssmpose`-domain ONNX nodes.

`torch.ops.ssmpose.selective_scan` / `selective_scan_2d` / `deform_aggregate` are torch.library custom ops
with fake kernels, so `torch.export` records them as single calls without running them. The functions here
are handed to `torch.onnx.export(..., custom_translation_table=...)`; each emits one `SelectiveScan` /
`SelectiveScan2D` / `DeformAggregate` node with the attributes of docs/ops.md plus the TensorRT
`plugin_version` / `plugin_namespace` attributes (DESIGN.md section 4). SelectiveScan2D is emitted through
the version-2 opset of the domain (the exporter then imports `ssmpose` at the version the graph needs,
`schemas.op_domain_version`).
"""
from __future__ import annotations

import onnxscript
import torch

from .schemas import (DOMAIN, DOMAIN_VERSION, PLUGIN_NAMESPACE, PLUGIN_VERSION, SCAN_2D_DIRECTIONS,
                      SCAN_2D_DOMAIN_VERSION, register_schemas)

register_schemas()  # onnxscript looks the ops up by schema
SSMPOSE = onnxscript.values.Opset(DOMAIN, DOMAIN_VERSION)
SSMPOSE_V2 = onnxscript.values.Opset(DOMAIN, SCAN_2D_DOMAIN_VERSION)


def selective_scan(u, delta, A, Bs, Cs, Ds, delta_bias, delta_softplus: int):
    return SSMPOSE.SelectiveScan(u, delta, A, Bs, Cs, Ds, delta_bias, delta_softplus=int(delta_softplus),
                                 plugin_version=PLUGIN_VERSION, plugin_namespace=PLUGIN_NAMESPACE)


def selective_scan_2d(x, delta, A, Bs, Cs, Ds, delta_bias, delta_softplus: int):
    return SSMPOSE_V2.SelectiveScan2D(x, delta, A, Bs, Cs, Ds, delta_bias, delta_softplus=int(delta_softplus),
                                      directions=SCAN_2D_DIRECTIONS, plugin_version=PLUGIN_VERSION,
                                      plugin_namespace=PLUGIN_NAMESPACE)


def deform_aggregate(value, offset_mask, kernel_h: int, kernel_w: int, stride_h: int, stride_w: int,
                     pad_h: int, pad_w: int, dilation_h: int, dilation_w: int, group: int, group_channels: int,
                     offset_scale: float, remove_center: int):
    return SSMPOSE.DeformAggregate(
        value, offset_mask, kernel_h=int(kernel_h), kernel_w=int(kernel_w), stride_h=int(stride_h),
        stride_w=int(stride_w), pad_h=int(pad_h), pad_w=int(pad_w), dilation_h=int(dilation_h),
        dilation_w=int(dilation_w), group=int(group), group_channels=int(group_channels),
        offset_scale=float(offset_scale), remove_center=int(remove_center),
        plugin_version=PLUGIN_VERSION, plugin_namespace=PLUGIN_NAMESPACE)


def custom_translation_table() -> dict:
    """The `custom_translation_table` of the custom export form."""
    return {torch.ops.ssmpose.selective_scan.default: selective_scan,
            torch.ops.ssmpose.selective_scan_2d.default: selective_scan_2d,
            torch.ops.ssmpose.deform_aggregate.default: deform_aggregate}
