// ssmpose::LayerNorm (domain version 3) for ONNX Runtime (CPU EP, and CUDA EP when built with CUDA).
//
// Inputs: X (rank >= 1, last dimension C >= 1), weight (C), bias (C); attribute epsilon (float, default 1e-5,
// finite and > 0); output Y, X's shape. All share one type T (float32 or float16). Y is X normalised over its
// last axis with float32 statistics (ONNX LayerNormalization with axis = -1, stash_type = 1). Semantics:
// docs/ops.md.
#include <cmath>
#include <string>

#include "ort_common.h"
#include "ssmpose_kernels.h"

namespace ssmpose_ort {

namespace {

constexpr const char* kOp = "LayerNorm";
constexpr int kSinceVersion = 3;  // ssmpose domain version that introduced the op
constexpr float kDefaultEpsilon = 1e-5f;
constexpr const char* kInputs[] = {"X", "weight", "bias"};
constexpr size_t kNumInputs = 3;
constexpr size_t kRequiredInputs = 3;

OrtStatus* shape_error(const Api& api, const std::string& msg) {
  return make_error(api, ORT_INVALID_ARGUMENT, "%s: %s", kOp, msg.c_str());
}

struct LayerNormKernel : Kernel {
  float epsilon = kDefaultEpsilon;
  int num_threads = 0;

  OrtStatus* compute(OrtKernelContext* ctx) override {
    size_t count = 0;
    if (OrtStatus* st = api.KernelContext_GetInputCount(ctx, &count)) return st;
    TensorArg t[kNumInputs];
    for (size_t i = 0; i < kNumInputs; ++i) {
      if (OrtStatus* st = read_input(api, ctx, count, i, kOp, kInputs[i], i < kRequiredInputs, &t[i])) return st;
    }
    const TensorArg &x = t[0], &weight = t[1], &bias = t[2];

    int32_t dtype = 0;
    if (!to_ssm_dtype(x.type, &dtype)) {
      return shape_error(api, std::string("X has element type ") + type_name(x.type) + "; supported: float32, float16");
    }
    for (size_t i = 1; i < kNumInputs; ++i) {
      if (OrtStatus* st = check_same_type(api, kOp, x, t[i])) return st;
    }

    if (x.rank() < 1) {
      return shape_error(api, "X must have rank >= 1 (it is normalised over its last axis), got shape " +
                                  shape_str(x.dims));
    }
    const int64_t channels = x.dims.back();
    if (channels < 1) {
      return shape_error(api, "the last dimension C of X must be >= 1, got shape " + shape_str(x.dims));
    }
    for (const TensorArg* p : {&weight, &bias}) {
      if (p->dims != std::vector<int64_t>{channels}) {
        return shape_error(api, std::string(p->name) + " must be (C,) = (" + std::to_string(channels) +
                                    ",) for X of shape " + shape_str(x.dims) + ", got " + shape_str(p->dims));
      }
    }
    int64_t rows = 1;
    for (size_t i = 0; i + 1 < x.rank(); ++i) {
      if (!checked_mul(rows, x.dims[i], &rows)) return shape_error(api, "X has too many elements");
    }

    void* y = nullptr;
    if (OrtStatus* st = alloc_output(api, ctx, 0, x.dims, kOp, &y)) return st;
    if (y == nullptr || rows == 0) return nullptr;  // empty output: nothing to compute

    ssm_layer_norm_shape shape{};
    shape.rows = rows;
    shape.channels = channels;
    shape.epsilon = epsilon;
    shape.dtype = dtype;

    int status = SSM_OK;
    const char* fn = "";
    const char* (*status_string)(int) = ssm_status_string;
    if (def->device == Device::CPU) {
      fn = "ssm_layer_norm_fwd_cpu";
      status = ssm_layer_norm_fwd_cpu(&shape, x.data, weight.data, bias.data, y, num_threads);
    } else {
#if defined(SSMPOSE_ORT_WITH_CUDA)
      const CudaKernels* cuda = nullptr;
      if (OrtStatus* st = cuda_kernels(api, kOp, &cuda)) return st;
      void* stream = nullptr;
      if (OrtStatus* st = compute_stream(api, ctx, &stream)) return st;
      fn = "ssm_layer_norm_fwd_cuda";
      status_string = cuda->status_string;
      status = cuda->layer_norm_fwd(&shape, x.data, weight.data, bias.data, y, stream);
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
  float epsilon = kDefaultEpsilon;
  if (OrtStatus* st = read_float_attr_or(api, info, kOp, "epsilon", kDefaultEpsilon, &epsilon)) return st;
  if (!(std::isfinite(epsilon) && epsilon > 0.0f)) {
    return make_error(api, ORT_INVALID_ARGUMENT, "%s: attribute epsilon must be finite and > 0, got %g", kOp,
                      static_cast<double>(epsilon));
  }
  auto* k = new LayerNormKernel();
  k->epsilon = epsilon;
  k->num_threads = def.device == Device::CPU ? cpu_threads() : 0;
  *out = k;
  return nullptr;
}

}  // namespace

void layer_norm_op_defs(std::vector<const OpDef*>* defs, bool op_versions) {
  static const OpDefSet ops(kOp, kInputs, kNumInputs, kRequiredInputs, create, kSinceVersion, op_versions);
  ops.append_to(defs);
}

}  // namespace ssmpose_ort
