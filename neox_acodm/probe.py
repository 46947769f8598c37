"""Per-domain gradient capture of selected weight tensors (the reward's input).

Tensor hooks on the selected parameters receive each micro-batch's own gradient *before* it is
accumulated into ``.grad`` (so no differencing of accumulated gradients, and the boundary
micro-batch is seen even when DeepSpeed clears ``.grad`` at the boundary, defects D3/D21 of the
reference code). The n-th gradient a selected tensor receives in a step belongs to this rank's
n-th micro-batch of the plan: within one pipeline stage backwards run in micro-batch order
(1F1B included) and a weight gets exactly one gradient per micro-batch, so no schedule
knowledge is needed. The gradient is added, on its own device, into a per-domain buffer:

* ``exact``:  [K, P] float32 with P = sum of selected numels;
* ``sketch``: [K, k] float32 count-sketch, linear, so the DP all-reduce moves K*k floats.

Nothing is copied to the host per micro-batch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from .dist import all_reduce_sum
from .ops import Ops
from .selectors import SelectedParam

__all__ = ["GradientProbe", "ProbeBuffer"]


class ProbeBuffer:
    """The per-domain buffer [K, width] of one optimizer step, its reduction to the Gram and
    the lagged buffer (each domain's last observed mean gradient). Subclasses fill it."""

    def __init__(self, num_domains: int, width: int, device, ops: Ops, lagged: bool = False):
        self.num_domains = num_domains
        self.ops = ops
        self.buffer = torch.zeros(num_domains, width, dtype=torch.float32, device=device)
        # lagged: keep each domain's last observed mean gradient [K, width] for <g_i(t), g_j(t')>,
        # t' the last step domain j drew data (t - 1 when it did)
        self.lagged = lagged
        # two preallocated [K, width] buffers, swapped every step (no allocation on the hot path)
        self._mean = torch.zeros_like(self.buffer) if lagged else None
        self._prev_mean = torch.zeros_like(self.buffer) if lagged else None
        self._has_prev = False
        self.lagged_gram: torch.Tensor | None = None
        self._scale = 1.0
        self.hook_calls = 0
        self.capture_seconds = 0.0

    def set_grad_scale(self, grad_scale: float) -> None:
        """Gradients are multiplied by ``grad_scale`` (pass ``grad_accum / loss_scale`` to undo
        DeepSpeed's scaling)."""
        self._scale = float(grad_scale)

    def _end_step(self) -> None:
        """Forget this step's plan (subclasses)."""

    # -- step boundary ----------------------------------------------------------------------
    def reduce_gram(self, counts: torch.Tensor, group=None, timeout: float | None = None) -> torch.Tensor:
        """All-reduce the buffer over the data-parallel ``group``, divide row i by the global
        count ``counts[i]`` (micro-batches, or samples at sample granularity) and return the
        [K, K] float32 Gram of the mean gradients of *this rank's* selected tensors (a partial
        Gram under TP/PP). Resets for the next step. Every rank of ``group`` must call it."""
        with torch.profiler.record_function("acodm/reduce"):
            all_reduce_sum(self.buffer, group, timeout, "per-domain gradient all-reduce")
        with torch.profiler.record_function("acodm/gram"):
            gram = self.ops.gram(self.buffer)
        inv = torch.where(counts > 0, 1.0 / counts.to(torch.float64).clamp_min(1), 0.0).to(gram.device)
        gram = (gram.to(torch.float64) * inv[:, None] * inv[None, :]).to(torch.float32)
        if self.lagged:  # [K, K] <g_i(t), g_j(t-1)> of this rank's tensors (partial under TP/PP)
            torch.mul(self.buffer, inv.to(self.buffer.device, torch.float32)[:, None], out=self._mean)
            self.lagged_gram = self._mean @ self._prev_mean.T if self._has_prev else None
            if self._has_prev:  # a domain absent this step keeps its last observed mean gradient
                absent = torch.nonzero(counts.cpu() == 0).flatten()  # host-side plan counts: no device sync
                if absent.numel():
                    absent = absent.to(self._mean.device)
                    self._mean.index_copy_(0, absent, self._prev_mean.index_select(0, absent))
            self._mean, self._prev_mean, self._has_prev = self._prev_mean, self._mean, True
        self.buffer.zero_()
        self._end_step()
        return gram

    def memory_bytes(self) -> int:
        return self.buffer.numel() * 4 * (2 if self.lagged else 1)

    def state_dict(self) -> dict:
        """The lagged buffer (empty unless ``lagged``): resume must see the same g(t-1)."""
        return {"prev_mean": self._prev_mean.cpu() if self.lagged and self._has_prev else None}

    def check_state(self, state, path: str) -> None:
        from .checkpoint import CheckpointError

        if not isinstance(state, dict) or set(state) != {"prev_mean"}:
            raise CheckpointError(
                f"{path}: probe state must be a mapping with prev_mean, got "
                f"{sorted(state) if isinstance(state, dict) else type(state).__name__}"
            )
        prev = state["prev_mean"]
        if prev is not None and (
            not isinstance(prev, torch.Tensor) or not prev.is_floating_point() or prev.shape != self.buffer.shape
        ):
            raise CheckpointError(
                f"{path}: saved lagged gradients have shape {getattr(prev, 'shape', prev)}, "
                f"this run captures {tuple(self.buffer.shape)} (acodm.reward changed?)"
            )

    def load_state_dict(self, state: dict) -> None:
        prev = state.get("prev_mean")
        self._has_prev = prev is not None
        if prev is not None:
            self._prev_mean.copy_(prev)


class GradientProbe(ProbeBuffer):
    """Accumulates per-domain gradients of ``params`` for one optimizer step at a time (one
    domain per micro-batch: tensor hooks on the parameters)."""

    def __init__(
        self,
        params: list[SelectedParam],
        num_domains: int,
        estimator: str,
        sketch_dim: int,
        sketch_seed: int,
        ops: Ops,
        lagged: bool = False,
    ):
        if not params:
            raise ValueError("GradientProbe needs at least one parameter")
        self.params = params
        self.estimator = estimator
        self.sketch_seed = sketch_seed
        self.offsets: list[int] = []
        total = 0
        for sp in params:
            self.offsets.append(total)
            total += sp.param.numel()
        self.num_params = total
        if total >= 2**32 and estimator == "sketch":
            raise ValueError("count-sketch indices are 32-bit: select fewer than 2**32 elements")
        width = total if estimator == "exact" else sketch_dim
        super().__init__(num_domains, width, params[0].param.device, ops, lagged)
        # this step's micro-batch domains on this rank, handed down by the runtime when it plans
        # the step (ranks that load no data, e.g. middle pipeline stages, included)
        self._domains: list[int] = []
        self._calls = [0] * len(params)
        self._handles = [
            sp.param.register_hook(self._make_hook(k, off)) for k, (sp, off) in enumerate(zip(params, self.offsets))
        ]

    # -- hot path ---------------------------------------------------------------------------
    def _make_hook(self, k: int, offset: int):
        def hook(grad: torch.Tensor):
            n = self._calls[k]
            if n >= len(self._domains):  # a backward outside the plan (e.g. user code)
                return None
            self._calls[k] = n + 1
            d = self._domains[n]
            t0 = time.perf_counter()
            self.hook_calls += 1
            g = grad if grad.is_contiguous() else grad.contiguous()
            with torch.profiler.record_function("acodm/capture"):
                if self.estimator == "exact":
                    self.ops.accumulate(self.buffer, g.reshape(-1), d, offset, self._scale)
                else:
                    self.ops.sketch(self.buffer, g.reshape(-1), d, self.sketch_seed, offset, self._scale)
            # host time only: on CUDA this is the launch cost (profile with NVTX for kernels)
            self.capture_seconds += time.perf_counter() - t0
            return None

        return hook

    def begin_step(self, domains: Sequence[int]) -> None:
        """This rank's micro-batch domains of the step now starting, in plan order: the n-th
        gradient a selected tensor receives is added to domain ``domains[n]``."""
        self._domains = [int(d) for d in domains]
        self._calls = [0] * len(self.params)

    def _end_step(self) -> None:
        self._domains = []  # gradients after the step's end and before the next plan are not ours
        self._calls = [0] * len(self.params)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
