// Compile-side probe: the CuTe/CUTLASS headers cute_probe_sm90.cu includes, and no code. Its
// compile time is the fixed cost every translation unit that includes them would pay.
#include <cuda_runtime.h>

#include <cute/tensor.hpp>
#include <cute/atom/copy_traits_sm90_tma.hpp>
#include <cute/atom/mma_traits_sm90_gmma.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/numeric_conversion.h>
#include <cutlass/numeric_types.h>
