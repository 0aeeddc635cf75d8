// ssmpose::MultiKernelDepthwiseConv (ssmpose domain version 4) as a TensorRT IPluginV3 plugin: HRVMamba's LPU
// convolution on a channel-last tensor (docs/ops.md). Depthwise convolutions whose kernel size depends on the channel
// group, stride 1, zero "same" padding, then ShuffleNet's channel shuffle and an optional exact GELU, in one kernel.
//
// The fields fix the channel count (C = the sum of group_channels), so the fields are checked whole when the plugin
// is created, and the input shapes against them at every stage, on whatever dimensions are known (-1 = not known
// yet): X is (B, H, W, C), weight (C, K, K) with K odd, 1..15, and at least the largest kernel size, bias (C,).
// B, H or W may be 0: the output is then empty and nothing is launched. The rules and their words are those of the
// ONNX Runtime adapter (onnxruntime/depthwise_conv_op.cpp), "field" for its "attribute". The output is X's dimension
// expressions.
#include <algorithm>

#include "plugins.h"

namespace ssmpose_trt {

namespace {

constexpr const char* kOp = "MultiKernelDepthwiseConv";
constexpr const char* kInputs[] = {"X", "weight", "bias"};
constexpr int32_t kNbInputs = 3;
constexpr const char* kActivations[] = {"none", "gelu"};  // indexed by ssm_activation

std::vector<int64_t> widen(const std::vector<int32_t>& v) { return std::vector<int64_t>(v.begin(), v.end()); }

}  // namespace

int64_t DepthwiseConvAttrs::channels() const {
  int64_t c = 0;
  for (int32_t g : group_channels) c += g;  // <= 16 * (2^31 - 1): no overflow
  return c;
}

int32_t DepthwiseConvAttrs::largest_kernel() const {
  return kernel_sizes.empty() ? 0 : *std::max_element(kernel_sizes.begin(), kernel_sizes.end());
}

const char* activation_name(int32_t activation) {
  return activation >= 0 && activation < 2 ? kActivations[activation] : "?";
}

DepthwiseConvPlugin::DepthwiseConvPlugin(std::string layer_name, const DepthwiseConvAttrs& attrs)
    : PluginBase(kOp, std::move(layer_name), kNbInputs, kNbInputs), attrs_(attrs) {}

const char* DepthwiseConvPlugin::input_name(int32_t index) const {
  return index >= 0 && index < kNbInputs ? kInputs[index] : "?";
}

bool DepthwiseConvPlugin::infer_shape(const std::vector<std::vector<int64_t>>& in, std::vector<int64_t>* out,
                                      std::string* err) const {
  auto fail = [&](const std::string& m) {
    *err = std::string(kOp) + ": " + m;
    return false;
  };
  const std::vector<int64_t>& x = in[0];
  const std::vector<int64_t>& w = in[1];
  const std::vector<int64_t>& b = in[2];
  const int64_t channels = attrs_.channels();
  const std::string groups = list_str(widen(attrs_.group_channels));
  if (x.size() != 4) return fail("X must be (B, H, W, C) (channel-last), got shape " + shape_str(x));
  if (known(x[3]) && x[3] != channels) {
    return fail("X has C = " + std::to_string(x[3]) + " channels (shape " + shape_str(x) + "), but group_channels " +
                groups + " sum to " + std::to_string(channels));
  }
  int64_t kernel = -1;
  int64_t ignored = 0;
  if (w.size() != 3 || !unify(w[0], channels, &ignored) || !unify(w[1], w[2], &kernel) ||
      (known(kernel) && (kernel % 2 != 1 || kernel > SSM_DWCONV_MAX_KERNEL))) {
    return fail("weight must be (C, K, K) = (" + std::to_string(channels) + ", K, K) with K odd in [1, " +
                std::to_string(SSM_DWCONV_MAX_KERNEL) + "], got " + shape_str(w));
  }
  if (known(kernel) && kernel < attrs_.largest_kernel()) {
    return fail("weight has K = " + std::to_string(kernel) + " (shape " + shape_str(w) +
                "), smaller than the largest of kernel_sizes " + list_str(widen(attrs_.kernel_sizes)));
  }
  if (b.size() != 1 || !unify(b[0], channels, &ignored)) {
    return fail("bias must be (C,) = (" + std::to_string(channels) + ",), got " + shape_str(b));
  }
  int64_t elements = channels;
  for (int i = 0; i < 3; ++i) {
    if (known(x[i]) && !checked_mul(elements, x[i], &elements)) return fail("X has too many elements");
  }
  *out = x;
  (*out)[3] = channels;
  return true;
}

bool DepthwiseConvPlugin::output_exprs(const nvinfer1::DimsExprs* inputs, nvinfer1::DimsExprs* out,
                                       nvinfer1::IExprBuilder& /*builder*/) const {
  return copy_exprs(inputs[0], out);  // Y has X's shape
}

void DepthwiseConvPlugin::prepare(const std::vector<std::vector<int64_t>>& in, int32_t dtype) {
  const std::vector<int64_t>& x = in[0];
  shape_ = ssm_dwconv_shape{};
  shape_.batch = x[0];
  shape_.height = x[1];
  shape_.width = x[2];
  shape_.channels = x[3];
  shape_.kernel_max = static_cast<int32_t>(in[1][1]);  // checked odd, <= 15 by infer_shape
  shape_.num_groups = static_cast<int32_t>(attrs_.kernel_sizes.size());  // 1..16 (parse)
  for (int32_t g = 0; g < shape_.num_groups; ++g) {
    shape_.group_channels[g] = attrs_.group_channels[g];
    shape_.kernel_sizes[g] = attrs_.kernel_sizes[g];
  }
  shape_.shuffle_groups = attrs_.shuffle_groups;
  shape_.activation = attrs_.activation;
  shape_.dtype = dtype;
  empty_output_ = x[0] == 0 || x[1] == 0 || x[2] == 0;  // C >= 1 (the fields); the kernels refuse H or W = 0
}

int DepthwiseConvPlugin::launch(const CudaKernels& cuda, const void* const* inputs, void* const* outputs,
                                void* stream, const char** kernel) const {
  *kernel = "ssm_depthwise_conv_fwd_cuda";
  return cuda.depthwise_conv_fwd(&shape_, inputs[0], inputs[1], inputs[2], outputs[0], stream);
}

void DepthwiseConvPlugin::write_fields(FieldWriter* w) const {
  w->add_ints("kernel_sizes", attrs_.kernel_sizes);
  w->add_ints("group_channels", attrs_.group_channels);
  w->add_int("shuffle_groups", attrs_.shuffle_groups);
  w->add_string("activation", activation_name(attrs_.activation));
}

// ------------------------------------------------------------------------------------------------

DepthwiseConvCreator::DepthwiseConvCreator() : CreatorBase(kOp) {
  add_field("kernel_sizes", nvinfer1::PluginFieldType::kINT32, SSM_DWCONV_MAX_GROUPS);
  add_field("group_channels", nvinfer1::PluginFieldType::kINT32, SSM_DWCONV_MAX_GROUPS);
  add_field("shuffle_groups", nvinfer1::PluginFieldType::kINT32);
  add_field("activation", nvinfer1::PluginFieldType::kCHAR, 5);  // "none" / "gelu" and a NUL
}

bool DepthwiseConvCreator::parse(const nvinfer1::PluginFieldCollection* fc, DepthwiseConvAttrs* attrs,
                                 std::string* err) {
  const FieldReader r(kOp, fc);
  auto fail = [&](const std::string& m) {
    *err = std::string(kOp) + ": " + m;
    return false;
  };
  std::vector<int64_t> kernel_sizes, group_channels;
  if (!r.get_ints("kernel_sizes", true, 1, SSM_DWCONV_MAX_GROUPS, &kernel_sizes, err)) return false;
  if (!r.get_ints("group_channels", true, 1, SSM_DWCONV_MAX_GROUPS, &group_channels, err)) return false;
  if (kernel_sizes.size() != group_channels.size()) {
    return fail("fields kernel_sizes " + list_str(kernel_sizes) + " and group_channels " + list_str(group_channels) +
                " must have the same length (one value per group)");
  }
  for (int64_t k : kernel_sizes) {
    if (k < 1 || k > SSM_DWCONV_MAX_KERNEL || k % 2 != 1) {
      return fail("field kernel_sizes must hold odd sizes in [1, " + std::to_string(SSM_DWCONV_MAX_KERNEL) +
                  "], got " + list_str(kernel_sizes));
    }
  }
  for (int64_t c : group_channels) {
    if (c < 1 || c > INT32_MAX) {
      return fail("field group_channels must hold channel counts in [1, 2^31 - 1], got " + list_str(group_channels));
    }
  }
  DepthwiseConvAttrs a;
  a.kernel_sizes.assign(kernel_sizes.begin(), kernel_sizes.end());
  a.group_channels.assign(group_channels.begin(), group_channels.end());
  int64_t shuffle = 1;
  if (!r.get_int("shuffle_groups", false, 1, 1, INT32_MAX, &shuffle, err)) return false;
  if (a.channels() % shuffle != 0) {
    return fail("field shuffle_groups = " + std::to_string(shuffle) + " must divide the channel count C = " +
                std::to_string(a.channels()) + " (the sum of group_channels " + list_str(group_channels) + ")");
  }
  a.shuffle_groups = static_cast<int32_t>(shuffle);
  std::string activation;
  if (!r.get_string("activation", false, kActivations[SSM_ACTIVATION_NONE], &activation, err)) return false;
  if (activation == kActivations[SSM_ACTIVATION_NONE]) {
    a.activation = SSM_ACTIVATION_NONE;
  } else if (activation == kActivations[SSM_ACTIVATION_GELU]) {
    a.activation = SSM_ACTIVATION_GELU;
  } else {
    return fail("field activation must be \"none\" or \"gelu\", got " + quoted(activation));
  }
  *attrs = a;
  return true;
}

nvinfer1::IPluginV3* DepthwiseConvCreator::createPlugin(const char* name, const nvinfer1::PluginFieldCollection* fc,
                                                        nvinfer1::TensorRTPhase /*phase*/) noexcept {
  return create<DepthwiseConvPlugin, DepthwiseConvAttrs>(name, fc, &DepthwiseConvCreator::parse);
}

}  // namespace ssmpose_trt
