// Lazy loading of libssmpose_kernels_cuda.so for the CUDA-EP ops (compiled only with SSMPOSE_ORT_WITH_CUDA).
//
// libssmpose_ort.so does not link the CUDA kernel library: it dlopen()s it the first time a CUDA-EP kernel
// is created, from the folder libssmpose_ort.so itself was loaded from (then, failing that, by plain name
// through the usual loader search). So libssmpose_ort.so loads -- and serves the CPU EP -- on machines with
// no CUDA driver or runtime, it never needs libcudart itself (the CUDA kernel library carries a static CUDA
// runtime), and it needs no CUDA headers: the stream ONNX Runtime hands the op is passed on as `void*`.
#if defined(SSMPOSE_ORT_WITH_CUDA)

#include <dlfcn.h>

#include <mutex>
#include <string>

#include "ort_common.h"
#include "ssmpose_kernels.h"

namespace ssmpose_ort {

namespace {

constexpr const char* kCudaLibrary = "libssmpose_kernels_cuda.so";

struct Loaded {
  CudaKernels kernels{};
  std::string error;  // empty when loaded
};

std::string own_dir() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&own_dir), &info) == 0 || info.dli_fname == nullptr) return std::string();
  std::string path = info.dli_fname;
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? std::string() : path.substr(0, slash + 1);
}

Loaded load() {
  Loaded out;
  std::string tried;
  void* handle = nullptr;
  const std::string dir = own_dir();
  if (!dir.empty()) {
    const std::string path = dir + kCudaLibrary;
    handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
      const char* e = dlerror();
      tried = path + " (" + (e ? e : "not loadable") + ")";
    }
  }
  if (!handle) {
    handle = dlopen(kCudaLibrary, RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
      const char* e = dlerror();
      out.error = std::string("cannot load the CUDA kernel library: tried ") + tried + (tried.empty() ? "" : ", ") +
                  kCudaLibrary + " (" + (e ? e : "not found") + ")";
      return out;
    }
  }
  auto sym = [&](const char* name) -> void* {
    dlerror();
    void* p = dlsym(handle, name);
    if (!p && out.error.empty()) out.error = std::string(kCudaLibrary) + ": missing symbol " + name;
    return p;
  };
  auto abi = reinterpret_cast<int (*)(void)>(sym("ssm_abi_version"));
  out.kernels.status_string = reinterpret_cast<const char* (*)(int)>(sym("ssm_status_string"));
  out.kernels.selective_scan_fwd =
      reinterpret_cast<decltype(out.kernels.selective_scan_fwd)>(sym("ssm_selective_scan_fwd_cuda"));
  out.kernels.selective_scan_2d_fwd =
      reinterpret_cast<decltype(out.kernels.selective_scan_2d_fwd)>(sym("ssm_selective_scan_2d_fwd_cuda"));
  out.kernels.selective_scan_2d_proj_fwd = reinterpret_cast<decltype(out.kernels.selective_scan_2d_proj_fwd)>(
      sym("ssm_selective_scan_2d_proj_fwd_cuda"));
  out.kernels.deform_aggregate_fwd =
      reinterpret_cast<decltype(out.kernels.deform_aggregate_fwd)>(sym("ssm_deform_aggregate_fwd_cuda"));
  out.kernels.layer_norm_fwd =
      reinterpret_cast<decltype(out.kernels.layer_norm_fwd)>(sym("ssm_layer_norm_fwd_cuda"));
  out.kernels.add_layer_norm_fwd =
      reinterpret_cast<decltype(out.kernels.add_layer_norm_fwd)>(sym("ssm_add_layer_norm_fwd_cuda"));
  out.kernels.depthwise_conv_fwd =
      reinterpret_cast<decltype(out.kernels.depthwise_conv_fwd)>(sym("ssm_depthwise_conv_fwd_cuda"));
  out.kernels.vss_block_tail_fwd =
      reinterpret_cast<decltype(out.kernels.vss_block_tail_fwd)>(sym("ssm_vss_block_tail_fwd_cuda"));
  if (out.error.empty() && abi() != SSM_KERNELS_ABI_VERSION) {
    out.error = std::string(kCudaLibrary) + " implements kernel ABI version " + std::to_string(abi()) +
                ", libssmpose_ort needs " + std::to_string(SSM_KERNELS_ABI_VERSION) + ": rebuild the libraries";
  }
  // The handle stays open for the life of the process (the kernels may run until exit).
  return out;
}

}  // namespace

OrtStatus* cuda_kernels(const Api& api, const char* op, const CudaKernels** out) {
  static std::once_flag once;
  static Loaded loaded;
  std::call_once(once, [] { loaded = load(); });
  *out = nullptr;
  if (!loaded.error.empty()) {
    return make_error(api, ORT_FAIL, "%s (CUDAExecutionProvider): %s", op, loaded.error.c_str());
  }
  *out = &loaded.kernels;
  return nullptr;
}

}  // namespace ssmpose_ort

#endif  // SSMPOSE_ORT_WITH_CUDA
