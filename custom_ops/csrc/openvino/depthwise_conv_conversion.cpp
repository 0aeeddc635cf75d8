// ONNX frontend conversion of ssmpose::MultiKernelDepthwiseConv (domain version 4; docs/ops.md) to OpenVINO's own
// ops: Transpose to NCHW, VariadicSplit into the channel groups, per group a GroupConvolution (one channel per
// group, stride 1, pads k//2) with the central k x k taps of that group's weights (a Slice of the weight input,
// which stays an input: it is never read into a constant here) plus the group's bias, Concat, the channel shuffle
// back to channel-last (Transpose, then Reshape, Transpose, Reshape) and Gelu (erf form, +inf kept) when asked.
//
// float16 inputs are converted to float32 first and the result back, so that the sums and the activation are
// float32 and the result is rounded once, as the contract says (the CPU plugin runs the float32 graph with its own
// convolution kernels). Malformed nodes are refused here, when the model is read.
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "conversions.hpp"
#include "openvino/op/add.hpp"
#include "openvino/op/concat.hpp"
#include "openvino/op/constant.hpp"
#include "openvino/op/convert.hpp"
#include "openvino/op/divide.hpp"
#include "openvino/op/equal.hpp"
#include "openvino/op/gather.hpp"
#include "openvino/op/gelu.hpp"
#include "openvino/op/group_conv.hpp"
#include "openvino/op/reshape.hpp"
#include "openvino/op/select.hpp"
#include "openvino/op/shape_of.hpp"
#include "openvino/op/slice.hpp"
#include "openvino/op/subtract.hpp"
#include "openvino/op/transpose.hpp"
#include "openvino/op/variadic_split.hpp"

namespace ssmpose_ov {

namespace {

constexpr const char* kOp = "MultiKernelDepthwiseConv";
constexpr size_t kMaxGroups = 16;     // docs/ops.md: 1 to 16 channel groups
constexpr int64_t kMaxKernel = 15;    // K = kernel_max, odd, <= 15

std::vector<int64_t> ints_attribute(const ov::frontend::NodeContext& node, const std::string& where,
                                    const char* name) {
  if (!node.has_attribute(name)) OPENVINO_THROW(where, "missing required attribute ", name);
  const ov::Any value = node.get_attribute_as_any(name);
  if (!value.is<std::vector<int64_t>>()) {
    OPENVINO_THROW(where, "attribute ", name, " must be a list of ints, got ", describe_attribute(value));
  }
  return value.as<std::vector<int64_t>>();
}

std::shared_ptr<ov::Node> i64_constant(const ov::frontend::NodeContext& node, const ov::Shape& shape,
                                       const std::vector<int64_t>& values) {
  return node.mark_node(ov::op::v0::Constant::create(ov::element::i64, shape, values));
}

struct Attributes {
  std::vector<int64_t> kernel_sizes, group_channels;
  int64_t channels = 0;  // sum of group_channels
  int64_t shuffle_groups = 1;
  bool gelu = false;
};

Attributes read_attributes(const ov::frontend::NodeContext& node, const std::string& where) {
  Attributes a;
  a.kernel_sizes = ints_attribute(node, where, "kernel_sizes");
  a.group_channels = ints_attribute(node, where, "group_channels");
  if (a.kernel_sizes.size() != a.group_channels.size()) {
    OPENVINO_THROW(where, "kernel_sizes has ", a.kernel_sizes.size(), " values but group_channels has ",
                   a.group_channels.size(), " (one kernel size per channel group)");
  }
  if (a.kernel_sizes.empty() || a.kernel_sizes.size() > kMaxGroups) {
    OPENVINO_THROW(where, "needs 1 to ", kMaxGroups, " channel groups, got ", a.kernel_sizes.size());
  }
  for (size_t g = 0; g < a.kernel_sizes.size(); ++g) {
    const int64_t k = a.kernel_sizes[g], c = a.group_channels[g];
    if (k < 1 || k > kMaxKernel || k % 2 == 0) {
      OPENVINO_THROW(where, "kernel_sizes[", g, "] = ", k, " must be odd and between 1 and ", kMaxKernel);
    }
    if (c < 1) OPENVINO_THROW(where, "group_channels[", g, "] = ", c, " must be >= 1");
    if (c > std::numeric_limits<int64_t>::max() - a.channels) {
      OPENVINO_THROW(where, "the sum of group_channels overflows int64");
    }
    a.channels += c;
  }

  if (node.has_attribute("shuffle_groups")) {
    const ov::Any value = node.get_attribute_as_any("shuffle_groups");
    if (!value.is<int64_t>()) {
      OPENVINO_THROW(where, "attribute shuffle_groups must be an int, got ", describe_attribute(value));
    }
    a.shuffle_groups = value.as<int64_t>();
  }
  if (a.shuffle_groups < 1) OPENVINO_THROW(where, "shuffle_groups must be >= 1, got ", a.shuffle_groups);
  if (a.channels % a.shuffle_groups != 0) {
    OPENVINO_THROW(where, "shuffle_groups = ", a.shuffle_groups, " does not divide the ", a.channels,
                   " channels (sum of group_channels)");
  }

  if (node.has_attribute("activation")) {
    const ov::Any value = node.get_attribute_as_any("activation");
    if (!value.is<std::string>()) {
      OPENVINO_THROW(where, "attribute activation must be a string, got ", describe_attribute(value));
    }
    const std::string activation = value.as<std::string>();
    if (activation != "none" && activation != "gelu") {
      OPENVINO_THROW(where, "activation must be \"none\" or \"gelu\", got \"", activation, "\"");
    }
    a.gelu = activation == "gelu";
  }
  return a;
}

// The shapes known when the model is read: ranks, C against the sum of group_channels, a square odd weight kernel
// K <= 15 and every group's kernel size <= K. Returns K, or -1 when it is not known until run time.
int64_t check_shapes(const std::string& where, const ov::OutputVector& inputs, const Attributes& a) {
  const ov::PartialShape& x = inputs[0].get_partial_shape();
  const ov::PartialShape& w = inputs[1].get_partial_shape();
  const ov::PartialShape& b = inputs[2].get_partial_shape();
  if (x.rank().is_static() && x.size() != 4) {
    OPENVINO_THROW(where, "X must be (B, H, W, C), rank 4, got shape ", x);
  }
  if (w.rank().is_static() && w.size() != 3) {
    OPENVINO_THROW(where, "weight must be (C, K, K), rank 3, got shape ", w);
  }
  if (b.rank().is_static() && b.size() != 1) OPENVINO_THROW(where, "bias must be (C), rank 1, got shape ", b);
  if (x.rank().is_static() && x[3].is_static() && x[3].get_length() != a.channels) {
    OPENVINO_THROW(where, "X has ", x[3].get_length(), " channels (last dimension) but group_channels sum to ",
                   a.channels);
  }
  if (w.rank().is_static() && w[0].is_static() && w[0].get_length() != a.channels) {
    OPENVINO_THROW(where, "weight has ", w[0].get_length(), " channels (first dimension) but group_channels ",
                   "sum to ", a.channels);
  }
  if (b.rank().is_static() && b[0].is_static() && b[0].get_length() != a.channels) {
    OPENVINO_THROW(where, "bias has ", b[0].get_length(), " values but group_channels sum to ", a.channels);
  }
  if (w.rank().is_dynamic()) return -1;
  if (w[1].is_static() && w[2].is_static() && w[1].get_length() != w[2].get_length()) {
    OPENVINO_THROW(where, "weight must be (C, K, K) with a square kernel, got shape ", w);
  }
  const ov::Dimension k_dim = w[2].is_static() ? w[2] : w[1];
  if (k_dim.is_dynamic()) return -1;
  const int64_t kernel_max = k_dim.get_length();
  if (kernel_max < 1 || kernel_max > kMaxKernel || kernel_max % 2 == 0) {
    OPENVINO_THROW(where, "weight has kernel size K = ", kernel_max, " (shape ", w, "), which must be odd and ",
                   "between 1 and ", kMaxKernel);
  }
  for (size_t g = 0; g < a.kernel_sizes.size(); ++g) {
    if (a.kernel_sizes[g] > kernel_max) {
      OPENVINO_THROW(where, "kernel_sizes[", g, "] = ", a.kernel_sizes[g], " is larger than the weight's kernel ",
                     "size K = ", kernel_max, " (shape ", w, ")");
    }
  }
  return kernel_max;
}

}  // namespace

// MultiKernelDepthwiseConv (domain version 4): inputs X (B, H, W, C), weight (C, K, K), bias (C), all f32 or all
// f16; attributes kernel_sizes and group_channels (ints, required), shuffle_groups (int, default 1), activation
// ("none" or "gelu", default "none"); plugin_version / plugin_namespace are for TensorRT and ignored. Like the
// other conversions, it is accepted whatever ssmpose version the graph imports (the frontend does not say).
ov::OutputVector convert_multi_kernel_depthwise_conv(const ov::frontend::NodeContext& node) {
  const std::vector<const char*> names = {"X", "weight", "bias"};
  const std::string where = node_where(node, kOp);
  const ov::OutputVector inputs = required_inputs(node, where, names);
  const ov::element::Type type = common_float_type(where, inputs, names);
  const Attributes a = read_attributes(node, where);
  const int64_t kernel_max = check_shapes(where, inputs, a);

  ov::Output<ov::Node> x = inputs[0], weight = inputs[1], bias = inputs[2];
  if (type == ov::element::f16) {
    for (auto* input : {&x, &weight, &bias}) {
      *input = node.mark_node(std::make_shared<ov::op::v0::Convert>(*input, ov::element::f32));
    }
  }
  x = node.mark_node(std::make_shared<ov::op::v1::Transpose>(x, i64_constant(node, {4}, {0, 3, 1, 2})));

  const size_t groups = a.kernel_sizes.size();
  ov::OutputVector x_parts{x}, weight_parts{weight}, bias_parts{bias};
  if (groups > 1) {
    const auto lengths = i64_constant(node, {groups}, a.group_channels);
    x_parts = node.mark_node(std::make_shared<ov::op::v1::VariadicSplit>(x, i64_constant(node, {}, {1}), lengths))
                  ->outputs();
    const auto axis0 = i64_constant(node, {}, {0});
    weight_parts = node.mark_node(std::make_shared<ov::op::v1::VariadicSplit>(weight, axis0, lengths))->outputs();
    bias_parts = node.mark_node(std::make_shared<ov::op::v1::VariadicSplit>(bias, axis0, lengths))->outputs();
  }

  // K // 2, the index of the central tap: a constant, or from the weight's shape when K is known only at run time
  // (then a kernel size > K, or an even K, makes the Reshape below fail when the model runs).
  ov::Output<ov::Node> half_kernel;
  if (kernel_max < 0) {
    const auto shape = node.mark_node(std::make_shared<ov::op::v3::ShapeOf>(weight, ov::element::i64));
    const auto k = node.mark_node(
        std::make_shared<ov::op::v8::Gather>(shape, i64_constant(node, {1}, {2}), i64_constant(node, {}, {0})));
    half_kernel = node.mark_node(std::make_shared<ov::op::v1::Divide>(k, i64_constant(node, {1}, {2})));
  }
  const auto tap_axes = i64_constant(node, {2}, {1, 2});
  const auto tap_steps = i64_constant(node, {2}, {1, 1});

  ov::OutputVector outputs;
  for (size_t g = 0; g < groups; ++g) {
    const int64_t k = a.kernel_sizes[g], r = k / 2, c = a.group_channels[g];
    // weight[group channels, R - r : R + r + 1, R - r : R + r + 1]
    ov::Output<ov::Node> start, stop;
    if (kernel_max >= 0) {
      start = i64_constant(node, {2}, {kernel_max / 2 - r, kernel_max / 2 - r});
      stop = i64_constant(node, {2}, {kernel_max / 2 + r + 1, kernel_max / 2 + r + 1});
    } else {
      const auto lo = node.mark_node(std::make_shared<ov::op::v1::Subtract>(half_kernel, i64_constant(node, {1}, {r})));
      const auto hi = node.mark_node(std::make_shared<ov::op::v1::Add>(half_kernel, i64_constant(node, {1}, {r + 1})));
      start = node.mark_node(std::make_shared<ov::op::v0::Concat>(ov::OutputVector{lo, lo}, 0));
      stop = node.mark_node(std::make_shared<ov::op::v0::Concat>(ov::OutputVector{hi, hi}, 0));
    }
    const auto taps =
        node.mark_node(std::make_shared<ov::op::v8::Slice>(weight_parts[g], start, stop, tap_steps, tap_axes));
    // OpenVINO's GroupConvolution filters: [GROUPS, C_OUT per group, C_IN per group, kH, kW] = [c, 1, 1, k, k].
    const auto filters = node.mark_node(
        std::make_shared<ov::op::v1::Reshape>(taps, i64_constant(node, {5}, {c, 1, 1, k, k}), false));
    ov::Output<ov::Node> z = node.mark_node(std::make_shared<ov::op::v1::GroupConvolution>(
        x_parts[g], filters, ov::Strides{1, 1}, ov::CoordinateDiff{r, r}, ov::CoordinateDiff{r, r},
        ov::Strides{1, 1}));
    const auto bias_nchw = node.mark_node(
        std::make_shared<ov::op::v1::Reshape>(bias_parts[g], i64_constant(node, {4}, {1, c, 1, 1}), false));
    outputs.push_back(node.mark_node(std::make_shared<ov::op::v1::Add>(z, bias_nchw)));
  }
  ov::Output<ov::Node> z = groups > 1 ? node.mark_node(std::make_shared<ov::op::v0::Concat>(outputs, 1))->output(0)
                                      : outputs[0];

  // Back to channel-last, (B, H, W, C), then the shuffle Y[b, h, w, q*S + s] = Z[b, h, w, s*P + q]: as
  // (B, H, W, S, P), transposed to (B, H, W, P, S), as (B, H, W, C). Both Reshapes copy B, H, W from their input
  // with special_zero (0 in the target), so the targets are constants: no -1 (not inferable when B = 0) and no
  // target computed from X's ShapeOf, which the CPU plugin evaluates in int32 (X of shape (0, 1, 2^40, 2) gave
  // (0, 1, 2^31 - 1, 2); found by fuzzing).
  z = node.mark_node(std::make_shared<ov::op::v1::Transpose>(z, i64_constant(node, {4}, {0, 2, 3, 1})));
  if (a.shuffle_groups > 1) {
    const int64_t per_group = a.channels / a.shuffle_groups;
    z = node.mark_node(std::make_shared<ov::op::v1::Reshape>(
        z, i64_constant(node, {5}, {0, 0, 0, a.shuffle_groups, per_group}), true));
    z = node.mark_node(std::make_shared<ov::op::v1::Transpose>(z, i64_constant(node, {5}, {0, 1, 2, 4, 3})));
    z = node.mark_node(
        std::make_shared<ov::op::v1::Reshape>(z, i64_constant(node, {4}, {0, 0, 0, a.channels}), true));
  }
  if (a.gelu) {
    // OpenVINO's Gelu gives NaN for +inf, where the contract's 0.5 z (1 + erf(z / sqrt 2)) (and the float64
    // reference, and the ONNX Runtime library) give +inf; so +inf passes through a Select. (-inf gives NaN, -inf
    // times 0, in all of them; NaN stays NaN.)
    const auto gelu = node.mark_node(std::make_shared<ov::op::v7::Gelu>(z, ov::op::GeluApproximationMode::ERF));
    const auto inf = node.mark_node(
        ov::op::v0::Constant::create(ov::element::f32, ov::Shape{}, {std::numeric_limits<float>::infinity()}));
    z = node.mark_node(
        std::make_shared<ov::op::v1::Select>(node.mark_node(std::make_shared<ov::op::v1::Equal>(z, inf)), z, gelu));
  }
  if (type == ov::element::f16) z = node.mark_node(std::make_shared<ov::op::v0::Convert>(z, ov::element::f16));
  return {z};
}

}  // namespace ssmpose_ov
