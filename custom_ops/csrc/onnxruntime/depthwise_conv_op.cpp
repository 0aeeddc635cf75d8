// ssmpose::MultiKernelDepthwiseConv (domain version 4) for ONNX Runtime (CPU EP, and CUDA EP when built with CUDA).
//
// Inputs X (B, H, W, C) channel-last, weight (C, K, K) with K odd <= 15, bias (C); output Y, X's shape. Attributes
// kernel_sizes and group_channels (ints, required, 1 to 16 groups; odd kernel sizes, groups of >= 1 channels summing
// to C), shuffle_groups (int, default 1, dividing C) and activation (string "none" or "gelu", default "none").
// All tensors share one type T (float32 or float16). The attributes are checked when the kernel is created (session
// creation), the tensors at compute. Semantics: docs/ops.md.
#include <algorithm>
#include <climits>
#include <string>
#include <vector>

#include "ort_common.h"
#include "ssmpose_kernels.h"

namespace ssmpose_ort {

namespace {

constexpr const char* kOp = "MultiKernelDepthwiseConv";
constexpr int kSinceVersion = 4;  // ssmpose domain version that introduced the op
constexpr const char* kInputs[] = {"X", "weight", "bias"};
constexpr size_t kNumInputs = 3;

OrtStatus* invalid(const Api& api, const std::string& msg) {
  return make_error(api, ORT_INVALID_ARGUMENT, "%s: %s", kOp, msg.c_str());
}

// "[3, 5, 7]"
std::string list_str(const std::vector<int64_t>& values) {
  std::string s = "[";
  for (size_t i = 0; i < values.size(); ++i) s += (i ? ", " : "") + std::to_string(values[i]);
  return s + "]";
}

struct Attrs {
  std::vector<int64_t> kernel_sizes, group_channels;
  int64_t channels = 0;  // sum of group_channels
  int64_t kernel_needed = 1;  // the largest kernel size: K must be at least this
  int64_t shuffle_groups = 1;
  int32_t activation = SSM_ACTIVATION_NONE;
};

OrtStatus* check_groups(const Api& api, Attrs* a) {
  const size_t n = a->kernel_sizes.size();
  if (n > SSM_DWCONV_MAX_GROUPS) {
    return invalid(api, "attribute kernel_sizes has " + std::to_string(n) + " values, at most " +
                               std::to_string(SSM_DWCONV_MAX_GROUPS) + " channel groups are supported");
  }
  if (a->group_channels.size() != n) {
    return invalid(api, "attributes kernel_sizes " + list_str(a->kernel_sizes) + " and group_channels " +
                               list_str(a->group_channels) + " must have the same length (one value per group)");
  }
  for (int64_t k : a->kernel_sizes) {
    if (k < 1 || k > SSM_DWCONV_MAX_KERNEL || k % 2 == 0) {
      return invalid(api, "attribute kernel_sizes must hold odd sizes in [1, " +
                                 std::to_string(SSM_DWCONV_MAX_KERNEL) + "], got " + list_str(a->kernel_sizes));
    }
    a->kernel_needed = std::max(a->kernel_needed, k);
  }
  a->channels = 0;
  for (int64_t c : a->group_channels) {
    if (c < 1 || c > INT32_MAX) {
      return invalid(api, "attribute group_channels must hold channel counts in [1, 2^31 - 1], got " +
                                 list_str(a->group_channels));
    }
    a->channels += c;  // no overflow: at most 16 values below 2^31
  }
  return nullptr;
}

OrtStatus* read_attrs(const Api& api, const OrtKernelInfo* info, Attrs* a) {
  if (OrtStatus* st = read_ints_attr(api, info, kOp, "kernel_sizes", &a->kernel_sizes)) return st;
  if (OrtStatus* st = read_ints_attr(api, info, kOp, "group_channels", &a->group_channels)) return st;
  if (OrtStatus* st = check_groups(api, a)) return st;
  if (OrtStatus* st = read_int_attr_or(api, info, kOp, "shuffle_groups", 1, &a->shuffle_groups)) return st;
  if (OrtStatus* st = check_attr_range(api, kOp, "shuffle_groups", a->shuffle_groups, 1, INT32_MAX)) return st;
  if (a->channels % a->shuffle_groups != 0) {
    return invalid(api, "attribute shuffle_groups = " + std::to_string(a->shuffle_groups) +
                               " must divide the channel count C = " + std::to_string(a->channels) +
                               " (the sum of group_channels " + list_str(a->group_channels) + ")");
  }
  std::string activation;
  if (OrtStatus* st = read_string_attr_or(api, info, kOp, "activation", "none", &activation)) return st;
  if (activation == "none") {
    a->activation = SSM_ACTIVATION_NONE;
  } else if (activation == "gelu") {
    a->activation = SSM_ACTIVATION_GELU;
  } else {
    return invalid(api, "attribute activation must be \"none\" or \"gelu\", got \"" + activation + "\"");
  }
  // Plugin attributes of the TensorRT form (plugin_version, plugin_namespace) and any others are ignored.
  return nullptr;
}

struct DepthwiseConvKernel : Kernel {
  Attrs a;
  int num_threads = 0;

  // Checks X, weight and bias against the attributes; fills the kernel shape (all but dtype).
  OrtStatus* check_shapes(const TensorArg& x, const TensorArg& weight, const TensorArg& bias,
                          ssm_dwconv_shape* shape) const {
    const std::string C = std::to_string(a.channels);
    if (x.rank() != 4) {
      return invalid(api, "X must be (B, H, W, C) (channel-last), got shape " + shape_str(x.dims));
    }
    if (x.dims[3] != a.channels) {
      return invalid(api, "X has C = " + std::to_string(x.dims[3]) + " channels (shape " + shape_str(x.dims) +
                                  "), but group_channels " + list_str(a.group_channels) + " sum to " + C);
    }
    const bool square = weight.rank() == 3 && weight.dims[1] == weight.dims[2];
    const int64_t K = square ? weight.dims[1] : 0;
    if (!square || weight.dims[0] != a.channels || K < 1 || K > SSM_DWCONV_MAX_KERNEL || K % 2 == 0) {
      return invalid(api, "weight must be (C, K, K) = (" + C + ", K, K) with K odd in [1, " +
                                  std::to_string(SSM_DWCONV_MAX_KERNEL) + "], got " + shape_str(weight.dims));
    }
    if (K < a.kernel_needed) {
      return invalid(api, "weight has K = " + std::to_string(K) + " (shape " + shape_str(weight.dims) +
                                  "), smaller than the largest of kernel_sizes " + list_str(a.kernel_sizes));
    }
    if (bias.dims != std::vector<int64_t>{a.channels}) {
      return invalid(api, "bias must be (C,) = (" + C + ",), got " + shape_str(bias.dims));
    }
    shape->batch = x.dims[0];
    shape->height = x.dims[1];
    shape->width = x.dims[2];
    shape->channels = a.channels;
    shape->kernel_max = static_cast<int32_t>(K);
    shape->num_groups = static_cast<int32_t>(a.kernel_sizes.size());
    for (size_t g = 0; g < a.kernel_sizes.size(); ++g) {
      shape->kernel_sizes[g] = static_cast<int32_t>(a.kernel_sizes[g]);
      shape->group_channels[g] = static_cast<int32_t>(a.group_channels[g]);
    }
    shape->shuffle_groups = static_cast<int32_t>(a.shuffle_groups);
    shape->activation = a.activation;
    return nullptr;
  }

  OrtStatus* compute(OrtKernelContext* ctx) override {
    size_t count = 0;
    if (OrtStatus* st = api.KernelContext_GetInputCount(ctx, &count)) return st;
    TensorArg t[kNumInputs];
    for (size_t i = 0; i < kNumInputs; ++i) {
      if (OrtStatus* st = read_input(api, ctx, count, i, kOp, kInputs[i], true, &t[i])) return st;
    }
    const TensorArg &x = t[0], &weight = t[1], &bias = t[2];

    ssm_dwconv_shape shape{};
    if (!to_ssm_dtype(x.type, &shape.dtype)) {
      return invalid(api, std::string("X has element type ") + type_name(x.type) + "; supported: float32, float16");
    }
    for (size_t i = 1; i < kNumInputs; ++i) {
      if (OrtStatus* st = check_same_type(api, kOp, x, t[i])) return st;
    }
    if (OrtStatus* st = check_shapes(x, weight, bias, &shape)) return st;

    void* y = nullptr;
    if (OrtStatus* st = alloc_output(api, ctx, 0, x.dims, kOp, &y)) return st;
    if (y == nullptr) return nullptr;  // empty output (B, H or W is 0): nothing to compute

    int status = SSM_OK;
    const char* fn = "";
    const char* (*status_string)(int) = ssm_status_string;
    if (def->device == Device::CPU) {
      fn = "ssm_depthwise_conv_fwd_cpu";
      status = ssm_depthwise_conv_fwd_cpu(&shape, x.data, weight.data, bias.data, y, num_threads);
    } else {
#if defined(SSMPOSE_ORT_WITH_CUDA)
      const CudaKernels* cuda = nullptr;
      if (OrtStatus* st = cuda_kernels(api, kOp, &cuda)) return st;
      void* stream = nullptr;
      if (OrtStatus* st = compute_stream(api, ctx, &stream)) return st;
      fn = "ssm_depthwise_conv_fwd_cuda";
      status_string = cuda->status_string;
      status = cuda->depthwise_conv_fwd(&shape, x.data, weight.data, bias.data, y, stream);
#else
      return make_error(api, ORT_FAIL, "%s: built without CUDA", kOp);
#endif
    }
    if (status != SSM_OK) {
      return make_error(api, ORT_FAIL, "%s: %s failed with status %d (%s)", kOp, fn, status, status_string(status));
    }
    return nullptr;
  }
};

OrtStatus* create(const OpDef& def, const Api& api, const OrtKernelInfo* info, Kernel** out) {
  Attrs a;
  if (OrtStatus* st = read_attrs(api, info, &a)) return st;
  auto* k = new DepthwiseConvKernel();
  k->a = a;
  k->num_threads = def.device == Device::CPU ? cpu_threads() : 0;
  *out = k;
  return nullptr;
}

}  // namespace

void depthwise_conv_op_defs(std::vector<const OpDef*>* defs, bool op_versions) {
  static const OpDefSet ops(kOp, kInputs, kNumInputs, kNumInputs, create, kSinceVersion, op_versions);
  ops.append_to(defs);
}

}  // namespace ssmpose_ort
