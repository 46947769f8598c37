// CPU reward kernels (OpenMP; AVX2/FMA/F16C when the compiler targets them).
//
// accumulate: one streaming pass, row += alpha * grad (fp32 / bf16 / fp16 in, fp32 out).
// gram:       symmetric B B^T reading B once: column blocks that stay in L2, a 4x3
//             register-tiled AVX2 micro-kernel over the upper triangle, fp32 accumulation
//             inside a block and fp64 across blocks and threads.
// sketch:     count-sketch with AVX2-vectorised hashing and a scalar scatter into a
//             per-thread private copy of the row (no atomics), reduced at the end.
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "acodm_ops.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define ACODM_AVX2 1
#endif

namespace acodm {

namespace {

inline float bf16_to_f32(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline float f16_to_f32(uint16_t h) {
#if defined(__F16C__)
  return _cvtsh_ss(h);
#else
  uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal
      exp = 127 - 15 + 1;
      while (!(man & 0x400)) { man <<= 1; --exp; }
      bits = sign | (exp << 23) | ((man & 0x3FF) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7F800000u | (man << 13);
  } else {
    bits = sign | ((exp - 15 + 127) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
#endif
}

template <typename Load>
void axpy(float* row, int64_t n, float alpha, Load load) {
#pragma omp parallel for simd schedule(static) if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) row[i] += alpha * load(i);
}

}  // namespace

int cpu_threads() { return omp_get_max_threads(); }

void accumulate_cpu(float* row, const void* grad, DType dtype, int64_t n, float alpha) {
  switch (dtype) {
    case DType::F32: {
      const float* g = static_cast<const float*>(grad);
      axpy(row, n, alpha, [g](int64_t i) { return g[i]; });
      break;
    }
    case DType::BF16: {
      const uint16_t* g = static_cast<const uint16_t*>(grad);
      axpy(row, n, alpha, [g](int64_t i) { return bf16_to_f32(g[i]); });
      break;
    }
    case DType::F16: {
      const uint16_t* g = static_cast<const uint16_t*>(grad);
      axpy(row, n, alpha, [g](int64_t i) { return f16_to_f32(g[i]); });
      break;
    }
  }
}

// ---------------------------------------------------------------------------------------
// Gram
// ---------------------------------------------------------------------------------------
namespace {

constexpr int64_t kBlock = 2048;  // columns per block: 22 rows x 8 KiB = 176 KiB, in L2

// acc[i][j] += sum_c a_i[c] * b_j[c] over c in [0, n) for TI x TJ rows.
template <int TI, int TJ>
inline void tile_dot(const float* const* a, const float* const* b, int64_t n, double* acc) {
  int64_t c = 0;
#ifdef ACODM_AVX2
  __m256 s[TI][TJ];
  for (int i = 0; i < TI; ++i)
    for (int j = 0; j < TJ; ++j) s[i][j] = _mm256_setzero_ps();
  for (; c + 8 <= n; c += 8) {
    __m256 bv[TJ];
    for (int j = 0; j < TJ; ++j) bv[j] = _mm256_loadu_ps(b[j] + c);
    for (int i = 0; i < TI; ++i) {
      __m256 av = _mm256_loadu_ps(a[i] + c);
      for (int j = 0; j < TJ; ++j) s[i][j] = _mm256_fmadd_ps(av, bv[j], s[i][j]);
    }
  }
  for (int i = 0; i < TI; ++i)
    for (int j = 0; j < TJ; ++j) {
      __m128 lo = _mm256_castps256_ps128(s[i][j]), hi = _mm256_extractf128_ps(s[i][j], 1);
      __m128 v = _mm_add_ps(lo, hi);
      __m128d d = _mm_add_pd(_mm_cvtps_pd(v), _mm_cvtps_pd(_mm_movehl_ps(v, v)));
      acc[i * TJ + j] += _mm_cvtsd_f64(_mm_add_sd(d, _mm_unpackhi_pd(d, d)));
    }
#endif
  if (c < n) {
    float t[TI][TJ] = {};
    for (; c < n; ++c)
      for (int i = 0; i < TI; ++i)
        for (int j = 0; j < TJ; ++j) t[i][j] += a[i][c] * b[j][c];
    for (int i = 0; i < TI; ++i)
      for (int j = 0; j < TJ; ++j) acc[i * TJ + j] += t[i][j];
  }
}

using TileFn = void (*)(const float* const*, const float* const*, int64_t, double*);

template <int TI>
TileFn pick_tj(int tj) {
  switch (tj) {
    case 1: return tile_dot<TI, 1>;
    case 2: return tile_dot<TI, 2>;
    default: return tile_dot<TI, 3>;
  }
}

TileFn pick_tile(int ti, int tj) {
  switch (ti) {
    case 1: return pick_tj<1>(tj);
    case 2: return pick_tj<2>(tj);
    case 3: return pick_tj<3>(tj);
    default: return pick_tj<4>(tj);
  }
}

// Upper triangle (j >= i) of the Gram of columns [c0, c1) into acc[D*D] (float64).
void gram_range(const float* B, int64_t D, int64_t P, int64_t c0, int64_t c1, double* acc) {
  const float* a[4];
  const float* b[3];
  double t[12];
  for (int64_t blk = c0; blk < c1; blk += kBlock) {
    const int64_t n = std::min(kBlock, c1 - blk);
    for (int64_t i0 = 0; i0 < D; i0 += 4) {
      const int ti = static_cast<int>(std::min<int64_t>(4, D - i0));
      for (int i = 0; i < ti; ++i) a[i] = B + (i0 + i) * P + blk;
      for (int64_t j0 = i0; j0 < D; j0 += 3) {
        const int tj = static_cast<int>(std::min<int64_t>(3, D - j0));
        for (int j = 0; j < tj; ++j) b[j] = B + (j0 + j) * P + blk;
        std::fill(t, t + 12, 0.0);
        pick_tile(ti, tj)(a, b, n, t);
        for (int i = 0; i < ti; ++i)
          for (int j = 0; j < tj; ++j)
            if (j0 + j >= i0 + i) acc[(i0 + i) * D + (j0 + j)] += t[i * tj + j];
      }
    }
  }
}

}  // namespace

void gram_cpu(const float* B, int64_t D, int64_t P, double* out) {
  std::fill(out, out + D * D, 0.0);
  if (D == 0 || P == 0) return;
  const int nt = std::max<int64_t>(1, std::min<int64_t>(omp_get_max_threads(), (P + kBlock - 1) / kBlock));
  std::vector<double> part(static_cast<size_t>(nt) * D * D, 0.0);
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num();
    // contiguous, block-aligned column range per thread
    const int64_t blocks = (P + kBlock - 1) / kBlock;
    const int64_t b0 = blocks * t / nt, b1 = blocks * (t + 1) / nt;
    gram_range(B, D, P, b0 * kBlock, std::min(P, b1 * kBlock), part.data() + static_cast<size_t>(t) * D * D);
  }
  for (int t = 0; t < nt; ++t)
    for (int64_t i = 0; i < D * D; ++i) out[i] += part[static_cast<size_t>(t) * D * D + i];
  for (int64_t i = 0; i < D; ++i)
    for (int64_t j = 0; j < i; ++j) out[i * D + j] = out[j * D + i];
}

// ---------------------------------------------------------------------------------------
// Count-sketch (blocked: 8 consecutive elements -> one rotated group of 8 buckets)
// ---------------------------------------------------------------------------------------
namespace {

// v with its sign bit xor-ed by ``sign_bit``: branch-free (random signs make a branch
// mispredict half the time)
inline float signed_by(float v, uint32_t sign_bit) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  bits ^= sign_bit;
  std::memcpy(&v, &bits, 4);
  return v;
}

template <typename Load>
inline void sketch_scalar(float* row, uint32_t k, int64_t lo, int64_t hi, int64_t offset, uint32_t s,
                          uint32_t sb, float alpha, Load load) {
  const uint32_t ss = sign_seed(s);
  for (int64_t i = lo; i < hi; ++i) {
    const uint32_t j = static_cast<uint32_t>(offset + i);
    row[sketch_bucket(j, k, sb)] += signed_by(alpha * load(i), sketch_sign_bit(j, ss));
  }
}

#ifdef ACODM_AVX2
inline __m256 load8(const float* g) { return _mm256_loadu_ps(g); }
inline __m256 load8(const uint16_t* g, DType dt) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(g));
  if (dt == DType::BF16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
#if defined(__F16C__)
  return _mm256_cvtph_ps(raw);
#else
  alignas(32) float f[8];
  for (int l = 0; l < 8; ++l) f[l] = f16_to_f32(g[l]);
  return _mm256_load_ps(f);
#endif
}
#endif

// i in [lo, hi); vector path for whole 8-aligned blocks of the global index
template <typename Load, typename Vec>
void sketch_range(float* row, uint32_t k, int64_t lo, int64_t hi, int64_t offset, uint32_t s, float alpha,
                  Load load, Vec vec) {
  const uint32_t sb = block_seed(s);
  int64_t i = lo;
#ifdef ACODM_AVX2
  const int64_t first = lo + ((8 - ((offset + lo) & 7)) & 7);
  if (first + 8 <= hi) {
    sketch_scalar(row, k, lo, first, offset, s, sb, alpha, load);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i shl = _mm256_setr_epi32(31, 30, 29, 28, 27, 26, 25, 24);  // bit l -> bit 31
    const uint32_t ss = sign_seed(s);
    const __m256i top = _mm256_set1_epi32(static_cast<int>(0x80000000u));
    const __m256 va = _mm256_set1_ps(alpha);
    __m256i rot[8];  // rot[r][m] = (m - r) & 7: lane l moves to (l + r) & 7
    for (int r = 0; r < 8; ++r)
      rot[r] = _mm256_and_si256(_mm256_sub_epi32(lane, _mm256_set1_epi32(r)), _mm256_set1_epi32(7));
    const uint32_t kb = k >> 3;
    const __m256i m1 = _mm256_set1_epi32(0x45D9F3B);
    const __m256i vsb = _mm256_set1_epi32(static_cast<int>(sb)), vss = _mm256_set1_epi32(static_cast<int>(ss));
    auto mix8 = [&](__m256i x) {  // mix32 on 8 lanes
      x = _mm256_mullo_epi32(_mm256_xor_si256(_mm256_srli_epi32(x, 16), x), m1);
      x = _mm256_mullo_epi32(_mm256_xor_si256(_mm256_srli_epi32(x, 16), x), m1);
      return _mm256_xor_si256(_mm256_srli_epi32(x, 16), x);
    };
    auto block = [&](int64_t ii, uint32_t hb, uint32_t hs) {
      const __m256i signs = _mm256_and_si256(_mm256_sllv_epi32(_mm256_set1_epi32(static_cast<int>(hs)), shl), top);
      __m256 v = _mm256_xor_ps(_mm256_mul_ps(vec(ii), va), _mm256_castsi256_ps(signs));
      v = _mm256_permutevar8x32_ps(v, rot[hb & 7u]);
      float* dst = row + 8 * static_cast<int64_t>(bucket_of(hb, kb));
      _mm256_storeu_ps(dst, _mm256_add_ps(_mm256_loadu_ps(dst), v));
    };
    alignas(32) uint32_t hbs[8], hss[8];
    i = first;
    for (; i + 64 <= hi; i += 64) {  // 8 blocks: their two hashes in vector lanes
      const __m256i blk = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(offset + i) >> 3)), lane);
      _mm256_store_si256(reinterpret_cast<__m256i*>(hbs), mix8(_mm256_xor_si256(blk, vsb)));
      _mm256_store_si256(reinterpret_cast<__m256i*>(hss), mix8(_mm256_xor_si256(blk, vss)));
      for (int q = 0; q < 8; ++q) block(i + 8 * q, hbs[q], hss[q]);
    }
    for (; i + 8 <= hi; i += 8) {
      const uint32_t b = static_cast<uint32_t>(offset + i) >> 3;
      block(i, mix32(b ^ sb), mix32(b ^ ss));
    }
  }
#endif
  sketch_scalar(row, k, i, hi, offset, s, sb, alpha, load);
}

template <typename Load, typename Vec>
void sketch_impl(float* row, int64_t k, int64_t n, int64_t offset, uint64_t seed, float alpha, Load load, Vec vec) {
  const uint32_t s = seed_mix(seed);
  const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(omp_get_max_threads(), n / (1 << 16))));
  if (nt == 1) {
    sketch_range(row, static_cast<uint32_t>(k), 0, n, offset, s, alpha, load, vec);
    return;
  }
  std::vector<float> priv(static_cast<size_t>(nt) * k, 0.0f);
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num();
    // split at multiples of 8 of the global index so no block straddles two threads
    auto cut = [&](int q) {
      if (q == nt) return n;
      const int64_t c = n * q / nt;
      return std::min<int64_t>(n, c - ((offset + c) & 7));
    };
    sketch_range(priv.data() + static_cast<size_t>(t) * k, static_cast<uint32_t>(k), cut(t), cut(t + 1), offset,
                 s, alpha, load, vec);
  }
  for (int t = 0; t < nt; ++t) {
    const float* p = priv.data() + static_cast<size_t>(t) * k;
#pragma omp simd
    for (int64_t b = 0; b < k; ++b) row[b] += p[b];
  }
}

}  // namespace

void sketch_cpu(float* row, int64_t k, const void* grad, DType dtype, int64_t n, int64_t offset,
                uint64_t seed, float alpha) {
  switch (dtype) {
    case DType::F32: {
      const float* g = static_cast<const float*>(grad);
      sketch_impl(row, k, n, offset, seed, alpha, [g](int64_t i) { return g[i]; }
#ifdef ACODM_AVX2
                  , [g](int64_t i) { return load8(g + i); }
#else
                  , [](int64_t) { return 0; }
#endif
      );
      break;
    }
    case DType::BF16:
    case DType::F16: {
      const uint16_t* g = static_cast<const uint16_t*>(grad);
      const bool bf = dtype == DType::BF16;
      sketch_impl(row, k, n, offset, seed, alpha,
                  [g, bf](int64_t i) { return bf ? bf16_to_f32(g[i]) : f16_to_f32(g[i]); }
#ifdef ACODM_AVX2
                  , [g, dtype](int64_t i) { return load8(g + i, dtype); }
#else
                  , [](int64_t) { return 0; }
#endif
      );
      break;
    }
  }
}

}  // namespace acodm
