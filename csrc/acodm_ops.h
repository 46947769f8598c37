// neox_acodm reward kernels: shared declarations (no torch types, so the .cu compiles
// with plain nvcc). See csrc/README.md for the maths and the shape/dtype contracts.
#pragma once
#include <cstdint>

namespace acodm {

enum class DType : int { F32 = 0, BF16 = 1, F16 = 2 };

// ---- count-sketch hash, bit-identical on CPU, CUDA and the torch reference ------------
#if defined(__CUDACC__)
#define ACODM_HD __host__ __device__ __forceinline__
#else
#define ACODM_HD inline
#endif

ACODM_HD uint32_t mix32(uint32_t x) {
  x = ((x >> 16) ^ x) * 0x45D9F3Bu;
  x = ((x >> 16) ^ x) * 0x45D9F3Bu;
  return (x >> 16) ^ x;
}
ACODM_HD uint32_t seed_mix(uint64_t seed) { return static_cast<uint32_t>(seed * 0x9E3779B9ull); }
// bucket in [0, k): Lemire's multiply-shift range reduction of the low 31 bits
ACODM_HD uint32_t bucket_of(uint32_t h, uint32_t k) {
  return static_cast<uint32_t>((static_cast<uint64_t>(h & 0x7FFFFFFFu) * k) >> 31);
}
// Blocked count-sketch (see neox_acodm/ops.py): block j >> 3 is hashed once to a group of 8
// buckets and rotated by a random lane offset; the sign is per element. k % 8 == 0.
ACODM_HD uint32_t block_seed(uint32_t s) { return s + 0x632BE5ABu; }
ACODM_HD uint32_t sign_seed(uint32_t s) { return s + 0x2545F491u; }
// sign bit (0x80000000 or 0) of global element j
ACODM_HD uint32_t sketch_sign_bit(uint32_t j, uint32_t ss) { return ((mix32((j >> 3) ^ ss) >> (j & 7u)) & 1u) << 31; }
ACODM_HD uint32_t sketch_bucket(uint32_t j, uint32_t k, uint32_t sb) {
  const uint32_t hb = mix32((j >> 3) ^ sb);
  return 8u * bucket_of(hb, k >> 3) + (((j & 7u) + (hb & 7u)) & 7u);
}

// ---- CPU (domain_ops_cpu.cpp) -----------------------------------------------------------
// row[i] += alpha * grad[i], i < n. row: float32; grad: dtype.
void accumulate_cpu(float* row, const void* grad, DType dtype, int64_t n, float alpha);
// out[D*D] (float64, full symmetric) = B B^T for row-major B[D, P] float32.
void gram_cpu(const float* B, int64_t D, int64_t P, double* out);
// row[bucket(j)] += alpha * sign(j) * grad[j - offset] for global index j = offset + i.
void sketch_cpu(float* row, int64_t k, const void* grad, DType dtype, int64_t n, int64_t offset,
                uint64_t seed, float alpha);
int cpu_threads();

}  // namespace acodm

// ---- CUDA (domain_ops_cuda.cu), C ABI; return a cudaError_t value (0 = success) ---------
extern "C" {
int acodm_cuda_accumulate(float* row, const void* grad, int dtype, int64_t n, float alpha,
                          void* stream);
// out: D*D float64 device buffer; workspace: acodm_cuda_gram_workspace(D, P) float64
// device elements. Deterministic (fixed grid, ordered reduction). D*(D+1)/2 <= 1024.
int64_t acodm_cuda_gram_workspace(int64_t D, int64_t P);
int acodm_cuda_gram(const float* B, int64_t D, int64_t P, double* out, double* workspace,
                    void* stream);
int acodm_cuda_sketch(float* row, int64_t k, const void* grad, int dtype, int64_t n,
                      int64_t offset, uint64_t seed, float alpha, void* stream);
}
