// ssmpose operators as OpenVINO ops (opset "ssmpose"): shape and type inference, and a CPU `evaluate` that
// calls the CPU kernels of libssmpose_kernels. Semantics and layouts: docs/ops.md.
//
// Shapes are checked twice with the same rules (shape_rules.hpp): in validate_and_infer_types on what is
// known when the model is read (dynamic dimensions pass), and in evaluate on the actual tensors.
#ifndef SSMPOSE_OV_OPS_HPP
#define SSMPOSE_OV_OPS_HPP

#include <cstdint>

#include "openvino/op/op.hpp"
#include "shape_rules.hpp"

namespace ssmpose_ov {

// SelectiveScan: inputs u, delta, A, Bs, Cs, then Ds and delta_bias when has_ds / has_delta_bias say they
// are present (an ONNX node may omit either optional input).
class SelectiveScan : public ov::op::Op {
public:
  OPENVINO_OP("SelectiveScan", "ssmpose");

  SelectiveScan() = default;
  SelectiveScan(const ov::OutputVector& inputs, int64_t delta_softplus, bool has_ds, bool has_delta_bias);

  void validate_and_infer_types() override;
  std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& inputs) const override;
  bool visit_attributes(ov::AttributeVisitor& visitor) override;
  bool has_evaluate() const override;
  bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override;

private:
  int64_t m_delta_softplus = 1;
  bool m_has_ds = true;
  bool m_has_delta_bias = true;
};

// The attributes both SelectiveScan2D ops carry (has_ds / has_delta_bias: whether the optional inputs Ds and
// delta_bias are present; an ONNX node may omit either).
struct Scan2DAttributes {
  int64_t delta_softplus = 1;
  int64_t directions = kScan2DDirections;
  bool has_ds = true;
  bool has_delta_bias = true;

  void visit(ov::AttributeVisitor& visitor);
};

// SelectiveScan2D (domain version 2): inputs x, delta, A, Bs, Cs, then Ds and delta_bias when present;
// channel-last layouts.
class SelectiveScan2D : public ov::op::Op {
public:
  OPENVINO_OP("SelectiveScan2D", "ssmpose");

  SelectiveScan2D() = default;
  SelectiveScan2D(const ov::OutputVector& inputs, const Scan2DAttributes& attributes);

  void validate_and_infer_types() override;
  std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& inputs) const override;
  bool visit_attributes(ov::AttributeVisitor& visitor) override;
  bool has_evaluate() const override;
  bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override;

private:
  Scan2DAttributes m_attrs;
};

// SelectiveScan2D with the dt projection (domain version 6): inputs x, x_proj (B, H, W, K, R + 2N), dt_projection
// (K, D, R), A, then Ds and delta_bias when present. The ONNX node's SelectiveScan2D with a dt_projection input
// becomes this op; its kernel forms delta from x_proj.
class SelectiveScan2DProj : public ov::op::Op {
public:
  OPENVINO_OP("SelectiveScan2DProj", "ssmpose");

  SelectiveScan2DProj() = default;
  SelectiveScan2DProj(const ov::OutputVector& inputs, const Scan2DAttributes& attributes);

  void validate_and_infer_types() override;
  std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& inputs) const override;
  bool visit_attributes(ov::AttributeVisitor& visitor) override;
  bool has_evaluate() const override;
  bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override;

private:
  Scan2DAttributes m_attrs;
};

// DeformAggregate: inputs value (B, H, W, G*C) and offset_mask (B, Hout, Wout, P).
class DeformAggregate : public ov::op::Op {
public:
  OPENVINO_OP("DeformAggregate", "ssmpose");

  DeformAggregate() = default;
  DeformAggregate(const ov::OutputVector& inputs, const DeformAttributes& attributes);

  void validate_and_infer_types() override;
  std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& inputs) const override;
  bool visit_attributes(ov::AttributeVisitor& visitor) override;
  bool has_evaluate() const override;
  bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override;

private:
  DeformAttributes m_attrs;
};

}  // namespace ssmpose_ov

#endif  // SSMPOSE_OV_OPS_HPP
