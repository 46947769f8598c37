"""Per-domain gradient capture of selected weight tensors (the reward's input).

Tensor hooks on the selected parameters receive each micro-batch's own gradient *before* it is
accumulated into ``.grad`` (so no differencing of accumulated gradients, and the boundary
micro-batch is seen even when DeepSpeed clears ``.grad`` at the boundary, defects D3/D21 of the
reference code). The gradient is added, on its own device, into a per-domain buffer:

* ``exact``:  [K, P] float32 with P = sum of selected numels;
* ``sketch``: [K, k] float32 count-sketch, linear, so the DP all-reduce moves K*k floats.

Nothing is copied to the host per micro-batch.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from .ops import Ops
from .selectors import SelectedParam


class GradientProbe:
    """Accumulates per-domain gradients of ``params`` for one optimizer step at a time."""

    def __init__(self, params: list[SelectedParam], num_domains: int, estimator: str,
                 sketch_dim: int, sketch_seed: int, ops: Ops):
        if not params:
            raise ValueError("GradientProbe needs at least one parameter")
        self.params = params
        self.num_domains = num_domains
        self.estimator = estimator
        self.sketch_seed = sketch_seed
        self.ops = ops
        self.offsets: list[int] = []
        total = 0
        for sp in params:
            self.offsets.append(total)
            total += sp.param.numel()
        self.num_params = total
        if total >= 2**32 and estimator == "sketch":
            raise ValueError("count-sketch indices are 32-bit: select fewer than 2**32 elements")
        device = params[0].param.device
        width = total if estimator == "exact" else sketch_dim
        self.buffer = torch.zeros(num_domains, width, dtype=torch.float32, device=device)
        self._domain: int | None = None
        self._scale = 1.0
        self.hook_calls = 0
        self.capture_seconds = 0.0
        self._handles = [sp.param.register_hook(self._make_hook(off))
                         for sp, off in zip(params, self.offsets)]

    # -- hot path ---------------------------------------------------------------------------
    def _make_hook(self, offset: int):
        def hook(grad: torch.Tensor):
            d = self._domain
            if d is None:  # a backward outside a tracked micro-batch (e.g. user code)
                return None
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

    def begin_microbatch(self, domain: int, grad_scale: float = 1.0) -> None:
        """The next backward belongs to ``domain``; gradients are multiplied by ``grad_scale``
        (pass ``grad_accum / loss_scale`` to undo DeepSpeed's scaling)."""
        self._domain = int(domain)
        self._scale = float(grad_scale)

    def end_microbatch(self) -> None:
        self._domain = None

    # -- step boundary ----------------------------------------------------------------------
    def reduce_gram(self, counts: torch.Tensor, group=None, partial_sum_group=None) -> torch.Tensor:
        """All-reduce the buffer over the data-parallel ``group``, divide row i by the global
        micro-batch count ``counts[i]`` and return the [K, K] float32 Gram of the mean
        gradients; ``partial_sum_group`` (TP/PP) then sums the partial Grams of different
        shards. Resets the buffer for the next step. Every rank of the groups must call it."""
        with torch.profiler.record_function("acodm/reduce"):
            if dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1:
                dist.all_reduce(self.buffer, group=group)
        with torch.profiler.record_function("acodm/gram"):
            gram = self.ops.gram(self.buffer)
        inv = torch.where(counts > 0, 1.0 / counts.to(torch.float64).clamp_min(1), 0.0)
        gram = (gram.to(torch.float64) * inv[:, None].to(gram.device) * inv[None, :].to(gram.device))
        gram = gram.to(torch.float32)
        if partial_sum_group is not None and dist.get_world_size(partial_sum_group) > 1:
            dist.all_reduce(gram, group=partial_sum_group)
        self.buffer.zero_()
        return gram

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def memory_bytes(self) -> int:
        return self.buffer.numel() * 4
