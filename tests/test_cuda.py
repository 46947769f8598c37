"""CUDA kernels of neox_acodm._C against the torch/float64 references, on a GPU.

Skipped unless torch sees a GPU and the extension was built with CUDA (``.ci/gpu`` builds it
and runs these on a GPU machine; CPU CI skips them).
"""

import numpy as np
import pytest
import torch

from neox_acodm import ops

try:
    ext = ops.load_extension()
except RuntimeError:  # a stale/broken build is reported by test_ext.py
    ext = None
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not (torch.cuda.is_available() and ext is not None and ext.has_cuda()),
        reason="needs a GPU and neox_acodm._C built with CUDA",
    ),
]
DEV = "cuda"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,offset", [(1, 0), (7, 3), (4096, 0), (4096, 1), (1_000_003, 11)])
def test_accumulate_matches_float64(dtype, n, offset):
    g = torch.Generator().manual_seed(n + offset)
    buf = torch.randn(3, n + offset + 5, generator=g)
    grad = torch.randn(n, generator=g).to(dtype)
    expect = buf.double().clone()
    expect[1, offset : offset + n] += 0.25 * grad.double()
    b = buf.to(DEV)
    ext.accumulate_domain_grad(b, grad.to(DEV), 1, offset, 0.25)
    got = b.cpu().double()
    rel = float((got - expect).abs().max() / expect.abs().max())
    assert rel <= 1e-6, rel
    assert torch.equal(got[0], buf[0].double()) and torch.equal(got[2], buf[2].double())


@pytest.mark.parametrize("D,P", [(1, 1), (2, 127), (3, 129), (22, 1_000_003), (44, 70_001), (22, 25_000_000)])
def test_gram_matches_float64_and_is_deterministic(D, P):
    g = torch.Generator().manual_seed(D * 7 + P)
    B = torch.randn(D, P, generator=g)
    ref = B.double() @ B.double().T
    Bd = B.to(DEV)
    got = ext.domain_gram(Bd)
    assert got.shape == (D, D) and got.dtype == torch.float32 and got.is_cuda
    rel = float((got.cpu().double() - ref).abs().max() / ref.abs().max())
    assert rel <= 1e-5, rel
    assert torch.equal(got, got.T)
    for _ in range(3):  # fixed grid + ordered reduction: bit-identical on every call
        assert torch.equal(ext.domain_gram(Bd), got)


def test_gram_rejects_more_than_44_domains_naming_the_fix():
    with pytest.raises(ValueError, match="at most 44 domains.*backend: torch"):
        ext.domain_gram(torch.zeros(45, 8, device=DEV))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "n,offset,k", [(1, 0, 8), (9, 5, 16), (1_000_001, 17, 1024), (1_000_000, 8, 1 << 17)]
)  # k=2**17 exceeds shared memory
def test_sketch_matches_torch_reference_and_cpu_kernel(dtype, n, offset, k):
    g = torch.Generator().manual_seed(n + k)
    grad = torch.randn(n, generator=g).to(dtype)
    a = torch.zeros(2, k, device=DEV)
    ext.sketch_accumulate(a, grad.to(DEV), 1, 42, offset, 2.0)
    ref = torch.zeros(2, k, device=DEV)
    ops.sketch_accumulate_torch(ref, grad.to(DEV), 1, 42, offset, 2.0)
    cpu = torch.zeros(2, k)
    ext.sketch_accumulate(cpu, grad, 1, 42, offset, 2.0)
    tol = 1e-5 * float(grad.float().abs().sum()) / k**0.5 + 1e-6
    assert float((a - ref).abs().max()) <= tol
    assert float((a.cpu() - cpu).abs().max()) <= tol  # same hash on both devices
    assert float(a[0].abs().sum()) == 0.0


def test_kernels_run_on_the_current_stream():
    s = torch.cuda.Stream()
    B = torch.randn(4, 1 << 20, device=DEV)
    with torch.cuda.stream(s):
        buf = torch.zeros(4, 1 << 20, device=DEV)
        for d in range(4):
            ext.accumulate_domain_grad(buf, B[d].contiguous(), d, 0, 1.0)
        gram = ext.domain_gram(buf)
    s.synchronize()
    assert torch.allclose(gram, B @ B.T, rtol=1e-4)


def test_runtime_on_gpu_extension_equals_torch_backend():
    """MixingRuntime with the probe on a CUDA model: the extension and the torch backend give the
    same rewards, hence the same weights (exact estimator) over several steps."""
    from neox_acodm.runtime import MixingRuntime

    from conftest import TinyLM, domain_batch, tiny_cfg

    runs = []
    for backend in ("ext", "torch"):
        cfg = tiny_cfg("acodm", reward={"backend": backend})
        model = TinyLM(seed=0).to(DEV)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        rt = MixingRuntime(cfg, dataset_sizes=[50, 60, 70], grad_accum=4, micro_batch=2, model=model)
        assert rt.probe.ops.name == backend
        ws = []
        for _ in range(8):
            opt.zero_grad(set_to_none=True)
            for i, (d, idx) in enumerate(rt.micro_batches()):
                rt.begin_microbatch(i, grad_scale=4.0)
                loss = model.loss(domain_batch(d, idx).to(DEV)) / 4
                loss.backward()
                rt.record_loss(d, loss * 4)
            opt.step()
            rt.end_step()
            ws.append(rt.weights.copy())
        runs.append(np.array(ws))
    assert np.abs(np.diff(runs[0], axis=0)).max() > 0, "weights never moved"
    np.testing.assert_allclose(runs[0], runs[1], rtol=0, atol=1e-4)
