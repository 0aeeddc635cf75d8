#include "trt_common.h"

#include <atomic>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <limits>

namespace ssmpose_trt {

using nvinfer1::DataType;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldType;

// ------------------------------------------------------------------------------------------------
// Errors

namespace {

std::atomic<nvinfer1::ILoggerFinder*> g_logger_finder{nullptr};
std::atomic<bool> g_quiet{false};

std::string& thread_last_error() {
  thread_local std::string message;
  return message;
}

}  // namespace

void set_logger_finder(nvinfer1::ILoggerFinder* finder) noexcept { g_logger_finder.store(finder); }
void set_quiet(bool quiet) noexcept { g_quiet.store(quiet); }
const std::string& last_error() noexcept { return thread_last_error(); }
void clear_last_error() noexcept { thread_last_error().clear(); }

void report_error(const std::string& message) noexcept {
  try {
    thread_last_error() = message;
  } catch (...) {
  }
  bool logged = false;
#if defined(SSMPOSE_TRT_HAVE_LOGGER_FINDER)
  // ILoggerFinder::findLogger and ILogger::log are virtual: no libnvinfer symbol is needed.
  if (nvinfer1::ILoggerFinder* finder = g_logger_finder.load()) {
    if (nvinfer1::ILogger* logger = finder->findLogger()) {
      logger->log(nvinfer1::ILogger::Severity::kERROR, message.c_str());
      logged = true;
    }
  }
#endif
  if (!logged && !g_quiet.load()) std::fprintf(stderr, "[ssmpose TensorRT plugin] %s\n", message.c_str());
}

// ------------------------------------------------------------------------------------------------
// Types and shapes

std::string shape_str(const std::vector<int64_t>& dims) {
  std::string s = "(";
  for (size_t i = 0; i < dims.size(); ++i) {
    if (i) s += ", ";
    s += dims[i] < 0 ? std::string("?") : std::to_string(dims[i]);
  }
  if (dims.size() == 1) s += ",";
  return s + ")";
}

const char* type_name(DataType type) noexcept {
  switch (type) {
    case DataType::kFLOAT: return "float32";
    case DataType::kHALF: return "float16";
    case DataType::kBF16: return "bfloat16";
    case DataType::kINT8: return "int8";
    case DataType::kINT32: return "int32";
    case DataType::kINT64: return "int64";
    case DataType::kBOOL: return "bool";
    case DataType::kUINT8: return "uint8";
    default: return "an unsupported type";
  }
}

bool to_ssm_dtype(DataType type, int32_t* dtype) noexcept {
  switch (type) {
    case DataType::kFLOAT: *dtype = SSM_FLOAT32; return true;
    case DataType::kHALF: *dtype = SSM_FLOAT16; return true;
    default: return false;
  }
}

bool checked_mul(int64_t a, int64_t b, int64_t* out) noexcept {
  if (a != 0 && b > INT64_MAX / a) return false;
  *out = a * b;
  return true;
}

std::vector<int64_t> dims_vec(const nvinfer1::Dims& dims) {
  std::vector<int64_t> v;
  const int32_t n = dims.nbDims < 0 ? 0 : (dims.nbDims > nvinfer1::Dims::MAX_DIMS ? nvinfer1::Dims::MAX_DIMS : dims.nbDims);
  for (int32_t i = 0; i < n; ++i) v.push_back(dims.d[i]);
  return v;
}

std::string dim_str(int64_t v) { return known(v) ? std::to_string(v) : std::string("?"); }

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

bool copy_exprs(const nvinfer1::DimsExprs& in, nvinfer1::DimsExprs* out) {
  if (in.nbDims < 0 || in.nbDims > nvinfer1::Dims::MAX_DIMS) return false;
  out->nbDims = in.nbDims;
  for (int32_t i = 0; i < in.nbDims; ++i) {
    if (in.d[i] == nullptr) return false;
    out->d[i] = in.d[i];
  }
  return true;
}

// ------------------------------------------------------------------------------------------------
// Fields

namespace {

const char* field_type_name(PluginFieldType t) {
  switch (t) {
    case PluginFieldType::kFLOAT16: return "float16";
    case PluginFieldType::kFLOAT32: return "float32";
    case PluginFieldType::kFLOAT64: return "float64";
    case PluginFieldType::kINT8: return "int8";
    case PluginFieldType::kINT16: return "int16";
    case PluginFieldType::kINT32: return "int32";
    case PluginFieldType::kINT64: return "int64";
    case PluginFieldType::kCHAR: return "char (string)";
    case PluginFieldType::kDIMS: return "dims";
    default: return "an unsupported type";
  }
}

// The integer at `index` of `f` (false if it is not an integer field). The data may be unaligned.
bool integer_value(const PluginField& f, int64_t* v, int32_t index = 0) {
  const char* p = static_cast<const char*>(f.data);
  switch (f.type) {
    case PluginFieldType::kINT8: {
      int8_t x;
      std::memcpy(&x, p + index * sizeof x, sizeof x);
      *v = x;
      return true;
    }
    case PluginFieldType::kINT16: {
      int16_t x;
      std::memcpy(&x, p + index * sizeof x, sizeof x);
      *v = x;
      return true;
    }
    case PluginFieldType::kINT32: {
      int32_t x;
      std::memcpy(&x, p + index * sizeof x, sizeof x);
      *v = x;
      return true;
    }
    case PluginFieldType::kINT64: {
      int64_t x;
      std::memcpy(&x, p + index * sizeof x, sizeof x);
      *v = x;
      return true;
    }
    default: return false;
  }
}

bool is_integer_type(PluginFieldType t) {
  return t == PluginFieldType::kINT8 || t == PluginFieldType::kINT16 || t == PluginFieldType::kINT32 ||
         t == PluginFieldType::kINT64;
}

}  // namespace

const PluginField* FieldReader::find(const char* name) const {
  if (fc_ == nullptr || fc_->fields == nullptr) return nullptr;
  for (int32_t i = 0; i < fc_->nbFields; ++i) {
    const PluginField& f = fc_->fields[i];
    if (f.name != nullptr && std::strcmp(f.name, name) == 0) return &f;
  }
  return nullptr;
}

bool FieldReader::get_int(const char* name, bool required, int64_t def, int64_t lo, int64_t hi, int64_t* out,
                          std::string* err) const {
  const PluginField* f = find(name);
  if (f == nullptr) {
    if (required) {
      *err = std::string(op_) + ": missing required field '" + name + "' (int)";
      return false;
    }
    *out = def;
    return true;
  }
  if (f->data == nullptr || f->length != 1) {
    *err = std::string(op_) + ": field '" + name + "' must hold one value, got " +
           (f->data == nullptr ? std::string("no data") : std::to_string(f->length) + " values");
    return false;
  }
  int64_t v = 0;
  if (!integer_value(*f, &v)) {
    *err = std::string(op_) + ": field '" + name + "' must be an integer, got " + field_type_name(f->type);
    return false;
  }
  if (v < lo || v > hi) {
    *err = std::string(op_) + ": field " + name + " must be in [" + std::to_string(lo) + ", " + std::to_string(hi) +
           "], got " + std::to_string(v);
    return false;
  }
  *out = v;
  return true;
}

bool FieldReader::get_float(const char* name, bool required, float def, float* out, std::string* err) const {
  const PluginField* f = find(name);
  if (f == nullptr) {
    if (required) {
      *err = std::string(op_) + ": missing required field '" + name + "' (float)";
      return false;
    }
    *out = def;
    return true;
  }
  if (f->data == nullptr || f->length != 1) {
    *err = std::string(op_) + ": field '" + name + "' must hold one value, got " +
           (f->data == nullptr ? std::string("no data") : std::to_string(f->length) + " values");
    return false;
  }
  double v = 0;
  int64_t i = 0;
  if (f->type == PluginFieldType::kFLOAT32) {
    v = *static_cast<const float*>(f->data);
  } else if (f->type == PluginFieldType::kFLOAT64) {
    v = *static_cast<const double*>(f->data);
  } else if (integer_value(*f, &i)) {
    v = static_cast<double>(i);
  } else {
    *err = std::string(op_) + ": field '" + name + "' must be a float, got " + field_type_name(f->type);
    return false;
  }
  if (!std::isfinite(v) || std::fabs(v) > std::numeric_limits<float>::max()) {
    *err = std::string(op_) + ": field '" + name + "' must be a finite float32 value";
    return false;
  }
  *out = static_cast<float>(v);
  return true;
}

bool FieldReader::get_ints(const char* name, bool required, int32_t min_count, int32_t max_count,
                           std::vector<int64_t>* out, std::string* err) const {
  out->clear();
  const PluginField* f = find(name);
  if (f == nullptr) {
    if (required) {
      *err = std::string(op_) + ": missing required field '" + name + "' (ints)";
      return false;
    }
    return true;
  }
  if (!is_integer_type(f->type)) {
    *err = std::string(op_) + ": field '" + name + "' must hold integers, got " + field_type_name(f->type);
    return false;
  }
  const int32_t n = f->data == nullptr ? 0 : f->length;
  if (n < min_count || n > max_count) {
    *err = std::string(op_) + ": field '" + name + "' must hold " + std::to_string(min_count) + " to " +
           std::to_string(max_count) + " values, got " +
           (f->data == nullptr ? std::string("no data") : std::to_string(f->length) + " values");
    return false;
  }
  for (int32_t i = 0; i < n; ++i) {
    int64_t v = 0;
    integer_value(*f, &v, i);
    out->push_back(v);
  }
  return true;
}

bool FieldReader::get_string(const char* name, bool required, const char* def, std::string* out,
                             std::string* err) const {
  const PluginField* f = find(name);
  if (f == nullptr) {
    if (required) {
      *err = std::string(op_) + ": missing required field '" + name + "' (string)";
      return false;
    }
    *out = def;
    return true;
  }
  if (f->type != PluginFieldType::kCHAR) {
    *err = std::string(op_) + ": field '" + name + "' must be a string (char), got " + field_type_name(f->type);
    return false;
  }
  if (f->length < 0 || (f->data == nullptr && f->length != 0)) {
    *err = std::string(op_) + ": field '" + name + "' has no data for its length " + std::to_string(f->length);
    return false;
  }
  const char* p = static_cast<const char*>(f->data);
  const size_t length = p == nullptr ? 0 : static_cast<size_t>(f->length);
  const void* nul = length == 0 ? nullptr : std::memchr(p, '\0', length);
  out->assign(p == nullptr ? "" : p, nul != nullptr ? static_cast<size_t>(static_cast<const char*>(nul) - p) : length);
  return true;
}

std::string quoted(const std::string& text) {
  std::string q = "\"";
  for (size_t i = 0; i < text.size() && i < 64; ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    q += c >= 0x20 && c < 0x7f ? static_cast<char>(c) : '?';
  }
  if (text.size() > 64) q += "...";
  return q + "\"";
}

std::string list_str(const std::vector<int64_t>& values) {
  std::string s = "[";
  for (size_t i = 0; i < values.size(); ++i) s += (i ? ", " : "") + std::to_string(values[i]);
  return s + "]";
}

void FieldWriter::clear() {
  ints_.clear();
  floats_.clear();
  strings_.clear();
  fields_.clear();
}

void FieldWriter::add_int(const char* name, int32_t value) { add_ints(name, {value}); }

void FieldWriter::add_ints(const char* name, const std::vector<int32_t>& values) {
  ints_.push_back(values);  // a deque: the earlier elements, which earlier fields point into, stay in place
  fields_.emplace_back(name, ints_.back().data(), PluginFieldType::kINT32, static_cast<int32_t>(values.size()));
}

void FieldWriter::add_float(const char* name, float value) {
  floats_.push_back(value);
  fields_.emplace_back(name, &floats_.back(), PluginFieldType::kFLOAT32, 1);
}

void FieldWriter::add_string(const char* name, const std::string& value) {
  strings_.push_back(value);
  // As TensorRT's ONNX parser passes a STRING attribute: the bytes and a terminating NUL.
  fields_.emplace_back(name, strings_.back().c_str(), PluginFieldType::kCHAR,
                       static_cast<int32_t>(value.size() + 1));
}

const nvinfer1::PluginFieldCollection* FieldWriter::collection() {
  fc_.nbFields = static_cast<int32_t>(fields_.size());
  fc_.fields = fields_.data();
  return &fc_;
}

// ------------------------------------------------------------------------------------------------
// PluginBase

nvinfer1::IPluginCapability* PluginBase::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept {
  switch (type) {
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
  }
  return nullptr;
}

bool PluginBase::fail(const std::string& problem) const {
  std::string where = op_;
  if (!layer_name_.empty()) where += " (layer '" + layer_name_ + "')";
  // Messages from the shape rules already start with the op name.
  const std::string prefix = std::string(op_) + ": ";
  const std::string text = problem.compare(0, prefix.size(), prefix) == 0 ? problem.substr(prefix.size()) : problem;
  report_error(where + ": " + text);
  return false;
}

bool PluginBase::check_counts(int32_t nbInputs, int32_t nbOutputs) const {
  if (nbInputs < min_inputs_ || nbInputs > max_inputs_) {
    return fail("takes " + std::to_string(min_inputs_) +
                (min_inputs_ == max_inputs_ ? std::string() : " to " + std::to_string(max_inputs_)) +
                " inputs, got " + std::to_string(nbInputs));
  }
  if (nbOutputs != nb_outputs_) {
    return fail("has " + std::to_string(nb_outputs_) + (nb_outputs_ == 1 ? " output" : " outputs") + ", got " +
                std::to_string(nbOutputs));
  }
  return true;
}

std::string PluginBase::output_label(int32_t index) const {
  return nb_outputs_ == 1 ? std::string("output") : std::string("output '") + output_name(index) + "'";
}

bool PluginBase::check_types(const DataType* types, int32_t nbInputs) const {
  int32_t dtype = 0;
  if (!to_ssm_dtype(types[0], &dtype)) {
    return fail(std::string(input_name(0)) + " has element type " + type_name(types[0]) +
                "; supported: float32, float16");
  }
  for (int32_t i = 1; i < nbInputs; ++i) {
    if (types[i] != types[0]) {
      return fail(std::string("input '") + input_name(i) + "' has element type " + type_name(types[i]) + ", but '" +
                  input_name(0) + "' has " + type_name(types[0]) + "; all inputs must share one type");
    }
  }
  return true;
}

int32_t PluginBase::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, const DataType* inputTypes,
                                       int32_t nbInputs) const noexcept {
  try {
    if (!check_counts(nbInputs, nbOutputs) || !check_types(inputTypes, nbInputs)) return -1;
    for (int32_t j = 0; j < nbOutputs; ++j) outputTypes[j] = inputTypes[0];  // the outputs take the first input's
    return 0;
  } catch (const std::exception& e) {
    report_error(std::string(op_) + ": " + e.what());
  } catch (...) {
    report_error(std::string(op_) + ": unknown error in getOutputDataTypes");
  }
  return -1;
}

bool PluginBase::supportsFormatCombination(int32_t pos, const nvinfer1::DynamicPluginTensorDesc* inOut,
                                           int32_t nbInputs, int32_t nbOutputs) noexcept {
  // Dense row-major tensors only (the kernels' layout); float32 or float16 chosen by the first input, every other
  // input and the outputs in the same type. TensorRT asks position by position, with 0..pos-1 already decided.
  if (inOut == nullptr || pos < 0 || pos >= nbInputs + nbOutputs) return false;
  const nvinfer1::PluginTensorDesc& d = inOut[pos].desc;
  if (d.format != nvinfer1::TensorFormat::kLINEAR) return false;
  if (pos == 0) return d.type == DataType::kFLOAT || d.type == DataType::kHALF;
  return d.type == inOut[0].desc.type;
}

int32_t PluginBase::configurePlugin(const nvinfer1::DynamicPluginTensorDesc* in, int32_t nbInputs,
                                    const nvinfer1::DynamicPluginTensorDesc* out, int32_t nbOutputs) noexcept {
  try {
    if (!check_counts(nbInputs, nbOutputs)) return -1;
    std::vector<DataType> types;
    std::vector<std::vector<int64_t>> dims;
    for (int32_t i = 0; i < nbInputs; ++i) {
      types.push_back(in[i].desc.type);
      dims.push_back(dims_vec(in[i].desc.dims));
    }
    if (!check_types(types.data(), nbInputs)) return -1;
    for (int32_t j = 0; j < nbOutputs; ++j) {
      if (out[j].desc.type != in[0].desc.type) {
        fail(output_label(j) + " has element type " + type_name(out[j].desc.type) + ", expected " +
             type_name(in[0].desc.type));
        return -1;
      }
    }
    std::vector<int64_t> expected;
    std::string err;
    // Dimensions that vary over the optimisation profile are -1 here; they are checked in onShapeChange.
    if (!infer_shape(dims, &expected, &err)) return fail(err), -1;
    nb_inputs_ = nbInputs;
    return 0;
  } catch (const std::exception& e) {
    report_error(std::string(op_) + ": " + e.what());
  } catch (...) {
    report_error(std::string(op_) + ": unknown error in configurePlugin");
  }
  return -1;
}

int32_t PluginBase::getOutputShapes(const nvinfer1::DimsExprs* inputs, int32_t nbInputs,
                                    const nvinfer1::DimsExprs* /*shapeInputs*/, int32_t nbShapeInputs,
                                    nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                                    nvinfer1::IExprBuilder& exprBuilder) noexcept {
  try {
    if (!check_counts(nbInputs, nbOutputs)) return -1;
    if (nbShapeInputs != 0) return fail("takes no shape inputs, got " + std::to_string(nbShapeInputs)), -1;
    // Ranks and the dimensions known at network-definition time go through the same rules as at run time.
    std::vector<std::vector<int64_t>> dims;
    for (int32_t i = 0; i < nbInputs; ++i) {
      std::vector<int64_t> d;
      for (int32_t k = 0; k < inputs[i].nbDims && k < nvinfer1::Dims::MAX_DIMS; ++k) {
        const nvinfer1::IDimensionExpr* e = inputs[i].d[k];
        d.push_back(e != nullptr && e->isConstant() ? e->getConstantValue() : -1);
      }
      dims.push_back(d);
    }
    std::vector<int64_t> expected;
    std::string err;
    if (!infer_shape(dims, &expected, &err)) return fail(err), -1;
    if (!output_exprs(inputs, &outputs[0], exprBuilder)) return fail("could not build the output shape"), -1;
    for (int32_t j = 1; j < nbOutputs; ++j) outputs[j] = outputs[0];  // every output has the first one's shape
    return 0;
  } catch (const std::exception& e) {
    report_error(std::string(op_) + ": " + e.what());
  } catch (...) {
    report_error(std::string(op_) + ": unknown error in getOutputShapes");
  }
  return -1;
}

int32_t PluginBase::onShapeChange(const nvinfer1::PluginTensorDesc* in, int32_t nbInputs,
                                  const nvinfer1::PluginTensorDesc* out, int32_t nbOutputs) noexcept {
  try {
    if (!check_counts(nbInputs, nbOutputs)) return -1;
    std::vector<DataType> types;
    std::vector<std::vector<int64_t>> dims;
    for (int32_t i = 0; i < nbInputs; ++i) {
      types.push_back(in[i].type);
      dims.push_back(dims_vec(in[i].dims));
      for (int64_t v : dims.back()) {
        if (v < 0) return fail(std::string("input '") + input_name(i) + "' has unresolved shape " +
                               shape_str(dims.back()) + " at run time"), -1;
      }
    }
    if (!check_types(types.data(), nbInputs)) return -1;
    std::vector<int64_t> expected;
    std::string err;
    if (!infer_shape(dims, &expected, &err)) return fail(err), -1;
    for (int32_t j = 0; j < nbOutputs; ++j) {
      const std::vector<int64_t> got = dims_vec(out[j].dims);
      if (got != expected) {
        return fail(output_label(j) + " shape " + shape_str(got) + " != expected " + shape_str(expected)), -1;
      }
    }
    int32_t dtype = 0;
    to_ssm_dtype(types[0], &dtype);
    nb_inputs_ = nbInputs;
    prepare(dims, dtype);
    return 0;
  } catch (const std::exception& e) {
    report_error(std::string(op_) + ": " + e.what());
  } catch (...) {
    report_error(std::string(op_) + ": unknown error in onShapeChange");
  }
  return -1;
}

int32_t PluginBase::enqueue(const nvinfer1::PluginTensorDesc* /*inputDesc*/,
                            const nvinfer1::PluginTensorDesc* /*outputDesc*/, const void* const* inputs,
                            void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept {
  try {
    if (empty_output_) return 0;  // nothing to compute
    std::string error;
    const CudaKernels* cuda = cuda_kernels(&error);
    if (cuda == nullptr) return fail(error), -1;
    const char* kernel = "the CUDA kernel";
    const int status = launch(*cuda, inputs, outputs, static_cast<void*>(stream), &kernel);
    if (status != SSM_OK) {
      fail(std::string(kernel) + " failed with status " + std::to_string(status) + " (" +
           cuda->status_string(status) + ")");
      return -1;
    }
    return 0;
  } catch (const std::exception& e) {
    report_error(std::string(op_) + ": " + e.what());
  } catch (...) {
    report_error(std::string(op_) + ": unknown error in enqueue");
  }
  return -1;
}

nvinfer1::IPluginV3* PluginBase::attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept {
  return clone();  // no per-context resources: an independent copy per execution context
}

const nvinfer1::PluginFieldCollection* PluginBase::getFieldsToSerialize() noexcept {
  try {
    serialized_.clear();
    write_fields(&serialized_);
    return serialized_.collection();
  } catch (...) {
    report_error(std::string(op_) + ": out of memory in getFieldsToSerialize");
    return nullptr;
  }
}

// ------------------------------------------------------------------------------------------------
// CreatorBase

void CreatorBase::add_field(const char* name, PluginFieldType type, int32_t length) {
  fields_.emplace_back(name, nullptr, type, length);
  fc_.nbFields = static_cast<int32_t>(fields_.size());
  fc_.fields = fields_.data();
}

void CreatorBase::report_refusal(const char* name, const std::string& err) const {
  const std::string layer = name != nullptr && *name ? std::string(" (layer '") + name + "')" : std::string();
  const std::string prefix = std::string(op_) + ":";
  const std::string problem = err.compare(0, prefix.size(), prefix) == 0 ? err.substr(std::string(op_).size())
                                                                          : ": " + err;
  report_error(std::string(op_) + layer + problem);
}

}  // namespace ssmpose_trt
