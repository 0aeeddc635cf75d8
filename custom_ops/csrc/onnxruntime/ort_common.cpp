// Shared plumbing of the ONNX Runtime custom ops (see ort_common.h).
#include "ort_common.h"

#include <atomic>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <new>

namespace ssmpose_ort {

// ------------------------------------------------------------------------------------------------
// OrtApi

namespace {

// The OrtApi is a table of function pointers; read member `index` as a generic function pointer and cast it
// to its real type (function-pointer to function-pointer conversions round-trip in C++).
using GenericFn = void (*)(void);

template <typename Fn>
void member(const OrtApi* api, int index, Fn* out) {
  const GenericFn* table = reinterpret_cast<const GenericFn*>(api);
  *out = reinterpret_cast<Fn>(table[index]);
}

}  // namespace

bool Api::resolve(const OrtApi* api) noexcept {
  if (api == nullptr) return false;
  member(api, SSM_ORT_CreateStatus, &CreateStatus);
  member(api, SSM_ORT_GetErrorCode, &GetErrorCode);
  member(api, SSM_ORT_GetErrorMessage, &GetErrorMessage);
  member(api, SSM_ORT_CreateCustomOpDomain, &CreateCustomOpDomain);
  member(api, SSM_ORT_CustomOpDomain_Add, &CustomOpDomain_Add);
  member(api, SSM_ORT_AddCustomOpDomain, &AddCustomOpDomain);
  member(api, SSM_ORT_GetTensorMutableData, &GetTensorMutableData);
  member(api, SSM_ORT_GetTensorElementType, &GetTensorElementType);
  member(api, SSM_ORT_GetDimensionsCount, &GetDimensionsCount);
  member(api, SSM_ORT_GetDimensions, &GetDimensions);
  member(api, SSM_ORT_GetTensorShapeElementCount, &GetTensorShapeElementCount);
  member(api, SSM_ORT_GetTensorTypeAndShape, &GetTensorTypeAndShape);
  member(api, SSM_ORT_KernelInfoGetAttribute_float, &KernelInfoGetAttribute_float);
  member(api, SSM_ORT_KernelInfoGetAttribute_int64, &KernelInfoGetAttribute_int64);
  member(api, SSM_ORT_KernelInfoGetAttribute_string, &KernelInfoGetAttribute_string);
  member(api, SSM_ORT_KernelInfoGetAttributeArray_int64, &KernelInfoGetAttributeArray_int64);
  member(api, SSM_ORT_KernelContext_GetInputCount, &KernelContext_GetInputCount);
  member(api, SSM_ORT_KernelContext_GetOutputCount, &KernelContext_GetOutputCount);
  member(api, SSM_ORT_KernelContext_GetInput, &KernelContext_GetInput);
  member(api, SSM_ORT_KernelContext_GetOutput, &KernelContext_GetOutput);
  member(api, SSM_ORT_ReleaseStatus, &ReleaseStatus);
  member(api, SSM_ORT_ReleaseTensorTypeAndShapeInfo, &ReleaseTensorTypeAndShapeInfo);
  member(api, SSM_ORT_ReleaseCustomOpDomain, &ReleaseCustomOpDomain);
  member(api, SSM_ORT_KernelContext_GetGPUComputeStream, &KernelContext_GetGPUComputeStream);
  // The table of an older ONNX Runtime ends before these members: reading them would read past its end.
  if (runtime_api_version() >= SSM_ORT_API_VERSION_PARALLEL_FOR) {
    member(api, SSM_ORT_KernelContext_ParallelFor, &KernelContext_ParallelFor);
  }
  return true;
}

uint32_t api_version_of(const char* version_string) noexcept {
  if (version_string == nullptr) return 0;
  char* end = nullptr;
  const long major = std::strtol(version_string, &end, 10);
  if (end == version_string || *end != '.' || major < 1) return 0;
  if (major > 1) return UINT32_MAX;
  const char* minor_start = end + 1;
  const long minor = std::strtol(minor_start, &end, 10);
  if (end == minor_start || minor < 0 || minor > 100000) return 0;
  return static_cast<uint32_t>(minor);
}

namespace {
std::atomic<int64_t> g_runtime_api_version{-1};  // -1: none recorded yet
}  // namespace

void note_runtime_api_version(uint32_t version) noexcept {
  int64_t seen = g_runtime_api_version.load();
  while ((seen < 0 || version < seen) && !g_runtime_api_version.compare_exchange_weak(seen, version)) {
  }
}

uint32_t runtime_api_version() noexcept {
  const int64_t v = g_runtime_api_version.load();
  return v < 0 ? 0 : static_cast<uint32_t>(v);
}

// ------------------------------------------------------------------------------------------------
// Errors and formatting

OrtStatus* make_error(const Api& api, OrtErrorCode code, const char* fmt, ...) noexcept {
  char buf[2048];
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(buf, sizeof(buf), fmt, args);
  va_end(args);
  return api.CreateStatus(code, buf);
}

std::string take_message(const Api& api, OrtStatus* status) {
  if (status == nullptr) return std::string();
  const char* msg = api.GetErrorMessage(status);
  std::string out = msg ? msg : "";
  api.ReleaseStatus(status);
  return out;
}

std::string shape_str(const std::vector<int64_t>& dims) {
  std::string s = "(";
  for (size_t i = 0; i < dims.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(dims[i]);
  }
  if (dims.size() == 1) s += ",";
  s += ")";
  return s;
}

const char* type_name(ONNXTensorElementDataType type) noexcept {
  switch (static_cast<int>(type)) {
    case 1: return "float32";
    case 2: return "uint8";
    case 3: return "int8";
    case 4: return "uint16";
    case 5: return "int16";
    case 6: return "int32";
    case 7: return "int64";
    case 8: return "string";
    case 9: return "bool";
    case 10: return "float16";
    case 11: return "float64";
    case 12: return "uint32";
    case 13: return "uint64";
    case 16: return "bfloat16";
    default: return "an unsupported type";
  }
}

bool to_ssm_dtype(ONNXTensorElementDataType type, int32_t* dtype) noexcept {
  // Values of ssm_dtype (ssmpose_kernels.h): SSM_FLOAT32 = 0, SSM_FLOAT16 = 1.
  switch (type) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: *dtype = 0; return true;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: *dtype = 1; return true;
    default: return false;
  }
}

bool checked_mul(int64_t a, int64_t b, int64_t* out) noexcept {
  return !__builtin_mul_overflow(a, b, out);
}

// ------------------------------------------------------------------------------------------------
// Inputs and outputs

OrtStatus* read_input(const Api& api, const OrtKernelContext* ctx, size_t count, size_t index, const char* op,
                      const char* name, bool required, TensorArg* out) {
  out->name = name;
  out->value = nullptr;
  out->dims.clear();
  out->data = nullptr;
  out->numel = 0;
  out->type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  if (index < count) {
    if (OrtStatus* st = api.KernelContext_GetInput(ctx, index, &out->value)) return st;
  }
  if (out->value == nullptr) {
    if (required) return make_error(api, ORT_INVALID_ARGUMENT, "%s: required input '%s' is missing", op, name);
    return nullptr;
  }
  OrtTensorTypeAndShapeInfo* info = nullptr;
  if (OrtStatus* st = api.GetTensorTypeAndShape(out->value, &info)) {
    return make_error(api, ORT_INVALID_ARGUMENT, "%s: input '%s' is not a tensor: %s", op, name,
                      take_message(api, st).c_str());
  }
  OrtStatus* st = api.GetTensorElementType(info, &out->type);
  size_t rank = 0;
  if (!st) st = api.GetDimensionsCount(info, &rank);
  if (!st) {
    out->dims.assign(rank, 0);
    if (rank) st = api.GetDimensions(info, out->dims.data(), rank);
  }
  api.ReleaseTensorTypeAndShapeInfo(info);
  if (st) return st;
  int64_t n = 1;
  for (int64_t d : out->dims) {
    if (d < 0 || !checked_mul(n, d, &n)) {
      return make_error(api, ORT_INVALID_ARGUMENT, "%s: input '%s' has an invalid shape %s", op, name,
                        shape_str(out->dims).c_str());
    }
  }
  out->numel = n;
  if (n > 0) {
    if (OrtStatus* s = api.GetTensorMutableData(const_cast<OrtValue*>(out->value), &out->data)) return s;
  }
  return nullptr;
}

OrtStatus* alloc_output(const Api& api, OrtKernelContext* ctx, size_t index, const std::vector<int64_t>& dims,
                        const char* op, void** data) {
  *data = nullptr;
  int64_t n = 1;
  for (int64_t d : dims) {
    if (d < 0 || !checked_mul(n, d, &n)) {
      return make_error(api, ORT_INVALID_ARGUMENT, "%s: output shape %s is invalid or has too many elements", op,
                        shape_str(dims).c_str());
    }
  }
  OrtValue* value = nullptr;
  if (OrtStatus* st = api.KernelContext_GetOutput(ctx, index, dims.data(), dims.size(), &value)) {
    // e.g. the allocation failed: say which op and which output shape
    const OrtErrorCode code = api.GetErrorCode(st);
    const std::string message = take_message(api, st);
    return make_error(api, code, "%s: cannot allocate the output of shape %s: %s", op, shape_str(dims).c_str(),
                      message.c_str());
  }
  if (value == nullptr) {
    return make_error(api, ORT_FAIL, "%s: ONNX Runtime returned no output tensor for shape %s", op,
                      shape_str(dims).c_str());
  }
  if (n == 0) return nullptr;
  return api.GetTensorMutableData(value, data);
}

OrtStatus* check_same_type(const Api& api, const char* op, const TensorArg& first, const TensorArg& arg) {
  if (!arg.present() || arg.type == first.type) return nullptr;
  return make_error(api, ORT_INVALID_ARGUMENT,
                    "%s: input '%s' has element type %s, expected %s (the type of '%s'): all floating inputs "
                    "share one type T",
                    op, arg.name, type_name(arg.type), type_name(first.type), first.name);
}

// ------------------------------------------------------------------------------------------------
// Attributes

namespace {

enum class AttrKind { Missing, Int, Float, String };

const char* kind_name(AttrKind kind) {
  switch (kind) {
    case AttrKind::Int: return "an int";
    case AttrKind::Float: return "a float";
    case AttrKind::String: return "a string";
    default: return "missing";
  }
}

// What `name` holds (a list or tensor attribute reads as Missing here).
AttrKind attr_kind(const Api& api, const OrtKernelInfo* info, const char* name) {
  int64_t i = 0;
  OrtStatus* st = api.KernelInfoGetAttribute_int64(info, name, &i);
  if (!st) return AttrKind::Int;
  api.ReleaseStatus(st);
  float f = 0.f;
  st = api.KernelInfoGetAttribute_float(info, name, &f);
  if (!st) return AttrKind::Float;
  api.ReleaseStatus(st);
  size_t size = 0;
  st = api.KernelInfoGetAttribute_string(info, name, nullptr, &size);
  if (!st) return AttrKind::String;
  api.ReleaseStatus(st);
  return AttrKind::Missing;
}

}  // namespace

OrtStatus* read_int_attr(const Api& api, const OrtKernelInfo* info, const char* op, const char* name,
                         int64_t* out) {
  OrtStatus* st = api.KernelInfoGetAttribute_int64(info, name, out);
  if (!st) return nullptr;
  api.ReleaseStatus(st);
  const AttrKind kind = attr_kind(api, info, name);
  if (kind == AttrKind::Missing) {
    return make_error(api, ORT_INVALID_ARGUMENT, "%s: missing required attribute '%s' (int)", op, name);
  }
  return make_error(api, ORT_INVALID_ARGUMENT, "%s: attribute '%s' must be an int, got %s", op, name,
                    kind_name(kind));
}

OrtStatus* read_int_attr_or(const Api& api, const OrtKernelInfo* info, const char* op, const char* name,
                            int64_t fallback, int64_t* out) {
  OrtStatus* st = api.KernelInfoGetAttribute_int64(info, name, out);
  if (!st) return nullptr;
  api.ReleaseStatus(st);
  const AttrKind kind = attr_kind(api, info, name);
  if (kind == AttrKind::Missing) {
    *out = fallback;
    return nullptr;
  }
  return make_error(api, ORT_INVALID_ARGUMENT, "%s: attribute '%s' must be an int, got %s", op, name,
                    kind_name(kind));
}

OrtStatus* read_float_attr(const Api& api, const OrtKernelInfo* info, const char* op, const char* name,
                           float* out) {
  OrtStatus* st = api.KernelInfoGetAttribute_float(info, name, out);
  if (!st) return nullptr;
  api.ReleaseStatus(st);
  int64_t i = 0;
  st = api.KernelInfoGetAttribute_int64(info, name, &i);
  if (!st) {  // an exporter wrote e.g. offset_scale=1 as an int: same value
    *out = static_cast<float>(i);
    return nullptr;
  }
  api.ReleaseStatus(st);
  const AttrKind kind = attr_kind(api, info, name);
  if (kind == AttrKind::Missing) {
    return make_error(api, ORT_INVALID_ARGUMENT, "%s: missing required attribute '%s' (float)", op, name);
  }
  return make_error(api, ORT_INVALID_ARGUMENT, "%s: attribute '%s' must be a float, got %s", op, name,
                    kind_name(kind));
}

OrtStatus* read_float_attr_or(const Api& api, const OrtKernelInfo* info, const char* op, const char* name,
                              float fallback, float* out) {
  if (attr_kind(api, info, name) == AttrKind::Missing) {
    *out = fallback;
    return nullptr;
  }
  return read_float_attr(api, info, op, name, out);
}

OrtStatus* read_epsilon_attr(const Api& api, const OrtKernelInfo* info, const char* op, float* out) {
  if (OrtStatus* st = read_float_attr_or(api, info, op, "epsilon", 1e-5f, out)) return st;
  if (!(std::isfinite(*out) && *out > 0.0f)) {
    return make_error(api, ORT_INVALID_ARGUMENT, "%s: attribute epsilon must be finite and > 0, got %g", op,
                      static_cast<double>(*out));
  }
  return nullptr;
}

OrtStatus* read_ints_attr(const Api& api, const OrtKernelInfo* info, const char* op, const char* name,
                          std::vector<int64_t>* out) {
  out->clear();
  size_t size = 0;
  OrtStatus* st = api.KernelInfoGetAttributeArray_int64(info, name, nullptr, &size);
  if (st) {
    api.ReleaseStatus(st);
    return make_error(api, ORT_INVALID_ARGUMENT, "%s: missing required attribute '%s' (ints)", op, name);
  }
  if (size == 0) {  // an empty list, or an attribute of another type (which reads as an empty list)
    const AttrKind kind = attr_kind(api, info, name);
    if (kind != AttrKind::Missing) {
      return make_error(api, ORT_INVALID_ARGUMENT, "%s: attribute '%s' must be a list of ints, got %s", op, name,
                        kind_name(kind));
    }
    return make_error(api, ORT_INVALID_ARGUMENT, "%s: attribute '%s' must be a non-empty list of ints", op, name);
  }
  out->resize(size);
  return api.KernelInfoGetAttributeArray_int64(info, name, out->data(), &size);
}

OrtStatus* read_string_attr_or(const Api& api, const OrtKernelInfo* info, const char* op, const char* name,
                               const char* fallback, std::string* out) {
  size_t size = 0;
  OrtStatus* st = api.KernelInfoGetAttribute_string(info, name, nullptr, &size);
  if (st) {
    api.ReleaseStatus(st);
    const AttrKind kind = attr_kind(api, info, name);
    if (kind == AttrKind::Missing) {
      *out = fallback;
      return nullptr;
    }
    return make_error(api, ORT_INVALID_ARGUMENT, "%s: attribute '%s' must be a string, got %s", op, name,
                      kind_name(kind));
  }
  std::vector<char> buf(size + 1, '\0');  // size counts the terminating NUL
  if (OrtStatus* s = api.KernelInfoGetAttribute_string(info, name, buf.data(), &size)) return s;
  *out = buf.data();
  return nullptr;
}

OrtStatus* check_attr_range(const Api& api, const char* op, const char* name, int64_t value, int64_t lo,
                            int64_t hi) {
  if (value >= lo && value <= hi) return nullptr;
  return make_error(api, ORT_INVALID_ARGUMENT, "%s: attribute %s must be in [%lld, %lld], got %lld", op, name,
                    static_cast<long long>(lo), static_cast<long long>(hi), static_cast<long long>(value));
}

// ------------------------------------------------------------------------------------------------
// Execution

int cpu_threads() noexcept {
  const char* env = std::getenv("SSMPOSE_NUM_THREADS");
  if (env == nullptr || *env == '\0') return 0;
  char* end = nullptr;
  const long n = std::strtol(env, &end, 10);
  if (end == env || n <= 0 || n > 4096) return 0;
  return static_cast<int>(n);
}

#if defined(SSMPOSE_ORT_WITH_CUDA)
OrtStatus* compute_stream(const Api& api, const OrtKernelContext* ctx, void** stream) {
  *stream = nullptr;
  return api.KernelContext_GetGPUComputeStream(ctx, stream);
}
#endif

// ------------------------------------------------------------------------------------------------
// OrtCustomOp callbacks

namespace {

const OpDef& def_of(const OrtCustomOp* op) { return *static_cast<const OpDef*>(op); }

void* SSM_ORT_CALL create_kernel_v1(const OrtCustomOp*, const OrtApi*, const OrtKernelInfo*) {
  return nullptr;  // never called: ONNX Runtime uses CreateKernelV2 for version >= 16
}

void SSM_ORT_CALL compute_v1(void*, OrtKernelContext*) {}  // never called (KernelComputeV2 is used)

const char* SSM_ORT_CALL get_name(const OrtCustomOp* op) { return def_of(op).op_name; }

const char* SSM_ORT_CALL get_ep(const OrtCustomOp* op) {
  return def_of(op).device == Device::CUDA ? "CUDAExecutionProvider" : "CPUExecutionProvider";
}

ONNXTensorElementDataType SSM_ORT_CALL get_input_type(const OrtCustomOp* op, size_t index) {
  return index == 0 ? def_of(op).type : ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
}

size_t SSM_ORT_CALL get_input_count(const OrtCustomOp* op) { return def_of(op).num_inputs; }

ONNXTensorElementDataType SSM_ORT_CALL get_output_type(const OrtCustomOp* op, size_t) { return def_of(op).type; }

size_t SSM_ORT_CALL get_output_count(const OrtCustomOp* op) { return def_of(op).num_outputs; }

OrtCustomOpInputOutputCharacteristic SSM_ORT_CALL get_input_characteristic(const OrtCustomOp* op, size_t index) {
  return index >= def_of(op).required_inputs ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
}

OrtCustomOpInputOutputCharacteristic SSM_ORT_CALL get_output_characteristic(const OrtCustomOp*, size_t) {
  return INPUT_OUTPUT_REQUIRED;
}

OrtMemType SSM_ORT_CALL get_input_memory_type(const OrtCustomOp*, size_t) {
  return OrtMemTypeDefault;  // every input on the EP's device (host for CPU, GPU for CUDA)
}

int SSM_ORT_CALL variadic_min_arity(const OrtCustomOp*) { return 1; }
int SSM_ORT_CALL variadic_homogeneity(const OrtCustomOp*) { return 1; }

// ------------------------------------------------------------------------------------------------
// The CPU kernels' parallel loops on ONNX Runtime's intra-op thread pool (ssm_set_cpu_executor).

struct PoolExecutor {
  const Api* api;
  const OrtKernelContext* ctx;
};

// One executor call: the kernel library's task, called through KernelContext_ParallelFor's callback signature.
struct PoolTask {
  ssm_task_fn fn;
  void* task;
};

void run_pool_task(void* data, size_t index) {
  const PoolTask* t = static_cast<const PoolTask*>(data);
  t->fn(t->task, static_cast<int64_t>(index));
}

int run_on_ort_pool(void* executor_data, ssm_task_fn fn, void* task, int64_t count) noexcept {
  if (count <= 0) return 0;
  const PoolExecutor* ex = static_cast<const PoolExecutor*>(executor_data);
  PoolTask t{fn, task};
  OrtStatus* st = ex->api->KernelContext_ParallelFor(ex->ctx, run_pool_task, static_cast<size_t>(count), 0, &t);
  if (st == nullptr) return 0;
  ex->api->ReleaseStatus(st);  // e.g. a minimal build without the kernel-context API: the caller runs the loop
  return 1;
}

// While alive (one compute call), the kernel library's parallel loops on this thread use ONNX Runtime's pool.
class OrtPoolScope {
 public:
  OrtPoolScope(const Api& api, const OrtKernelContext* ctx, bool enable) noexcept : executor_{&api, ctx} {
    active_ = enable && api.KernelContext_ParallelFor != nullptr;
    if (active_) ssm_set_cpu_executor(run_on_ort_pool, &executor_);
  }
  ~OrtPoolScope() {
    if (active_) ssm_set_cpu_executor(nullptr, nullptr);
  }
  OrtPoolScope(const OrtPoolScope&) = delete;
  OrtPoolScope& operator=(const OrtPoolScope&) = delete;

 private:
  PoolExecutor executor_;
  bool active_ = false;
};

OrtStatus* SSM_ORT_CALL create_kernel_v2(const OrtCustomOp* op, const OrtApi* ort, const OrtKernelInfo* info,
                                         void** kernel) noexcept {
  Api api;
  if (!api.resolve(ort)) return nullptr;  // cannot happen: ONNX Runtime always passes its API
  *kernel = nullptr;
  const OpDef& def = def_of(op);
  try {
    Kernel* k = nullptr;
    if (OrtStatus* st = def.factory(def, api, info, &k)) return st;
    k->api = api;
    k->def = &def;
    k->on_ort_pool = def.device == Device::CPU && cpu_threads() == 0;
    *kernel = k;
    return nullptr;
  } catch (const std::bad_alloc&) {
    return make_error(api, ORT_FAIL, "%s: out of memory while creating the kernel", def.op_name);
  } catch (const std::exception& e) {
    return make_error(api, ORT_FAIL, "%s: %s", def.op_name, e.what());
  } catch (...) {
    return make_error(api, ORT_FAIL, "%s: unknown error while creating the kernel", def.op_name);
  }
}

OrtStatus* SSM_ORT_CALL compute_v2(void* kernel, OrtKernelContext* ctx) noexcept {
  Kernel* k = static_cast<Kernel*>(kernel);
  try {
    OrtPoolScope pool(k->api, ctx, k->on_ort_pool);
    return k->compute(ctx);
  } catch (const std::bad_alloc&) {
    return make_error(k->api, ORT_FAIL, "%s: out of memory", k->def->op_name);
  } catch (const std::exception& e) {
    return make_error(k->api, ORT_FAIL, "%s: %s", k->def->op_name, e.what());
  } catch (...) {
    return make_error(k->api, ORT_FAIL, "%s: unknown error", k->def->op_name);
  }
}

void SSM_ORT_CALL destroy_kernel(void* kernel) noexcept { delete static_cast<Kernel*>(kernel); }

int SSM_ORT_CALL get_start_version(const OrtCustomOp* op) { return def_of(op).since_version; }

}  // namespace

void init_op_def(OpDef* def, const char* op_name, Device device, ONNXTensorElementDataType type,
                 const char* const* inputs, size_t num_inputs, size_t required_inputs, KernelFactory factory) {
  OrtCustomOp* op = def;
  *op = OrtCustomOp{};  // zero every member, including those of later versions
  op->version = SSM_ORT_API_VERSION;
  op->CreateKernel = create_kernel_v1;
  op->GetName = get_name;
  op->GetExecutionProviderType = get_ep;
  op->GetInputType = get_input_type;
  op->GetInputTypeCount = get_input_count;
  op->GetOutputType = get_output_type;
  op->GetOutputTypeCount = get_output_count;
  op->KernelCompute = compute_v1;
  op->KernelDestroy = destroy_kernel;
  op->GetInputCharacteristic = get_input_characteristic;
  op->GetOutputCharacteristic = get_output_characteristic;
  op->GetInputMemoryType = get_input_memory_type;
  op->GetVariadicInputMinArity = variadic_min_arity;
  op->GetVariadicInputHomogeneity = variadic_homogeneity;
  op->GetVariadicOutputMinArity = variadic_min_arity;
  op->GetVariadicOutputHomogeneity = variadic_homogeneity;
  op->CreateKernelV2 = create_kernel_v2;
  op->KernelComputeV2 = compute_v2;
  def->op_name = op_name;
  def->device = device;
  def->type = type;
  def->inputs = inputs;
  def->num_inputs = num_inputs;
  def->required_inputs = required_inputs;
  def->factory = factory;
}

void set_since_version(OpDef* def, int since_version, bool declare) {
  def->since_version = since_version;
  if (declare && since_version > 1) {
    def->version = SSM_ORT_API_VERSION_OP_VERSIONS;
    def->GetStartVersion = get_start_version;  // InferOutputShapeFn and GetEndVersion stay NULL
  }
}

OpDefSet::OpDefSet(const char* op_name, const char* const* inputs, size_t num_inputs, size_t required_inputs,
                   KernelFactory factory, int since_version, bool op_versions, size_t num_outputs) {
  const ONNXTensorElementDataType types[] = {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16};
  for (int i = 0; i < kCount; ++i) {
    const Device device = i < 2 ? Device::CPU : Device::CUDA;
    init_op_def(&defs_[i], op_name, device, types[i % 2], inputs, num_inputs, required_inputs, factory);
    set_since_version(&defs_[i], since_version, op_versions);
    defs_[i].num_outputs = num_outputs;
  }
}

void OpDefSet::append_to(std::vector<const OpDef*>* defs) const {
  for (const OpDef& def : defs_) defs->push_back(&def);
}

}  // namespace ssmpose_ort
