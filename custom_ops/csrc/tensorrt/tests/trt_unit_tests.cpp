// Stand-in unit tests of the ssmpose TensorRT plugins: everything that does not need TensorRT's runtime.
//
// The plugin sources are compiled into this program as they are into libssmpose_trt.so. TensorRT's side is played
// by small fakes written against the public headers: an IExprBuilder / IDimensionExpr pair (their inline methods
// forward to the apiv::VExprBuilder / VDimensionExpr interfaces, implemented here with constant folding and
// symbolic dimensions that can be evaluated), PluginFieldCollections, and tensor descriptors. Nothing here links
// libnvinfer. Driven by tests/test_tensorrt_plugins.py.
//
// Usage:
//   ssmpose_trt_unit_tests                 run every check; prints "ok <name>" / "FAIL <name>: <why>" lines,
//                                          "fields <Plugin> <name>:<type> ..." lines, and a summary; exit 1 on failure
//   ssmpose_trt_unit_tests outsize H W kernel_h kernel_w stride_h stride_w pad_h pad_w dilation_h dilation_w
//                                          prints "<Hout> <Wout> <Hout_symbolic> <Wout_symbolic>": the plugin's output
//                                          size from constant input dims, then from its symbolic expression evaluated
//                                          at H, W ("error: ..." when the plugin refuses the shape)
//   ssmpose_trt_unit_tests scan2d X DELTA A BS CS [DS [DELTA_BIAS]]
//                                          SelectiveScan2D's shape rules on constant input dims ("2,8,6,3" each):
//                                          prints "build <output dims>" (getOutputShapes) and "run <output dims>"
//                                          (onShapeChange), or "build error: ..." / "run error: ..."
//   ssmpose_trt_unit_tests layernorm X WEIGHT BIAS
//                                          LayerNorm's shape rules, likewise ("" for a scalar X)
//   ssmpose_trt_unit_tests addlayernorm X R WEIGHT BIAS
//                                          AddLayerNorm's shape rules, likewise (the "build"/"run" lines give Y's
//                                          shape, which S shares)
//   ssmpose_trt_unit_tests dwconv X WEIGHT BIAS KERNEL_SIZES GROUP_CHANNELS [SHUFFLE_GROUPS [ACTIVATION]]
//                                          MultiKernelDepthwiseConv's field rules ("create error: ..." when the
//                                          creator refuses them; lists as 3,5,7,9), then its shape rules, likewise
//   ssmpose_trt_unit_tests vsstail Y R OUT_NORM_W OUT_NORM_B OUT_PROJ NORM_W NORM_B FC1_W FC1_B FC2_W FC2_B
//                                          VSSBlockTail's shape rules, likewise (the lines give Z's shape: R's)
//   ssmpose_trt_unit_tests gpu             (built with the CUDA runtime) enqueue on a GPU through the real CUDA kernels,
//                                          compared with the CPU kernels (LayerNorm, AddLayerNorm,
//                                          MultiKernelDepthwiseConv and VSSBlockTail: with float64 references computed
//                                          here); needs libssmpose_kernels{,_cuda}.so on the loader path
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "plugins.h"

#if defined(SSMPOSE_TRT_TEST_CUDA)
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <dlfcn.h>
#endif

using namespace ssmpose_trt;
using nvinfer1::DataType;
using nvinfer1::DimensionOperation;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldCollection;
using nvinfer1::PluginFieldType;

namespace {

// ------------------------------------------------------------------------------------------------
// Fake IExprBuilder / IDimensionExpr

class FakeExpr : public nvinfer1::IDimensionExpr {
 public:
  enum class Kind { kConstant, kSymbol, kOperation };

  explicit FakeExpr(int64_t value) : kind_(Kind::kConstant), value_(value) { mImpl = &impl_; }
  explicit FakeExpr(std::string symbol) : kind_(Kind::kSymbol), symbol_(std::move(symbol)) { mImpl = &impl_; }
  FakeExpr(DimensionOperation op, const FakeExpr* a, const FakeExpr* b)
      : kind_(Kind::kOperation), op_(op), a_(a), b_(b) {
    mImpl = &impl_;
  }
  ~FakeExpr() override = default;

  // Value with the symbols bound; false if a symbol is unbound or the operation is undefined.
  bool eval(const std::map<std::string, int64_t>& env, int64_t* out) const {
    switch (kind_) {
      case Kind::kConstant: *out = value_; return true;
      case Kind::kSymbol: {
        auto it = env.find(symbol_);
        if (it == env.end()) return false;
        *out = it->second;
        return true;
      }
      case Kind::kOperation: {
        int64_t x = 0, y = 0;
        if (!a_->eval(env, &x) || !b_->eval(env, &y)) return false;
        return apply(op_, x, y, out);
      }
    }
    return false;
  }

  static bool apply(DimensionOperation op, int64_t x, int64_t y, int64_t* out) {
    switch (op) {
      case DimensionOperation::kSUM: *out = x + y; return true;
      case DimensionOperation::kPROD: *out = x * y; return true;
      case DimensionOperation::kMAX: *out = x > y ? x : y; return true;
      case DimensionOperation::kMIN: *out = x < y ? x : y; return true;
      case DimensionOperation::kSUB: *out = x - y; return true;
      case DimensionOperation::kEQUAL: *out = x == y; return true;
      case DimensionOperation::kLESS: *out = x < y; return true;
      case DimensionOperation::kFLOOR_DIV:
        if (y == 0) return false;
        *out = x / y - ((x % y != 0) && ((x < 0) != (y < 0)));
        return true;
      case DimensionOperation::kCEIL_DIV:
        if (y == 0) return false;
        *out = x / y + ((x % y != 0) && ((x < 0) == (y < 0)));
        return true;
    }
    return false;
  }

  std::string str() const {
    static const char* names[] = {"+", "*", "max", "min", "-", "==", "<", "//", "ceildiv"};
    switch (kind_) {
      case Kind::kConstant: return std::to_string(value_);
      case Kind::kSymbol: return symbol_;
      case Kind::kOperation:
        return "(" + a_->str() + " " + names[static_cast<int>(op_)] + " " + b_->str() + ")";
    }
    return "?";
  }

  Kind kind() const { return kind_; }

 private:
  struct Impl : nvinfer1::apiv::VDimensionExpr {
    explicit Impl(const FakeExpr* owner) : owner(owner) {}
    bool isConstant() const override { return owner->kind_ == Kind::kConstant; }
    int64_t getConstantValue() const override {
      return owner->kind_ == Kind::kConstant ? owner->value_ : std::numeric_limits<int64_t>::min();
    }
    bool isSizeTensor() const override { return false; }
    const FakeExpr* owner;
  };

  Kind kind_;
  int64_t value_ = 0;
  std::string symbol_;
  DimensionOperation op_ = DimensionOperation::kSUM;
  const FakeExpr* a_ = nullptr;
  const FakeExpr* b_ = nullptr;
  Impl impl_{this};
};

class FakeBuilder : public nvinfer1::IExprBuilder {
 public:
  FakeBuilder() { mImpl = &impl_; }
  ~FakeBuilder() override = default;

  const FakeExpr* sym(const std::string& name) { return keep(new FakeExpr(name)); }
  const FakeExpr* cst(int64_t v) { return keep(new FakeExpr(v)); }
  // Dims of constants, with -1 entries replaced by the symbols names[i].
  nvinfer1::DimsExprs dims(const std::vector<int64_t>& values, const std::vector<std::string>& names = {}) {
    nvinfer1::DimsExprs d{};
    d.nbDims = static_cast<int32_t>(values.size());
    for (size_t i = 0; i < values.size(); ++i) {
      d.d[i] = values[i] >= 0 ? cst(values[i]) : sym(i < names.size() ? names[i] : "s" + std::to_string(i));
    }
    return d;
  }
  size_t operations() const { return operations_; }

 private:
  const FakeExpr* keep(FakeExpr* e) {
    pool_.emplace_back(e);
    return e;
  }

  struct Impl : nvinfer1::apiv::VExprBuilder {
    explicit Impl(FakeBuilder* owner) : owner(owner) {}
    const nvinfer1::IDimensionExpr* constant(int64_t value) override { return owner->cst(value); }
    const nvinfer1::IDimensionExpr* operation(DimensionOperation op, const nvinfer1::IDimensionExpr& first,
                                              const nvinfer1::IDimensionExpr& second) override {
      const auto* a = dynamic_cast<const FakeExpr*>(&first);
      const auto* b = dynamic_cast<const FakeExpr*>(&second);
      if (a == nullptr || b == nullptr) return nullptr;
      ++owner->operations_;
      int64_t x = 0, y = 0, r = 0;
      // TensorRT folds operations on constants; so does the fake.
      if (a->kind() == FakeExpr::Kind::kConstant && b->kind() == FakeExpr::Kind::kConstant && a->eval({}, &x) &&
          b->eval({}, &y)) {
        if (!FakeExpr::apply(op, x, y, &r)) return nullptr;
        return owner->cst(r);
      }
      return owner->keep(new FakeExpr(op, a, b));
    }
    const nvinfer1::IDimensionExpr* declareSizeTensor(int32_t, const nvinfer1::IDimensionExpr&,
                                                      const nvinfer1::IDimensionExpr&) override {
      return nullptr;
    }
    FakeBuilder* owner;
  };

  Impl impl_{this};
  std::vector<std::unique_ptr<FakeExpr>> pool_;
  size_t operations_ = 0;
};

// ------------------------------------------------------------------------------------------------
// Checks

int g_passed = 0, g_failed = 0;

void check(bool ok, const std::string& name, const std::string& detail = "") {
  if (ok) {
    ++g_passed;
    std::printf("ok %s\n", name.c_str());
  } else {
    ++g_failed;
    std::printf("FAIL %s: %s\n", name.c_str(), detail.c_str());
  }
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// Checks that the last reported error contains every part.
void check_error(const std::string& name, const std::vector<std::string>& parts) {
  const std::string& e = last_error();
  bool ok = !e.empty();
  for (const std::string& p : parts) ok = ok && contains(e, p);
  check(ok, name, "error was '" + e + "'");
}

// Owns the values of a PluginFieldCollection.
class Fields {
 public:
  Fields& i32(const char* name, int32_t v) { return add(name, PluginFieldType::kINT32, &v, sizeof v); }
  Fields& i64(const char* name, int64_t v) { return add(name, PluginFieldType::kINT64, &v, sizeof v); }
  Fields& i8(const char* name, int8_t v) { return add(name, PluginFieldType::kINT8, &v, sizeof v); }
  Fields& f32(const char* name, float v) { return add(name, PluginFieldType::kFLOAT32, &v, sizeof v); }
  Fields& f64(const char* name, double v) { return add(name, PluginFieldType::kFLOAT64, &v, sizeof v); }
  Fields& str(const char* name, const char* v) {
    return add(name, PluginFieldType::kCHAR, v, std::strlen(v), static_cast<int32_t>(std::strlen(v)));
  }
  Fields& i32s(const char* name, std::vector<int32_t> v) {
    return add(name, PluginFieldType::kINT32, v.data(), v.size() * sizeof(int32_t), static_cast<int32_t>(v.size()));
  }
  Fields& i64s(const char* name, std::vector<int64_t> v) {
    return add(name, PluginFieldType::kINT64, v.data(), v.size() * sizeof(int64_t), static_cast<int32_t>(v.size()));
  }
  Fields& i8s(const char* name, std::vector<int8_t> v) {
    return add(name, PluginFieldType::kINT8, v.data(), v.size(), static_cast<int32_t>(v.size()));
  }
  // A string as TensorRT's ONNX parser passes it: the bytes and a terminating NUL, counted in the length.
  Fields& cstr(const char* name, const char* v) {
    return add(name, PluginFieldType::kCHAR, v, std::strlen(v) + 1, static_cast<int32_t>(std::strlen(v) + 1));
  }
  // Any field: `length` values of `bytes` bytes in all.
  Fields& raw(const char* name, PluginFieldType t, const void* p, size_t bytes, int32_t length) {
    return add(name, t, p, bytes, length);
  }
  Fields& without(const char* name) {
    for (size_t i = 0; i < names_.size(); ++i) {
      if (names_[i] == name) {
        names_.erase(names_.begin() + i);
        data_.erase(data_.begin() + i);
        types_.erase(types_.begin() + i);
        lengths_.erase(lengths_.begin() + i);
        break;
      }
    }
    return *this;
  }
  Fields& set_i32(const char* name, int32_t v) { return without(name).i32(name, v); }
  const PluginFieldCollection* fc() {
    fields_.clear();
    for (size_t i = 0; i < names_.size(); ++i) {
      fields_.emplace_back(names_[i].c_str(), data_[i].data(), types_[i], lengths_[i]);
    }
    fc_.nbFields = static_cast<int32_t>(fields_.size());
    fc_.fields = fields_.data();
    return &fc_;
  }

 private:
  Fields& add(const char* name, PluginFieldType t, const void* p, size_t bytes, int32_t length = 1) {
    names_.emplace_back(name);
    data_.emplace_back(static_cast<const char*>(p), static_cast<const char*>(p) + bytes);
    data_.back().resize(bytes + 8);  // alignment slack; contents are copied
    types_.push_back(t);
    lengths_.push_back(length);
    return *this;
  }
  std::vector<std::string> names_;
  std::vector<std::vector<char>> data_;
  std::vector<PluginFieldType> types_;
  std::vector<int32_t> lengths_;
  std::vector<PluginField> fields_;
  PluginFieldCollection fc_{};
};

Fields deform_fields(int kh = 3, int kw = 3, int sh = 1, int sw = 1, int ph = 1, int pw = 1, int dh = 1, int dw = 1,
                     int group = 4, int gc = 16, float scale = 1.0f, int remove_center = 0) {
  Fields f;
  f.i32("kernel_h", kh).i32("kernel_w", kw).i32("stride_h", sh).i32("stride_w", sw).i32("pad_h", ph);
  f.i32("pad_w", pw).i32("dilation_h", dh).i32("dilation_w", dw).i32("group", group).i32("group_channels", gc);
  f.f32("offset_scale", scale).i32("remove_center", remove_center);
  f.str("plugin_version", "1").str("plugin_namespace", "ssmpose");  // as an ONNX node carries them: ignored
  return f;
}

template <typename P>
std::unique_ptr<P> as_plugin(nvinfer1::IPluginV3* p) {
  return std::unique_ptr<P>(dynamic_cast<P*>(p));
}

nvinfer1::DynamicPluginTensorDesc desc(std::vector<int64_t> dims, DataType t = DataType::kFLOAT,
                                       nvinfer1::TensorFormat f = nvinfer1::TensorFormat::kLINEAR) {
  nvinfer1::DynamicPluginTensorDesc d{};
  d.desc.dims.nbDims = static_cast<int32_t>(dims.size());
  for (size_t i = 0; i < dims.size(); ++i) {
    d.desc.dims.d[i] = dims[i];
    d.min.d[i] = dims[i] < 0 ? 1 : dims[i];
    d.max.d[i] = dims[i] < 0 ? 64 : dims[i];
    d.opt.d[i] = d.max.d[i];
  }
  d.min.nbDims = d.max.nbDims = d.opt.nbDims = d.desc.dims.nbDims;
  d.desc.type = t;
  d.desc.format = f;
  d.desc.scale = 1.0f;
  return d;
}

nvinfer1::PluginTensorDesc tdesc(std::vector<int64_t> dims, DataType t = DataType::kFLOAT) { return desc(dims, t).desc; }

std::vector<int64_t> const_dims(const nvinfer1::DimsExprs& d) {
  std::vector<int64_t> v;
  for (int32_t i = 0; i < d.nbDims; ++i) v.push_back(d.d[i]->isConstant() ? d.d[i]->getConstantValue() : -1);
  return v;
}

// ------------------------------------------------------------------------------------------------

SelectiveScanCreator& scan_creator() {
  int32_t n = 0;
  return *dynamic_cast<SelectiveScanCreator*>(plugin_creators(&n)[0]);
}
DeformAggregateCreator& deform_creator() {
  int32_t n = 0;
  return *dynamic_cast<DeformAggregateCreator*>(plugin_creators(&n)[1]);
}
SelectiveScan2DCreator& scan2d_creator() {
  int32_t n = 0;
  return *dynamic_cast<SelectiveScan2DCreator*>(plugin_creators(&n)[2]);
}
LayerNormCreator& layer_norm_creator() {
  int32_t n = 0;
  return *dynamic_cast<LayerNormCreator*>(plugin_creators(&n)[3]);
}
AddLayerNormCreator& add_layer_norm_creator() {
  int32_t n = 0;
  return *dynamic_cast<AddLayerNormCreator*>(plugin_creators(&n)[4]);
}
DepthwiseConvCreator& dwconv_creator() {
  int32_t n = 0;
  return *dynamic_cast<DepthwiseConvCreator*>(plugin_creators(&n)[5]);
}
VSSBlockTailCreator& vss_tail_creator() {
  int32_t n = 0;
  return *dynamic_cast<VSSBlockTailCreator*>(plugin_creators(&n)[6]);
}

// The fields a plugin serialises are exactly its creator's field names (what the ONNX parser passes), with their
// types.
bool fields_match_creator(const PluginFieldCollection* fc, nvinfer1::IPluginCreatorV3One& creator) {
  const PluginFieldCollection* names = creator.getFieldNames();
  bool same = fc != nullptr && fc->nbFields == names->nbFields;
  for (int32_t i = 0; same && i < fc->nbFields; ++i) {
    bool found = false;
    for (int32_t j = 0; j < names->nbFields; ++j) {
      const bool one_value = fc->fields[i].type == PluginFieldType::kCHAR ? fc->fields[i].length >= 1
                                                                          : fc->fields[i].length == 1;
      found = found || (std::strcmp(fc->fields[i].name, names->fields[j].name) == 0 &&
                        fc->fields[i].type == names->fields[j].type && one_value);
    }
    same = same && found;
  }
  return same;
}

// The bytes of one value of a field type (0 for those the plugins never write).
size_t field_value_bytes(PluginFieldType t) {
  switch (t) {
    case PluginFieldType::kINT8:
    case PluginFieldType::kCHAR: return 1;
    case PluginFieldType::kINT16:
    case PluginFieldType::kFLOAT16: return 2;
    case PluginFieldType::kINT32:
    case PluginFieldType::kFLOAT32: return 4;
    case PluginFieldType::kINT64:
    case PluginFieldType::kFLOAT64: return 8;
    default: return 0;
  }
}

// A copy of a serialised collection (as TensorRT stores it in the plan: name, type, length and the bytes),
// independent of the plugin's storage.
Fields copy_fields(const PluginFieldCollection* fc) {
  Fields copy;
  for (int32_t i = 0; fc && i < fc->nbFields; ++i) {
    const PluginField& f = fc->fields[i];
    copy.raw(f.name, f.type, f.data, field_value_bytes(f.type) * static_cast<size_t>(f.length), f.length);
  }
  return copy;
}

// The type of a creator's field as the tests name it: "int32", "float32", "int32s" (an int32 array: declared with a
// length other than 1), "char" (a string), else "other".
std::string field_type(const PluginField& f) {
  if (f.type == PluginFieldType::kINT32) return f.length == 1 ? "int32" : "int32s";
  if (f.type == PluginFieldType::kFLOAT32 && f.length == 1) return "float32";
  if (f.type == PluginFieldType::kCHAR) return "char";
  return "other";
}

void test_creators() {
  int32_t n = 0;
  nvinfer1::IPluginCreatorInterface* const* list = plugin_creators(&n);
  check(n == 7 && std::all_of(list, list + n, [](nvinfer1::IPluginCreatorInterface* c) { return c != nullptr; }),
        "creators.count");
  const char* expected[] = {"SelectiveScan", "DeformAggregate",          "SelectiveScan2D", "LayerNorm",
                            "AddLayerNorm",  "MultiKernelDepthwiseConv", "VSSBlockTail"};
  for (int32_t i = 0; i < n && i < 7; ++i) {
    auto* c = dynamic_cast<nvinfer1::IPluginCreatorV3One*>(list[i]);
    const std::string tag = std::string("creators.") + expected[i];
    check(c != nullptr, tag + ".is_v3one");
    if (c == nullptr) continue;
    check(std::strcmp(c->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0 && c->getInterfaceInfo().major == 1,
          tag + ".interface_info", c->getInterfaceInfo().kind);
    check(std::strcmp(c->getPluginName(), expected[i]) == 0, tag + ".name", c->getPluginName());
    check(std::strcmp(c->getPluginVersion(), "1") == 0, tag + ".version", c->getPluginVersion());
    check(std::strcmp(c->getPluginNamespace(), "ssmpose") == 0, tag + ".namespace", c->getPluginNamespace());
    const PluginFieldCollection* fc = c->getFieldNames();
    std::string line = std::string("fields ") + expected[i];
    for (int32_t k = 0; k < fc->nbFields; ++k) {
      line += std::string(" ") + fc->fields[k].name + ":" + field_type(fc->fields[k]);
    }
    std::printf("%s\n", line.c_str());
  }
}

void test_scan_fields() {
  ScanAttrs a;
  std::string err;
  Fields none;
  check(SelectiveScanCreator::parse(none.fc(), &a, &err) && a.delta_softplus == 1, "scan.fields.default", err);
  Fields zero;
  zero.i32("delta_softplus", 0).str("plugin_version", "1").str("plugin_namespace", "ssmpose");
  check(SelectiveScanCreator::parse(zero.fc(), &a, &err) && a.delta_softplus == 0, "scan.fields.int32", err);
  Fields i64;
  i64.i64("delta_softplus", 1);
  check(SelectiveScanCreator::parse(i64.fc(), &a, &err) && a.delta_softplus == 1, "scan.fields.int64", err);
  Fields i8;
  i8.i8("delta_softplus", 0);
  check(SelectiveScanCreator::parse(i8.fc(), &a, &err) && a.delta_softplus == 0, "scan.fields.int8", err);
  Fields two;
  two.i32("delta_softplus", 2);
  err.clear();
  check(!SelectiveScanCreator::parse(two.fc(), &a, &err) &&
            contains(err, "SelectiveScan: field delta_softplus must be in [0, 1], got 2"),
        "scan.fields.range", err);
  Fields flt;
  flt.f32("delta_softplus", 1.0f);
  check(!SelectiveScanCreator::parse(flt.fc(), &a, &err) && contains(err, "must be an integer, got float32"),
        "scan.fields.wrong_type", err);
  Fields many;
  many.i32s("delta_softplus", {1, 1});
  check(!SelectiveScanCreator::parse(many.fc(), &a, &err) && contains(err, "must hold one value, got 2 values"),
        "scan.fields.length", err);

  clear_last_error();
  nvinfer1::IPluginV3* p = scan_creator().createPlugin("scan_node", two.fc(), nvinfer1::TensorRTPhase::kBUILD);
  check(p == nullptr, "scan.create.refused");
  check_error("scan.create.message", {"SelectiveScan (layer 'scan_node'): field delta_softplus must be in [0, 1]"});
  delete p;
}

void test_deform_fields() {
  DeformAttrs a;
  std::string err;
  Fields f = deform_fields(3, 5, 2, 1, 1, 2, 1, 2, 4, 16, 0.5f, 1);
  bool ok = DeformAggregateCreator::parse(f.fc(), &a, &err);
  check(ok && a.kernel_h == 3 && a.kernel_w == 5 && a.stride_h == 2 && a.stride_w == 1 && a.pad_h == 1 &&
            a.pad_w == 2 && a.dilation_h == 1 && a.dilation_w == 2 && a.group == 4 && a.group_channels == 16 &&
            a.offset_scale == 0.5f && a.remove_center == 1,
        "deform.fields.all", err);

  Fields missing = deform_fields();
  missing.without("kernel_h");
  check(!DeformAggregateCreator::parse(missing.fc(), &a, &err) &&
            contains(err, "DeformAggregate: missing required field 'kernel_h' (int)"),
        "deform.fields.missing_int", err);
  Fields missing_scale = deform_fields();
  missing_scale.without("offset_scale");
  check(!DeformAggregateCreator::parse(missing_scale.fc(), &a, &err) &&
            contains(err, "missing required field 'offset_scale' (float)"),
        "deform.fields.missing_float", err);

  struct Bad {
    const char* field;
    int32_t value;
    const char* message;
  };
  const Bad bad[] = {
      {"stride_h", 0, "field stride_h must be in [1, 2147483647], got 0"},
      {"pad_w", -1, "field pad_w must be in [0, 2147483647], got -1"},
      {"dilation_w", 0, "field dilation_w must be in [1, 2147483647], got 0"},
      {"group", 0, "field group must be in [1, 2147483647], got 0"},
      {"group_channels", -4, "field group_channels must be in [1, 2147483647], got -4"},
      {"remove_center", 2, "field remove_center must be in [0, 1], got 2"},
      {"kernel_w", 0, "field kernel_w must be in [1, 2147483647], got 0"},
  };
  for (const Bad& b : bad) {
    Fields g = deform_fields();
    g.set_i32(b.field, b.value);
    check(!DeformAggregateCreator::parse(g.fc(), &a, &err) && contains(err, b.message),
          std::string("deform.fields.range.") + b.field, err);
  }
  Fields big = deform_fields();
  big.without("kernel_h").i64("kernel_h", int64_t(1) << 32);
  check(!DeformAggregateCreator::parse(big.fc(), &a, &err) && contains(err, "field kernel_h must be in"),
        "deform.fields.int64_overflow", err);

  Fields int_scale = deform_fields();
  int_scale.without("offset_scale").i32("offset_scale", 2);
  check(DeformAggregateCreator::parse(int_scale.fc(), &a, &err) && a.offset_scale == 2.0f,
        "deform.fields.int_offset_scale", err);
  Fields f64_scale = deform_fields();
  f64_scale.without("offset_scale").f64("offset_scale", 0.25);
  check(DeformAggregateCreator::parse(f64_scale.fc(), &a, &err) && a.offset_scale == 0.25f,
        "deform.fields.float64_offset_scale", err);
  Fields str_scale = deform_fields();
  str_scale.without("offset_scale").str("offset_scale", "1");
  check(!DeformAggregateCreator::parse(str_scale.fc(), &a, &err) && contains(err, "must be a float, got char"),
        "deform.fields.string_offset_scale", err);

  // activation (domain version 5): "none" by default, "silu", nothing else
  check(DeformAggregateCreator::parse(deform_fields().fc(), &a, &err) && a.activation == SSM_ACTIVATION_NONE,
        "deform.fields.activation_default", err);
  Fields silu = deform_fields();
  silu.str("activation", "silu");
  check(DeformAggregateCreator::parse(silu.fc(), &a, &err) && a.activation == SSM_ACTIVATION_SILU,
        "deform.fields.activation_silu", err);
  Fields gelu = deform_fields();
  gelu.str("activation", "gelu");
  check(!DeformAggregateCreator::parse(gelu.fc(), &a, &err) &&
            contains(err, "DeformAggregate: field activation must be \"none\" or \"silu\", got \"gelu\""),
        "deform.fields.activation_bad", err);

  Fields no_points = deform_fields(1, 1, 1, 1, 0, 0, 1, 1, 4, 16, 1.0f, 1);
  check(!DeformAggregateCreator::parse(no_points.fc(), &a, &err) &&
            contains(err, "kernel 1x1 with remove_center has no sampling points"),
        "deform.fields.no_points", err);
  Fields huge = deform_fields(2048, 1024);
  check(!DeformAggregateCreator::parse(huge.fc(), &a, &err) &&
            contains(err, "kernel_h*kernel_w = 2097152 exceeds the supported 1048576"),
        "deform.fields.too_many_points", err);

  clear_last_error();
  nvinfer1::IPluginV3* p = deform_creator().createPlugin("dcn", missing.fc(), nvinfer1::TensorRTPhase::kBUILD);
  check(p == nullptr, "deform.create.refused");
  check_error("deform.create.message", {"DeformAggregate (layer 'dcn'): missing required field 'kernel_h'"});
  delete p;
}

// The plugin's three capability interfaces exist, its name / version "1" / namespace "ssmpose", its output
// count and that it asks for no workspace: checks plugin.<tag>_capabilities, plugin.<tag>_core_identity and
// `outputs_check`.
void check_identity(nvinfer1::IPluginV3* p, const char* name, int32_t outputs, const std::string& tag,
                    const std::string& outputs_check) {
  auto* core =
      dynamic_cast<nvinfer1::IPluginV3OneCore*>(p->getCapabilityInterface(nvinfer1::PluginCapabilityType::kCORE));
  auto* build =
      dynamic_cast<nvinfer1::IPluginV3OneBuild*>(p->getCapabilityInterface(nvinfer1::PluginCapabilityType::kBUILD));
  auto* runtime = dynamic_cast<nvinfer1::IPluginV3OneRuntime*>(
      p->getCapabilityInterface(nvinfer1::PluginCapabilityType::kRUNTIME));
  check(core != nullptr && build != nullptr && runtime != nullptr, "plugin." + tag + "_capabilities");
  if (!(core && build && runtime)) return;
  check(std::strcmp(core->getPluginName(), name) == 0 && std::strcmp(core->getPluginVersion(), "1") == 0 &&
            std::strcmp(core->getPluginNamespace(), "ssmpose") == 0,
        "plugin." + tag + "_core_identity");
  check(build->getNbOutputs() == outputs && build->getWorkspaceSize(nullptr, 0, nullptr, 0) == 0, outputs_check);
}

void test_capabilities() {
  Fields f;
  auto p = as_plugin<SelectiveScanPlugin>(scan_creator().createPlugin("s", f.fc(), nvinfer1::TensorRTPhase::kBUILD));
  check(p != nullptr, "plugin.created");
  if (!p) return;
  auto* core = dynamic_cast<nvinfer1::IPluginV3OneCore*>(
      p->getCapabilityInterface(nvinfer1::PluginCapabilityType::kCORE));
  auto* build = dynamic_cast<nvinfer1::IPluginV3OneBuild*>(
      p->getCapabilityInterface(nvinfer1::PluginCapabilityType::kBUILD));
  auto* runtime = dynamic_cast<nvinfer1::IPluginV3OneRuntime*>(
      p->getCapabilityInterface(nvinfer1::PluginCapabilityType::kRUNTIME));
  check(core != nullptr && build != nullptr && runtime != nullptr, "plugin.capabilities");
  if (core && build && runtime) {
    check(std::strcmp(core->getInterfaceInfo().kind, "PLUGIN_V3ONE_CORE") == 0 &&
              std::strcmp(build->getInterfaceInfo().kind, "PLUGIN_V3ONE_BUILD") == 0 &&
              std::strcmp(runtime->getInterfaceInfo().kind, "PLUGIN_V3ONE_RUNTIME") == 0 &&
              std::strcmp(static_cast<nvinfer1::IPluginV3*>(p.get())->getInterfaceInfo().kind, "PLUGIN") == 0,
          "plugin.interface_kinds");
    check(std::strcmp(core->getPluginName(), "SelectiveScan") == 0 && std::strcmp(core->getPluginVersion(), "1") == 0 &&
              std::strcmp(core->getPluginNamespace(), "ssmpose") == 0,
          "plugin.core_identity");
    check(build->getNbOutputs() == 1 && build->getWorkspaceSize(nullptr, 0, nullptr, 0) == 0, "plugin.outputs");
  }
}

void test_formats() {
  Fields f;
  auto p = as_plugin<SelectiveScanPlugin>(scan_creator().createPlugin("s", f.fc(), nvinfer1::TensorRTPhase::kBUILD));
  if (!p) return check(false, "formats.plugin");
  auto io = [](std::vector<DataType> types, nvinfer1::TensorFormat fmt = nvinfer1::TensorFormat::kLINEAR) {
    std::vector<nvinfer1::DynamicPluginTensorDesc> v;
    for (DataType t : types) v.push_back(desc({2, 8, 16}, t, fmt));
    return v;
  };
  const DataType F = DataType::kFLOAT, H = DataType::kHALF;
  auto all_ok = [&](std::vector<nvinfer1::DynamicPluginTensorDesc> v, int32_t nin) {
    for (int32_t pos = 0; pos < static_cast<int32_t>(v.size()); ++pos) {
      if (!p->supportsFormatCombination(pos, v.data(), nin, 1)) return false;
    }
    return true;
  };
  check(all_ok(io({F, F, F, F, F, F, F, F}), 7), "formats.float32_all");
  check(all_ok(io({H, H, H, H, H, H}), 5), "formats.float16_all");
  check(!p->supportsFormatCombination(0, io({DataType::kINT32}).data(), 5, 1), "formats.int32_refused");
  check(!p->supportsFormatCombination(0, io({DataType::kBF16}).data(), 5, 1), "formats.bfloat16_refused");
  check(!p->supportsFormatCombination(0, io({DataType::kINT8}).data(), 5, 1), "formats.int8_refused");
  auto mixed = io({H, F, H, H, H, H});
  check(!p->supportsFormatCombination(1, mixed.data(), 5, 1), "formats.mixed_input_refused");
  auto mixed_out = io({F, F, F, F, F, H});
  check(!p->supportsFormatCombination(5, mixed_out.data(), 5, 1), "formats.output_type_follows_input0");
  check(!p->supportsFormatCombination(0, io({F}, nvinfer1::TensorFormat::kHWC8).data(), 5, 1),
        "formats.non_linear_refused");
  check(!p->supportsFormatCombination(0, io({F}, nvinfer1::TensorFormat::kCHW32).data(), 5, 1),
        "formats.chw32_refused");
  check(!p->supportsFormatCombination(6, io({F, F, F, F, F, F}).data(), 5, 1), "formats.position_out_of_range");

  DataType out = DataType::kINT32;
  DataType in_f[] = {F, F, F, F, F, F, F};
  check(p->getOutputDataTypes(&out, 1, in_f, 7) == 0 && out == F, "types.float32");
  DataType in_h[] = {H, H, H, H, H};
  check(p->getOutputDataTypes(&out, 1, in_h, 5) == 0 && out == H, "types.float16");
  DataType in_mixed[] = {F, F, H, F, F};
  clear_last_error();
  check(p->getOutputDataTypes(&out, 1, in_mixed, 5) != 0, "types.mixed_refused");
  check_error("types.mixed_message", {"SelectiveScan (layer 's')", "input 'A' has element type float16",
                                      "'u' has float32"});
  DataType in_int[] = {DataType::kINT32, DataType::kINT32, DataType::kINT32, DataType::kINT32, DataType::kINT32};
  check(p->getOutputDataTypes(&out, 1, in_int, 5) != 0, "types.int32_refused");
  check_error("types.int32_message", {"u has element type int32; supported: float32, float16"});
  check(p->getOutputDataTypes(&out, 1, in_f, 4) != 0, "types.too_few_inputs");
  check_error("types.too_few_message", {"takes 5 to 7 inputs, got 4"});
  check(p->getOutputDataTypes(&out, 2, in_f, 5) != 0, "types.two_outputs_refused");

  Fields df = deform_fields();
  auto d = as_plugin<DeformAggregatePlugin>(deform_creator().createPlugin("d", df.fc(), nvinfer1::TensorRTPhase::kBUILD));
  if (!d) return check(false, "formats.deform_plugin");
  auto dio = io({H, H, H});
  check(d->supportsFormatCombination(0, dio.data(), 2, 1) && d->supportsFormatCombination(1, dio.data(), 2, 1) &&
            d->supportsFormatCombination(2, dio.data(), 2, 1),
        "formats.deform_float16");
  check(d->getOutputDataTypes(&out, 1, in_f, 3) == 0 && out == F, "types.deform_offset_bias_accepted");
  check(d->getOutputDataTypes(&out, 1, in_f, 4) != 0, "types.deform_four_inputs_refused");
  check_error("types.deform_count_message", {"DeformAggregate (layer 'd'): takes 2 to 3 inputs, got 4"});
}

void test_scan_shapes() {
  Fields f;
  auto p = as_plugin<SelectiveScanPlugin>(scan_creator().createPlugin("s", f.fc(), nvinfer1::TensorRTPhase::kBUILD));
  if (!p) return check(false, "scan.shapes.plugin");
  FakeBuilder b;
  // Constant dims: B=2, G*D=8 (G=4, D=2), L=12, N=3.
  std::vector<nvinfer1::DimsExprs> in = {b.dims({2, 8, 12}), b.dims({2, 8, 12}), b.dims({8, 3}),
                                         b.dims({2, 4, 3, 12}), b.dims({2, 4, 3, 12}), b.dims({8}), b.dims({8})};
  nvinfer1::DimsExprs out{};
  for (int32_t n = 5; n <= 7; ++n) {
    out = nvinfer1::DimsExprs{};
    const int32_t rc = p->getOutputShapes(in.data(), n, nullptr, 0, &out, 1, b);
    check(rc == 0 && const_dims(out) == std::vector<int64_t>{2, 8, 12}, "scan.shapes.constant_" + std::to_string(n),
          last_error());
  }
  // Symbolic B and L: the output is u's expressions.
  std::vector<nvinfer1::DimsExprs> sym = {b.dims({-1, 8, -1}, {"B", "", "L"}), b.dims({-1, 8, -1}, {"B", "", "L"}),
                                          b.dims({8, 3}), b.dims({-1, 4, 3, -1}, {"B", "", "", "L"}),
                                          b.dims({-1, 4, 3, -1}, {"B", "", "", "L"}), b.dims({8}), b.dims({8})};
  out = nvinfer1::DimsExprs{};
  check(p->getOutputShapes(sym.data(), 7, nullptr, 0, &out, 1, b) == 0 && out.nbDims == 3 &&
            out.d[0] == sym[0].d[0] && out.d[1] == sym[0].d[1] && out.d[2] == sym[0].d[2],
        "scan.shapes.symbolic_is_u", last_error());

  struct Case {
    const char* name;
    int index;
    std::vector<int64_t> dims;
    const char* message;
  };
  const Case bad[] = {
      {"u_rank", 0, {2, 8}, "u must be (B, G*D, L), got shape (2, 8)"},
      {"delta", 1, {2, 8, 11}, "delta shape (2, 8, 11) != u shape (2, 8, 12)"},
      {"A", 2, {8, 4}, "A must be (8, 3), got (8, 4)"},
      {"Bs_rank", 3, {2, 4, 3}, "Bs must be (B, G, N, L), got shape (2, 4, 3)"},
      {"Bs_length", 3, {2, 4, 3, 10}, "does not match u (B=2, L=12)"},
      {"Cs", 4, {2, 4, 2, 12}, "Cs shape (2, 4, 2, 12) != Bs shape (2, 4, 3, 12)"},
      {"Ds", 5, {4}, "Ds must be (8,), got (4,)"},
      {"delta_bias", 6, {8, 1}, "delta_bias must be (8,), got (8, 1)"},
  };
  for (const Case& c : bad) {
    std::vector<nvinfer1::DimsExprs> v = in;
    v[c.index] = b.dims(c.dims);
    clear_last_error();
    out = nvinfer1::DimsExprs{};
    check(p->getOutputShapes(v.data(), 7, nullptr, 0, &out, 1, b) != 0, std::string("scan.shapes.bad_") + c.name);
    check_error(std::string("scan.shapes.bad_") + c.name + "_message", {"SelectiveScan (layer 's'): ", c.message});
  }
  std::vector<nvinfer1::DimsExprs> three = in;
  three[3] = three[4] = b.dims({2, 3, 3, 12});
  check(p->getOutputShapes(three.data(), 7, nullptr, 0, &out, 1, b) != 0, "scan.shapes.bad_groups");
  check_error("scan.shapes.bad_groups_message", {"channels 8 of u are not divisible by the 3 groups of Bs"});
  // dstate limit (N = 17) with A and Cs consistent.
  std::vector<nvinfer1::DimsExprs> big = {b.dims({2, 8, 12}), b.dims({2, 8, 12}), b.dims({8, 17}),
                                          b.dims({2, 4, 17, 12}), b.dims({2, 4, 17, 12})};
  check(p->getOutputShapes(big.data(), 5, nullptr, 0, &out, 1, b) != 0, "scan.shapes.dstate_limit");
  check_error("scan.shapes.dstate_limit_message", {"dstate N = Bs.shape[2] must be in 1..16, got 17"});
  // A mismatch is still caught when u's channels are symbolic (A carries them).
  std::vector<nvinfer1::DimsExprs> partial = {b.dims({2, -1, 12}, {"", "C"}), b.dims({2, -1, 12}, {"", "C"}),
                                              b.dims({8, 3}), b.dims({2, 4, 3, 12}), b.dims({2, 4, 3, 12}),
                                              b.dims({6})};
  check(p->getOutputShapes(partial.data(), 6, nullptr, 0, &out, 1, b) != 0, "scan.shapes.channels_from_A");
  check_error("scan.shapes.channels_from_A_message", {"Ds must be (8,), got (6,)"});
  check(p->getOutputShapes(in.data(), 7, in.data(), 1, &out, 1, b) != 0, "scan.shapes.shape_inputs_refused");
}

void test_deform_shapes() {
  FakeBuilder b;
  {
    Fields f = deform_fields();  // 3x3, stride 1, pad 1, dilation 1, G=4, C=16: K=9, P >= 108
    auto p = as_plugin<DeformAggregatePlugin>(deform_creator().createPlugin("d", f.fc(), nvinfer1::TensorRTPhase::kBUILD));
    if (!p) return check(false, "deform.shapes.plugin");
    std::vector<nvinfer1::DimsExprs> in = {b.dims({2, 64, 48, 64}), b.dims({2, 64, 48, 112})};
    nvinfer1::DimsExprs out{};
    check(p->getOutputShapes(in.data(), 2, nullptr, 0, &out, 1, b) == 0 &&
              const_dims(out) == std::vector<int64_t>{2, 64, 48, 64},
          "deform.shapes.constant", last_error());
    // Symbolic B, H, W: Hout/Wout are expressions built with kFLOOR_DIV; G*C is a constant.
    std::vector<nvinfer1::DimsExprs> sym = {b.dims({-1, -1, -1, 64}, {"B", "H", "W"}),
                                            b.dims({-1, -1, -1, 112}, {"B", "Ho", "Wo"})};
    out = nvinfer1::DimsExprs{};
    const bool ok = p->getOutputShapes(sym.data(), 2, nullptr, 0, &out, 1, b) == 0;
    check(ok && out.d[0] == sym[0].d[0] && !out.d[1]->isConstant() && out.d[3]->isConstant() &&
              out.d[3]->getConstantValue() == 64,
          "deform.shapes.symbolic", last_error());
    if (ok) {
      const auto* eh = dynamic_cast<const FakeExpr*>(out.d[1]);
      std::printf("expr Hout = %s\n", eh->str().c_str());
      check(contains(eh->str(), "//"), "deform.shapes.uses_floor_div", eh->str());
      bool all = true;
      for (int64_t h : {1, 2, 3, 7, 64, 255}) {
        int64_t v = -1;
        all = all && eh->eval({{"H", h}}, &v) && v == deform_out_size(h, 3, 1, 1, 1);
      }
      check(all, "deform.shapes.symbolic_eval");
    }
    struct Case {
      const char* name;
      std::vector<int64_t> value, om;
      const char* message;
    };
    const Case bad[] = {
        {"value_rank", {2, 64, 48}, {2, 64, 48, 108}, "value must be (B, H, W, G*C), got shape (2, 64, 48)"},
        {"om_rank", {2, 64, 48, 64}, {2, 64, 48}, "offset_mask must be (B, Hout, Wout, P), got shape (2, 64, 48)"},
        {"channels", {2, 64, 48, 60}, {2, 64, 48, 108}, "value has 60 channels, expected group*group_channels = 4*16"},
        {"lead", {2, 64, 48, 64}, {2, 32, 48, 108}, "offset_mask leading dims (2, 32, 48) != (B, Hout, Wout) = (2, 64, 48)"},
        {"batch", {2, 64, 48, 64}, {3, 64, 48, 108}, "offset_mask leading dims (3, 64, 48)"},
        {"columns", {2, 64, 48, 64}, {2, 64, 48, 107}, "offset_mask has 107 columns, needs >= group*K*3 = 108"},
    };
    for (const Case& c : bad) {
      std::vector<nvinfer1::DimsExprs> v = {b.dims(c.value), b.dims(c.om)};
      clear_last_error();
      out = nvinfer1::DimsExprs{};
      check(p->getOutputShapes(v.data(), 2, nullptr, 0, &out, 1, b) != 0, std::string("deform.shapes.bad_") + c.name);
      check_error(std::string("deform.shapes.bad_") + c.name + "_message", {"DeformAggregate (layer 'd'): ", c.message});
    }
    // Mismatch with offset_mask's known dims while value's H is symbolic is left to run time.
    std::vector<nvinfer1::DimsExprs> half = {b.dims({2, -1, 48, 64}, {"", "H"}), b.dims({2, 17, 48, 108})};
    check(p->getOutputShapes(half.data(), 2, nullptr, 0, &out, 1, b) == 0, "deform.shapes.partially_known");
  }
  {
    // 5x3 kernel, stride 2/3, pad 0/2, dilation 2/1, remove_center: K = 14, P >= 2*14*3 = 84.
    Fields f = deform_fields(5, 3, 2, 3, 0, 2, 2, 1, 2, 8, 1.0f, 1);
    auto p = as_plugin<DeformAggregatePlugin>(deform_creator().createPlugin("d2", f.fc(), nvinfer1::TensorRTPhase::kBUILD));
    if (!p) return check(false, "deform.shapes.plugin2");
    const int64_t ho = deform_out_size(31, 5, 2, 0, 2), wo = deform_out_size(20, 3, 3, 2, 1);
    std::vector<nvinfer1::DimsExprs> in = {b.dims({1, 31, 20, 16}), b.dims({1, ho, wo, 84})};
    nvinfer1::DimsExprs out{};
    check(p->getOutputShapes(in.data(), 2, nullptr, 0, &out, 1, b) == 0 &&
              const_dims(out) == std::vector<int64_t>{1, ho, wo, 16} && ho == 12 && wo == 8,
          "deform.shapes.strided_constant", last_error());
    std::vector<nvinfer1::DimsExprs> small = {b.dims({1, 6, 20, 16}), b.dims({1, 0, wo, 84})};
    check(p->getOutputShapes(small.data(), 2, nullptr, 0, &out, 1, b) != 0, "deform.shapes.too_small");
    check_error("deform.shapes.too_small_message", {"smaller than the dilated kernel", "(Hout, Wout) = (-1, 8)"});
  }
}

void test_configure_and_runtime() {
  Fields f;
  f.i32("delta_softplus", 0);
  auto p = as_plugin<SelectiveScanPlugin>(scan_creator().createPlugin("s", f.fc(), nvinfer1::TensorRTPhase::kBUILD));
  if (!p) return check(false, "configure.plugin");
  const DataType H = DataType::kHALF;
  std::vector<nvinfer1::DynamicPluginTensorDesc> in = {desc({-1, 8, -1}, H), desc({-1, 8, -1}, H), desc({8, 3}, H),
                                                       desc({-1, 4, 3, -1}, H), desc({-1, 4, 3, -1}, H),
                                                       desc({8}, H)};
  std::vector<nvinfer1::DynamicPluginTensorDesc> out = {desc({-1, 8, -1}, H)};
  check(p->configurePlugin(in.data(), 6, out.data(), 1) == 0 && p->configured_inputs() == 6, "configure.dynamic",
        last_error());
  auto bad = in;
  bad[2] = desc({8, 5}, H);
  check(p->configurePlugin(bad.data(), 6, out.data(), 1) != 0, "configure.bad_A");
  check_error("configure.bad_A_message", {"A must be (8, 3), got (8, 5)"});
  auto mixed = in;
  mixed[3] = desc({-1, 4, 3, -1}, DataType::kFLOAT);
  check(p->configurePlugin(mixed.data(), 6, out.data(), 1) != 0, "configure.mixed_types");
  check_error("configure.mixed_types_message", {"input 'Bs' has element type float32"});
  std::vector<nvinfer1::DynamicPluginTensorDesc> out_f = {desc({-1, 8, -1}, DataType::kFLOAT)};
  check(p->configurePlugin(in.data(), 6, out_f.data(), 1) != 0, "configure.output_type");

  // Run time: concrete shapes -> kernel shape.
  std::vector<nvinfer1::PluginTensorDesc> rin = {tdesc({3, 8, 20}, H), tdesc({3, 8, 20}, H), tdesc({8, 3}, H),
                                                 tdesc({3, 4, 3, 20}, H), tdesc({3, 4, 3, 20}, H), tdesc({8}, H),
                                                 tdesc({8}, H)};
  std::vector<nvinfer1::PluginTensorDesc> rout = {tdesc({3, 8, 20}, H)};
  const bool ok = p->onShapeChange(rin.data(), 7, rout.data(), 1) == 0;
  const ssm_scan_shape& s = p->kernel_shape();
  check(ok && s.batch == 3 && s.groups == 4 && s.dim == 2 && s.dstate == 3 && s.length == 20 &&
            s.delta_softplus == 0 && s.dtype == SSM_FLOAT16 && p->configured_inputs() == 7,
        "runtime.scan_kernel_shape", last_error());
  std::vector<nvinfer1::PluginTensorDesc> wrong_out = {tdesc({3, 8, 21}, H)};
  check(p->onShapeChange(rin.data(), 7, wrong_out.data(), 1) != 0, "runtime.wrong_output");
  check_error("runtime.wrong_output_message", {"output shape (3, 8, 21) != expected (3, 8, 20)"});
  auto unresolved = rin;
  unresolved[0] = tdesc({-1, 8, 20}, H);
  check(p->onShapeChange(unresolved.data(), 7, rout.data(), 1) != 0, "runtime.unresolved");
  check_error("runtime.unresolved_message", {"input 'u' has unresolved shape (?, 8, 20) at run time"});

  // enqueue: an empty batch needs no kernels; otherwise a missing kernel library is a clear error.
  std::vector<nvinfer1::PluginTensorDesc> ein = {tdesc({0, 8, 20}, H), tdesc({0, 8, 20}, H), tdesc({8, 3}, H),
                                                 tdesc({0, 4, 3, 20}, H), tdesc({0, 4, 3, 20}, H)};
  std::vector<nvinfer1::PluginTensorDesc> eout = {tdesc({0, 8, 20}, H)};
  check(p->onShapeChange(ein.data(), 5, eout.data(), 1) == 0 &&
            p->enqueue(ein.data(), eout.data(), nullptr, nullptr, nullptr, nullptr) == 0,
        "runtime.empty_batch", last_error());
  std::string why;
  if (cuda_kernels(&why) == nullptr) {
    check(p->onShapeChange(rin.data(), 7, rout.data(), 1) == 0, "runtime.reshape");
    const void* ins[7] = {};
    void* outs[1] = {};
    clear_last_error();
    check(p->enqueue(rin.data(), rout.data(), ins, outs, nullptr, nullptr) != 0, "runtime.no_kernels");
    check_error("runtime.no_kernels_message", {"SelectiveScan (layer 's'): cannot load the CUDA kernel library",
                                               "libssmpose_kernels_cuda.so"});
  } else {
    std::printf("skip runtime.no_kernels: libssmpose_kernels_cuda.so is loadable here\n");
  }

  // DeformAggregate at run time.
  Fields df = deform_fields(3, 3, 2, 2, 1, 1, 1, 1, 4, 16, 0.5f, 0);
  auto d = as_plugin<DeformAggregatePlugin>(deform_creator().createPlugin("d", df.fc(), nvinfer1::TensorRTPhase::kRUNTIME));
  if (!d) return check(false, "runtime.deform_plugin");
  std::vector<nvinfer1::PluginTensorDesc> din = {tdesc({2, 15, 10, 64}), tdesc({2, 8, 5, 112})};
  std::vector<nvinfer1::PluginTensorDesc> dout = {tdesc({2, 8, 5, 64})};
  const bool dok = d->onShapeChange(din.data(), 2, dout.data(), 1) == 0;
  const ssm_deform_shape& k = d->kernel_shape();
  check(dok && k.batch == 2 && k.height == 15 && k.width == 10 && k.out_height == 8 && k.out_width == 5 &&
            k.groups == 4 && k.group_channels == 16 && k.offset_stride == 112 && k.kernel_h == 3 && k.stride_w == 2 &&
            k.pad_h == 1 && k.dilation_w == 1 && k.remove_center == 0 && k.offset_scale == 0.5f &&
            k.dtype == SSM_FLOAT32,
        "runtime.deform_kernel_shape", last_error());
  std::vector<nvinfer1::PluginTensorDesc> empty_img = {tdesc({2, 0, 10, 64}), tdesc({2, 8, 5, 112})};
  Fields pad = deform_fields(3, 3, 2, 2, 9, 1, 1, 1, 4, 16, 0.5f, 0);  // pad_h 9: H = 0 still gives Hout = 8
  auto dp = as_plugin<DeformAggregatePlugin>(deform_creator().createPlugin("dp", pad.fc(), nvinfer1::TensorRTPhase::kRUNTIME));
  check(dp && dp->onShapeChange(empty_img.data(), 2, dout.data(), 1) != 0, "runtime.deform_empty_image");
  check_error("runtime.deform_empty_image_message", {"value has an empty image (H, W) = (0, 10)"});
}

void test_serialization() {
  // SelectiveScan with a non-default field.
  Fields f;
  f.i32("delta_softplus", 0);
  auto p = as_plugin<SelectiveScanPlugin>(scan_creator().createPlugin("s", f.fc(), nvinfer1::TensorRTPhase::kBUILD));
  if (!p) return check(false, "serialize.plugin");
  const PluginFieldCollection* fc = p->getFieldsToSerialize();
  check(fc != nullptr && fc->nbFields == 1 && std::strcmp(fc->fields[0].name, "delta_softplus") == 0 &&
            fc->fields[0].type == PluginFieldType::kINT32 && fc->fields[0].length == 1,
        "serialize.scan_fields");
  auto q = as_plugin<SelectiveScanPlugin>(scan_creator().createPlugin("s", fc, nvinfer1::TensorRTPhase::kRUNTIME));
  check(q && q->attrs().delta_softplus == 0, "serialize.scan_round_trip");
  auto c = as_plugin<SelectiveScanPlugin>(p->clone());
  check(c && c->attrs().delta_softplus == 0 && c->layer_name() == "s", "serialize.scan_clone");
  auto attached = as_plugin<SelectiveScanPlugin>(p->attachToContext(nullptr));
  check(attached && attached.get() != p.get() && attached->attrs().delta_softplus == 0, "serialize.scan_attach");

  // DeformAggregate: every field non-default, and the round trip through TensorRT's serialised form.
  Fields df = deform_fields(5, 3, 2, 3, 0, 2, 2, 1, 6, 12, 0.375f, 1);
  auto d = as_plugin<DeformAggregatePlugin>(deform_creator().createPlugin("d", df.fc(), nvinfer1::TensorRTPhase::kBUILD));
  if (!d) return check(false, "serialize.deform_plugin");
  const PluginFieldCollection* dfc = d->getFieldsToSerialize();
  check(fields_match_creator(dfc, deform_creator()), "serialize.deform_fields_match_creator");
  // A copy of the collection (as TensorRT stores it in the plan) must recreate the same plugin.
  Fields copy = copy_fields(dfc);
  d.reset();  // the original is gone, as after serialisation
  auto e = as_plugin<DeformAggregatePlugin>(deform_creator().createPlugin("d", copy.fc(), nvinfer1::TensorRTPhase::kRUNTIME));
  const DeformAttrs* a = e ? &e->attrs() : nullptr;
  check(a && a->kernel_h == 5 && a->kernel_w == 3 && a->stride_h == 2 && a->stride_w == 3 && a->pad_h == 0 &&
            a->pad_w == 2 && a->dilation_h == 2 && a->dilation_w == 1 && a->group == 6 && a->group_channels == 12 &&
            a->offset_scale == 0.375f && a->remove_center == 1,
        "serialize.deform_round_trip");
  Fields silu_fields = deform_fields();
  silu_fields.str("activation", "silu");
  auto silu = as_plugin<DeformAggregatePlugin>(
      deform_creator().createPlugin("d", silu_fields.fc(), nvinfer1::TensorRTPhase::kBUILD));
  if (silu) {
    Fields silu_copy = copy_fields(silu->getFieldsToSerialize());
    auto back = as_plugin<DeformAggregatePlugin>(
        deform_creator().createPlugin("d", silu_copy.fc(), nvinfer1::TensorRTPhase::kRUNTIME));
    check(back && back->attrs().activation == SSM_ACTIVATION_SILU, "serialize.deform_activation_round_trip");
  } else {
    check(false, "serialize.deform_activation_plugin");
  }
  // getFieldsToSerialize may be called again; the collection stays valid and equal.
  if (e) {
    const PluginFieldCollection* one = e->getFieldsToSerialize();
    const int32_t n1 = one->nbFields;
    const PluginFieldCollection* two = e->getFieldsToSerialize();
    check(n1 == 13 && two->nbFields == 13 && *static_cast<const float*>(two->fields[10].data) == 0.375f,
          "serialize.repeatable");
  }
}

// ------------------------------------------------------------------------------------------------
// SelectiveScan2D (domain version 2): x (B, H, W, D), delta (B, H, W, 4*D), A (4*D, N), Bs/Cs (B, H, W, 4, N),
// Ds/delta_bias (4*D) -> (B, H, W, D).

std::unique_ptr<SelectiveScan2DPlugin> scan2d_plugin(const char* layer, Fields f = Fields(),
                                                     nvinfer1::TensorRTPhase phase = nvinfer1::TensorRTPhase::kBUILD) {
  return as_plugin<SelectiveScan2DPlugin>(scan2d_creator().createPlugin(layer, f.fc(), phase));
}

// The inputs of one SelectiveScan2D node, 7 entries (resize to drop the optional ones). K = 4.
std::vector<std::vector<int64_t>> scan2d_dims(int64_t B, int64_t H, int64_t W, int64_t D, int64_t N) {
  return {{B, H, W, D}, {B, H, W, 4 * D}, {4 * D, N}, {B, H, W, 4, N}, {B, H, W, 4, N}, {4 * D}, {4 * D}};
}

void test_scan2d_fields() {
  Scan2DAttrs a;
  std::string err;
  Fields none;
  check(SelectiveScan2DCreator::parse(none.fc(), &a, &err) && a.delta_softplus == 1 && a.directions == 4,
        "scan2d.fields.default", err);
  Fields exported;  // as the exporter writes the node
  exported.i32("delta_softplus", 0).i32("directions", 4).str("plugin_version", "1").str("plugin_namespace", "ssmpose");
  check(SelectiveScan2DCreator::parse(exported.fc(), &a, &err) && a.delta_softplus == 0 && a.directions == 4,
        "scan2d.fields.int32", err);
  Fields wide;
  wide.i64("delta_softplus", 1).i64("directions", 4);
  check(SelectiveScan2DCreator::parse(wide.fc(), &a, &err) && a.delta_softplus == 1 && a.directions == 4,
        "scan2d.fields.int64", err);
  Fields narrow;
  narrow.i8("delta_softplus", 0).i8("directions", 4);
  check(SelectiveScan2DCreator::parse(narrow.fc(), &a, &err) && a.delta_softplus == 0 && a.directions == 4,
        "scan2d.fields.int8", err);

  struct Bad {
    const char* name;
    Fields fields;
    const char* message;
  };
  std::vector<Bad> bad;
  bad.push_back({"softplus_range", Fields().i32("delta_softplus", 2),
                 "SelectiveScan2D: field delta_softplus must be in [0, 1], got 2"});
  bad.push_back({"directions_range", Fields().i32("directions", 2),
                 "SelectiveScan2D: field directions must be in [4, 4], got 2"});
  bad.push_back({"directions_8", Fields().i64("directions", 8), "field directions must be in [4, 4], got 8"});
  bad.push_back({"directions_float", Fields().f32("directions", 4.0f),
                 "SelectiveScan2D: field 'directions' must be an integer, got float32"});
  bad.push_back({"directions_string", Fields().str("directions", "4"), "must be an integer, got char (string)"});
  bad.push_back({"softplus_float", Fields().f64("delta_softplus", 1.0), "must be an integer, got float64"});
  bad.push_back({"length", Fields().i32s("directions", {4, 4}),
                 "field 'directions' must hold one value, got 2 values"});
  for (Bad& b : bad) {
    err.clear();
    check(!SelectiveScan2DCreator::parse(b.fields.fc(), &a, &err) && contains(err, b.message),
          std::string("scan2d.fields.") + b.name, err);
  }

  Fields three;
  three.i32("delta_softplus", 1).i32("directions", 3);
  clear_last_error();
  nvinfer1::IPluginV3* p = scan2d_creator().createPlugin("ss2d_node", three.fc(), nvinfer1::TensorRTPhase::kBUILD);
  check(p == nullptr, "scan2d.create.refused");
  check_error("scan2d.create.message",
              {"SelectiveScan2D (layer 'ss2d_node'): field directions must be in [4, 4], got 3"});
  delete p;
  clear_last_error();
  p = scan2d_creator().createPlugin("", three.fc(), nvinfer1::TensorRTPhase::kRUNTIME);
  check(p == nullptr && last_error().rfind("SelectiveScan2D: field directions", 0) == 0, "scan2d.create.unnamed",
        last_error());
  delete p;
  auto ok = scan2d_plugin("ok", exported);
  check(ok && ok->attrs().delta_softplus == 0 && ok->attrs().directions == 4 && ok->layer_name() == "ok",
        "scan2d.create.plugin");
}

void test_scan2d_plugin() {
  auto p = scan2d_plugin("s2");
  check(p != nullptr, "plugin.scan2d_created");
  if (!p) return;
  check_identity(p.get(), "SelectiveScan2D", 1, "scan2d", "plugin.scan2d_outputs");

  // Formats: 4-D and 5-D linear tensors, float32 or float16 picked by x, everything else follows.
  const DataType F = DataType::kFLOAT, H = DataType::kHALF;
  auto io = [](DataType t, int32_t nin, nvinfer1::TensorFormat fmt = nvinfer1::TensorFormat::kLINEAR) {
    std::vector<std::vector<int64_t>> dims = scan2d_dims(2, 5, 3, 6, 3);
    dims.resize(nin);
    dims.push_back({2, 5, 3, 6});  // y
    std::vector<nvinfer1::DynamicPluginTensorDesc> v;
    for (const auto& d : dims) v.push_back(desc(d, t, fmt));
    return v;
  };
  auto all_ok = [&](std::vector<nvinfer1::DynamicPluginTensorDesc> v, int32_t nin) {
    for (int32_t pos = 0; pos < nin + 1; ++pos) {
      if (!p->supportsFormatCombination(pos, v.data(), nin, 1)) return false;
    }
    return true;
  };
  check(all_ok(io(F, 7), 7) && all_ok(io(F, 5), 5), "formats.scan2d_float32_all");
  check(all_ok(io(H, 6), 6), "formats.scan2d_float16_all");
  check(!p->supportsFormatCombination(0, io(DataType::kBF16, 5).data(), 5, 1), "formats.scan2d_bfloat16_refused");
  check(!p->supportsFormatCombination(0, io(F, 5, nvinfer1::TensorFormat::kHWC8).data(), 5, 1),
        "formats.scan2d_non_linear_refused");
  auto mixed = io(F, 7);
  mixed[3].desc.type = H;
  check(!p->supportsFormatCombination(3, mixed.data(), 7, 1), "formats.scan2d_mixed_input_refused");
  auto mixed_out = io(H, 5);
  mixed_out[5].desc.type = F;
  check(!p->supportsFormatCombination(5, mixed_out.data(), 5, 1), "formats.scan2d_output_type_follows_x");

  DataType out = DataType::kINT32;
  DataType in_h[] = {H, H, H, H, H, H, H};
  check(p->getOutputDataTypes(&out, 1, in_h, 7) == 0 && out == H, "types.scan2d_float16");
  DataType in_mixed[] = {F, F, F, F, F, F, H};
  clear_last_error();
  check(p->getOutputDataTypes(&out, 1, in_mixed, 7) != 0, "types.scan2d_mixed_refused");
  check_error("types.scan2d_mixed_message", {"SelectiveScan2D (layer 's2')", "input 'delta_bias' has element type "
                                             "float16, but 'x' has float32; all inputs must share one type"});
  DataType in_int[] = {DataType::kINT32, DataType::kINT32, DataType::kINT32, DataType::kINT32, DataType::kINT32};
  check(p->getOutputDataTypes(&out, 1, in_int, 5) != 0, "types.scan2d_int32_refused");
  check_error("types.scan2d_int32_message", {"SelectiveScan2D (layer 's2'): x has element type int32; supported: "
                                             "float32, float16"});
  DataType in_8[] = {F, F, F, F, F, F, F, F};
  check(p->getOutputDataTypes(&out, 1, in_8, 8) != 0, "types.scan2d_too_many_inputs");
  check_error("types.scan2d_count_message", {"SelectiveScan2D (layer 's2'): takes 5 to 7 inputs, got 8"});
}

// Builds DimsExprs of `dims` (constants; -1 = a symbol named by `names`).
std::vector<nvinfer1::DimsExprs> exprs(FakeBuilder& b, const std::vector<std::vector<int64_t>>& dims,
                                       const std::vector<std::vector<std::string>>& names = {}) {
  std::vector<nvinfer1::DimsExprs> v;
  for (size_t i = 0; i < dims.size(); ++i) {
    v.push_back(b.dims(dims[i], i < names.size() ? names[i] : std::vector<std::string>{}));
  }
  return v;
}

void test_scan2d_shapes() {
  auto p = scan2d_plugin("s2");
  if (!p) return check(false, "scan2d.shapes.plugin");
  FakeBuilder b;
  // Constant dims: B=2, H=5, W=3, D=6 (K*D = 24), N=3.
  const std::vector<std::vector<int64_t>> good = scan2d_dims(2, 5, 3, 6, 3);
  std::vector<nvinfer1::DimsExprs> in = exprs(b, good);
  nvinfer1::DimsExprs out{};
  for (int32_t n = 5; n <= 7; ++n) {
    out = nvinfer1::DimsExprs{};
    const int32_t rc = p->getOutputShapes(in.data(), n, nullptr, 0, &out, 1, b);
    check(rc == 0 && const_dims(out) == std::vector<int64_t>{2, 5, 3, 6}, "scan2d.shapes.constant_" + std::to_string(n),
          last_error());
  }
  // Symbolic B, H, W: the output is x's expressions (no operation built).
  const std::vector<std::string> bhw = {"B", "H", "W"};
  std::vector<nvinfer1::DimsExprs> sym = exprs(b, scan2d_dims(-1, -1, -1, 6, 3), {bhw, bhw, {}, bhw, bhw});
  out = nvinfer1::DimsExprs{};
  const size_t ops = b.operations();
  check(p->getOutputShapes(sym.data(), 7, nullptr, 0, &out, 1, b) == 0 && out.nbDims == 4 && out.d[0] == sym[0].d[0] &&
            out.d[1] == sym[0].d[1] && out.d[2] == sym[0].d[2] && out.d[3] == sym[0].d[3] && b.operations() == ops,
        "scan2d.shapes.symbolic_is_x", last_error());

  struct Case {
    const char* name;
    std::vector<std::pair<int, std::vector<int64_t>>> changes;
    const char* message;
  };
  const Case bad[] = {
      {"x_rank", {{0, {2, 5, 3}}}, "x must be (B, H, W, D), got shape (2, 5, 3)"},
      {"Bs_rank", {{3, {2, 15, 4, 3}}}, "Bs must be (B, H, W, K, N), got shape (2, 15, 4, 3)"},
      {"Bs_lead", {{3, {2, 5, 4, 4, 3}}, {4, {2, 5, 4, 4, 3}}},
       "Bs shape (2, 5, 4, 4, 3) does not match x (B, H, W) = (2, 5, 3)"},
      {"Bs_batch", {{3, {1, 5, 3, 4, 3}}}, "Bs shape (1, 5, 3, 4, 3) does not match x (B, H, W) = (2, 5, 3)"},
      {"directions", {{3, {2, 5, 3, 2, 3}}, {4, {2, 5, 3, 2, 3}}},
       "Bs.shape[3] is the number of directions K, which must be 4, got 2"},
      {"Cs", {{4, {2, 5, 3, 4, 2}}}, "Cs shape (2, 5, 3, 4, 2) != Bs shape (2, 5, 3, 4, 3)"},
      {"Cs_rank", {{4, {2, 5, 3, 12}}}, "Cs shape (2, 5, 3, 12) != Bs shape (2, 5, 3, 4, 3)"},
      {"delta", {{1, {2, 5, 3, 6}}}, "delta must be (B, H, W, K*D) = (2, 5, 3, 24), got (2, 5, 3, 6)"},
      {"delta_rank", {{1, {2, 15, 24}}}, "delta must be (B, H, W, K*D) = (2, 5, 3, 24), got (2, 15, 24)"},
      {"delta_lead", {{1, {2, 3, 5, 24}}}, "delta must be (B, H, W, K*D) = (2, 5, 3, 24), got (2, 3, 5, 24)"},
      {"A", {{2, {24, 4}}}, "A must be (24, 3), got (24, 4)"},
      {"A_rows", {{2, {6, 3}}}, "A must be (24, 3), got (6, 3)"},
      {"A_rank", {{2, {24}}}, "A must be (24, 3), got (24,)"},
      {"Ds", {{5, {6}}}, "Ds must be (24,), got (6,)"},
      {"delta_bias", {{6, {24, 1}}}, "delta_bias must be (24,), got (24, 1)"},
      {"dstate_limit", {{2, {24, 17}}, {3, {2, 5, 3, 4, 17}}, {4, {2, 5, 3, 4, 17}}},
       "dstate N = Bs.shape[4] must be in 1..16, got 17"},
      {"dstate_zero", {{2, {24, 0}}, {3, {2, 5, 3, 4, 0}}, {4, {2, 5, 3, 4, 0}}},
       "dstate N = Bs.shape[4] must be in 1..16, got 0"},
  };
  for (const Case& c : bad) {
    std::vector<std::vector<int64_t>> dims = good;
    for (const auto& change : c.changes) dims[change.first] = change.second;
    std::vector<nvinfer1::DimsExprs> v = exprs(b, dims);
    clear_last_error();
    out = nvinfer1::DimsExprs{};
    check(p->getOutputShapes(v.data(), 7, nullptr, 0, &out, 1, b) != 0, std::string("scan2d.shapes.bad_") + c.name);
    check_error(std::string("scan2d.shapes.bad_") + c.name + "_message", {"SelectiveScan2D (layer 's2'): ", c.message});
  }

  // Partly known shapes: whatever is known is checked, whichever input carries it.
  struct Partial {
    const char* name;
    std::vector<std::vector<int64_t>> dims;
    std::vector<std::vector<std::string>> names;
    const char* message;  // nullptr: accepted
  };
  const std::vector<std::string> b_only = {"B"};
  const Partial partial[] = {
      // Bs's batch is symbolic: Cs carries it.
      {"Cs_batch", {{2, 5, 3, 6}, {2, 5, 3, 24}, {24, 3}, {-1, 5, 3, 4, 3}, {3, 5, 3, 4, 3}}, {{}, {}, {}, b_only},
       "Cs shape (3, 5, 3, 4, 3) does not match x (B, H, W) = (2, 5, 3)"},
      // Bs's K is symbolic: Cs carries it.
      {"Cs_directions", {{2, 5, 3, 6}, {2, 5, 3, 24}, {24, 3}, {2, 5, 3, -1, 3}, {2, 5, 3, 3, 3}},
       {{}, {}, {}, {"", "", "", "K"}}, "Cs.shape[3] is the number of directions K, which must be 4, got 3"},
      // x's batch is symbolic: Bs carries it to delta.
      {"delta_batch_from_Bs", {{-1, 5, 3, 6}, {3, 5, 3, 24}, {24, 3}, {2, 5, 3, 4, 3}, {2, 5, 3, 4, 3}}, {b_only},
       "delta must be (B, H, W, K*D) = (2, 5, 3, 24), got (3, 5, 3, 24)"},
      // x's D is symbolic: delta carries K*D to Ds.
      {"channels_from_delta", {{2, 5, 3, -1}, {2, 5, 3, 24}, {24, 3}, {2, 5, 3, 4, 3}, {2, 5, 3, 4, 3}, {20}},
       {{"", "", "", "D"}}, "Ds must be (24,), got (20,)"},
      // x's D and delta's channels are symbolic: A carries them to Ds.
      {"channels_from_A", {{2, 5, 3, -1}, {2, 5, 3, -1}, {24, 3}, {2, 5, 3, 4, 3}, {2, 5, 3, 4, 3}, {24}, {12}},
       {{"", "", "", "D"}, {"", "", "", "C"}}, "delta_bias must be (24,), got (12,)"},
      // N is symbolic in Bs and Cs: A carries it to the limit.
      {"dstate_from_A", {{2, 5, 3, 6}, {2, 5, 3, 24}, {24, 20}, {2, 5, 3, 4, -1}, {2, 5, 3, 4, -1}},
       {{}, {}, {}, {"", "", "", "", "N"}, {"", "", "", "", "N"}}, "dstate N = Bs.shape[4] must be in 1..16, got 20"},
      // Consistent but partly symbolic: accepted (the rest is checked in configurePlugin / onShapeChange).
      {"accepted", {{-1, -1, 3, 6}, {-1, -1, 3, 24}, {24, 3}, {-1, -1, 3, 4, 3}, {-1, -1, 3, 4, 3}, {24}},
       {{"B", "H"}, {"B", "H"}, {}, {"B", "H"}, {"B", "H"}}, nullptr},
  };
  for (const Partial& c : partial) {
    std::vector<nvinfer1::DimsExprs> v = exprs(b, c.dims, c.names);
    clear_last_error();
    out = nvinfer1::DimsExprs{};
    const int32_t rc = p->getOutputShapes(v.data(), static_cast<int32_t>(v.size()), nullptr, 0, &out, 1, b);
    const std::string name = std::string("scan2d.shapes.partial_") + c.name;
    if (c.message == nullptr) {
      check(rc == 0 && out.nbDims == 4 && out.d[0] == v[0].d[0] && out.d[1] == v[0].d[1], name, last_error());
    } else {
      check(rc != 0, name);
      check_error(name + "_message", {"SelectiveScan2D (layer 's2'): ", c.message});
    }
  }
  check(p->getOutputShapes(in.data(), 7, in.data(), 1, &out, 1, b) != 0, "scan2d.shapes.shape_inputs_refused");
  check_error("scan2d.shapes.shape_inputs_message", {"SelectiveScan2D (layer 's2'): takes no shape inputs, got 1"});
  check(p->getOutputShapes(in.data(), 4, nullptr, 0, &out, 1, b) != 0, "scan2d.shapes.four_inputs_refused");
  check_error("scan2d.shapes.four_inputs_message", {"takes 5 to 7 inputs, got 4"});
}

void test_scan2d_configure_and_runtime() {
  Fields f;
  f.i32("delta_softplus", 0).i32("directions", 4);
  auto p = scan2d_plugin("s2", f);
  if (!p) return check(false, "configure.scan2d_plugin");
  const DataType H = DataType::kHALF;
  auto descs = [](const std::vector<std::vector<int64_t>>& dims, DataType t) {
    std::vector<nvinfer1::DynamicPluginTensorDesc> v;
    for (const auto& d : dims) v.push_back(desc(d, t));
    return v;
  };
  // Build time: B, H, W vary over the profile (-1).
  std::vector<std::vector<int64_t>> dyn = scan2d_dims(-1, -1, -1, 6, 3);
  std::vector<nvinfer1::DynamicPluginTensorDesc> in = descs(dyn, H);
  std::vector<nvinfer1::DynamicPluginTensorDesc> out = {desc({-1, -1, -1, 6}, H)};
  check(p->configurePlugin(in.data(), 7, out.data(), 1) == 0 && p->configured_inputs() == 7, "configure.scan2d_dynamic",
        last_error());
  check(p->configurePlugin(in.data(), 5, out.data(), 1) == 0 && p->configured_inputs() == 5, "configure.scan2d_five",
        last_error());
  auto bad = in;
  bad[2] = desc({24, 5}, H);
  check(p->configurePlugin(bad.data(), 7, out.data(), 1) != 0, "configure.scan2d_bad_A");
  check_error("configure.scan2d_bad_A_message", {"SelectiveScan2D (layer 's2'): A must be (24, 3), got (24, 5)"});
  bad = in;
  bad[1] = desc({-1, -1, -1, 6}, H);
  check(p->configurePlugin(bad.data(), 7, out.data(), 1) != 0, "configure.scan2d_bad_delta");
  check_error("configure.scan2d_bad_delta_message", {"delta must be (B, H, W, K*D) = (?, ?, ?, 24), got (?, ?, ?, 6)"});
  auto mixed = in;
  mixed[4] = desc(dyn[4], DataType::kFLOAT);
  check(p->configurePlugin(mixed.data(), 7, out.data(), 1) != 0, "configure.scan2d_mixed_types");
  check_error("configure.scan2d_mixed_types_message", {"input 'Cs' has element type float32"});
  std::vector<nvinfer1::DynamicPluginTensorDesc> out_f = {desc({-1, -1, -1, 6}, DataType::kFLOAT)};
  check(p->configurePlugin(in.data(), 7, out_f.data(), 1) != 0, "configure.scan2d_output_type");
  check_error("configure.scan2d_output_type_message", {"output has element type float32, expected float16"});

  // Run time: concrete shapes -> the kernel's shape struct.
  auto tdescs = [](const std::vector<std::vector<int64_t>>& dims, DataType t) {
    std::vector<nvinfer1::PluginTensorDesc> v;
    for (const auto& d : dims) v.push_back(tdesc(d, t));
    return v;
  };
  std::vector<nvinfer1::PluginTensorDesc> rin = tdescs(scan2d_dims(3, 5, 4, 6, 3), H);
  std::vector<nvinfer1::PluginTensorDesc> rout = {tdesc({3, 5, 4, 6}, H)};
  const bool ok = p->onShapeChange(rin.data(), 7, rout.data(), 1) == 0;
  const ssm_scan2d_shape& s = p->kernel_shape();
  check(ok && s.batch == 3 && s.height == 5 && s.width == 4 && s.dim == 6 && s.directions == 4 && s.dstate == 3 &&
            s.delta_softplus == 0 && s.dtype == SSM_FLOAT16 && p->configured_inputs() == 7,
        "runtime.scan2d_kernel_shape", last_error());
  std::vector<nvinfer1::PluginTensorDesc> fin = tdescs(scan2d_dims(1, 2, 7, 8, 16), DataType::kFLOAT);
  fin.resize(6);
  std::vector<nvinfer1::PluginTensorDesc> fout = {tdesc({1, 2, 7, 8})};
  auto q = scan2d_plugin("q", Fields(), nvinfer1::TensorRTPhase::kRUNTIME);
  const bool fok = q && q->onShapeChange(fin.data(), 6, fout.data(), 1) == 0;
  check(fok && q->kernel_shape().batch == 1 && q->kernel_shape().height == 2 && q->kernel_shape().width == 7 &&
            q->kernel_shape().dim == 8 && q->kernel_shape().dstate == 16 && q->kernel_shape().delta_softplus == 1 &&
            q->kernel_shape().dtype == SSM_FLOAT32 && q->configured_inputs() == 6,
        "runtime.scan2d_kernel_shape_float32", last_error());
  std::vector<nvinfer1::PluginTensorDesc> wrong_out = {tdesc({3, 5, 4, 24}, H)};
  check(p->onShapeChange(rin.data(), 7, wrong_out.data(), 1) != 0, "runtime.scan2d_wrong_output");
  check_error("runtime.scan2d_wrong_output_message", {"output shape (3, 5, 4, 24) != expected (3, 5, 4, 6)"});
  auto unresolved = rin;
  unresolved[0] = tdesc({3, -1, 4, 6}, H);
  check(p->onShapeChange(unresolved.data(), 7, rout.data(), 1) != 0, "runtime.scan2d_unresolved");
  check_error("runtime.scan2d_unresolved_message", {"input 'x' has unresolved shape (3, ?, 4, 6) at run time"});
  auto bad_bs = rin;
  bad_bs[3] = bad_bs[4] = tdesc({3, 5, 4, 2, 3}, H);
  check(p->onShapeChange(bad_bs.data(), 7, rout.data(), 1) != 0, "runtime.scan2d_bad_directions");
  check_error("runtime.scan2d_bad_directions_message", {"Bs.shape[3] is the number of directions K, which must be 4, "
                                                        "got 2"});

  // enqueue: an empty output (B, H, W or D is 0) needs no kernels; otherwise a missing kernel library is a clear
  // error.
  const std::vector<int64_t> empties[] = {{0, 5, 4, 6, 3}, {3, 0, 4, 6, 3}, {3, 5, 0, 6, 3}, {3, 5, 4, 0, 3}};
  for (const auto& e : empties) {
    std::vector<nvinfer1::PluginTensorDesc> ein = tdescs(scan2d_dims(e[0], e[1], e[2], e[3], e[4]), H);
    std::vector<nvinfer1::PluginTensorDesc> eout = {tdesc({e[0], e[1], e[2], e[3]}, H)};
    check(p->onShapeChange(ein.data(), 5, eout.data(), 1) == 0 &&
              p->enqueue(ein.data(), eout.data(), nullptr, nullptr, nullptr, nullptr) == 0,
          "runtime.scan2d_empty_" + shape_str({e[0], e[1], e[2], e[3]}), last_error());
  }
  std::string why;
  if (cuda_kernels(&why) == nullptr) {
    check(p->onShapeChange(rin.data(), 7, rout.data(), 1) == 0, "runtime.scan2d_reshape");
    const void* ins[7] = {};
    void* outs[1] = {};
    clear_last_error();
    check(p->enqueue(rin.data(), rout.data(), ins, outs, nullptr, nullptr) != 0, "runtime.scan2d_no_kernels");
    check_error("runtime.scan2d_no_kernels_message", {"SelectiveScan2D (layer 's2'): cannot load the CUDA kernel "
                                                      "library", "libssmpose_kernels_cuda.so"});
  } else {
    std::printf("skip runtime.scan2d_no_kernels: libssmpose_kernels_cuda.so is loadable here\n");
  }
}

void test_scan2d_serialization() {
  Fields f;
  f.i32("delta_softplus", 0).i32("directions", 4).str("plugin_version", "1").str("plugin_namespace", "ssmpose");
  auto p = scan2d_plugin("s2", f);
  if (!p) return check(false, "serialize.scan2d_plugin");
  const PluginFieldCollection* fc = p->getFieldsToSerialize();
  check(fc != nullptr && fc->nbFields == 2 && std::strcmp(fc->fields[0].name, "delta_softplus") == 0 &&
            *static_cast<const int32_t*>(fc->fields[0].data) == 0 &&
            std::strcmp(fc->fields[1].name, "directions") == 0 && *static_cast<const int32_t*>(fc->fields[1].data) == 4,
        "serialize.scan2d_fields");
  check(fields_match_creator(fc, scan2d_creator()), "serialize.scan2d_fields_match_creator");
  Fields copy = copy_fields(fc);
  auto c = as_plugin<SelectiveScan2DPlugin>(p->clone());
  auto attached = as_plugin<SelectiveScan2DPlugin>(p->attachToContext(nullptr));
  p.reset();  // the original is gone, as after serialisation
  auto q = scan2d_plugin("s2", copy, nvinfer1::TensorRTPhase::kRUNTIME);
  check(q && q->attrs().delta_softplus == 0 && q->attrs().directions == 4, "serialize.scan2d_round_trip");
  check(c && c->attrs().delta_softplus == 0 && c->attrs().directions == 4 && c->layer_name() == "s2" &&
            std::strcmp(c->getPluginName(), "SelectiveScan2D") == 0,
        "serialize.scan2d_clone");
  check(attached && attached.get() != c.get() && attached->attrs().delta_softplus == 0, "serialize.scan2d_attach");
  if (q) {
    const int32_t n1 = q->getFieldsToSerialize()->nbFields;
    const PluginFieldCollection* two = q->getFieldsToSerialize();
    check(n1 == 2 && two->nbFields == 2 && *static_cast<const int32_t*>(two->fields[0].data) == 0,
          "serialize.scan2d_repeatable");
  }
  // The default (softplus on) survives the round trip too.
  auto d = scan2d_plugin("d");
  Fields dcopy = copy_fields(d ? d->getFieldsToSerialize() : nullptr);
  auto e = scan2d_plugin("d", dcopy, nvinfer1::TensorRTPhase::kRUNTIME);
  check(e && e->attrs().delta_softplus == 1 && e->attrs().directions == 4, "serialize.scan2d_default_round_trip");
}

// ------------------------------------------------------------------------------------------------
// LayerNorm (domain version 3): X (..., C), weight (C), bias (C) -> Y of X's shape. Field epsilon (float).

std::unique_ptr<LayerNormPlugin> layer_norm_plugin(const char* layer, Fields f = Fields(),
                                                   nvinfer1::TensorRTPhase phase = nvinfer1::TensorRTPhase::kBUILD) {
  return as_plugin<LayerNormPlugin>(layer_norm_creator().createPlugin(layer, f.fc(), phase));
}

// The inputs of one LayerNorm node: X, weight, bias.
std::vector<std::vector<int64_t>> layer_norm_dims(std::vector<int64_t> x) {
  const int64_t c = x.empty() ? 1 : x.back();
  return {x, {c}, {c}};
}

void test_layer_norm_fields() {
  LayerNormAttrs a;
  std::string err;
  Fields none;
  check(LayerNormCreator::parse(none.fc(), &a, &err) && a.epsilon == 1e-5f, "layernorm.fields.default", err);
  Fields exported;  // as the exporter writes the node
  exported.f32("epsilon", 1e-6f).str("plugin_version", "1").str("plugin_namespace", "ssmpose");
  check(LayerNormCreator::parse(exported.fc(), &a, &err) && a.epsilon == 1e-6f, "layernorm.fields.float32", err);
  Fields wide;
  wide.f64("epsilon", 1e-3);
  check(LayerNormCreator::parse(wide.fc(), &a, &err) && a.epsilon == 1e-3f, "layernorm.fields.float64", err);
  Fields int32;
  int32.i32("epsilon", 1);
  check(LayerNormCreator::parse(int32.fc(), &a, &err) && a.epsilon == 1.0f, "layernorm.fields.int32", err);
  Fields int64;
  int64.i64("epsilon", 2);
  check(LayerNormCreator::parse(int64.fc(), &a, &err) && a.epsilon == 2.0f, "layernorm.fields.int64", err);
  Fields tiny;  // a float32 denormal is still > 0
  tiny.f32("epsilon", 1e-40f);
  check(LayerNormCreator::parse(tiny.fc(), &a, &err) && a.epsilon > 0.0f, "layernorm.fields.denormal", err);

  struct Bad {
    const char* name;
    Fields fields;
    const char* message;
  };
  std::vector<Bad> bad;
  bad.push_back({"zero", Fields().f32("epsilon", 0.0f), "LayerNorm: field epsilon must be finite and > 0, got 0"});
  bad.push_back({"negative", Fields().f32("epsilon", -0.5f), "field epsilon must be finite and > 0, got -0.5"});
  bad.push_back({"negative_zero", Fields().f32("epsilon", -0.0f), "field epsilon must be finite and > 0, got -0"});
  bad.push_back({"int_zero", Fields().i32("epsilon", 0), "field epsilon must be finite and > 0, got 0"});
  bad.push_back({"int_negative", Fields().i8("epsilon", -1), "field epsilon must be finite and > 0, got -1"});
  bad.push_back({"float64_underflow", Fields().f64("epsilon", 1e-60), "field epsilon must be finite and > 0, got 0"});
  bad.push_back({"nan", Fields().f32("epsilon", std::numeric_limits<float>::quiet_NaN()),
                 "LayerNorm: field 'epsilon' must be a finite float32 value"});
  bad.push_back({"inf", Fields().f64("epsilon", std::numeric_limits<double>::infinity()),
                 "field 'epsilon' must be a finite float32 value"});
  bad.push_back({"float64_overflow", Fields().f64("epsilon", 1e300), "field 'epsilon' must be a finite float32 value"});
  bad.push_back({"string", Fields().str("epsilon", "1"),
                 "LayerNorm: field 'epsilon' must be a float, got char (string)"});
  bad.push_back({"length", Fields().i32s("epsilon", {1, 1}), "field 'epsilon' must hold one value, got 2 values"});
  for (Bad& b : bad) {
    err.clear();
    check(!LayerNormCreator::parse(b.fields.fc(), &a, &err) && contains(err, b.message),
          std::string("layernorm.fields.") + b.name, err);
  }

  Fields zero;
  zero.f32("epsilon", 0.0f).str("plugin_version", "1").str("plugin_namespace", "ssmpose");
  clear_last_error();
  nvinfer1::IPluginV3* p = layer_norm_creator().createPlugin("ln_3", zero.fc(), nvinfer1::TensorRTPhase::kBUILD);
  check(p == nullptr, "layernorm.create.refused");
  check_error("layernorm.create.message", {"LayerNorm (layer 'ln_3'): field epsilon must be finite and > 0, got 0"});
  delete p;
  clear_last_error();
  p = layer_norm_creator().createPlugin("", zero.fc(), nvinfer1::TensorRTPhase::kRUNTIME);
  check(p == nullptr && last_error().rfind("LayerNorm: field epsilon", 0) == 0, "layernorm.create.unnamed",
        last_error());
  delete p;
  auto ok = layer_norm_plugin("ok", exported);
  check(ok && ok->attrs().epsilon == 1e-6f && ok->layer_name() == "ok", "layernorm.create.plugin");
}

void test_layer_norm_plugin() {
  auto p = layer_norm_plugin("ln");
  check(p != nullptr, "plugin.layernorm_created");
  if (!p) return;
  check_identity(p.get(), "LayerNorm", 1, "layernorm", "plugin.layernorm_outputs");

  // Formats: linear tensors, float32 or float16 picked by X, weight, bias and Y follow.
  const DataType F = DataType::kFLOAT, H = DataType::kHALF;
  auto io = [](DataType t, nvinfer1::TensorFormat fmt = nvinfer1::TensorFormat::kLINEAR) {
    std::vector<std::vector<int64_t>> dims = layer_norm_dims({2, 5, 96});
    dims.push_back({2, 5, 96});  // Y
    std::vector<nvinfer1::DynamicPluginTensorDesc> v;
    for (const auto& d : dims) v.push_back(desc(d, t, fmt));
    return v;
  };
  auto all_ok = [&](std::vector<nvinfer1::DynamicPluginTensorDesc> v) {
    for (int32_t pos = 0; pos < 4; ++pos) {
      if (!p->supportsFormatCombination(pos, v.data(), 3, 1)) return false;
    }
    return true;
  };
  check(all_ok(io(F)), "formats.layernorm_float32_all");
  check(all_ok(io(H)), "formats.layernorm_float16_all");
  check(!p->supportsFormatCombination(0, io(DataType::kBF16).data(), 3, 1), "formats.layernorm_bfloat16_refused");
  check(!p->supportsFormatCombination(0, io(DataType::kINT8).data(), 3, 1), "formats.layernorm_int8_refused");
  check(!p->supportsFormatCombination(0, io(F, nvinfer1::TensorFormat::kHWC8).data(), 3, 1),
        "formats.layernorm_non_linear_refused");
  check(!p->supportsFormatCombination(0, io(H, nvinfer1::TensorFormat::kCHW16).data(), 3, 1),
        "formats.layernorm_chw16_refused");
  auto mixed = io(F);
  mixed[1].desc.type = H;
  check(!p->supportsFormatCombination(1, mixed.data(), 3, 1), "formats.layernorm_mixed_weight_refused");
  auto mixed_bias = io(H);
  mixed_bias[2].desc.type = F;
  check(!p->supportsFormatCombination(2, mixed_bias.data(), 3, 1), "formats.layernorm_mixed_bias_refused");
  auto mixed_out = io(H);
  mixed_out[3].desc.type = F;
  check(!p->supportsFormatCombination(3, mixed_out.data(), 3, 1), "formats.layernorm_output_type_follows_X");
  check(!p->supportsFormatCombination(4, io(F).data(), 3, 1), "formats.layernorm_position_out_of_range");

  DataType out = DataType::kINT32;
  DataType in_f[] = {F, F, F, F};
  check(p->getOutputDataTypes(&out, 1, in_f, 3) == 0 && out == F, "types.layernorm_float32");
  DataType in_h[] = {H, H, H};
  check(p->getOutputDataTypes(&out, 1, in_h, 3) == 0 && out == H, "types.layernorm_float16");
  DataType in_mixed[] = {F, F, H};
  clear_last_error();
  check(p->getOutputDataTypes(&out, 1, in_mixed, 3) != 0, "types.layernorm_mixed_refused");
  check_error("types.layernorm_mixed_message", {"LayerNorm (layer 'ln'): input 'bias' has element type float16, but "
                                                "'X' has float32; all inputs must share one type"});
  DataType in_int[] = {DataType::kINT32, DataType::kINT32, DataType::kINT32};
  check(p->getOutputDataTypes(&out, 1, in_int, 3) != 0, "types.layernorm_int32_refused");
  check_error("types.layernorm_int32_message", {"LayerNorm (layer 'ln'): X has element type int32; supported: "
                                                "float32, float16"});
  DataType in_bf[] = {DataType::kBF16, DataType::kBF16, DataType::kBF16};
  check(p->getOutputDataTypes(&out, 1, in_bf, 3) != 0, "types.layernorm_bfloat16_refused");
  check_error("types.layernorm_bfloat16_message", {"X has element type bfloat16; supported: float32, float16"});
  check(p->getOutputDataTypes(&out, 1, in_f, 2) != 0, "types.layernorm_two_inputs_refused");
  check_error("types.layernorm_count_message", {"LayerNorm (layer 'ln'): takes 3 inputs, got 2"});
  check(p->getOutputDataTypes(&out, 1, in_f, 4) != 0, "types.layernorm_four_inputs_refused");
  check_error("types.layernorm_count4_message", {"LayerNorm (layer 'ln'): takes 3 inputs, got 4"});
  check(p->getOutputDataTypes(&out, 2, in_f, 3) != 0, "types.layernorm_two_outputs_refused");
  check_error("types.layernorm_outputs_message", {"LayerNorm (layer 'ln'): has 1 output, got 2"});
}

void test_layer_norm_shapes() {
  auto p = layer_norm_plugin("ln");
  if (!p) return check(false, "layernorm.shapes.plugin");
  FakeBuilder b;
  nvinfer1::DimsExprs out{};
  // Constant dims of ranks 1 to 5 (and empty rows): Y is X's shape.
  const std::vector<int64_t> good[] = {{96}, {7, 96}, {2, 5, 96}, {2, 3, 4, 32}, {1, 2, 3, 4, 768}, {0, 96},
                                       {2, 0, 32}, {1}};
  for (const auto& x : good) {
    std::vector<nvinfer1::DimsExprs> in = exprs(b, layer_norm_dims(x));
    out = nvinfer1::DimsExprs{};
    check(p->getOutputShapes(in.data(), 3, nullptr, 0, &out, 1, b) == 0 && const_dims(out) == x,
          "layernorm.shapes.constant_" + shape_str(x), last_error());
  }
  // Symbolic dims: the output is X's expressions (no operation built), C included.
  const size_t ops = b.operations();
  std::vector<nvinfer1::DimsExprs> sym = exprs(b, {{-1, -1, 96}, {96}, {96}}, {{"B", "L"}});
  out = nvinfer1::DimsExprs{};
  check(p->getOutputShapes(sym.data(), 3, nullptr, 0, &out, 1, b) == 0 && out.nbDims == 3 &&
            out.d[0] == sym[0].d[0] && out.d[1] == sym[0].d[1] && out.d[2] == sym[0].d[2] && b.operations() == ops,
        "layernorm.shapes.symbolic_is_X", last_error());
  std::vector<nvinfer1::DimsExprs> sym_c = exprs(b, {{-1, 7, -1}, {-1}, {-1}}, {{"B", "", "C"}, {"C"}, {"C"}});
  out = nvinfer1::DimsExprs{};
  check(p->getOutputShapes(sym_c.data(), 3, nullptr, 0, &out, 1, b) == 0 && out.nbDims == 3 &&
            out.d[2] == sym_c[0].d[2] && !out.d[2]->isConstant(),
        "layernorm.shapes.symbolic_channels", last_error());

  struct Case {
    const char* name;
    std::vector<std::vector<int64_t>> dims;
    std::vector<std::vector<std::string>> names;
    const char* message;
  };
  const std::vector<std::string> c_only = {"C"};
  const Case bad[] = {
      {"scalar", {{}, {96}, {96}}, {}, "X must have rank >= 1 (it is normalised over its last axis), got shape ()"},
      {"no_channels", {{4, 0}, {0}, {0}}, {}, "the last dimension C of X must be >= 1, got shape (4, 0)"},
      {"no_channels_rank1", {{0}, {0}, {0}}, {}, "the last dimension C of X must be >= 1, got shape (0,)"},
      {"weight", {{2, 5, 96}, {32}, {96}}, {}, "weight must be (C,) = (96,) for X of shape (2, 5, 96), got (32,)"},
      {"weight_rank", {{2, 5, 96}, {1, 96}, {96}}, {},
       "weight must be (C,) = (96,) for X of shape (2, 5, 96), got (1, 96)"},
      {"weight_scalar", {{2, 5, 96}, {}, {96}}, {}, "weight must be (C,) = (96,) for X of shape (2, 5, 96), got ()"},
      {"bias", {{2, 5, 96}, {96}, {95}}, {}, "bias must be (C,) = (96,) for X of shape (2, 5, 96), got (95,)"},
      {"bias_rank", {{2, 5, 96}, {96}, {96, 1}}, {},
       "bias must be (C,) = (96,) for X of shape (2, 5, 96), got (96, 1)"},
      {"rows_overflow", {{int64_t(1) << 62, 4, 8}, {8}, {8}}, {}, "X has too many elements"},
      // Partly known: C from whichever input knows it.
      {"partial_bias", {{2, -1}, {96}, {32}}, {{"", "C"}},
       "bias must be (C,) = (96,) for X of shape (2, ?), got (32,)"},
      {"partial_weight_rank", {{2, -1}, {2, 3}, {96}}, {{"", "C"}},
       "weight must be (C,) for X of shape (2, ?), got (2, 3)"},
      {"partial_zero", {{2, -1}, {-1}, {0}}, {{"", "C"}, c_only},
       "the last dimension C of X must be >= 1, got shape (2, ?) with C = 0 from bias"},
      {"partial_zero_weight", {{-1}, {0}, {-1}}, {{"C"}, {}, c_only},
       "the last dimension C of X must be >= 1, got shape (?,) with C = 0 from weight"},
  };
  for (const Case& c : bad) {
    std::vector<nvinfer1::DimsExprs> v = exprs(b, c.dims, c.names);
    clear_last_error();
    out = nvinfer1::DimsExprs{};
    check(p->getOutputShapes(v.data(), 3, nullptr, 0, &out, 1, b) != 0, std::string("layernorm.shapes.bad_") + c.name);
    check_error(std::string("layernorm.shapes.bad_") + c.name + "_message", {"LayerNorm (layer 'ln'): ", c.message});
  }
  std::vector<nvinfer1::DimsExprs> in = exprs(b, layer_norm_dims({2, 5, 96}));
  check(p->getOutputShapes(in.data(), 3, in.data(), 1, &out, 1, b) != 0, "layernorm.shapes.shape_inputs_refused");
  check_error("layernorm.shapes.shape_inputs_message", {"LayerNorm (layer 'ln'): takes no shape inputs, got 1"});
  check(p->getOutputShapes(in.data(), 2, nullptr, 0, &out, 1, b) != 0, "layernorm.shapes.two_inputs_refused");
  check_error("layernorm.shapes.two_inputs_message", {"takes 3 inputs, got 2"});
}

void test_layer_norm_configure_and_runtime() {
  Fields f;
  f.f32("epsilon", 1e-6f);
  auto p = layer_norm_plugin("ln", f);
  if (!p) return check(false, "configure.layernorm_plugin");
  const DataType H = DataType::kHALF, F = DataType::kFLOAT;
  auto descs = [](const std::vector<std::vector<int64_t>>& dims, DataType t) {
    std::vector<nvinfer1::DynamicPluginTensorDesc> v;
    for (const auto& d : dims) v.push_back(desc(d, t));
    return v;
  };
  // Build time: the rows vary over the profile (-1).
  std::vector<nvinfer1::DynamicPluginTensorDesc> in = descs(layer_norm_dims({-1, -1, 96}), H);
  std::vector<nvinfer1::DynamicPluginTensorDesc> out = {desc({-1, -1, 96}, H)};
  check(p->configurePlugin(in.data(), 3, out.data(), 1) == 0 && p->configured_inputs() == 3,
        "configure.layernorm_dynamic", last_error());
  std::vector<nvinfer1::DynamicPluginTensorDesc> dyn_c = descs({{-1, -1}, {-1}, {-1}}, F);
  std::vector<nvinfer1::DynamicPluginTensorDesc> out_c = {desc({-1, -1}, F)};
  check(p->configurePlugin(dyn_c.data(), 3, out_c.data(), 1) == 0, "configure.layernorm_dynamic_channels",
        last_error());
  auto bad = in;
  bad[1] = desc({48}, H);
  check(p->configurePlugin(bad.data(), 3, out.data(), 1) != 0, "configure.layernorm_bad_weight");
  check_error("configure.layernorm_bad_weight_message",
              {"LayerNorm (layer 'ln'): weight must be (C,) = (96,) for X of shape (?, ?, 96), got (48,)"});
  bad = in;
  bad[0] = desc({-1, -1, 0}, H);
  check(p->configurePlugin(bad.data(), 3, out.data(), 1) != 0, "configure.layernorm_no_channels");
  check_error("configure.layernorm_no_channels_message",
              {"the last dimension C of X must be >= 1, got shape (?, ?, 0)"});
  auto mixed = in;
  mixed[2] = desc({96}, F);
  check(p->configurePlugin(mixed.data(), 3, out.data(), 1) != 0, "configure.layernorm_mixed_types");
  check_error("configure.layernorm_mixed_types_message", {"input 'bias' has element type float32"});
  std::vector<nvinfer1::DynamicPluginTensorDesc> out_f = {desc({-1, -1, 96}, F)};
  check(p->configurePlugin(in.data(), 3, out_f.data(), 1) != 0, "configure.layernorm_output_type");
  check_error("configure.layernorm_output_type_message", {"output has element type float32, expected float16"});

  // Run time: concrete shapes -> the kernel's shape struct (rows = the product of X's leading dims).
  auto tdescs = [](const std::vector<std::vector<int64_t>>& dims, DataType t) {
    std::vector<nvinfer1::PluginTensorDesc> v;
    for (const auto& d : dims) v.push_back(tdesc(d, t));
    return v;
  };
  struct Run {
    std::vector<int64_t> x;
    DataType type;
    int64_t rows;
  };
  const Run runs[] = {{{3, 5, 96}, H, 15}, {{768}, F, 1}, {{2, 3, 4, 32}, F, 24}, {{7, 1}, H, 7}};
  for (const Run& r : runs) {
    std::vector<nvinfer1::PluginTensorDesc> rin = tdescs(layer_norm_dims(r.x), r.type);
    std::vector<nvinfer1::PluginTensorDesc> rout = {tdesc(r.x, r.type)};
    const bool ok = p->onShapeChange(rin.data(), 3, rout.data(), 1) == 0;
    const ssm_layer_norm_shape& s = p->kernel_shape();
    check(ok && s.rows == r.rows && s.channels == r.x.back() && s.epsilon == 1e-6f &&
              s.dtype == (r.type == H ? SSM_FLOAT16 : SSM_FLOAT32) && p->configured_inputs() == 3,
          "runtime.layernorm_kernel_shape_" + shape_str(r.x), last_error());
  }
  auto q = layer_norm_plugin("q", Fields(), nvinfer1::TensorRTPhase::kRUNTIME);
  std::vector<nvinfer1::PluginTensorDesc> qin = tdescs(layer_norm_dims({4, 32}), F);
  std::vector<nvinfer1::PluginTensorDesc> qout = {tdesc({4, 32})};
  check(q && q->onShapeChange(qin.data(), 3, qout.data(), 1) == 0 && q->kernel_shape().epsilon == 1e-5f,
        "runtime.layernorm_default_epsilon", last_error());

  std::vector<nvinfer1::PluginTensorDesc> rin = tdescs(layer_norm_dims({3, 5, 96}), H);
  std::vector<nvinfer1::PluginTensorDesc> rout = {tdesc({3, 5, 96}, H)};
  std::vector<nvinfer1::PluginTensorDesc> wrong_out = {tdesc({3, 5, 95}, H)};
  check(p->onShapeChange(rin.data(), 3, wrong_out.data(), 1) != 0, "runtime.layernorm_wrong_output");
  check_error("runtime.layernorm_wrong_output_message", {"output shape (3, 5, 95) != expected (3, 5, 96)"});
  auto unresolved = rin;
  unresolved[0] = tdesc({3, -1, 96}, H);
  check(p->onShapeChange(unresolved.data(), 3, rout.data(), 1) != 0, "runtime.layernorm_unresolved");
  check_error("runtime.layernorm_unresolved_message", {"input 'X' has unresolved shape (3, ?, 96) at run time"});
  auto bad_bias = rin;
  bad_bias[2] = tdesc({97}, H);
  check(p->onShapeChange(bad_bias.data(), 3, rout.data(), 1) != 0, "runtime.layernorm_bad_bias");
  check_error("runtime.layernorm_bad_bias_message",
              {"LayerNorm (layer 'ln'): bias must be (C,) = (96,) for X of shape (3, 5, 96), got (97,)"});
  std::vector<nvinfer1::PluginTensorDesc> no_c = tdescs({{3, 0}, {0}, {0}}, H);
  std::vector<nvinfer1::PluginTensorDesc> no_c_out = {tdesc({3, 0}, H)};
  check(p->onShapeChange(no_c.data(), 3, no_c_out.data(), 1) != 0, "runtime.layernorm_no_channels");
  check_error("runtime.layernorm_no_channels_message",
              {"LayerNorm (layer 'ln'): the last dimension C of X must be >= 1, got shape (3, 0)"});

  // enqueue: no rows needs no kernels; otherwise a missing kernel library is a clear error.
  const std::vector<int64_t> empties[] = {{0, 96}, {3, 0, 96}, {0, 5, 32}, {2, 3, 0, 768}};
  for (const auto& e : empties) {
    std::vector<nvinfer1::PluginTensorDesc> ein = tdescs(layer_norm_dims(e), H);
    std::vector<nvinfer1::PluginTensorDesc> eout = {tdesc(e, H)};
    check(p->onShapeChange(ein.data(), 3, eout.data(), 1) == 0 && p->kernel_shape().rows == 0 &&
              p->enqueue(ein.data(), eout.data(), nullptr, nullptr, nullptr, nullptr) == 0,
          "runtime.layernorm_empty_" + shape_str(e), last_error());
  }
  std::string why;
  if (cuda_kernels(&why) == nullptr) {
    check(p->onShapeChange(rin.data(), 3, rout.data(), 1) == 0, "runtime.layernorm_reshape");
    const void* ins[3] = {};
    void* outs[1] = {};
    clear_last_error();
    check(p->enqueue(rin.data(), rout.data(), ins, outs, nullptr, nullptr) != 0, "runtime.layernorm_no_kernels");
    check_error("runtime.layernorm_no_kernels_message", {"LayerNorm (layer 'ln'): cannot load the CUDA kernel library",
                                                         "libssmpose_kernels_cuda.so"});
  } else {
    std::printf("skip runtime.layernorm_no_kernels: libssmpose_kernels_cuda.so is loadable here\n");
  }
}

void test_layer_norm_serialization() {
  Fields f;
  f.f32("epsilon", 1e-6f).str("plugin_version", "1").str("plugin_namespace", "ssmpose");
  auto p = layer_norm_plugin("ln", f);
  if (!p) return check(false, "serialize.layernorm_plugin");
  const PluginFieldCollection* fc = p->getFieldsToSerialize();
  check(fc != nullptr && fc->nbFields == 1 && std::strcmp(fc->fields[0].name, "epsilon") == 0 &&
            fc->fields[0].type == PluginFieldType::kFLOAT32 && fc->fields[0].length == 1 &&
            *static_cast<const float*>(fc->fields[0].data) == 1e-6f,
        "serialize.layernorm_fields");
  check(fields_match_creator(fc, layer_norm_creator()), "serialize.layernorm_fields_match_creator");
  Fields copy = copy_fields(fc);
  auto c = as_plugin<LayerNormPlugin>(p->clone());
  auto attached = as_plugin<LayerNormPlugin>(p->attachToContext(nullptr));
  p.reset();  // the original is gone, as after serialisation
  auto q = layer_norm_plugin("ln", copy, nvinfer1::TensorRTPhase::kRUNTIME);
  check(q && q->attrs().epsilon == 1e-6f, "serialize.layernorm_round_trip");
  check(c && c->attrs().epsilon == 1e-6f && c->layer_name() == "ln" &&
            std::strcmp(c->getPluginName(), "LayerNorm") == 0,
        "serialize.layernorm_clone");
  check(attached && attached.get() != c.get() && attached->attrs().epsilon == 1e-6f, "serialize.layernorm_attach");
  if (q) {
    const int32_t n1 = q->getFieldsToSerialize()->nbFields;
    const PluginFieldCollection* two = q->getFieldsToSerialize();
    check(n1 == 1 && two->nbFields == 1 && *static_cast<const float*>(two->fields[0].data) == 1e-6f,
          "serialize.layernorm_repeatable");
  }
  // The default, and an epsilon given as float64, come back as the float32 field.
  auto d = layer_norm_plugin("d");
  Fields dcopy = copy_fields(d ? d->getFieldsToSerialize() : nullptr);
  auto e = layer_norm_plugin("d", dcopy, nvinfer1::TensorRTPhase::kRUNTIME);
  check(e && e->attrs().epsilon == 1e-5f, "serialize.layernorm_default_round_trip");
  Fields wide;
  wide.f64("epsilon", 0.25);
  auto w = layer_norm_plugin("w", wide);
  const PluginFieldCollection* wfc = w ? w->getFieldsToSerialize() : nullptr;
  check(wfc && wfc->nbFields == 1 && wfc->fields[0].type == PluginFieldType::kFLOAT32 &&
            *static_cast<const float*>(wfc->fields[0].data) == 0.25f,
        "serialize.layernorm_float64_as_float32");
}

// ------------------------------------------------------------------------------------------------
// AddLayerNorm (domain version 4): X (..., C), R (X's shape), weight (C), bias (C) -> Y and S of X's shape. Field
// epsilon (float), as LayerNorm's.

std::unique_ptr<AddLayerNormPlugin> add_layer_norm_plugin(
    const char* layer, Fields f = Fields(), nvinfer1::TensorRTPhase phase = nvinfer1::TensorRTPhase::kBUILD) {
  return as_plugin<AddLayerNormPlugin>(add_layer_norm_creator().createPlugin(layer, f.fc(), phase));
}

// The inputs of one AddLayerNorm node: X, R, weight, bias.
std::vector<std::vector<int64_t>> add_layer_norm_dims(std::vector<int64_t> x) {
  const int64_t c = x.empty() ? 1 : x.back();
  return {x, x, {c}, {c}};
}

void test_add_layer_norm_fields() {
  LayerNormAttrs a;
  std::string err;
  Fields none;
  check(AddLayerNormCreator::parse(none.fc(), &a, &err) && a.epsilon == 1e-5f, "addlayernorm.fields.default", err);
  Fields exported;  // as the exporter writes the node
  exported.f32("epsilon", 1e-6f).cstr("plugin_version", "1").cstr("plugin_namespace", "ssmpose");
  check(AddLayerNormCreator::parse(exported.fc(), &a, &err) && a.epsilon == 1e-6f, "addlayernorm.fields.float32",
        err);
  Fields wide;
  wide.f64("epsilon", 1e-3);
  check(AddLayerNormCreator::parse(wide.fc(), &a, &err) && a.epsilon == 1e-3f, "addlayernorm.fields.float64", err);
  Fields int64;
  int64.i64("epsilon", 2);
  check(AddLayerNormCreator::parse(int64.fc(), &a, &err) && a.epsilon == 2.0f, "addlayernorm.fields.int64", err);

  struct Bad {
    const char* name;
    Fields fields;
    const char* message;
  };
  std::vector<Bad> bad;
  bad.push_back({"zero", Fields().f32("epsilon", 0.0f), "AddLayerNorm: field epsilon must be finite and > 0, got 0"});
  bad.push_back({"negative", Fields().f32("epsilon", -0.5f),
                 "AddLayerNorm: field epsilon must be finite and > 0, got -0.5"});
  bad.push_back({"float64_underflow", Fields().f64("epsilon", 1e-60), "field epsilon must be finite and > 0, got 0"});
  bad.push_back({"nan", Fields().f32("epsilon", std::numeric_limits<float>::quiet_NaN()),
                 "AddLayerNorm: field 'epsilon' must be a finite float32 value"});
  bad.push_back({"string", Fields().str("epsilon", "1"),
                 "AddLayerNorm: field 'epsilon' must be a float, got char (string)"});
  bad.push_back({"length", Fields().i32s("epsilon", {1, 1}),
                 "AddLayerNorm: field 'epsilon' must hold one value, got 2 values"});
  for (Bad& b : bad) {
    err.clear();
    check(!AddLayerNormCreator::parse(b.fields.fc(), &a, &err) && contains(err, b.message),
          std::string("addlayernorm.fields.") + b.name, err);
  }

  Fields zero;
  zero.f32("epsilon", 0.0f).cstr("plugin_version", "1").cstr("plugin_namespace", "ssmpose");
  clear_last_error();
  nvinfer1::IPluginV3* p = add_layer_norm_creator().createPlugin("aln_1", zero.fc(), nvinfer1::TensorRTPhase::kBUILD);
  check(p == nullptr, "addlayernorm.create.refused");
  check_error("addlayernorm.create.message",
              {"AddLayerNorm (layer 'aln_1'): field epsilon must be finite and > 0, got 0"});
  delete p;
  clear_last_error();
  p = add_layer_norm_creator().createPlugin("", zero.fc(), nvinfer1::TensorRTPhase::kRUNTIME);
  check(p == nullptr && last_error().rfind("AddLayerNorm: field epsilon", 0) == 0, "addlayernorm.create.unnamed",
        last_error());
  delete p;
  auto ok = add_layer_norm_plugin("ok", exported);
  check(ok && ok->attrs().epsilon == 1e-6f && ok->layer_name() == "ok" &&
            std::strcmp(ok->getPluginName(), "AddLayerNorm") == 0,
        "addlayernorm.create.plugin");
}

void test_add_layer_norm_plugin() {
  auto p = add_layer_norm_plugin("aln");
  check(p != nullptr, "plugin.addlayernorm_created");
  if (!p) return;
  check_identity(p.get(), "AddLayerNorm", 2, "addlayernorm", "plugin.addlayernorm_two_outputs");

  // Formats: linear tensors, float32 or float16 picked by X; R, weight, bias, Y and S follow.
  const DataType F = DataType::kFLOAT, H = DataType::kHALF;
  auto io = [](DataType t, nvinfer1::TensorFormat fmt = nvinfer1::TensorFormat::kLINEAR) {
    std::vector<std::vector<int64_t>> dims = add_layer_norm_dims({2, 5, 96});
    dims.push_back({2, 5, 96});  // Y
    dims.push_back({2, 5, 96});  // S
    std::vector<nvinfer1::DynamicPluginTensorDesc> v;
    for (const auto& d : dims) v.push_back(desc(d, t, fmt));
    return v;
  };
  auto all_ok = [&](std::vector<nvinfer1::DynamicPluginTensorDesc> v) {
    for (int32_t pos = 0; pos < 6; ++pos) {
      if (!p->supportsFormatCombination(pos, v.data(), 4, 2)) return false;
    }
    return true;
  };
  check(all_ok(io(F)), "formats.addlayernorm_float32_all");
  check(all_ok(io(H)), "formats.addlayernorm_float16_all");
  check(!p->supportsFormatCombination(0, io(DataType::kBF16).data(), 4, 2), "formats.addlayernorm_bfloat16_refused");
  check(!p->supportsFormatCombination(0, io(F, nvinfer1::TensorFormat::kHWC8).data(), 4, 2),
        "formats.addlayernorm_non_linear_refused");
  auto mixed = io(F);
  mixed[1].desc.type = H;
  check(!p->supportsFormatCombination(1, mixed.data(), 4, 2), "formats.addlayernorm_mixed_R_refused");
  auto mixed_y = io(H);
  mixed_y[4].desc.type = F;
  check(!p->supportsFormatCombination(4, mixed_y.data(), 4, 2), "formats.addlayernorm_Y_type_follows_X");
  auto mixed_s = io(H);
  mixed_s[5].desc.type = F;
  check(!p->supportsFormatCombination(5, mixed_s.data(), 4, 2), "formats.addlayernorm_S_type_follows_X");
  auto s_fmt = io(F);
  s_fmt[5].desc.format = nvinfer1::TensorFormat::kCHW32;
  check(!p->supportsFormatCombination(5, s_fmt.data(), 4, 2), "formats.addlayernorm_S_non_linear_refused");
  check(!p->supportsFormatCombination(6, io(F).data(), 4, 2), "formats.addlayernorm_position_out_of_range");

  DataType out[2] = {DataType::kINT32, DataType::kINT32};
  DataType in_f[] = {F, F, F, F, F};
  check(p->getOutputDataTypes(out, 2, in_f, 4) == 0 && out[0] == F && out[1] == F, "types.addlayernorm_float32");
  DataType in_h[] = {H, H, H, H};
  check(p->getOutputDataTypes(out, 2, in_h, 4) == 0 && out[0] == H && out[1] == H, "types.addlayernorm_float16");
  DataType in_mixed[] = {F, H, F, F};
  clear_last_error();
  check(p->getOutputDataTypes(out, 2, in_mixed, 4) != 0, "types.addlayernorm_mixed_refused");
  check_error("types.addlayernorm_mixed_message", {"AddLayerNorm (layer 'aln'): input 'R' has element type float16, "
                                                   "but 'X' has float32; all inputs must share one type"});
  DataType in_int[] = {DataType::kINT32, DataType::kINT32, DataType::kINT32, DataType::kINT32};
  check(p->getOutputDataTypes(out, 2, in_int, 4) != 0, "types.addlayernorm_int32_refused");
  check_error("types.addlayernorm_int32_message", {"AddLayerNorm (layer 'aln'): X has element type int32; supported: "
                                                   "float32, float16"});
  check(p->getOutputDataTypes(out, 2, in_f, 3) != 0, "types.addlayernorm_three_inputs_refused");
  check_error("types.addlayernorm_count_message", {"AddLayerNorm (layer 'aln'): takes 4 inputs, got 3"});
  check(p->getOutputDataTypes(out, 1, in_f, 4) != 0, "types.addlayernorm_one_output_refused");
  check_error("types.addlayernorm_outputs_message", {"AddLayerNorm (layer 'aln'): has 2 outputs, got 1"});
}

void test_add_layer_norm_shapes() {
  auto p = add_layer_norm_plugin("aln");
  if (!p) return check(false, "addlayernorm.shapes.plugin");
  FakeBuilder b;
  nvinfer1::DimsExprs out[2];
  // Constant dims of ranks 1 to 5 (and empty rows): Y and S have X's shape.
  const std::vector<int64_t> good[] = {{96}, {7, 96}, {2, 5, 96}, {2, 3, 4, 32}, {1, 2, 3, 4, 768}, {0, 96},
                                       {2, 0, 32}, {1}};
  for (const auto& x : good) {
    std::vector<nvinfer1::DimsExprs> in = exprs(b, add_layer_norm_dims(x));
    out[0] = out[1] = nvinfer1::DimsExprs{};
    check(p->getOutputShapes(in.data(), 4, nullptr, 0, out, 2, b) == 0 && const_dims(out[0]) == x &&
              const_dims(out[1]) == x,
          "addlayernorm.shapes.constant_" + shape_str(x), last_error());
  }
  // Symbolic dims: both outputs are X's expressions (no operation built).
  const size_t ops = b.operations();
  std::vector<nvinfer1::DimsExprs> sym = exprs(b, {{-1, -1, 96}, {-1, -1, 96}, {96}, {96}}, {{"B", "L"}, {"B", "L"}});
  out[0] = out[1] = nvinfer1::DimsExprs{};
  check(p->getOutputShapes(sym.data(), 4, nullptr, 0, out, 2, b) == 0 && out[0].nbDims == 3 && out[1].nbDims == 3 &&
            out[0].d[0] == sym[0].d[0] && out[0].d[1] == sym[0].d[1] && out[1].d[0] == sym[0].d[0] &&
            out[1].d[1] == sym[0].d[1] && out[1].d[2] == sym[0].d[2] && b.operations() == ops,
        "addlayernorm.shapes.symbolic_is_X", last_error());
  // X's dims symbolic, R's constant: accepted, the outputs stay X's expressions.
  std::vector<nvinfer1::DimsExprs> from_r = exprs(b, {{-1, 5, -1}, {3, 5, 64}, {64}, {64}}, {{"B", "", "C"}});
  out[0] = out[1] = nvinfer1::DimsExprs{};
  check(p->getOutputShapes(from_r.data(), 4, nullptr, 0, out, 2, b) == 0 && out[0].d[0] == from_r[0].d[0] &&
            out[1].d[2] == from_r[0].d[2],
        "addlayernorm.shapes.symbolic_X_constant_R", last_error());

  struct Case {
    const char* name;
    std::vector<std::vector<int64_t>> dims;
    std::vector<std::vector<std::string>> names;
    const char* message;
  };
  const std::vector<std::string> c_only = {"C"};
  const Case bad[] = {
      {"scalar", {{}, {}, {96}, {96}}, {}, "X must have rank >= 1 (it is normalised over its last axis), got shape ()"},
      {"no_channels", {{4, 0}, {4, 0}, {0}, {0}}, {}, "the last dimension C of X must be >= 1, got shape (4, 0)"},
      {"R_channels", {{2, 5, 96}, {2, 5, 95}, {96}, {96}}, {},
       "R must have X's shape (2, 5, 96) (no broadcasting), got (2, 5, 95)"},
      {"R_broadcast", {{2, 5, 96}, {1, 5, 96}, {96}, {96}}, {},
       "R must have X's shape (2, 5, 96) (no broadcasting), got (1, 5, 96)"},
      {"R_lower_rank", {{2, 5, 96}, {5, 96}, {96}, {96}}, {},
       "R must have X's shape (2, 5, 96) (no broadcasting), got (5, 96)"},
      {"R_higher_rank", {{5, 96}, {1, 5, 96}, {96}, {96}}, {},
       "R must have X's shape (5, 96) (no broadcasting), got (1, 5, 96)"},
      {"R_scalar", {{96}, {}, {96}, {96}}, {}, "R must have X's shape (96,) (no broadcasting), got ()"},
      {"weight", {{2, 5, 96}, {2, 5, 96}, {32}, {96}}, {},
       "weight must be (C,) = (96,) for X of shape (2, 5, 96), got (32,)"},
      {"bias_rank", {{2, 5, 96}, {2, 5, 96}, {96}, {96, 1}}, {},
       "bias must be (C,) = (96,) for X of shape (2, 5, 96), got (96, 1)"},
      {"rows_overflow", {{int64_t(1) << 62, 4, 8}, {int64_t(1) << 62, 4, 8}, {8}, {8}}, {}, "X has too many elements"},
      // Partly known: each dimension from whichever input knows it.
      {"partial_R", {{-1, 4, 96}, {2, 5, 96}, {96}, {96}}, {{"B"}},
       "R must have X's shape (?, 4, 96) (no broadcasting), got (2, 5, 96)"},
      {"partial_R_zero", {{2, -1}, {2, 0}, {-1}, {-1}}, {{"", "C"}, {}, c_only, c_only},
       "the last dimension C of X must be >= 1, got shape (2, ?) with C = 0 from R"},
      {"partial_bias_from_R", {{2, -1}, {2, 64}, {64}, {32}}, {{"", "C"}},
       "bias must be (C,) = (64,) for X of shape (2, ?), got (32,)"},
      {"partial_weight_zero", {{2, -1}, {2, -1}, {0}, {-1}}, {{"", "C"}, {"", "C"}, {}, c_only},
       "the last dimension C of X must be >= 1, got shape (2, ?) with C = 0 from weight"},
      {"partial_rows_from_R", {{-1, 4, 8}, {int64_t(1) << 62, 4, 8}, {8}, {8}}, {{"B"}}, "X has too many elements"},
  };
  for (const Case& c : bad) {
    std::vector<nvinfer1::DimsExprs> v = exprs(b, c.dims, c.names);
    clear_last_error();
    out[0] = out[1] = nvinfer1::DimsExprs{};
    check(p->getOutputShapes(v.data(), 4, nullptr, 0, out, 2, b) != 0,
          std::string("addlayernorm.shapes.bad_") + c.name);
    check_error(std::string("addlayernorm.shapes.bad_") + c.name + "_message",
                {"AddLayerNorm (layer 'aln'): ", c.message});
  }
  std::vector<nvinfer1::DimsExprs> in = exprs(b, add_layer_norm_dims({2, 5, 96}));
  check(p->getOutputShapes(in.data(), 4, in.data(), 1, out, 2, b) != 0, "addlayernorm.shapes.shape_inputs_refused");
  check_error("addlayernorm.shapes.shape_inputs_message", {"AddLayerNorm (layer 'aln'): takes no shape inputs, got 1"});
  check(p->getOutputShapes(in.data(), 3, nullptr, 0, out, 2, b) != 0, "addlayernorm.shapes.three_inputs_refused");
  check_error("addlayernorm.shapes.three_inputs_message", {"takes 4 inputs, got 3"});
  check(p->getOutputShapes(in.data(), 4, nullptr, 0, out, 1, b) != 0, "addlayernorm.shapes.one_output_refused");
  check_error("addlayernorm.shapes.one_output_message", {"AddLayerNorm (layer 'aln'): has 2 outputs, got 1"});
}

void test_add_layer_norm_configure_and_runtime() {
  Fields f;
  f.f32("epsilon", 1e-6f);
  auto p = add_layer_norm_plugin("aln", f);
  if (!p) return check(false, "configure.addlayernorm_plugin");
  const DataType H = DataType::kHALF, F = DataType::kFLOAT;
  auto descs = [](const std::vector<std::vector<int64_t>>& dims, DataType t) {
    std::vector<nvinfer1::DynamicPluginTensorDesc> v;
    for (const auto& d : dims) v.push_back(desc(d, t));
    return v;
  };
  // Build time: the rows vary over the profile (-1).
  std::vector<nvinfer1::DynamicPluginTensorDesc> in = descs(add_layer_norm_dims({-1, -1, 96}), H);
  std::vector<nvinfer1::DynamicPluginTensorDesc> out = descs({{-1, -1, 96}, {-1, -1, 96}}, H);
  check(p->configurePlugin(in.data(), 4, out.data(), 2) == 0 && p->configured_inputs() == 4,
        "configure.addlayernorm_dynamic", last_error());
  auto bad = in;
  bad[1] = desc({-1, -1, 48}, H);
  check(p->configurePlugin(bad.data(), 4, out.data(), 2) != 0, "configure.addlayernorm_bad_R");
  check_error("configure.addlayernorm_bad_R_message",
              {"AddLayerNorm (layer 'aln'): R must have X's shape (?, ?, 96) (no broadcasting), got (?, ?, 48)"});
  bad = in;
  bad[3] = desc({95}, H);
  check(p->configurePlugin(bad.data(), 4, out.data(), 2) != 0, "configure.addlayernorm_bad_bias");
  check_error("configure.addlayernorm_bad_bias_message",
              {"bias must be (C,) = (96,) for X of shape (?, ?, 96), got (95,)"});
  auto mixed = in;
  mixed[2] = desc({96}, F);
  check(p->configurePlugin(mixed.data(), 4, out.data(), 2) != 0, "configure.addlayernorm_mixed_types");
  check_error("configure.addlayernorm_mixed_types_message", {"input 'weight' has element type float32"});
  auto out_s = out;
  out_s[1] = desc({-1, -1, 96}, F);
  check(p->configurePlugin(in.data(), 4, out_s.data(), 2) != 0, "configure.addlayernorm_S_type");
  check_error("configure.addlayernorm_S_type_message",
              {"AddLayerNorm (layer 'aln'): output 'S' has element type float32, expected float16"});
  auto out_y = out;
  out_y[0] = desc({-1, -1, 96}, F);
  check(p->configurePlugin(in.data(), 4, out_y.data(), 2) != 0, "configure.addlayernorm_Y_type");
  check_error("configure.addlayernorm_Y_type_message", {"output 'Y' has element type float32, expected float16"});
  check(p->configurePlugin(in.data(), 4, out.data(), 1) != 0, "configure.addlayernorm_one_output");
  check_error("configure.addlayernorm_one_output_message", {"has 2 outputs, got 1"});

  // Run time: concrete shapes -> the kernel's shape struct (rows = the product of X's leading dims).
  auto tdescs = [](const std::vector<std::vector<int64_t>>& dims, DataType t) {
    std::vector<nvinfer1::PluginTensorDesc> v;
    for (const auto& d : dims) v.push_back(tdesc(d, t));
    return v;
  };
  struct Run {
    std::vector<int64_t> x;
    DataType type;
    int64_t rows;
  };
  const Run runs[] = {{{3, 5, 96}, H, 15}, {{768}, F, 1}, {{2, 3, 4, 32}, F, 24}, {{7, 1}, H, 7}};
  for (const Run& r : runs) {
    std::vector<nvinfer1::PluginTensorDesc> rin = tdescs(add_layer_norm_dims(r.x), r.type);
    std::vector<nvinfer1::PluginTensorDesc> rout = tdescs({r.x, r.x}, r.type);
    const bool ok = p->onShapeChange(rin.data(), 4, rout.data(), 2) == 0;
    const ssm_layer_norm_shape& s = p->kernel_shape();
    check(ok && s.rows == r.rows && s.channels == r.x.back() && s.epsilon == 1e-6f &&
              s.dtype == (r.type == H ? SSM_FLOAT16 : SSM_FLOAT32) && p->configured_inputs() == 4,
          "runtime.addlayernorm_kernel_shape_" + shape_str(r.x), last_error());
  }
  auto q = add_layer_norm_plugin("q", Fields(), nvinfer1::TensorRTPhase::kRUNTIME);
  std::vector<nvinfer1::PluginTensorDesc> qin = tdescs(add_layer_norm_dims({4, 32}), F);
  std::vector<nvinfer1::PluginTensorDesc> qout = tdescs({{4, 32}, {4, 32}}, F);
  check(q && q->onShapeChange(qin.data(), 4, qout.data(), 2) == 0 && q->kernel_shape().epsilon == 1e-5f,
        "runtime.addlayernorm_default_epsilon", last_error());

  std::vector<nvinfer1::PluginTensorDesc> rin = tdescs(add_layer_norm_dims({3, 5, 96}), H);
  std::vector<nvinfer1::PluginTensorDesc> rout = tdescs({{3, 5, 96}, {3, 5, 96}}, H);
  auto wrong_s = rout;
  wrong_s[1] = tdesc({3, 5, 95}, H);
  check(p->onShapeChange(rin.data(), 4, wrong_s.data(), 2) != 0, "runtime.addlayernorm_wrong_S");
  check_error("runtime.addlayernorm_wrong_S_message", {"output 'S' shape (3, 5, 95) != expected (3, 5, 96)"});
  auto wrong_y = rout;
  wrong_y[0] = tdesc({15, 96}, H);
  check(p->onShapeChange(rin.data(), 4, wrong_y.data(), 2) != 0, "runtime.addlayernorm_wrong_Y");
  check_error("runtime.addlayernorm_wrong_Y_message", {"output 'Y' shape (15, 96) != expected (3, 5, 96)"});
  auto unresolved = rin;
  unresolved[1] = tdesc({3, -1, 96}, H);
  check(p->onShapeChange(unresolved.data(), 4, rout.data(), 2) != 0, "runtime.addlayernorm_unresolved");
  check_error("runtime.addlayernorm_unresolved_message", {"input 'R' has unresolved shape (3, ?, 96) at run time"});
  auto bad_r = rin;
  bad_r[1] = tdesc({3, 1, 96}, H);
  check(p->onShapeChange(bad_r.data(), 4, rout.data(), 2) != 0, "runtime.addlayernorm_bad_R");
  check_error("runtime.addlayernorm_bad_R_message",
              {"AddLayerNorm (layer 'aln'): R must have X's shape (3, 5, 96) (no broadcasting), got (3, 1, 96)"});

  // enqueue: no rows needs no kernels; otherwise a missing kernel library is a clear error.
  const std::vector<int64_t> empties[] = {{0, 96}, {3, 0, 96}, {2, 3, 0, 768}};
  for (const auto& e : empties) {
    std::vector<nvinfer1::PluginTensorDesc> ein = tdescs(add_layer_norm_dims(e), H);
    std::vector<nvinfer1::PluginTensorDesc> eout = tdescs({e, e}, H);
    check(p->onShapeChange(ein.data(), 4, eout.data(), 2) == 0 && p->kernel_shape().rows == 0 &&
              p->enqueue(ein.data(), eout.data(), nullptr, nullptr, nullptr, nullptr) == 0,
          "runtime.addlayernorm_empty_" + shape_str(e), last_error());
  }
  std::string why;
  if (cuda_kernels(&why) == nullptr) {
    check(p->onShapeChange(rin.data(), 4, rout.data(), 2) == 0, "runtime.addlayernorm_reshape");
    const void* ins[4] = {};
    void* outs[2] = {};
    clear_last_error();
    check(p->enqueue(rin.data(), rout.data(), ins, outs, nullptr, nullptr) != 0, "runtime.addlayernorm_no_kernels");
    check_error("runtime.addlayernorm_no_kernels_message",
                {"AddLayerNorm (layer 'aln'): cannot load the CUDA kernel library", "libssmpose_kernels_cuda.so"});
  } else {
    std::printf("skip runtime.addlayernorm_no_kernels: libssmpose_kernels_cuda.so is loadable here\n");
  }
}

void test_add_layer_norm_serialization() {
  Fields f;
  f.f32("epsilon", 1e-6f).cstr("plugin_version", "1").cstr("plugin_namespace", "ssmpose");
  auto p = add_layer_norm_plugin("aln", f);
  if (!p) return check(false, "serialize.addlayernorm_plugin");
  const PluginFieldCollection* fc = p->getFieldsToSerialize();
  check(fc != nullptr && fc->nbFields == 1 && std::strcmp(fc->fields[0].name, "epsilon") == 0 &&
            fc->fields[0].type == PluginFieldType::kFLOAT32 && fc->fields[0].length == 1 &&
            *static_cast<const float*>(fc->fields[0].data) == 1e-6f,
        "serialize.addlayernorm_fields");
  check(fields_match_creator(fc, add_layer_norm_creator()), "serialize.addlayernorm_fields_match_creator");
  Fields copy = copy_fields(fc);
  auto c = as_plugin<AddLayerNormPlugin>(p->clone());
  auto attached = as_plugin<AddLayerNormPlugin>(p->attachToContext(nullptr));
  p.reset();  // the original is gone, as after serialisation
  auto q = add_layer_norm_plugin("aln", copy, nvinfer1::TensorRTPhase::kRUNTIME);
  check(q && q->attrs().epsilon == 1e-6f && q->getNbOutputs() == 2, "serialize.addlayernorm_round_trip");
  check(c && c->attrs().epsilon == 1e-6f && c->layer_name() == "aln" && c->getNbOutputs() == 2 &&
            std::strcmp(c->getPluginName(), "AddLayerNorm") == 0,
        "serialize.addlayernorm_clone");
  check(attached && attached.get() != c.get() && attached->attrs().epsilon == 1e-6f,
        "serialize.addlayernorm_attach");
  if (q) {
    const int32_t n1 = q->getFieldsToSerialize()->nbFields;
    const PluginFieldCollection* two = q->getFieldsToSerialize();
    check(n1 == 1 && two->nbFields == 1 && *static_cast<const float*>(two->fields[0].data) == 1e-6f,
          "serialize.addlayernorm_repeatable");
  }
  auto d = add_layer_norm_plugin("d");
  Fields dcopy = copy_fields(d ? d->getFieldsToSerialize() : nullptr);
  auto e = add_layer_norm_plugin("d", dcopy, nvinfer1::TensorRTPhase::kRUNTIME);
  check(e && e->attrs().epsilon == 1e-5f, "serialize.addlayernorm_default_round_trip");
}

// ------------------------------------------------------------------------------------------------
// MultiKernelDepthwiseConv (domain version 4): X (B, H, W, C), weight (C, K, K), bias (C) -> Y (B, H, W, C). Fields
// kernel_sizes, group_channels (ints), shuffle_groups (int), activation (string).

// The fields of one node as TensorRT's ONNX parser passes them (INTS as int32 arrays, the string with its NUL).
Fields dwconv_fields(std::vector<int32_t> kernel_sizes = {3, 5, 7, 9}, std::vector<int32_t> group_channels = {8, 8, 8, 8},
                     int32_t shuffle_groups = 4, const char* activation = "gelu") {
  Fields f;
  f.i32s("kernel_sizes", kernel_sizes).i32s("group_channels", group_channels).i32("shuffle_groups", shuffle_groups);
  f.cstr("activation", activation).cstr("plugin_version", "1").cstr("plugin_namespace", "ssmpose");
  return f;
}

std::unique_ptr<DepthwiseConvPlugin> dwconv_plugin(const char* layer, Fields f = dwconv_fields(),
                                                   nvinfer1::TensorRTPhase phase = nvinfer1::TensorRTPhase::kBUILD) {
  return as_plugin<DepthwiseConvPlugin>(dwconv_creator().createPlugin(layer, f.fc(), phase));
}

// The inputs of one node: X (B, H, W, C), weight (C, K, K), bias (C).
std::vector<std::vector<int64_t>> dwconv_dims(int64_t B, int64_t H, int64_t W, int64_t C, int64_t K) {
  return {{B, H, W, C}, {C, K, K}, {C}};
}

// A serialised collection has the creator's field names, once each, with the declared types.
bool fields_named_like_creator(const PluginFieldCollection* fc, nvinfer1::IPluginCreatorV3One& creator) {
  const PluginFieldCollection* names = creator.getFieldNames();
  bool same = fc != nullptr && fc->nbFields == names->nbFields;
  for (int32_t i = 0; same && i < fc->nbFields; ++i) {
    int found = 0;
    for (int32_t j = 0; j < names->nbFields; ++j) {
      found += std::strcmp(fc->fields[i].name, names->fields[j].name) == 0 &&
               fc->fields[i].type == names->fields[j].type && fc->fields[i].length >= 1;
    }
    same = same && found == 1;
  }
  return same;
}

void test_dwconv_fields() {
  DepthwiseConvAttrs a;
  std::string err;
  Fields all = dwconv_fields();
  check(DepthwiseConvCreator::parse(all.fc(), &a, &err) && a.kernel_sizes == std::vector<int32_t>{3, 5, 7, 9} &&
            a.group_channels == std::vector<int32_t>{8, 8, 8, 8} && a.shuffle_groups == 4 &&
            a.activation == SSM_ACTIVATION_GELU && a.channels() == 32 && a.largest_kernel() == 9,
        "dwconv.fields.all", err);
  Fields required;  // shuffle_groups and activation absent: 1 and "none"
  required.i32s("kernel_sizes", {7, 3}).i32s("group_channels", {5, 11});
  check(DepthwiseConvCreator::parse(required.fc(), &a, &err) && a.kernel_sizes == std::vector<int32_t>{7, 3} &&
            a.group_channels == std::vector<int32_t>{5, 11} && a.shuffle_groups == 1 &&
            a.activation == SSM_ACTIVATION_NONE && a.channels() == 16 && a.largest_kernel() == 7,
        "dwconv.fields.defaults", err);
  Fields wide;
  wide.i64s("kernel_sizes", {1, 15}).i64s("group_channels", {3, 3}).i64("shuffle_groups", 6).cstr("activation", "none");
  check(DepthwiseConvCreator::parse(wide.fc(), &a, &err) && a.kernel_sizes == std::vector<int32_t>{1, 15} &&
            a.group_channels == std::vector<int32_t>{3, 3} && a.shuffle_groups == 6 &&
            a.activation == SSM_ACTIVATION_NONE,
        "dwconv.fields.int64", err);
  Fields narrow;
  narrow.i8s("kernel_sizes", {5}).i8s("group_channels", {12}).i8("shuffle_groups", 3);
  check(DepthwiseConvCreator::parse(narrow.fc(), &a, &err) && a.kernel_sizes == std::vector<int32_t>{5} &&
            a.group_channels == std::vector<int32_t>{12} && a.shuffle_groups == 3,
        "dwconv.fields.int8", err);
  Fields no_nul;  // a string whose length does not count a NUL
  no_nul.i32s("kernel_sizes", {3}).i32s("group_channels", {4}).str("activation", "gelu");
  check(DepthwiseConvCreator::parse(no_nul.fc(), &a, &err) && a.activation == SSM_ACTIVATION_GELU,
        "dwconv.fields.string_without_nul", err);
  std::vector<int32_t> sixteen_k(16, 3), sixteen_c(16, 2);
  Fields sixteen = dwconv_fields(sixteen_k, sixteen_c, 32, "none");
  check(DepthwiseConvCreator::parse(sixteen.fc(), &a, &err) && a.kernel_sizes.size() == 16 && a.channels() == 32 &&
            a.shuffle_groups == 32,
        "dwconv.fields.sixteen_groups", err);

  struct Bad {
    const char* name;
    Fields fields;
    const char* message;
  };
  const char* op = "MultiKernelDepthwiseConv: ";
  std::vector<Bad> bad;
  bad.push_back({"missing_kernel_sizes", Fields().i32s("group_channels", {8}),
                 "MultiKernelDepthwiseConv: missing required field 'kernel_sizes' (ints)"});
  bad.push_back({"missing_group_channels", Fields().i32s("kernel_sizes", {3}),
                 "MultiKernelDepthwiseConv: missing required field 'group_channels' (ints)"});
  bad.push_back({"kernel_sizes_float", Fields().f32("kernel_sizes", 3.0f).i32s("group_channels", {8}),
                 "field 'kernel_sizes' must hold integers, got float32"});
  bad.push_back({"group_channels_string", Fields().i32s("kernel_sizes", {3}).cstr("group_channels", "8"),
                 "field 'group_channels' must hold integers, got char (string)"});
  bad.push_back({"kernel_sizes_empty", Fields().i32s("kernel_sizes", {}).i32s("group_channels", {}),
                 "field 'kernel_sizes' must hold 1 to 16 values, got 0 values"});
  bad.push_back({"kernel_sizes_17", dwconv_fields(std::vector<int32_t>(17, 3), std::vector<int32_t>(17, 1), 1),
                 "field 'kernel_sizes' must hold 1 to 16 values, got 17 values"});
  bad.push_back({"group_channels_17", Fields().i32s("kernel_sizes", {3}).i32s("group_channels",
                                                                              std::vector<int32_t>(17, 1)),
                 "field 'group_channels' must hold 1 to 16 values, got 17 values"});
  bad.push_back({"lengths", dwconv_fields({3, 5, 7}, {8, 8, 8, 8}, 1),
                 "MultiKernelDepthwiseConv: fields kernel_sizes [3, 5, 7] and group_channels [8, 8, 8, 8] must have "
                 "the same length (one value per group)"});
  bad.push_back({"kernel_even", dwconv_fields({3, 4, 7, 9}),
                 "MultiKernelDepthwiseConv: field kernel_sizes must hold odd sizes in [1, 15], got [3, 4, 7, 9]"});
  bad.push_back({"kernel_17", dwconv_fields({3, 5, 7, 17}),
                 "field kernel_sizes must hold odd sizes in [1, 15], got [3, 5, 7, 17]"});
  bad.push_back({"kernel_zero", dwconv_fields({0, 5, 7, 9}),
                 "field kernel_sizes must hold odd sizes in [1, 15], got [0, 5, 7, 9]"});
  bad.push_back({"kernel_negative", dwconv_fields({3, -1, 7, 9}),
                 "field kernel_sizes must hold odd sizes in [1, 15], got [3, -1, 7, 9]"});
  bad.push_back({"group_zero", dwconv_fields({3, 5, 7, 9}, {8, 0, 8, 8}, 1),
                 "MultiKernelDepthwiseConv: field group_channels must hold channel counts in [1, 2^31 - 1], got "
                 "[8, 0, 8, 8]"});
  bad.push_back({"group_negative", dwconv_fields({3, 5}, {-8, 8}, 1),
                 "field group_channels must hold channel counts in [1, 2^31 - 1], got [-8, 8]"});
  bad.push_back({"group_int64_overflow",
                 Fields().i32s("kernel_sizes", {3, 5}).i64s("group_channels", {int64_t(1) << 31, 8}),
                 "field group_channels must hold channel counts in [1, 2^31 - 1], got [2147483648, 8]"});
  bad.push_back({"shuffle_zero", dwconv_fields({3, 5, 7, 9}, {8, 8, 8, 8}, 0),
                 "MultiKernelDepthwiseConv: field shuffle_groups must be in [1, 2147483647], got 0"});
  bad.push_back({"shuffle_3", dwconv_fields({3, 5, 7, 9}, {8, 8, 8, 8}, 3),
                 "MultiKernelDepthwiseConv: field shuffle_groups = 3 must divide the channel count C = 32 (the sum of "
                 "group_channels [8, 8, 8, 8])"});
  bad.push_back({"shuffle_64", dwconv_fields({3, 5, 7, 9}, {8, 8, 8, 8}, 64),
                 "field shuffle_groups = 64 must divide the channel count C = 32 (the sum of group_channels [8, 8, 8, "
                 "8])"});
  bad.push_back({"shuffle_array", Fields().i32s("kernel_sizes", {3}).i32s("group_channels", {8})
                                      .i32s("shuffle_groups", {2, 2}),
                 "field 'shuffle_groups' must hold one value, got 2 values"});
  bad.push_back({"shuffle_float", Fields().i32s("kernel_sizes", {3}).i32s("group_channels", {8})
                                      .f32("shuffle_groups", 2.0f),
                 "field 'shuffle_groups' must be an integer, got float32"});
  bad.push_back({"activation_relu", dwconv_fields({3, 5, 7, 9}, {8, 8, 8, 8}, 4, "relu"),
                 "MultiKernelDepthwiseConv: field activation must be \"none\" or \"gelu\", got \"relu\""});
  bad.push_back({"activation_case", dwconv_fields({3, 5, 7, 9}, {8, 8, 8, 8}, 4, "GELU"),
                 "field activation must be \"none\" or \"gelu\", got \"GELU\""});
  bad.push_back({"activation_empty", dwconv_fields({3, 5, 7, 9}, {8, 8, 8, 8}, 4, ""),
                 "field activation must be \"none\" or \"gelu\", got \"\""});
  bad.push_back({"activation_int", Fields().i32s("kernel_sizes", {3}).i32s("group_channels", {8})
                                       .i32("activation", 1),
                 "MultiKernelDepthwiseConv: field 'activation' must be a string (char), got int32"});
  for (Bad& b : bad) {
    err.clear();
    check(!DepthwiseConvCreator::parse(b.fields.fc(), &a, &err) && contains(err, b.message) &&
              err.rfind(op, 0) == 0,
          std::string("dwconv.fields.") + b.name, err);
  }

  Fields even = dwconv_fields({3, 4, 7, 9});
  clear_last_error();
  nvinfer1::IPluginV3* p = dwconv_creator().createPlugin("lpu_1", even.fc(), nvinfer1::TensorRTPhase::kBUILD);
  check(p == nullptr, "dwconv.create.refused");
  check_error("dwconv.create.message", {"MultiKernelDepthwiseConv (layer 'lpu_1'): field kernel_sizes must hold odd "
                                        "sizes in [1, 15], got [3, 4, 7, 9]"});
  delete p;
  clear_last_error();
  p = dwconv_creator().createPlugin("", Fields().fc(), nvinfer1::TensorRTPhase::kRUNTIME);
  check(p == nullptr && last_error() == "MultiKernelDepthwiseConv: missing required field 'kernel_sizes' (ints)",
        "dwconv.create.unnamed", last_error());
  delete p;
  auto ok = dwconv_plugin("ok");
  check(ok && ok->attrs().kernel_sizes == std::vector<int32_t>{3, 5, 7, 9} && ok->attrs().shuffle_groups == 4 &&
            ok->attrs().activation == SSM_ACTIVATION_GELU && ok->layer_name() == "ok",
        "dwconv.create.plugin");
}

void test_dwconv_plugin() {
  auto p = dwconv_plugin("lpu");
  check(p != nullptr, "plugin.dwconv_created");
  if (!p) return;
  check_identity(p.get(), "MultiKernelDepthwiseConv", 1, "dwconv", "plugin.dwconv_outputs");

  // Formats: linear tensors, float32 or float16 picked by X; weight, bias and Y follow.
  const DataType F = DataType::kFLOAT, H = DataType::kHALF;
  auto io = [](DataType t, nvinfer1::TensorFormat fmt = nvinfer1::TensorFormat::kLINEAR) {
    std::vector<std::vector<int64_t>> dims = dwconv_dims(2, 9, 7, 32, 9);
    dims.push_back({2, 9, 7, 32});  // Y
    std::vector<nvinfer1::DynamicPluginTensorDesc> v;
    for (const auto& d : dims) v.push_back(desc(d, t, fmt));
    return v;
  };
  auto all_ok = [&](std::vector<nvinfer1::DynamicPluginTensorDesc> v) {
    for (int32_t pos = 0; pos < 4; ++pos) {
      if (!p->supportsFormatCombination(pos, v.data(), 3, 1)) return false;
    }
    return true;
  };
  check(all_ok(io(F)), "formats.dwconv_float32_all");
  check(all_ok(io(H)), "formats.dwconv_float16_all");
  check(!p->supportsFormatCombination(0, io(DataType::kBF16).data(), 3, 1), "formats.dwconv_bfloat16_refused");
  check(!p->supportsFormatCombination(0, io(DataType::kINT8).data(), 3, 1), "formats.dwconv_int8_refused");
  check(!p->supportsFormatCombination(0, io(F, nvinfer1::TensorFormat::kHWC8).data(), 3, 1),
        "formats.dwconv_non_linear_refused");
  check(!p->supportsFormatCombination(0, io(H, nvinfer1::TensorFormat::kCHW16).data(), 3, 1),
        "formats.dwconv_chw16_refused");
  auto mixed = io(F);
  mixed[1].desc.type = H;
  check(!p->supportsFormatCombination(1, mixed.data(), 3, 1), "formats.dwconv_mixed_weight_refused");
  auto mixed_out = io(H);
  mixed_out[3].desc.type = F;
  check(!p->supportsFormatCombination(3, mixed_out.data(), 3, 1), "formats.dwconv_output_type_follows_X");
  check(!p->supportsFormatCombination(4, io(F).data(), 3, 1), "formats.dwconv_position_out_of_range");

  DataType out = DataType::kINT32;
  DataType in_f[] = {F, F, F, F};
  check(p->getOutputDataTypes(&out, 1, in_f, 3) == 0 && out == F, "types.dwconv_float32");
  DataType in_h[] = {H, H, H};
  check(p->getOutputDataTypes(&out, 1, in_h, 3) == 0 && out == H, "types.dwconv_float16");
  DataType in_mixed[] = {H, F, H};
  clear_last_error();
  check(p->getOutputDataTypes(&out, 1, in_mixed, 3) != 0, "types.dwconv_mixed_refused");
  check_error("types.dwconv_mixed_message", {"MultiKernelDepthwiseConv (layer 'lpu'): input 'weight' has element type "
                                             "float32, but 'X' has float16; all inputs must share one type"});
  DataType in_bf[] = {DataType::kBF16, DataType::kBF16, DataType::kBF16};
  check(p->getOutputDataTypes(&out, 1, in_bf, 3) != 0, "types.dwconv_bfloat16_refused");
  check_error("types.dwconv_bfloat16_message", {"MultiKernelDepthwiseConv (layer 'lpu'): X has element type "
                                                "bfloat16; supported: float32, float16"});
  check(p->getOutputDataTypes(&out, 1, in_f, 4) != 0, "types.dwconv_four_inputs_refused");
  check_error("types.dwconv_count_message", {"MultiKernelDepthwiseConv (layer 'lpu'): takes 3 inputs, got 4"});
  check(p->getOutputDataTypes(&out, 2, in_f, 3) != 0, "types.dwconv_two_outputs_refused");
  check_error("types.dwconv_outputs_message", {"has 1 output, got 2"});
}

void test_dwconv_shapes() {
  auto p = dwconv_plugin("lpu");  // C = 32 in four groups, kernel sizes up to 9
  if (!p) return check(false, "dwconv.shapes.plugin");
  FakeBuilder b;
  nvinfer1::DimsExprs out{};
  struct Good {
    std::vector<std::vector<int64_t>> dims;
  };
  // The last three are empty outputs (B, H or W = 0), as in the ONNX Runtime adapter.
  const Good good[] = {{dwconv_dims(2, 9, 7, 32, 9)}, {dwconv_dims(1, 64, 48, 32, 11)}, {dwconv_dims(3, 2, 5, 32, 15)},
                       {dwconv_dims(1, 1, 1, 32, 9)}, {dwconv_dims(0, 9, 7, 32, 9)},   {dwconv_dims(2, 0, 7, 32, 9)},
                       {dwconv_dims(2, 9, 0, 32, 9)}};
  for (const Good& g : good) {
    std::vector<nvinfer1::DimsExprs> in = exprs(b, g.dims);
    out = nvinfer1::DimsExprs{};
    check(p->getOutputShapes(in.data(), 3, nullptr, 0, &out, 1, b) == 0 && const_dims(out) == g.dims[0],
          "dwconv.shapes.constant_" + shape_str(g.dims[0]) + "_K" + std::to_string(g.dims[1][1]), last_error());
  }
  // Symbolic B, H, W (and C): the output is X's expressions, no operation built.
  const size_t ops = b.operations();
  std::vector<nvinfer1::DimsExprs> sym = exprs(b, dwconv_dims(-1, -1, -1, 32, 9), {{"B", "H", "W"}});
  out = nvinfer1::DimsExprs{};
  check(p->getOutputShapes(sym.data(), 3, nullptr, 0, &out, 1, b) == 0 && out.nbDims == 4 &&
            out.d[0] == sym[0].d[0] && out.d[1] == sym[0].d[1] && out.d[2] == sym[0].d[2] &&
            out.d[3] == sym[0].d[3] && b.operations() == ops,
        "dwconv.shapes.symbolic_is_X", last_error());
  std::vector<nvinfer1::DimsExprs> sym_c =
      exprs(b, {{-1, 9, 7, -1}, {-1, -1, -1}, {-1}}, {{"B", "", "", "C"}, {"C", "K", "K"}, {"C"}});
  out = nvinfer1::DimsExprs{};
  check(p->getOutputShapes(sym_c.data(), 3, nullptr, 0, &out, 1, b) == 0 && out.d[3] == sym_c[0].d[3],
        "dwconv.shapes.symbolic_channels", last_error());

  struct Case {
    const char* name;
    std::vector<std::vector<int64_t>> dims;
    std::vector<std::vector<std::string>> names;
    const char* message;
  };
  const Case bad[] = {
      {"x_rank", {{2, 9, 32}, {32, 9, 9}, {32}}, {}, "X must be (B, H, W, C) (channel-last), got shape (2, 9, 32)"},
      {"x_rank5", {{2, 9, 7, 1, 32}, {32, 9, 9}, {32}}, {},
       "X must be (B, H, W, C) (channel-last), got shape (2, 9, 7, 1, 32)"},
      {"channels", dwconv_dims(2, 9, 7, 30, 9), {},
       "X has C = 30 channels (shape (2, 9, 7, 30)), but group_channels [8, 8, 8, 8] sum to 32"},
      {"nchw", {{2, 32, 9, 7}, {32, 9, 9}, {32}}, {},
       "X has C = 7 channels (shape (2, 32, 9, 7)), but group_channels [8, 8, 8, 8] sum to 32"},
      {"weight_channels", {{2, 9, 7, 32}, {16, 9, 9}, {32}}, {},
       "weight must be (C, K, K) = (32, K, K) with K odd in [1, 15], got (16, 9, 9)"},
      {"weight_not_square", {{2, 9, 7, 32}, {32, 9, 7}, {32}}, {},
       "weight must be (C, K, K) = (32, K, K) with K odd in [1, 15], got (32, 9, 7)"},
      {"weight_rank", {{2, 9, 7, 32}, {32, 81}, {32}}, {},
       "weight must be (C, K, K) = (32, K, K) with K odd in [1, 15], got (32, 81)"},
      {"weight_nchw", {{2, 9, 7, 32}, {32, 1, 9, 9}, {32}}, {},
       "weight must be (C, K, K) = (32, K, K) with K odd in [1, 15], got (32, 1, 9, 9)"},
      {"weight_even", dwconv_dims(2, 9, 7, 32, 10), {},
       "weight must be (C, K, K) = (32, K, K) with K odd in [1, 15], got (32, 10, 10)"},
      {"weight_17", dwconv_dims(2, 9, 7, 32, 17), {},
       "weight must be (C, K, K) = (32, K, K) with K odd in [1, 15], got (32, 17, 17)"},
      {"weight_zero", dwconv_dims(2, 9, 7, 32, 0), {},
       "weight must be (C, K, K) = (32, K, K) with K odd in [1, 15], got (32, 0, 0)"},
      {"weight_small", dwconv_dims(2, 9, 7, 32, 7), {},
       "weight has K = 7 (shape (32, 7, 7)), smaller than the largest of kernel_sizes [3, 5, 7, 9]"},
      {"bias", {{2, 9, 7, 32}, {32, 9, 9}, {31}}, {}, "bias must be (C,) = (32,), got (31,)"},
      {"bias_rank", {{2, 9, 7, 32}, {32, 9, 9}, {32, 1}}, {}, "bias must be (C,) = (32,), got (32, 1)"},
      {"too_many", dwconv_dims(int64_t(1) << 40, int64_t(1) << 20, int64_t(1) << 10, 32, 9), {},
       "X has too many elements"},
      // Partly known: whatever is known is checked.
      {"partial_K", {{2, 9, 7, 32}, {32, -1, 8}, {32}}, {{}, {"", "K"}},
       "weight must be (C, K, K) = (32, K, K) with K odd in [1, 15], got (32, ?, 8)"},
      {"partial_K_small", {{2, 9, 7, 32}, {-1, 5, -1}, {32}}, {{}, {"C", "", "K"}},
       "weight has K = 5 (shape (?, 5, ?)), smaller than the largest of kernel_sizes [3, 5, 7, 9]"},
      {"partial_weight_channels", {{-1, -1, -1, -1}, {16, -1, -1}, {-1}},
       {{"B", "H", "W", "C"}, {"", "K", "K"}, {"C"}},
       "weight must be (C, K, K) = (32, K, K) with K odd in [1, 15], got (16, ?, ?)"},
      {"partial_bias", {{-1, -1, -1, -1}, {-1, 9, 9}, {33}}, {{"B", "H", "W", "C"}, {"C"}},
       "bias must be (C,) = (32,), got (33,)"},
      {"partial_channels", {{-1, -1, -1, 16}, {-1, -1, -1}, {-1}}, {{"B", "H", "W"}, {"C", "K", "K"}, {"C"}},
       "X has C = 16 channels (shape (?, ?, ?, 16)), but group_channels [8, 8, 8, 8] sum to 32"},
  };
  for (const Case& c : bad) {
    std::vector<nvinfer1::DimsExprs> v = exprs(b, c.dims, c.names);
    clear_last_error();
    out = nvinfer1::DimsExprs{};
    check(p->getOutputShapes(v.data(), 3, nullptr, 0, &out, 1, b) != 0, std::string("dwconv.shapes.bad_") + c.name);
    check_error(std::string("dwconv.shapes.bad_") + c.name + "_message",
                {"MultiKernelDepthwiseConv (layer 'lpu'): ", c.message});
  }
  std::vector<nvinfer1::DimsExprs> in = exprs(b, dwconv_dims(2, 9, 7, 32, 9));
  check(p->getOutputShapes(in.data(), 3, in.data(), 1, &out, 1, b) != 0, "dwconv.shapes.shape_inputs_refused");
  check_error("dwconv.shapes.shape_inputs_message",
              {"MultiKernelDepthwiseConv (layer 'lpu'): takes no shape inputs, got 1"});
  check(p->getOutputShapes(in.data(), 2, nullptr, 0, &out, 1, b) != 0, "dwconv.shapes.two_inputs_refused");
  check_error("dwconv.shapes.two_inputs_message", {"takes 3 inputs, got 2"});
}

void test_dwconv_configure_and_runtime() {
  auto p = dwconv_plugin("lpu");
  if (!p) return check(false, "configure.dwconv_plugin");
  const DataType H = DataType::kHALF, F = DataType::kFLOAT;
  auto descs = [](const std::vector<std::vector<int64_t>>& dims, DataType t) {
    std::vector<nvinfer1::DynamicPluginTensorDesc> v;
    for (const auto& d : dims) v.push_back(desc(d, t));
    return v;
  };
  // Build time: B, H, W vary over the profile (-1).
  std::vector<nvinfer1::DynamicPluginTensorDesc> in = descs(dwconv_dims(-1, -1, -1, 32, 9), H);
  std::vector<nvinfer1::DynamicPluginTensorDesc> out = {desc({-1, -1, -1, 32}, H)};
  check(p->configurePlugin(in.data(), 3, out.data(), 1) == 0 && p->configured_inputs() == 3,
        "configure.dwconv_dynamic", last_error());
  auto bad = in;
  bad[1] = desc({32, 7, 7}, H);
  check(p->configurePlugin(bad.data(), 3, out.data(), 1) != 0, "configure.dwconv_small_kernel");
  check_error("configure.dwconv_small_kernel_message",
              {"MultiKernelDepthwiseConv (layer 'lpu'): weight has K = 7 (shape (32, 7, 7)), smaller than the largest "
               "of kernel_sizes [3, 5, 7, 9]"});
  bad = in;
  bad[0] = desc({-1, -1, -1, 64}, H);
  check(p->configurePlugin(bad.data(), 3, out.data(), 1) != 0, "configure.dwconv_channels");
  check_error("configure.dwconv_channels_message",
              {"X has C = 64 channels (shape (?, ?, ?, 64)), but group_channels [8, 8, 8, 8] sum to 32"});
  auto mixed = in;
  mixed[2] = desc({32}, F);
  check(p->configurePlugin(mixed.data(), 3, out.data(), 1) != 0, "configure.dwconv_mixed_types");
  check_error("configure.dwconv_mixed_types_message", {"input 'bias' has element type float32"});
  std::vector<nvinfer1::DynamicPluginTensorDesc> out_f = {desc({-1, -1, -1, 32}, F)};
  check(p->configurePlugin(in.data(), 3, out_f.data(), 1) != 0, "configure.dwconv_output_type");
  check_error("configure.dwconv_output_type_message", {"output has element type float32, expected float16"});

  // Run time: concrete shapes -> the kernel's shape struct.
  auto tdescs = [](const std::vector<std::vector<int64_t>>& dims, DataType t) {
    std::vector<nvinfer1::PluginTensorDesc> v;
    for (const auto& d : dims) v.push_back(tdesc(d, t));
    return v;
  };
  std::vector<nvinfer1::PluginTensorDesc> rin = tdescs(dwconv_dims(2, 9, 7, 32, 11), H);
  std::vector<nvinfer1::PluginTensorDesc> rout = {tdesc({2, 9, 7, 32}, H)};
  bool ok = p->onShapeChange(rin.data(), 3, rout.data(), 1) == 0;
  const ssm_dwconv_shape& s = p->kernel_shape();
  bool groups_ok = s.num_groups == 4;
  for (int g = 0; groups_ok && g < 4; ++g) {
    groups_ok = s.group_channels[g] == 8 && s.kernel_sizes[g] == 3 + 2 * g;
  }
  check(ok && s.batch == 2 && s.height == 9 && s.width == 7 && s.channels == 32 && s.kernel_max == 11 && groups_ok &&
            s.shuffle_groups == 4 && s.activation == SSM_ACTIVATION_GELU && s.dtype == SSM_FLOAT16 &&
            p->configured_inputs() == 3,
        "runtime.dwconv_kernel_shape", last_error());
  Fields plain;
  plain.i32s("kernel_sizes", {1, 15, 7}).i32s("group_channels", {1, 2, 13});
  auto q = dwconv_plugin("q", plain, nvinfer1::TensorRTPhase::kRUNTIME);
  std::vector<nvinfer1::PluginTensorDesc> qin = tdescs(dwconv_dims(1, 3, 20, 16, 15), F);
  std::vector<nvinfer1::PluginTensorDesc> qout = {tdesc({1, 3, 20, 16})};
  ok = q && q->onShapeChange(qin.data(), 3, qout.data(), 1) == 0;
  const ssm_dwconv_shape* t = q ? &q->kernel_shape() : nullptr;
  check(ok && t->batch == 1 && t->height == 3 && t->width == 20 && t->channels == 16 && t->kernel_max == 15 &&
            t->num_groups == 3 && t->group_channels[0] == 1 && t->group_channels[2] == 13 &&
            t->kernel_sizes[1] == 15 && t->kernel_sizes[2] == 7 && t->shuffle_groups == 1 &&
            t->activation == SSM_ACTIVATION_NONE && t->dtype == SSM_FLOAT32,
        "runtime.dwconv_kernel_shape_float32", last_error());

  std::vector<nvinfer1::PluginTensorDesc> wrong_out = {tdesc({2, 9, 7, 16}, H)};
  check(p->onShapeChange(rin.data(), 3, wrong_out.data(), 1) != 0, "runtime.dwconv_wrong_output");
  check_error("runtime.dwconv_wrong_output_message", {"output shape (2, 9, 7, 16) != expected (2, 9, 7, 32)"});
  auto unresolved = rin;
  unresolved[0] = tdesc({2, -1, 7, 32}, H);
  check(p->onShapeChange(unresolved.data(), 3, rout.data(), 1) != 0, "runtime.dwconv_unresolved");
  check_error("runtime.dwconv_unresolved_message", {"input 'X' has unresolved shape (2, ?, 7, 32) at run time"});
  auto bad_w = rin;
  bad_w[1] = tdesc({32, 13, 11}, H);
  check(p->onShapeChange(bad_w.data(), 3, rout.data(), 1) != 0, "runtime.dwconv_bad_weight");
  check_error("runtime.dwconv_bad_weight_message",
              {"MultiKernelDepthwiseConv (layer 'lpu'): weight must be (C, K, K) = (32, K, K) with K odd in [1, 15], "
               "got (32, 13, 11)"});

  // enqueue: an empty output (B, H or W is 0) needs no kernels (which refuse H or W = 0); otherwise a missing
  // kernel library is a clear error.
  const std::vector<int64_t> empties[] = {{0, 9, 7}, {2, 0, 7}, {2, 9, 0}, {0, 0, 0}};
  for (const auto& e : empties) {
    std::vector<nvinfer1::PluginTensorDesc> ein = tdescs(dwconv_dims(e[0], e[1], e[2], 32, 9), H);
    std::vector<nvinfer1::PluginTensorDesc> eout = {tdesc({e[0], e[1], e[2], 32}, H)};
    check(p->onShapeChange(ein.data(), 3, eout.data(), 1) == 0 &&
              p->enqueue(ein.data(), eout.data(), nullptr, nullptr, nullptr, nullptr) == 0,
          "runtime.dwconv_empty_" + shape_str({e[0], e[1], e[2], 32}), last_error());
  }
  std::string why;
  if (cuda_kernels(&why) == nullptr) {
    check(p->onShapeChange(rin.data(), 3, rout.data(), 1) == 0, "runtime.dwconv_reshape");
    const void* ins[3] = {};
    void* outs[1] = {};
    clear_last_error();
    check(p->enqueue(rin.data(), rout.data(), ins, outs, nullptr, nullptr) != 0, "runtime.dwconv_no_kernels");
    check_error("runtime.dwconv_no_kernels_message",
                {"MultiKernelDepthwiseConv (layer 'lpu'): cannot load the CUDA kernel library",
                 "libssmpose_kernels_cuda.so"});
  } else {
    std::printf("skip runtime.dwconv_no_kernels: libssmpose_kernels_cuda.so is loadable here\n");
  }
}

void test_dwconv_serialization() {
  auto p = dwconv_plugin("lpu", dwconv_fields({3, 5, 7, 9}, {8, 8, 8, 8}, 4, "gelu"));
  if (!p) return check(false, "serialize.dwconv_plugin");
  const PluginFieldCollection* fc = p->getFieldsToSerialize();
  auto ints = [](const PluginField& f) {
    std::vector<int32_t> v(static_cast<size_t>(f.length));
    std::memcpy(v.data(), f.data, v.size() * sizeof(int32_t));
    return v;
  };
  const bool shape_ok = fc != nullptr && fc->nbFields == 4;
  check(shape_ok && std::strcmp(fc->fields[0].name, "kernel_sizes") == 0 &&
            fc->fields[0].type == PluginFieldType::kINT32 && ints(fc->fields[0]) == std::vector<int32_t>{3, 5, 7, 9} &&
            std::strcmp(fc->fields[1].name, "group_channels") == 0 && fc->fields[1].type == PluginFieldType::kINT32 &&
            ints(fc->fields[1]) == std::vector<int32_t>{8, 8, 8, 8} &&
            std::strcmp(fc->fields[2].name, "shuffle_groups") == 0 && fc->fields[2].length == 1 &&
            ints(fc->fields[2]) == std::vector<int32_t>{4} && std::strcmp(fc->fields[3].name, "activation") == 0 &&
            fc->fields[3].type == PluginFieldType::kCHAR && fc->fields[3].length == 5 &&
            std::memcmp(fc->fields[3].data, "gelu", 5) == 0,
        "serialize.dwconv_fields");
  check(fields_named_like_creator(fc, dwconv_creator()), "serialize.dwconv_fields_match_creator");
  Fields copy = copy_fields(fc);
  auto c = as_plugin<DepthwiseConvPlugin>(p->clone());
  auto attached = as_plugin<DepthwiseConvPlugin>(p->attachToContext(nullptr));
  p.reset();  // the original is gone, as after serialisation
  auto q = dwconv_plugin("lpu", copy, nvinfer1::TensorRTPhase::kRUNTIME);
  auto same = [](const DepthwiseConvPlugin* x) {
    return x != nullptr && x->attrs().kernel_sizes == std::vector<int32_t>{3, 5, 7, 9} &&
           x->attrs().group_channels == std::vector<int32_t>{8, 8, 8, 8} && x->attrs().shuffle_groups == 4 &&
           x->attrs().activation == SSM_ACTIVATION_GELU;
  };
  check(same(q.get()), "serialize.dwconv_round_trip");
  check(same(c.get()) && c->layer_name() == "lpu" && std::strcmp(c->getPluginName(), "MultiKernelDepthwiseConv") == 0,
        "serialize.dwconv_clone");
  check(same(attached.get()) && attached.get() != c.get(), "serialize.dwconv_attach");
  if (q) {
    const int32_t n1 = q->getFieldsToSerialize()->nbFields;
    const PluginFieldCollection* two = q->getFieldsToSerialize();
    check(n1 == 4 && two->nbFields == 4 && ints(two->fields[1]) == std::vector<int32_t>{8, 8, 8, 8} &&
              std::memcmp(two->fields[3].data, "gelu", 5) == 0,
          "serialize.dwconv_repeatable");
  }
  // The defaults (no shuffle, no activation), sixteen groups, and int64 arrays come back as the int32 fields.
  Fields plain;
  plain.i32s("kernel_sizes", {1}).i32s("group_channels", {3});
  auto d = dwconv_plugin("d", plain);
  Fields dcopy = copy_fields(d ? d->getFieldsToSerialize() : nullptr);
  auto e = dwconv_plugin("d", dcopy, nvinfer1::TensorRTPhase::kRUNTIME);
  check(e && e->attrs().kernel_sizes == std::vector<int32_t>{1} && e->attrs().shuffle_groups == 1 &&
            e->attrs().activation == SSM_ACTIVATION_NONE,
        "serialize.dwconv_default_round_trip");
  std::vector<int32_t> ks(16), gc(16);
  for (int i = 0; i < 16; ++i) {
    ks[i] = 1 + 2 * (i % 8);
    gc[i] = i + 1;
  }
  auto m = dwconv_plugin("m", dwconv_fields(ks, gc, 8, "none"));  // 136 channels
  Fields mcopy = copy_fields(m ? m->getFieldsToSerialize() : nullptr);
  auto n = dwconv_plugin("m", mcopy, nvinfer1::TensorRTPhase::kRUNTIME);
  check(n && n->attrs().kernel_sizes == ks && n->attrs().group_channels == gc && n->attrs().shuffle_groups == 8,
        "serialize.dwconv_sixteen_groups_round_trip");
  Fields wide;
  wide.i64s("kernel_sizes", {5, 3}).i64s("group_channels", {4, 4}).i64("shuffle_groups", 2);
  auto w = dwconv_plugin("w", wide);
  const PluginFieldCollection* wfc = w ? w->getFieldsToSerialize() : nullptr;
  check(wfc && wfc->nbFields == 4 && wfc->fields[0].type == PluginFieldType::kINT32 && wfc->fields[0].length == 2 &&
            ints(wfc->fields[0]) == std::vector<int32_t>{5, 3} && wfc->fields[2].type == PluginFieldType::kINT32 &&
            std::memcmp(wfc->fields[3].data, "none", 5) == 0,
        "serialize.dwconv_int64_as_int32");
}

// ------------------------------------------------------------------------------------------------
// VSSBlockTail (domain version 7): Y (..., D), R (..., C), out_norm_weight (D), out_norm_bias (D), out_proj (D, C),
// norm_weight (C), norm_bias (C), fc1_weight (C, H), fc1_bias (H), fc2_weight (H, C), fc2_bias (C) -> Z of R's
// shape. Field epsilon (float), as LayerNorm's.

std::unique_ptr<VSSBlockTailPlugin> vss_tail_plugin(const char* layer, Fields f = Fields(),
                                                    nvinfer1::TensorRTPhase phase = nvinfer1::TensorRTPhase::kBUILD) {
  return as_plugin<VSSBlockTailPlugin>(vss_tail_creator().createPlugin(layer, f.fc(), phase));
}

// The eleven inputs of one VSSBlockTail node whose Y and R have the leading dims `lead`.
std::vector<std::vector<int64_t>> vss_tail_dims(std::vector<int64_t> lead, int64_t D, int64_t C, int64_t H) {
  std::vector<int64_t> y = lead, r = lead;
  y.push_back(D);
  r.push_back(C);
  return {y, r, {D}, {D}, {D, C}, {C}, {C}, {C, H}, {H}, {H, C}, {C}};
}

std::vector<int64_t> with_last(std::vector<int64_t> lead, int64_t last) {
  lead.push_back(last);
  return lead;
}

void test_vss_tail_fields() {
  LayerNormAttrs a;
  std::string err;
  Fields none;
  check(VSSBlockTailCreator::parse(none.fc(), &a, &err) && a.epsilon == 1e-5f, "vsstail.fields.default", err);
  Fields exported;  // as the exporter writes the node
  exported.f32("epsilon", 1e-6f).cstr("plugin_version", "1").cstr("plugin_namespace", "ssmpose");
  check(VSSBlockTailCreator::parse(exported.fc(), &a, &err) && a.epsilon == 1e-6f, "vsstail.fields.float32", err);
  Fields wide;
  wide.f64("epsilon", 1e-3);
  check(VSSBlockTailCreator::parse(wide.fc(), &a, &err) && a.epsilon == 1e-3f, "vsstail.fields.float64", err);
  Fields int64;
  int64.i64("epsilon", 2);
  check(VSSBlockTailCreator::parse(int64.fc(), &a, &err) && a.epsilon == 2.0f, "vsstail.fields.int64", err);
  Fields tiny;
  tiny.f32("epsilon", 1e-40f);  // a float32 denormal is > 0
  check(VSSBlockTailCreator::parse(tiny.fc(), &a, &err) && a.epsilon > 0.0f, "vsstail.fields.denormal", err);

  struct Bad {
    const char* name;
    Fields fields;
    const char* message;
  };
  std::vector<Bad> bad;
  bad.push_back({"zero", Fields().f32("epsilon", 0.0f), "VSSBlockTail: field epsilon must be finite and > 0, got 0"});
  bad.push_back({"negative", Fields().f32("epsilon", -0.5f),
                 "VSSBlockTail: field epsilon must be finite and > 0, got -0.5"});
  bad.push_back({"float64_underflow", Fields().f64("epsilon", 1e-60),
                 "VSSBlockTail: field epsilon must be finite and > 0, got 0"});
  bad.push_back({"nan", Fields().f32("epsilon", std::numeric_limits<float>::quiet_NaN()),
                 "VSSBlockTail: field 'epsilon' must be a finite float32 value"});
  bad.push_back({"infinite", Fields().f32("epsilon", std::numeric_limits<float>::infinity()),
                 "VSSBlockTail: field 'epsilon' must be a finite float32 value"});
  bad.push_back({"float64_beyond_float32", Fields().f64("epsilon", 1e300),
                 "VSSBlockTail: field 'epsilon' must be a finite float32 value"});
  bad.push_back({"string", Fields().str("epsilon", "1"),
                 "VSSBlockTail: field 'epsilon' must be a float, got char (string)"});
  bad.push_back({"length", Fields().i32s("epsilon", {1, 1}),
                 "VSSBlockTail: field 'epsilon' must hold one value, got 2 values"});
  for (Bad& b : bad) {
    err.clear();
    check(!VSSBlockTailCreator::parse(b.fields.fc(), &a, &err) && contains(err, b.message),
          std::string("vsstail.fields.") + b.name, err);
  }

  Fields zero;
  zero.f32("epsilon", 0.0f).cstr("plugin_version", "1").cstr("plugin_namespace", "ssmpose");
  clear_last_error();
  nvinfer1::IPluginV3* p = vss_tail_creator().createPlugin("vss_4", zero.fc(), nvinfer1::TensorRTPhase::kBUILD);
  check(p == nullptr, "vsstail.create.refused");
  check_error("vsstail.create.message", {"VSSBlockTail (layer 'vss_4'): field epsilon must be finite and > 0, got 0"});
  delete p;
  clear_last_error();
  p = vss_tail_creator().createPlugin("", zero.fc(), nvinfer1::TensorRTPhase::kRUNTIME);
  check(p == nullptr && last_error().rfind("VSSBlockTail: field epsilon", 0) == 0, "vsstail.create.unnamed",
        last_error());
  delete p;
  auto ok = vss_tail_plugin("ok", exported);
  check(ok && ok->attrs().epsilon == 1e-6f && ok->layer_name() == "ok" &&
            std::strcmp(ok->getPluginName(), "VSSBlockTail") == 0 && std::strcmp(ok->getPluginVersion(), "1") == 0 &&
            std::strcmp(ok->getPluginNamespace(), "ssmpose") == 0,
        "vsstail.create.plugin");
  auto runtime = vss_tail_plugin("rt", exported, nvinfer1::TensorRTPhase::kRUNTIME);
  check(runtime && runtime->attrs().epsilon == 1e-6f, "vsstail.create.runtime_phase");
}

void test_vss_tail_plugin() {
  auto p = vss_tail_plugin("vt");
  check(p != nullptr, "plugin.vsstail_created");
  if (!p) return;
  check_identity(p.get(), "VSSBlockTail", 1, "vsstail", "plugin.vsstail_one_output_no_workspace");

  // Formats: linear tensors, float32 or float16 picked by Y; the ten other inputs and Z follow.
  const DataType F = DataType::kFLOAT, H = DataType::kHALF;
  auto io = [](DataType t, nvinfer1::TensorFormat fmt = nvinfer1::TensorFormat::kLINEAR) {
    std::vector<std::vector<int64_t>> dims = vss_tail_dims({2, 5}, 96, 48, 192);
    dims.push_back({2, 5, 48});  // Z
    std::vector<nvinfer1::DynamicPluginTensorDesc> v;
    for (const auto& d : dims) v.push_back(desc(d, t, fmt));
    return v;
  };
  auto all_ok = [&](std::vector<nvinfer1::DynamicPluginTensorDesc> v) {
    for (int32_t pos = 0; pos < 12; ++pos) {
      if (!p->supportsFormatCombination(pos, v.data(), 11, 1)) return false;
    }
    return true;
  };
  check(all_ok(io(F)), "formats.vsstail_float32_all");
  check(all_ok(io(H)), "formats.vsstail_float16_all");
  check(!p->supportsFormatCombination(0, io(DataType::kBF16).data(), 11, 1), "formats.vsstail_bfloat16_refused");
  check(!p->supportsFormatCombination(0, io(DataType::kINT8).data(), 11, 1), "formats.vsstail_int8_refused");
  check(!p->supportsFormatCombination(0, io(F, nvinfer1::TensorFormat::kHWC8).data(), 11, 1),
        "formats.vsstail_non_linear_refused");
  const std::pair<int32_t, const char*> mixed_inputs[] = {{1, "R"}, {4, "out_proj"}, {7, "fc1_weight"},
                                                          {10, "fc2_bias"}};
  for (const auto& m : mixed_inputs) {
    auto mixed = io(F);
    mixed[m.first].desc.type = H;
    check(!p->supportsFormatCombination(m.first, mixed.data(), 11, 1),
          std::string("formats.vsstail_mixed_") + m.second + "_refused");
  }
  auto mixed_z = io(H);
  mixed_z[11].desc.type = F;
  check(!p->supportsFormatCombination(11, mixed_z.data(), 11, 1), "formats.vsstail_Z_type_follows_Y");
  auto z_fmt = io(F);
  z_fmt[11].desc.format = nvinfer1::TensorFormat::kCHW32;
  check(!p->supportsFormatCombination(11, z_fmt.data(), 11, 1), "formats.vsstail_Z_non_linear_refused");
  check(!p->supportsFormatCombination(12, io(F).data(), 11, 1), "formats.vsstail_position_out_of_range");

  DataType out[2] = {DataType::kINT32, DataType::kINT32};
  std::vector<DataType> in_f(12, F), in_h(11, H);
  check(p->getOutputDataTypes(out, 1, in_f.data(), 11) == 0 && out[0] == F, "types.vsstail_float32");
  check(p->getOutputDataTypes(out, 1, in_h.data(), 11) == 0 && out[0] == H, "types.vsstail_float16");
  std::vector<DataType> in_mixed(11, F);
  in_mixed[8] = H;
  clear_last_error();
  check(p->getOutputDataTypes(out, 1, in_mixed.data(), 11) != 0, "types.vsstail_mixed_refused");
  check_error("types.vsstail_mixed_message", {"VSSBlockTail (layer 'vt'): input 'fc1_bias' has element type float16, "
                                              "but 'Y' has float32; all inputs must share one type"});
  std::vector<DataType> in_int(11, DataType::kINT32);
  check(p->getOutputDataTypes(out, 1, in_int.data(), 11) != 0, "types.vsstail_int32_refused");
  check_error("types.vsstail_int32_message", {"VSSBlockTail (layer 'vt'): Y has element type int32; supported: "
                                              "float32, float16"});
  std::vector<DataType> in_bf16(11, DataType::kBF16);
  check(p->getOutputDataTypes(out, 1, in_bf16.data(), 11) != 0, "types.vsstail_bfloat16_refused");
  check(p->getOutputDataTypes(out, 1, in_f.data(), 10) != 0, "types.vsstail_ten_inputs_refused");
  check_error("types.vsstail_count_message", {"VSSBlockTail (layer 'vt'): takes 11 inputs, got 10"});
  check(p->getOutputDataTypes(out, 1, in_f.data(), 12) != 0, "types.vsstail_twelve_inputs_refused");
  check_error("types.vsstail_count12_message", {"VSSBlockTail (layer 'vt'): takes 11 inputs, got 12"});
  check(p->getOutputDataTypes(out, 2, in_f.data(), 11) != 0, "types.vsstail_two_outputs_refused");
  check_error("types.vsstail_outputs_message", {"VSSBlockTail (layer 'vt'): has 1 output, got 2"});
}

void test_vss_tail_shapes() {
  auto p = vss_tail_plugin("vt");
  if (!p) return check(false, "vsstail.shapes.plugin");
  FakeBuilder b;
  nvinfer1::DimsExprs out{};
  // Constant dims, Y and R of rank 1 to 8 (TensorRT's limit), empty rows, the limits: Z has R's shape.
  struct Good {
    std::vector<int64_t> lead;
    int64_t D, C, H;
  };
  const Good good[] = {{{2, 5}, 96, 48, 192},      {{2, 16, 12}, 192, 96, 384}, {{}, 64, 32, 128},
                       {{7}, 1, 1, 1},             {{0}, 64, 32, 128},          {{2, 0, 3}, 8, 8, 8},
                       {{3}, 1024, 512, 1024},     {{4}, 1024, 1, 1},           {{1, 2, 3, 4, 5, 6, 7}, 16, 8, 32},
                       {{(int64_t(1) << 50) - 1}, 1024, 512, 1024}};  // rows * 1024 = 2^60 - 1024
  for (const Good& g : good) {
    std::vector<nvinfer1::DimsExprs> in = exprs(b, vss_tail_dims(g.lead, g.D, g.C, g.H));
    out = nvinfer1::DimsExprs{};
    const std::vector<int64_t> r = with_last(g.lead, g.C);
    check(p->getOutputShapes(in.data(), 11, nullptr, 0, &out, 1, b) == 0 && const_dims(out) == r,
          "vsstail.shapes.constant_" + shape_str(with_last(g.lead, g.D)) + "_C" + std::to_string(g.C) + "_H" +
              std::to_string(g.H),
          last_error());
  }
  // Symbolic rows: Z is R's expressions (no operation built).
  const size_t ops = b.operations();
  std::vector<std::vector<int64_t>> sym_dims = vss_tail_dims({-1, -1}, 192, 96, 384);
  std::vector<nvinfer1::DimsExprs> sym = exprs(b, sym_dims, {{"B", "L"}, {"B", "L"}});
  out = nvinfer1::DimsExprs{};
  check(p->getOutputShapes(sym.data(), 11, nullptr, 0, &out, 1, b) == 0 && out.nbDims == 3 &&
            out.d[0] == sym[1].d[0] && out.d[1] == sym[1].d[1] && out.d[2] == sym[1].d[2] &&
            const_dims(out) == std::vector<int64_t>({-1, -1, 96}) && b.operations() == ops,
        "vsstail.shapes.symbolic_is_R", last_error());
  // Y's dims symbolic, R's constant: accepted, Z is R's expressions.
  std::vector<std::vector<int64_t>> from_r = vss_tail_dims({2, 5}, 192, 96, 384);
  from_r[0] = {-1, 5, -1};
  std::vector<nvinfer1::DimsExprs> fr = exprs(b, from_r, {{"B", "", "D"}});
  out = nvinfer1::DimsExprs{};
  check(p->getOutputShapes(fr.data(), 11, nullptr, 0, &out, 1, b) == 0 && out.d[0] == fr[1].d[0] &&
            const_dims(out) == std::vector<int64_t>({2, 5, 96}),
        "vsstail.shapes.symbolic_Y_constant_R", last_error());
  // Every width symbolic in Y and R, known from the parameters: accepted, Z's last dim is R's symbol.
  std::vector<std::vector<int64_t>> widths = vss_tail_dims({2, 5}, 64, 32, 128);
  widths[0] = {2, 5, -1};
  widths[1] = {2, 5, -1};
  std::vector<nvinfer1::DimsExprs> wx = exprs(b, widths, {{"", "", "D"}, {"", "", "C"}});
  out = nvinfer1::DimsExprs{};
  check(p->getOutputShapes(wx.data(), 11, nullptr, 0, &out, 1, b) == 0 && out.d[2] == wx[1].d[2],
        "vsstail.shapes.symbolic_widths", last_error());

  struct Case {
    const char* name;
    std::vector<std::vector<int64_t>> dims;
    const char* message;
  };
  // From the base node Y (2, 5, 96), R (2, 5, 48), D = 96, C = 48, H = 192, with input `index` replaced.
  auto base = [](int32_t index, std::vector<int64_t> v) {
    std::vector<std::vector<int64_t>> d = vss_tail_dims({2, 5}, 96, 48, 192);
    d[index] = std::move(v);
    return d;
  };
  auto partial = [](std::vector<std::pair<int32_t, std::vector<int64_t>>> changes) {
    std::vector<std::vector<int64_t>> d = vss_tail_dims({2, 5}, 96, 48, 192);
    for (auto& c : changes) d[c.first] = std::move(c.second);
    return d;
  };
  const int64_t big = int64_t(1) << 62;
  const Case bad[] = {
      {"Y_scalar", base(0, {}), "Y must have rank >= 1 (its last axis holds the D channels), got shape ()"},
      {"R_scalar", base(1, {}), "R must have rank >= 1 (its last axis holds the C channels), got shape ()"},
      {"R_rows", base(1, {2, 4, 48}), "Y and R must agree in every dimension but the last, got Y (2, 5, 96) and R "
                                      "(2, 4, 48)"},
      {"R_broadcast", base(1, {1, 5, 48}), "Y and R must agree in every dimension but the last, got Y (2, 5, 96) "
                                           "and R (1, 5, 48)"},
      {"R_rank", base(1, {10, 48}), "Y and R must agree in every dimension but the last, got Y (2, 5, 96) and R "
                                    "(10, 48)"},
      {"out_norm_weight", base(2, {95}), "out_norm_weight must be (D,) = (96,), got (95,) (D = 96 from Y)"},
      {"out_norm_bias_rank", base(3, {96, 1}), "out_norm_bias must be (D,) = (96,), got (96, 1) (D = 96 from Y)"},
      {"out_proj_transposed", base(4, {48, 96}),
       "out_proj must be (D, C) = (96, 48), got (48, 96) (D = 96 from Y, C = 48 from R)"},
      {"out_proj_rank", base(4, {96 * 48}), "out_proj must be (D, C) = (96, 48), got (4608,) (D = 96 from Y, C = 48 "
                                            "from R)"},
      {"norm_weight", base(5, {96}), "norm_weight must be (C,) = (48,), got (96,) (C = 48 from R)"},
      {"norm_bias_scalar", base(6, {}), "norm_bias must be (C,) = (48,), got () (C = 48 from R)"},
      {"fc1_weight", base(7, {96, 192}), "fc1_weight must be (C, H) = (48, ?), got (96, 192) (C = 48 from R)"},
      {"fc1_weight_transposed", base(7, {192, 48}),
       "fc1_weight must be (C, H) = (48, ?), got (192, 48) (C = 48 from R)"},
      {"fc1_bias", base(8, {191}), "fc1_bias must be (H,) = (192,), got (191,) (H = 192 from fc1_weight)"},
      {"fc2_weight_transposed", base(9, {48, 192}),
       "fc2_weight must be (H, C) = (192, 48), got (48, 192) (H = 192 from fc1_weight, C = 48 from R)"},
      {"fc2_bias", base(10, {192}), "fc2_bias must be (C,) = (48,), got (192,) (C = 48 from R)"},
      // The kernels' limits, in the ONNX schema's words (export/schemas.py vss_tail_shape_error).
      {"D_2048", vss_tail_dims({2, 5}, 2048, 48, 192), "D (Y's channels) = 2048 is outside 1..1024"},
      {"C_640", vss_tail_dims({2, 5}, 96, 640, 192), "C (R's channels) = 640 is outside 1..512"},
      {"H_1025", vss_tail_dims({2, 5}, 96, 48, 1025), "H (fc1's outputs) = 1025 is outside 1..1024"},
      {"D_0", vss_tail_dims({2, 5}, 0, 48, 192), "D (Y's channels) = 0 is outside 1..1024"},
      {"C_0", vss_tail_dims({2, 5}, 96, 0, 192), "C (R's channels) = 0 is outside 1..512"},
      {"H_0", vss_tail_dims({2, 5}, 96, 48, 0), "H (fc1's outputs) = 0 is outside 1..1024"},
      {"rows_overflow", vss_tail_dims({big, 4}, 96, 48, 192), "Y has too many elements"},
      {"rows_2_60_boundary", vss_tail_dims({int64_t(1) << 50}, 1024, 512, 1024),
       "Y and R have too many rows: rows * max(D, C, H) must be <= 2^60 - 1, got rows = 1125899906842624 and "
       "max(D, C, H) = 1024"},
      {"rows_2_60", vss_tail_dims({int64_t(1) << 55, 64}, 96, 48, 192),
       "Y and R have too many rows: rows * max(D, C, H) must be <= 2^60 - 1, got rows = 2305843009213693952 and "
       "max(D, C, H) = 192"},
      // Partly known: each width from whichever input has it first.
      {"partial_D_from_out_norm_weight", partial({{0, {-1, 5, -1}}, {3, {95}}}),
       "out_norm_bias must be (D,) = (96,), got (95,) (D = 96 from out_norm_weight)"},
      {"partial_D_zero_from_out_proj", partial({{0, {2, 5, -1}}, {2, {-1}}, {3, {-1}}, {4, {0, 48}}}),
       "D (Y's channels) = 0 is outside 1..1024 (from out_proj)"},
      {"partial_C_from_norm_weight", partial({{1, {2, 5, -1}}, {4, {96, -1}}, {5, {64}}, {6, {32}}}),
       "norm_bias must be (C,) = (64,), got (32,) (C = 64 from norm_weight)"},
      {"partial_C_from_out_proj", partial({{1, {2, 5, -1}}, {4, {96, 64}}, {5, {48}}}),
       "norm_weight must be (C,) = (64,), got (48,) (C = 64 from out_proj)"},
      {"partial_H_from_fc1_bias", partial({{7, {48, -1}}, {9, {128, 48}}}),
       "fc2_weight must be (H, C) = (192, 48), got (128, 48) (H = 192 from fc1_bias, C = 48 from R)"},
      {"partial_H_unknown", partial({{7, {48, -1}}, {8, {-1}}, {9, {-1, 48, 1}}}),
       "fc2_weight must be (H, C) = (?, 48), got (?, 48, 1) (C = 48 from R)"},
      {"partial_nothing_known", partial({{1, {2, 5, -1}}, {4, {96, -1}}, {5, {-1}}, {6, {-1, -1}}}),
       "norm_bias must be (C,), got (?, ?)"},
      {"partial_H_limit", partial({{7, {48, -1}}, {8, {2048}}, {9, {-1, 48}}}),
       "H (fc1's outputs) = 2048 is outside 1..1024 (from fc1_bias)"},
      {"partial_rows", partial({{0, {-1, 5, 96}}, {1, {2, 4, 48}}}),
       "Y and R must agree in every dimension but the last, got Y (?, 5, 96) and R (2, 4, 48)"},
      {"partial_rows_from_R", partial({{0, {-1, 4, 96}}, {1, {big, 4, 48}}}), "Y has too many elements"},
  };
  for (const Case& c : bad) {
    std::vector<nvinfer1::DimsExprs> v = exprs(b, c.dims);
    clear_last_error();
    out = nvinfer1::DimsExprs{};
    check(p->getOutputShapes(v.data(), 11, nullptr, 0, &out, 1, b) != 0, std::string("vsstail.shapes.bad_") + c.name);
    check_error(std::string("vsstail.shapes.bad_") + c.name + "_message",
                {std::string("VSSBlockTail (layer 'vt'): ") + c.message});
  }
  std::vector<nvinfer1::DimsExprs> in = exprs(b, vss_tail_dims({2, 5}, 96, 48, 192));
  check(p->getOutputShapes(in.data(), 11, in.data(), 1, &out, 1, b) != 0, "vsstail.shapes.shape_inputs_refused");
  check_error("vsstail.shapes.shape_inputs_message", {"VSSBlockTail (layer 'vt'): takes no shape inputs, got 1"});
  check(p->getOutputShapes(in.data(), 10, nullptr, 0, &out, 1, b) != 0, "vsstail.shapes.ten_inputs_refused");
  check_error("vsstail.shapes.ten_inputs_message", {"VSSBlockTail (layer 'vt'): takes 11 inputs, got 10"});
  nvinfer1::DimsExprs two[2];
  check(p->getOutputShapes(in.data(), 11, nullptr, 0, two, 2, b) != 0, "vsstail.shapes.two_outputs_refused");
  check_error("vsstail.shapes.two_outputs_message", {"VSSBlockTail (layer 'vt'): has 1 output, got 2"});
}

// What the plugin hands the CUDA kernel: a stand-in for ssm_vss_block_tail_fwd_cuda records its arguments.
struct VssTailCall {
  int calls = 0;
  ssm_vss_tail_shape shape{};
  const void* y = nullptr;
  const void* residual = nullptr;
  ssm_vss_tail_params params{};
  void* z = nullptr;
  void* stream = nullptr;
};
VssTailCall g_vss_tail_call;

int fake_vss_tail_fwd(const ssm_vss_tail_shape* shape, const void* y, const void* residual,
                      const ssm_vss_tail_params* params, void* z, void* stream) {
  ++g_vss_tail_call.calls;
  g_vss_tail_call.shape = *shape;
  g_vss_tail_call.y = y;
  g_vss_tail_call.residual = residual;
  g_vss_tail_call.params = *params;
  g_vss_tail_call.z = z;
  g_vss_tail_call.stream = stream;
  return SSM_ERR_BAD_SIZE;  // passed through to enqueue as the kernel's status
}

// The plugin with its launch() reachable, to run it on the stand-in kernel table.
class VssTailProbe : public VSSBlockTailPlugin {
 public:
  using VSSBlockTailPlugin::VSSBlockTailPlugin;
  using VSSBlockTailPlugin::launch;
};

void test_vss_tail_configure_and_runtime() {
  Fields f;
  f.f32("epsilon", 1e-6f);
  auto p = vss_tail_plugin("vt", f);
  if (!p) return check(false, "configure.vsstail_plugin");
  const DataType H = DataType::kHALF, F = DataType::kFLOAT;
  auto descs = [](const std::vector<std::vector<int64_t>>& dims, DataType t) {
    std::vector<nvinfer1::DynamicPluginTensorDesc> v;
    for (const auto& d : dims) v.push_back(desc(d, t));
    return v;
  };
  // Build time: the rows vary over the profile (-1).
  std::vector<nvinfer1::DynamicPluginTensorDesc> in = descs(vss_tail_dims({-1, -1}, 192, 96, 384), H);
  std::vector<nvinfer1::DynamicPluginTensorDesc> out = descs({{-1, -1, 96}}, H);
  check(p->configurePlugin(in.data(), 11, out.data(), 1) == 0 && p->configured_inputs() == 11,
        "configure.vsstail_dynamic", last_error());
  auto bad = in;
  bad[9] = desc({384, 95}, H);
  check(p->configurePlugin(bad.data(), 11, out.data(), 1) != 0, "configure.vsstail_bad_fc2_weight");
  check_error("configure.vsstail_bad_fc2_weight_message",
              {"VSSBlockTail (layer 'vt'): fc2_weight must be (H, C) = (384, 96), got (384, 95) (H = 384 from "
               "fc1_weight, C = 96 from R)"});
  bad = in;
  bad[1] = desc({-1, 96}, H);
  check(p->configurePlugin(bad.data(), 11, out.data(), 1) != 0, "configure.vsstail_bad_R");
  check_error("configure.vsstail_bad_R_message",
              {"VSSBlockTail (layer 'vt'): Y and R must agree in every dimension but the last, got Y (?, ?, 192) and "
               "R (?, 96)"});
  bad = descs(vss_tail_dims({-1, -1}, 192, 640, 384), H);
  check(p->configurePlugin(bad.data(), 11, out.data(), 1) != 0, "configure.vsstail_C_limit");
  check_error("configure.vsstail_C_limit_message", {"VSSBlockTail (layer 'vt'): C (R's channels) = 640 is outside "
                                                    "1..512"});
  auto mixed = in;
  mixed[7] = desc({96, 384}, F);
  check(p->configurePlugin(mixed.data(), 11, out.data(), 1) != 0, "configure.vsstail_mixed_types");
  check_error("configure.vsstail_mixed_types_message", {"input 'fc1_weight' has element type float32"});
  auto out_f = descs({{-1, -1, 96}}, F);
  check(p->configurePlugin(in.data(), 11, out_f.data(), 1) != 0, "configure.vsstail_Z_type");
  check_error("configure.vsstail_Z_type_message",
              {"VSSBlockTail (layer 'vt'): output has element type float32, expected float16"});
  auto out2 = descs({{-1, -1, 96}, {-1, -1, 96}}, H);
  check(p->configurePlugin(in.data(), 11, out2.data(), 2) != 0, "configure.vsstail_two_outputs");
  check_error("configure.vsstail_two_outputs_message", {"has 1 output, got 2"});
  check(p->configurePlugin(in.data(), 10, out.data(), 1) != 0, "configure.vsstail_ten_inputs");
  check_error("configure.vsstail_ten_inputs_message", {"takes 11 inputs, got 10"});

  // Run time: concrete shapes -> the kernel's shape struct (rows = the product of Y's leading dims).
  auto tdescs = [](const std::vector<std::vector<int64_t>>& dims, DataType t) {
    std::vector<nvinfer1::PluginTensorDesc> v;
    for (const auto& d : dims) v.push_back(tdesc(d, t));
    return v;
  };
  struct Run {
    std::vector<int64_t> lead;
    int64_t D, C, Hd;
    DataType type;
    int64_t rows;
  };
  const Run runs[] = {{{3, 5}, 192, 96, 384, H, 15},
                      {{}, 64, 32, 128, F, 1},
                      {{2, 3, 4}, 1024, 512, 1024, F, 24},
                      {{7}, 1, 1, 1, H, 7},
                      {{2, 64, 48}, 128, 64, 256, H, 6144}};
  for (const Run& r : runs) {
    std::vector<nvinfer1::PluginTensorDesc> rin = tdescs(vss_tail_dims(r.lead, r.D, r.C, r.Hd), r.type);
    std::vector<nvinfer1::PluginTensorDesc> rout = tdescs({with_last(r.lead, r.C)}, r.type);
    const bool ok = p->onShapeChange(rin.data(), 11, rout.data(), 1) == 0;
    const ssm_vss_tail_shape& s = p->kernel_shape();
    check(ok && s.rows == r.rows && s.inner == r.D && s.channels == r.C && s.hidden == r.Hd && s.epsilon == 1e-6f &&
              s.dtype == (r.type == H ? SSM_FLOAT16 : SSM_FLOAT32) && p->configured_inputs() == 11,
          "runtime.vsstail_kernel_shape_" + shape_str(with_last(r.lead, r.D)) + "_C" + std::to_string(r.C) + "_H" +
              std::to_string(r.Hd),
          last_error());
  }
  auto q = vss_tail_plugin("q", Fields(), nvinfer1::TensorRTPhase::kRUNTIME);
  std::vector<nvinfer1::PluginTensorDesc> qin = tdescs(vss_tail_dims({4}, 64, 32, 128), F);
  std::vector<nvinfer1::PluginTensorDesc> qout = tdescs({{4, 32}}, F);
  check(q && q->onShapeChange(qin.data(), 11, qout.data(), 1) == 0 && q->kernel_shape().epsilon == 1e-5f,
        "runtime.vsstail_default_epsilon", last_error());

  std::vector<nvinfer1::PluginTensorDesc> rin = tdescs(vss_tail_dims({3, 5}, 192, 96, 384), H);
  std::vector<nvinfer1::PluginTensorDesc> rout = tdescs({{3, 5, 96}}, H);
  auto wrong_z = tdescs({{3, 5, 192}}, H);  // Y's shape instead of R's
  check(p->onShapeChange(rin.data(), 11, wrong_z.data(), 1) != 0, "runtime.vsstail_wrong_Z");
  check_error("runtime.vsstail_wrong_Z_message",
              {"VSSBlockTail (layer 'vt'): output shape (3, 5, 192) != expected (3, 5, 96)"});
  auto unresolved = rin;
  unresolved[1] = tdesc({3, -1, 96}, H);
  check(p->onShapeChange(unresolved.data(), 11, rout.data(), 1) != 0, "runtime.vsstail_unresolved");
  check_error("runtime.vsstail_unresolved_message", {"input 'R' has unresolved shape (3, ?, 96) at run time"});
  auto bad_proj = rin;
  bad_proj[4] = tdesc({96, 192}, H);
  check(p->onShapeChange(bad_proj.data(), 11, rout.data(), 1) != 0, "runtime.vsstail_bad_out_proj");
  check_error("runtime.vsstail_bad_out_proj_message",
              {"VSSBlockTail (layer 'vt'): out_proj must be (D, C) = (192, 96), got (96, 192) (D = 192 from Y, C = "
               "96 from R)"});
  auto bad_rows = rin;
  bad_rows[1] = tdesc({5, 3, 96}, H);
  auto bad_rows_out = tdescs({{5, 3, 96}}, H);
  check(p->onShapeChange(bad_rows.data(), 11, bad_rows_out.data(), 1) != 0, "runtime.vsstail_bad_rows");
  check_error("runtime.vsstail_bad_rows_message",
              {"VSSBlockTail (layer 'vt'): Y and R must agree in every dimension but the last, got Y (3, 5, 192) and "
               "R (5, 3, 96)"});
  std::vector<nvinfer1::PluginTensorDesc> wide = tdescs(vss_tail_dims({3, 5}, 192, 96, 2048), H);
  check(p->onShapeChange(wide.data(), 11, rout.data(), 1) != 0, "runtime.vsstail_H_limit");
  check_error("runtime.vsstail_H_limit_message",
              {"VSSBlockTail (layer 'vt'): H (fc1's outputs) = 2048 is outside 1..1024"});
  auto mixed_run = rin;
  mixed_run[10] = tdesc({96}, F);
  check(p->onShapeChange(mixed_run.data(), 11, rout.data(), 1) != 0, "runtime.vsstail_mixed_types");
  check_error("runtime.vsstail_mixed_types_message", {"input 'fc2_bias' has element type float32, but 'Y' has "
                                                      "float16"});

  // enqueue: no rows needs no kernels; otherwise a missing kernel library is a clear error.
  const std::vector<int64_t> empties[] = {{0}, {3, 0}, {2, 0, 4}};
  for (const auto& e : empties) {
    std::vector<nvinfer1::PluginTensorDesc> ein = tdescs(vss_tail_dims(e, 192, 96, 384), H);
    std::vector<nvinfer1::PluginTensorDesc> eout = tdescs({with_last(e, 96)}, H);
    check(p->onShapeChange(ein.data(), 11, eout.data(), 1) == 0 && p->kernel_shape().rows == 0 &&
              p->enqueue(ein.data(), eout.data(), nullptr, nullptr, nullptr, nullptr) == 0,
          "runtime.vsstail_empty_" + shape_str(with_last(e, 192)), last_error());
  }
  std::string why;
  if (cuda_kernels(&why) == nullptr) {
    check(p->onShapeChange(rin.data(), 11, rout.data(), 1) == 0, "runtime.vsstail_reshape");
    const void* ins[11] = {};
    void* outs[1] = {};
    clear_last_error();
    check(p->enqueue(rin.data(), rout.data(), ins, outs, nullptr, nullptr) != 0, "runtime.vsstail_no_kernels");
    check_error("runtime.vsstail_no_kernels_message",
                {"VSSBlockTail (layer 'vt'): cannot load the CUDA kernel library", "libssmpose_kernels_cuda.so"});
  } else {
    std::printf("skip runtime.vsstail_no_kernels: libssmpose_kernels_cuda.so is loadable here\n");
  }

  // launch: the shape prepared last, Y and R, the nine parameters in the order of ssm_vss_tail_params, Z and the
  // stream go to ssm_vss_block_tail_fwd_cuda as they are, and its status comes back.
  VssTailProbe probe("probe", LayerNormAttrs{1e-3f});
  std::vector<nvinfer1::PluginTensorDesc> lin = tdescs(vss_tail_dims({2, 3, 4}, 128, 64, 256), F);
  std::vector<nvinfer1::PluginTensorDesc> lout = tdescs({{2, 3, 4, 64}}, F);
  char storage[13] = {};
  const void* ins[11];
  for (int i = 0; i < 11; ++i) ins[i] = &storage[i];
  void* outs[1] = {&storage[11]};
  void* stream = &storage[12];
  CudaKernels table{};
  table.vss_block_tail_fwd = &fake_vss_tail_fwd;
  g_vss_tail_call = VssTailCall{};
  const char* kernel = nullptr;
  const bool shaped = probe.onShapeChange(lin.data(), 11, lout.data(), 1) == 0;
  const int status = shaped ? probe.launch(table, ins, outs, stream, &kernel) : -1;
  const VssTailCall& c = g_vss_tail_call;
  check(shaped && status == SSM_ERR_BAD_SIZE && c.calls == 1 && kernel != nullptr &&
            std::strcmp(kernel, "ssm_vss_block_tail_fwd_cuda") == 0,
        "runtime.vsstail_launch_status", last_error());
  check(c.shape.rows == 24 && c.shape.inner == 128 && c.shape.channels == 64 && c.shape.hidden == 256 &&
            c.shape.epsilon == 1e-3f && c.shape.dtype == SSM_FLOAT32,
        "runtime.vsstail_launch_shape");
  const ssm_vss_tail_params& pr = c.params;
  check(c.y == ins[0] && c.residual == ins[1] && pr.out_norm_weight == ins[2] && pr.out_norm_bias == ins[3] &&
            pr.out_proj == ins[4] && pr.norm_weight == ins[5] && pr.norm_bias == ins[6] && pr.fc1_weight == ins[7] &&
            pr.fc1_bias == ins[8] && pr.fc2_weight == ins[9] && pr.fc2_bias == ins[10] && c.z == outs[0] &&
            c.stream == stream,
        "runtime.vsstail_launch_arguments");
}

void test_vss_tail_serialization() {
  Fields f;
  f.f32("epsilon", 1e-6f).cstr("plugin_version", "1").cstr("plugin_namespace", "ssmpose");
  auto p = vss_tail_plugin("vt", f);
  if (!p) return check(false, "serialize.vsstail_plugin");
  const PluginFieldCollection* fc = p->getFieldsToSerialize();
  check(fc != nullptr && fc->nbFields == 1 && std::strcmp(fc->fields[0].name, "epsilon") == 0 &&
            fc->fields[0].type == PluginFieldType::kFLOAT32 && fc->fields[0].length == 1 &&
            *static_cast<const float*>(fc->fields[0].data) == 1e-6f,
        "serialize.vsstail_fields");
  check(fields_match_creator(fc, vss_tail_creator()), "serialize.vsstail_fields_match_creator");
  Fields copy = copy_fields(fc);
  auto c = as_plugin<VSSBlockTailPlugin>(p->clone());
  auto attached = as_plugin<VSSBlockTailPlugin>(p->attachToContext(nullptr));
  p.reset();  // the original is gone, as after serialisation
  auto q = vss_tail_plugin("vt", copy, nvinfer1::TensorRTPhase::kRUNTIME);
  check(q && q->attrs().epsilon == 1e-6f && q->getNbOutputs() == 1 && q->layer_name() == "vt",
        "serialize.vsstail_round_trip");
  check(c && c->attrs().epsilon == 1e-6f && c->layer_name() == "vt" && c->getNbOutputs() == 1 &&
            std::strcmp(c->getPluginName(), "VSSBlockTail") == 0,
        "serialize.vsstail_clone");
  check(attached && attached.get() != c.get() && attached->attrs().epsilon == 1e-6f,
        "serialize.vsstail_attach");
  if (q) {
    const int32_t n1 = q->getFieldsToSerialize()->nbFields;
    const PluginFieldCollection* two = q->getFieldsToSerialize();
    check(n1 == 1 && two->nbFields == 1 && *static_cast<const float*>(two->fields[0].data) == 1e-6f,
          "serialize.vsstail_repeatable");
    // The round-tripped plugin checks and prepares shapes like the original.
    std::vector<nvinfer1::PluginTensorDesc> rin;
    for (const auto& d : vss_tail_dims({3, 5}, 192, 96, 384)) rin.push_back(tdesc(d, DataType::kHALF));
    nvinfer1::PluginTensorDesc rout = tdesc({3, 5, 96}, DataType::kHALF);
    check(q->onShapeChange(rin.data(), 11, &rout, 1) == 0 && q->kernel_shape().rows == 15 &&
              q->kernel_shape().hidden == 384 && q->kernel_shape().epsilon == 1e-6f,
          "serialize.vsstail_round_trip_runs", last_error());
  }
  auto d = vss_tail_plugin("d");
  Fields dcopy = copy_fields(d ? d->getFieldsToSerialize() : nullptr);
  auto e = vss_tail_plugin("d", dcopy, nvinfer1::TensorRTPhase::kRUNTIME);
  check(e && e->attrs().epsilon == 1e-5f, "serialize.vsstail_default_round_trip");
}

// "2,8,6,3" -> {2, 8, 6, 3}
std::vector<int64_t> parse_dims(const char* text) {
  std::vector<int64_t> dims;
  const char* p = text;
  while (*p != '\0') {
    char* end = nullptr;
    dims.push_back(std::strtoll(p, &end, 10));
    if (*end != ',') break;
    p = end + 1;
  }
  return dims;
}

int scan2d_mode(int argc, char** argv) {
  if (argc < 7 || argc > 9) {
    std::fprintf(stderr, "usage: %s scan2d X DELTA A BS CS [DS [DELTA_BIAS]]  (dims as 2,8,6,3)\n", argv[0]);
    return 2;
  }
  std::vector<std::vector<int64_t>> dims;
  for (int i = 2; i < argc; ++i) dims.push_back(parse_dims(argv[i]));
  const int32_t n = static_cast<int32_t>(dims.size());
  auto print = [](const char* stage, const std::vector<int64_t>& d) {
    std::printf("%s", stage);
    for (int64_t v : d) std::printf(" %lld", static_cast<long long>(v));
    std::printf("\n");
  };
  auto p = scan2d_plugin("c");
  FakeBuilder b;
  std::vector<nvinfer1::DimsExprs> in = exprs(b, dims);
  nvinfer1::DimsExprs out{};
  if (p->getOutputShapes(in.data(), n, nullptr, 0, &out, 1, b) != 0) {
    std::printf("build error: %s\n", last_error().c_str());
  } else {
    print("build", const_dims(out));
  }
  std::vector<nvinfer1::PluginTensorDesc> rin;
  for (const auto& d : dims) rin.push_back(tdesc(d));
  std::vector<nvinfer1::PluginTensorDesc> rout = {tdesc(dims[0])};
  if (p->onShapeChange(rin.data(), n, rout.data(), 1) != 0) {
    std::printf("run error: %s\n", last_error().c_str());
  } else {
    print("run", dims[0]);
  }
  return 0;
}

// LayerNorm's shape rules on constant dims ("2,5,96" each; "" for a scalar): "build <dims>" / "build error: ..."
// (getOutputShapes), then "run <dims>" / "run error: ..." (onShapeChange).
int layer_norm_mode(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: %s layernorm X WEIGHT BIAS  (dims as 2,5,96; \"\" for a scalar)\n", argv[0]);
    return 2;
  }
  std::vector<std::vector<int64_t>> dims;
  for (int i = 2; i < argc; ++i) dims.push_back(parse_dims(argv[i]));
  auto print = [](const char* stage, const std::vector<int64_t>& d) {
    std::printf("%s", stage);
    for (int64_t v : d) std::printf(" %lld", static_cast<long long>(v));
    std::printf("\n");
  };
  auto p = layer_norm_plugin("c");
  FakeBuilder b;
  std::vector<nvinfer1::DimsExprs> in = exprs(b, dims);
  nvinfer1::DimsExprs out{};
  if (p->getOutputShapes(in.data(), 3, nullptr, 0, &out, 1, b) != 0) {
    std::printf("build error: %s\n", last_error().c_str());
  } else {
    print("build", const_dims(out));
  }
  std::vector<nvinfer1::PluginTensorDesc> rin;
  for (const auto& d : dims) rin.push_back(tdesc(d));
  std::vector<nvinfer1::PluginTensorDesc> rout = {tdesc(dims[0])};
  if (p->onShapeChange(rin.data(), 3, rout.data(), 1) != 0) {
    std::printf("run error: %s\n", last_error().c_str());
  } else {
    print("run", dims[0]);
  }
  return 0;
}

// AddLayerNorm's shape rules on constant dims, as layer_norm_mode (the lines give Y's shape; S is checked to have
// it too).
int add_layer_norm_mode(int argc, char** argv) {
  if (argc != 6) {
    std::fprintf(stderr, "usage: %s addlayernorm X R WEIGHT BIAS  (dims as 2,5,96; \"\" for a scalar)\n", argv[0]);
    return 2;
  }
  std::vector<std::vector<int64_t>> dims;
  for (int i = 2; i < argc; ++i) dims.push_back(parse_dims(argv[i]));
  auto print = [](const char* stage, const std::vector<int64_t>& d) {
    std::printf("%s", stage);
    for (int64_t v : d) std::printf(" %lld", static_cast<long long>(v));
    std::printf("\n");
  };
  auto p = add_layer_norm_plugin("c");
  FakeBuilder b;
  std::vector<nvinfer1::DimsExprs> in = exprs(b, dims);
  nvinfer1::DimsExprs out[2];
  if (p->getOutputShapes(in.data(), 4, nullptr, 0, out, 2, b) != 0) {
    std::printf("build error: %s\n", last_error().c_str());
  } else if (const_dims(out[0]) != const_dims(out[1])) {
    std::printf("build error: S has another shape than Y\n");
  } else {
    print("build", const_dims(out[0]));
  }
  std::vector<nvinfer1::PluginTensorDesc> rin;
  for (const auto& d : dims) rin.push_back(tdesc(d));
  std::vector<nvinfer1::PluginTensorDesc> rout = {tdesc(dims[0]), tdesc(dims[0])};
  if (p->onShapeChange(rin.data(), 4, rout.data(), 2) != 0) {
    std::printf("run error: %s\n", last_error().c_str());
  } else {
    print("run", dims[0]);
  }
  return 0;
}

// MultiKernelDepthwiseConv: the creator's verdict on the fields ("create error: ..."), then the shape rules on
// constant dims as layer_norm_mode. The lists come as int64 fields, so that no value is cut to 32 bits here.
int dwconv_mode(int argc, char** argv) {
  if (argc < 7 || argc > 9) {
    std::fprintf(stderr,
                 "usage: %s dwconv X WEIGHT BIAS KERNEL_SIZES GROUP_CHANNELS [SHUFFLE_GROUPS [ACTIVATION]]  (dims and "
                 "lists as 2,9,7,32)\n",
                 argv[0]);
    return 2;
  }
  std::vector<std::vector<int64_t>> dims;
  for (int i = 2; i < 5; ++i) dims.push_back(parse_dims(argv[i]));
  Fields f;
  f.i64s("kernel_sizes", parse_dims(argv[5])).i64s("group_channels", parse_dims(argv[6]));
  if (argc > 7) f.i64("shuffle_groups", std::atoll(argv[7]));
  if (argc > 8) f.cstr("activation", argv[8]);
  auto print = [](const char* stage, const std::vector<int64_t>& d) {
    std::printf("%s", stage);
    for (int64_t v : d) std::printf(" %lld", static_cast<long long>(v));
    std::printf("\n");
  };
  auto p = as_plugin<DepthwiseConvPlugin>(dwconv_creator().createPlugin("c", f.fc(), nvinfer1::TensorRTPhase::kBUILD));
  if (!p) {
    std::printf("create error: %s\n", last_error().c_str());
    return 0;
  }
  FakeBuilder b;
  std::vector<nvinfer1::DimsExprs> in = exprs(b, dims);
  nvinfer1::DimsExprs out{};
  if (p->getOutputShapes(in.data(), 3, nullptr, 0, &out, 1, b) != 0) {
    std::printf("build error: %s\n", last_error().c_str());
  } else {
    print("build", const_dims(out));
  }
  std::vector<nvinfer1::PluginTensorDesc> rin;
  for (const auto& d : dims) rin.push_back(tdesc(d));
  std::vector<nvinfer1::PluginTensorDesc> rout = {tdesc(dims[0])};
  if (p->onShapeChange(rin.data(), 3, rout.data(), 1) != 0) {
    std::printf("run error: %s\n", last_error().c_str());
  } else {
    print("run", dims[0]);
  }
  return 0;
}

// VSSBlockTail's shape rules on constant dims, as layer_norm_mode (the lines give Z's shape: R's).
int vss_tail_mode(int argc, char** argv) {
  if (argc != 13) {
    std::fprintf(stderr,
                 "usage: %s vsstail Y R OUT_NORM_W OUT_NORM_B OUT_PROJ NORM_W NORM_B FC1_W FC1_B FC2_W FC2_B  (dims "
                 "as 2,5,96; \"\" for a scalar)\n",
                 argv[0]);
    return 2;
  }
  std::vector<std::vector<int64_t>> dims;
  for (int i = 2; i < argc; ++i) dims.push_back(parse_dims(argv[i]));
  auto print = [](const char* stage, const std::vector<int64_t>& d) {
    std::printf("%s", stage);
    for (int64_t v : d) std::printf(" %lld", static_cast<long long>(v));
    std::printf("\n");
  };
  auto p = vss_tail_plugin("c");
  FakeBuilder b;
  std::vector<nvinfer1::DimsExprs> in = exprs(b, dims);
  nvinfer1::DimsExprs out{};
  if (p->getOutputShapes(in.data(), 11, nullptr, 0, &out, 1, b) != 0) {
    std::printf("build error: %s\n", last_error().c_str());
  } else {
    print("build", const_dims(out));
  }
  std::vector<nvinfer1::PluginTensorDesc> rin;
  for (const auto& d : dims) rin.push_back(tdesc(d));
  std::vector<nvinfer1::PluginTensorDesc> rout = {tdesc(dims[1])};
  if (p->onShapeChange(rin.data(), 11, rout.data(), 1) != 0) {
    std::printf("run error: %s\n", last_error().c_str());
  } else {
    print("run", dims[1]);
  }
  return 0;
}

int outsize(int argc, char** argv) {
  if (argc != 12) {
    std::fprintf(stderr, "usage: %s outsize H W kernel_h kernel_w stride_h stride_w pad_h pad_w dilation_h dilation_w\n",
                 argv[0]);
    return 2;
  }
  const int64_t h = std::atoll(argv[2]), w = std::atoll(argv[3]);
  Fields f = deform_fields(std::atoi(argv[4]), std::atoi(argv[5]), std::atoi(argv[6]), std::atoi(argv[7]),
                           std::atoi(argv[8]), std::atoi(argv[9]), std::atoi(argv[10]), std::atoi(argv[11]), 1, 4);
  auto p = as_plugin<DeformAggregatePlugin>(deform_creator().createPlugin("o", f.fc(), nvinfer1::TensorRTPhase::kBUILD));
  if (!p) {
    std::printf("error: %s\n", last_error().c_str());
    return 0;
  }
  FakeBuilder b;
  std::vector<nvinfer1::DimsExprs> in = {b.dims({1, h, w, 4}), b.dims({1, -1, -1, -1}, {"", "Ho", "Wo", "P"})};
  nvinfer1::DimsExprs out{};
  if (p->getOutputShapes(in.data(), 2, nullptr, 0, &out, 1, b) != 0) {
    std::printf("error: %s\n", last_error().c_str());
    return 0;
  }
  std::vector<nvinfer1::DimsExprs> sym = {b.dims({1, -1, -1, 4}, {"", "H", "W"}),
                                          b.dims({1, -1, -1, -1}, {"", "Ho", "Wo", "P"})};
  nvinfer1::DimsExprs sout{};
  if (p->getOutputShapes(sym.data(), 2, nullptr, 0, &sout, 1, b) != 0) {
    std::printf("error: %s\n", last_error().c_str());
    return 0;
  }
  int64_t sh = 0, sw = 0;
  const bool ok = dynamic_cast<const FakeExpr*>(sout.d[1])->eval({{"H", h}}, &sh) &&
                  dynamic_cast<const FakeExpr*>(sout.d[2])->eval({{"W", w}}, &sw);
  if (!ok) {
    std::printf("error: the symbolic output size cannot be evaluated\n");
    return 0;
  }
  std::printf("%lld %lld %lld %lld\n", static_cast<long long>(out.d[1]->getConstantValue()),
              static_cast<long long>(out.d[2]->getConstantValue()), static_cast<long long>(sh),
              static_cast<long long>(sw));
  return 0;
}


#if defined(SSMPOSE_TRT_TEST_CUDA)
// ------------------------------------------------------------------------------------------------
// GPU mode: the plugins' enqueue on real device buffers (the CUDA kernels dlopen()ed by the plugin code), compared
// with the CPU kernels of libssmpose_kernels.so (LayerNorm: with a float64 reference computed here). Exercises
// onShapeChange -> enqueue as TensorRT would, without TensorRT. Both libraries are found through the loader path
// (LD_LIBRARY_PATH=<build>/lib).

struct CpuKernels {
  int (*scan)(const ssm_scan_shape*, const void*, const void*, const void*, const void*, const void*, const void*,
              const void*, void*, int) = nullptr;
  int (*scan2d)(const ssm_scan2d_shape*, const void*, const void*, const void*, const void*, const void*, const void*,
                const void*, void*, int) = nullptr;
  int (*deform)(const ssm_deform_shape*, const void*, const void*, void*, int) = nullptr;
};

bool cpu_kernels(CpuKernels* k) {
  void* h = dlopen("libssmpose_kernels.so", RTLD_NOW | RTLD_LOCAL);
  if (h == nullptr) return false;
  k->scan = reinterpret_cast<decltype(k->scan)>(dlsym(h, "ssm_selective_scan_fwd_cpu"));
  k->scan2d = reinterpret_cast<decltype(k->scan2d)>(dlsym(h, "ssm_selective_scan_2d_fwd_cpu"));
  k->deform = reinterpret_cast<decltype(k->deform)>(dlsym(h, "ssm_deform_aggregate_fwd_cpu"));
  return k->scan != nullptr && k->scan2d != nullptr && k->deform != nullptr;
}

// Host buffers of one dtype (float32, or float16 stored as __half).
struct Buffer {
  std::vector<float> f;
  std::vector<__half> h;
  bool half = false;
  const void* host() const { return half ? static_cast<const void*>(h.data()) : f.data(); }
  size_t bytes() const { return half ? h.size() * sizeof(__half) : f.size() * sizeof(float); }
  float at(size_t i) const { return half ? __half2float(h[i]) : f[i]; }
};

Buffer random_buffer(size_t n, bool half, uint32_t* seed, float scale, float shift = 0.0f) {
  Buffer b;
  b.half = half;
  for (size_t i = 0; i < n; ++i) {
    *seed = *seed * 1664525u + 1013904223u;
    const float v = shift + scale * (static_cast<float>(*seed >> 8) / 16777216.0f * 2.0f - 1.0f);
    if (half) b.h.push_back(__float2half(v)); else b.f.push_back(v);
  }
  return b;
}

Buffer zeros(size_t n, bool half) {
  Buffer b;
  b.half = half;
  if (half) b.h.assign(n, __float2half(0.0f)); else b.f.assign(n, 0.0f);
  return b;
}

size_t numel(const std::vector<int64_t>& d) {
  size_t n = 1;
  for (int64_t v : d) n *= static_cast<size_t>(v);
  return n;
}

// Runs `plugin` on device copies of `inputs` and returns its `nb_outputs` outputs, all of `out_dims` (host, as
// float). Each output buffer starts as NaNs, so that unwritten elements show.
bool run_on_gpu_outputs(PluginBase* plugin, const std::vector<std::vector<int64_t>>& dims,
                        const std::vector<Buffer>& inputs, const std::vector<int64_t>& out_dims, int32_t nb_outputs,
                        bool half, std::vector<std::vector<float>>* outs, std::string* err) {
  const DataType t = half ? DataType::kHALF : DataType::kFLOAT;
  std::vector<nvinfer1::PluginTensorDesc> in_desc;
  for (const auto& d : dims) in_desc.push_back(tdesc(d, t));
  std::vector<nvinfer1::PluginTensorDesc> out_desc(static_cast<size_t>(nb_outputs), tdesc(out_dims, t));
  if (plugin->onShapeChange(in_desc.data(), static_cast<int32_t>(dims.size()), out_desc.data(), nb_outputs) != 0) {
    *err = last_error();
    return false;
  }
  std::vector<void*> dev(inputs.size(), nullptr);
  for (size_t i = 0; i < inputs.size(); ++i) {
    cudaMalloc(&dev[i], inputs[i].bytes());
    cudaMemcpy(dev[i], inputs[i].host(), inputs[i].bytes(), cudaMemcpyHostToDevice);
  }
  std::vector<Buffer> results(static_cast<size_t>(nb_outputs), zeros(numel(out_dims), half));
  std::vector<void*> dout(static_cast<size_t>(nb_outputs), nullptr);
  for (int32_t j = 0; j < nb_outputs; ++j) {
    cudaMalloc(&dout[j], results[j].bytes());
    cudaMemset(dout[j], 0xff, results[j].bytes());  // NaN pattern: unwritten elements show
  }
  cudaStream_t stream = nullptr;
  cudaStreamCreate(&stream);
  const int rc = plugin->enqueue(in_desc.data(), out_desc.data(), const_cast<const void* const*>(dev.data()),
                                 dout.data(), nullptr, stream);
  const cudaError_t sync = cudaStreamSynchronize(stream);
  for (int32_t j = 0; j < nb_outputs; ++j) {
    Buffer& r = results[j];
    cudaMemcpy(half ? static_cast<void*>(r.h.data()) : r.f.data(), dout[j], r.bytes(), cudaMemcpyDeviceToHost);
  }
  cudaStreamDestroy(stream);
  for (void* p : dev) cudaFree(p);
  for (void* p : dout) cudaFree(p);
  if (rc != 0 || sync != cudaSuccess) {
    *err = rc != 0 ? last_error() : std::string(cudaGetErrorString(sync));
    return false;
  }
  outs->assign(static_cast<size_t>(nb_outputs), std::vector<float>());
  for (int32_t j = 0; j < nb_outputs; ++j) {
    for (size_t i = 0; i < numel(out_dims); ++i) (*outs)[j].push_back(results[j].at(i));
  }
  return true;
}

// Runs a one-output `plugin` (see run_on_gpu_outputs).
bool run_on_gpu(PluginBase* plugin, const std::vector<std::vector<int64_t>>& dims, const std::vector<Buffer>& inputs,
                const std::vector<int64_t>& out_dims, bool half, std::vector<float>* out, std::string* err) {
  std::vector<std::vector<float>> outs;
  if (!run_on_gpu_outputs(plugin, dims, inputs, out_dims, 1, half, &outs, err)) return false;
  *out = outs[0];
  return true;
}

// A host buffer of `values` rounded to the type.
Buffer buffer_of(const std::vector<double>& values, bool half) {
  Buffer b;
  b.half = half;
  for (double v : values) {
    if (half) b.h.push_back(__float2half(static_cast<float>(v))); else b.f.push_back(static_cast<float>(v));
  }
  return b;
}

// float64 LayerNorm of the rows of `x` (rows x C, as stored), into want.f.
void layer_norm_reference(const Buffer& x, const Buffer& weight, const Buffer& bias, int64_t rows, int64_t C,
                          double epsilon, Buffer* want) {
  *want = zeros(rows * C, false);
  for (int64_t r = 0; r < rows; ++r) {
    double mean = 0, var = 0;
    for (int64_t k = 0; k < C; ++k) mean += x.at(r * C + k);
    mean /= static_cast<double>(C);
    for (int64_t k = 0; k < C; ++k) var += (x.at(r * C + k) - mean) * (x.at(r * C + k) - mean);
    var /= static_cast<double>(C);
    const double inv = 1.0 / std::sqrt(var + epsilon);
    for (int64_t k = 0; k < C; ++k) {
      want->f[r * C + k] = static_cast<float>((x.at(r * C + k) - mean) * inv * weight.at(k) + bias.at(k));
    }
  }
}

// Whether two results are equal element for element (bit for bit for finite values of one type).
void check_identical(const std::string& name, const std::vector<float>& got, const std::vector<float>& want) {
  size_t differ = got.size() == want.size() ? 0 : 1;
  size_t first = 0;
  for (size_t i = 0; i < got.size() && i < want.size(); ++i) {
    if (!(got[i] == want[i])) {
      if (differ++ == 0) first = i;
    }
  }
  check(differ == 0, name,
        std::to_string(differ) + " elements differ, the first at " + std::to_string(first) +
            (first < got.size() && first < want.size()
                 ? ": " + std::to_string(got[first]) + " vs " + std::to_string(want[first])
                 : std::string()));
}

void compare(const std::string& name, const std::vector<float>& got, const Buffer& want, double tol) {
  double max_err = 0, max_ref = 0;
  bool finite = got.size() == (want.half ? want.h.size() : want.f.size());
  for (size_t i = 0; finite && i < got.size(); ++i) {
    finite = std::isfinite(got[i]);
    max_err = std::max(max_err, std::fabs(double(got[i]) - want.at(i)));
    max_ref = std::max(max_ref, std::fabs(double(want.at(i))));
  }
  check(finite && max_err <= tol * (max_ref + 1e-6), name,
        "max abs error " + std::to_string(max_err) + ", max |ref| " + std::to_string(max_ref));
}

// AddLayerNorm: the shapes and epsilons of the LayerNorm cases. S must be X + R rounded to the type, bit for bit (a
// sum of two float32 or float16 values of these magnitudes is exact in float64, so rounding it once is what the
// kernel's float32 sum rounded to the type gives); Y is compared with a float64 layer normalisation of that S, and
// must equal, bit for bit, the LayerNorm plugin's output on the S the GPU wrote (docs/ops.md: AddLayerNorm equals
// Add followed by LayerNorm).
void gpu_add_layer_norm_cases() {
  struct Case {
    std::vector<int64_t> x;
    float epsilon;
  };
  const Case cases[] = {
      {{2, 5, 32}, 1e-5f}, {{7, 96}, 1e-3f}, {{2, 64, 96}, 1e-5f}, {{3, 4, 768}, 1e-6f}, {{768}, 1e-5f}};
  std::string why;
  for (bool half : {false, true}) {
    for (const Case& c : cases) {
      const int64_t C = c.x.back();
      const int64_t rows = static_cast<int64_t>(numel(c.x)) / C;
      uint32_t seed = 11u + static_cast<uint32_t>(C + rows);
      // X around 3 and R around -1: S's rows have a mean far from 0.
      std::vector<Buffer> in = {random_buffer(rows * C, half, &seed, 2.0f, 3.0f),
                                random_buffer(rows * C, half, &seed, 1.0f, -1.0f),
                                random_buffer(C, half, &seed, 0.5f, 1.0f), random_buffer(C, half, &seed, 0.2f)};
      Fields f;
      f.f32("epsilon", c.epsilon).cstr("plugin_version", "1").cstr("plugin_namespace", "ssmpose");
      auto p = add_layer_norm_plugin("g", f, nvinfer1::TensorRTPhase::kRUNTIME);
      std::string name = std::string("gpu.addlayernorm_") + (half ? "f16_" : "f32_");
      for (size_t i = 0; i < c.x.size(); ++i) name += (i ? "x" : "") + std::to_string(c.x[i]);
      std::vector<std::vector<float>> got;
      if (!p || !run_on_gpu_outputs(p.get(), add_layer_norm_dims(c.x), in, c.x, 2, half, &got, &why)) {
        check(false, name, p ? why : last_error());
        continue;
      }
      std::vector<double> sum(static_cast<size_t>(rows * C));
      for (size_t i = 0; i < sum.size(); ++i) sum[i] = static_cast<double>(in[0].at(i)) + in[1].at(i);
      const Buffer s = buffer_of(sum, half);  // S as the type holds it
      std::vector<float> s_want;
      for (size_t i = 0; i < sum.size(); ++i) s_want.push_back(s.at(i));
      check_identical(name + "_S", got[1], s_want);
      Buffer want;
      layer_norm_reference(s, in[2], in[3], rows, C, static_cast<double>(c.epsilon), &want);
      compare(name + "_Y", got[0], want, half ? 2e-3 : 1e-5);
      // Y against the LayerNorm plugin on the GPU's S.
      std::vector<double> s_got(got[1].begin(), got[1].end());
      std::vector<Buffer> ln_in = {buffer_of(s_got, half), in[2], in[3]};
      auto ln = layer_norm_plugin("g", f, nvinfer1::TensorRTPhase::kRUNTIME);
      std::vector<float> ln_y;
      if (!ln || !run_on_gpu(ln.get(), layer_norm_dims(c.x), ln_in, c.x, half, &ln_y, &why)) {
        check(false, name + "_Y_is_layernorm_of_S", ln ? why : last_error());
        continue;
      }
      check_identical(name + "_Y_is_layernorm_of_S", got[0], ln_y);
    }
  }
}

// MultiKernelDepthwiseConv against a float64 computation of docs/ops.md's formula from the same (rounded) inputs.
// The weight taps outside each group's k x k centre are NaN in the cases marked so: the kernel must never read them.
void gpu_dwconv_cases() {
  struct Case {
    const char* name;
    int64_t B, H, W;
    std::vector<int32_t> kernel_sizes, group_channels;
    int64_t K;
    int32_t shuffle;
    const char* activation;
    bool nan_outside;
  };
  const Case cases[] = {
      // HRVMamba's LPU: four quarters with 3/5/7/9 kernels, shuffle over 4, GELU; a non-square image.
      {"lpu_32", 2, 9, 7, {3, 5, 7, 9}, {8, 8, 8, 8}, 9, 4, "gelu", true},
      {"lpu_96", 2, 16, 12, {3, 5, 7, 9}, {24, 24, 24, 24}, 9, 4, "gelu", false},
      // A weight with K larger than any kernel size (11 > 9).
      {"wide_weight", 1, 6, 11, {3, 5, 7, 9}, {8, 8, 8, 8}, 11, 2, "none", true},
      // One group of 5 channels (no vector-friendly width), no shuffle, no activation.
      {"one_group", 1, 4, 6, {3}, {5}, 3, 1, "none", false},
      // 1x1 and 15x15 kernels, a 15x15 kernel over a 3-row image, uneven groups.
      {"k15", 2, 3, 20, {1, 15, 7}, {1, 2, 13}, 15, 2, "gelu", true},
      // Shuffle with S = 8 groups of P = 2 channels.
      {"shuffle_8", 1, 5, 5, {5, 3}, {6, 10}, 5, 8, "none", true},
  };
  std::string why;
  for (bool half : {false, true}) {
    for (const Case& c : cases) {
      int64_t C = 0;
      for (int32_t g : c.group_channels) C += g;
      const int64_t K = c.K, R = K / 2;
      uint32_t seed = 101u + static_cast<uint32_t>(C * 7 + K);
      std::vector<Buffer> in = {random_buffer(c.B * c.H * c.W * C, half, &seed, 1.0f),
                                random_buffer(C * K * K, half, &seed, 0.3f), random_buffer(C, half, &seed, 0.1f)};
      // group of each channel, and the NaN taps
      std::vector<int32_t> ksize(static_cast<size_t>(C));
      for (size_t g = 0, c0 = 0; g < c.group_channels.size(); c0 += c.group_channels[g], ++g) {
        for (int32_t i = 0; i < c.group_channels[g]; ++i) ksize[c0 + i] = c.kernel_sizes[g];
      }
      if (c.nan_outside) {
        for (int64_t ch = 0; ch < C; ++ch) {
          const int64_t lo = R - ksize[ch] / 2, hi = R + ksize[ch] / 2;
          for (int64_t i = 0; i < K; ++i) {
            for (int64_t j = 0; j < K; ++j) {
              if (i >= lo && i <= hi && j >= lo && j <= hi) continue;
              const size_t at = static_cast<size_t>((ch * K + i) * K + j);
              if (half) in[1].h[at] = __float2half(std::numeric_limits<float>::quiet_NaN());
              else in[1].f[at] = std::numeric_limits<float>::quiet_NaN();
            }
          }
        }
      }
      Fields f = dwconv_fields(c.kernel_sizes, c.group_channels, c.shuffle, c.activation);
      auto p = dwconv_plugin("g", f, nvinfer1::TensorRTPhase::kRUNTIME);
      const std::string name = std::string("gpu.dwconv_") + (half ? "f16_" : "f32_") + c.name +
                               (c.nan_outside ? "_nan_outside" : "");
      std::vector<float> got;
      if (!p || !run_on_gpu(p.get(), dwconv_dims(c.B, c.H, c.W, C, K), in, {c.B, c.H, c.W, C}, half, &got, &why)) {
        check(false, name, p ? why : last_error());
        continue;
      }
      const bool gelu = std::strcmp(c.activation, "gelu") == 0;
      const int64_t S = c.shuffle, P = C / S;
      Buffer want = zeros(c.B * c.H * c.W * C, false);
      for (int64_t b = 0; b < c.B; ++b) {
        for (int64_t h = 0; h < c.H; ++h) {
          for (int64_t w = 0; w < c.W; ++w) {
            const int64_t pixel = (b * c.H + h) * c.W + w;
            for (int64_t ch = 0; ch < C; ++ch) {
              const int64_t k = ksize[ch], r = k / 2;
              double z = in[2].at(ch);
              for (int64_t i = 0; i < k; ++i) {
                for (int64_t j = 0; j < k; ++j) {
                  const int64_t y = h + i - r, x = w + j - r;
                  if (y < 0 || y >= c.H || x < 0 || x >= c.W) continue;  // zero padding
                  z += static_cast<double>(in[0].at(((b * c.H + y) * c.W + x) * C + ch)) *
                       in[1].at((ch * K + (R - r + i)) * K + (R - r + j));
                }
              }
              if (gelu) z = 0.5 * z * (1.0 + std::erf(z / std::sqrt(2.0)));
              // channel ch = s*P + q goes to q*S + s
              const int64_t s = ch / P, q = ch % P;
              want.f[pixel * C + q * S + s] = static_cast<float>(z);
            }
          }
        }
      }
      compare(name, got, want, half ? 2e-3 : 1e-5);
    }
  }
}

// VSSBlockTail's inputs for `rows` rows: Y's rows have a mean far from 0 (1, spread 2); the matrices are scaled so
// that the products are O(1).
std::vector<Buffer> vss_tail_inputs(int64_t rows, int64_t D, int64_t C, int64_t H, bool half, uint32_t seed) {
  const float proj = std::sqrt(3.0f / static_cast<float>(D)), fc1 = std::sqrt(3.0f / static_cast<float>(C)),
              fc2 = std::sqrt(3.0f / static_cast<float>(H));
  return {random_buffer(rows * D, half, &seed, 2.0f, 1.0f),  // Y
          random_buffer(rows * C, half, &seed, 1.0f),        // R
          random_buffer(D, half, &seed, 0.5f, 1.0f),         // out_norm_weight
          random_buffer(D, half, &seed, 0.2f),               // out_norm_bias
          random_buffer(D * C, half, &seed, proj),           // out_proj (D, C)
          random_buffer(C, half, &seed, 0.5f, 1.0f),         // norm_weight
          random_buffer(C, half, &seed, 0.2f),               // norm_bias
          random_buffer(C * H, half, &seed, fc1),            // fc1_weight (C, H)
          random_buffer(H, half, &seed, 0.1f),               // fc1_bias
          random_buffer(H * C, half, &seed, fc2),            // fc2_weight (H, C)
          random_buffer(C, half, &seed, 0.1f)};              // fc2_bias
}

// A float64 computation of docs/ops.md's formula from the (rounded) inputs, into want->f (rows x C):
//   a = round(LayerNorm(Y)), X1 = R + a @ out_proj (not rounded), b = round(LayerNorm(X1)),
//   g = round(GELU(b @ fc1_weight + fc1_bias)) (exact GELU), Z = X1 + g @ fc2_weight + fc2_bias,
// where round() rounds to the type (float16: the operands of the products, as the kernel feeds them to tensor
// cores; float32: nothing).
void vss_tail_reference(const std::vector<Buffer>& in, int64_t rows, int64_t D, int64_t C, int64_t H, double epsilon,
                        bool half, Buffer* want) {
  auto round_to_type = [half](double v) {
    return half ? static_cast<double>(__half2float(__float2half(static_cast<float>(v)))) : v;
  };
  // LayerNorm of n values (biased variance) with weight and bias, each result rounded to the type.
  auto layer_norm = [&](const double* x, int64_t n, const Buffer& weight, const Buffer& bias, double* out) {
    double mean = 0, var = 0;
    for (int64_t k = 0; k < n; ++k) mean += x[k];
    mean /= static_cast<double>(n);
    for (int64_t k = 0; k < n; ++k) var += (x[k] - mean) * (x[k] - mean);
    var /= static_cast<double>(n);
    const double inv = 1.0 / std::sqrt(var + epsilon);
    for (int64_t k = 0; k < n; ++k) out[k] = round_to_type((x[k] - mean) * inv * weight.at(k) + bias.at(k));
  };
  *want = zeros(rows * C, false);
  std::vector<double> y(D), a(D), x1(C), b(C), g(H);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t k = 0; k < D; ++k) y[k] = in[0].at(r * D + k);
    layer_norm(y.data(), D, in[2], in[3], a.data());
    for (int64_t j = 0; j < C; ++j) {
      double s = in[1].at(r * C + j);
      for (int64_t k = 0; k < D; ++k) s += a[k] * in[4].at(k * C + j);
      x1[j] = s;
    }
    layer_norm(x1.data(), C, in[5], in[6], b.data());
    for (int64_t h = 0; h < H; ++h) {
      double v = in[8].at(h);
      for (int64_t j = 0; j < C; ++j) v += b[j] * in[7].at(j * H + h);
      g[h] = round_to_type(0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0))));
    }
    for (int64_t j = 0; j < C; ++j) {
      double z = x1[j] + in[10].at(j);
      for (int64_t h = 0; h < H; ++h) z += g[h] * in[9].at(h * C + j);
      want->f[r * C + j] = static_cast<float>(z);
    }
  }
}

// The VSSBlockTail cases of the GPU mode.
struct VssTailCase {
  const char* name;
  std::vector<int64_t> lead;  // Y's and R's leading dims (the rows)
  int64_t D, C, H;
  float epsilon;
};
const VssTailCase kVssTailCases[] = {
    // HRVMamba-like widths (D = 2C, H = 4C) on an image of 5x7 positions, batch 2 (rank 4).
    {"hrv_32", {2, 5, 7}, 64, 32, 128, 1e-5f},
    // 51 rows: not a multiple of the kernel's 16-row tile.
    {"rows_51", {3, 17}, 192, 96, 384, 1e-6f},
    // The largest widths: D = H = 1024, C = 512.
    {"limits", {20}, 1024, 512, 1024, 1e-5f},
    // Widths that are multiples of 8 but not of 16, and C > D.
    {"narrow", {33}, 24, 40, 72, 1e-3f},
    // Odd widths (no vector access).
    {"odd", {9}, 13, 7, 5, 1e-5f},
    // Rank 1: one row.
    {"one_row", {}, 80, 48, 200, 1e-5f},
    // D = C = H = 1: both LayerNorms give their bias.
    {"width_1", {3}, 1, 1, 1, 1e-5f},
};
// Tolerances, relative to the largest |Z|: float32 accumulates over up to 1024 terms (an operand rounded to TF32
// would exceed 1e-4); float16's Z is rounded (2^-11), and an intermediate that rounds the other way than in float64
// moves Z by much less.
constexpr double kVssTailTolF32 = 1e-4, kVssTailTolF16 = 2e-3;

// VSSBlockTail through the plugin's enqueue against vss_tail_reference. The output starts as NaNs, so that an
// unwritten element fails.
void gpu_vss_tail_cases() {
  std::string why;
  for (bool half : {false, true}) {
    for (const VssTailCase& c : kVssTailCases) {
      const int64_t rows = static_cast<int64_t>(numel(c.lead));  // 1 for rank 1
      std::vector<Buffer> in =
          vss_tail_inputs(rows, c.D, c.C, c.H, half, 23u + static_cast<uint32_t>(c.D * 3 + c.C * 5 + c.H * 7 + rows));
      Fields f;
      f.f32("epsilon", c.epsilon).cstr("plugin_version", "1").cstr("plugin_namespace", "ssmpose");
      auto p = vss_tail_plugin("g", f, nvinfer1::TensorRTPhase::kRUNTIME);
      const std::string name = std::string("gpu.vsstail_") + (half ? "f16_" : "f32_") + c.name;
      std::vector<float> got;
      if (!p || !run_on_gpu(p.get(), vss_tail_dims(c.lead, c.D, c.C, c.H), in, with_last(c.lead, c.C), half, &got,
                            &why)) {
        check(false, name, p ? why : last_error());
        continue;
      }
      Buffer want;
      vss_tail_reference(in, rows, c.D, c.C, c.H, static_cast<double>(c.epsilon), half, &want);
      compare(name, got, want, half ? kVssTailTolF16 : kVssTailTolF32);
    }
  }
}

int gpu_mode() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("skip gpu: no CUDA device\n");
    return 0;
  }
  CpuKernels cpu;
  if (!cpu_kernels(&cpu)) {
    std::printf("FAIL gpu.cpu_kernels: libssmpose_kernels.so not loadable (%s)\n", dlerror());
    return 1;
  }
  std::string why;
  check(cuda_kernels(&why) != nullptr, "gpu.cuda_kernels_loaded", why);
  for (bool half : {false, true}) {
    for (int32_t nin = 5; nin <= 7; ++nin) {
      const int64_t B = 2, G = 2, D = 3, N = 4, L = 37;
      uint32_t seed = 7u + nin;
      std::vector<Buffer> in = {random_buffer(B * G * D * L, half, &seed, 1.0f),
                                random_buffer(B * G * D * L, half, &seed, 0.5f),
                                random_buffer(G * D * N, half, &seed, 0.5f, -0.6f),
                                random_buffer(B * G * N * L, half, &seed, 1.0f),
                                random_buffer(B * G * N * L, half, &seed, 1.0f),
                                random_buffer(G * D, half, &seed, 1.0f), random_buffer(G * D, half, &seed, 0.1f)};
      in.resize(nin);
      std::vector<std::vector<int64_t>> dims = {{B, G * D, L}, {B, G * D, L}, {G * D, N}, {B, G, N, L},
                                                {B, G, N, L}, {G * D}, {G * D}};
      dims.resize(nin);
      Fields f;
      f.i32("delta_softplus", nin == 6 ? 0 : 1);
      auto p = as_plugin<SelectiveScanPlugin>(scan_creator().createPlugin("g", f.fc(), nvinfer1::TensorRTPhase::kRUNTIME));
      std::vector<float> got;
      const std::string name = std::string("gpu.scan_") + (half ? "f16_" : "f32_") + std::to_string(nin);
      if (!run_on_gpu(p.get(), dims, in, {B, G * D, L}, half, &got, &why)) {
        check(false, name, why);
        continue;
      }
      ssm_scan_shape s{B, G, D, N, L, nin == 6 ? 0 : 1, half ? SSM_FLOAT16 : SSM_FLOAT32};
      Buffer want = zeros(B * G * D * L, half);
      const int rc = cpu.scan(&s, in[0].host(), in[1].host(), in[2].host(), in[3].host(), in[4].host(),
                              nin > 5 ? in[5].host() : nullptr, nin > 6 ? in[6].host() : nullptr,
                              half ? static_cast<void*>(want.h.data()) : want.f.data(), 1);
      if (rc != 0) {
        check(false, name, "CPU kernel failed");
        continue;
      }
      compare(name, got, want, half ? 2e-3 : 1e-5);
    }
    // SelectiveScan2D: a non-square image (the column-major directions differ from the row-major ones), 5, 6 and 7
    // inputs.
    for (int32_t nin = 5; nin <= 7; ++nin) {
      const int64_t B = 2, H = 5, W = 7, D = 6, N = 4;
      uint32_t seed = 31u + nin;
      std::vector<Buffer> in = {random_buffer(B * H * W * D, half, &seed, 1.0f),
                                random_buffer(B * H * W * 4 * D, half, &seed, 0.5f),
                                random_buffer(4 * D * N, half, &seed, 0.5f, -0.6f),
                                random_buffer(B * H * W * 4 * N, half, &seed, 1.0f),
                                random_buffer(B * H * W * 4 * N, half, &seed, 1.0f),
                                random_buffer(4 * D, half, &seed, 1.0f), random_buffer(4 * D, half, &seed, 0.1f)};
      in.resize(nin);
      std::vector<std::vector<int64_t>> dims = scan2d_dims(B, H, W, D, N);
      dims.resize(nin);
      Fields f;
      f.i32("delta_softplus", nin == 6 ? 0 : 1).i32("directions", 4);
      auto p = scan2d_plugin("g", f, nvinfer1::TensorRTPhase::kRUNTIME);
      std::vector<float> got;
      const std::string name = std::string("gpu.scan2d_") + (half ? "f16_" : "f32_") + std::to_string(nin);
      if (!run_on_gpu(p.get(), dims, in, {B, H, W, D}, half, &got, &why)) {
        check(false, name, why);
        continue;
      }
      ssm_scan2d_shape s{B, H, W, D, 4, N, nin == 6 ? 0 : 1, half ? SSM_FLOAT16 : SSM_FLOAT32};
      Buffer want = zeros(B * H * W * D, half);
      const int rc = cpu.scan2d(&s, in[0].host(), in[1].host(), in[2].host(), in[3].host(), in[4].host(),
                                nin > 5 ? in[5].host() : nullptr, nin > 6 ? in[6].host() : nullptr,
                                half ? static_cast<void*>(want.h.data()) : want.f.data(), 1);
      if (rc != 0) {
        check(false, name, "CPU kernel failed");
        continue;
      }
      compare(name, got, want, half ? 2e-3 : 1e-5);
    }
    // DeformAggregate: 3x3, stride 2, pad 1, dilation 1, G=2, C=8, P padded to 56 (>= 2*9*3 = 54), scale 0.75.
    const int64_t B = 2, H = 9, W = 7, G = 2, C = 8, P = 56;
    const int64_t Ho = deform_out_size(H, 3, 2, 1, 1), Wo = deform_out_size(W, 3, 2, 1, 1);
    uint32_t seed = 99u;
    std::vector<Buffer> in = {random_buffer(B * H * W * G * C, half, &seed, 1.0f),
                              random_buffer(B * Ho * Wo * P, half, &seed, 1.5f)};
    Fields f = deform_fields(3, 3, 2, 2, 1, 1, 1, 1, G, C, 0.75f, 0);
    auto p = as_plugin<DeformAggregatePlugin>(deform_creator().createPlugin("g", f.fc(), nvinfer1::TensorRTPhase::kRUNTIME));
    std::vector<float> got;
    const std::string name = std::string("gpu.deform_") + (half ? "f16" : "f32");
    if (!run_on_gpu(p.get(), {{B, H, W, G * C}, {B, Ho, Wo, P}}, in, {B, Ho, Wo, G * C}, half, &got, &why)) {
      check(false, name, why);
      continue;
    }
    ssm_deform_shape s{};
    s.batch = B; s.height = H; s.width = W; s.out_height = Ho; s.out_width = Wo; s.groups = G; s.group_channels = C;
    s.offset_stride = P; s.kernel_h = 3; s.kernel_w = 3; s.stride_h = 2; s.stride_w = 2; s.pad_h = 1; s.pad_w = 1;
    s.dilation_h = 1; s.dilation_w = 1; s.remove_center = 0; s.offset_scale = 0.75f;
    s.dtype = half ? SSM_FLOAT16 : SSM_FLOAT32;
    Buffer want = zeros(B * Ho * Wo * G * C, half);
    if (cpu.deform(&s, in[0].host(), in[1].host(), half ? static_cast<void*>(want.h.data()) : want.f.data(), 1) != 0) {
      check(false, name, "CPU kernel failed");
      continue;
    }
    compare(name, got, want, half ? 2e-3 : 1e-5);
  }
  // LayerNorm: C = 32, 96 and 768, X of rank 1 to 3, a few epsilons; compared with a float64 reference of the same
  // (rounded) inputs computed here. X's rows have a mean far from 0 (3, spread 2).
  struct LayerNormCase {
    std::vector<int64_t> x;
    float epsilon;
  };
  const LayerNormCase ln_cases[] = {
      {{2, 5, 32}, 1e-5f}, {{7, 96}, 1e-3f}, {{2, 64, 96}, 1e-5f}, {{3, 4, 768}, 1e-6f}, {{768}, 1e-5f}};
  for (bool half : {false, true}) {
    for (const LayerNormCase& c : ln_cases) {
      const int64_t C = c.x.back();
      const int64_t rows = static_cast<int64_t>(numel(c.x)) / C;
      uint32_t seed = 5u + static_cast<uint32_t>(C + rows);
      std::vector<Buffer> in = {random_buffer(rows * C, half, &seed, 2.0f, 3.0f),
                                random_buffer(C, half, &seed, 0.5f, 1.0f), random_buffer(C, half, &seed, 0.2f)};
      Fields f;
      f.f32("epsilon", c.epsilon).str("plugin_version", "1").str("plugin_namespace", "ssmpose");
      auto p = layer_norm_plugin("g", f, nvinfer1::TensorRTPhase::kRUNTIME);
      std::string name = std::string("gpu.layernorm_") + (half ? "f16_" : "f32_");
      for (size_t i = 0; i < c.x.size(); ++i) name += (i ? "x" : "") + std::to_string(c.x[i]);
      std::vector<float> got;
      if (!p || !run_on_gpu(p.get(), layer_norm_dims(c.x), in, c.x, half, &got, &why)) {
        check(false, name, p ? why : last_error());
        continue;
      }
      Buffer want;
      layer_norm_reference(in[0], in[1], in[2], rows, C, static_cast<double>(c.epsilon), &want);
      compare(name, got, want, half ? 2e-3 : 1e-5);
    }
  }
  gpu_add_layer_norm_cases();
  gpu_dwconv_cases();
  gpu_vss_tail_cases();
  std::printf("passed %d failed %d\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
#endif  // SSMPOSE_TRT_TEST_CUDA

}  // namespace

int main(int argc, char** argv) {
  set_quiet(true);
  if (argc > 1 && std::strcmp(argv[1], "outsize") == 0) return outsize(argc, argv);
  if (argc > 1 && std::strcmp(argv[1], "scan2d") == 0) return scan2d_mode(argc, argv);
  if (argc > 1 && std::strcmp(argv[1], "layernorm") == 0) return layer_norm_mode(argc, argv);
  if (argc > 1 && std::strcmp(argv[1], "addlayernorm") == 0) return add_layer_norm_mode(argc, argv);
  if (argc > 1 && std::strcmp(argv[1], "dwconv") == 0) return dwconv_mode(argc, argv);
  if (argc > 1 && std::strcmp(argv[1], "vsstail") == 0) return vss_tail_mode(argc, argv);
  if (argc > 1 && std::strcmp(argv[1], "gpu") == 0) {
#if defined(SSMPOSE_TRT_TEST_CUDA)
    return gpu_mode();
#else
    std::printf("skip gpu: built without the CUDA runtime\n");
    return 0;
#endif
  }
  test_creators();
  test_scan_fields();
  test_deform_fields();
  test_capabilities();
  test_formats();
  test_scan_shapes();
  test_deform_shapes();
  test_configure_and_runtime();
  test_serialization();
  test_scan2d_fields();
  test_scan2d_plugin();
  test_scan2d_shapes();
  test_scan2d_configure_and_runtime();
  test_scan2d_serialization();
  test_layer_norm_fields();
  test_layer_norm_plugin();
  test_layer_norm_shapes();
  test_layer_norm_configure_and_runtime();
  test_layer_norm_serialization();
  test_add_layer_norm_fields();
  test_add_layer_norm_plugin();
  test_add_layer_norm_shapes();
  test_add_layer_norm_configure_and_runtime();
  test_add_layer_norm_serialization();
  test_dwconv_fields();
  test_dwconv_plugin();
  test_dwconv_shapes();
  test_dwconv_configure_and_runtime();
  test_dwconv_serialization();
  test_vss_tail_fields();
  test_vss_tail_plugin();
  test_vss_tail_shapes();
  test_vss_tail_configure_and_runtime();
  test_vss_tail_serialization();
  std::printf("passed %d failed %d\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
