/*
 * The part of the ONNX Runtime C ABI that libssmpose_ort uses, declared here because the PyPI onnxruntime
 * wheels ship no C/C++ headers. Written from the documented, stable C API (onnxruntime_c_api.h); only what
 * this library touches is declared.
 *
 * API version: ORT_API_VERSION 16 (ONNX Runtime 1.16). The library asks OrtApiBase::GetApi(16) and sets
 * OrtCustomOp::version = 16. Why 16: the OrtApi functions used below all exist since version 10, but the
 * status-returning custom-op callbacks OrtCustomOp::CreateKernelV2 / KernelComputeV2 (the only way to report
 * a bad node as an error status instead of aborting or throwing across the C boundary) are read by ONNX
 * Runtime only from OrtCustomOp::version 16 on. Any ONNX Runtime >= 1.16 accepts it; an older one returns
 * NULL from GetApi(16) and RegisterCustomOps reports that as an error. Members of later versions are optional:
 * read only when the running ONNX Runtime's API version (its minor version, "1.17.x" -> 17) has them.
 *
 * How the layout is reproduced
 *  - OrtApiBase: two function pointers, fixed forever (ORT static_asserts it).
 *  - OrtApi: a table of function pointers whose order never changes once a version has shipped; members
 *    are only appended. It is read here as an array: SSM_ORT_<Name> is the member's index. The indices were
 *    counted from the OrtApi definition and cross-checked against ONNX Runtime's own layout assertions
 *    (ReleaseCustomOpDomain is member 101, the last of version 1; GetSparseTensorIndices is 191, the last
 *    of version 9; version 10 starts with HasValue = 192, KernelContext_GetGPUComputeStream = 193).
 *  - OrtCustomOp: a struct the library fills and ONNX Runtime reads, member by member up to what its
 *    `version` declares. Reproduced through the version-17 members (InferOutputShapeFn, GetStartVersion,
 *    GetEndVersion, appended after KernelComputeV2); the members of later versions are covered by zeroed
 *    padding. Ops declare version 16, except SelectiveScan2D (domain version 2), which declares 17 with
 *    GetStartVersion = 2 on an ONNX Runtime >= 1.17 (see register.cpp).
 */
#ifndef SSMPOSE_ORT_API_H
#define SSMPOSE_ORT_API_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define SSM_ORT_CALL __stdcall
#define SSM_ORT_EXPORT __declspec(dllexport)
#else
#define SSM_ORT_CALL
#define SSM_ORT_EXPORT __attribute__((visibility("default")))
#endif

#define SSM_ORT_API_VERSION 16u
/* The first API version whose OrtCustomOp carries GetStartVersion (ONNX Runtime 1.17): an op that starts at
 * a later domain version declares itself with this version, where the running ONNX Runtime offers it. */
#define SSM_ORT_API_VERSION_OP_VERSIONS 17u
/* The first API version with OrtApi::KernelContext_ParallelFor (ONNX Runtime 1.17): from it on, the CPU kernels run
 * their parallel loops on ONNX Runtime's intra-op thread pool. */
#define SSM_ORT_API_VERSION_PARALLEL_FOR 17u

/* Opaque ONNX Runtime objects. */
typedef struct OrtApi OrtApi;
typedef struct OrtStatus OrtStatus;
typedef struct OrtValue OrtValue;
typedef struct OrtSessionOptions OrtSessionOptions;
typedef struct OrtCustomOpDomain OrtCustomOpDomain;
typedef struct OrtKernelInfo OrtKernelInfo;
typedef struct OrtKernelContext OrtKernelContext;
typedef struct OrtTensorTypeAndShapeInfo OrtTensorTypeAndShapeInfo;

/* ONNXTensorElementDataType (mirrors onnx TensorProto.DataType); only the values used are named. */
typedef enum ONNXTensorElementDataType {
  ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED = 0,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT = 1,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 = 10,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE = 11,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16 = 16,
} ONNXTensorElementDataType;

typedef enum OrtErrorCode {
  ORT_OK = 0,
  ORT_FAIL = 1,
  ORT_INVALID_ARGUMENT = 2,
  ORT_NO_SUCHFILE = 3,
  ORT_NO_MODEL = 4,
  ORT_ENGINE_ERROR = 5,
  ORT_RUNTIME_EXCEPTION = 6,
  ORT_INVALID_PROTOBUF = 7,
  ORT_MODEL_LOADED = 8,
  ORT_NOT_IMPLEMENTED = 9,
  ORT_INVALID_GRAPH = 10,
  ORT_EP_FAIL = 11,
} OrtErrorCode;

typedef enum OrtMemType {
  OrtMemTypeCPUInput = -2,
  OrtMemTypeCPUOutput = -1,
  OrtMemTypeDefault = 0,
} OrtMemType;

typedef enum OrtCustomOpInputOutputCharacteristic {
  INPUT_OUTPUT_REQUIRED = 0,
  INPUT_OUTPUT_OPTIONAL = 1,
  INPUT_OUTPUT_VARIADIC = 2,
} OrtCustomOpInputOutputCharacteristic;

/* ------------------------------------------------------------------------------------------------
 * OrtApiBase (returned by OrtGetApiBase(), handed to RegisterCustomOps)
 */
typedef struct OrtApiBase {
  const OrtApi*(SSM_ORT_CALL* GetApi)(uint32_t version); /* NULL if `version` is not supported */
  const char*(SSM_ORT_CALL* GetVersionString)(void);
} OrtApiBase;

/* ------------------------------------------------------------------------------------------------
 * OrtApi members used, by index into the function-pointer table, and their signatures.
 */
enum {
  SSM_ORT_CreateStatus = 0,                        /* v1 */
  SSM_ORT_GetErrorCode = 1,                        /* v1 */
  SSM_ORT_GetErrorMessage = 2,                     /* v1 */
  SSM_ORT_CreateCustomOpDomain = 26,               /* v1 */
  SSM_ORT_CustomOpDomain_Add = 27,                 /* v1 */
  SSM_ORT_AddCustomOpDomain = 28,                  /* v1 */
  SSM_ORT_GetTensorMutableData = 51,               /* v1 */
  SSM_ORT_GetTensorElementType = 60,               /* v1 */
  SSM_ORT_GetDimensionsCount = 61,                 /* v1 */
  SSM_ORT_GetDimensions = 62,                      /* v1 */
  SSM_ORT_GetTensorShapeElementCount = 64,         /* v1 */
  SSM_ORT_GetTensorTypeAndShape = 65,              /* v1 */
  SSM_ORT_KernelInfoGetAttribute_float = 85,       /* v1 */
  SSM_ORT_KernelInfoGetAttribute_int64 = 86,       /* v1 */
  SSM_ORT_KernelInfoGetAttribute_string = 87,      /* v1 */
  SSM_ORT_KernelContext_GetInputCount = 88,        /* v1 */
  SSM_ORT_KernelContext_GetOutputCount = 89,       /* v1 */
  SSM_ORT_KernelContext_GetInput = 90,             /* v1 */
  SSM_ORT_KernelContext_GetOutput = 91,            /* v1 */
  SSM_ORT_ReleaseStatus = 93,                      /* v1 */
  SSM_ORT_ReleaseTensorTypeAndShapeInfo = 99,      /* v1 */
  SSM_ORT_ReleaseCustomOpDomain = 101,             /* v1, last member of version 1 */
  SSM_ORT_KernelInfoGetAttributeArray_int64 = 163, /* v8 (GetCurrentGpuDeviceId = 161 ends version 7) */
  SSM_ORT_KernelContext_GetGPUComputeStream = 193, /* v10 */
  SSM_ORT_TABLE_MIN_SIZE = 194,                    /* members needed; GetApi(16) guarantees 266 */
  /* Optional members, resolved only when the running ONNX Runtime's API version has them (see
   * SSM_ORT_API_VERSION_PARALLEL_FOR). Version 16 ends with KernelContext_GetResource = 265 and version 17 with
   * SessionOptionsAppendExecutionProvider_OpenVINO_V2 = 275 (ONNX Runtime's layout assertions). */
  SSM_ORT_KernelContext_ParallelFor = 274          /* v17 */
};

typedef OrtStatus*(SSM_ORT_CALL* OrtCreateStatusFn)(OrtErrorCode code, const char* msg);
typedef OrtErrorCode(SSM_ORT_CALL* OrtGetErrorCodeFn)(const OrtStatus* status);
typedef const char*(SSM_ORT_CALL* OrtGetErrorMessageFn)(const OrtStatus* status);
typedef OrtStatus*(SSM_ORT_CALL* OrtCreateCustomOpDomainFn)(const char* domain, OrtCustomOpDomain** out);
typedef OrtStatus*(SSM_ORT_CALL* OrtCustomOpDomainAddFn)(OrtCustomOpDomain* custom_op_domain,
                                                          const struct OrtCustomOp* op);
typedef OrtStatus*(SSM_ORT_CALL* OrtAddCustomOpDomainFn)(OrtSessionOptions* options,
                                                          OrtCustomOpDomain* custom_op_domain);
typedef OrtStatus*(SSM_ORT_CALL* OrtGetTensorMutableDataFn)(OrtValue* value, void** out);
typedef OrtStatus*(SSM_ORT_CALL* OrtGetTensorElementTypeFn)(const OrtTensorTypeAndShapeInfo* info,
                                                             ONNXTensorElementDataType* out);
typedef OrtStatus*(SSM_ORT_CALL* OrtGetDimensionsCountFn)(const OrtTensorTypeAndShapeInfo* info, size_t* out);
typedef OrtStatus*(SSM_ORT_CALL* OrtGetDimensionsFn)(const OrtTensorTypeAndShapeInfo* info, int64_t* dim_values,
                                                      size_t dim_values_length);
typedef OrtStatus*(SSM_ORT_CALL* OrtGetTensorShapeElementCountFn)(const OrtTensorTypeAndShapeInfo* info,
                                                                   size_t* out);
typedef OrtStatus*(SSM_ORT_CALL* OrtGetTensorTypeAndShapeFn)(const OrtValue* value,
                                                              OrtTensorTypeAndShapeInfo** out);
typedef OrtStatus*(SSM_ORT_CALL* OrtKernelInfoGetAttributeFloatFn)(const OrtKernelInfo* info, const char* name,
                                                                    float* out);
typedef OrtStatus*(SSM_ORT_CALL* OrtKernelInfoGetAttributeInt64Fn)(const OrtKernelInfo* info, const char* name,
                                                                    int64_t* out);
/* out == NULL: *size receives the length including the terminating NUL. */
typedef OrtStatus*(SSM_ORT_CALL* OrtKernelInfoGetAttributeStringFn)(const OrtKernelInfo* info, const char* name,
                                                                     char* out, size_t* size);
/* out == NULL: *size receives the number of values. An attribute that is not a list of ints reads as empty. */
typedef OrtStatus*(SSM_ORT_CALL* OrtKernelInfoGetAttributeArrayInt64Fn)(const OrtKernelInfo* info, const char* name,
                                                                         int64_t* out, size_t* size);
typedef OrtStatus*(SSM_ORT_CALL* OrtKernelContextGetCountFn)(const OrtKernelContext* context, size_t* out);
/* *out is NULL for an omitted optional input. */
typedef OrtStatus*(SSM_ORT_CALL* OrtKernelContextGetInputFn)(const OrtKernelContext* context, size_t index,
                                                              const OrtValue** out);
typedef OrtStatus*(SSM_ORT_CALL* OrtKernelContextGetOutputFn)(OrtKernelContext* context, size_t index,
                                                               const int64_t* dim_values, size_t dim_count,
                                                               OrtValue** out);
typedef void(SSM_ORT_CALL* OrtReleaseStatusFn)(OrtStatus* status);
typedef void(SSM_ORT_CALL* OrtReleaseTensorTypeAndShapeInfoFn)(OrtTensorTypeAndShapeInfo* info);
typedef void(SSM_ORT_CALL* OrtReleaseCustomOpDomainFn)(OrtCustomOpDomain* domain);
/* The CUDA EP's cudaStream_t for this node's work (NULL when the EP has no stream). */
typedef OrtStatus*(SSM_ORT_CALL* OrtKernelContextGetGPUComputeStreamFn)(const OrtKernelContext* context,
                                                                         void** out);
/* Calls fn(usr_data, i) for i in [0, total) on the node's intra-op thread pool (the calling thread takes part;
 * without a pool, on the calling thread) and returns when all calls have returned. num_batch 0: each i is its own
 * work item. fn has the default calling convention (no SSM_ORT_CALL). */
typedef OrtStatus*(SSM_ORT_CALL* OrtKernelContextParallelForFn)(const OrtKernelContext* context,
                                                                 void (*fn)(void* usr_data, size_t index), size_t total,
                                                                 size_t num_batch, void* usr_data);

/* ------------------------------------------------------------------------------------------------
 * OrtCustomOp: filled by the library, read by ONNX Runtime (members up to version 16).
 */
typedef struct OrtCustomOp {
  uint32_t version; /* members present; this library sets SSM_ORT_API_VERSION */

  /* v1 */
  void*(SSM_ORT_CALL* CreateKernel)(const struct OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info);
  const char*(SSM_ORT_CALL* GetName)(const struct OrtCustomOp* op);
  const char*(SSM_ORT_CALL* GetExecutionProviderType)(const struct OrtCustomOp* op); /* NULL = CPU EP */
  ONNXTensorElementDataType(SSM_ORT_CALL* GetInputType)(const struct OrtCustomOp* op, size_t index);
  size_t(SSM_ORT_CALL* GetInputTypeCount)(const struct OrtCustomOp* op);
  ONNXTensorElementDataType(SSM_ORT_CALL* GetOutputType)(const struct OrtCustomOp* op, size_t index);
  size_t(SSM_ORT_CALL* GetOutputTypeCount)(const struct OrtCustomOp* op);
  void(SSM_ORT_CALL* KernelCompute)(void* op_kernel, OrtKernelContext* context);
  void(SSM_ORT_CALL* KernelDestroy)(void* op_kernel);

  /* v8: optional inputs/outputs */
  OrtCustomOpInputOutputCharacteristic(SSM_ORT_CALL* GetInputCharacteristic)(const struct OrtCustomOp* op,
                                                                              size_t index);
  OrtCustomOpInputOutputCharacteristic(SSM_ORT_CALL* GetOutputCharacteristic)(const struct OrtCustomOp* op,
                                                                               size_t index);

  /* v13: where each input must live (read unconditionally by ORT for version > 12) */
  OrtMemType(SSM_ORT_CALL* GetInputMemoryType)(const struct OrtCustomOp* op, size_t index);

  /* v14: variadic inputs/outputs (read only for a variadic input/output) */
  int(SSM_ORT_CALL* GetVariadicInputMinArity)(const struct OrtCustomOp* op);
  int(SSM_ORT_CALL* GetVariadicInputHomogeneity)(const struct OrtCustomOp* op);
  int(SSM_ORT_CALL* GetVariadicOutputMinArity)(const struct OrtCustomOp* op);
  int(SSM_ORT_CALL* GetVariadicOutputHomogeneity)(const struct OrtCustomOp* op);

  /* v16: status-returning kernel creation and compute (used instead of CreateKernel/KernelCompute) */
  OrtStatus*(SSM_ORT_CALL* CreateKernelV2)(const struct OrtCustomOp* op, const OrtApi* api,
                                           const OrtKernelInfo* info, void** kernel);
  OrtStatus*(SSM_ORT_CALL* KernelComputeV2)(void* op_kernel, OrtKernelContext* context);

  /* v17: output shape inference (left NULL: ONNX Runtime then infers only the output type) and the domain
   * versions the op covers (read only for an op that declares version >= 17; NULL GetEndVersion: open-ended). */
  void* InferOutputShapeFn;
  int(SSM_ORT_CALL* GetStartVersion)(const struct OrtCustomOp* op);
  int(SSM_ORT_CALL* GetEndVersion)(const struct OrtCustomOp* op);

  /* Members of later versions (v18+); zeroed, not read for versions 16 and 17. */
  void* reserved_after_v17[5];
} OrtCustomOp;

#ifdef __cplusplus
}
#endif

#endif /* SSMPOSE_ORT_API_H */
