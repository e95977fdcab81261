// Whether an sm_90a kernel can run in this process: the current device is compute capability
// 9.0 and this binary holds sm_90a code for `kernel` (a build without it compiles the sm_90a
// kernels as empty stubs). Callers keep the answer once per process (the first call's device).
#pragma once

#include <cuda_runtime.h>

namespace moba::cuda {

template <class Kernel>
bool sm90a_kernel_runs(Kernel* kernel) {
  int dev = 0, major = 0, minor = 0;
  bool ok = cudaGetDevice(&dev) == cudaSuccess &&
            cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
            cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) == cudaSuccess &&
            major == 9 && minor == 0;
  if (ok) {
    cudaFuncAttributes fa{};
    ok = cudaFuncGetAttributes(&fa, kernel) == cudaSuccess && fa.binaryVersion == 90;
  }
  (void)cudaGetLastError();  // a refused query leaves no sticky error behind
  return ok;
}

}  // namespace moba::cuda
