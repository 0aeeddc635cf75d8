// ssmpose::DeformAggregate for ONNX Runtime (CPU EP, and CUDA EP when built with CUDA).
//
// Inputs value (B, H, W, G*C), offset_mask (B, Hout, Wout, P) with P >= G*K*3, K = kernel_h*kernel_w -
// remove_center, and optional offset_bias (P) (domain version 5); output (B, Hout, Wout, G*C). Attributes
// kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group, group_channels,
// remove_center (ints) and offset_scale (float), all required, and activation (string "none" or "silu", default
// "none"; domain version 5). All tensors share one type T (float32 or float16). Semantics: docs/ops.md.
#include <climits>
#include <cmath>

#include "ort_common.h"
#include "ssmpose_kernels.h"

namespace ssmpose_ort {

namespace {

constexpr const char* kOp = "DeformAggregate";
constexpr const char* kInputs[] = {"value", "offset_mask", "offset_bias"};
constexpr size_t kNumInputs = 3;
constexpr size_t kRequiredInputs = 2;
constexpr int64_t kMaxPoints = int64_t(1) << 20;  // the kernels' limit on kernel_h*kernel_w

OrtStatus* shape_error(const Api& api, const std::string& msg) {
  return make_error(api, ORT_INVALID_ARGUMENT, "%s: %s", kOp, msg.c_str());
}

// Python-style floor division (b > 0), so that the output size matches reference.deform_output_size.
int64_t floor_div(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}

struct Attrs {
  int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group, group_channels,
      remove_center;
  float offset_scale;
  int32_t activation;
};

struct DeformAggregateKernel : Kernel {
  Attrs a{};
  int64_t points = 0;   // K
  int64_t om_cols = 0;  // group*K*3
  int num_threads = 0;

  OrtStatus* compute(OrtKernelContext* ctx) override {
    size_t count = 0;
    if (OrtStatus* st = api.KernelContext_GetInputCount(ctx, &count)) return st;
    TensorArg value, om, bias;
    if (OrtStatus* st = read_input(api, ctx, count, 0, kOp, "value", true, &value)) return st;
    if (OrtStatus* st = read_input(api, ctx, count, 1, kOp, "offset_mask", true, &om)) return st;
    if (OrtStatus* st = read_input(api, ctx, count, 2, kOp, "offset_bias", false, &bias)) return st;

    int32_t dtype = 0;
    if (!to_ssm_dtype(value.type, &dtype)) {
      return shape_error(api, std::string("value has element type ") + type_name(value.type) +
                                  "; supported: float32, float16");
    }
    if (OrtStatus* st = check_same_type(api, kOp, value, om)) return st;
    if (OrtStatus* st = check_same_type(api, kOp, value, bias)) return st;

    // Shapes: the rules of ops.check_deform_aggregate_args.
    if (value.rank() != 4) {
      return shape_error(api, "value must be (B, H, W, G*C), got shape " + shape_str(value.dims));
    }
    if (om.rank() != 4) {
      return shape_error(api, "offset_mask must be (B, Hout, Wout, P), got shape " + shape_str(om.dims));
    }
    const int64_t batch = value.dims[0], height = value.dims[1], width = value.dims[2], channels = value.dims[3];
    const int64_t expected_channels = a.group * a.group_channels;  // no overflow: both < 2^31
    if (channels != expected_channels) {
      return shape_error(api, "value has " + std::to_string(channels) +
                                  " channels, expected group*group_channels = " + std::to_string(a.group) + "*" +
                                  std::to_string(a.group_channels));
    }
    // Hout = (H + 2*pad_h - (dilation_h*(kernel_h-1)+1)) // stride_h + 1; no overflow: attributes < 2^31.
    const int64_t out_h = floor_div(height + 2 * a.pad_h - (a.dilation_h * (a.kernel_h - 1) + 1), a.stride_h) + 1;
    const int64_t out_w = floor_div(width + 2 * a.pad_w - (a.dilation_w * (a.kernel_w - 1) + 1), a.stride_w) + 1;
    const std::vector<int64_t> lead{om.dims[0], om.dims[1], om.dims[2]};
    if (lead != std::vector<int64_t>{batch, out_h, out_w}) {
      return shape_error(api, "offset_mask leading dims " + shape_str(lead) + " != (B, Hout, Wout) = " +
                                  shape_str({batch, out_h, out_w}));
    }
    if (om.dims[3] < om_cols) {
      return shape_error(api, "offset_mask has " + std::to_string(om.dims[3]) + " columns, needs >= group*K*3 = " +
                                  std::to_string(om_cols));
    }
    if (bias.present() && bias.dims != std::vector<int64_t>{om.dims[3]}) {
      return shape_error(api, "offset_bias must have shape (P) = (" + std::to_string(om.dims[3]) +
                                  "), offset_mask's last dimension, got " + shape_str(bias.dims));
    }

    // Before allocating: an empty image with a non-empty output (found by fuzzing: with group_channels near
    // 2^31 the output was allocated first, terabytes, and the allocation failure was the error).
    const bool empty_output = batch == 0 || out_h == 0 || out_w == 0 || channels == 0;
    if (!empty_output && (height == 0 || width == 0)) {
      return shape_error(api, "value has an empty image (H, W) = (" + std::to_string(height) + ", " +
                                  std::to_string(width) + ") but the output is not empty");
    }

    const std::vector<int64_t> out_dims{batch, out_h, out_w, channels};
    void* out = nullptr;
    if (OrtStatus* st = alloc_output(api, ctx, 0, out_dims, kOp, &out)) return st;
    if (out == nullptr) return nullptr;  // empty output: nothing to compute

    ssm_deform_shape shape{};
    shape.batch = batch;
    shape.height = height;
    shape.width = width;
    shape.out_height = out_h;
    shape.out_width = out_w;
    shape.groups = a.group;
    shape.group_channels = a.group_channels;
    shape.offset_stride = om.dims[3];
    shape.kernel_h = static_cast<int32_t>(a.kernel_h);
    shape.kernel_w = static_cast<int32_t>(a.kernel_w);
    shape.stride_h = static_cast<int32_t>(a.stride_h);
    shape.stride_w = static_cast<int32_t>(a.stride_w);
    shape.pad_h = static_cast<int32_t>(a.pad_h);
    shape.pad_w = static_cast<int32_t>(a.pad_w);
    shape.dilation_h = static_cast<int32_t>(a.dilation_h);
    shape.dilation_w = static_cast<int32_t>(a.dilation_w);
    shape.remove_center = static_cast<int32_t>(a.remove_center);
    shape.offset_scale = a.offset_scale;
    shape.dtype = dtype;
    shape.activation = a.activation;

    int status = SSM_OK;
    const char* fn = "";
    const char* (*status_string)(int) = ssm_status_string;
    if (def->device == Device::CPU) {
      fn = "ssm_deform_aggregate_fwd_cpu";
      status = ssm_deform_aggregate_fwd_cpu(&shape, value.data, om.data, bias.data, out, num_threads);
    } else {
#if defined(SSMPOSE_ORT_WITH_CUDA)
      const CudaKernels* cuda = nullptr;
      if (OrtStatus* st = cuda_kernels(api, kOp, &cuda)) return st;
      void* stream = nullptr;
      if (OrtStatus* st = compute_stream(api, ctx, &stream)) return st;
      fn = "ssm_deform_aggregate_fwd_cuda";
      status_string = cuda->status_string;
      status = cuda->deform_aggregate_fwd(&shape, value.data, om.data, bias.data, out, stream);
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
  Attrs a{};
  struct IntAttr {
    const char* name;
    int64_t* dst;
    int64_t lo;
  };
  const IntAttr ints[] = {
      {"kernel_h", &a.kernel_h, 1},     {"kernel_w", &a.kernel_w, 1},     {"stride_h", &a.stride_h, 1},
      {"stride_w", &a.stride_w, 1},     {"pad_h", &a.pad_h, 0},           {"pad_w", &a.pad_w, 0},
      {"dilation_h", &a.dilation_h, 1}, {"dilation_w", &a.dilation_w, 1}, {"group", &a.group, 1},
      {"group_channels", &a.group_channels, 1}, {"remove_center", &a.remove_center, 0},
  };
  for (const IntAttr& attr : ints) {
    if (OrtStatus* st = read_int_attr(api, info, kOp, attr.name, attr.dst)) return st;
    const int64_t hi = attr.dst == &a.remove_center ? 1 : INT32_MAX;
    if (OrtStatus* st = check_attr_range(api, kOp, attr.name, *attr.dst, attr.lo, hi)) return st;
  }
  if (OrtStatus* st = read_float_attr(api, info, kOp, "offset_scale", &a.offset_scale)) return st;
  if (!std::isfinite(a.offset_scale)) {  // as the OpenVINO extension; NaN/Inf would reach every sample location
    return make_error(api, ORT_INVALID_ARGUMENT, "%s: attribute offset_scale must be finite, got %g", kOp,
                      static_cast<double>(a.offset_scale));
  }
  std::string activation;
  if (OrtStatus* st = read_string_attr_or(api, info, kOp, "activation", "none", &activation)) return st;
  if (activation != "none" && activation != "silu") {
    return make_error(api, ORT_INVALID_ARGUMENT, "%s: attribute activation must be \"none\" or \"silu\", got \"%s\"",
                      kOp, activation.c_str());
  }
  a.activation = activation == "silu" ? SSM_ACTIVATION_SILU : SSM_ACTIVATION_NONE;
  // Plugin attributes of the TensorRT form (plugin_version, plugin_namespace) and any others are ignored.

  const int64_t points = a.kernel_h * a.kernel_w - a.remove_center;  // no overflow: both < 2^31
  if (points < 1) {
    return make_error(api, ORT_INVALID_ARGUMENT, "%s: kernel %lldx%lld with remove_center has no sampling points",
                      kOp, static_cast<long long>(a.kernel_h), static_cast<long long>(a.kernel_w));
  }
  if (points > kMaxPoints) {
    return make_error(api, ORT_INVALID_ARGUMENT, "%s: kernel_h*kernel_w = %lld exceeds the supported %lld", kOp,
                      static_cast<long long>(a.kernel_h * a.kernel_w), static_cast<long long>(kMaxPoints));
  }
  int64_t om_cols = 0;
  if (!checked_mul(a.group, points, &om_cols) || !checked_mul(om_cols, 3, &om_cols)) {
    return make_error(api, ORT_INVALID_ARGUMENT, "%s: group*K*3 overflows (group=%lld, K=%lld)", kOp,
                      static_cast<long long>(a.group), static_cast<long long>(points));
  }
  auto* k = new DeformAggregateKernel();
  k->a = a;
  k->points = points;
  k->om_cols = om_cols;
  k->num_threads = def.device == Device::CPU ? cpu_threads() : 0;
  *out = k;
  return nullptr;
}

}  // namespace

void deform_aggregate_op_defs(std::vector<const OpDef*>* defs) {
  static const OpDefSet ops(kOp, kInputs, kNumInputs, kRequiredInputs, create, 1, false);
  ops.append_to(defs);
}

}  // namespace ssmpose_ort
