// The ssmpose TensorRT plugins (IPluginV3 with the V3One core/build/runtime capabilities) and their creators
// (IPluginCreatorV3One): SelectiveScan, SelectiveScan2D, DeformAggregate, LayerNorm, AddLayerNorm,
// MultiKernelDepthwiseConv and VSSBlockTail. Plugin name = ONNX op type, version "1", namespace "ssmpose" (DESIGN.md
// sections 1, 4); plugin fields = the ONNX attributes by the same names.
// Semantics and shape rules: docs/ops.md.
#ifndef SSMPOSE_TRT_PLUGINS_H
#define SSMPOSE_TRT_PLUGINS_H

#include <string>
#include <vector>

#include "trt_common.h"

namespace ssmpose_trt {

// ------------------------------------------------------------------------------------------------
// The two scans (SelectiveScan, SelectiveScan2D) share their inputs' roles -- <first>, delta, A, Bs, Cs, optional Ds,
// optional delta_bias -- the field delta_softplus, an output of the first input's shape, and the rules for A and
// the optional vectors. The optional inputs are positional: 5 inputs = neither, 6 = Ds, 7 = Ds and delta_bias.

struct ScanAttrs {
  int32_t delta_softplus = 1;
};

class ScanPluginBase : public PluginBase {
 protected:
  ScanPluginBase(const char* op, const char* first_input, std::string layer_name)
      : PluginBase(op, std::move(layer_name), 5, 7), first_input_(first_input) {}

  bool output_exprs(const nvinfer1::DimsExprs* inputs, nvinfer1::DimsExprs* out,
                    nvinfer1::IExprBuilder& builder) const override;
  const char* input_name(int32_t index) const override;
  // A must be (channels, dstate) and Ds / delta_bias (inputs 5 and 6, when present) (channels,); *channels and
  // *dstate get what A and the vectors tell of unknown ones. Then N = *dstate must be in 1..16 (the kernels'
  // limit); `dstate_axis` names where N comes from ("Bs.shape[2]"). `channels_name` stands for unknown channels
  // in messages ("G*D").
  bool check_parameters(const std::vector<std::vector<int64_t>>& in, const char* channels_name,
                        const char* dstate_axis, int64_t* channels, int64_t* dstate, std::string* err) const;
  // Input `index` if the node has it, else NULL (optional inputs).
  const void* optional_input(const void* const* inputs, int32_t index) const {
    return nb_inputs_ > index ? inputs[index] : nullptr;
  }

 private:
  const char* first_input_;
};

// The field delta_softplus of both scans' creators (int, 0 or 1, default 1).
bool parse_delta_softplus(const FieldReader& r, ScanAttrs* attrs, std::string* err);

// SelectiveScan: u (B, G*D, L), delta (B, G*D, L), A (G*D, N), Bs (B, G, N, L), Cs (B, G, N, L), optional Ds (G*D),
// optional delta_bias (G*D) -> y (B, G*D, L). Field delta_softplus (int, default 1).

class SelectiveScanPlugin : public ScanPluginBase {
 public:
  SelectiveScanPlugin(std::string layer_name, const ScanAttrs& attrs);
  const ScanAttrs& attrs() const { return attrs_; }
  const ssm_scan_shape& kernel_shape() const { return shape_; }

  nvinfer1::IPluginV3* clone() noexcept override { return clone_plugin(*this); }

 protected:
  bool infer_shape(const std::vector<std::vector<int64_t>>& in, std::vector<int64_t>* out,
                   std::string* err) const override;
  void prepare(const std::vector<std::vector<int64_t>>& in, int32_t dtype) override;
  int launch(const CudaKernels& cuda, const void* const* inputs, void* const* outputs, void* stream,
             const char** kernel) const override;
  void write_fields(FieldWriter* w) const override;

 private:
  ScanAttrs attrs_;
  ssm_scan_shape shape_{};
};

class SelectiveScanCreator : public CreatorBase {
 public:
  SelectiveScanCreator();
  nvinfer1::IPluginV3* createPlugin(const char* name, const nvinfer1::PluginFieldCollection* fc,
                                    nvinfer1::TensorRTPhase phase) noexcept override;

  // Field parsing and validation (what createPlugin does before constructing the plugin).
  static bool parse(const nvinfer1::PluginFieldCollection* fc, ScanAttrs* attrs, std::string* err);
};

// ------------------------------------------------------------------------------------------------
// SelectiveScan2D (ssmpose domain version 2; plugin version "1" like the others), channel-last: x (B, H, W, D),
// delta (B, H, W, K*D), A (K*D, N), Bs (B, H, W, K, N), Cs (B, H, W, K, N), optional Ds (K*D), optional delta_bias
// (K*D) -> y (B, H, W, D). Fields delta_softplus (int, default 1) and directions (K, int, default 4; 4 is the only
// value).

constexpr int32_t kScan2DDirections = 4;  // SS2D's four directions

struct Scan2DAttrs : ScanAttrs {
  int32_t directions = kScan2DDirections;
};

class SelectiveScan2DPlugin : public ScanPluginBase {
 public:
  SelectiveScan2DPlugin(std::string layer_name, const Scan2DAttrs& attrs);
  const Scan2DAttrs& attrs() const { return attrs_; }
  const ssm_scan2d_shape& kernel_shape() const { return shape_; }

  nvinfer1::IPluginV3* clone() noexcept override { return clone_plugin(*this); }

 protected:
  bool infer_shape(const std::vector<std::vector<int64_t>>& in, std::vector<int64_t>* out,
                   std::string* err) const override;
  void prepare(const std::vector<std::vector<int64_t>>& in, int32_t dtype) override;
  int launch(const CudaKernels& cuda, const void* const* inputs, void* const* outputs, void* stream,
             const char** kernel) const override;
  void write_fields(FieldWriter* w) const override;

 private:
  Scan2DAttrs attrs_;
  ssm_scan2d_shape shape_{};
};

class SelectiveScan2DCreator : public CreatorBase {
 public:
  SelectiveScan2DCreator();
  nvinfer1::IPluginV3* createPlugin(const char* name, const nvinfer1::PluginFieldCollection* fc,
                                    nvinfer1::TensorRTPhase phase) noexcept override;

  static bool parse(const nvinfer1::PluginFieldCollection* fc, Scan2DAttrs* attrs, std::string* err);
};

// ------------------------------------------------------------------------------------------------
// DeformAggregate: value (B, H, W, G*C), offset_mask (B, Hout, Wout, P) with P >= G*K*3, optional offset_bias (P)
// (domain version 5) -> (B, Hout, Wout, G*C), Hout = (H + 2*pad_h - (dilation_h*(kernel_h-1)+1)) // stride_h + 1
// (Wout likewise). Required fields: kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
// group, group_channels, remove_center (ints) and offset_scale (float); optional: activation ("none" or "silu",
// default "none"; domain version 5).

struct DeformAttrs {
  int32_t kernel_h = 0, kernel_w = 0, stride_h = 0, stride_w = 0, pad_h = 0, pad_w = 0, dilation_h = 0,
          dilation_w = 0, group = 0, group_channels = 0, remove_center = 0;
  float offset_scale = 1.0f;
  int32_t activation = SSM_ACTIVATION_NONE;
};

// Python-style floor division (b > 0).
int64_t floor_div(int64_t a, int64_t b);
// The output size along one axis (docs/ops.md).
int64_t deform_out_size(int64_t in, int32_t kernel, int32_t stride, int32_t pad, int32_t dilation);

class DeformAggregatePlugin : public PluginBase {
 public:
  DeformAggregatePlugin(std::string layer_name, const DeformAttrs& attrs);
  const DeformAttrs& attrs() const { return attrs_; }
  const ssm_deform_shape& kernel_shape() const { return shape_; }

  nvinfer1::IPluginV3* clone() noexcept override { return clone_plugin(*this); }

 protected:
  bool infer_shape(const std::vector<std::vector<int64_t>>& in, std::vector<int64_t>* out,
                   std::string* err) const override;
  bool output_exprs(const nvinfer1::DimsExprs* inputs, nvinfer1::DimsExprs* out,
                    nvinfer1::IExprBuilder& builder) const override;
  void prepare(const std::vector<std::vector<int64_t>>& in, int32_t dtype) override;
  int launch(const CudaKernels& cuda, const void* const* inputs, void* const* outputs, void* stream,
             const char** kernel) const override;
  void write_fields(FieldWriter* w) const override;
  const char* input_name(int32_t index) const override;

 private:
  DeformAttrs attrs_;
  int64_t om_cols_ = 0;  // group*K*3
  ssm_deform_shape shape_{};
};

class DeformAggregateCreator : public CreatorBase {
 public:
  DeformAggregateCreator();
  nvinfer1::IPluginV3* createPlugin(const char* name, const nvinfer1::PluginFieldCollection* fc,
                                    nvinfer1::TensorRTPhase phase) noexcept override;

  static bool parse(const nvinfer1::PluginFieldCollection* fc, DeformAttrs* attrs, std::string* err);
};

// ------------------------------------------------------------------------------------------------
// LayerNorm (ssmpose domain version 3; plugin version "1" like the others): X (..., C) of rank >= 1, weight (C),
// bias (C) -> Y of X's shape: (X - mean) / sqrt(var + epsilon) * weight + bias over the last axis, float32
// statistics (ONNX LayerNormalization, axis -1, stash_type 1). C >= 1; the leading dims (the rows) may be empty.
// Field epsilon (float, default 1e-5, finite and > 0).
//
// AddLayerNorm (ssmpose domain version 4): X (..., C), R (X's shape, no broadcasting), weight (C), bias (C) -> Y
// and S, both of X's shape: S = X + R (float32, rounded to the type), Y = LayerNorm(S). Same field, same rules for
// X, weight and bias, same kernel shape struct.

constexpr float kLayerNormEpsilon = 1e-5f;

struct LayerNormAttrs {
  float epsilon = kLayerNormEpsilon;
};

// The field epsilon of both creators (float, default 1e-5, finite and > 0 as a float32); messages start with `op`.
bool parse_layer_norm_fields(const char* op, const nvinfer1::PluginFieldCollection* fc, LayerNormAttrs* attrs,
                             std::string* err);

// What LayerNorm and AddLayerNorm share: the field, the shape rules of X, weight and bias (and R when there is a
// residual), the output shapes (X's expressions), the kernel shape struct.
class LayerNormPluginBase : public PluginBase {
 public:
  const LayerNormAttrs& attrs() const { return attrs_; }
  const ssm_layer_norm_shape& kernel_shape() const { return shape_; }

 protected:
  // residual: AddLayerNorm (inputs X, R, weight, bias; outputs Y, S), else LayerNorm (X, weight, bias; Y).
  LayerNormPluginBase(const char* op, std::string layer_name, const LayerNormAttrs& attrs, bool residual);

  bool infer_shape(const std::vector<std::vector<int64_t>>& in, std::vector<int64_t>* out,
                   std::string* err) const override;
  bool output_exprs(const nvinfer1::DimsExprs* inputs, nvinfer1::DimsExprs* out,
                    nvinfer1::IExprBuilder& builder) const override;
  void prepare(const std::vector<std::vector<int64_t>>& in, int32_t dtype) override;
  void write_fields(FieldWriter* w) const override;
  const char* input_name(int32_t index) const override;
  const char* output_name(int32_t index) const override;

  LayerNormAttrs attrs_;
  bool residual_;
  ssm_layer_norm_shape shape_{};
};

class LayerNormPlugin : public LayerNormPluginBase {
 public:
  LayerNormPlugin(std::string layer_name, const LayerNormAttrs& attrs);

  nvinfer1::IPluginV3* clone() noexcept override { return clone_plugin(*this); }

 protected:
  int launch(const CudaKernels& cuda, const void* const* inputs, void* const* outputs, void* stream,
             const char** kernel) const override;
};

class LayerNormCreator : public CreatorBase {
 public:
  LayerNormCreator();
  nvinfer1::IPluginV3* createPlugin(const char* name, const nvinfer1::PluginFieldCollection* fc,
                                    nvinfer1::TensorRTPhase phase) noexcept override;

  static bool parse(const nvinfer1::PluginFieldCollection* fc, LayerNormAttrs* attrs, std::string* err);
};

class AddLayerNormPlugin : public LayerNormPluginBase {
 public:
  AddLayerNormPlugin(std::string layer_name, const LayerNormAttrs& attrs);

  nvinfer1::IPluginV3* clone() noexcept override { return clone_plugin(*this); }

 protected:
  int launch(const CudaKernels& cuda, const void* const* inputs, void* const* outputs, void* stream,
             const char** kernel) const override;
};

class AddLayerNormCreator : public CreatorBase {
 public:
  AddLayerNormCreator();
  nvinfer1::IPluginV3* createPlugin(const char* name, const nvinfer1::PluginFieldCollection* fc,
                                    nvinfer1::TensorRTPhase phase) noexcept override;

  static bool parse(const nvinfer1::PluginFieldCollection* fc, LayerNormAttrs* attrs, std::string* err);
};

// ------------------------------------------------------------------------------------------------
// MultiKernelDepthwiseConv (ssmpose domain version 4): X (B, H, W, C) channel-last, weight (C, K, K), bias (C) ->
// Y (B, H, W, C): per channel group g (consecutive channels) a depthwise convolution with the central
// kernel_sizes[g] x kernel_sizes[g] taps of its weights, stride 1, zero "same" padding; then ShuffleNet's channel
// shuffle over shuffle_groups and the activation. B, H or W may be 0 (an empty output); K is odd, 1..15, and at
// least every kernel size. Fields: kernel_sizes (ints, required: 1 to 16 odd sizes 1..15), group_channels (ints,
// required: as many channel counts >= 1, summing to C), shuffle_groups (int, default 1, >= 1, dividing C),
// activation (string, "none" (the default) or "gelu").

struct DepthwiseConvAttrs {
  std::vector<int32_t> kernel_sizes;
  std::vector<int32_t> group_channels;
  int32_t shuffle_groups = 1;
  int32_t activation = SSM_ACTIVATION_NONE;  // ssm_activation

  int64_t channels() const;         // the sum of group_channels: X's C
  int32_t largest_kernel() const;   // the largest of kernel_sizes: the least K of the weight
};

const char* activation_name(int32_t activation);  // "none", "gelu"

class DepthwiseConvPlugin : public PluginBase {
 public:
  DepthwiseConvPlugin(std::string layer_name, const DepthwiseConvAttrs& attrs);
  const DepthwiseConvAttrs& attrs() const { return attrs_; }
  const ssm_dwconv_shape& kernel_shape() const { return shape_; }

  nvinfer1::IPluginV3* clone() noexcept override { return clone_plugin(*this); }

 protected:
  bool infer_shape(const std::vector<std::vector<int64_t>>& in, std::vector<int64_t>* out,
                   std::string* err) const override;
  bool output_exprs(const nvinfer1::DimsExprs* inputs, nvinfer1::DimsExprs* out,
                    nvinfer1::IExprBuilder& builder) const override;
  void prepare(const std::vector<std::vector<int64_t>>& in, int32_t dtype) override;
  int launch(const CudaKernels& cuda, const void* const* inputs, void* const* outputs, void* stream,
             const char** kernel) const override;
  void write_fields(FieldWriter* w) const override;
  const char* input_name(int32_t index) const override;

 private:
  DepthwiseConvAttrs attrs_;
  ssm_dwconv_shape shape_{};
};

class DepthwiseConvCreator : public CreatorBase {
 public:
  DepthwiseConvCreator();
  nvinfer1::IPluginV3* createPlugin(const char* name, const nvinfer1::PluginFieldCollection* fc,
                                    nvinfer1::TensorRTPhase phase) noexcept override;

  static bool parse(const nvinfer1::PluginFieldCollection* fc, DepthwiseConvAttrs* attrs, std::string* err);
};

// ------------------------------------------------------------------------------------------------
// VSSBlockTail (ssmpose domain version 7): what a VMamba-style block computes at each position after its scan, in
// one node (docs/ops.md). Eleven inputs, all required: Y (..., D) of rank >= 1, R (..., C) with Y's leading dims,
// out_norm_weight (D), out_norm_bias (D), out_proj (D, C), norm_weight (C), norm_bias (C), fc1_weight (C, H),
// fc1_bias (H), fc2_weight (H, C), fc2_bias (C) -> Z of R's shape. 1 <= D, H <= SSM_VSS_TAIL_MAX_WIDE (1024),
// 1 <= C <= SSM_VSS_TAIL_MAX_CHANNELS (512); the rows (the leading dims) may be empty. Field epsilon (float, default
// 1e-5, finite and > 0; LayerNorm's field and rules, LayerNormAttrs), used by both LayerNorms.

class VSSBlockTailPlugin : public PluginBase {
 public:
  VSSBlockTailPlugin(std::string layer_name, const LayerNormAttrs& attrs);
  const LayerNormAttrs& attrs() const { return attrs_; }
  const ssm_vss_tail_shape& kernel_shape() const { return shape_; }

  nvinfer1::IPluginV3* clone() noexcept override { return clone_plugin(*this); }

 protected:
  bool infer_shape(const std::vector<std::vector<int64_t>>& in, std::vector<int64_t>* out,
                   std::string* err) const override;
  bool output_exprs(const nvinfer1::DimsExprs* inputs, nvinfer1::DimsExprs* out,
                    nvinfer1::IExprBuilder& builder) const override;
  void prepare(const std::vector<std::vector<int64_t>>& in, int32_t dtype) override;
  int launch(const CudaKernels& cuda, const void* const* inputs, void* const* outputs, void* stream,
             const char** kernel) const override;
  void write_fields(FieldWriter* w) const override;
  const char* input_name(int32_t index) const override;

 private:
  LayerNormAttrs attrs_;
  ssm_vss_tail_shape shape_{};
};

class VSSBlockTailCreator : public CreatorBase {
 public:
  VSSBlockTailCreator();
  nvinfer1::IPluginV3* createPlugin(const char* name, const nvinfer1::PluginFieldCollection* fc,
                                    nvinfer1::TensorRTPhase phase) noexcept override;

  static bool parse(const nvinfer1::PluginFieldCollection* fc, LayerNormAttrs* attrs, std::string* err);
};

// The creators the library exports through getCreators() (static objects, alive while the library is loaded).
nvinfer1::IPluginCreatorInterface* const* plugin_creators(int32_t* count);

}  // namespace ssmpose_trt

#endif  // SSMPOSE_TRT_PLUGINS_H
