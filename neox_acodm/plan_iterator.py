"""PlanIterator: a DP rank's micro-batches of the runtime's current step, in plan order."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

__all__ = ["PlanIterator", "StepSource"]


class StepSource(Protocol):
    """What the iterator reads of a :class:`~neox_acodm.runtime.MixingRuntime`."""

    step: int
    cursors: Any

    def micro_batches(self, dp_rank: int | None = None) -> list[tuple[int, np.ndarray]]: ...


class PlanIterator:
    """This DP rank's micro-batches of the runtime's *current* step, in plan order.

    ``fetch(domain, indices)`` turns one micro-batch's sample indices into whatever the
    training loop consumes. The iterator never looks ahead: asking for micro-batch
    ``grad_accum + 1`` before :meth:`MixingRuntime.end_step` raises. Otherwise the weights
    would act late, and saved cursors would count unconsumed samples.
    """

    def __init__(self, runtime: StepSource, fetch: Callable[[int, np.ndarray], Any]):
        if runtime.cursors is None:
            raise ValueError("PlanIterator needs a MixingRuntime built with dataset_sizes")
        self.runtime, self.fetch = runtime, fetch
        self._step, self._g, self._batches = -1, 0, []

    def __iter__(self):
        return self

    def __next__(self):
        rt = self.runtime
        if rt.step != self._step:
            self._step, self._g, self._batches = rt.step, 0, rt.micro_batches()
        if self._g >= len(self._batches):
            raise RuntimeError(
                f"acodm: step {rt.step}: all {len(self._batches)} micro-batches were consumed; "
                f"call MixingRuntime.end_step() before drawing the next step"
            )
        d, idx = self._batches[self._g]
        self._g += 1
        return self.fetch(d, idx)
