// Entry points of libssmpose_ort.so: RegisterCustomOps (called by ONNX Runtime's
// SessionOptions.register_custom_ops_library / RegisterCustomOpsLibrary) and the version queries.
#include <cstdlib>
#include <exception>
#include <mutex>
#include <vector>

#include "ort_common.h"
#include "ssmpose_kernels.h"

// Bump when the operators' interface (inputs, attributes, types, EPs) or these entry points change.
#define SSMPOSE_ORT_LIBRARY_VERSION 7  // 2: SelectiveScan2D; 3: LayerNorm; 4: AddLayerNorm, MultiKernelDepthwiseConv;
                                        // 5: DeformAggregate's offset_bias input and activation attribute;
                                        // 6: SelectiveScan2D's dt_projection input; 7: VSSBlockTail

namespace ssmpose_ort {
namespace {

constexpr const char* kDomain = "ssmpose";

// Domains handed to session options. ONNX Runtime keeps only pointers to them, so they live as long as the
// library is loaded (ONNX Runtime keeps it loaded while any session options or session use it) and are released
// when it is unloaded.
struct DomainRegistry {
  std::mutex mutex;
  std::vector<OrtCustomOpDomain*> domains;
  OrtReleaseCustomOpDomainFn release = nullptr;
  ~DomainRegistry() {
    if (release) {
      for (OrtCustomOpDomain* d : domains) release(d);
    }
  }
};

DomainRegistry& registry() {
  static DomainRegistry r;
  return r;
}

OrtStatus* register_ops(OrtSessionOptions* options, const OrtApiBase* base) {
  // The running ONNX Runtime's API version, from its version string (asking GetApi(17) instead would print an error
  // on an older release). It decides the optional features: OrtCustomOp::GetStartVersion (17), and the thread pool
  // of the CPU kernels (KernelContext_ParallelFor, 17; read by Api::resolve).
  const uint32_t runtime_version = api_version_of(base->GetVersionString ? base->GetVersionString() : nullptr);
  note_runtime_api_version(runtime_version);
  const bool op_versions = runtime_version >= SSM_ORT_API_VERSION_OP_VERSIONS;
  const OrtApi* ort = base->GetApi(SSM_ORT_API_VERSION);
  Api api;
  if (!api.resolve(ort)) {
    // An ONNX Runtime older than 1.16: report it through the version-1 API, which every release has.
    const OrtApi* v1 = base->GetApi(1);
    if (v1 == nullptr) return nullptr;  // not an ONNX Runtime API table; nothing can be reported
    using GenericFn = void (*)(void);
    Api old;
    const GenericFn* table = reinterpret_cast<const GenericFn*>(v1);
    old.CreateStatus = reinterpret_cast<OrtCreateStatusFn>(table[SSM_ORT_CreateStatus]);
    return make_error(old, ORT_FAIL,
                      "ssmpose: libssmpose_ort needs ONNX Runtime >= 1.16 (C API version %u); this is ONNX Runtime %s",
                      SSM_ORT_API_VERSION, base->GetVersionString ? base->GetVersionString() : "?");
  }
  if (ssm_abi_version() != SSM_KERNELS_ABI_VERSION) {
    return make_error(api, ORT_FAIL,
                      "ssmpose: the loaded libssmpose_kernels implements kernel ABI version %d, libssmpose_ort was "
                      "built for %d: rebuild the libraries",
                      ssm_abi_version(), SSM_KERNELS_ABI_VERSION);
  }

  std::vector<const OpDef*> defs;
  selective_scan_op_defs(&defs);
  selective_scan_2d_op_defs(&defs, op_versions);
  deform_aggregate_op_defs(&defs);
  layer_norm_op_defs(&defs, op_versions);
  depthwise_conv_op_defs(&defs, op_versions);
  vss_block_tail_op_defs(&defs, op_versions);

  OrtCustomOpDomain* domain = nullptr;
  if (OrtStatus* st = api.CreateCustomOpDomain(kDomain, &domain)) return st;
  for (const OpDef* def : defs) {
    if (OrtStatus* st = api.CustomOpDomain_Add(domain, def)) {
      api.ReleaseCustomOpDomain(domain);
      return st;
    }
  }
  if (OrtStatus* st = api.AddCustomOpDomain(options, domain)) {
    api.ReleaseCustomOpDomain(domain);
    return st;
  }
  DomainRegistry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  r.release = api.ReleaseCustomOpDomain;
  r.domains.push_back(domain);
  return nullptr;
}

}  // namespace
}  // namespace ssmpose_ort

extern "C" {

SSM_ORT_EXPORT OrtStatus* SSM_ORT_CALL RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  if (options == nullptr || api_base == nullptr) return nullptr;  // ONNX Runtime always passes both
  try {
    return ssmpose_ort::register_ops(options, api_base);
  } catch (...) {
    ssmpose_ort::Api api;
    if (!api.resolve(api_base->GetApi(SSM_ORT_API_VERSION))) return nullptr;
    return ssmpose_ort::make_error(api, ORT_FAIL, "ssmpose: out of memory while registering the custom ops");
  }
}

// Library version (SSMPOSE_ORT_LIBRARY_VERSION); the runtime layer refuses a library of another version.
SSM_ORT_EXPORT int ssmpose_ort_version(void) { return SSMPOSE_ORT_LIBRARY_VERSION; }

// The ONNX Runtime C API version the library requests (and sets as OrtCustomOp::version).
SSM_ORT_EXPORT int ssmpose_ort_api_version(void) { return static_cast<int>(SSM_ORT_API_VERSION); }

// 1 if the CUDA-EP kernels are registered (built with CUDA), else 0.
SSM_ORT_EXPORT int ssmpose_ort_has_cuda(void) {
#if defined(SSMPOSE_ORT_WITH_CUDA)
  return 1;
#else
  return 0;
#endif
}

}  // extern "C"
