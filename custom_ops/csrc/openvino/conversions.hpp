// ONNX frontend conversions of `ssmpose` nodes that become OpenVINO's own ops (no custom op), and the input
// checks they share. LayerNorm and AddLayerNorm are in extension.cpp; MultiKernelDepthwiseConv in
// depthwise_conv_conversion.cpp. Errors start with "ssmpose <op> node '<name>': " and say what is wrong.
#ifndef SSMPOSE_OV_CONVERSIONS_HPP
#define SSMPOSE_OV_CONVERSIONS_HPP

#include <cstddef>
#include <string>
#include <vector>

#include "openvino/core/any.hpp"
#include "openvino/core/node.hpp"
#include "openvino/frontend/node_context.hpp"

namespace ssmpose_ov {

// "ssmpose <op> node '<name>': ", the start of every error message about the node.
std::string node_where(const ov::frontend::NodeContext& node, const char* op);

// Whether the node leaves input `index` out (an empty name) or has fewer inputs.
bool omitted(const ov::frontend::NodeContext& node, size_t index);

// The node's inputs, which must be exactly `names` (in that order), none left out; otherwise an error that
// lists them ("expects 3 inputs (X, weight, bias), got 2", "required input 2 (bias) is missing").
ov::OutputVector required_inputs(const ov::frontend::NodeContext& node, const std::string& where,
                                 const std::vector<const char*>& names);

// The element type of inputs[0], which must be f32 or f16 and that of every other input too.
ov::element::Type common_float_type(const std::string& where, const ov::OutputVector& inputs,
                                    const std::vector<const char*>& names);

// What an attribute value is, in words ("an int", "a list of floats", ...), for error messages.
std::string describe_attribute(const ov::Any& value);

ov::OutputVector convert_multi_kernel_depthwise_conv(const ov::frontend::NodeContext& node);

}  // namespace ssmpose_ov

#endif  // SSMPOSE_OV_CONVERSIONS_HPP
