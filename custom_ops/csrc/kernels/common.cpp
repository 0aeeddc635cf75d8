// Library identity and status names, shared by libssmpose_kernels (CPU) and libssmpose_kernels_cuda.
// Plain C++ with no dependencies, so that both builds compile this same file.
#include "ssmpose_kernels.h"

extern "C" {

SSM_API int ssm_abi_version(void) { return SSM_KERNELS_ABI_VERSION; }

SSM_API const char* ssm_status_string(int status) {
  switch (status) {
    case SSM_OK:
      return "ok";
    case SSM_ERR_NULL_POINTER:
      return "null pointer argument";
    case SSM_ERR_BAD_SIZE:
      return "bad size (non-positive or out-of-range dimension, inconsistent layout, or too large to "
             "allocate)";
    case SSM_ERR_BAD_DTYPE:
      return "unsupported dtype";
    case SSM_ERR_UNSUPPORTED:
      return "unsupported configuration";
    case SSM_ERR_CUDA:
      return "CUDA error";
    default:
      return "unknown status";
  }
}

}  // extern "C"
