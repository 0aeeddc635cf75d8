// ssmpose::SelectiveScan for ONNX Runtime (CPU EP, and CUDA EP when built with CUDA).
//
// Inputs u (B, G*D, L), delta (B, G*D, L), A (G*D, N), Bs (B, G, N, L), Cs (B, G, N, L), optional Ds (G*D),
// optional delta_bias (G*D); attribute delta_softplus (int, default 1); output y (B, G*D, L). All floating
// inputs and the output share one type T (float32 or float16). Semantics: docs/ops.md.
#include <cstring>

#include "ort_common.h"
#include "ssmpose_kernels.h"

namespace ssmpose_ort {

namespace {

constexpr const char* kOp = "SelectiveScan";
constexpr int64_t kMaxState = 16;  // the kernels' limit on N
constexpr const char* kInputs[] = {"u", "delta", "A", "Bs", "Cs", "Ds", "delta_bias"};
constexpr size_t kNumInputs = 7;
constexpr size_t kRequiredInputs = 5;

OrtStatus* shape_error(const Api& api, const std::string& msg) {
  return make_error(api, ORT_INVALID_ARGUMENT, "%s: %s", kOp, msg.c_str());
}

struct SelectiveScanKernel : Kernel {
  int32_t delta_softplus = 1;
  int num_threads = 0;

  OrtStatus* compute(OrtKernelContext* ctx) override {
    size_t count = 0;
    if (OrtStatus* st = api.KernelContext_GetInputCount(ctx, &count)) return st;
    TensorArg t[kNumInputs];
    for (size_t i = 0; i < kNumInputs; ++i) {
      if (OrtStatus* st = read_input(api, ctx, count, i, kOp, kInputs[i], i < kRequiredInputs, &t[i])) return st;
    }
    const TensorArg &u = t[0], &delta = t[1], &A = t[2], &Bs = t[3], &Cs = t[4], &Ds = t[5], &bias = t[6];

    // Types: all share u's type T, which the kernels must support.
    int32_t dtype = 0;
    if (!to_ssm_dtype(u.type, &dtype)) {
      return shape_error(api, std::string("u has element type ") + type_name(u.type) +
                                  "; supported: float32, float16");
    }
    for (size_t i = 1; i < kNumInputs; ++i) {
      if (OrtStatus* st = check_same_type(api, kOp, u, t[i])) return st;
    }

    // Shapes: the rules of ops.check_selective_scan_args.
    if (u.rank() != 3) return shape_error(api, "u must be (B, G*D, L), got shape " + shape_str(u.dims));
    const int64_t batch = u.dims[0], channels = u.dims[1], length = u.dims[2];
    if (delta.dims != u.dims) {
      return shape_error(api, "delta shape " + shape_str(delta.dims) + " != u shape " + shape_str(u.dims));
    }
    if (Bs.rank() != 4) return shape_error(api, "Bs must be (B, G, N, L), got shape " + shape_str(Bs.dims));
    const int64_t groups = Bs.dims[1], dstate = Bs.dims[2];
    if (Bs.dims[0] != batch || Bs.dims[3] != length) {
      return shape_error(api, "Bs shape " + shape_str(Bs.dims) + " does not match u (B=" + std::to_string(batch) +
                                  ", L=" + std::to_string(length) + ")");
    }
    if (Cs.dims != Bs.dims) {
      return shape_error(api, "Cs shape " + shape_str(Cs.dims) + " != Bs shape " + shape_str(Bs.dims));
    }
    if (groups < 1 || channels % groups != 0) {
      return shape_error(api, "channels " + std::to_string(channels) + " of u are not divisible by the " +
                                  std::to_string(groups) + " groups of Bs");
    }
    if (A.dims != std::vector<int64_t>{channels, dstate}) {
      return shape_error(api, "A must be (" + std::to_string(channels) + ", " + std::to_string(dstate) +
                                  "), got " + shape_str(A.dims));
    }
    for (const TensorArg* opt : {&Ds, &bias}) {
      if (opt->present() && opt->dims != std::vector<int64_t>{channels}) {
        return shape_error(api, std::string(opt->name) + " must be (" + std::to_string(channels) + ",), got " +
                                    shape_str(opt->dims));
      }
    }
    if (dstate < 1 || dstate > kMaxState) {
      return shape_error(api, "dstate N = Bs.shape[2] must be in 1.." + std::to_string(kMaxState) + ", got " +
                                  std::to_string(dstate));
    }

    void* y = nullptr;
    if (OrtStatus* st = alloc_output(api, ctx, 0, u.dims, kOp, &y)) return st;
    if (y == nullptr) return nullptr;  // empty output (B, G*D or L is 0): nothing to compute

    ssm_scan_shape shape{};
    shape.batch = batch;
    shape.groups = groups;
    shape.dim = channels / groups;
    shape.dstate = dstate;
    shape.length = length;
    shape.delta_softplus = delta_softplus;
    shape.dtype = dtype;

    int status = SSM_OK;
    const char* fn = "";
    const char* (*status_string)(int) = ssm_status_string;
    if (def->device == Device::CPU) {
      fn = "ssm_selective_scan_fwd_cpu";
      status = ssm_selective_scan_fwd_cpu(&shape, u.data, delta.data, A.data, Bs.data, Cs.data, Ds.data, bias.data,
                                          y, num_threads);
    } else {
#if defined(SSMPOSE_ORT_WITH_CUDA)
      const CudaKernels* cuda = nullptr;
      if (OrtStatus* st = cuda_kernels(api, kOp, &cuda)) return st;
      void* stream = nullptr;
      if (OrtStatus* st = compute_stream(api, ctx, &stream)) return st;
      fn = "ssm_selective_scan_fwd_cuda";
      status_string = cuda->status_string;
      status = cuda->selective_scan_fwd(&shape, u.data, delta.data, A.data, Bs.data, Cs.data, Ds.data, bias.data, y,
                                        stream);
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
  int64_t softplus = 1;
  if (OrtStatus* st = read_int_attr_or(api, info, kOp, "delta_softplus", 1, &softplus)) return st;
  if (OrtStatus* st = check_attr_range(api, kOp, "delta_softplus", softplus, 0, 1)) return st;
  auto* k = new SelectiveScanKernel();
  k->delta_softplus = static_cast<int32_t>(softplus);
  k->num_threads = def.device == Device::CPU ? cpu_threads() : 0;
  *out = k;
  return nullptr;
}

}  // namespace

void selective_scan_op_defs(std::vector<const OpDef*>* defs) {
  static const OpDefSet ops(kOp, kInputs, kNumInputs, kRequiredInputs, create, 1, false);
  ops.append_to(defs);
}

}  // namespace ssmpose_ort
