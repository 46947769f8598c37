"""Token-true accounting: how much of each domain a run has read, and will have read.

From the per-domain cursors (samples consumed, checkpointed with the runtime) and the current
weights: epochs read so far, the epochs each domain will have been read by the end of the run
if the weights stayed as they are now, and tokens read (samples x the domain's tokens per
sample, when the integration gave token counts). Shapes: [K] float64.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)


def epochs_read(positions: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """[K] samples consumed / domain size."""
    return np.asarray(positions, dtype=np.float64) / np.maximum(np.asarray(sizes, dtype=np.float64), 1)


def projected_epochs(
    positions: np.ndarray, sizes: np.ndarray, weights: np.ndarray, steps_left: int, samples_per_step: int
) -> np.ndarray:
    """[K] epochs read by the end of the run at the current weights."""
    future = np.asarray(weights, dtype=np.float64) * max(0, steps_left) * samples_per_step
    return epochs_read(np.asarray(positions, dtype=np.float64) + future, sizes)


class RepeatWatch:
    """Warns once per domain when its projected epochs exceed ``max_epochs`` (None: off)."""

    def __init__(self, names: tuple[str, ...], max_epochs: float | None):
        self.names, self.max_epochs = names, max_epochs
        self.warned: set[str] = set()

    def check(self, projected: np.ndarray, step: int) -> list[str]:
        if self.max_epochs is None:
            return []
        new = [n for n, e in zip(self.names, projected) if e > self.max_epochs and n not in self.warned]
        for n, e in zip(self.names, projected):
            if n in new:
                logger.warning(
                    "acodm: at the step-%d weights, domain %r will have been read %.2f times by "
                    "the end of the run (acodm.sampling.max_epochs=%g)",
                    step,
                    n,
                    e,
                    self.max_epochs,
                )
        self.warned.update(new)
        return new


def accounting_metrics(
    names, positions, sizes, weights, steps_left, samples_per_step, tokens_per_sample: np.ndarray | None
) -> tuple[dict[str, float], np.ndarray]:
    """(``epochs/<d>``, ``projected_epochs/<d>`` and, with token counts, ``tokens/<d>``; the
    projected epochs [K])."""
    read = epochs_read(positions, sizes)
    proj = projected_epochs(positions, sizes, weights, steps_left, samples_per_step)
    out = {f"epochs/{n}": float(e) for n, e in zip(names, read)}
    out.update({f"projected_epochs/{n}": float(e) for n, e in zip(names, proj)})
    if tokens_per_sample is not None:
        out.update({f"tokens/{n}": float(p * t) for n, p, t in zip(names, positions, tokens_per_sample)})
    return out, proj
