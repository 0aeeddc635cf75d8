// Entry points of libssmpose_trt.so.
//
// TensorRT's plugin-library interface: IPluginRegistry::loadLibrary (Python: get_plugin_registry().load_library)
// and `trtexec --dynamicPlugins` / `--setPluginsToSerialize` look up `getCreators` (IPluginCreatorInterface
// creators; here seven IPluginCreatorV3One: SelectiveScan, DeformAggregate, SelectiveScan2D, LayerNorm, AddLayerNorm,
// MultiKernelDepthwiseConv, VSSBlockTail) and `setLoggerFinder`. The version queries let the runtime layer refuse a stale build
// with a clear message (DESIGN.md section 4). Only these symbols are exported (version script).
#include <cstring>
#include <string>

#include "NvInferVersion.h"
#include "plugins.h"

#define SSM_TRT_API __attribute__((visibility("default")))

extern "C" {

SSM_TRT_API void setLoggerFinder(nvinfer1::ILoggerFinder* finder) { ssmpose_trt::set_logger_finder(finder); }

SSM_TRT_API nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
  return ssmpose_trt::plugin_creators(&nbCreators);
}

// Interface version of this library (SSMPOSE_TRT_LIBRARY_VERSION); runtimes/tensorrt_backend.py checks it.
SSM_TRT_API int ssmpose_trt_version(void) { return SSMPOSE_TRT_LIBRARY_VERSION; }

// Kernel ABI this library expects of libssmpose_kernels_cuda.so.
SSM_TRT_API int ssmpose_trt_kernels_abi_version(void) { return SSM_KERNELS_ABI_VERSION; }

// TensorRT version of the headers it was compiled against: major*10000 + minor*100 + patch.
SSM_TRT_API int ssmpose_trt_tensorrt_version(void) {
  return NV_TENSORRT_MAJOR * 10000 + NV_TENSORRT_MINOR * 100 + NV_TENSORRT_PATCH;
}

// Loads the CUDA kernels now (enqueue would otherwise do it on first use). Returns 0 when they are usable; else
// non-zero with the reason copied into `message` (NUL-terminated, truncated to `size`).
SSM_TRT_API int ssmpose_trt_load_kernels(char* message, size_t size) {
  std::string error;
  const bool ok = ssmpose_trt::cuda_kernels(&error) != nullptr;
  if (message != nullptr && size > 0) {
    const size_t n = error.size() < size - 1 ? error.size() : size - 1;
    std::memcpy(message, error.data(), n);
    message[n] = '\0';
  }
  return ok ? 0 : 1;
}

}  // extern "C"
