// Shared plumbing of the ONNX Runtime custom ops: the resolved OrtApi functions, error statuses, reading
// inputs and attributes with validation, allocating outputs, and the OrtCustomOp table entries.
//
// Nothing here throws across the C boundary: every entry point ONNX Runtime calls is noexcept and turns
// any C++ exception into an error status.
#ifndef SSMPOSE_ORT_COMMON_H
#define SSMPOSE_ORT_COMMON_H

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "ort_api.h"
#include "ssmpose_kernels.h"

namespace ssmpose_ort {

// The OrtApi members used, resolved from the function table ONNX Runtime hands out.
struct Api {
  OrtCreateStatusFn CreateStatus = nullptr;
  OrtGetErrorCodeFn GetErrorCode = nullptr;
  OrtGetErrorMessageFn GetErrorMessage = nullptr;
  OrtCreateCustomOpDomainFn CreateCustomOpDomain = nullptr;
  OrtCustomOpDomainAddFn CustomOpDomain_Add = nullptr;
  OrtAddCustomOpDomainFn AddCustomOpDomain = nullptr;
  OrtGetTensorMutableDataFn GetTensorMutableData = nullptr;
  OrtGetTensorElementTypeFn GetTensorElementType = nullptr;
  OrtGetDimensionsCountFn GetDimensionsCount = nullptr;
  OrtGetDimensionsFn GetDimensions = nullptr;
  OrtGetTensorShapeElementCountFn GetTensorShapeElementCount = nullptr;
  OrtGetTensorTypeAndShapeFn GetTensorTypeAndShape = nullptr;
  OrtKernelInfoGetAttributeFloatFn KernelInfoGetAttribute_float = nullptr;
  OrtKernelInfoGetAttributeInt64Fn KernelInfoGetAttribute_int64 = nullptr;
  OrtKernelInfoGetAttributeStringFn KernelInfoGetAttribute_string = nullptr;
  OrtKernelInfoGetAttributeArrayInt64Fn KernelInfoGetAttributeArray_int64 = nullptr;
  OrtKernelContextGetCountFn KernelContext_GetInputCount = nullptr;
  OrtKernelContextGetCountFn KernelContext_GetOutputCount = nullptr;
  OrtKernelContextGetInputFn KernelContext_GetInput = nullptr;
  OrtKernelContextGetOutputFn KernelContext_GetOutput = nullptr;
  OrtReleaseStatusFn ReleaseStatus = nullptr;
  OrtReleaseTensorTypeAndShapeInfoFn ReleaseTensorTypeAndShapeInfo = nullptr;
  OrtReleaseCustomOpDomainFn ReleaseCustomOpDomain = nullptr;
  OrtKernelContextGetGPUComputeStreamFn KernelContext_GetGPUComputeStream = nullptr;
  OrtKernelContextParallelForFn KernelContext_ParallelFor = nullptr;  // NULL below API version 17

  // Fills the members from an OrtApi table of version >= SSM_ORT_API_VERSION; the optional members only when
  // runtime_api_version() has them. False if `api` is NULL.
  bool resolve(const OrtApi* api) noexcept;
};

// The C API version of an ONNX Runtime, from its version string: the minor version of a 1.x release ("1.17.2" ->
// 17), UINT32_MAX for a later major release, 0 if the string does not parse.
uint32_t api_version_of(const char* version_string) noexcept;

// The API version of the ONNX Runtime that registered the library (RegisterCustomOps records it before any kernel is
// created); 0 until then. If several were recorded (one process normally loads one ONNX Runtime), the lowest.
void note_runtime_api_version(uint32_t version) noexcept;
uint32_t runtime_api_version() noexcept;

// ------------------------------------------------------------------------------------------------
// Errors

// A new error status with a printf-formatted message (truncated at 2 KiB).
OrtStatus* make_error(const Api& api, OrtErrorCode code, const char* fmt, ...) noexcept
    __attribute__((format(printf, 3, 4)));

// The message of `status` (released here); empty for NULL.
std::string take_message(const Api& api, OrtStatus* status);

// "(2, 3, 4)", "(5,)", "()" (the way Python prints a shape tuple, as the Python op layer does).
std::string shape_str(const std::vector<int64_t>& dims);
const char* type_name(ONNXTensorElementDataType type) noexcept;

// ssm_dtype of an element type; false if the kernels do not take it.
bool to_ssm_dtype(ONNXTensorElementDataType type, int32_t* dtype) noexcept;

// a * b without overflow (both >= 0); false on overflow.
bool checked_mul(int64_t a, int64_t b, int64_t* out) noexcept;

// ------------------------------------------------------------------------------------------------
// Inputs and outputs

struct TensorArg {
  const char* name = "";
  const OrtValue* value = nullptr;  // NULL: an optional input that the node omits
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  std::vector<int64_t> dims;
  void* data = nullptr;
  int64_t numel = 0;

  bool present() const { return value != nullptr; }
  size_t rank() const { return dims.size(); }
};

// Reads input `index` (of `count`) into `out`. A missing required input is an error naming it.
OrtStatus* read_input(const Api& api, const OrtKernelContext* ctx, size_t count, size_t index, const char* op,
                      const char* name, bool required, TensorArg* out);

// Allocates output `index` with `dims`; `*data` is NULL for an empty tensor.
OrtStatus* alloc_output(const Api& api, OrtKernelContext* ctx, size_t index, const std::vector<int64_t>& dims,
                        const char* op, void** data);

// Error unless `arg` (when present) has the element type of `first` (the T constraint).
OrtStatus* check_same_type(const Api& api, const char* op, const TensorArg& first, const TensorArg& arg);

// ------------------------------------------------------------------------------------------------
// Attributes

// Required int attribute (error naming it if missing or of another type).
OrtStatus* read_int_attr(const Api& api, const OrtKernelInfo* info, const char* op, const char* name,
                         int64_t* out);
// Optional int attribute: `fallback` when missing, error if present with another type.
OrtStatus* read_int_attr_or(const Api& api, const OrtKernelInfo* info, const char* op, const char* name,
                            int64_t fallback, int64_t* out);
// Required float attribute (an int attribute is accepted and converted).
OrtStatus* read_float_attr(const Api& api, const OrtKernelInfo* info, const char* op, const char* name,
                           float* out);
// Optional float attribute: `fallback` when missing (an int attribute is accepted and converted), error if
// present with another type.
OrtStatus* read_float_attr_or(const Api& api, const OrtKernelInfo* info, const char* op, const char* name,
                              float fallback, float* out);
// The attribute `epsilon` of the LayerNorm-like ops: optional (default 1e-5), finite and > 0.
OrtStatus* read_epsilon_attr(const Api& api, const OrtKernelInfo* info, const char* op, float* out);

// Required list-of-ints attribute with at least one value (error naming it if missing, empty or of another type).
OrtStatus* read_ints_attr(const Api& api, const OrtKernelInfo* info, const char* op, const char* name,
                          std::vector<int64_t>* out);
// Optional string attribute: `fallback` when missing, error if present with another type.
OrtStatus* read_string_attr_or(const Api& api, const OrtKernelInfo* info, const char* op, const char* name,
                               const char* fallback, std::string* out);

// Error unless lo <= value <= hi.
OrtStatus* check_attr_range(const Api& api, const char* op, const char* name, int64_t value, int64_t lo, int64_t hi);

// ------------------------------------------------------------------------------------------------
// Execution

enum class Device { CPU, CUDA };

// Threads for the CPU kernels: $SSMPOSE_NUM_THREADS if set to a positive number, else 0. 0: the kernels' parallel
// loops run on ONNX Runtime's intra-op thread pool (API version >= 17; before it, on threads of their own, one per
// core). A positive number: on that many threads of their own, started for each call, whatever the pool.
int cpu_threads() noexcept;

#if defined(SSMPOSE_ORT_WITH_CUDA)
// Forward entry points of libssmpose_kernels_cuda.so, loaded on first use (see cuda_kernels.cpp).
struct CudaKernels {
  decltype(&ssm_selective_scan_fwd_cuda) selective_scan_fwd;
  decltype(&ssm_selective_scan_2d_fwd_cuda) selective_scan_2d_fwd;
  decltype(&ssm_selective_scan_2d_proj_fwd_cuda) selective_scan_2d_proj_fwd;
  decltype(&ssm_deform_aggregate_fwd_cuda) deform_aggregate_fwd;
  decltype(&ssm_layer_norm_fwd_cuda) layer_norm_fwd;
  decltype(&ssm_add_layer_norm_fwd_cuda) add_layer_norm_fwd;
  decltype(&ssm_depthwise_conv_fwd_cuda) depthwise_conv_fwd;
  decltype(&ssm_vss_block_tail_fwd_cuda) vss_block_tail_fwd;
  const char* (*status_string)(int status);
};
// The loaded CUDA kernels, or an error status saying why they cannot be loaded.
OrtStatus* cuda_kernels(const Api& api, const char* op, const CudaKernels** out);
// The CUDA stream ONNX Runtime assigns to this node.
OrtStatus* compute_stream(const Api& api, const OrtKernelContext* ctx, void** stream);
#endif

// ------------------------------------------------------------------------------------------------
// Kernels and their OrtCustomOp entries

struct OpDef;

// One instance per node, created by ONNX Runtime through CreateKernelV2.
struct Kernel {
  Api api;
  const OpDef* def = nullptr;
  bool on_ort_pool = false;  // compute() runs the CPU kernels' parallel loops on ONNX Runtime's intra-op pool
  virtual ~Kernel() = default;
  virtual OrtStatus* compute(OrtKernelContext* ctx) = 0;
};

using KernelFactory = OrtStatus* (*)(const OpDef& def, const Api& api, const OrtKernelInfo* info, Kernel** out);

// An OrtCustomOp for one (operator, execution provider, element type T). `inputs` names the inputs; those at
// index >= `required_inputs` are optional. Input 0 is typed T (it selects the kernel and the output type);
// the other inputs accept any type and the kernel checks they are T, so a mix is reported by name. The
// `num_outputs` outputs are all required and of type T.
struct OpDef : OrtCustomOp {
  const char* op_name = "";
  Device device = Device::CPU;
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  const char* const* inputs = nullptr;
  size_t num_inputs = 0;
  size_t required_inputs = 0;
  size_t num_outputs = 1;
  KernelFactory factory = nullptr;
  int since_version = 1;  // first `ssmpose` domain version with this op (declared only when > 1)
};

// Fills the OrtCustomOp part of `def` (version, callbacks) from its fields.
void init_op_def(OpDef* def, const char* op_name, Device device, ONNXTensorElementDataType type,
                 const char* const* inputs, size_t num_inputs, size_t required_inputs, KernelFactory factory);

// Declares that `def` exists from `ssmpose` domain version `since_version` on. This needs OrtCustomOp
// version 17 (ONNX Runtime >= 1.17, `declare` true); otherwise the op stays version 16 and ONNX Runtime
// registers it for every domain version, as it does all version-16 ops.
void set_since_version(OpDef* def, int since_version, bool declare);

// The OpDefs of one operator: float32 and float16 on the CPU EP and, in a CUDA build, on the CUDA EP, from
// `ssmpose` domain version `since_version` on (declared when `op_versions`, see set_since_version), with
// `num_outputs` outputs. Keep it in a function-local static: ONNX Runtime holds pointers to the OpDefs until the
// library is unloaded.
class OpDefSet {
 public:
  OpDefSet(const char* op_name, const char* const* inputs, size_t num_inputs, size_t required_inputs,
           KernelFactory factory, int since_version, bool op_versions, size_t num_outputs = 1);
  void append_to(std::vector<const OpDef*>* defs) const;

 private:
#if defined(SSMPOSE_ORT_WITH_CUDA)
  static constexpr int kCount = 4;
#else
  static constexpr int kCount = 2;
#endif
  OpDef defs_[kCount];
};

// Registration of each operator's OpDefs (one per EP and type), defined in the operator's file.
// `op_versions`: the running ONNX Runtime reads OrtCustomOp::GetStartVersion (>= 1.17).
void selective_scan_op_defs(std::vector<const OpDef*>* defs);
void selective_scan_2d_op_defs(std::vector<const OpDef*>* defs, bool op_versions);
void deform_aggregate_op_defs(std::vector<const OpDef*>* defs);
void layer_norm_op_defs(std::vector<const OpDef*>* defs, bool op_versions);  // LayerNorm and AddLayerNorm
void depthwise_conv_op_defs(std::vector<const OpDef*>* defs, bool op_versions);
void vss_block_tail_op_defs(std::vector<const OpDef*>* defs, bool op_versions);

}  // namespace ssmpose_ort

#endif  // SSMPOSE_ORT_COMMON_H
