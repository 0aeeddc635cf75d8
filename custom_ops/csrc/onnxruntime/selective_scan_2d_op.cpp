// ssmpose::SelectiveScan2D (domain version 2) for ONNX Runtime (CPU EP, and CUDA EP when built with CUDA).
//
// Inputs, channel-last: x (B, H, W, D), delta (B, H, W, K*D), A (K*D, N), Bs (B, H, W, K, N), Cs (B, H, W, K, N),
// optional Ds (K*D), optional delta_bias (K*D), optional dt_projection (K, D, R; domain version 6); attributes
// delta_softplus (int, default 1) and directions (K, default 4, the only value); output y (B, H, W, D). With
// dt_projection, input 1 is x_proj (B, H, W, K, R + 2N) and Bs / Cs are omitted (read from x_proj). All floating
// inputs and the output share one type T (float32 or float16). Semantics: docs/ops.md.
#include <cstring>

#include "ort_common.h"
#include "ssmpose_kernels.h"

namespace ssmpose_ort {

namespace {

constexpr const char* kOp = "SelectiveScan2D";
constexpr int kSinceVersion = 2;     // ssmpose domain version that introduced the op
constexpr int64_t kDirections = 4;   // SS2D's four directions
constexpr int64_t kMaxState = 16;    // the kernels' limit on N
constexpr int64_t kMaxDtRank = SSM_SCAN2D_MAX_DT_RANK;
constexpr const char* kInputs[] = {"x", "delta", "A", "Bs", "Cs", "Ds", "delta_bias", "dt_projection"};
constexpr size_t kNumInputs = 8;
constexpr size_t kRequiredInputs = 3;  // Bs and Cs are required unless dt_projection is given (checked below)

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
    const TensorArg& dtw = t[7];
    const bool projected = dtw.present();

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
    if (projected) return compute_projected(ctx, x, delta, A, Bs, Cs, Ds, bias, dtw, dtype);
    for (const TensorArg* bc : {&Bs, &Cs}) {
      if (!bc->present()) {
        return shape_error(api, std::string("required input '") + bc->name + "' is missing (it may be omitted "
                                "only with dt_projection)");
      }
    }
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
    const ssm_scan2d_shape shape = scan_shape(x, dstate, dtype);
    return run_kernel(
        ctx, "ssm_selective_scan_2d_fwd",
        [&] {
          return ssm_selective_scan_2d_fwd_cpu(&shape, x.data, delta.data, A.data, Bs.data, Cs.data, Ds.data,
                                               bias.data, y, num_threads);
        },
        [&](const auto& cuda, void* stream) {  // generic: compiled only in a CUDA build
          return cuda.selective_scan_2d_fwd(&shape, x.data, delta.data, A.data, Bs.data, Cs.data, Ds.data,
                                            bias.data, y, stream);
        });
  }

  // Domain version 6: delta and Bs / Cs from x_proj (input 1) and dt_projection (input 7).
  OrtStatus* compute_projected(OrtKernelContext* ctx, const TensorArg& x, const TensorArg& x_proj,
                               const TensorArg& A, const TensorArg& Bs, const TensorArg& Cs, const TensorArg& Ds,
                               const TensorArg& bias, const TensorArg& dtw, int32_t dtype) {
    const int64_t batch = x.dims[0], height = x.dims[1], width = x.dims[2], dim = x.dims[3];
    if (Bs.present() || Cs.present()) {
      return shape_error(api, "with dt_projection, Bs and Cs must be omitted (they are read from input 1, x_proj)");
    }
    if (dtw.rank() != 3 || dtw.dims[0] != kDirections || dtw.dims[1] != dim) {
      return shape_error(api, "dt_projection must be (K, D, R) = (" + std::to_string(kDirections) + ", " +
                                  std::to_string(dim) + ", R), got shape " + shape_str(dtw.dims));
    }
    const int64_t rank = dtw.dims[2];
    if (rank < 1 || rank > kMaxDtRank) {
      return shape_error(api, "dt_rank R = dt_projection.shape[2] must be in 1.." + std::to_string(kMaxDtRank) +
                                  ", got " + std::to_string(rank));
    }
    int64_t channels = 0;
    if (!checked_mul(kDirections, dim, &channels)) return shape_error(api, "K*D overflows");
    if (A.rank() != 2 || A.dims[0] != channels) {
      return shape_error(api, "A must be (" + std::to_string(channels) + ", N), got " + shape_str(A.dims));
    }
    const int64_t dstate = A.dims[1];
    if (dstate < 1 || dstate > kMaxState) {
      return shape_error(api, "dstate N = A.shape[1] must be in 1.." + std::to_string(kMaxState) + ", got " +
                                  std::to_string(dstate));
    }
    const std::vector<int64_t> xp_dims{batch, height, width, kDirections, rank + 2 * dstate};
    if (x_proj.dims != xp_dims) {
      return shape_error(api, "with dt_projection, input 1 (x_proj) must be (B, H, W, K, R + 2N) = " +
                                  shape_str(xp_dims) + ", got " + shape_str(x_proj.dims));
    }
    for (const TensorArg* opt : {&Ds, &bias}) {
      if (opt->present() && opt->dims != std::vector<int64_t>{channels}) {
        return shape_error(api, std::string(opt->name) + " must be (" + std::to_string(channels) + ",), got " +
                                    shape_str(opt->dims));
      }
    }

    void* y = nullptr;
    if (OrtStatus* st = alloc_output(api, ctx, 0, x.dims, kOp, &y)) return st;
    if (y == nullptr) return nullptr;
    const ssm_scan2d_shape shape = scan_shape(x, dstate, dtype);
    return run_kernel(
        ctx, "ssm_selective_scan_2d_proj_fwd",
        [&] {
          return ssm_selective_scan_2d_proj_fwd_cpu(&shape, rank, x.data, x_proj.data, dtw.data, A.data, Ds.data,
                                                    bias.data, y, num_threads);
        },
        [&](const auto& cuda, void* stream) {  // generic: compiled only in a CUDA build
          return cuda.selective_scan_2d_proj_fwd(&shape, rank, x.data, x_proj.data, dtw.data, A.data, Ds.data,
                                                 bias.data, y, stream);
        });
  }

  // The CPU kernel, or on the CUDA EP the CUDA one (`name` + "_cpu" / "_cuda" in errors).
  template <typename CpuCall, typename CudaCall>
  OrtStatus* run_kernel(OrtKernelContext* ctx, const std::string& name, CpuCall cpu, CudaCall cuda) {
    int status = SSM_OK;
    std::string fn = name + "_cpu";
    const char* (*status_string)(int) = ssm_status_string;
    if (def->device == Device::CPU) {
      status = cpu();
    } else {
#if defined(SSMPOSE_ORT_WITH_CUDA)
      const CudaKernels* kernels = nullptr;
      if (OrtStatus* st = cuda_kernels(api, kOp, &kernels)) return st;
      void* stream = nullptr;
      if (OrtStatus* st = compute_stream(api, ctx, &stream)) return st;
      fn = name + "_cuda";
      status_string = kernels->status_string;
      status = cuda(*kernels, stream);
#else
      (void)ctx;
      (void)cuda;
      return make_error(api, ORT_FAIL, "%s: built without CUDA", kOp);
#endif
    }
    if (status != SSM_OK) {
      return make_error(api, ORT_FAIL, "%s: %s failed with status %d (%s)", kOp, fn.c_str(), status,
                        status_string(status));
    }
    return nullptr;
  }

  ssm_scan2d_shape scan_shape(const TensorArg& x, int64_t dstate, int32_t dtype) const {
    ssm_scan2d_shape shape{};
    shape.batch = x.dims[0];
    shape.height = x.dims[1];
    shape.width = x.dims[2];
    shape.dim = x.dims[3];
    shape.directions = kDirections;
    shape.dstate = dstate;
    shape.delta_softplus = delta_softplus;
    shape.dtype = dtype;
    return shape;
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
