// ssmpose::SelectiveScan as a TensorRT IPluginV3 plugin, and what it shares with SelectiveScan2D (ScanPluginBase).
// Shape rules: those of the ONNX Runtime adapter (onnxruntime/selective_scan_op.cpp) and
// ops.check_selective_scan_args, applied to whatever dimensions are known at each stage (-1 = not known yet).
#include "plugins.h"

namespace ssmpose_trt {

// ------------------------------------------------------------------------------------------------
// ScanPluginBase

namespace {

constexpr const char* kScanInputs[] = {"", "delta", "A", "Bs", "Cs", "Ds", "delta_bias"};  // [0]: first_input_
constexpr int32_t kScanMaxInputs = 7;
constexpr int64_t kMaxState = 16;  // the kernels' limit on N

}  // namespace

const char* ScanPluginBase::input_name(int32_t index) const {
  if (index == 0) return first_input_;
  return index > 0 && index < kScanMaxInputs ? kScanInputs[index] : "?";
}

bool ScanPluginBase::output_exprs(const nvinfer1::DimsExprs* inputs, nvinfer1::DimsExprs* out,
                                  nvinfer1::IExprBuilder& /*builder*/) const {
  return copy_exprs(inputs[0], out);  // y has the first input's shape (its rank was checked by infer_shape)
}

bool ScanPluginBase::check_parameters(const std::vector<std::vector<int64_t>>& in, const char* channels_name,
                                      const char* dstate_axis, int64_t* channels, int64_t* dstate,
                                      std::string* err) const {
  auto fail = [&](const std::string& m) {
    *err = std::string(op_) + ": " + m;
    return false;
  };
  const std::vector<int64_t>& A = in[2];
  if (A.size() != 2 || !same_shape(A, {*channels, *dstate})) {
    return fail("A must be (" + (known(*channels) ? dim_str(*channels) : std::string(channels_name)) + ", " +
                (known(*dstate) ? dim_str(*dstate) : std::string("N")) + "), got " + shape_str(A));
  }
  unify(*channels, A[0], channels);
  unify(*dstate, A[1], dstate);
  for (size_t i = 5; i < in.size(); ++i) {
    if (in[i].size() != 1 || !same_shape(in[i], {*channels})) {
      return fail(std::string(kScanInputs[i]) + " must be (" +
                  (known(*channels) ? std::to_string(*channels) : std::string(channels_name)) + ",), got " +
                  shape_str(in[i]));
    }
    unify(*channels, in[i][0], channels);
  }
  if (known(*dstate) && (*dstate < 1 || *dstate > kMaxState)) {
    return fail(std::string("dstate N = ") + dstate_axis + " must be in 1.." + std::to_string(kMaxState) +
                ", got " + std::to_string(*dstate));
  }
  return true;
}

bool parse_delta_softplus(const FieldReader& r, ScanAttrs* attrs, std::string* err) {
  int64_t softplus = 1;
  if (!r.get_int("delta_softplus", false, 1, 0, 1, &softplus, err)) return false;
  attrs->delta_softplus = static_cast<int32_t>(softplus);
  return true;
}

// ------------------------------------------------------------------------------------------------
// SelectiveScan

namespace {

constexpr const char* kOp = "SelectiveScan";

std::string err_msg(const std::string& msg) { return std::string(kOp) + ": " + msg; }

}  // namespace

SelectiveScanPlugin::SelectiveScanPlugin(std::string layer_name, const ScanAttrs& attrs)
    : ScanPluginBase(kOp, "u", std::move(layer_name)), attrs_(attrs) {}

bool SelectiveScanPlugin::infer_shape(const std::vector<std::vector<int64_t>>& in, std::vector<int64_t>* out,
                                      std::string* err) const {
  const std::vector<int64_t>& u = in[0];
  const std::vector<int64_t>& delta = in[1];
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
  if (!check_parameters(in, "G*D", "Bs.shape[2]", &channels, &dstate, err)) return false;
  *out = {batch, channels, length};
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
  empty_output_ = in[0][0] == 0 || in[0][1] == 0 || in[0][2] == 0;  // B, G*D or L is 0
}

int SelectiveScanPlugin::launch(const CudaKernels& cuda, const void* const* inputs, void* const* outputs,
                                void* stream, const char** kernel) const {
  *kernel = "ssm_selective_scan_fwd_cuda";
  return cuda.selective_scan_fwd(&shape_, inputs[0], inputs[1], inputs[2], inputs[3], inputs[4],
                                 optional_input(inputs, 5), optional_input(inputs, 6), outputs[0], stream);
}

void SelectiveScanPlugin::write_fields(FieldWriter* w) const { w->add_int("delta_softplus", attrs_.delta_softplus); }

SelectiveScanCreator::SelectiveScanCreator() : CreatorBase(kOp) {
  add_field("delta_softplus", nvinfer1::PluginFieldType::kINT32);
}

bool SelectiveScanCreator::parse(const nvinfer1::PluginFieldCollection* fc, ScanAttrs* attrs, std::string* err) {
  // plugin_version / plugin_namespace (and any other field) are not plugin parameters: ignored.
  return parse_delta_softplus(FieldReader(kOp, fc), attrs, err);
}

nvinfer1::IPluginV3* SelectiveScanCreator::createPlugin(const char* name, const nvinfer1::PluginFieldCollection* fc,
                                                        nvinfer1::TensorRTPhase /*phase*/) noexcept {
  return create<SelectiveScanPlugin, ScanAttrs>(name, fc, &SelectiveScanCreator::parse);
}

}  // namespace ssmpose_trt
