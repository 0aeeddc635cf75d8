// ssmpose::LayerNorm (ssmpose domain version 3) and ssmpose::AddLayerNorm (domain version 4) as TensorRT IPluginV3
// plugins: layer normalisation over the last axis with float32 statistics (ONNX LayerNormalization, axis -1,
// stash_type 1), AddLayerNorm of the sum S = X + R, which it also outputs. Shape rules: those of the ONNX Runtime
// adapter (onnxruntime/layer_norm_op.cpp), in the same words -- X has rank >= 1 and its last dimension C >= 1,
// weight and bias are (C,), and AddLayerNorm's R has X's shape (no broadcasting) -- applied to whatever dimensions
// are known at each stage (-1 = not known yet), each dimension coming from whichever input has it. The outputs are
// X's dimension expressions.
#include <cstdio>

#include "plugins.h"

namespace ssmpose_trt {

namespace {

constexpr const char* kLayerNorm = "LayerNorm";
constexpr const char* kAddLayerNorm = "AddLayerNorm";
constexpr const char* kLayerNormInputs[] = {"X", "weight", "bias"};
constexpr const char* kAddLayerNormInputs[] = {"X", "R", "weight", "bias"};
constexpr const char* kAddLayerNormOutputs[] = {"Y", "S"};

std::string float_str(float v) {
  char text[32];
  std::snprintf(text, sizeof text, "%g", static_cast<double>(v));  // as the ONNX Runtime adapter prints it
  return text;
}

}  // namespace

bool parse_layer_norm_fields(const char* op, const nvinfer1::PluginFieldCollection* fc, LayerNormAttrs* attrs,
                             std::string* err) {
  const FieldReader r(op, fc);
  LayerNormAttrs a;
  // Non-finite values are refused by get_float; 0, negative values and those that round to 0 in float32 here.
  if (!r.get_float("epsilon", false, kLayerNormEpsilon, &a.epsilon, err)) return false;
  if (!(a.epsilon > 0.0f)) {
    *err = std::string(op) + ": field epsilon must be finite and > 0, got " + float_str(a.epsilon);
    return false;
  }
  *attrs = a;
  return true;
}

// ------------------------------------------------------------------------------------------------
// What both share

LayerNormPluginBase::LayerNormPluginBase(const char* op, std::string layer_name, const LayerNormAttrs& attrs,
                                         bool residual)
    : PluginBase(op, std::move(layer_name), residual ? 4 : 3, residual ? 4 : 3, residual ? 2 : 1),
      attrs_(attrs),
      residual_(residual) {}

const char* LayerNormPluginBase::input_name(int32_t index) const {
  if (residual_) return index >= 0 && index < 4 ? kAddLayerNormInputs[index] : "?";
  return index >= 0 && index < 3 ? kLayerNormInputs[index] : "?";
}

const char* LayerNormPluginBase::output_name(int32_t index) const {
  if (residual_) return index >= 0 && index < 2 ? kAddLayerNormOutputs[index] : "?";
  return index == 0 ? "Y" : "?";
}

bool LayerNormPluginBase::infer_shape(const std::vector<std::vector<int64_t>>& in, std::vector<int64_t>* out,
                                      std::string* err) const {
  auto fail = [&](const std::string& m) {
    *err = std::string(op_) + ": " + m;
    return false;
  };
  std::vector<int64_t> x = in[0];  // X's dims, completed below with those only R knows
  const std::string x_str = shape_str(in[0]);
  if (x.empty()) return fail("X must have rank >= 1 (it is normalised over its last axis), got shape " + x_str);
  if (known(x.back()) && x.back() < 1) return fail("the last dimension C of X must be >= 1, got shape " + x_str);
  int32_t first_param = 1;  // weight's index
  if (residual_) {
    const std::vector<int64_t>& r = in[1];
    if (!same_shape(x, r)) return fail("R must have X's shape " + x_str + " (no broadcasting), got " + shape_str(r));
    const bool c_from_x = known(x.back());
    for (size_t i = 0; i < x.size(); ++i) unify(x[i], r[i], &x[i]);
    if (!c_from_x && known(x.back()) && x.back() < 1) {
      return fail("the last dimension C of X must be >= 1, got shape " + x_str + " with C = " +
                  std::to_string(x.back()) + " from R");
    }
    first_param = 2;
  }
  int64_t channels = x.back();
  // weight and bias are (C,); while C is unknown, the first of them that has it tells the other.
  const bool from_x = known(channels);
  for (int32_t i = first_param; i < first_param + 2; ++i) {
    const std::vector<int64_t>& v = in[i];
    if (v.size() != 1 || !unify(channels, v[0], &channels)) {
      return fail(std::string(input_name(i)) + " must be (C,)" +
                  (known(channels) ? " = (" + std::to_string(channels) + ",)" : std::string()) + " for X of shape " +
                  x_str + ", got " + shape_str(v));
    }
    if (!from_x && known(channels) && channels < 1) {
      return fail("the last dimension C of X must be >= 1, got shape " + x_str + " with C = " +
                  std::to_string(channels) + " from " + input_name(i));
    }
  }
  x.back() = channels;
  int64_t rows = 1;
  for (size_t i = 0; i + 1 < x.size(); ++i) {
    if (!known(x[i])) {
      rows = -1;
    } else if (known(rows) && !checked_mul(rows, x[i], &rows)) {
      return fail("X has too many elements");
    }
  }
  *out = x;
  return true;
}

bool LayerNormPluginBase::output_exprs(const nvinfer1::DimsExprs* inputs, nvinfer1::DimsExprs* out,
                                       nvinfer1::IExprBuilder& /*builder*/) const {
  return copy_exprs(inputs[0], out);  // Y (and S) have X's shape
}

void LayerNormPluginBase::prepare(const std::vector<std::vector<int64_t>>& in, int32_t dtype) {
  const std::vector<int64_t>& x = in[0];
  int64_t rows = 1;
  for (size_t i = 0; i + 1 < x.size(); ++i) rows *= x[i];  // no overflow: checked by infer_shape
  shape_ = ssm_layer_norm_shape{};
  shape_.rows = rows;
  shape_.channels = x.back();
  shape_.epsilon = attrs_.epsilon;
  shape_.dtype = dtype;
  empty_output_ = rows == 0;  // C >= 1 (infer_shape)
}

void LayerNormPluginBase::write_fields(FieldWriter* w) const { w->add_float("epsilon", attrs_.epsilon); }

// ------------------------------------------------------------------------------------------------
// LayerNorm

LayerNormPlugin::LayerNormPlugin(std::string layer_name, const LayerNormAttrs& attrs)
    : LayerNormPluginBase(kLayerNorm, std::move(layer_name), attrs, false) {}

int LayerNormPlugin::launch(const CudaKernels& cuda, const void* const* inputs, void* const* outputs, void* stream,
                            const char** kernel) const {
  *kernel = "ssm_layer_norm_fwd_cuda";
  return cuda.layer_norm_fwd(&shape_, inputs[0], inputs[1], inputs[2], outputs[0], stream);
}

LayerNormCreator::LayerNormCreator() : CreatorBase(kLayerNorm) {
  add_field("epsilon", nvinfer1::PluginFieldType::kFLOAT32);
}

bool LayerNormCreator::parse(const nvinfer1::PluginFieldCollection* fc, LayerNormAttrs* attrs, std::string* err) {
  return parse_layer_norm_fields(kLayerNorm, fc, attrs, err);
}

nvinfer1::IPluginV3* LayerNormCreator::createPlugin(const char* name, const nvinfer1::PluginFieldCollection* fc,
                                                    nvinfer1::TensorRTPhase /*phase*/) noexcept {
  return create<LayerNormPlugin, LayerNormAttrs>(name, fc, &LayerNormCreator::parse);
}

// ------------------------------------------------------------------------------------------------
// AddLayerNorm

AddLayerNormPlugin::AddLayerNormPlugin(std::string layer_name, const LayerNormAttrs& attrs)
    : LayerNormPluginBase(kAddLayerNorm, std::move(layer_name), attrs, true) {}

int AddLayerNormPlugin::launch(const CudaKernels& cuda, const void* const* inputs, void* const* outputs,
                               void* stream, const char** kernel) const {
  *kernel = "ssm_add_layer_norm_fwd_cuda";
  // outputs[0] = Y, outputs[1] = S: distinct buffers from TensorRT, as the kernel requires.
  return cuda.add_layer_norm_fwd(&shape_, inputs[0], inputs[1], inputs[2], inputs[3], outputs[0], outputs[1],
                                 stream);
}

AddLayerNormCreator::AddLayerNormCreator() : CreatorBase(kAddLayerNorm) {
  add_field("epsilon", nvinfer1::PluginFieldType::kFLOAT32);
}

bool AddLayerNormCreator::parse(const nvinfer1::PluginFieldCollection* fc, LayerNormAttrs* attrs,
                                std::string* err) {
  return parse_layer_norm_fields(kAddLayerNorm, fc, attrs, err);
}

nvinfer1::IPluginV3* AddLayerNormCreator::createPlugin(const char* name, const nvinfer1::PluginFieldCollection* fc,
                                                       nvinfer1::TensorRTPhase /*phase*/) noexcept {
  return create<AddLayerNormPlugin, LayerNormAttrs>(name, fc, &AddLayerNormCreator::parse);
}

}  // namespace ssmpose_trt
