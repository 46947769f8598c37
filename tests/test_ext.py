"""The compiled extension against float64 / torch references; the CUDA sources compile."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from neox_acodm import ops

ext = ops.load_extension()
needs_ext = pytest.mark.skipif(ext is None, reason="neox_acodm._C not built (NEOX_ACODM_SKIP_EXT=1)")
ROOT = Path(__file__).resolve().parents[1]


@needs_ext
@pytest.mark.parametrize("D,P", [(1, 1), (1, 7), (3, 13), (5, 2049 + 5), (22, 40_003), (23, 8)])
def test_gram_matches_float64(D, P):
    g = torch.Generator().manual_seed(D * 1000 + P)
    B = torch.randn(D, P, generator=g)
    ref = B.double() @ B.double().T
    got = ext.domain_gram(B)
    assert got.dtype == torch.float32 and got.shape == (D, D)
    rel = float((got.double() - ref).abs().max() / ref.abs().max())
    assert rel <= 1e-5, rel
    assert torch.equal(got, got.T)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,offset", [(1, 0), (7, 3), (100_003, 11)])
def test_accumulate_matches_reference(dtype, n, offset):
    g = torch.Generator().manual_seed(n)
    buf = torch.randn(3, n + offset + 5, generator=g)
    expect = buf.double().clone()
    grad = torch.randn(n, generator=g).to(dtype)
    ext.accumulate_domain_grad(buf, grad, 2, offset, 0.5)
    expect[2, offset : offset + n] += 0.5 * grad.double()  # inputs convert exactly to fp64
    rel = float((buf.double() - expect).abs().max() / expect.abs().max())
    assert rel <= 1e-6, rel


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,offset,k", [(1, 0, 8), (9, 5, 16), (300_001, 17, 1000), (300_000, 8, 16384)])
def test_sketch_matches_torch_reference(dtype, n, offset, k):
    g = torch.Generator().manual_seed(n + k)
    grad = torch.randn(n, generator=g).to(dtype)
    a, b = torch.zeros(2, k), torch.zeros(2, k)
    ext.sketch_accumulate(a, grad, 1, 42, offset, 2.0)
    ops.sketch_accumulate_torch(b, grad, 1, 42, offset, 2.0)
    tol = 1e-5 * float(grad.float().abs().sum()) / max(1, k) ** 0.5 + 1e-6
    assert float((a - b).abs().max()) <= tol
    assert a[0].abs().sum() == 0


@needs_ext
@pytest.mark.parametrize(
    "call,msg",
    [
        (
            lambda: ext.accumulate_domain_grad(torch.zeros(2, 8), torch.zeros(4, 2).T, 0, 0, 1.0),
            "grad: must be contiguous",
        ),
        (
            lambda: ext.accumulate_domain_grad(torch.zeros(2, 8).T, torch.zeros(2), 0, 0, 1.0),
            "buffer: must be contiguous",
        ),
        (
            lambda: ext.accumulate_domain_grad(torch.zeros(2, 8), torch.zeros(4, dtype=torch.float64), 0, 0, 1.0),
            "grad: dtype",
        ),
        (lambda: ext.accumulate_domain_grad(torch.zeros(2, 8), torch.zeros(4), 2, 0, 1.0), "domain: 2 out of range"),
        (lambda: ext.accumulate_domain_grad(torch.zeros(2, 8), torch.zeros(4), 0, 6, 1.0), "offset:"),
        (lambda: ext.domain_gram(torch.zeros(4, 4, dtype=torch.float64)), "buffer: expected a [D, P] float32"),
        (
            lambda: ext.sketch_accumulate(torch.zeros(2, 8), torch.zeros(6, 2)[:, 0], 0, 1, 0, 1.0),
            "grad: must be contiguous",
        ),
        (
            lambda: ext.sketch_accumulate(torch.zeros(2, 12), torch.zeros(6), 0, 1, 0, 1.0),
            "sketch: width must be a positive multiple of 8",
        ),
    ],
)
def test_bad_input_rejected_naming_the_argument(call, msg):
    with pytest.raises(ValueError, match=re.escape(msg)):
        call()


@needs_ext
def test_dispatch_prefers_extension_and_backends_agree():
    assert ops.get_ops("auto").name == "ext" and ops.get_ops("ext").name == "ext"
    B = torch.randn(4, 1000)
    assert torch.allclose(ops.get_ops("ext").gram(B), ops.get_ops("torch").gram(B), rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_cuda_sources_compile_with_nvcc(tmp_path):
    out = subprocess.run(
        [
            "nvcc",
            "-c",
            str(ROOT / "csrc" / "domain_ops_cuda.cu"),
            "-o",
            str(tmp_path / "k.o"),
            "-I",
            str(ROOT / "csrc"),
            "-gencode",
            "arch=compute_80,code=sm_80",
            "-gencode",
            "arch=compute_90,code=sm_90",
            "-O3",
            "-Werror",
            "all-warnings",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "k.o").stat().st_size > 0
