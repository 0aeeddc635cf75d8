// The two ssmpose TensorRT plugins (IPluginV3 with the V3One core/build/runtime capabilities) and their creators
// (IPluginCreatorV3One). Plugin name = ONNX op type, version "1", namespace "ssmpose" (DESIGN.md sections 1, 4);
// plugin fields = the ONNX attributes by the same names. Semantics and shape rules: docs/ops.md.
#ifndef SSMPOSE_TRT_PLUGINS_H
#define SSMPOSE_TRT_PLUGINS_H

#include <string>
#include <vector>

#include "trt_common.h"

namespace ssmpose_trt {

// ------------------------------------------------------------------------------------------------
// SelectiveScan: u (B, G*D, L), delta (B, G*D, L), A (G*D, N), Bs (B, G, N, L), Cs (B, G, N, L), optional Ds (G*D),
// optional delta_bias (G*D) -> y (B, G*D, L). Field delta_softplus (int, default 1).
// The optional inputs are positional: 5 inputs = neither, 6 = Ds, 7 = Ds and delta_bias.

struct ScanAttrs {
  int32_t delta_softplus = 1;
};

class SelectiveScanPlugin : public PluginBase {
 public:
  SelectiveScanPlugin(std::string layer_name, const ScanAttrs& attrs);
  const ScanAttrs& attrs() const { return attrs_; }
  const ssm_scan_shape& kernel_shape() const { return shape_; }

  nvinfer1::IPluginV3* clone() noexcept override;
  int32_t enqueue(const nvinfer1::PluginTensorDesc* inputDesc, const nvinfer1::PluginTensorDesc* outputDesc,
                  const void* const* inputs, void* const* outputs, void* workspace,
                  cudaStream_t stream) noexcept override;

 protected:
  bool infer_shape(const std::vector<std::vector<int64_t>>& in, std::vector<int64_t>* out,
                   std::string* err) const override;
  bool output_exprs(const nvinfer1::DimsExprs* inputs, nvinfer1::DimsExprs* out,
                    nvinfer1::IExprBuilder& builder) const override;
  void prepare(const std::vector<std::vector<int64_t>>& in, int32_t dtype) override;
  void write_fields(FieldWriter* w) const override;
  const char* input_name(int32_t index) const override;

 private:
  ScanAttrs attrs_;
  ssm_scan_shape shape_{};
};

class SelectiveScanCreator : public nvinfer1::IPluginCreatorV3One {
 public:
  SelectiveScanCreator();
  nvinfer1::IPluginV3* createPlugin(const char* name, const nvinfer1::PluginFieldCollection* fc,
                                    nvinfer1::TensorRTPhase phase) noexcept override;
  const nvinfer1::PluginFieldCollection* getFieldNames() noexcept override { return &fc_; }
  const char* getPluginName() const noexcept override { return "SelectiveScan"; }
  const char* getPluginVersion() const noexcept override { return kPluginVersion; }
  const char* getPluginNamespace() const noexcept override { return kPluginNamespace; }

  // Field parsing and validation (what createPlugin does before constructing the plugin).
  static bool parse(const nvinfer1::PluginFieldCollection* fc, ScanAttrs* attrs, std::string* err);

 private:
  std::vector<nvinfer1::PluginField> fields_;
  nvinfer1::PluginFieldCollection fc_{};
};

// ------------------------------------------------------------------------------------------------
// DeformAggregate: value (B, H, W, G*C), offset_mask (B, Hout, Wout, P) with P >= G*K*3 -> (B, Hout, Wout, G*C),
// Hout = (H + 2*pad_h - (dilation_h*(kernel_h-1)+1)) // stride_h + 1 (Wout likewise). All fields required:
// kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group, group_channels,
// remove_center (ints) and offset_scale (float).

struct DeformAttrs {
  int32_t kernel_h = 0, kernel_w = 0, stride_h = 0, stride_w = 0, pad_h = 0, pad_w = 0, dilation_h = 0,
          dilation_w = 0, group = 0, group_channels = 0, remove_center = 0;
  float offset_scale = 1.0f;
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

  nvinfer1::IPluginV3* clone() noexcept override;
  int32_t enqueue(const nvinfer1::PluginTensorDesc* inputDesc, const nvinfer1::PluginTensorDesc* outputDesc,
                  const void* const* inputs, void* const* outputs, void* workspace,
                  cudaStream_t stream) noexcept override;

 protected:
  bool infer_shape(const std::vector<std::vector<int64_t>>& in, std::vector<int64_t>* out,
                   std::string* err) const override;
  bool output_exprs(const nvinfer1::DimsExprs* inputs, nvinfer1::DimsExprs* out,
                    nvinfer1::IExprBuilder& builder) const override;
  void prepare(const std::vector<std::vector<int64_t>>& in, int32_t dtype) override;
  void write_fields(FieldWriter* w) const override;
  const char* input_name(int32_t index) const override;

 private:
  DeformAttrs attrs_;
  int64_t om_cols_ = 0;  // group*K*3
  ssm_deform_shape shape_{};
};

class DeformAggregateCreator : public nvinfer1::IPluginCreatorV3One {
 public:
  DeformAggregateCreator();
  nvinfer1::IPluginV3* createPlugin(const char* name, const nvinfer1::PluginFieldCollection* fc,
                                    nvinfer1::TensorRTPhase phase) noexcept override;
  const nvinfer1::PluginFieldCollection* getFieldNames() noexcept override { return &fc_; }
  const char* getPluginName() const noexcept override { return "DeformAggregate"; }
  const char* getPluginVersion() const noexcept override { return kPluginVersion; }
  const char* getPluginNamespace() const noexcept override { return kPluginNamespace; }

  static bool parse(const nvinfer1::PluginFieldCollection* fc, DeformAttrs* attrs, std::string* err);

 private:
  std::vector<nvinfer1::PluginField> fields_;
  nvinfer1::PluginFieldCollection fc_{};
};

// The creators the library exports through getCreators() (static objects, alive while the library is loaded).
nvinfer1::IPluginCreatorInterface* const* plugin_creators(int32_t* count);

}  // namespace ssmpose_trt

#endif  // SSMPOSE_TRT_PLUGINS_H
