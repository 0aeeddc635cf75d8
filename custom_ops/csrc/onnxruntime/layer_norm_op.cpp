// ssmpose::LayerNorm (domain version 3) and ssmpose::AddLayerNorm (domain version 4) for ONNX Runtime (CPU EP,
// and CUDA EP when built with CUDA).
//
// LayerNorm inputs: X (rank >= 1, last dimension C >= 1), weight (C), bias (C); output Y, X's shape.
// AddLayerNorm inputs: X, R (X's shape), weight, bias; outputs Y and S (both X's shape): S = X + R rounded to T,
// Y = LayerNorm(S). Attribute epsilon (float, default 1e-5, finite and > 0). All share one type T (float32 or
// float16). Y is normalised over the last axis with float32 statistics (ONNX LayerNormalization with axis = -1,
// stash_type = 1). Semantics: docs/ops.md.
#include <string>
#include <vector>

#include "ort_common.h"
#include "ssmpose_kernels.h"

namespace ssmpose_ort {

namespace {

constexpr float kDefaultEpsilon = 1e-5f;

// What differs between the two operators.
struct NormOp {
  const char* name;
  const char* const* inputs;
  size_t num_inputs;  // all required
  size_t num_outputs;
  int since_version;  // ssmpose domain version that introduced the op
  bool residual;      // input 1 is R, output 1 is S
};

constexpr const char* kLayerNormInputs[] = {"X", "weight", "bias"};
constexpr const char* kAddLayerNormInputs[] = {"X", "R", "weight", "bias"};
constexpr NormOp kLayerNorm{"LayerNorm", kLayerNormInputs, 3, 1, 3, false};
constexpr NormOp kAddLayerNorm{"AddLayerNorm", kAddLayerNormInputs, 4, 2, 4, true};

OrtStatus* shape_error(const Api& api, const NormOp& op, const std::string& msg) {
  return make_error(api, ORT_INVALID_ARGUMENT, "%s: %s", op.name, msg.c_str());
}

// The validated inputs of one call.
struct NormArgs {
  TensorArg x, residual, weight, bias;  // residual: AddLayerNorm only
  ssm_layer_norm_shape shape{};
};

// Reads the inputs and checks their types and shapes; fills args->shape except epsilon.
OrtStatus* read_args(const Api& api, OrtKernelContext* ctx, const NormOp& op, NormArgs* args) {
  size_t count = 0;
  if (OrtStatus* st = api.KernelContext_GetInputCount(ctx, &count)) return st;
  std::vector<TensorArg*> t{&args->x};  // in input order
  if (op.residual) t.push_back(&args->residual);
  t.push_back(&args->weight);
  t.push_back(&args->bias);
  for (size_t i = 0; i < t.size(); ++i) {
    if (OrtStatus* st = read_input(api, ctx, count, i, op.name, op.inputs[i], true, t[i])) return st;
  }
  const TensorArg& x = args->x;
  int32_t dtype = 0;
  if (!to_ssm_dtype(x.type, &dtype)) {
    return shape_error(api, op, std::string("X has element type ") + type_name(x.type) +
                                    "; supported: float32, float16");
  }
  for (size_t i = 1; i < t.size(); ++i) {
    if (OrtStatus* st = check_same_type(api, op.name, x, *t[i])) return st;
  }

  if (x.rank() < 1) {
    return shape_error(api, op, "X must have rank >= 1 (it is normalised over its last axis), got shape " +
                                    shape_str(x.dims));
  }
  const int64_t channels = x.dims.back();
  if (channels < 1) {
    return shape_error(api, op, "the last dimension C of X must be >= 1, got shape " + shape_str(x.dims));
  }
  if (op.residual && args->residual.dims != x.dims) {
    return shape_error(api, op, "R must have X's shape " + shape_str(x.dims) + " (no broadcasting), got " +
                                    shape_str(args->residual.dims));
  }
  for (const TensorArg* p : {&args->weight, &args->bias}) {
    if (p->dims != std::vector<int64_t>{channels}) {
      return shape_error(api, op, std::string(p->name) + " must be (C,) = (" + std::to_string(channels) +
                                      ",) for X of shape " + shape_str(x.dims) + ", got " + shape_str(p->dims));
    }
  }
  int64_t rows = 1;
  for (size_t i = 0; i + 1 < x.rank(); ++i) {
    if (!checked_mul(rows, x.dims[i], &rows)) return shape_error(api, op, "X has too many elements");
  }
  args->shape.rows = rows;
  args->shape.channels = channels;
  args->shape.dtype = dtype;
  return nullptr;
}

struct NormKernel : Kernel {
  const NormOp* op = nullptr;
  float epsilon = kDefaultEpsilon;
  int num_threads = 0;

  OrtStatus* compute(OrtKernelContext* ctx) override {
    NormArgs a;
    if (OrtStatus* st = read_args(api, ctx, *op, &a)) return st;
    a.shape.epsilon = epsilon;
    const TensorArg &x = a.x, &r = a.residual, &weight = a.weight, &bias = a.bias;

    void* y = nullptr;
    void* sum = nullptr;
    if (OrtStatus* st = alloc_output(api, ctx, 0, x.dims, op->name, &y)) return st;
    if (op->residual) {
      if (OrtStatus* st = alloc_output(api, ctx, 1, x.dims, op->name, &sum)) return st;
    }
    if (y == nullptr || a.shape.rows == 0) return nullptr;  // empty outputs: nothing to compute

    int status = SSM_OK;
    const char* fn = "";
    const char* (*status_string)(int) = ssm_status_string;
    if (def->device == Device::CPU) {
      if (op->residual) {
        fn = "ssm_add_layer_norm_fwd_cpu";
        status = ssm_add_layer_norm_fwd_cpu(&a.shape, x.data, r.data, weight.data, bias.data, y, sum, num_threads);
      } else {
        fn = "ssm_layer_norm_fwd_cpu";
        status = ssm_layer_norm_fwd_cpu(&a.shape, x.data, weight.data, bias.data, y, num_threads);
      }
    } else {
#if defined(SSMPOSE_ORT_WITH_CUDA)
      const CudaKernels* cuda = nullptr;
      if (OrtStatus* st = cuda_kernels(api, op->name, &cuda)) return st;
      void* stream = nullptr;
      if (OrtStatus* st = compute_stream(api, ctx, &stream)) return st;
      status_string = cuda->status_string;
      if (op->residual) {
        fn = "ssm_add_layer_norm_fwd_cuda";
        status = cuda->add_layer_norm_fwd(&a.shape, x.data, r.data, weight.data, bias.data, y, sum, stream);
      } else {
        fn = "ssm_layer_norm_fwd_cuda";
        status = cuda->layer_norm_fwd(&a.shape, x.data, weight.data, bias.data, y, stream);
      }
#else
      return make_error(api, ORT_FAIL, "%s: built without CUDA", op->name);
#endif
    }
    if (status != SSM_OK) {
      return make_error(api, ORT_FAIL, "%s: %s failed with status %d (%s)", op->name, fn, status,
                        status_string(status));
    }
    return nullptr;
  }
};

OrtStatus* create_kernel(const NormOp& op, const OpDef& def, const Api& api, const OrtKernelInfo* info,
                         Kernel** out) {
  float epsilon = kDefaultEpsilon;
  if (OrtStatus* st = read_epsilon_attr(api, info, op.name, &epsilon)) return st;
  auto* k = new NormKernel();
  k->op = &op;
  k->epsilon = epsilon;
  k->num_threads = def.device == Device::CPU ? cpu_threads() : 0;
  *out = k;
  return nullptr;
}

OrtStatus* create_layer_norm(const OpDef& def, const Api& api, const OrtKernelInfo* info, Kernel** out) {
  return create_kernel(kLayerNorm, def, api, info, out);
}

OrtStatus* create_add_layer_norm(const OpDef& def, const Api& api, const OrtKernelInfo* info, Kernel** out) {
  return create_kernel(kAddLayerNorm, def, api, info, out);
}

}  // namespace

void layer_norm_op_defs(std::vector<const OpDef*>* defs, bool op_versions) {
  static const OpDefSet layer_norm(kLayerNorm.name, kLayerNorm.inputs, kLayerNorm.num_inputs, kLayerNorm.num_inputs,
                                   create_layer_norm, kLayerNorm.since_version, op_versions, kLayerNorm.num_outputs);
  static const OpDefSet add_layer_norm(kAddLayerNorm.name, kAddLayerNorm.inputs, kAddLayerNorm.num_inputs,
                                       kAddLayerNorm.num_inputs, create_add_layer_norm, kAddLayerNorm.since_version,
                                       op_versions, kAddLayerNorm.num_outputs);
  layer_norm.append_to(defs);
  add_layer_norm.append_to(defs);
}

}  // namespace ssmpose_ort
