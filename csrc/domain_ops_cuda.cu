// CUDA reward kernels. No torch headers: compiles with plain `nvcc -c` (CI does this) and is
// linked into neox_acodm._C by setup.py when torch has CUDA. C-ABI launchers return a
// cudaError_t value.
//
// accumulate: grid-stride, 16-byte vector loads when aligned.
// gram:       a fixed grid of blocks streams column tiles of B into shared memory (rows padded
//             against bank conflicts); thread t owns up to 4 pairs (i, j), i <= j, of the upper
//             triangle, summed in fp32 within a tile and fp64 across tiles. Each block writes
//             its partials to a workspace; a second kernel adds them in block order. No
//             atomics: the result is bit-identical across runs and GPUs. B is read once.
// sketch:     blocked count-sketch bucket + per-element sign; shared-memory private sketch per block when k fits, else
//             global atomics (L2 resident for k <= a few MiB).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "acodm_ops.h"

namespace {

template <typename T>
__device__ __forceinline__ float to_f32(T v);
template <>
__device__ __forceinline__ float to_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <>
__device__ __forceinline__ float to_f32<__half>(__half v) { return __half2float(v); }

int grid_for(int64_t n, int threads) {
  int dev = 0, sms = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  int64_t blocks = (n + threads - 1) / threads;
  int64_t cap = static_cast<int64_t>(sms > 0 ? sms : 80) * 8;
  return static_cast<int>(blocks < cap ? (blocks > 0 ? blocks : 1) : cap);
}

// ---------------------------------------------------------------------------------------
template <typename T>
__global__ void accumulate_kernel(float* __restrict__ row, const T* __restrict__ grad, int64_t n, float alpha) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    row[i] += alpha * to_f32(grad[i]);
}

// float32 fast path: 4 elements per thread with float4 when both pointers are 16-B aligned
__global__ void accumulate_f32x4_kernel(float4* __restrict__ row, const float4* __restrict__ grad, int64_t n4,
                                        float alpha) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n4; i += stride) {
    float4 r = row[i];
    const float4 g = grad[i];
    r.x += alpha * g.x;
    r.y += alpha * g.y;
    r.z += alpha * g.z;
    r.w += alpha * g.w;
    row[i] = r;
  }
}

// ---------------------------------------------------------------------------------------
constexpr int kGramThreads = 256;
constexpr int kGramSlots = 4;      // pairs per thread: D (D + 1) / 2 <= 4 * 256, so D <= 44
constexpr int kTile = 128;         // columns per shared-memory tile
constexpr int kGramBlocks = 1024;  // fixed grid: the reduction order, hence the result, is the
                                   // same on every GPU and every run

__device__ __forceinline__ void pair_of(int64_t p, int64_t D, int64_t* i, int64_t* j) {
  // invert p = i*D - i*(i-1)/2 + (j - i), i <= j
  int64_t a = 0, rem = p;
  while (rem >= D - a) { rem -= D - a; ++a; }
  *i = a;
  *j = a + rem;
}

// Pass 1: block b sums tiles b, b + gridDim.x, ... and writes its partial of every pair to
// partial[b * pairs + p] (no atomics).
__global__ void gram_partial_kernel(const float* __restrict__ B, int64_t D, int64_t P,
                                    double* __restrict__ partial) {
  extern __shared__ float tile[];  // [D][kTile + 1]
  const int64_t pairs = D * (D + 1) / 2;
  const int64_t ld = kTile + 1;
  int64_t pi[kGramSlots], pj[kGramSlots];
  double acc[kGramSlots];
#pragma unroll
  for (int s = 0; s < kGramSlots; ++s) {
    const int64_t p = threadIdx.x + static_cast<int64_t>(s) * blockDim.x;
    acc[s] = 0.0;
    pi[s] = pj[s] = -1;
    if (p < pairs) pair_of(p, D, &pi[s], &pj[s]);
  }
  const int64_t tiles = (P + kTile - 1) / kTile;
  for (int64_t tix = blockIdx.x; tix < tiles; tix += gridDim.x) {
    const int64_t c0 = tix * kTile;
    const int64_t w = (P - c0) < kTile ? (P - c0) : kTile;
    __syncthreads();
    for (int64_t e = threadIdx.x; e < D * kTile; e += blockDim.x) {
      const int64_t r = e / kTile, c = e % kTile;
      tile[r * ld + c] = c < w ? B[r * P + c0 + c] : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int s = 0; s < kGramSlots; ++s) {
      if (pi[s] < 0) continue;
      const float* a = tile + pi[s] * ld;
      const float* b = tile + pj[s] * ld;
      float sum = 0.0f;
#pragma unroll 8
      for (int c = 0; c < kTile; ++c) sum = fmaf(a[c], b[c], sum);
      acc[s] += sum;
    }
  }
#pragma unroll
  for (int s = 0; s < kGramSlots; ++s) {
    const int64_t p = threadIdx.x + static_cast<int64_t>(s) * blockDim.x;
    if (p < pairs) partial[static_cast<int64_t>(blockIdx.x) * pairs + p] = acc[s];
  }
}

// Pass 2: thread p sums the blocks' partials of pair p in block order and writes both halves.
__global__ void gram_reduce_kernel(const double* __restrict__ partial, int64_t blocks, int64_t D,
                                   double* __restrict__ out) {
  const int64_t pairs = D * (D + 1) / 2;
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= pairs) return;
  double s = 0.0;
  for (int64_t b = 0; b < blocks; ++b) s += partial[b * pairs + p];
  int64_t i, j;
  pair_of(p, D, &i, &j);
  out[i * D + j] = s;
  out[j * D + i] = s;
}

int64_t gram_blocks(int64_t P) {
  const int64_t tiles = (P + kTile - 1) / kTile;
  return tiles < kGramBlocks ? tiles : kGramBlocks;
}

// ---------------------------------------------------------------------------------------
template <typename T, bool kShared>
__global__ void sketch_kernel(float* __restrict__ row, uint32_t k, const T* __restrict__ grad, int64_t n,
                              int64_t offset, uint32_t s, float alpha) {
  extern __shared__ float priv[];
  if (kShared) {
    for (uint32_t b = threadIdx.x; b < k; b += blockDim.x) priv[b] = 0.0f;
    __syncthreads();
  }
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const uint32_t j = static_cast<uint32_t>(offset + i);
    const float v = alpha * to_f32(grad[i]);
    const bool neg = acodm::sketch_sign_bit(j, acodm::sign_seed(s)) != 0u;
    atomicAdd((kShared ? priv : row) + acodm::sketch_bucket(j, k, acodm::block_seed(s)), neg ? -v : v);
  }
  if (kShared) {
    __syncthreads();
    for (uint32_t b = threadIdx.x; b < k; b += blockDim.x)
      if (priv[b] != 0.0f) atomicAdd(row + b, priv[b]);
  }
}

template <typename T>
int launch_sketch(float* row, int64_t k, const void* grad, int64_t n, int64_t offset, uint64_t seed, float alpha,
                  cudaStream_t st) {
  const uint32_t s = acodm::seed_mix(seed);
  const int threads = 256;
  const size_t smem = static_cast<size_t>(k) * sizeof(float);
  int dev = 0, max_smem = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  if (smem <= static_cast<size_t>(max_smem)) {
    cudaFuncSetAttribute(sketch_kernel<T, true>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    sketch_kernel<T, true><<<grid_for(n, threads), threads, smem, st>>>(
        row, static_cast<uint32_t>(k), static_cast<const T*>(grad), n, offset, s, alpha);
  } else {
    sketch_kernel<T, false><<<grid_for(n, threads), threads, 0, st>>>(
        row, static_cast<uint32_t>(k), static_cast<const T*>(grad), n, offset, s, alpha);
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

extern "C" int acodm_cuda_accumulate(float* row, const void* grad, int dtype, int64_t n, float alpha, void* stream) {
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  const int threads = 256;
  if (n == 0) return 0;
  switch (static_cast<acodm::DType>(dtype)) {
    case acodm::DType::F32:
      if ((reinterpret_cast<uintptr_t>(row) | reinterpret_cast<uintptr_t>(grad)) % 16 == 0 && n % 4 == 0) {
        accumulate_f32x4_kernel<<<grid_for(n / 4, threads), threads, 0, st>>>(
            reinterpret_cast<float4*>(row), static_cast<const float4*>(grad), n / 4, alpha);
      } else {
        accumulate_kernel<float><<<grid_for(n, threads), threads, 0, st>>>(row, static_cast<const float*>(grad), n, alpha);
      }
      break;
    case acodm::DType::BF16:
      accumulate_kernel<__nv_bfloat16><<<grid_for(n, threads), threads, 0, st>>>(
          row, static_cast<const __nv_bfloat16*>(grad), n, alpha);
      break;
    case acodm::DType::F16:
      accumulate_kernel<__half><<<grid_for(n, threads), threads, 0, st>>>(row, static_cast<const __half*>(grad), n, alpha);
      break;
  }
  return static_cast<int>(cudaGetLastError());
}

extern "C" int64_t acodm_cuda_gram_workspace(int64_t D, int64_t P) {
  return gram_blocks(P) * (D * (D + 1) / 2);
}

extern "C" int acodm_cuda_gram(const float* B, int64_t D, int64_t P, double* out, double* workspace,
                               void* stream) {
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  cudaError_t e = cudaMemsetAsync(out, 0, sizeof(double) * D * D, st);
  if (e != cudaSuccess) return static_cast<int>(e);
  if (D == 0 || P == 0) return 0;
  const int64_t pairs = D * (D + 1) / 2;
  if (pairs > static_cast<int64_t>(kGramSlots) * kGramThreads) return static_cast<int>(cudaErrorInvalidValue);
  const size_t smem = sizeof(float) * D * (kTile + 1);
  const int64_t blocks = gram_blocks(P);
  gram_partial_kernel<<<static_cast<int>(blocks), kGramThreads, smem, st>>>(B, D, P, workspace);
  e = cudaGetLastError();
  if (e != cudaSuccess) return static_cast<int>(e);
  gram_reduce_kernel<<<static_cast<int>((pairs + 255) / 256), 256, 0, st>>>(workspace, blocks, D, out);
  return static_cast<int>(cudaGetLastError());
}

extern "C" int acodm_cuda_sketch(float* row, int64_t k, const void* grad, int dtype, int64_t n, int64_t offset,
                                 uint64_t seed, float alpha, void* stream) {
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  if (n == 0) return 0;
  switch (static_cast<acodm::DType>(dtype)) {
    case acodm::DType::F32: return launch_sketch<float>(row, k, grad, n, offset, seed, alpha, st);
    case acodm::DType::BF16: return launch_sketch<__nv_bfloat16>(row, k, grad, n, offset, seed, alpha, st);
    case acodm::DType::F16: return launch_sketch<__half>(row, k, grad, n, offset, seed, alpha, st);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}
