// pybind11 bindings of neox_acodm._C: argument checks (naming the argument), device dispatch.
#include <torch/extension.h>

#include <algorithm>
#include <string>
#include <type_traits>

#include "acodm_ops.h"

#ifdef NEOX_ACODM_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#endif

// Bump together with neox_acodm/ops.py ABI_VERSION.
#define NEOX_ACODM_ABI_VERSION 4

namespace {

// Error messages are built with std::to_string, not iostreams, and raised as pybind11's
// ValueError. On the H100 image (torch 2.11 built with gcc-toolset-13, extension with
// Ubuntu g++ 13) any integer written through c10::str / an ostringstream inlined in this
// module segfaulted in the locale facets, so no stream formatting is compiled in here.
void put(std::string& s, const char* v) { s += v; }
void put(std::string& s, const std::string& v) { s += v; }
template <typename T, std::enable_if_t<std::is_integral_v<T>, int> = 0>
void put(std::string& s, T v) { s += std::to_string(v); }
void put(std::string& s, c10::ScalarType t) { s += c10::toString(t); }
void put(std::string& s, const c10::Device& d) { s += d.str(); }
void put(std::string& s, c10::IntArrayRef a) {
  s += '[';
  for (size_t i = 0; i < a.size(); ++i) s += (i ? ", " : "") + std::to_string(a[i]);
  s += ']';
}
template <typename... Args>
std::string cat(const Args&... args) {
  std::string s;
  (put(s, args), ...);
  return s;
}

#define ACODM_CHECK(cond, ...) \
  do {                         \
    if (!(cond)) throw pybind11::value_error(cat(__VA_ARGS__)); \
  } while (0)

acodm::DType dtype_of(const torch::Tensor& t, const char* name) {
  if (t.scalar_type() == torch::kFloat32) return acodm::DType::F32;
  if (t.scalar_type() == torch::kBFloat16) return acodm::DType::BF16;
  if (t.scalar_type() == torch::kFloat16) return acodm::DType::F16;
  ACODM_CHECK(false, name, ": dtype must be float32, bfloat16 or float16, got ", t.scalar_type());
  return acodm::DType::F32;
}

void check_buffer(const torch::Tensor& b, const char* name) {
  ACODM_CHECK(b.dim() == 2 && b.scalar_type() == torch::kFloat32, name,
              ": expected a [D, P] float32 tensor, got ", b.sizes(), " ", b.scalar_type());
  ACODM_CHECK(b.is_contiguous(), name, ": must be contiguous");
}

void check_grad(const torch::Tensor& g, const torch::Tensor& b, const char* bname) {
  ACODM_CHECK(g.is_contiguous(), "grad: must be contiguous (got strides ", g.strides(), ")");
  ACODM_CHECK(g.device() == b.device(), "grad: on ", g.device(), " but ", bname, " is on ", b.device());
}

#ifdef NEOX_ACODM_WITH_CUDA
void check_cuda(int err, const char* op) {
  ACODM_CHECK(err == 0, "neox_acodm CUDA kernel ", op, " failed with cudaError ", err);
}
#endif

void accumulate_domain_grad(torch::Tensor buffer, torch::Tensor grad, int64_t domain,
                            int64_t offset, double alpha) {
  check_buffer(buffer, "buffer");
  check_grad(grad, buffer, "buffer");
  const auto dt = dtype_of(grad, "grad");
  const int64_t n = grad.numel();
  ACODM_CHECK(domain >= 0 && domain < buffer.size(0), "domain: ", domain, " out of range [0, ",
              buffer.size(0), ")");
  ACODM_CHECK(offset >= 0 && offset + n <= buffer.size(1), "offset: [", offset, ", ", offset + n,
              ") exceeds P=", buffer.size(1));
  float* row = buffer.data_ptr<float>() + domain * buffer.size(1) + offset;
  if (buffer.is_cuda()) {
#ifdef NEOX_ACODM_WITH_CUDA
    check_cuda(acodm_cuda_accumulate(row, grad.data_ptr(), static_cast<int>(dt), n, static_cast<float>(alpha),
                                     at::cuda::getCurrentCUDAStream().stream()),
               "accumulate_domain_grad");
#else
    ACODM_CHECK(false, "buffer: on CUDA but neox_acodm._C was built without CUDA");
#endif
    return;
  }
  acodm::accumulate_cpu(row, grad.data_ptr(), dt, n, static_cast<float>(alpha));
}

torch::Tensor domain_gram(torch::Tensor buffer) {
  check_buffer(buffer, "buffer");
  const int64_t D = buffer.size(0), P = buffer.size(1);
  auto out = torch::empty({D, D}, buffer.options().dtype(torch::kFloat64));
  if (buffer.is_cuda()) {
#ifdef NEOX_ACODM_WITH_CUDA
    ACODM_CHECK(D <= 44, "buffer: the CUDA Gram kernel supports at most 44 domains, got ", D,
                "; use acodm.reward.backend: torch");
    auto ws = torch::empty({std::max<int64_t>(1, acodm_cuda_gram_workspace(D, P))},
                           buffer.options().dtype(torch::kFloat64));
    check_cuda(acodm_cuda_gram(buffer.data_ptr<float>(), D, P, out.data_ptr<double>(),
                               ws.data_ptr<double>(), at::cuda::getCurrentCUDAStream().stream()),
               "domain_gram");
#else
    ACODM_CHECK(false, "buffer: on CUDA but neox_acodm._C was built without CUDA");
#endif
  } else {
    acodm::gram_cpu(buffer.data_ptr<float>(), D, P, out.data_ptr<double>());
  }
  return out.to(torch::kFloat32);
}

void sketch_accumulate(torch::Tensor sketch, torch::Tensor grad, int64_t domain, int64_t seed,
                       int64_t offset, double alpha) {
  check_buffer(sketch, "sketch");
  check_grad(grad, sketch, "sketch");
  const auto dt = dtype_of(grad, "grad");
  const int64_t n = grad.numel(), k = sketch.size(1);
  ACODM_CHECK(domain >= 0 && domain < sketch.size(0), "domain: ", domain, " out of range [0, ",
              sketch.size(0), ")");
  ACODM_CHECK(offset >= 0 && offset + n <= (int64_t{1} << 32), "offset: global indices must stay below 2**32");
  ACODM_CHECK(k > 0 && k < (int64_t{1} << 31) && k % 8 == 0,
              "sketch: width must be a positive multiple of 8 below 2**31, got ", k);
  float* row = sketch.data_ptr<float>() + domain * k;
  if (sketch.is_cuda()) {
#ifdef NEOX_ACODM_WITH_CUDA
    check_cuda(acodm_cuda_sketch(row, k, grad.data_ptr(), static_cast<int>(dt), n, offset,
                                 static_cast<uint64_t>(seed), static_cast<float>(alpha),
                                 at::cuda::getCurrentCUDAStream().stream()),
               "sketch_accumulate");
#else
    ACODM_CHECK(false, "sketch: on CUDA but neox_acodm._C was built without CUDA");
#endif
    return;
  }
  acodm::sketch_cpu(row, k, grad.data_ptr(), dt, n, offset, static_cast<uint64_t>(seed), static_cast<float>(alpha));
}

bool has_cuda() {
#ifdef NEOX_ACODM_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "neox_acodm reward kernels (see csrc/README.md)";
  auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("accumulate_domain_grad", &accumulate_domain_grad, "buffer[domain, offset:offset+n] += alpha * grad",
        py::arg("buffer"), py::arg("grad"), py::arg("domain"), py::arg("offset") = 0,
        py::arg("alpha") = 1.0, nogil);
  m.def("domain_gram", &domain_gram, "[D, D] float32 Gram of a [D, P] float32 buffer (fp64 accumulation)",
        py::arg("buffer"), nogil);
  m.def("sketch_accumulate", &sketch_accumulate, "count-sketch accumulate of grad into sketch[domain]",
        py::arg("sketch"), py::arg("grad"), py::arg("domain"), py::arg("seed"), py::arg("offset") = 0,
        py::arg("alpha") = 1.0, nogil);
  m.def("has_cuda", &has_cuda);
  m.def("num_threads", &acodm::cpu_threads);
  m.def("abi_version", []() { return NEOX_ACODM_ABI_VERSION; });
}
