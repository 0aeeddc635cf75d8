// ssmpose::SelectiveScan2D (domain version 2) for ONNX Runtime (CPU EP, and CUDA EP when built with CUDA).
//
// Inputs, channel-last: x (B, H, W, D), delta (B, H, W, K*D), A (K*D, N), Bs (B, H, W, K, N), Cs (B, H, W, K, N),
// optional Ds (K*D), optional delta_bias (K*D); attributes delta_softplus (int, default 1) and directions
// (K, default 4, the only value); output y (B, H, W, D). All floating inputs and the output share one type T
// (float32 or float16). Semantics: docs/ops.md.
#include <cstring>

#include "ort_common.h"
#include "ssmpose_kernels.h"

namespace ssmpose_ort {

namespace {

constexpr const char* kOp = "SelectiveScan2D";
constexpr int kSinceVersion = 2;     // ssmpose domain version that introduced the op
constexpr int64_t kDirections = 4;   // SS2D's four directions
constexpr int64_t kMaxState = 16;    // the kernels' limit on N
constexpr const char* kInputs[] = {"x", "delta", "A", "Bs", "Cs", "Ds", "delta_bias"};
constexpr size_t kNumInputs = 7;
constexpr size_t kRequiredInputs = 5;

OrtStatus* shape_error(const Api& api, const std::string& msg) {
  return make_error(api, ORT_INVALID_ARGUMENT, "%s: %s", kOp, msg.c_str());
}

std::string tuple3(int64_t a, int64_t b, int64_t c) { return shape_str({a, b, c}); }

struct SelectiveScan2DKernel : Kernel {
  int32_t delta_softplus = 1;
  int num_threads = 0;

  OrtStatus* compute(OrtKernelContext* ctx) override {
    size_t count = 0;
    if (OrtStatus* st = api.KernelContext_GetInputCount(ctx, &count)) return st;
    TensorArg t[kNumInputs];
    for (size_t i = 0; i < kNumInputs; ++i) {
      if (OrtStatus* st = read_input(api, ctx, count, i, kOp, kInputs[i], i < kRequiredInputs, &t[i])) return st;
    }
    const TensorArg &x = t[0], &delta = t[1], &A = t[2], &Bs = t[3], &Cs = t[4], &Ds = t[5], &bias = t[6];

    int32_t dtype = 0;
    if (!to_ssm_dtype(x.type, &dtype)) {
      return shape_error(api, std::string("x has element type ") + type_name(x.type) + "; supported: float32, float16");
    }
    for (size_t i = 1; i < kNumInputs; ++i) {
      if (OrtStatus* st = check_same_type(api, kOp, x, t[i])) return st;
    }

    // Shapes: the rules of ops.check_selective_scan_2d_args.
    if (x.rank() != 4) return shape_error(api, "x must be (B, H, W, D), got shape " + shape_str(x.dims));
    const int64_t batch = x.dims[0], height = x.dims[1], width = x.dims[2], dim = x.dims[3];
    if (Bs.rank() != 5) return shape_error(api, "Bs must be (B, H, W, K, N), got shape " + shape_str(Bs.dims));
    if (Bs.dims[0] != batch || Bs.dims[1] != height || Bs.dims[2] != width) {
      return shape_error(api, "Bs shape " + shape_str(Bs.dims) + " does not match x (B, H, W) = " +
                                  tuple3(batch, height, width));
    }
    const int64_t directions = Bs.dims[3], dstate = Bs.dims[4];
    if (directions != kDirections) {
      return shape_error(api, "Bs.shape[3] is the number of directions K, which must be " +
                                  std::to_string(kDirections) + ", got " + std::to_string(directions));
    }
    if (Cs.dims != Bs.dims) {
      return shape_error(api, "Cs shape " + shape_str(Cs.dims) + " != Bs shape " + shape_str(Bs.dims));
    }
    int64_t channels = 0;
    if (!checked_mul(directions, dim, &channels)) return shape_error(api, "K*D overflows");
    const std::vector<int64_t> delta_dims{batch, height, width, channels};
    if (delta.dims != delta_dims) {
      return shape_error(api, "delta must be (B, H, W, K*D) = " + shape_str(delta_dims) + ", got " +
                                  shape_str(delta.dims));
    }
    if (A.dims != std::vector<int64_t>{channels, dstate}) {
      return shape_error(api, "A must be (" + std::to_string(channels) + ", " + std::to_string(dstate) + "), got " +
                                  shape_str(A.dims));
    }
    for (const TensorArg* opt : {&Ds, &bias}) {
      if (opt->present() && opt->dims != std::vector<int64_t>{channels}) {
        return shape_error(api, std::string(opt->name) + " must be (" + std::to_string(channels) + ",), got " +
                                    shape_str(opt->dims));
      }
    }
    if (dstate < 1 || dstate > kMaxState) {
      return shape_error(api, "dstate N = Bs.shape[4] must be in 1.." + std::to_string(kMaxState) + ", got " +
                                  std::to_string(dstate));
    }

    void* y = nullptr;
    if (OrtStatus* st = alloc_output(api, ctx, 0, x.dims, kOp, &y)) return st;
    if (y == nullptr) return nullptr;  // empty output (B, H, W or D is 0): nothing to compute

    ssm_scan2d_shape shape{};
    shape.batch = batch;
    shape.height = height;
    shape.width = width;
    shape.dim = dim;
    shape.directions = directions;
    shape.dstate = dstate;
    shape.delta_softplus = delta_softplus;
    shape.dtype = dtype;

    int status = SSM_OK;
    const char* fn = "";
    const char* (*status_string)(int) = ssm_status_string;
    if (def->device == Device::CPU) {
      fn = "ssm_selective_scan_2d_fwd_cpu";
      status = ssm_selective_scan_2d_fwd_cpu(&shape, x.data, delta.data, A.data, Bs.data, Cs.data, Ds.data,
                                             bias.data, y, num_threads);
    } else {
#if defined(SSMPOSE_ORT_WITH_CUDA)
      const CudaKernels* cuda = nullptr;
      if (OrtStatus* st = cuda_kernels(api, kOp, &cuda)) return st;
      void* stream = nullptr;
      if (OrtStatus* st = compute_stream(api, ctx, &stream)) return st;
      fn = "ssm_selective_scan_2d_fwd_cuda";
      status_string = cuda->status_string;
      status = cuda->selective_scan_2d_fwd(&shape, x.data, delta.data, A.data, Bs.data, Cs.data, Ds.data, bias.data,
                                           y, stream);
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
  int64_t softplus = 1, directions = kDirections;
  if (OrtStatus* st = read_int_attr_or(api, info, kOp, "delta_softplus", 1, &softplus)) return st;
  if (OrtStatus* st = check_attr_range(api, kOp, "delta_softplus", softplus, 0, 1)) return st;
  if (OrtStatus* st = read_int_attr_or(api, info, kOp, "directions", kDirections, &directions)) return st;
  if (OrtStatus* st = check_attr_range(api, kOp, "directions", directions, kDirections, kDirections)) return st;
  auto* k = new SelectiveScan2DKernel();
  k->delta_softplus = static_cast<int32_t>(softplus);
  k->num_threads = def.device == Device::CPU ? cpu_threads() : 0;
  *out = k;
  return nullptr;
}

}  // namespace

void selective_scan_2d_op_defs(std::vector<const OpDef*>* defs, bool op_versions) {
  static const OpDefSet ops(kOp, kInputs, kNumInputs, kRequiredInputs, create, kSinceVersion, op_versions);
  ops.append_to(defs);
}

}  // namespace ssmpose_ort
