// Portability macros shared by the C++ (CPU) and CUDA translation units.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define CF_HD __host__ __device__ __forceinline__
#else
#define CF_HD inline
#endif
