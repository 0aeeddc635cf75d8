#include "ops.hpp"

#include <cstdlib>
#include <new>
#include <string>
#include <vector>

#include "ssmpose_kernels.h"

namespace ssmpose_ov {

namespace {

constexpr const char* kScanInputs[] = {"u", "delta", "A", "Bs", "Cs", "Ds", "delta_bias"};
constexpr const char* kScan2DInputs[] = {"x", "delta", "A", "Bs", "Cs", "Ds", "delta_bias"};

Shape partial_to_shape(const ov::PartialShape& ps) {
  Shape s;
  s.rank_known = ps.rank().is_static();
  if (!s.rank_known) return s;
  for (const ov::Dimension& d : ps) s.dims.push_back(d.is_static() ? d.get_length() : kUnknown);
  return s;
}

Shape tensor_shape(const ov::Tensor& t) {
  Shape s;
  for (size_t d : t.get_shape()) s.dims.push_back(static_cast<int64_t>(d));
  return s;
}

ov::PartialShape to_partial(const std::vector<int64_t>& dims) {
  std::vector<ov::Dimension> out;
  for (int64_t d : dims) out.push_back(d == kUnknown ? ov::Dimension::dynamic() : ov::Dimension(d));
  return ov::PartialShape(out);
}

bool ssm_dtype_of(const ov::element::Type& type, int32_t* dtype) {
  if (type == ov::element::f32) {
    *dtype = SSM_FLOAT32;
  } else if (type == ov::element::f16) {
    *dtype = SSM_FLOAT16;
  } else {
    return false;
  }
  return true;
}

// The common element type of the inputs (f32 or f16; dynamic while unknown), checked on the node.
ov::element::Type common_float_type(ov::Node* node, const std::vector<std::string>& names) {
  ov::element::Type type = ov::element::dynamic;
  for (size_t i = 0; i < node->get_input_size(); ++i) {
    const ov::element::Type t = node->get_input_element_type(i);
    NODE_VALIDATION_CHECK(node, ov::element::Type::merge(type, type, t), "input ", names[i], " has element type ",
                          t, " but the first input has ", type, "; all inputs must share one type");
  }
  int32_t dtype = 0;
  NODE_VALIDATION_CHECK(node, type.is_dynamic() || ssm_dtype_of(type, &dtype), "element type ", type,
                        " is not supported; supported: f32, f16");
  return type;
}

// Threads for the CPU kernels: $SSMPOSE_NUM_THREADS when set (as for the ONNX Runtime library), else all.
int cpu_threads() {
  const char* env = std::getenv("SSMPOSE_NUM_THREADS");
  if (env == nullptr || *env == '\0') return 0;
  char* end = nullptr;
  const long n = std::strtol(env, &end, 10);
  return (end == env || n <= 0 || n > 4096) ? 0 : static_cast<int>(n);
}

[[noreturn]] void kernel_failed(const ov::Node* node, const char* fn, int status) {
  OPENVINO_THROW("ssmpose ", node->get_type_name(), " node '", node->get_friendly_name(), "': ", fn,
                 " failed with status ", status, " (", ssm_status_string(status), ")");
}

// Sizes (allocates) an output tensor; an allocation failure names the op and the shape.
void set_output_shape(const ov::Node* node, ov::Tensor& output, const ov::Shape& shape) {
  try {
    output.set_shape(shape);
  } catch (const std::bad_alloc&) {
    OPENVINO_THROW("ssmpose ", node->get_type_name(), " node '", node->get_friendly_name(),
                   "': cannot allocate the output of shape ", shape);
  }
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// SelectiveScan

SelectiveScan::SelectiveScan(const ov::OutputVector& inputs, int64_t delta_softplus, bool has_ds,
                             bool has_delta_bias)
    : Op(inputs), m_delta_softplus(delta_softplus), m_has_ds(has_ds), m_has_delta_bias(has_delta_bias) {
  constructor_validate_and_infer_types();
}

static std::vector<std::string> scan_input_names(bool has_ds, bool has_delta_bias) {
  std::vector<std::string> names(kScanInputs, kScanInputs + 5);
  if (has_ds) names.push_back("Ds");
  if (has_delta_bias) names.push_back("delta_bias");
  return names;
}

void SelectiveScan::validate_and_infer_types() {
  const std::vector<std::string> names = scan_input_names(m_has_ds, m_has_delta_bias);
  NODE_VALIDATION_CHECK(this, get_input_size() == names.size(), "expects ", names.size(),
                        " inputs (u, delta, A, Bs, Cs", m_has_ds ? ", Ds" : "", m_has_delta_bias ? ", delta_bias" : "",
                        "), got ", get_input_size());
  NODE_VALIDATION_CHECK(this, m_delta_softplus == 0 || m_delta_softplus == 1,
                        "attribute delta_softplus must be 0 or 1, got ", m_delta_softplus);
  const ov::element::Type type = common_float_type(this, names);
  std::vector<Shape> shapes;
  for (size_t i = 0; i < get_input_size(); ++i) shapes.push_back(partial_to_shape(get_input_partial_shape(i)));
  const std::string problem = check_selective_scan(shapes, names);
  NODE_VALIDATION_CHECK(this, problem.empty(), problem);
  set_output_type(0, type, get_input_partial_shape(0));
}

std::shared_ptr<ov::Node> SelectiveScan::clone_with_new_inputs(const ov::OutputVector& inputs) const {
  return std::make_shared<SelectiveScan>(inputs, m_delta_softplus, m_has_ds, m_has_delta_bias);
}

bool SelectiveScan::visit_attributes(ov::AttributeVisitor& visitor) {
  visitor.on_attribute("delta_softplus", m_delta_softplus);
  visitor.on_attribute("has_ds", m_has_ds);
  visitor.on_attribute("has_delta_bias", m_has_delta_bias);
  return true;
}

bool SelectiveScan::has_evaluate() const {
  int32_t dtype = 0;
  return ssm_dtype_of(get_input_element_type(0), &dtype);
}

bool SelectiveScan::evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const {
  const std::vector<std::string> names = scan_input_names(m_has_ds, m_has_delta_bias);
  std::vector<Shape> shapes;
  for (const ov::Tensor& t : inputs) shapes.push_back(tensor_shape(t));
  const std::string problem = check_selective_scan(shapes, names);
  if (!problem.empty()) {
    OPENVINO_THROW("ssmpose SelectiveScan node '", get_friendly_name(), "': ", problem);
  }
  int32_t dtype = 0;
  if (!ssm_dtype_of(inputs[0].get_element_type(), &dtype)) {
    OPENVINO_THROW("ssmpose SelectiveScan node '", get_friendly_name(), "': element type ",
                   inputs[0].get_element_type(), " is not supported; supported: f32, f16");
  }
  set_output_shape(this, outputs[0], inputs[0].get_shape());
  if (outputs[0].get_size() == 0) return true;  // B, G*D or L is 0: nothing to compute

  const std::vector<int64_t>& u = shapes[0].dims;
  ssm_scan_shape shape{};
  shape.batch = u[0];
  shape.groups = shapes[3].dims[1];
  shape.dim = u[1] / shape.groups;
  shape.dstate = shapes[3].dims[2];
  shape.length = u[2];
  shape.delta_softplus = static_cast<int32_t>(m_delta_softplus);
  shape.dtype = dtype;
  size_t next = 5;
  const void* ds = m_has_ds ? inputs[next++].data() : nullptr;
  const void* bias = m_has_delta_bias ? inputs[next++].data() : nullptr;
  const int status = ssm_selective_scan_fwd_cpu(&shape, inputs[0].data(), inputs[1].data(), inputs[2].data(),
                                                inputs[3].data(), inputs[4].data(), ds, bias, outputs[0].data(),
                                                cpu_threads());
  if (status != SSM_OK) kernel_failed(this, "ssm_selective_scan_fwd_cpu", status);
  return true;
}

// ------------------------------------------------------------------------------------------------
// SelectiveScan2D (domain version 2). Argument mapping and words as the ONNX Runtime adapter
// (csrc/onnxruntime/selective_scan_2d_op.cpp).

namespace {

using Scan2DRule = std::string (*)(const std::vector<Shape>&, const std::vector<std::string>&);

std::string joined(const std::vector<std::string>& names) {
  std::string out;
  for (const std::string& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

// What both SelectiveScan2D ops check when the graph is built: the input count, the attributes, one float type and
// `rule` on the shapes known so far; the output takes x's type and shape.
void validate_scan_2d(ov::op::Op* op, const std::vector<std::string>& names, int64_t delta_softplus,
                      int64_t directions, Scan2DRule rule) {
  NODE_VALIDATION_CHECK(op, op->get_input_size() == names.size(), "expects ", names.size(), " inputs (",
                        joined(names), "), got ", op->get_input_size());
  NODE_VALIDATION_CHECK(op, delta_softplus == 0 || delta_softplus == 1,
                        "attribute delta_softplus must be in [0, 1], got ", delta_softplus);
  NODE_VALIDATION_CHECK(op, directions == kScan2DDirections, "attribute directions must be in [", kScan2DDirections,
                        ", ", kScan2DDirections, "], got ", directions);
  const ov::element::Type type = common_float_type(op, names);
  std::vector<Shape> shapes;
  for (size_t i = 0; i < op->get_input_size(); ++i) shapes.push_back(partial_to_shape(op->get_input_partial_shape(i)));
  const std::string problem = rule(shapes, names);
  NODE_VALIDATION_CHECK(op, problem.empty(), problem);
  const ov::PartialShape& x = op->get_input_partial_shape(0);
  op->set_output_type(0, type, x.rank().is_static() ? x : ov::PartialShape::dynamic(4));
}

// What both check when they run: the counts, one supported type and `rule` on the actual shapes; sizes the output.
// Returns the kernel dtype and the shapes.
int32_t evaluate_scan_2d_inputs(const ov::Node* op, ov::TensorVector& outputs, const ov::TensorVector& inputs,
                                const std::vector<std::string>& names, Scan2DRule rule, std::vector<Shape>* shapes) {
  if (inputs.size() != names.size() || outputs.size() != 1) {
    OPENVINO_THROW("ssmpose SelectiveScan2D node '", op->get_friendly_name(), "': expects ", names.size(),
                   " inputs and 1 output, got ", inputs.size(), " and ", outputs.size());
  }
  int32_t dtype = 0;
  const ov::element::Type type = inputs[0].get_element_type();
  if (!ssm_dtype_of(type, &dtype)) {
    OPENVINO_THROW("ssmpose SelectiveScan2D node '", op->get_friendly_name(), "': x has element type ", type,
                   "; supported: f32, f16");
  }
  for (size_t i = 1; i < inputs.size(); ++i) {
    if (inputs[i].get_element_type() != type) {
      OPENVINO_THROW("ssmpose SelectiveScan2D node '", op->get_friendly_name(), "': input ", names[i],
                     " has element type ", inputs[i].get_element_type(), " but x has ", type,
                     "; all inputs must share one type");
    }
  }
  for (const ov::Tensor& t : inputs) shapes->push_back(tensor_shape(t));
  const std::string problem = rule(*shapes, names);
  if (!problem.empty()) {
    OPENVINO_THROW("ssmpose SelectiveScan2D node '", op->get_friendly_name(), "': ", problem);
  }
  set_output_shape(op, outputs[0], inputs[0].get_shape());
  return dtype;
}

}  // namespace

void Scan2DAttributes::visit(ov::AttributeVisitor& visitor) {
  visitor.on_attribute("delta_softplus", delta_softplus);
  visitor.on_attribute("directions", directions);
  visitor.on_attribute("has_ds", has_ds);
  visitor.on_attribute("has_delta_bias", has_delta_bias);
}

SelectiveScan2D::SelectiveScan2D(const ov::OutputVector& inputs, const Scan2DAttributes& attributes)
    : Op(inputs), m_attrs(attributes) {
  constructor_validate_and_infer_types();
}

static std::vector<std::string> scan_2d_input_names(bool has_ds, bool has_delta_bias) {
  std::vector<std::string> names(kScan2DInputs, kScan2DInputs + 5);
  if (has_ds) names.push_back("Ds");
  if (has_delta_bias) names.push_back("delta_bias");
  return names;
}

// The kernels' shape of a SelectiveScan2D node: x (B, H, W, D), the directions and the state size.
static ssm_scan2d_shape scan_2d_shape(const std::vector<int64_t>& x, int64_t directions, int64_t dstate,
                                      int64_t delta_softplus, int32_t dtype) {
  ssm_scan2d_shape shape{};
  shape.batch = x[0];
  shape.height = x[1];
  shape.width = x[2];
  shape.dim = x[3];
  shape.directions = directions;
  shape.dstate = dstate;
  shape.delta_softplus = static_cast<int32_t>(delta_softplus);
  shape.dtype = dtype;
  return shape;
}

void SelectiveScan2D::validate_and_infer_types() {
  validate_scan_2d(this, scan_2d_input_names(m_attrs.has_ds, m_attrs.has_delta_bias), m_attrs.delta_softplus, m_attrs.directions,
                   check_selective_scan_2d);
}

std::shared_ptr<ov::Node> SelectiveScan2D::clone_with_new_inputs(const ov::OutputVector& inputs) const {
  return std::make_shared<SelectiveScan2D>(inputs, m_attrs);
}

bool SelectiveScan2D::visit_attributes(ov::AttributeVisitor& visitor) {
  m_attrs.visit(visitor);
  return true;
}

bool SelectiveScan2D::has_evaluate() const {
  int32_t dtype = 0;
  return ssm_dtype_of(get_input_element_type(0), &dtype);
}

bool SelectiveScan2D::evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const {
  std::vector<Shape> shapes;
  const int32_t dtype = evaluate_scan_2d_inputs(this, outputs, inputs, scan_2d_input_names(m_attrs.has_ds, m_attrs.has_delta_bias),
                                                check_selective_scan_2d, &shapes);
  if (outputs[0].get_size() == 0) return true;  // B, H, W or D is 0: nothing to compute

  const ssm_scan2d_shape shape =
      scan_2d_shape(shapes[0].dims, shapes[3].dims[3], shapes[3].dims[4], m_attrs.delta_softplus, dtype);
  size_t next = 5;
  const void* ds = m_attrs.has_ds ? inputs[next++].data() : nullptr;
  const void* bias = m_attrs.has_delta_bias ? inputs[next++].data() : nullptr;
  const int status = ssm_selective_scan_2d_fwd_cpu(&shape, inputs[0].data(), inputs[1].data(), inputs[2].data(),
                                                   inputs[3].data(), inputs[4].data(), ds, bias, outputs[0].data(),
                                                   cpu_threads());
  if (status != SSM_OK) kernel_failed(this, "ssm_selective_scan_2d_fwd_cpu", status);
  return true;
}

// ------------------------------------------------------------------------------------------------
// SelectiveScan2D with the dt projection (domain version 6)

SelectiveScan2DProj::SelectiveScan2DProj(const ov::OutputVector& inputs, const Scan2DAttributes& attributes)
    : Op(inputs), m_attrs(attributes) {
  constructor_validate_and_infer_types();
}

static std::vector<std::string> scan_2d_proj_input_names(bool has_ds, bool has_delta_bias) {
  std::vector<std::string> names{"x", "x_proj", "dt_projection", "A"};
  if (has_ds) names.push_back("Ds");
  if (has_delta_bias) names.push_back("delta_bias");
  return names;
}

void SelectiveScan2DProj::validate_and_infer_types() {
  validate_scan_2d(this, scan_2d_proj_input_names(m_attrs.has_ds, m_attrs.has_delta_bias), m_attrs.delta_softplus, m_attrs.directions,
                   check_selective_scan_2d_proj);
}

std::shared_ptr<ov::Node> SelectiveScan2DProj::clone_with_new_inputs(const ov::OutputVector& inputs) const {
  return std::make_shared<SelectiveScan2DProj>(inputs, m_attrs);
}

bool SelectiveScan2DProj::visit_attributes(ov::AttributeVisitor& visitor) {
  m_attrs.visit(visitor);
  return true;
}

bool SelectiveScan2DProj::has_evaluate() const {
  int32_t dtype = 0;
  return ssm_dtype_of(get_input_element_type(0), &dtype);
}

bool SelectiveScan2DProj::evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const {
  std::vector<Shape> shapes;
  const int32_t dtype = evaluate_scan_2d_inputs(this, outputs, inputs,
                                                scan_2d_proj_input_names(m_attrs.has_ds, m_attrs.has_delta_bias),
                                                check_selective_scan_2d_proj, &shapes);
  if (outputs[0].get_size() == 0) return true;  // B, H, W or D is 0: nothing to compute

  const ssm_scan2d_shape shape =
      scan_2d_shape(shapes[0].dims, kScan2DDirections, shapes[3].dims[1], m_attrs.delta_softplus, dtype);
  size_t next = 4;
  const void* ds = m_attrs.has_ds ? inputs[next++].data() : nullptr;
  const void* bias = m_attrs.has_delta_bias ? inputs[next++].data() : nullptr;
  const int status = ssm_selective_scan_2d_proj_fwd_cpu(&shape, shapes[2].dims[2], inputs[0].data(),
                                                        inputs[1].data(), inputs[2].data(), inputs[3].data(), ds,
                                                        bias, outputs[0].data(), cpu_threads());
  if (status != SSM_OK) kernel_failed(this, "ssm_selective_scan_2d_proj_fwd_cpu", status);
  return true;
}

// ------------------------------------------------------------------------------------------------
// DeformAggregate

DeformAggregate::DeformAggregate(const ov::OutputVector& inputs, const DeformAttributes& attributes)
    : Op(inputs), m_attrs(attributes) {
  constructor_validate_and_infer_types();
}

void DeformAggregate::validate_and_infer_types() {
  const std::vector<std::string> names{"value", "offset_mask", "offset_bias"};
  NODE_VALIDATION_CHECK(this, get_input_size() == 2 || get_input_size() == 3,
                        "expects 2 or 3 inputs (value, offset_mask, optional offset_bias), got ", get_input_size());
  const ov::element::Type type = common_float_type(this, names);
  std::vector<int64_t> out;
  const Shape om = partial_to_shape(get_input_partial_shape(1));
  std::string problem = check_deform_aggregate(m_attrs, partial_to_shape(get_input_partial_shape(0)), om, &out);
  if (problem.empty() && get_input_size() == 3) {
    problem = check_offset_bias(om, partial_to_shape(get_input_partial_shape(2)));
  }
  NODE_VALIDATION_CHECK(this, problem.empty(), problem);
  set_output_type(0, type, to_partial(out));
}

std::shared_ptr<ov::Node> DeformAggregate::clone_with_new_inputs(const ov::OutputVector& inputs) const {
  return std::make_shared<DeformAggregate>(inputs, m_attrs);
}

bool DeformAggregate::visit_attributes(ov::AttributeVisitor& visitor) {
  visitor.on_attribute("kernel_h", m_attrs.kernel_h);
  visitor.on_attribute("kernel_w", m_attrs.kernel_w);
  visitor.on_attribute("stride_h", m_attrs.stride_h);
  visitor.on_attribute("stride_w", m_attrs.stride_w);
  visitor.on_attribute("pad_h", m_attrs.pad_h);
  visitor.on_attribute("pad_w", m_attrs.pad_w);
  visitor.on_attribute("dilation_h", m_attrs.dilation_h);
  visitor.on_attribute("dilation_w", m_attrs.dilation_w);
  visitor.on_attribute("group", m_attrs.group);
  visitor.on_attribute("group_channels", m_attrs.group_channels);
  visitor.on_attribute("remove_center", m_attrs.remove_center);
  visitor.on_attribute("offset_scale", m_attrs.offset_scale);
  return true;
}

bool DeformAggregate::has_evaluate() const {
  int32_t dtype = 0;
  return ssm_dtype_of(get_input_element_type(0), &dtype);
}

bool DeformAggregate::evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const {
  const Shape value = tensor_shape(inputs[0]), om = tensor_shape(inputs[1]);
  std::vector<int64_t> out;
  std::string problem = check_deform_aggregate(m_attrs, value, om, &out);
  if (problem.empty() && inputs.size() > 2) problem = check_offset_bias(om, tensor_shape(inputs[2]));
  if (!problem.empty()) OPENVINO_THROW("ssmpose DeformAggregate node '", get_friendly_name(), "': ", problem);
  int32_t dtype = 0;
  if (!ssm_dtype_of(inputs[0].get_element_type(), &dtype)) {
    OPENVINO_THROW("ssmpose DeformAggregate node '", get_friendly_name(), "': element type ",
                   inputs[0].get_element_type(), " is not supported; supported: f32, f16");
  }
  set_output_shape(this, outputs[0], ov::Shape(out.begin(), out.end()));
  if (outputs[0].get_size() == 0) return true;
  if (value.dims[1] == 0 || value.dims[2] == 0) {
    OPENVINO_THROW("ssmpose DeformAggregate node '", get_friendly_name(), "': value has an empty image (H, W) = ",
                   shape_str({value.dims[1], value.dims[2]}), " but the output is not empty");
  }
  ssm_deform_shape shape{};
  shape.batch = value.dims[0];
  shape.height = value.dims[1];
  shape.width = value.dims[2];
  shape.out_height = out[1];
  shape.out_width = out[2];
  shape.groups = m_attrs.group;
  shape.group_channels = m_attrs.group_channels;
  shape.offset_stride = om.dims[3];
  shape.kernel_h = static_cast<int32_t>(m_attrs.kernel_h);
  shape.kernel_w = static_cast<int32_t>(m_attrs.kernel_w);
  shape.stride_h = static_cast<int32_t>(m_attrs.stride_h);
  shape.stride_w = static_cast<int32_t>(m_attrs.stride_w);
  shape.pad_h = static_cast<int32_t>(m_attrs.pad_h);
  shape.pad_w = static_cast<int32_t>(m_attrs.pad_w);
  shape.dilation_h = static_cast<int32_t>(m_attrs.dilation_h);
  shape.dilation_w = static_cast<int32_t>(m_attrs.dilation_w);
  shape.remove_center = static_cast<int32_t>(m_attrs.remove_center);
  shape.offset_scale = m_attrs.offset_scale;
  shape.dtype = dtype;
  const int status =
      ssm_deform_aggregate_fwd_cpu(&shape, inputs[0].data(), inputs[1].data(),
                                   inputs.size() > 2 ? inputs[2].data() : nullptr, outputs[0].data(), cpu_threads());
  if (status != SSM_OK) kernel_failed(this, "ssm_deform_aggregate_fwd_cpu", status);
  return true;
}

}  // namespace ssmpose_ov
