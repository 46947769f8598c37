"""Per-domain gradients inside mixed-domain micro-batches, from activations.

For a linear layer ``y = x W^T (+ b)`` with ``W: [out, in]``, a micro-batch's weight gradient is
``sum_t delta_t x_t^T`` over its tokens (``delta = dloss/dy``); domain d's share is the same sum
over the tokens of d's samples. A forward hook on each selected module keeps the input ``x`` and
puts a tensor hook on the output, which receives ``delta`` in the backward pass. Two estimators:

* ``exact``: ``G_d += delta_d^T x_d``, one ``[out, in]`` matmul per domain present, into the
  ``[K, P]`` buffer the gradient-hook probe uses (same Gram, same reduction);
* ``projected``: a two-sided (Kronecker) Gaussian projection per layer,
  ``S_d += (delta_d R_o^T)^T (x_d R_i^T)`` of ``[r, r]``, with ``R_o: [r, out]`` and
  ``R_i: [r, in]`` of i.i.d. ``N(0, 1/r)`` entries fixed by ``(seed, layer)``. Since
  ``E[R^T R] = I`` on each side, ``<S_i, S_j>`` is an unbiased estimate of ``<G_i, G_j>``
  (sketched inner products: Woodruff 2014; the Kronecker form: Pagh 2013, Rakhshan & Rabusseau
  2020); its variance is about ``4 ||G_i||^2 ||G_j||^2 / r``. Memory ``K r^2`` floats per
  layer, cost ``2 N r (in + out + r)`` flops for ``N`` tokens, independent of K.

Because it reads activations and output gradients, it works where fused weight-gradient
accumulation writes no ``.grad``. Only forwards whose output requires grad count: under
activation recomputation the first (no-grad) forward is ignored and the recomputed one is used,
so nothing is counted twice. The n-th such forward of a module belongs to this rank's n-th
micro-batch of the plan (backwards and recomputations run in micro-batch order).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from .ops import Ops
from .probe import ProbeBuffer

__all__ = ["ActivationProbe", "ESTIMATORS"]

ESTIMATORS = ("exact", "projected")


class ActivationProbe(ProbeBuffer):
    """Per-domain gradients of the ``weights`` of ``modules`` (linear: ``weight [out, in]``).

    ``batch_dim``: where the samples are in the layers' activations (0: ``[b, T, h]``, Hugging
    Face; 1: ``[T, b, h]``, GPT-NeoX and Megatron). ``micro_batch``: samples per micro-batch
    (the loss is their mean, so each captured gradient is multiplied by it).
    """

    def __init__(
        self,
        modules: Sequence[torch.nn.Module],
        num_domains: int,
        estimator: str,
        ops: Ops,
        micro_batch: int,
        batch_dim: int = 0,
        rank: int = 64,
        seed: int = 0,
        lagged: bool = False,
    ):
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
        if not modules:
            raise ValueError("ActivationProbe needs at least one module")
        for m in modules:
            w = getattr(m, "weight", None)
            if not isinstance(w, torch.Tensor) or w.dim() != 2:
                raise ValueError(f"{type(m).__name__}: activation capture needs a linear layer (a 2-D weight)")
        self.modules, self.estimator, self.rank = list(modules), estimator, rank
        self.micro_batch, self.batch_dim = micro_batch, batch_dim
        sizes = [m.weight.numel() if estimator == "exact" else rank * rank for m in modules]
        self.offsets = [int(x) for x in np.cumsum([0, *sizes[:-1]])]
        self.num_params = sum(m.weight.numel() for m in modules)
        device = modules[0].weight.device
        super().__init__(num_domains, sum(sizes), device, ops, lagged)
        self._proj: list[tuple[torch.Tensor, torch.Tensor]] = []
        if estimator == "projected":
            for i, m in enumerate(modules):
                gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + i)
                out_f, in_f = m.weight.shape
                r_o = torch.randn(rank, out_f, generator=gen) / rank**0.5
                r_i = torch.randn(rank, in_f, generator=gen) / rank**0.5
                self._proj.append((r_o.to(device), r_i.to(device)))
        self._domains: torch.Tensor | None = None  # [G, b] this rank's sample domains (device)
        # exact: per micro-batch, (domain, [b] sample mask on device), built on the host from the
        # plan so the hot path never syncs the device to find the domains present
        self._groups: list[list[tuple[int, torch.Tensor]]] = []
        self._cast: dict = {}  # (layer, dtype) -> projections in the activations' dtype
        self._calls = [0] * len(modules)
        self._handles = [m.register_forward_hook(self._make_hook(k)) for k, m in enumerate(modules)]

    def begin_step(self, sample_domains) -> None:
        """This rank's sample domains of the step now starting: [G, b], micro-batches in plan order."""
        d = torch.as_tensor(np.asarray(sample_domains, dtype=np.int64))
        if d.dim() != 2 or d.shape[1] != self.micro_batch:
            raise ValueError(f"sample domains must be [grad_accum, {self.micro_batch}], got {tuple(d.shape)}")
        self._domains = d.to(self.buffer.device)
        if self.estimator == "exact":
            dev = self.buffer.device
            self._groups = [[(int(x), torch.as_tensor(row == x).to(dev)) for x in np.unique(row)] for row in d.numpy()]
        self._calls = [0] * len(self.modules)

    def _end_step(self) -> None:
        self._domains = None
        self._groups = []
        self._calls = [0] * len(self.modules)

    # -- hot path ---------------------------------------------------------------------------
    def _make_hook(self, k: int):
        def forward_hook(module, args, output):
            out = output[0] if isinstance(output, tuple) else output
            if self._domains is None or not torch.is_grad_enabled() or not out.requires_grad:
                return None  # no plan, or a no-grad forward (evaluation, the first pass of a recompute)
            n = self._calls[k]
            if n >= self._domains.shape[0]:
                return None  # a forward outside the plan
            self._calls[k] = n + 1
            x = args[0].detach()
            out.register_hook(lambda delta: self._capture(k, x, delta, n))
            return None

        return forward_hook

    def _per_sample(self, t: torch.Tensor) -> torch.Tensor:
        """[b, T, h] from the layer's layout."""
        t = t.transpose(0, 1) if self.batch_dim == 1 else t
        return t.reshape(t.shape[0], -1, t.shape[-1])

    def _projections(self, k: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer k's [r, out] and [r, in] projections in ``dtype`` (converted once per dtype)."""
        key = (k, dtype)
        if key not in self._cast:
            self._cast[key] = tuple(r.to(dtype) for r in self._proj[k])
        return self._cast[key]

    def _capture(self, k: int, x: torch.Tensor, delta: torch.Tensor, n: int):
        t0 = time.perf_counter()
        self.hook_calls += 1
        scale = self._scale * self.micro_batch
        xs, ds = self._per_sample(x), self._per_sample(delta.detach())
        off = self.offsets[k]
        with torch.profiler.record_function("acodm/capture"):
            if self.estimator == "exact":
                width = self.modules[k].weight.numel()
                for d, sel in self._groups[n]:
                    g = ds[sel].reshape(-1, ds.shape[-1]).float().T @ xs[sel].reshape(-1, xs.shape[-1]).float()
                    self.buffer[d, off : off + width].add_(g.reshape(-1), alpha=scale)
            else:
                r_o = self._projections(k, ds.dtype)[0]
                r_i = self._projections(k, xs.dtype)[1]
                a = (ds @ r_o.T).float()  # [b, T, r]
                c = (xs @ r_i.T).float()  # [b, T, r]
                s = torch.einsum("btr,btq->brq", a, c).reshape(a.shape[0], -1)  # [b, r*r]
                r2 = self.rank * self.rank
                self.buffer[:, off : off + r2].index_add_(0, self._domains[n], s, alpha=scale)
        self.capture_seconds += time.perf_counter() - t0
        return None

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
