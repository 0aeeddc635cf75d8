// ssmpose::LayerNorm (ssmpose domain version 3) as a TensorRT IPluginV3 plugin: layer normalisation over the last
// axis with float32 statistics (ONNX LayerNormalization, axis -1, stash_type 1). Shape rules: those of the ONNX
// Runtime adapter (onnxruntime/layer_norm_op.cpp), in the same words -- X has rank >= 1 and its last dimension
// C >= 1, weight and bias are (C,) -- applied to whatever dimensions are known at each stage (-1 = not known yet),
// C coming from whichever input has it. The output is X's dimension expressions.
#include <cstdio>

#include "plugins.h"

namespace ssmpose_trt {

namespace {

constexpr const char* kOp = "LayerNorm";
constexpr const char* kInputs[] = {"X", "weight", "bias"};
constexpr int32_t kNbInputs = 3;

std::string err_msg(const std::string& msg) { return std::string(kOp) + ": " + msg; }

std::string float_str(float v) {
  char text[32];
  std::snprintf(text, sizeof text, "%g", static_cast<double>(v));  // as the ONNX Runtime adapter prints it
  return text;
}

}  // namespace

LayerNormPlugin::LayerNormPlugin(std::string layer_name, const LayerNormAttrs& attrs)
    : PluginBase(kOp, std::move(layer_name), kNbInputs, kNbInputs), attrs_(attrs) {}

const char* LayerNormPlugin::input_name(int32_t index) const {
  return index >= 0 && index < kNbInputs ? kInputs[index] : "?";
}

bool LayerNormPlugin::infer_shape(const std::vector<std::vector<int64_t>>& in, std::vector<int64_t>* out,
                                  std::string* err) const {
  const std::vector<int64_t>& x = in[0];
  auto fail = [&](const std::string& m) {
    *err = err_msg(m);
    return false;
  };
  if (x.empty()) return fail("X must have rank >= 1 (it is normalised over its last axis), got shape " + shape_str(x));
  int64_t channels = x.back();
  if (known(channels) && channels < 1) return fail("the last dimension C of X must be >= 1, got shape " + shape_str(x));
  // weight and bias are (C,); while X's C is unknown, the first of them that has it tells the other.
  const bool from_x = known(channels);
  for (int32_t i = 1; i < kNbInputs; ++i) {
    const std::vector<int64_t>& v = in[i];
    if (v.size() != 1 || !unify(channels, v[0], &channels)) {
      return fail(std::string(kInputs[i]) + " must be (C,)" +
                  (known(channels) ? " = (" + std::to_string(channels) + ",)" : std::string()) + " for X of shape " +
                  shape_str(x) + ", got " + shape_str(v));
    }
    if (!from_x && known(channels) && channels < 1) {
      return fail("the last dimension C of X must be >= 1, got shape " + shape_str(x) + " with C = " +
                  std::to_string(channels) + " from " + kInputs[i]);
    }
  }
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

bool LayerNormPlugin::output_exprs(const nvinfer1::DimsExprs* inputs, nvinfer1::DimsExprs* out,
                                   nvinfer1::IExprBuilder& /*builder*/) const {
  return copy_exprs(inputs[0], out);  // Y has X's shape
}

void LayerNormPlugin::prepare(const std::vector<std::vector<int64_t>>& in, int32_t dtype) {
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

int LayerNormPlugin::launch(const CudaKernels& cuda, const void* const* inputs, void* const* outputs, void* stream,
                            const char** kernel) const {
  *kernel = "ssm_layer_norm_fwd_cuda";
  return cuda.layer_norm_fwd(&shape_, inputs[0], inputs[1], inputs[2], outputs[0], stream);
}

void LayerNormPlugin::write_fields(FieldWriter* w) const { w->add_float("epsilon", attrs_.epsilon); }

// ------------------------------------------------------------------------------------------------

LayerNormCreator::LayerNormCreator() : CreatorBase(kOp) { add_field("epsilon", nvinfer1::PluginFieldType::kFLOAT32); }

bool LayerNormCreator::parse(const nvinfer1::PluginFieldCollection* fc, LayerNormAttrs* attrs, std::string* err) {
  const FieldReader r(kOp, fc);
  LayerNormAttrs a;
  // Non-finite values are refused by get_float; 0, negative values and those that round to 0 in float32 here.
  if (!r.get_float("epsilon", false, kLayerNormEpsilon, &a.epsilon, err)) return false;
  if (!(a.epsilon > 0.0f)) {
    *err = err_msg("field epsilon must be finite and > 0, got " + float_str(a.epsilon));
    return false;
  }
  *attrs = a;
  return true;
}

nvinfer1::IPluginV3* LayerNormCreator::createPlugin(const char* name, const nvinfer1::PluginFieldCollection* fc,
                                                    nvinfer1::TensorRTPhase /*phase*/) noexcept {
  return create<LayerNormPlugin, LayerNormAttrs>(name, fc, &LayerNormCreator::parse);
}

}  // namespace ssmpose_trt
