"""``neox-acodm bench-reward``: time the reward kernels against the torch reference and the
same run's memory-copy and matmul roofs.

``--json`` prints one object::

    {"copy_gbps": float, "matmul_gflops": float,
     "results": [{"op", "backend", "device", "D", "P", "k", "dtype", "ms", "gbps", "gflops"}, ...],
     "footprint": [...], "step": {...} (with --step-model)}

``ms`` is the median over repeats; ``gbps`` the bytes that must move divided by the time
(accumulate: read grad + read/write the fp32 row; gram: read the [D, P] buffer once; sketch:
read grad); ``gflops`` the useful FLOPs divided by the time (gram: 2 D^2 P, the full product,
as torch's ``B @ B.T`` computes; the extension computes the symmetric half).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import time

import torch

from neox_acodm import ops

from .model import PYTHIA, ModelSpec, pythia_shape

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(fn, device: torch.device, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def copy_gbps(device: torch.device, nbytes: int = 1 << 28, repeats: int = 5) -> float:
    """Same-run memory-copy bandwidth (read + write counted), GB/s."""
    a = torch.ones(nbytes // 4, device=device)
    b = torch.empty_like(a)
    ms = _median_ms(lambda: b.copy_(a), device, repeats)
    return 2 * nbytes / ms / 1e6


def matmul_gflops(device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """Same-run large fp32 matmul rate, GFLOP/s."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    ms = _median_ms(lambda: a @ b, device, repeats)
    return 2 * n**3 / ms / 1e6


def bench_ops(
    D: int, P: int, k: int, dtype: str, device: torch.device, repeats: int, backends: list[str]
) -> list[dict]:
    tdt = DTYPES[dtype]
    gsize = torch.tensor([], dtype=tdt).element_size()
    grad = torch.randn(P, device=device).to(tdt)
    buf = torch.zeros(D, P, device=device)
    sk = torch.zeros(D, k, device=device)
    rows = []
    for name in backends:
        if name == "ext" and ops.load_extension() is None:
            logger.warning("extension not built; skipping the ext backend")
            continue
        impl = ops.get_ops(name, device)
        base = {"backend": impl.name, "device": device.type, "D": D, "P": P, "dtype": dtype}
        ms = _median_ms(lambda impl=impl: impl.accumulate(buf, grad, 1, 0, 1.0), device, repeats)
        rows.append(
            {
                **base,
                "op": "accumulate",
                "k": None,
                "ms": ms,
                "gbps": P * (gsize + 8) / ms / 1e6,
                "gflops": 2 * P / ms / 1e6,
            }
        )
        buf.normal_()
        ms = _median_ms(lambda impl=impl: impl.gram(buf), device, repeats)
        rows.append(
            {
                **base,
                "op": "gram",
                "k": None,
                "ms": ms,
                "gbps": D * P * 4 / ms / 1e6,
                "gflops": 2 * D * D * P / ms / 1e6,
            }
        )
        ms = _median_ms(lambda impl=impl: impl.sketch(sk, grad, 1, 0, 0, 1.0), device, repeats)
        rows.append(
            {**base, "op": "sketch", "k": k, "ms": ms, "gbps": P * gsize / ms / 1e6, "gflops": 2 * P / ms / 1e6}
        )
        sk.normal_()
        ms = _median_ms(lambda impl=impl: impl.gram(sk), device, repeats)
        rows.append(
            {
                **base,
                "op": "sketch_gram",
                "k": k,
                "ms": ms,
                "gbps": D * k * 4 / ms / 1e6,
                "gflops": 2 * D * D * k / ms / 1e6,
            }
        )
    return rows


def footprint(D: int, k: int) -> list[dict]:
    """Reward-buffer memory for the paper's selections (3 MLP out-projections) of Pythia models."""
    out = []
    for name, (_layers, hidden) in PYTHIA.items():
        p = 3 * hidden * 4 * hidden
        out.append(
            {
                "model": f"pythia-{name}",
                "P": p,
                "D": D,
                "dense_bytes": D * p * 4,
                "sketch_bytes": D * k * 4,
                "dense_allreduce_bytes_per_step": D * p * 4,
                "sketch_allreduce_bytes_per_step": D * k * 4,
            }
        )
    return out


def measure_train_step(
    model: str, device: torch.device, batch: int, seq: int, repeats: int, autocast: str | None = None
) -> dict:
    """Median forward+backward+AdamW step of a Pythia-shaped HF GPT-NeoX model (fp32 weights;
    ``autocast='bfloat16'`` runs forward/backward under bf16 autocast, as mixed-precision runs do)."""
    try:
        import transformers  # noqa: F401
    except ImportError as e:
        raise ImportError("--step-model needs transformers (pip install '.[demo]')") from e
    try:
        layers, hidden = pythia_shape(model)
    except ValueError as e:
        raise ValueError(f"--step-model: {e}") from None
    m = ModelSpec(layers, hidden, max(1, hidden // 64), 50304, seq).build(seed=0).to(device)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    x = torch.randint(0, 50304, (batch, seq), device=device)

    amp = torch.autocast(device.type, dtype=DTYPES[autocast]) if autocast else contextlib.nullcontext()

    def step():
        opt.zero_grad(set_to_none=True)
        with amp:
            loss = m(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()

    ms = _median_ms(step, device, repeats)
    return {
        "model": model,
        "layers": layers,
        "hidden": hidden,
        "batch": batch,
        "seq": seq,
        "autocast": autocast,
        "step_ms": ms,
        "selected_P": 3 * hidden * 4 * hidden,
    }


def activation_capture_ms(
    D: int, hidden: int, batch: int, seq: int, estimator: str, rank: int, device, repeats: int, dtype: str | None
) -> dict:
    """Per micro-batch: activation capture of 3 MLP out-projections ([4h] -> [h]) for a mixed
    micro-batch of ``batch`` samples from ``D`` domains, and the Gram of its buffer (per step)."""
    from neox_acodm.activation_probe import ActivationProbe
    from neox_acodm.ops import get_ops

    dt = DTYPES[dtype] if dtype else torch.float32
    mods = [torch.nn.Linear(4 * hidden, hidden, bias=False, device=device, dtype=dt) for _ in range(3)]
    probe = ActivationProbe(mods, D, estimator, get_ops("torch", device), batch, batch_dim=1, rank=rank)
    x = torch.randn(seq, batch, 4 * hidden, device=device, dtype=dt)
    delta = torch.randn(seq, batch, hidden, device=device, dtype=dt)
    probe.begin_step(torch.randint(0, D, (1, batch)).numpy())  # one mixed micro-batch
    capture = _median_ms(lambda: [probe._capture(k, x, delta, 0) for k in range(3)], device, repeats)
    gram = _median_ms(lambda: probe.ops.gram(probe.buffer), device, repeats)
    probe.remove()
    return {"capture_ms": capture, "gram_ms": gram, "buffer_bytes": probe.memory_bytes()}


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    backends = ["torch", "ext"] if args.backend == "both" else [args.backend]
    report = {"copy_gbps": copy_gbps(device), "matmul_gflops": matmul_gflops(device), "results": []}
    for p in args.P:
        report["results"] += bench_ops(args.D, p, args.k, args.dtype, device, args.repeats, backends)
    report["footprint"] = footprint(args.D, args.k)
    if args.step_model:
        st = measure_train_step(
            args.step_model, device, args.step_batch, args.step_seq, args.step_repeats, args.step_autocast
        )
        # per step: grad_accum micro-batch accumulations + one Gram, for the model's own P
        p = st["selected_P"]
        rows = bench_ops(args.D, p, args.k, args.dtype, device, max(1, args.repeats // 2), backends[-1:])
        by_op = {r["op"]: r["ms"] for r in rows}
        dense = args.grad_accum * by_op["accumulate"] + by_op["gram"]
        sketch = args.grad_accum * by_op["sketch"] + by_op["sketch_gram"]
        st.update(
            {
                "grad_accum": args.grad_accum,
                "reward_dense_ms": dense,
                "reward_sketch_ms": sketch,
                "reward_to_step_dense": dense / (args.grad_accum * st["step_ms"]),
                "reward_to_step_sketch": sketch / (args.grad_accum * st["step_ms"]),
            }
        )
        # mixed micro-batches: activation capture, exact and Kronecker-projected
        for est in ("exact", "projected"):
            a = activation_capture_ms(
                args.D, st["hidden"], args.step_batch, args.step_seq, est, args.rank, device,
                max(1, args.step_repeats), args.step_autocast,
            )  # fmt: skip
            per_step = args.grad_accum * a["capture_ms"] + a["gram_ms"]
            st[f"activations_{est}"] = {
                **a,
                "per_step_ms": per_step,
                "to_step": per_step / (args.grad_accum * st["step_ms"]),
            }
        report["step"] = st
    return report
