// ssmpose::SelectiveScan2D (ssmpose domain version 2) as a TensorRT IPluginV3 plugin: SS2D's four-direction scan in
// one node, channel-last. Shape rules: those of the ONNX Runtime adapter (onnxruntime/selective_scan_2d_op.cpp) and
// ops.check_selective_scan_2d_args, in the same words, applied to whatever dimensions are known at each stage
// (-1 = not known yet). Inputs, optional inputs, output shape and enqueue as SelectiveScan (ScanPluginBase).
#include "plugins.h"

namespace ssmpose_trt {

namespace {

constexpr const char* kOp = "SelectiveScan2D";

std::string err_msg(const std::string& msg) { return std::string(kOp) + ": " + msg; }

}  // namespace

SelectiveScan2DPlugin::SelectiveScan2DPlugin(std::string layer_name, const Scan2DAttrs& attrs)
    : ScanPluginBase(kOp, "x", std::move(layer_name)), attrs_(attrs) {}

bool SelectiveScan2DPlugin::infer_shape(const std::vector<std::vector<int64_t>>& in, std::vector<int64_t>* out,
                                        std::string* err) const {
  const std::vector<int64_t>& x = in[0];
  const std::vector<int64_t>& delta = in[1];
  const std::vector<int64_t>& Bs = in[3];
  const std::vector<int64_t>& Cs = in[4];
  auto fail = [&](const std::string& m) {
    *err = err_msg(m);
    return false;
  };
  if (x.size() != 4) return fail("x must be (B, H, W, D), got shape " + shape_str(x));
  const int64_t dim = x[3];
  if (Bs.size() != 5) return fail("Bs must be (B, H, W, K, N), got shape " + shape_str(Bs));
  // (B, H, W): x's, completed by what Bs, Cs and delta tell while some are unknown.
  int64_t batch = x[0], height = x[1], width = x[2];
  auto lead_matches = [&](const std::vector<int64_t>& t) {
    return unify(batch, t[0], &batch) && unify(height, t[1], &height) && unify(width, t[2], &width);
  };
  if (!lead_matches(Bs)) {
    return fail("Bs shape " + shape_str(Bs) + " does not match x (B, H, W) = " + shape_str({x[0], x[1], x[2]}));
  }
  const int64_t directions = attrs_.directions;  // K; the creator admits 4 only
  auto directions_match = [&](const char* name, int64_t k) {
    return known(k) && k != directions
               ? fail(std::string(name) + ".shape[3] is the number of directions K, which must be " +
                      std::to_string(directions) + ", got " + std::to_string(k))
               : true;
  };
  if (!directions_match("Bs", Bs[3])) return false;
  if (Cs.size() != 5 || !same_shape(Cs, Bs)) {
    return fail("Cs shape " + shape_str(Cs) + " != Bs shape " + shape_str(Bs));
  }
  // Cs can only disagree with x or K where Bs left a dimension unknown.
  if (!lead_matches(Cs)) {
    return fail("Cs shape " + shape_str(Cs) + " does not match x (B, H, W) = " + shape_str({x[0], x[1], x[2]}));
  }
  if (!directions_match("Cs", Cs[3])) return false;
  int64_t dstate = 0;
  unify(Bs[4], Cs[4], &dstate);
  int64_t channels = -1;
  if (known(dim) && !checked_mul(directions, dim, &channels)) return fail("K*D overflows");
  const std::vector<int64_t> delta_expected{batch, height, width, channels};
  if (delta.size() != 4 || !same_shape(delta, delta_expected)) {
    return fail("delta must be (B, H, W, K*D) = " + shape_str(delta_expected) + ", got " + shape_str(delta));
  }
  lead_matches(delta);  // consistent (checked just above): fills in what delta knows
  unify(channels, delta[3], &channels);
  if (!check_parameters(in, "K*D", "Bs.shape[4]", &channels, &dstate, err)) return false;
  *out = {batch, height, width, dim};
  return true;
}

void SelectiveScan2DPlugin::prepare(const std::vector<std::vector<int64_t>>& in, int32_t dtype) {
  const std::vector<int64_t>& x = in[0];
  shape_ = ssm_scan2d_shape{};
  shape_.batch = x[0];
  shape_.height = x[1];
  shape_.width = x[2];
  shape_.dim = x[3];
  shape_.directions = in[3][3];
  shape_.dstate = in[3][4];
  shape_.delta_softplus = attrs_.delta_softplus;
  shape_.dtype = dtype;
  empty_output_ = x[0] == 0 || x[1] == 0 || x[2] == 0 || x[3] == 0;  // B, H, W or D is 0
}

int SelectiveScan2DPlugin::launch(const CudaKernels& cuda, const void* const* inputs, void* const* outputs,
                                  void* stream, const char** kernel) const {
  *kernel = "ssm_selective_scan_2d_fwd_cuda";
  return cuda.selective_scan_2d_fwd(&shape_, inputs[0], inputs[1], inputs[2], inputs[3], inputs[4],
                                    optional_input(inputs, 5), optional_input(inputs, 6), outputs[0], stream);
}

void SelectiveScan2DPlugin::write_fields(FieldWriter* w) const {
  w->add_int("delta_softplus", attrs_.delta_softplus);
  w->add_int("directions", attrs_.directions);
}

// ------------------------------------------------------------------------------------------------

SelectiveScan2DCreator::SelectiveScan2DCreator() : CreatorBase(kOp) {
  add_field("delta_softplus", nvinfer1::PluginFieldType::kINT32);
  add_field("directions", nvinfer1::PluginFieldType::kINT32);
}

bool SelectiveScan2DCreator::parse(const nvinfer1::PluginFieldCollection* fc, Scan2DAttrs* attrs, std::string* err) {
  const FieldReader r(kOp, fc);
  Scan2DAttrs a;
  if (!parse_delta_softplus(r, &a, err)) return false;
  // The exporter writes directions = 4; domain version 2 defines no other value (the kernels take 4 only).
  int64_t directions = kScan2DDirections;
  if (!r.get_int("directions", false, kScan2DDirections, kScan2DDirections, kScan2DDirections, &directions, err)) {
    return false;
  }
  a.directions = static_cast<int32_t>(directions);
  *attrs = a;
  return true;
}

nvinfer1::IPluginV3* SelectiveScan2DCreator::createPlugin(const char* name, const nvinfer1::PluginFieldCollection* fc,
                                                          nvinfer1::TensorRTPhase /*phase*/) noexcept {
  return create<SelectiveScan2DPlugin, Scan2DAttrs>(name, fc, &SelectiveScan2DCreator::parse);
}

}  // namespace ssmpose_trt
