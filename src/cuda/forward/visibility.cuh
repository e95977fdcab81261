// Moved: the visibility functors are src/cuda/common/visibility.cuh (one header for every kernel).
#include "cuda/common/visibility.cuh"
