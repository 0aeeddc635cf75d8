// The shape rules of the operators (those of ops.check_selective_scan_args, ops.check_selective_scan_2d_args and
// ops.check_deform_aggregate_args) on partly known shapes: a dimension of -1 is not known yet, and an input
// of unknown rank is not checked. Each function returns an empty string when the shapes are acceptable so
// far, else the problem in words (the caller adds the op and node names).
#ifndef SSMPOSE_OV_SHAPE_RULES_HPP
#define SSMPOSE_OV_SHAPE_RULES_HPP

#include <cstdint>
#include <string>
#include <vector>

namespace ssmpose_ov {

constexpr int64_t kUnknown = -1;
constexpr int64_t kMaxState = 16;                 // the kernels' limit on N
constexpr int64_t kMaxPoints = int64_t(1) << 20;  // the kernels' limit on kernel_h*kernel_w
constexpr int64_t kScan2DDirections = 4;          // SelectiveScan2D's K, the only value of domain version 2
constexpr int64_t kMaxDtRank = 64;                // the kernels' limit on the dt projection's rank R

struct Shape {
  bool rank_known = true;
  std::vector<int64_t> dims;  // kUnknown where dynamic
};

struct DeformAttributes {
  int64_t kernel_h = 3, kernel_w = 3, stride_h = 1, stride_w = 1, pad_h = 1, pad_w = 1, dilation_h = 1,
          dilation_w = 1, group = 1, group_channels = 1, remove_center = 0;
  float offset_scale = 1.0f;
};

std::string shape_str(const std::vector<int64_t>& dims);  // "(2, ?, 4)"

// shapes/names: u, delta, A, Bs, Cs, then the present optional inputs (Ds, delta_bias).
std::string check_selective_scan(const std::vector<Shape>& shapes, const std::vector<std::string>& names);

// shapes/names: x, delta, A, Bs, Cs, then the present optional inputs (Ds, delta_bias). The words are those of
// the ONNX Runtime adapter (csrc/onnxruntime/selective_scan_2d_op.cpp); K is taken as 4 (the only value), so
// delta, A, Ds and delta_bias are checked against x's D even while Bs.shape[3] is not known.
std::string check_selective_scan_2d(const std::vector<Shape>& shapes, const std::vector<std::string>& names);

// shapes/names: x, x_proj, dt_projection, A, then the present optional inputs (Ds, delta_bias): SelectiveScan2D with
// the dt projection (domain version 6), in the words of the ONNX Runtime adapter.
std::string check_selective_scan_2d_proj(const std::vector<Shape>& shapes, const std::vector<std::string>& names);

// Attribute ranges; sets *om_cols to group*K*3 (K = kernel_h*kernel_w - remove_center).
std::string check_deform_attributes(const DeformAttributes& a, int64_t* om_cols);

// value (B, H, W, G*C) and offset_mask (B, Hout, Wout, P); *out = (B, Hout, Wout, G*C), kUnknown where unknown.
std::string check_deform_aggregate(const DeformAttributes& a, const Shape& value, const Shape& offset_mask,
                                   std::vector<int64_t>* out);

// DeformAggregate's optional offset_bias (domain version 5): (P), P offset_mask's last dimension.
std::string check_offset_bias(const Shape& offset_mask, const Shape& offset_bias);

}  // namespace ssmpose_ov

#endif  // SSMPOSE_OV_SHAPE_RULES_HPP
