// ssmpose::VSSBlockTail (domain version 7) for ONNX Runtime (CPU EP, and CUDA EP when built with CUDA).
//
// Inputs Y (..., D), R (..., C) with Y's leading dimensions, then the nine parameters of docs/ops.md:
// out_norm_weight (D), out_norm_bias (D), out_proj (D, C), norm_weight (C), norm_bias (C), fc1_weight (C, H),
// fc1_bias (H), fc2_weight (H, C), fc2_bias (C); all one type T (float32 or float16). Attribute epsilon (float,
// default 1e-5, finite and > 0). Output Z, R's shape.
#include <string>
#include <vector>

#include "ort_common.h"
#include "ssmpose_kernels.h"

namespace ssmpose_ort {

namespace {

constexpr const char* kOp = "VSSBlockTail";
constexpr int kSinceVersion = 7;
constexpr float kDefaultEpsilon = 1e-5f;
constexpr const char* kInputs[] = {"Y",           "R",         "out_norm_weight", "out_norm_bias",
                                   "out_proj",    "norm_weight", "norm_bias",     "fc1_weight",
                                   "fc1_bias",    "fc2_weight", "fc2_bias"};
constexpr size_t kNumInputs = sizeof(kInputs) / sizeof(kInputs[0]);

OrtStatus* shape_error(const Api& api, const std::string& msg) {
  return make_error(api, ORT_INVALID_ARGUMENT, "%s: %s", kOp, msg.c_str());
}

struct TailArgs {
  TensorArg t[kNumInputs];
  ssm_vss_tail_shape shape{};
};

// Reads the inputs and checks their types and shapes; fills args->shape except epsilon.
OrtStatus* read_args(const Api& api, OrtKernelContext* ctx, TailArgs* args) {
  size_t count = 0;
  if (OrtStatus* st = api.KernelContext_GetInputCount(ctx, &count)) return st;
  for (size_t i = 0; i < kNumInputs; ++i) {
    if (OrtStatus* st = read_input(api, ctx, count, i, kOp, kInputs[i], true, &args->t[i])) return st;
  }
  const TensorArg& y = args->t[0];
  const TensorArg& r = args->t[1];
  int32_t dtype = 0;
  if (!to_ssm_dtype(y.type, &dtype)) {
    return shape_error(api, std::string("Y has element type ") + type_name(y.type) + "; supported: float32, float16");
  }
  for (size_t i = 1; i < kNumInputs; ++i) {
    if (OrtStatus* st = check_same_type(api, kOp, y, args->t[i])) return st;
  }
  if (y.rank() < 1 || r.rank() != y.rank()) {
    return shape_error(api, "Y and R must have the same rank >= 1, got " + shape_str(y.dims) + " and " +
                                shape_str(r.dims));
  }
  for (size_t i = 0; i + 1 < y.rank(); ++i) {
    if (y.dims[i] != r.dims[i]) {
      return shape_error(api, "Y " + shape_str(y.dims) + " and R " + shape_str(r.dims) +
                                  " must agree in every dimension but the last");
    }
  }
  const int64_t D = y.dims.back(), C = r.dims.back();
  const TensorArg& fc1 = args->t[7];
  if (fc1.rank() != 2) {
    return shape_error(api, "fc1_weight must be (C, H) = (" + std::to_string(C) + ", H), got " + shape_str(fc1.dims));
  }
  const int64_t H = fc1.dims[1];
  const std::vector<int64_t> expected[kNumInputs] = {{}, {}, {D}, {D}, {D, C}, {C}, {C}, {C, H}, {H}, {H, C}, {C}};
  for (size_t i = 2; i < kNumInputs; ++i) {
    if (args->t[i].dims != expected[i]) {
      return shape_error(api, std::string(kInputs[i]) + " must be " + shape_str(expected[i]) + " for Y " +
                                  shape_str(y.dims) + ", R " + shape_str(r.dims) + " and fc1_weight " +
                                  shape_str(fc1.dims) + " (D = " + std::to_string(D) + ", C = " + std::to_string(C) +
                                  ", H = " + std::to_string(H) + "), got " + shape_str(args->t[i].dims));
    }
  }
  if (D < 1 || D > SSM_VSS_TAIL_MAX_WIDE || H < 1 || H > SSM_VSS_TAIL_MAX_WIDE || C < 1 ||
      C > SSM_VSS_TAIL_MAX_CHANNELS) {
    return shape_error(api, "widths D = " + std::to_string(D) + ", C = " + std::to_string(C) + ", H = " +
                                std::to_string(H) + " are outside the kernels' limits (1 <= D, H <= " +
                                std::to_string(SSM_VSS_TAIL_MAX_WIDE) + ", 1 <= C <= " +
                                std::to_string(SSM_VSS_TAIL_MAX_CHANNELS) + ")");
  }
  int64_t rows = 1;
  for (size_t i = 0; i + 1 < y.rank(); ++i) {
    if (!checked_mul(rows, y.dims[i], &rows)) return shape_error(api, "Y has too many elements");
  }
  args->shape.rows = rows;
  args->shape.inner = D;
  args->shape.channels = C;
  args->shape.hidden = H;
  args->shape.dtype = dtype;
  return nullptr;
}

struct TailKernel : Kernel {
  float epsilon = kDefaultEpsilon;
  int num_threads = 0;

  OrtStatus* compute(OrtKernelContext* ctx) override {
    TailArgs a;
    if (OrtStatus* st = read_args(api, ctx, &a)) return st;
    a.shape.epsilon = epsilon;
    void* z = nullptr;
    if (OrtStatus* st = alloc_output(api, ctx, 0, a.t[1].dims, kOp, &z)) return st;
    if (z == nullptr || a.shape.rows == 0) return nullptr;  // empty output: nothing to compute
    const ssm_vss_tail_params params{a.t[2].data, a.t[3].data, a.t[4].data, a.t[5].data, a.t[6].data,
                                     a.t[7].data, a.t[8].data, a.t[9].data, a.t[10].data};
    int status = SSM_OK;
    const char* fn = "";
    const char* (*status_string)(int) = ssm_status_string;
    if (def->device == Device::CPU) {
      fn = "ssm_vss_block_tail_fwd_cpu";
      status = ssm_vss_block_tail_fwd_cpu(&a.shape, a.t[0].data, a.t[1].data, &params, z, num_threads);
    } else {
#if defined(SSMPOSE_ORT_WITH_CUDA)
      const CudaKernels* cuda = nullptr;
      if (OrtStatus* st = cuda_kernels(api, kOp, &cuda)) return st;
      void* stream = nullptr;
      if (OrtStatus* st = compute_stream(api, ctx, &stream)) return st;
      status_string = cuda->status_string;
      fn = "ssm_vss_block_tail_fwd_cuda";
      status = cuda->vss_block_tail_fwd(&a.shape, a.t[0].data, a.t[1].data, &params, z, stream);
#else
      return make_error(api, ORT_FAIL, "%s: built without CUDA", kOp);
#endif
    }
    if (status != SSM_OK) {
      return make_error(api, ORT_FAIL, "%s: %s failed with status %d (%s) for D = %lld, C = %lld, H = %lld", kOp, fn,
                        status, status_string(status), static_cast<long long>(a.shape.inner),
                        static_cast<long long>(a.shape.channels), static_cast<long long>(a.shape.hidden));
    }
    return nullptr;
  }
};

OrtStatus* create_tail(const OpDef& def, const Api& api, const OrtKernelInfo* info, Kernel** out) {
  float epsilon = kDefaultEpsilon;
  if (OrtStatus* st = read_epsilon_attr(api, info, kOp, &epsilon)) return st;
  auto* k = new TailKernel();
  k->epsilon = epsilon;
  k->num_threads = def.device == Device::CPU ? cpu_threads() : 0;
  *out = k;
  return nullptr;
}

}  // namespace

void vss_block_tail_op_defs(std::vector<const OpDef*>* defs, bool op_versions) {
  static const OpDefSet tail(kOp, kInputs, kNumInputs, kNumInputs, create_tail, kSinceVersion, op_versions);
  tail.append_to(defs);
}

}  // namespace ssmpose_ort
