// ssmpose::SelectiveScan as a TensorRT IPluginV3 plugin. Shape rules: those of the ONNX Runtime adapter
// (onnxruntime/selective_scan_op.cpp) and ops.check_selective_scan_args, applied to whatever dimensions are known
// at each stage (-1 = not known yet).
#include <exception>

#include "plugins.h"

namespace ssmpose_trt {

namespace {

constexpr const char* kOp = "SelectiveScan";
constexpr const char* kInputs[] = {"u", "delta", "A", "Bs", "Cs", "Ds", "delta_bias"};
constexpr int32_t kRequiredInputs = 5;
constexpr int32_t kMaxInputs = 7;
constexpr int64_t kMaxState = 16;  // the kernels' limit on N

bool known(int64_t v) { return v >= 0; }

// Two dims that must be equal: false if both are known and differ; *merged gets the known one (or -1).
bool unify(int64_t a, int64_t b, int64_t* merged) {
  if (known(a) && known(b) && a != b) return false;
  *merged = known(a) ? a : b;
  return true;
}

bool same_shape(const std::vector<int64_t>& a, const std::vector<int64_t>& b) {
  if (a.size() != b.size()) return false;
  int64_t ignored = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!unify(a[i], b[i], &ignored)) return false;
  }
  return true;
}

std::string err_msg(const std::string& msg) { return std::string(kOp) + ": " + msg; }

std::string dim_str(int64_t v) { return known(v) ? std::to_string(v) : std::string("?"); }

}  // namespace

SelectiveScanPlugin::SelectiveScanPlugin(std::string layer_name, const ScanAttrs& attrs)
    : PluginBase(kOp, std::move(layer_name), kRequiredInputs, kMaxInputs), attrs_(attrs) {}

const char* SelectiveScanPlugin::input_name(int32_t index) const {
  return index >= 0 && index < kMaxInputs ? kInputs[index] : "?";
}

nvinfer1::IPluginV3* SelectiveScanPlugin::clone() noexcept {
  try {
    return new SelectiveScanPlugin(*this);
  } catch (...) {
    report_error(err_msg("out of memory in clone"));
    return nullptr;
  }
}

bool SelectiveScanPlugin::infer_shape(const std::vector<std::vector<int64_t>>& in, std::vector<int64_t>* out,
                                      std::string* err) const {
  const size_t n = in.size();
  const std::vector<int64_t>& u = in[0];
  const std::vector<int64_t>& delta = in[1];
  const std::vector<int64_t>& A = in[2];
  const std::vector<int64_t>& Bs = in[3];
  const std::vector<int64_t>& Cs = in[4];
  auto fail = [&](const std::string& m) {
    *err = err_msg(m);
    return false;
  };
  if (u.size() != 3) return fail("u must be (B, G*D, L), got shape " + shape_str(u));
  if (delta.size() != 3 || !same_shape(delta, u)) {
    return fail("delta shape " + shape_str(delta) + " != u shape " + shape_str(u));
  }
  int64_t batch = 0, channels = 0, length = 0;
  unify(u[0], delta[0], &batch);
  unify(u[1], delta[1], &channels);
  unify(u[2], delta[2], &length);
  if (Bs.size() != 4) return fail("Bs must be (B, G, N, L), got shape " + shape_str(Bs));
  if (!unify(batch, Bs[0], &batch) || !unify(length, Bs[3], &length)) {
    return fail("Bs shape " + shape_str(Bs) + " does not match u (B=" + dim_str(batch) + ", L=" +
                dim_str(length) + ")");
  }
  if (Cs.size() != 4 || !same_shape(Cs, Bs)) {
    return fail("Cs shape " + shape_str(Cs) + " != Bs shape " + shape_str(Bs));
  }
  int64_t groups = 0, dstate = 0;
  if (!unify(batch, Cs[0], &batch) || !unify(length, Cs[3], &length)) {
    return fail("Cs shape " + shape_str(Cs) + " does not match u (B=" + dim_str(batch) + ", L=" +
                dim_str(length) + ")");
  }
  unify(Bs[1], Cs[1], &groups);
  unify(Bs[2], Cs[2], &dstate);
  if (known(groups) && groups < 1) return fail("Bs has " + std::to_string(groups) + " groups; needs >= 1");
  if (known(groups) && known(channels) && channels % groups != 0) {
    return fail("channels " + std::to_string(channels) + " of u are not divisible by the " + std::to_string(groups) +
                " groups of Bs");
  }
  if (A.size() != 2 || !same_shape(A, {channels, dstate})) {
    return fail("A must be (" + (known(channels) ? dim_str(channels) : std::string("G*D")) + ", " +
                (known(dstate) ? dim_str(dstate) : std::string("N")) + "), got " + shape_str(A));
  }
  unify(channels, A[0], &channels);
  unify(dstate, A[1], &dstate);
  for (size_t i = 5; i < n; ++i) {
    if (in[i].size() != 1 || !same_shape(in[i], {channels})) {
      return fail(std::string(kInputs[i]) + " must be (" +
                  (known(channels) ? std::to_string(channels) : std::string("G*D")) + ",), got " + shape_str(in[i]));
    }
    unify(channels, in[i][0], &channels);
  }
  if (known(dstate) && (dstate < 1 || dstate > kMaxState)) {
    return fail("dstate N = Bs.shape[2] must be in 1.." + std::to_string(kMaxState) + ", got " +
                std::to_string(dstate));
  }
  *out = {batch, channels, length};
  return true;
}

bool SelectiveScanPlugin::output_exprs(const nvinfer1::DimsExprs* inputs, nvinfer1::DimsExprs* out,
                                       nvinfer1::IExprBuilder& /*builder*/) const {
  // y has u's shape.
  out->nbDims = 3;
  for (int32_t i = 0; i < 3; ++i) {
    if (inputs[0].d[i] == nullptr) return false;
    out->d[i] = inputs[0].d[i];
  }
  return true;
}

void SelectiveScanPlugin::prepare(const std::vector<std::vector<int64_t>>& in, int32_t dtype) {
  shape_ = ssm_scan_shape{};
  shape_.batch = in[0][0];
  shape_.groups = in[3][1];
  shape_.dim = in[3][1] > 0 ? in[0][1] / in[3][1] : 0;
  shape_.dstate = in[3][2];
  shape_.length = in[0][2];
  shape_.delta_softplus = attrs_.delta_softplus;
  shape_.dtype = dtype;
  empty_output_ = in[0][0] == 0 || in[0][1] == 0 || in[0][2] == 0;
}

int32_t SelectiveScanPlugin::enqueue(const nvinfer1::PluginTensorDesc* /*inputDesc*/,
                                     const nvinfer1::PluginTensorDesc* /*outputDesc*/, const void* const* inputs,
                                     void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept {
  try {
    if (empty_output_) return 0;  // B, G*D or L is 0: nothing to compute
    std::string error;
    const CudaKernels* cuda = cuda_kernels(&error);
    if (cuda == nullptr) return fail(error), -1;
    const void* Ds = nb_inputs_ > 5 ? inputs[5] : nullptr;
    const void* bias = nb_inputs_ > 6 ? inputs[6] : nullptr;
    const int status = cuda->selective_scan_fwd(&shape_, inputs[0], inputs[1], inputs[2], inputs[3], inputs[4], Ds,
                                                bias, outputs[0], static_cast<void*>(stream));
    if (status != SSM_OK) {
      fail("ssm_selective_scan_fwd_cuda failed with status " + std::to_string(status) + " (" +
           cuda->status_string(status) + ")");
      return -1;
    }
    return 0;
  } catch (const std::exception& e) {
    report_error(err_msg(e.what()));
  } catch (...) {
    report_error(err_msg("unknown error in enqueue"));
  }
  return -1;
}

void SelectiveScanPlugin::write_fields(FieldWriter* w) const { w->add_int("delta_softplus", attrs_.delta_softplus); }

// ------------------------------------------------------------------------------------------------

SelectiveScanCreator::SelectiveScanCreator() {
  fields_.emplace_back("delta_softplus", nullptr, nvinfer1::PluginFieldType::kINT32, 1);
  fc_.nbFields = static_cast<int32_t>(fields_.size());
  fc_.fields = fields_.data();
}

bool SelectiveScanCreator::parse(const nvinfer1::PluginFieldCollection* fc, ScanAttrs* attrs, std::string* err) {
  FieldReader r(kOp, fc);
  int64_t softplus = 1;
  if (!r.get_int("delta_softplus", false, 1, 0, 1, &softplus, err)) return false;
  attrs->delta_softplus = static_cast<int32_t>(softplus);
  // plugin_version / plugin_namespace (and any other field) are not plugin parameters: ignored.
  return true;
}

nvinfer1::IPluginV3* SelectiveScanCreator::createPlugin(const char* name, const nvinfer1::PluginFieldCollection* fc,
                                                        nvinfer1::TensorRTPhase /*phase*/) noexcept {
  try {
    ScanAttrs attrs;
    std::string err;
    if (!parse(fc, &attrs, &err)) {
      const std::string layer = name != nullptr && *name ? std::string(" (layer '") + name + "')" : std::string();
      report_error(std::string(kOp) + layer + err.substr(std::string(kOp).size()));
      return nullptr;
    }
    return new SelectiveScanPlugin(name != nullptr ? name : "", attrs);
  } catch (const std::exception& e) {
    report_error(err_msg(e.what()));
  } catch (...) {
    report_error(err_msg("unknown error in createPlugin"));
  }
  return nullptr;
}

}  // namespace ssmpose_trt
