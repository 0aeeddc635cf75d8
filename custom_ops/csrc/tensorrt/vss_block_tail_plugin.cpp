// ssmpose::VSSBlockTail (ssmpose domain version 7) as a TensorRT IPluginV3 plugin: what a VMamba-style block computes
// at each position after its scan, in one kernel (docs/ops.md): SS2D's output LayerNorm and projection, the residual
// add, the MLP's LayerNorm, fc1, GELU, fc2 and the second residual add.
//
// Shape rules, applied to whatever dimensions are known at each stage (-1 = not known yet), each width coming from
// whichever input has it first (in input order): Y (..., D) and R (..., C) have rank >= 1 and agree in every
// dimension but the last; the nine parameter tensors are out_norm_weight (D), out_norm_bias (D), out_proj (D, C),
// norm_weight (C), norm_bias (C), fc1_weight (C, H), fc1_bias (H), fc2_weight (H, C), fc2_bias (C); then the kernels'
// limits 1 <= D, H <= SSM_VSS_TAIL_MAX_WIDE and 1 <= C <= SSM_VSS_TAIL_MAX_CHANNELS (in the words of the ONNX schema,
// export/schemas.py vss_tail_shape_error) and rows * max(D, C, H) <= 2^60 - 1. The output Z is R's dimension
// expressions. The field epsilon is LayerNorm's (parse_layer_norm_fields).
#include <algorithm>

#include "plugins.h"

namespace ssmpose_trt {

namespace {

constexpr const char* kOp = "VSSBlockTail";
constexpr int32_t kNbInputs = 11;
constexpr const char* kInputs[kNbInputs] = {"Y",           "R",         "out_norm_weight", "out_norm_bias",
                                            "out_proj",    "norm_weight", "norm_bias",       "fc1_weight",
                                            "fc1_bias",    "fc2_weight",  "fc2_bias"};
constexpr int32_t kFc1Weight = 7;  // H = fc1_weight.shape[1]

// The three widths: D (Y's channels), C (R's channels), H (the MLP's hidden channels).
enum Width : int32_t { kD = 0, kC = 1, kH = 2 };
constexpr const char* kWidthNames[] = {"D", "C", "H"};
// As export/schemas.py vss_tail_shape_error names them, with the input that defines each.
constexpr const char* kWidthRoles[] = {"D (Y's channels)", "C (R's channels)", "H (fc1's outputs)"};
constexpr const char* kWidthOwners[] = {"Y", "R", "fc1_weight"};
constexpr int64_t kWidthLimits[] = {SSM_VSS_TAIL_MAX_WIDE, SSM_VSS_TAIL_MAX_CHANNELS, SSM_VSS_TAIL_MAX_WIDE};
constexpr int64_t kMaxElements = (int64_t(1) << 60) - 1;  // rows * max(D, C, H), the kernels' bound

// The shapes of the parameter tensors (inputs 2..10) in widths.
struct ParamShape {
  int32_t rank;
  Width dims[2];
};
constexpr ParamShape kParamShapes[kNbInputs - 2] = {
    {1, {kD, kD}},  // out_norm_weight (D)
    {1, {kD, kD}},  // out_norm_bias (D)
    {2, {kD, kC}},  // out_proj (D, C)
    {1, {kC, kC}},  // norm_weight (C)
    {1, {kC, kC}},  // norm_bias (C)
    {2, {kC, kH}},  // fc1_weight (C, H)
    {1, {kH, kH}},  // fc1_bias (H)
    {2, {kH, kC}},  // fc2_weight (H, C)
    {1, {kC, kC}},  // fc2_bias (C)
};

// "out_proj must be (D, C) = (96, ?), got (96, 32, 1) (D = 96 from Y)": the expected shape in widths, their values
// as far as known, and where each known one came from.
std::string param_message(int32_t index, const int64_t* width, const std::string* source,
                          const std::vector<int64_t>& got) {
  const ParamShape& s = kParamShapes[index - 2];
  std::string pattern = "(";
  std::vector<int64_t> values;
  std::string sources;
  bool any_known = false;
  for (int32_t k = 0; k < s.rank; ++k) {
    const Width w = s.dims[k];
    pattern += std::string(k ? ", " : "") + kWidthNames[w];
    values.push_back(width[w]);
    if (known(width[w])) {
      any_known = true;
      sources += std::string(sources.empty() ? "" : ", ") + kWidthNames[w] + " = " + std::to_string(width[w]) +
                 " from " + source[w];
    }
  }
  pattern += s.rank == 1 ? ",)" : ")";
  std::string m = std::string(kInputs[index]) + " must be " + pattern;
  if (any_known) m += " = " + shape_str(values);
  m += ", got " + shape_str(got);
  if (any_known) m += " (" + sources + ")";
  return m;
}

}  // namespace

VSSBlockTailPlugin::VSSBlockTailPlugin(std::string layer_name, const LayerNormAttrs& attrs)
    : PluginBase(kOp, std::move(layer_name), kNbInputs, kNbInputs), attrs_(attrs) {}

const char* VSSBlockTailPlugin::input_name(int32_t index) const {
  return index >= 0 && index < kNbInputs ? kInputs[index] : "?";
}

bool VSSBlockTailPlugin::infer_shape(const std::vector<std::vector<int64_t>>& in, std::vector<int64_t>* out,
                                     std::string* err) const {
  auto fail = [&](const std::string& m) {
    *err = std::string(kOp) + ": " + m;
    return false;
  };
  const std::vector<int64_t>& y = in[0];
  const std::vector<int64_t>& r = in[1];
  if (y.empty()) return fail("Y must have rank >= 1 (its last axis holds the D channels), got shape ()");
  if (r.empty()) return fail("R must have rank >= 1 (its last axis holds the C channels), got shape ()");
  // The rows: Y's leading dims, completed with those only R knows.
  std::vector<int64_t> lead(y.begin(), y.end() - 1);
  bool same_lead = y.size() == r.size();
  for (size_t i = 0; same_lead && i < lead.size(); ++i) same_lead = unify(lead[i], r[i], &lead[i]);
  if (!same_lead) {
    return fail("Y and R must agree in every dimension but the last, got Y " + shape_str(y) + " and R " +
                shape_str(r));
  }

  int64_t width[3] = {y.back(), r.back(), -1};
  std::string source[3];
  for (int32_t w = 0; w < 3; ++w) source[w] = known(width[w]) ? kWidthOwners[w] : "";
  for (int32_t i = 2; i < kNbInputs; ++i) {
    const ParamShape& s = kParamShapes[i - 2];
    const std::vector<int64_t>& v = in[i];
    int64_t merged[3] = {width[0], width[1], width[2]};
    bool good = static_cast<int32_t>(v.size()) == s.rank;
    for (int32_t k = 0; good && k < s.rank; ++k) good = unify(merged[s.dims[k]], v[k], &merged[s.dims[k]]);
    if (!good) return fail(param_message(i, width, source, v));
    for (int32_t w = 0; w < 3; ++w) {
      if (!known(width[w]) && known(merged[w])) {
        width[w] = merged[w];
        source[w] = kInputs[i];
      }
    }
  }
  for (int32_t w = 0; w < 3; ++w) {
    if (known(width[w]) && (width[w] < 1 || width[w] > kWidthLimits[w])) {
      return fail(std::string(kWidthRoles[w]) + " = " + std::to_string(width[w]) + " is outside 1.." +
                  std::to_string(kWidthLimits[w]) +
                  (source[w] != kWidthOwners[w] ? " (from " + source[w] + ")" : std::string()));
    }
  }

  int64_t rows = 1;
  for (int64_t d : lead) {
    if (!known(d)) {
      rows = -1;
    } else if (known(rows) && !checked_mul(rows, d, &rows)) {
      return fail("Y has too many elements");
    }
  }
  const int64_t widest = std::max({width[0], width[1], width[2]});
  if (known(rows) && widest > 0 && rows > kMaxElements / widest) {
    return fail("Y and R have too many rows: rows * max(D, C, H) must be <= 2^60 - 1, got rows = " +
                std::to_string(rows) + " and max(D, C, H) = " + std::to_string(widest));
  }
  *out = lead;
  out->push_back(width[kC]);
  return true;
}

bool VSSBlockTailPlugin::output_exprs(const nvinfer1::DimsExprs* inputs, nvinfer1::DimsExprs* out,
                                      nvinfer1::IExprBuilder& /*builder*/) const {
  return copy_exprs(inputs[1], out);  // Z has R's shape
}

void VSSBlockTailPlugin::prepare(const std::vector<std::vector<int64_t>>& in, int32_t dtype) {
  const std::vector<int64_t>& y = in[0];
  int64_t rows = 1;
  for (size_t i = 0; i + 1 < y.size(); ++i) rows *= y[i];  // no overflow: checked by infer_shape
  shape_ = ssm_vss_tail_shape{};
  shape_.rows = rows;
  shape_.inner = y.back();
  shape_.channels = in[1].back();
  shape_.hidden = in[kFc1Weight][1];
  shape_.epsilon = attrs_.epsilon;
  shape_.dtype = dtype;
  empty_output_ = rows == 0;  // D, C, H >= 1 (infer_shape)
}

int VSSBlockTailPlugin::launch(const CudaKernels& cuda, const void* const* inputs, void* const* outputs,
                               void* stream, const char** kernel) const {
  *kernel = "ssm_vss_block_tail_fwd_cuda";
  ssm_vss_tail_params params{};
  params.out_norm_weight = inputs[2];
  params.out_norm_bias = inputs[3];
  params.out_proj = inputs[4];
  params.norm_weight = inputs[5];
  params.norm_bias = inputs[6];
  params.fc1_weight = inputs[7];
  params.fc1_bias = inputs[8];
  params.fc2_weight = inputs[9];
  params.fc2_bias = inputs[10];
  // outputs[0] = Z: a buffer of its own from TensorRT (the kernel requires that Z alias no input).
  return cuda.vss_block_tail_fwd(&shape_, inputs[0], inputs[1], &params, outputs[0], stream);
}

void VSSBlockTailPlugin::write_fields(FieldWriter* w) const { w->add_float("epsilon", attrs_.epsilon); }

VSSBlockTailCreator::VSSBlockTailCreator() : CreatorBase(kOp) {
  add_field("epsilon", nvinfer1::PluginFieldType::kFLOAT32);
}

bool VSSBlockTailCreator::parse(const nvinfer1::PluginFieldCollection* fc, LayerNormAttrs* attrs,
                                std::string* err) {
  return parse_layer_norm_fields(kOp, fc, attrs, err);
}

nvinfer1::IPluginV3* VSSBlockTailCreator::createPlugin(const char* name, const nvinfer1::PluginFieldCollection* fc,
                                                       nvinfer1::TensorRTPhase /*phase*/) noexcept {
  return create<VSSBlockTailPlugin, LayerNormAttrs>(name, fc, &VSSBlockTailCreator::parse);
}

}  // namespace ssmpose_trt
