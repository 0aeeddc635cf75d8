// Entry points of libssmpose_ov.so: the OpenVINO extension list (the ops SelectiveScan, SelectiveScan2D and
// DeformAggregate, for models read from IR, and their ONNX frontend conversions from `ssmpose` domain nodes; the
// conversions of LayerNorm, AddLayerNorm, VSSBlockTail and MultiKernelDepthwiseConv (depthwise_conv_conversion.cpp),
// which build OpenVINO's own ops) and the version queries the Python loader checks before handing the library to OpenVINO.
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "conversions.hpp"
#include "openvino/core/extension.hpp"
#include "openvino/core/op_extension.hpp"
#include "openvino/core/version.hpp"
#include "openvino/frontend/onnx/extension/conversion.hpp"
#include "openvino/op/abs.hpp"
#include "openvino/op/add.hpp"
#include "openvino/op/constant.hpp"
#include "openvino/op/convert.hpp"
#include "openvino/op/gelu.hpp"
#include "openvino/op/greater.hpp"
#include "openvino/op/less.hpp"
#include "openvino/op/less_eq.hpp"
#include "openvino/op/matmul.hpp"
#include "openvino/op/multiply.hpp"
#include "openvino/op/mvn.hpp"
#include "openvino/op/select.hpp"
#include "openvino/op/slice.hpp"
#include "openvino/op/subtract.hpp"
#include "openvino/op/swish.hpp"
#include "ops.hpp"
#include "ssmpose_kernels.h"

// Bumped whenever an op is added or the ops' attributes, inputs or semantics change
// (custom_ops/openvino_library.py checks it). 2: SelectiveScan2D (ssmpose domain version 2). 3: the LayerNorm
// conversion (domain version 3). 4: the AddLayerNorm and MultiKernelDepthwiseConv conversions (domain version 4).
// 5: DeformAggregate's offset_bias input and activation attribute (domain version 5). 6: SelectiveScan2D's
// dt_projection input (domain version 6). 7: the VSSBlockTail conversion (domain version 7; kernel ABI 6).
#define SSMPOSE_OV_LIBRARY_VERSION 7
#define SSMPOSE_OV_STR2(x) #x
#define SSMPOSE_OV_STR(x) SSMPOSE_OV_STR2(x)

namespace ssmpose_ov {

std::string node_where(const ov::frontend::NodeContext& node, const char* op) {
  return std::string("ssmpose ") + op + " node '" + node.get_name() + "': ";
}

// An optional ONNX input that the node leaves out (empty name) reaches a converter as the ONNX frontend's
// placeholder node, which has no public type; it is recognised by its type name.
bool omitted(const ov::frontend::NodeContext& node, size_t index) {
  if (index >= node.get_input_size()) return true;
  const ov::Output<ov::Node> input = node.get_input(static_cast<int>(index));
  return input.get_node() == nullptr || std::string(input.get_node()->get_type_name()) == "NullNode";
}

ov::OutputVector required_inputs(const ov::frontend::NodeContext& node, const std::string& where,
                                 const std::vector<const char*>& names) {
  const size_t count = node.get_input_size();
  if (count != names.size()) {
    std::string list;
    for (const char* name : names) list += (list.empty() ? "" : ", ") + std::string(name);
    OPENVINO_THROW(where, "expects ", names.size(), " inputs (", list, "), got ", count);
  }
  ov::OutputVector inputs;
  for (size_t i = 0; i < names.size(); ++i) {
    if (omitted(node, i)) OPENVINO_THROW(where, "required input ", i, " (", names[i], ") is missing");
    inputs.push_back(node.get_input(static_cast<int>(i)));
  }
  return inputs;
}

ov::element::Type common_float_type(const std::string& where, const ov::OutputVector& inputs,
                                    const std::vector<const char*>& names) {
  const ov::element::Type type = inputs[0].get_element_type();
  if (type != ov::element::f32 && type != ov::element::f16) {
    OPENVINO_THROW(where, names[0], " has element type ", type, ", which is not supported; supported: f32, f16");
  }
  for (size_t i = 1; i < inputs.size(); ++i) {
    if (inputs[i].get_element_type() != type) {
      OPENVINO_THROW(where, "input ", names[i], " has element type ", inputs[i].get_element_type(), " but ",
                     names[0], " has ", type, " (all inputs must have one type)");
    }
  }
  return type;
}

std::string describe_attribute(const ov::Any& value) {
  if (value.is<int64_t>()) return "an int";
  if (value.is<float>() || value.is<double>()) return "a float";
  if (value.is<std::string>()) return "a string";
  if (value.is<std::vector<int64_t>>()) return "a list of ints";
  if (value.is<std::vector<float>>() || value.is<std::vector<double>>()) return "a list of floats";
  if (value.is<std::vector<std::string>>()) return "a list of strings";
  return std::string("a value of type ") + value.type_info().name();
}

namespace {

// The attribute's value, which must be an int (as the ONNX Runtime library: the frontend would otherwise turn a
// float such as pad_h=2.5 into 2 silently, and a string into an error that does not name the attribute; found by
// fuzzing).
int64_t int_attribute(const ov::frontend::NodeContext& node, const char* op, const char* name) {
  const ov::Any value = node.get_attribute_as_any(name);
  if (!value.is<int64_t>()) {
    OPENVINO_THROW("ssmpose ", op, " node '", node.get_name(), "': attribute ", name, " must be an int");
  }
  return value.as<int64_t>();
}

int64_t required_int(const ov::frontend::NodeContext& node, const char* op, const char* name) {
  if (!node.has_attribute(name)) {
    OPENVINO_THROW("ssmpose ", op, " node '", node.get_name(), "': missing required attribute ", name);
  }
  return int_attribute(node, op, name);
}

ov::OutputVector convert_selective_scan(const ov::frontend::NodeContext& node) {
  const size_t count = node.get_input_size();
  if (count < 5 || count > 7) {
    OPENVINO_THROW("ssmpose SelectiveScan node '", node.get_name(), "': expects 5 to 7 inputs (u, delta, A, Bs, Cs",
                   "[, Ds][, delta_bias]), got ", count);
  }
  ov::OutputVector inputs;
  for (size_t i = 0; i < 5; ++i) {
    if (omitted(node, i)) {
      OPENVINO_THROW("ssmpose SelectiveScan node '", node.get_name(), "': required input ", i, " is missing");
    }
    inputs.push_back(node.get_input(static_cast<int>(i)));
  }
  const bool has_ds = !omitted(node, 5), has_bias = !omitted(node, 6);
  if (has_ds) inputs.push_back(node.get_input(5));
  if (has_bias) inputs.push_back(node.get_input(6));
  const int64_t softplus =
      node.has_attribute("delta_softplus") ? int_attribute(node, "SelectiveScan", "delta_softplus") : 1;
  auto op = std::make_shared<SelectiveScan>(inputs, softplus, has_ds, has_bias);
  return {node.mark_node(op)->output(0)};
}

// SelectiveScan2D (domain version 2): inputs x, delta, A, Bs, Cs[, Ds][, delta_bias], attributes delta_softplus
// (default 1) and directions (default 4). Domain version 6: with dt_projection (input 7, (K, D, R)), input 1 is x_proj
// (B, H, W, K, R + 2N) and Bs / Cs are omitted; the node then becomes SelectiveScan2DProj, whose kernel forms delta
// from x_proj. OpenVINO's ONNX frontend does not tell a converter the domain version the graph imports, so, as with
// ONNX Runtime 1.16, the op is also accepted in a graph that imports version 1.
ov::OutputVector convert_selective_scan_2d(const ov::frontend::NodeContext& node) {
  constexpr const char* kOp = "SelectiveScan2D";
  const size_t count = node.get_input_size();
  if (count < 5 || count > 8) {
    OPENVINO_THROW("ssmpose SelectiveScan2D node '", node.get_name(), "': expects 5 to 8 inputs (x, delta, A, Bs, ",
                   "Cs[, Ds][, delta_bias][, dt_projection]), got ", count);
  }
  const bool projected = !omitted(node, 7);
  if (projected && (!omitted(node, 3) || !omitted(node, 4))) {
    OPENVINO_THROW("ssmpose SelectiveScan2D node '", node.get_name(), "': with dt_projection, Bs and Cs must be ",
                   "omitted (they are read from input 1, x_proj)");
  }
  const std::vector<const char*> names = projected ? std::vector<const char*>{"x", "x_proj", "A"}
                                                   : std::vector<const char*>{"x", "delta", "A", "Bs", "Cs"};
  ov::OutputVector inputs;
  for (size_t i = 0; i < names.size(); ++i) {
    if (omitted(node, i)) {
      OPENVINO_THROW("ssmpose SelectiveScan2D node '", node.get_name(), "': required input ", i, " (", names[i],
                     ") is missing");
    }
    inputs.push_back(node.get_input(static_cast<int>(i)));
  }
  if (projected) inputs.insert(inputs.begin() + 2, node.get_input(7));   // x, x_proj, dt_projection, A
  Scan2DAttributes attributes;
  attributes.has_ds = !omitted(node, 5);
  attributes.has_delta_bias = !omitted(node, 6);
  if (attributes.has_ds) inputs.push_back(node.get_input(5));
  if (attributes.has_delta_bias) inputs.push_back(node.get_input(6));
  if (node.has_attribute("delta_softplus")) attributes.delta_softplus = int_attribute(node, kOp, "delta_softplus");
  if (node.has_attribute("directions")) attributes.directions = int_attribute(node, kOp, "directions");
  std::shared_ptr<ov::Node> op;
  if (projected) {
    op = std::make_shared<SelectiveScan2DProj>(inputs, attributes);
  } else {
    op = std::make_shared<SelectiveScan2D>(inputs, attributes);
  }
  return {node.mark_node(op)->output(0)};
}

// DeformAggregate: inputs value, offset_mask and (domain version 5) an optional offset_bias, which the op passes to
// the kernel; attribute activation ("none" or "silu", default "none"; domain version 5), which becomes OpenVINO's
// own Swish (beta 1, SiLU) after the op.
ov::OutputVector convert_deform_aggregate(const ov::frontend::NodeContext& node) {
  constexpr const char* kOp = "DeformAggregate";
  const size_t count = node.get_input_size();
  if (count < 2 || count > 3 || omitted(node, 0) || omitted(node, 1)) {
    OPENVINO_THROW("ssmpose DeformAggregate node '", node.get_name(),
                   "': expects 2 or 3 inputs (value, offset_mask, optional offset_bias), got ", count);
  }
  bool silu = false;
  if (node.has_attribute("activation")) {
    const ov::Any value = node.get_attribute_as_any("activation");
    if (!value.is<std::string>()) {
      OPENVINO_THROW("ssmpose DeformAggregate node '", node.get_name(), "': attribute activation must be a string, "
                     "got ", value.type_info().name());
    }
    const std::string activation = value.as<std::string>();
    if (activation != "none" && activation != "silu") {
      OPENVINO_THROW("ssmpose DeformAggregate node '", node.get_name(),
                     "': attribute activation must be \"none\" or \"silu\", got \"", activation, "\"");
    }
    silu = activation == "silu";
  }
  DeformAttributes a;
  a.kernel_h = required_int(node, kOp, "kernel_h");
  a.kernel_w = required_int(node, kOp, "kernel_w");
  a.stride_h = required_int(node, kOp, "stride_h");
  a.stride_w = required_int(node, kOp, "stride_w");
  a.pad_h = required_int(node, kOp, "pad_h");
  a.pad_w = required_int(node, kOp, "pad_w");
  a.dilation_h = required_int(node, kOp, "dilation_h");
  a.dilation_w = required_int(node, kOp, "dilation_w");
  a.group = required_int(node, kOp, "group");
  a.group_channels = required_int(node, kOp, "group_channels");
  a.remove_center = required_int(node, kOp, "remove_center");
  if (!node.has_attribute("offset_scale")) {
    OPENVINO_THROW("ssmpose DeformAggregate node '", node.get_name(), "': missing required attribute offset_scale");
  }
  const ov::Any scale = node.get_attribute_as_any("offset_scale");
  if (scale.is<float>()) {
    a.offset_scale = scale.as<float>();
  } else if (scale.is<double>()) {
    a.offset_scale = static_cast<float>(scale.as<double>());
  } else if (scale.is<int64_t>()) {  // an exporter wrote e.g. offset_scale=1 as an int (accepted as by ORT)
    a.offset_scale = static_cast<float>(scale.as<int64_t>());
  } else {
    OPENVINO_THROW("ssmpose DeformAggregate node '", node.get_name(), "': attribute offset_scale must be a float, "
                   "got ", scale.type_info().name());
  }
  ov::OutputVector inputs{node.get_input(0), node.get_input(1)};
  if (count == 3 && !omitted(node, 2)) inputs.push_back(node.get_input(2));
  auto op = std::make_shared<DeformAggregate>(inputs, a);
  ov::Output<ov::Node> out = node.mark_node(op)->output(0);
  if (silu) out = node.mark_node(std::make_shared<ov::op::v4::Swish>(out))->output(0);
  return {out};
}

// LayerNorm (domain version 3): inputs X (rank >= 1, last dimension C), weight (C), bias (C), all f32 or all f16;
// attribute epsilon (float, default 1e-5, finite and > 0); plugin_version / plugin_namespace are for TensorRT and
// ignored. No custom op: the node becomes OpenVINO's own MVN over the last axis (normalize_variance, epsilon inside
// the square root) of X less its row's first value, Multiply by weight and Add bias, which the CPU plugin runs with
// its optimised kernels. For f16, the three inputs are converted to f32 first and the result back to f16, so that
// the mean and variance are f32 as the contract says (ONNX LayerNormalization with axis -1 and stash_type 1) and
// the result is rounded once.
// Like SelectiveScan2D, the op is accepted whatever ssmpose version the graph imports (the frontend does not say).
// AddLayerNorm (domain version 4) checks its inputs and attribute with the same functions and applies the same
// graph to its sum.

float epsilon_attribute(const ov::frontend::NodeContext& node, const std::string& where) {
  float epsilon = 1e-5f;
  if (node.has_attribute("epsilon")) {
    const ov::Any value = node.get_attribute_as_any("epsilon");
    if (value.is<float>()) {
      epsilon = value.as<float>();
    } else if (value.is<double>()) {
      epsilon = static_cast<float>(value.as<double>());
    } else {
      OPENVINO_THROW(where, "attribute epsilon must be a float, got ", describe_attribute(value));
    }
  }
  if (!std::isfinite(epsilon) || !(epsilon > 0.0f)) {
    OPENVINO_THROW(where, "attribute epsilon must be finite and > 0, got ", epsilon);
  }
  return epsilon;
}

// X (rank >= 1, C >= 1 where known), weight and bias (C) where their shapes are known.
void check_layer_norm_shapes(const std::string& where, const ov::Output<ov::Node>& x,
                             const ov::Output<ov::Node>& weight, const ov::Output<ov::Node>& bias) {
  const ov::PartialShape& x_shape = x.get_partial_shape();
  if (x_shape.rank().is_static() && x_shape.size() == 0) {
    OPENVINO_THROW(where, "X must have rank >= 1 (..., C), got a scalar");
  }
  const ov::Dimension channels = x_shape.rank().is_static() ? x_shape[x_shape.size() - 1] : ov::Dimension::dynamic();
  if (channels.is_static() && channels.get_length() < 1) {
    OPENVINO_THROW(where, "X has ", channels.get_length(), " channels (last dimension), needs >= 1");
  }
  const std::pair<const char*, const ov::Output<ov::Node>*> params[] = {{"weight", &weight}, {"bias", &bias}};
  for (const auto& [name, param] : params) {
    const ov::PartialShape& shape = param->get_partial_shape();
    if (shape.rank().is_dynamic()) continue;
    if (shape.size() != 1) OPENVINO_THROW(where, name, " must be (C), got shape ", shape);
    if (shape[0].is_static() && channels.is_static() && shape[0].get_length() != channels.get_length()) {
      OPENVINO_THROW(where, name, " has ", shape[0].get_length(), " values, X has ", channels.get_length(),
                     " channels (last dimension of X shape ", x_shape, ")");
    }
  }
}

// The graph of a LayerNorm of x (inputs checked by the functions above); the result has x's type.
ov::Output<ov::Node> layer_norm(const ov::frontend::NodeContext& node, ov::Output<ov::Node> x,
                                ov::Output<ov::Node> weight, ov::Output<ov::Node> bias, float epsilon) {
  // Where C or a length is unknown until run time, the lengths are not checked here: a mismatch fails in
  // Multiply or Add when the model runs, except a weight or bias of length 1, which they broadcast. (A Reshape to
  // X's last dimension as a run-time check does not work: OpenVINO's CPU plugin removes a 1-D to 1-D Reshape.)
  const ov::element::Type type = x.get_element_type();
  if (type == ov::element::f16) {
    for (auto* input : {&x, &weight, &bias}) {
      *input = node.mark_node(std::make_shared<ov::op::v0::Convert>(*input, ov::element::f32));
    }
  }
  // MVN sums the row in float32 from its raw values, so a row with a large mean and a small spread loses the
  // spread (offset 1e3, std 0.1, C = 768: 5e-4 of max|Y| off the float64 result). Layer normalisation does not
  // change when a constant is subtracted from the row, so the row's first value is subtracted first: the
  // differences are exact (Sterbenz) or as accurate as the spread, and the error drops to ~1e-7 of max|Y|. The
  // first value is taken with a Slice x[..., 0:1] (kept dims, so it broadcasts), not a Gather: OpenVINO's CPU
  // plugin dies of SIGFPE on a Gather along the last axis of a tensor with no rows (X of shape (0, C), found by
  // fuzzing), while the Slice handles it. The Gather + Subtract cost 20-50 % of the normalisation's time on the
  // CPU plugin (2 cores, C = 32..768); the Slice has not been timed.
  const auto i64_1d = [&node](int64_t value) {
    return node.mark_node(ov::op::v0::Constant::create(ov::element::i64, ov::Shape{1}, {value}));
  };
  const auto last_axis = i64_1d(-1);
  const auto shift =
      node.mark_node(std::make_shared<ov::op::v8::Slice>(x, i64_1d(0), i64_1d(1), i64_1d(1), last_axis));
  const auto shifted = node.mark_node(std::make_shared<ov::op::v1::Subtract>(x, shift));
  ov::Output<ov::Node> y = node.mark_node(
      std::make_shared<ov::op::v6::MVN>(shifted, last_axis, true, epsilon, ov::op::MVNEpsMode::INSIDE_SQRT));
  y = node.mark_node(std::make_shared<ov::op::v1::Multiply>(y, weight));
  y = node.mark_node(std::make_shared<ov::op::v1::Add>(y, bias));
  if (type == ov::element::f16) y = node.mark_node(std::make_shared<ov::op::v0::Convert>(y, ov::element::f16));
  return y;
}

ov::OutputVector convert_layer_norm(const ov::frontend::NodeContext& node) {
  const std::vector<const char*> names = {"X", "weight", "bias"};
  const std::string where = node_where(node, "LayerNorm");
  const ov::OutputVector inputs = required_inputs(node, where, names);
  common_float_type(where, inputs, names);
  const float epsilon = epsilon_attribute(node, where);
  check_layer_norm_shapes(where, inputs[0], inputs[1], inputs[2]);
  return {layer_norm(node, inputs[0], inputs[1], inputs[2], epsilon)};
}

ov::Output<ov::Node> f32_scalar(const ov::frontend::NodeContext& node, float value) {
  return node.mark_node(ov::op::v0::Constant::create(ov::element::f32, ov::Shape{}, {value}));
}

// `s`, an f32 sum of two f16 values, rounded to f16 (to nearest, ties to even) by arithmetic: a Convert to f16 and
// back would not do, because OpenVINO's CPU plugin runs an f16 graph in f32 unless the CPU computes f16 natively,
// and its ConvertPrecision pass then turns every Convert to f16 into a Convert to f32 and removes it.
// Veltkamp's split: c = 8193 s (as 8192 s + s), d = c - s, hi = c - d is s rounded to 24 - 13 = 11 significant
// bits, f16's precision, in f32 arithmetic. Sums below 2^-14 (f16's subnormal range) are multiples of 2^-24 with
// at most 10 significant bits, so they stay exact, as in f16. Every f16 value and every midpoint and quarter
// point between neighbouring normal f16 values, and 60 million random sums of two f16 values, were checked against
// numpy's rounding. The products are by powers of two (exact), so a fused multiply-add changes nothing. Where the
// plugin runs these ops in f16 (or bf16), the split degenerates to 0 or NaN; the result is then s itself, kept by
// the test |hi - s| <= 2^-11 |s|, which a correct rounding always passes. |hi| > 65504 (f16 overflows to inf) gives
// NaN, so that the LayerNorm of the row is NaN, as that of a row holding inf is. 13 elementwise ops, which the
// plugin fuses. round_to_11_bits is the split without the overflow test (VSSBlockTail's operand rounding uses it
// too).
ov::Output<ov::Node> round_to_11_bits(const ov::frontend::NodeContext& node, const ov::Output<ov::Node>& s) {
  const auto c = node.mark_node(std::make_shared<ov::op::v1::Add>(
      node.mark_node(std::make_shared<ov::op::v1::Multiply>(s, f32_scalar(node, 8192.0f))), s));
  const auto d = node.mark_node(std::make_shared<ov::op::v1::Subtract>(c, s));
  const auto hi = node.mark_node(std::make_shared<ov::op::v1::Subtract>(c, d));
  const auto error = node.mark_node(
      std::make_shared<ov::op::v0::Abs>(node.mark_node(std::make_shared<ov::op::v1::Subtract>(hi, s))));
  const auto bound = node.mark_node(std::make_shared<ov::op::v1::Multiply>(
      node.mark_node(std::make_shared<ov::op::v0::Abs>(s)), f32_scalar(node, std::ldexp(1.0f, -11))));
  return node.mark_node(std::make_shared<ov::op::v1::Select>(
      node.mark_node(std::make_shared<ov::op::v1::LessEqual>(error, bound)), hi, s));
}

ov::Output<ov::Node> round_to_f16(const ov::frontend::NodeContext& node, const ov::Output<ov::Node>& s) {
  const ov::Output<ov::Node> rounded = round_to_11_bits(node, s);
  const auto overflow = node.mark_node(std::make_shared<ov::op::v1::Greater>(
      node.mark_node(std::make_shared<ov::op::v0::Abs>(rounded)), f32_scalar(node, 65504.0f)));
  return node.mark_node(std::make_shared<ov::op::v1::Select>(
      overflow, f32_scalar(node, std::numeric_limits<float>::quiet_NaN()), rounded));
}

// AddLayerNorm (domain version 4): inputs X (rank >= 1, last dimension C), R (X's shape, no broadcasting), weight
// (C), bias (C), all f32 or all f16; attribute epsilon as LayerNorm's. Outputs Y = LayerNorm(S) and S = X + R, an
// Add in the input type (AutoBroadcastType::NONE), which the plugin rounds to that type. The LayerNorm above
// reads S as rounded, as the contract says: for f32 that is the Add's output; for f16 it is the Add's output
// rounded to f16 by round_to_f16, because the CPU plugin computes an f16 graph in f32 and so would pass the
// unrounded sum on. Shapes known when the model is read are compared here, so that the error names the op.
ov::OutputVector convert_add_layer_norm(const ov::frontend::NodeContext& node) {
  const std::vector<const char*> names = {"X", "R", "weight", "bias"};
  const std::string where = node_where(node, "AddLayerNorm");
  const ov::OutputVector inputs = required_inputs(node, where, names);
  const ov::element::Type type = common_float_type(where, inputs, names);
  const float epsilon = epsilon_attribute(node, where);
  check_layer_norm_shapes(where, inputs[0], inputs[2], inputs[3]);
  const ov::PartialShape& x_shape = inputs[0].get_partial_shape();
  const ov::PartialShape& r_shape = inputs[1].get_partial_shape();
  if (!x_shape.compatible(r_shape)) {
    OPENVINO_THROW(where, "R has shape ", r_shape, " but X has shape ", x_shape, " (R must have X's shape; ",
                   "no broadcasting)");
  }
  // Dimensions unknown until run time are not compared when the model runs: the CPU plugin broadcasts a
  // mismatched R of extent 1 despite AutoBroadcastType::NONE (a mismatch of other extents fails in the Add).
  const ov::Output<ov::Node> sum = node.mark_node(std::make_shared<ov::op::v1::Add>(
      inputs[0], inputs[1], ov::op::AutoBroadcastSpec(ov::op::AutoBroadcastType::NONE)));
  if (type != ov::element::f16) return {layer_norm(node, sum, inputs[2], inputs[3], epsilon), sum};
  // f16: the LayerNorm gets f32 inputs (so it converts nothing itself), the sum rounded to f16 precision.
  const auto to_f32 = [&node](const ov::Output<ov::Node>& input) -> ov::Output<ov::Node> {
    return node.mark_node(std::make_shared<ov::op::v0::Convert>(input, ov::element::f32));
  };
  const ov::Output<ov::Node> y =
      layer_norm(node, round_to_f16(node, to_f32(sum)), to_f32(inputs[2]), to_f32(inputs[3]), epsilon);
  return {node.mark_node(std::make_shared<ov::op::v0::Convert>(y, ov::element::f16)), sum};
}

// VSSBlockTail (domain version 7): inputs Y (..., D), R (..., C), out_norm_weight (D), out_norm_bias (D), out_proj
// (D, C), norm_weight (C), norm_bias (C), fc1_weight (C, H), fc1_bias (H), fc2_weight (H, C), fc2_bias (C), all
// f32 or all f16; attribute epsilon as LayerNorm's (both norms). One output Z (..., C). No custom op: the node
// becomes
//   a  = LayerNorm(Y; out_norm)            the LayerNorm conversion above
//   X1 = R + MatMul(a, out_proj)           Add without broadcasting
//   b  = LayerNorm(X1; norm)
//   g  = Gelu(MatMul(b, fc1_weight) + fc1_bias), erf mode
//   Z  = X1 + (MatMul(g, fc2_weight) + fc2_bias)
// For f16 the eleven inputs are converted to f32 first, everything is computed in f32 and Z is converted back
// once; the operands a, b and g of the three products are rounded to f16 by round_operand_to_f16, as the contract
// says (docs/ops.md: the kernels feed them to tensor cores), and X1 is not rounded. The rounding is arithmetic
// because the CPU plugin computes an f16 graph in f32 and removes Converts to f16 inside it (see round_to_f16).

// Any f32 value rounded to f16 and back, as a cast would: to nearest, ties to even, f16's subnormals, +-inf beyond
// f16's range, NaN kept. Values below 2^-14 (f16's subnormal range) are first rounded to a multiple of 2^-24 by
// adding and subtracting 0.75 (whose f32 spacing is 2^-24); the 0.75 (0 elsewhere) comes from a Select on the
// value rather than a Constant, as a precaution: OpenVINO's transformations merge chains of Adds of constants,
// which would cancel the step. Such a multiple has at most 10 significant bits, so the 11-bit split then keeps it.
// Checked in numpy's f32 arithmetic against numpy's f16 cast, for both signs: every f32 value below 2^-14 (the
// 0.75 step), every f32 in the binades [2^-14, 2^-13), [1, 2) and [2^15, 2^16) (the split, whose behaviour scales
// with the binade; the values >= 65520 differ there, as they round to 65536, and become inf through the overflow
// test) and 2.3 million random f32 values of f16's normal range. Where the plugin computes in f16 or bf16 the 0.75
// step destroys small values; its result is then kept only if it is within 2^-25 of the value (which a correct
// rounding always is), else the value itself.
ov::Output<ov::Node> round_operand_to_f16(const ov::frontend::NodeContext& node, const ov::Output<ov::Node>& s) {
  const auto magnitude = node.mark_node(std::make_shared<ov::op::v0::Abs>(s));
  const auto small =
      node.mark_node(std::make_shared<ov::op::v1::Less>(magnitude, f32_scalar(node, std::ldexp(1.0f, -14))));
  const auto magic =
      node.mark_node(std::make_shared<ov::op::v1::Select>(small, f32_scalar(node, 0.75f), f32_scalar(node, 0.0f)));
  const auto gridded = node.mark_node(std::make_shared<ov::op::v1::Subtract>(
      node.mark_node(std::make_shared<ov::op::v1::Add>(s, magic)), magic));
  const auto off = node.mark_node(
      std::make_shared<ov::op::v0::Abs>(node.mark_node(std::make_shared<ov::op::v1::Subtract>(gridded, s))));
  const auto kept = node.mark_node(std::make_shared<ov::op::v1::Select>(
      node.mark_node(std::make_shared<ov::op::v1::LessEqual>(off, f32_scalar(node, std::ldexp(1.0f, -25)))),
      gridded, s));
  const ov::Output<ov::Node> rounded = round_to_11_bits(node, kept);
  const auto overflow = node.mark_node(std::make_shared<ov::op::v1::Greater>(
      node.mark_node(std::make_shared<ov::op::v0::Abs>(rounded)), f32_scalar(node, 65504.0f)));
  const float inf = std::numeric_limits<float>::infinity();
  const auto signed_inf = node.mark_node(std::make_shared<ov::op::v1::Select>(
      node.mark_node(std::make_shared<ov::op::v1::Greater>(s, f32_scalar(node, 0.0f))), f32_scalar(node, inf),
      f32_scalar(node, -inf)));
  return node.mark_node(std::make_shared<ov::op::v1::Select>(overflow, signed_inf, rounded));
}

// The shapes known when the model is read: Y and R of rank >= 1 with the same leading dimensions, the parameters
// of rank 1 or 2 with lengths D (Y's last dimension), C (R's last dimension) and H (fc1_weight's last dimension;
// a width unknown there is taken from the first parameter that has it), and 1 <= D, H <= 1024, 1 <= C <= 512
// (the contract's limits, those of the kernels). Widths unknown until run time are not checked: a mismatch then
// fails in MatMul or Add, except a bias or norm parameter of length 1, which they broadcast.
void check_vss_tail_shapes(const std::string& where, const ov::OutputVector& inputs,
                           const std::vector<const char*>& names) {
  const ov::PartialShape& y = inputs[0].get_partial_shape();
  const ov::PartialShape& r = inputs[1].get_partial_shape();
  if (y.rank().is_static() && y.size() == 0) OPENVINO_THROW(where, "Y must have rank >= 1 (..., D), got a scalar");
  if (r.rank().is_static() && r.size() == 0) OPENVINO_THROW(where, "R must have rank >= 1 (..., C), got a scalar");
  if (y.rank().is_static() && r.rank().is_static()) {
    bool same = y.size() == r.size();
    for (size_t i = 0; same && i + 1 < y.size(); ++i) same = y[i].compatible(r[i]);
    if (!same) {
      OPENVINO_THROW(where, "R has shape ", r, " but Y has shape ", y, " (R must have Y's leading dimensions: Y is ",
                     "(..., D), R (..., C))");
    }
  }
  // Symbols of the parameters' axes: 0 = D, 1 = C, 2 = H.
  const char* symbols[] = {"D", "C", "H"};
  const std::vector<std::vector<int>> layout = {{}, {}, {0}, {0}, {0, 1}, {1}, {1}, {1, 2}, {2}, {2, 1}, {1}};
  ov::Dimension width[3];
  std::string source[3];
  const auto take = [&](int symbol, const ov::Dimension& dim, const std::string& from) {
    if (width[symbol].is_dynamic() && dim.is_static()) {
      width[symbol] = dim;
      source[symbol] = from;
    }
  };
  if (y.rank().is_static()) take(0, y[y.size() - 1], "Y's last dimension");
  if (r.rank().is_static()) take(1, r[r.size() - 1], "R's last dimension");
  for (size_t i = 2; i < inputs.size(); ++i) {
    const ov::PartialShape& shape = inputs[i].get_partial_shape();
    if (shape.rank().is_dynamic()) continue;
    if (shape.size() != layout[i].size()) {
      std::string wanted;
      for (int symbol : layout[i]) wanted += (wanted.empty() ? "" : ", ") + std::string(symbols[symbol]);
      OPENVINO_THROW(where, names[i], " must be (", wanted, "), got shape ", shape);
    }
  }
  // H from fc1_weight first, then D, C and H from the parameters in input order.
  const ov::PartialShape& fc1 = inputs[7].get_partial_shape();
  if (fc1.rank().is_static()) take(2, fc1[1], "fc1_weight's last dimension");
  for (size_t i = 2; i < inputs.size(); ++i) {
    const ov::PartialShape& shape = inputs[i].get_partial_shape();
    if (shape.rank().is_dynamic()) continue;
    for (size_t axis = 0; axis < layout[i].size(); ++axis) {
      take(layout[i][axis], shape[axis], std::string(names[i]) + (layout[i].size() == 1 ? "'s length" :
                                                                  axis == 0 ? "'s first dimension" : "'s last dimension"));
    }
  }
  for (size_t i = 2; i < inputs.size(); ++i) {
    const ov::PartialShape& shape = inputs[i].get_partial_shape();
    if (shape.rank().is_dynamic()) continue;
    bool match = true;
    for (size_t axis = 0; axis < layout[i].size(); ++axis) {
      const ov::Dimension& expected = width[layout[i][axis]];
      if (shape[axis].is_static() && expected.is_static() && shape[axis].get_length() != expected.get_length()) {
        match = false;
      }
    }
    if (match) continue;
    std::string wanted, values, sources;
    for (int symbol : layout[i]) {
      const bool first = wanted.empty();
      wanted += (first ? "" : ", ") + std::string(symbols[symbol]);
      values += (first ? "" : ", ") + (width[symbol].is_static() ? std::to_string(width[symbol].get_length()) : "?");
      if (width[symbol].is_static()) {
        sources += (sources.empty() ? "" : ", ") + std::string(symbols[symbol]) + " from " + source[symbol];
      }
    }
    OPENVINO_THROW(where, names[i], " has shape ", shape, ", expected (", wanted, ") = (", values, ") (", sources,
                   ")");
  }
  const int64_t limits[] = {SSM_VSS_TAIL_MAX_WIDE, SSM_VSS_TAIL_MAX_CHANNELS, SSM_VSS_TAIL_MAX_WIDE};
  for (int symbol = 0; symbol < 3; ++symbol) {
    if (width[symbol].is_static() && (width[symbol].get_length() < 1 || width[symbol].get_length() > limits[symbol])) {
      OPENVINO_THROW(where, symbols[symbol], " = ", width[symbol].get_length(), " (", source[symbol],
                     ") is outside 1..", limits[symbol], ", the op's limit");
    }
  }
}

ov::OutputVector convert_vss_block_tail(const ov::frontend::NodeContext& node) {
  const std::vector<const char*> names = {"Y",         "R",          "out_norm_weight", "out_norm_bias",
                                          "out_proj",  "norm_weight", "norm_bias",      "fc1_weight",
                                          "fc1_bias",  "fc2_weight",  "fc2_bias"};
  const std::string where = node_where(node, "VSSBlockTail");
  ov::OutputVector in = required_inputs(node, where, names);
  const ov::element::Type type = common_float_type(where, in, names);
  const float epsilon = epsilon_attribute(node, where);
  check_vss_tail_shapes(where, in, names);
  const bool half = type == ov::element::f16;
  if (half) {
    for (auto& input : in) input = node.mark_node(std::make_shared<ov::op::v0::Convert>(input, ov::element::f32));
  }
  const auto operand = [&node, half](const ov::Output<ov::Node>& value) {
    return half ? round_operand_to_f16(node, value) : value;
  };
  const auto matmul = [&node](const ov::Output<ov::Node>& x, const ov::Output<ov::Node>& w) -> ov::Output<ov::Node> {
    return node.mark_node(std::make_shared<ov::op::v0::MatMul>(x, w, false, false));
  };
  const auto add = [&node](const ov::Output<ov::Node>& x, const ov::Output<ov::Node>& y, bool broadcast) {
    return node.mark_node(std::make_shared<ov::op::v1::Add>(
        x, y, ov::op::AutoBroadcastSpec(broadcast ? ov::op::AutoBroadcastType::NUMPY : ov::op::AutoBroadcastType::NONE)));
  };
  const ov::Output<ov::Node> a = operand(layer_norm(node, in[0], in[2], in[3], epsilon));
  const ov::Output<ov::Node> x1 = add(in[1], matmul(a, in[4]), false);
  const ov::Output<ov::Node> b = operand(layer_norm(node, x1, in[5], in[6], epsilon));
  const ov::Output<ov::Node> h = add(matmul(b, in[7]), in[8], true);
  const ov::Output<ov::Node> g =
      operand(node.mark_node(std::make_shared<ov::op::v7::Gelu>(h, ov::op::GeluApproximationMode::ERF)));
  ov::Output<ov::Node> z = add(x1, add(matmul(g, in[9]), in[10], true), false);
  if (half) z = node.mark_node(std::make_shared<ov::op::v0::Convert>(z, ov::element::f16));
  return {z};
}

}  // namespace

}  // namespace ssmpose_ov

extern "C" {
OPENVINO_EXTENSION_C_API int ssmpose_ov_version() { return SSMPOSE_OV_LIBRARY_VERSION; }
OPENVINO_EXTENSION_C_API int ssmpose_ov_kernels_abi_version() { return ssm_abi_version(); }
// The OpenVINO release the library was compiled against ("2026.4.1"); extensions must run on that release.
OPENVINO_EXTENSION_C_API const char* ssmpose_ov_openvino_version() {
  return SSMPOSE_OV_STR(OPENVINO_VERSION_MAJOR) "." SSMPOSE_OV_STR(OPENVINO_VERSION_MINOR) "." SSMPOSE_OV_STR(
      OPENVINO_VERSION_PATCH);
}
}

OPENVINO_CREATE_EXTENSIONS(std::vector<ov::Extension::Ptr>({
    std::make_shared<ov::OpExtension<ssmpose_ov::SelectiveScan>>(),
    std::make_shared<ov::OpExtension<ssmpose_ov::SelectiveScan2D>>(),
    std::make_shared<ov::OpExtension<ssmpose_ov::SelectiveScan2DProj>>(),
    std::make_shared<ov::OpExtension<ssmpose_ov::DeformAggregate>>(),
    std::make_shared<ov::frontend::onnx::ConversionExtension>("SelectiveScan", "ssmpose",
                                                              ssmpose_ov::convert_selective_scan),
    std::make_shared<ov::frontend::onnx::ConversionExtension>("SelectiveScan2D", "ssmpose",
                                                              ssmpose_ov::convert_selective_scan_2d),
    std::make_shared<ov::frontend::onnx::ConversionExtension>("DeformAggregate", "ssmpose",
                                                              ssmpose_ov::convert_deform_aggregate),
    std::make_shared<ov::frontend::onnx::ConversionExtension>("LayerNorm", "ssmpose", ssmpose_ov::convert_layer_norm),
    std::make_shared<ov::frontend::onnx::ConversionExtension>("AddLayerNorm", "ssmpose",
                                                              ssmpose_ov::convert_add_layer_norm),
    std::make_shared<ov::frontend::onnx::ConversionExtension>("VSSBlockTail", "ssmpose",
                                                              ssmpose_ov::convert_vss_block_tail),
    std::make_shared<ov::frontend::onnx::ConversionExtension>("MultiKernelDepthwiseConv", "ssmpose",
                                                              ssmpose_ov::convert_multi_kernel_depthwise_conv),
}));
