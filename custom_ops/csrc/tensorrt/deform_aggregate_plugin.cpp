// ssmpose::DeformAggregate as a TensorRT IPluginV3 plugin. Shape rules: those of the ONNX Runtime adapter
// (onnxruntime/deform_aggregate_op.cpp) and ops.check_deform_aggregate_args, applied to whatever dimensions are
// known at each stage (-1 = not known yet). The output's spatial size is an IExprBuilder expression of value's H
// and W, so it stays symbolic under dynamic shapes.
#include <climits>

#include "plugins.h"

namespace ssmpose_trt {

namespace {

constexpr const char* kOp = "DeformAggregate";
constexpr const char* kInputs[] = {"value", "offset_mask", "offset_bias"};
constexpr const char* kNone = "none";
constexpr const char* kSilu = "silu";
constexpr int64_t kMaxPoints = int64_t(1) << 20;  // the kernels' limit on kernel_h*kernel_w

std::string err_msg(const std::string& msg) { return std::string(kOp) + ": " + msg; }

// The constant c of Hout = (H + c) // stride + 1: c = 2*pad - (dilation*(kernel-1) + 1). No overflow: all < 2^31.
int64_t size_offset(int32_t kernel, int32_t pad, int32_t dilation) {
  return 2 * int64_t(pad) - (int64_t(dilation) * (kernel - 1) + 1);
}

}  // namespace

int64_t floor_div(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

int64_t deform_out_size(int64_t in, int32_t kernel, int32_t stride, int32_t pad, int32_t dilation) {
  return floor_div(in + size_offset(kernel, pad, dilation), stride) + 1;
}

DeformAggregatePlugin::DeformAggregatePlugin(std::string layer_name, const DeformAttrs& attrs)
    : PluginBase(kOp, std::move(layer_name), 2, 3), attrs_(attrs) {
  // Validated by the creator: K >= 1 and group*K*3 fits.
  const int64_t points = int64_t(attrs.kernel_h) * attrs.kernel_w - attrs.remove_center;
  om_cols_ = int64_t(attrs.group) * points * 3;
}

const char* DeformAggregatePlugin::input_name(int32_t index) const {
  return index >= 0 && index < 3 ? kInputs[index] : "?";
}

bool DeformAggregatePlugin::infer_shape(const std::vector<std::vector<int64_t>>& in, std::vector<int64_t>* out,
                                        std::string* err) const {
  const std::vector<int64_t>& value = in[0];
  const std::vector<int64_t>& om = in[1];
  auto fail = [&](const std::string& m) {
    *err = err_msg(m);
    return false;
  };
  if (value.size() != 4) return fail("value must be (B, H, W, G*C), got shape " + shape_str(value));
  if (om.size() != 4) return fail("offset_mask must be (B, Hout, Wout, P), got shape " + shape_str(om));
  const int64_t channels = int64_t(attrs_.group) * attrs_.group_channels;  // no overflow: both < 2^31
  if (known(value[3]) && value[3] != channels) {
    return fail("value has " + std::to_string(value[3]) + " channels, expected group*group_channels = " +
                std::to_string(attrs_.group) + "*" + std::to_string(attrs_.group_channels));
  }
  const int64_t height = value[1], width = value[2];
  const int64_t out_h =
      known(height) ? deform_out_size(height, attrs_.kernel_h, attrs_.stride_h, attrs_.pad_h, attrs_.dilation_h) : -1;
  const int64_t out_w =
      known(width) ? deform_out_size(width, attrs_.kernel_w, attrs_.stride_w, attrs_.pad_w, attrs_.dilation_w) : -1;
  if ((known(height) && out_h < 0) || (known(width) && out_w < 0)) {
    return fail("value's image (H, W) = (" + dim_str(height) + ", " + dim_str(width) +
                ") is smaller than the dilated kernel with its padding: (Hout, Wout) = (" + std::to_string(out_h) +
                ", " + std::to_string(out_w) + ")");
  }
  const std::vector<int64_t> expected_lead{value[0], out_h, out_w};
  for (int i = 0; i < 3; ++i) {
    if (known(om[i]) && known(expected_lead[i]) && om[i] != expected_lead[i]) {
      return fail("offset_mask leading dims " + shape_str({om[0], om[1], om[2]}) + " != (B, Hout, Wout) = " +
                  shape_str(expected_lead));
    }
  }
  if (known(om[3]) && om[3] < om_cols_) {
    return fail("offset_mask has " + std::to_string(om[3]) + " columns, needs >= group*K*3 = " +
                std::to_string(om_cols_));
  }
  if (in.size() > 2) {
    const std::vector<int64_t>& bias = in[2];
    if (bias.size() != 1 || (known(bias[0]) && known(om[3]) && bias[0] != om[3])) {
      return fail("offset_bias must have shape (P) = (" + dim_str(om[3]) + "), offset_mask's last dimension, got " +
                  shape_str(bias));
    }
  }
  out->assign(4, -1);
  for (int i = 0; i < 3; ++i) (*out)[i] = known(expected_lead[i]) ? expected_lead[i] : om[i];
  (*out)[3] = channels;
  const bool empty = (*out)[0] == 0 || (*out)[1] == 0 || (*out)[2] == 0;
  if (!empty && known((*out)[0]) && known((*out)[1]) && known((*out)[2]) && (height == 0 || width == 0)) {
    return fail("value has an empty image (H, W) = (" + dim_str(height) + ", " + dim_str(width) +
                ") but the output is not empty");
  }
  return true;
}

bool DeformAggregatePlugin::output_exprs(const nvinfer1::DimsExprs* inputs, nvinfer1::DimsExprs* out,
                                         nvinfer1::IExprBuilder& b) const {
  using Op = nvinfer1::DimensionOperation;
  const nvinfer1::DimsExprs& value = inputs[0];
  const nvinfer1::IDimensionExpr* one = b.constant(1);
  if (value.d[0] == nullptr || value.d[1] == nullptr || value.d[2] == nullptr || one == nullptr) return false;
  // (in + c) // stride + 1, with kFLOOR_DIV (floor division, as the Python reference).
  auto out_size = [&](const nvinfer1::IDimensionExpr* in, int32_t kernel, int32_t stride, int32_t pad,
                      int32_t dilation) -> const nvinfer1::IDimensionExpr* {
    const nvinfer1::IDimensionExpr* c = b.constant(size_offset(kernel, pad, dilation));
    const nvinfer1::IDimensionExpr* s = b.constant(stride);
    if (c == nullptr || s == nullptr) return nullptr;
    const nvinfer1::IDimensionExpr* sum = b.operation(Op::kSUM, *in, *c);
    if (sum == nullptr) return nullptr;
    const nvinfer1::IDimensionExpr* q = b.operation(Op::kFLOOR_DIV, *sum, *s);
    if (q == nullptr) return nullptr;
    return b.operation(Op::kSUM, *q, *one);
  };
  out->nbDims = 4;
  out->d[0] = value.d[0];
  out->d[1] = out_size(value.d[1], attrs_.kernel_h, attrs_.stride_h, attrs_.pad_h, attrs_.dilation_h);
  out->d[2] = out_size(value.d[2], attrs_.kernel_w, attrs_.stride_w, attrs_.pad_w, attrs_.dilation_w);
  out->d[3] = b.constant(int64_t(attrs_.group) * attrs_.group_channels);
  return out->d[1] != nullptr && out->d[2] != nullptr && out->d[3] != nullptr;
}

void DeformAggregatePlugin::prepare(const std::vector<std::vector<int64_t>>& in, int32_t dtype) {
  const std::vector<int64_t>& value = in[0];
  const std::vector<int64_t>& om = in[1];
  shape_ = ssm_deform_shape{};
  shape_.batch = value[0];
  shape_.height = value[1];
  shape_.width = value[2];
  shape_.out_height = om[1];
  shape_.out_width = om[2];
  shape_.groups = attrs_.group;
  shape_.group_channels = attrs_.group_channels;
  shape_.offset_stride = om[3];
  shape_.kernel_h = attrs_.kernel_h;
  shape_.kernel_w = attrs_.kernel_w;
  shape_.stride_h = attrs_.stride_h;
  shape_.stride_w = attrs_.stride_w;
  shape_.pad_h = attrs_.pad_h;
  shape_.pad_w = attrs_.pad_w;
  shape_.dilation_h = attrs_.dilation_h;
  shape_.dilation_w = attrs_.dilation_w;
  shape_.remove_center = attrs_.remove_center;
  shape_.offset_scale = attrs_.offset_scale;
  shape_.dtype = dtype;
  shape_.activation = attrs_.activation;
  empty_output_ = value[0] == 0 || om[1] == 0 || om[2] == 0;
}

int DeformAggregatePlugin::launch(const CudaKernels& cuda, const void* const* inputs, void* const* outputs,
                                  void* stream, const char** kernel) const {
  *kernel = "ssm_deform_aggregate_fwd_cuda";
  const void* bias = configured_inputs() > 2 ? inputs[2] : nullptr;
  return cuda.deform_aggregate_fwd(&shape_, inputs[0], inputs[1], bias, outputs[0], stream);
}

void DeformAggregatePlugin::write_fields(FieldWriter* w) const {
  w->add_int("kernel_h", attrs_.kernel_h);
  w->add_int("kernel_w", attrs_.kernel_w);
  w->add_int("stride_h", attrs_.stride_h);
  w->add_int("stride_w", attrs_.stride_w);
  w->add_int("pad_h", attrs_.pad_h);
  w->add_int("pad_w", attrs_.pad_w);
  w->add_int("dilation_h", attrs_.dilation_h);
  w->add_int("dilation_w", attrs_.dilation_w);
  w->add_int("group", attrs_.group);
  w->add_int("group_channels", attrs_.group_channels);
  w->add_float("offset_scale", attrs_.offset_scale);
  w->add_int("remove_center", attrs_.remove_center);
  w->add_string("activation", attrs_.activation == SSM_ACTIVATION_SILU ? kSilu : kNone);
}

// ------------------------------------------------------------------------------------------------

namespace {

struct IntField {
  const char* name;
  int32_t DeformAttrs::*member;
  int64_t lo;
  int64_t hi;
};

const IntField kIntFields[] = {
    {"kernel_h", &DeformAttrs::kernel_h, 1, INT32_MAX},
    {"kernel_w", &DeformAttrs::kernel_w, 1, INT32_MAX},
    {"stride_h", &DeformAttrs::stride_h, 1, INT32_MAX},
    {"stride_w", &DeformAttrs::stride_w, 1, INT32_MAX},
    {"pad_h", &DeformAttrs::pad_h, 0, INT32_MAX},
    {"pad_w", &DeformAttrs::pad_w, 0, INT32_MAX},
    {"dilation_h", &DeformAttrs::dilation_h, 1, INT32_MAX},
    {"dilation_w", &DeformAttrs::dilation_w, 1, INT32_MAX},
    {"group", &DeformAttrs::group, 1, INT32_MAX},
    {"group_channels", &DeformAttrs::group_channels, 1, INT32_MAX},
    {"remove_center", &DeformAttrs::remove_center, 0, 1},
};

}  // namespace

DeformAggregateCreator::DeformAggregateCreator() : CreatorBase(kOp) {
  for (const IntField& f : kIntFields) add_field(f.name, nvinfer1::PluginFieldType::kINT32);
  add_field("offset_scale", nvinfer1::PluginFieldType::kFLOAT32);
  add_field("activation", nvinfer1::PluginFieldType::kCHAR, 5);  // "none" / "silu" and a NUL
}

bool DeformAggregateCreator::parse(const nvinfer1::PluginFieldCollection* fc, DeformAttrs* attrs, std::string* err) {
  FieldReader r(kOp, fc);
  DeformAttrs a;
  for (const IntField& f : kIntFields) {
    int64_t v = 0;
    if (!r.get_int(f.name, true, 0, f.lo, f.hi, &v, err)) return false;
    a.*(f.member) = static_cast<int32_t>(v);
  }
  if (!r.get_float("offset_scale", true, 1.0f, &a.offset_scale, err)) return false;
  std::string activation;
  if (!r.get_string("activation", false, kNone, &activation, err)) return false;
  if (activation != kNone && activation != kSilu) {
    *err = err_msg("field activation must be \"none\" or \"silu\", got " + quoted(activation));
    return false;
  }
  a.activation = activation == kSilu ? SSM_ACTIVATION_SILU : SSM_ACTIVATION_NONE;
  const int64_t points = int64_t(a.kernel_h) * a.kernel_w - a.remove_center;  // no overflow: both < 2^31
  if (points < 1) {
    *err = err_msg("kernel " + std::to_string(a.kernel_h) + "x" + std::to_string(a.kernel_w) +
                   " with remove_center has no sampling points");
    return false;
  }
  if (points > kMaxPoints) {
    *err = err_msg("kernel_h*kernel_w = " + std::to_string(int64_t(a.kernel_h) * a.kernel_w) +
                   " exceeds the supported " + std::to_string(kMaxPoints));
    return false;
  }
  // group*K*3 < 2^31 * 2^20 * 3 < 2^63: cannot overflow int64.
  *attrs = a;
  return true;
}

nvinfer1::IPluginV3* DeformAggregateCreator::createPlugin(const char* name, const nvinfer1::PluginFieldCollection* fc,
                                                          nvinfer1::TensorRTPhase /*phase*/) noexcept {
  return create<DeformAggregatePlugin, DeformAttrs>(name, fc, &DeformAggregateCreator::parse);
}

}  // namespace ssmpose_trt
