// Lazy loading of libssmpose_kernels_cuda.so, the project's CUDA kernels (C ABI of kernels/ssmpose_kernels.h).
//
// Why dlopen() and not a link: libssmpose_trt.so then loads -- and TensorRT can parse, build-check and
// deserialise the plugins -- on machines where the kernel library is missing or stale, and the failure appears
// once, at the first enqueue, as a message naming the file instead of a loader error that hides which library
// is wrong. The plugin sources also compile into the stand-in unit tests without any CUDA build. The library is
// looked for in the folder libssmpose_trt.so was loaded from (build/lib, or the installed package's lib folder),
// then by name through the loader's search path. It carries a static CUDA runtime, so this library needs no
// libcudart either: the stream TensorRT hands enqueue() is passed on as void*.
#include <dlfcn.h>

#include <mutex>
#include <string>

#include "trt_common.h"

namespace ssmpose_trt {

namespace {

constexpr const char* kCudaLibrary = "libssmpose_kernels_cuda.so";

struct Loaded {
  CudaKernels kernels{};
  std::string error;  // empty when loaded
};

std::string own_dir() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&own_dir), &info) == 0 || info.dli_fname == nullptr) return std::string();
  const std::string path = info.dli_fname;
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
    if (handle == nullptr) {
      const char* e = dlerror();
      tried = path + " (" + (e != nullptr ? e : "not loadable") + ")";
    }
  }
  if (handle == nullptr) {
    handle = dlopen(kCudaLibrary, RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      const char* e = dlerror();
      out.error = std::string("cannot load the CUDA kernel library: tried ") + tried + (tried.empty() ? "" : ", ") +
                  kCudaLibrary + " (" + (e != nullptr ? e : "not found") + ")";
      return out;
    }
  }
  auto sym = [&](const char* name) -> void* {
    dlerror();
    void* p = dlsym(handle, name);
    if (p == nullptr && out.error.empty()) out.error = std::string(kCudaLibrary) + ": missing symbol " + name;
    return p;
  };
  auto abi = reinterpret_cast<int (*)(void)>(sym("ssm_abi_version"));
  // A library of another ABI is named as such, before any symbol it lacks (a stale build lacks the newer kernels).
  if (abi != nullptr && abi() != SSM_KERNELS_ABI_VERSION) {
    out.error = std::string(kCudaLibrary) + " implements kernel ABI version " + std::to_string(abi()) +
                ", libssmpose_trt needs " + std::to_string(SSM_KERNELS_ABI_VERSION) + ": rebuild the libraries";
    return out;
  }
  out.kernels.status_string = reinterpret_cast<const char* (*)(int)>(sym("ssm_status_string"));
  out.kernels.selective_scan_fwd =
      reinterpret_cast<decltype(out.kernels.selective_scan_fwd)>(sym("ssm_selective_scan_fwd_cuda"));
  out.kernels.selective_scan_2d_fwd =
      reinterpret_cast<decltype(out.kernels.selective_scan_2d_fwd)>(sym("ssm_selective_scan_2d_fwd_cuda"));
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
  // The handle stays open for the life of the process (engines may run until exit).
  return out;
}

}  // namespace

const CudaKernels* cuda_kernels(std::string* error) noexcept {
  static std::once_flag once;
  static Loaded loaded;
  try {
    std::call_once(once, [] { loaded = load(); });
    if (!loaded.error.empty()) {
      *error = loaded.error;
      return nullptr;
    }
  } catch (...) {
    *error = "cannot load the CUDA kernel library: unexpected error";
    return nullptr;
  }
  return &loaded.kernels;
}

}  // namespace ssmpose_trt
