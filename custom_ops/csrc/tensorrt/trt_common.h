// Shared plumbing of the ssmpose TensorRT plugins: error reporting, plugin-field parsing, type and shape helpers,
// the lazily loaded CUDA kernels, a base class holding what every IPluginV3 plugin has in common, and one for
// their creators.
//
// Nothing here needs a symbol of libnvinfer: the plugins only implement TensorRT's interfaces, and every
// TensorRT method they call (IExprBuilder, ILogger, ILoggerFinder) is inline or virtual. The library links with
// -Wl,--no-undefined and without libnvinfer, so a stray dependency fails the link.
#ifndef SSMPOSE_TRT_COMMON_H
#define SSMPOSE_TRT_COMMON_H

#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <string>
#include <vector>

#include "NvInferRuntime.h"
#include "ssmpose_kernels.h"

// Bump when the plugins' interface (names, fields, inputs, serialised fields) or the entry points change.
// 2: adds SelectiveScan2D (ssmpose domain version 2). 3: adds LayerNorm (ssmpose domain version 3). 4: adds
// AddLayerNorm and MultiKernelDepthwiseConv (ssmpose domain version 4; kernel ABI 3). 5: DeformAggregate's optional
// offset_bias input and activation field (ssmpose domain version 5; kernel ABI 4). 6: adds VSSBlockTail (ssmpose
// domain version 7; kernel ABI 6).
#define SSMPOSE_TRT_LIBRARY_VERSION 6

namespace nvinfer1 {
class ILoggerFinder;  // declared by TensorRT's full headers (NvInferRuntimeCommon.h); only passed through here
}

namespace ssmpose_trt {

constexpr const char* kPluginNamespace = "ssmpose";  // DESIGN.md section 4: plugin_namespace of every node
constexpr const char* kPluginVersion = "1";          // plugin_version of every node

// ------------------------------------------------------------------------------------------------
// Errors. Every entry point TensorRT calls is noexcept; failures are reported here (to TensorRT's logger when the
// library was loaded through IPluginRegistry::loadLibrary / trtexec --dynamicPlugins, else to stderr) and
// signalled to TensorRT through the method's return value.

void report_error(const std::string& message) noexcept;
// The last message reported on this thread (the unit tests read it); empty if none.
const std::string& last_error() noexcept;
void clear_last_error() noexcept;
// Unit tests: keep messages off stderr (they are still recorded for last_error()).
void set_quiet(bool quiet) noexcept;
void set_logger_finder(nvinfer1::ILoggerFinder* finder) noexcept;

// "(2, 3, 4)"; a dimension not known yet (-1) prints as "?".
std::string shape_str(const std::vector<int64_t>& dims);
const char* type_name(nvinfer1::DataType type) noexcept;
// ssm_dtype of a TensorRT type; false when the kernels do not take it (only float32 and float16 are offered).
bool to_ssm_dtype(nvinfer1::DataType type, int32_t* dtype) noexcept;
bool checked_mul(int64_t a, int64_t b, int64_t* out) noexcept;  // a, b >= 0; false on overflow

std::vector<int64_t> dims_vec(const nvinfer1::Dims& dims);

// Shape rules at build time work on dims where -1 means "not known yet".
inline bool known(int64_t v) { return v >= 0; }
// The dim as text, "?" when not known.
std::string dim_str(int64_t v);
// Two dims that must be equal: false if both are known and differ; *merged gets the known one (or -1).
bool unify(int64_t a, int64_t b, int64_t* merged);
// "[3, 5, 7]" (the values of an array field).
std::string list_str(const std::vector<int64_t>& values);
// A field's string value for a message: in double quotes, non-printable bytes as '?', cut after 64 bytes.
std::string quoted(const std::string& text);
// Same rank and no two known dims that differ.
bool same_shape(const std::vector<int64_t>& a, const std::vector<int64_t>& b);
// *out = the dimension expressions of `in` (an output of an input's shape); false if one is missing.
bool copy_exprs(const nvinfer1::DimsExprs& in, nvinfer1::DimsExprs* out);

// ------------------------------------------------------------------------------------------------
// Plugin fields (the ONNX attributes, by the same names). The ONNX parser hands INT attributes as kINT32 and FLOAT
// attributes as kFLOAT32; any integer or floating field type of length 1 is accepted, as other producers (the
// network API, Polygraphy, torch-tensorrt) may use kINT64 or kFLOAT64. INTS attributes come as kINT32 with one
// entry per value (any integer type is accepted), STRING attributes as kCHAR whose length counts the bytes and,
// from the ONNX parser, a terminating NUL (with or without it is accepted). Fields not named here are ignored.

class FieldReader {
 public:
  FieldReader(const char* op, const nvinfer1::PluginFieldCollection* fc) : op_(op), fc_(fc) {}
  // Integer field `name` in [lo, hi]; `def` when absent and not required. False (message in *err) otherwise.
  bool get_int(const char* name, bool required, int64_t def, int64_t lo, int64_t hi, int64_t* out,
               std::string* err) const;
  // Float field `name` (an integer field is converted, as the ONNX Runtime adapter accepts an int attribute).
  bool get_float(const char* name, bool required, float def, float* out, std::string* err) const;
  // Integer array field `name` holding min_count..max_count values (not range-checked here). A missing field is
  // an error if required, else *out is left empty.
  bool get_ints(const char* name, bool required, int32_t min_count, int32_t max_count, std::vector<int64_t>* out,
                std::string* err) const;
  // String field `name` (kCHAR): its bytes up to the first NUL or its length; `def` when absent and not required.
  bool get_string(const char* name, bool required, const char* def, std::string* out, std::string* err) const;

 private:
  const nvinfer1::PluginField* find(const char* name) const;
  const char* op_;
  const nvinfer1::PluginFieldCollection* fc_;
};

// Owns the values behind the PluginFieldCollection returned by getFieldsToSerialize / getFieldNames.
class FieldWriter {
 public:
  FieldWriter() = default;
  // A copy starts empty: the fields of the original point into the original's storage.
  FieldWriter(const FieldWriter&) {}
  FieldWriter& operator=(const FieldWriter&) {
    clear();
    return *this;
  }
  void clear();
  void add_int(const char* name, int32_t value);
  void add_ints(const char* name, const std::vector<int32_t>& values);  // kINT32, one entry per value
  void add_float(const char* name, float value);
  void add_string(const char* name, const std::string& value);  // kCHAR, length counting a terminating NUL
  const nvinfer1::PluginFieldCollection* collection();

 private:
  // One element per field; a deque keeps the earlier elements in place as it grows, so the fields' pointers stay
  // valid.
  std::deque<std::vector<int32_t>> ints_;
  std::deque<float> floats_;
  std::deque<std::string> strings_;
  std::vector<nvinfer1::PluginField> fields_;
  nvinfer1::PluginFieldCollection fc_{};
};

// ------------------------------------------------------------------------------------------------
// CUDA kernels, from libssmpose_kernels_cuda.so (dlopen()ed on first use from this library's own folder, then by
// name through the loader's search path).

struct CudaKernels {
  const char* (*status_string)(int) = nullptr;
  int (*selective_scan_fwd)(const ssm_scan_shape*, const void*, const void*, const void*, const void*, const void*,
                            const void*, const void*, void*, void*) = nullptr;
  int (*selective_scan_2d_fwd)(const ssm_scan2d_shape*, const void*, const void*, const void*, const void*,
                               const void*, const void*, const void*, void*, void*) = nullptr;
  int (*deform_aggregate_fwd)(const ssm_deform_shape*, const void*, const void*, const void*, void*,
                              void*) = nullptr;
  int (*layer_norm_fwd)(const ssm_layer_norm_shape*, const void*, const void*, const void*, void*, void*) = nullptr;
  int (*add_layer_norm_fwd)(const ssm_layer_norm_shape*, const void*, const void*, const void*, const void*, void*,
                            void*, void*) = nullptr;
  int (*depthwise_conv_fwd)(const ssm_dwconv_shape*, const void*, const void*, const void*, void*, void*) = nullptr;
  int (*vss_block_tail_fwd)(const ssm_vss_tail_shape*, const void*, const void*, const ssm_vss_tail_params*, void*,
                            void*) = nullptr;
};

// The loaded kernels, or NULL with the reason in *error.
const CudaKernels* cuda_kernels(std::string* error) noexcept;

// ------------------------------------------------------------------------------------------------
// What every plugin shares: its outputs (one, or more of one shape: AddLayerNorm's Y and S) of the first input's
// type, linear formats, float32/float16, no workspace, validation of shapes at every stage (build:
// configurePlugin, getOutputShapes; run: onShapeChange), and enqueue of one CUDA kernel (nothing for an empty
// output).

class PluginBase : public nvinfer1::IPluginV3,
                   public nvinfer1::IPluginV3OneCore,
                   public nvinfer1::IPluginV3OneBuild,
                   public nvinfer1::IPluginV3OneRuntime {
 public:
  PluginBase(const char* op, std::string layer_name, int32_t min_inputs, int32_t max_inputs, int32_t nb_outputs = 1)
      : op_(op),
        layer_name_(std::move(layer_name)),
        min_inputs_(min_inputs),
        max_inputs_(max_inputs),
        nb_outputs_(nb_outputs) {}
  ~PluginBase() override = default;

  // IPluginV3
  nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;

  // IPluginV3OneCore
  const char* getPluginName() const noexcept override { return op_; }
  const char* getPluginVersion() const noexcept override { return kPluginVersion; }
  const char* getPluginNamespace() const noexcept override { return kPluginNamespace; }

  // IPluginV3OneBuild
  int32_t configurePlugin(const nvinfer1::DynamicPluginTensorDesc* in, int32_t nbInputs,
                          const nvinfer1::DynamicPluginTensorDesc* out, int32_t nbOutputs) noexcept override;
  int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs, const nvinfer1::DataType* inputTypes,
                             int32_t nbInputs) const noexcept override;
  int32_t getOutputShapes(const nvinfer1::DimsExprs* inputs, int32_t nbInputs, const nvinfer1::DimsExprs* shapeInputs,
                          int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                          nvinfer1::IExprBuilder& exprBuilder) noexcept override;
  bool supportsFormatCombination(int32_t pos, const nvinfer1::DynamicPluginTensorDesc* inOut, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override;
  int32_t getNbOutputs() const noexcept override { return nb_outputs_; }
  size_t getWorkspaceSize(const nvinfer1::DynamicPluginTensorDesc*, int32_t, const nvinfer1::DynamicPluginTensorDesc*,
                          int32_t) const noexcept override {
    return 0;
  }

  // IPluginV3OneRuntime
  int32_t enqueue(const nvinfer1::PluginTensorDesc* inputDesc, const nvinfer1::PluginTensorDesc* outputDesc,
                  const void* const* inputs, void* const* outputs, void* workspace,
                  cudaStream_t stream) noexcept override;
  int32_t onShapeChange(const nvinfer1::PluginTensorDesc* in, int32_t nbInputs, const nvinfer1::PluginTensorDesc* out,
                        int32_t nbOutputs) noexcept override;
  nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
  const nvinfer1::PluginFieldCollection* getFieldsToSerialize() noexcept override;

  const std::string& layer_name() const { return layer_name_; }
  int32_t configured_inputs() const { return nb_inputs_; }

 protected:
  // Shape rules of the operator, on dims where -1 means "not known yet" (build time). Checks every relation whose
  // dimensions are known; on success fills *out, the shape of every output (entries may be -1). Returns false with
  // the problem in *err.
  virtual bool infer_shape(const std::vector<std::vector<int64_t>>& in, std::vector<int64_t>* out,
                           std::string* err) const = 0;
  // The output dims as expressions of the input dims (ranks and known values already checked by infer_shape); the
  // other outputs, if any, get the same expressions.
  virtual bool output_exprs(const nvinfer1::DimsExprs* inputs, nvinfer1::DimsExprs* out,
                            nvinfer1::IExprBuilder& builder) const = 0;
  // Concrete shapes at run time (all dims known and checked by infer_shape): prepare the kernel call.
  virtual void prepare(const std::vector<std::vector<int64_t>>& in, int32_t dtype) = 0;
  // Runs the operator's CUDA kernel (on the shapes prepared last) on `stream`: returns its ssm_status and names the
  // kernel function in *kernel, for the message.
  virtual int launch(const CudaKernels& cuda, const void* const* inputs, void* const* outputs, void* stream,
                     const char** kernel) const = 0;
  virtual void write_fields(FieldWriter* w) const = 0;
  // The input names, for messages.
  virtual const char* input_name(int32_t index) const = 0;
  // The output names, for messages of plugins with several outputs.
  virtual const char* output_name(int32_t /*index*/) const { return "?"; }

  bool fail(const std::string& problem) const;  // reports "<Op> [layer]: <problem>"; returns false
  bool check_counts(int32_t nbInputs, int32_t nbOutputs) const;
  bool check_types(const nvinfer1::DataType* types, int32_t nbInputs) const;
  // "output", or "output 'S'" when there are several.
  std::string output_label(int32_t index) const;

  const char* op_;
  std::string layer_name_;
  int32_t min_inputs_, max_inputs_;
  int32_t nb_outputs_;
  int32_t nb_inputs_ = 0;     // from configurePlugin / onShapeChange; enqueue reads the optional inputs by it
  bool empty_output_ = false; // set by prepare(): nothing to compute
  FieldWriter serialized_;
};

// clone() of a plugin: a copy, or NULL with a message when it cannot be made.
template <typename Plugin>
nvinfer1::IPluginV3* clone_plugin(const Plugin& plugin) noexcept {
  try {
    return new Plugin(plugin);
  } catch (...) {
    report_error(std::string(plugin.getPluginName()) + ": out of memory in clone");
    return nullptr;
  }
}

// ------------------------------------------------------------------------------------------------
// What every creator shares: name, version and namespace, the field names it declares (the ONNX attributes), and
// createPlugin: parse the fields, report a refusal naming the layer, construct the plugin.

class CreatorBase : public nvinfer1::IPluginCreatorV3One {
 public:
  const nvinfer1::PluginFieldCollection* getFieldNames() noexcept override { return &fc_; }
  const char* getPluginName() const noexcept override { return op_; }
  const char* getPluginVersion() const noexcept override { return kPluginVersion; }
  const char* getPluginNamespace() const noexcept override { return kPluginNamespace; }

 protected:
  explicit CreatorBase(const char* op) : op_(op) {}
  CreatorBase(const CreatorBase&) = delete;  // fc_ points into fields_
  CreatorBase& operator=(const CreatorBase&) = delete;
  // `length`: 1 for a scalar; for an array or string field, the most values it may hold (a string's NUL included).
  void add_field(const char* name, nvinfer1::PluginFieldType type, int32_t length = 1);

  // `parse` reads the fields into Attrs (messages start with the op name); the plugin is Plugin(name, attrs).
  template <typename Plugin, typename Attrs>
  nvinfer1::IPluginV3* create(const char* name, const nvinfer1::PluginFieldCollection* fc,
                              bool (*parse)(const nvinfer1::PluginFieldCollection*, Attrs*, std::string*)) const
      noexcept {
    try {
      Attrs attrs;
      std::string err;
      if (!parse(fc, &attrs, &err)) {
        report_refusal(name, err);
        return nullptr;
      }
      return new Plugin(name != nullptr ? name : "", attrs);
    } catch (const std::exception& e) {
      report_error(std::string(op_) + ": " + e.what());
    } catch (...) {
      report_error(std::string(op_) + ": unknown error in createPlugin");
    }
    return nullptr;
  }

 private:
  // "<Op> (layer '<name>'): <problem>" from a parse message "<Op>: <problem>".
  void report_refusal(const char* name, const std::string& err) const;

  const char* op_;
  std::vector<nvinfer1::PluginField> fields_;
  nvinfer1::PluginFieldCollection fc_{};
};

}  // namespace ssmpose_trt

#endif  // SSMPOSE_TRT_COMMON_H
