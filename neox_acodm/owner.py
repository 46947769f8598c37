"""The owner's half of a step: statistics -> mixer update -> validated weights + metrics.

Runs on the owning rank only (group rank 0), after the runtime reduced the step's statistics.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import torch

from .accounting import RepeatWatch, accounting_metrics
from .mixers import StepStats
from .plan import StepPlan, normalize_weights

if TYPE_CHECKING:
    from .runtime import MixingRuntime

logger = logging.getLogger(__name__)


class OwnerUpdate:
    """Feeds each step to ``rt.mixer``, validates its proposal and builds the ``acodm/*`` metrics.

    ``tokens_per_sample``: [K] for token accounting, or None (samples only)."""

    def __init__(self, rt: "MixingRuntime", tokens_per_sample: np.ndarray | None):
        self.rt = rt
        self.tokens_per_sample = tokens_per_sample
        self.repeat_watch = RepeatWatch(rt.cfg.domain_names, rt.cfg.sampling.max_epochs)

    def update(self, plan: StepPlan, loss: np.ndarray, gram, norms, upd, lagged=None,
               skipped: bool = False) -> tuple[np.ndarray, dict[str, float]]:
        """-> (weights [K] for the next step, metrics). Keeps the weights on a skipped or
        non-finite step, and when the mixer proposes invalid weights."""
        rt, cfg = self.rt, self.rt.cfg
        stats = StepStats(step=rt.step, weights=rt.weights.copy(), probs=plan.probs,
                          counts=plan.counts, loss=loss, gram=gram, norms=norms, update_norms=upd,
                          inclusion=plan.inclusion, lagged_gram=lagged)
        if skipped or not stats.is_finite():
            rt.skipped_steps += 1
            rt.mixer.skip(stats)
            why = ("was not applied by the optimizer (loss-scale overflow)" if skipped
                   else f"has non-finite statistics (loss {loss})")
            logger.warning("acodm: step %d %s; the mixer is not updated and the weights are kept",
                           rt.step, why)
            return rt.weights, {"skipped": 1.0}
        with torch.profiler.record_function("acodm/mixer_update"):
            proposal = rt.mixer.update(stats)
        try:
            if rt.mixer.final_weights:
                new = normalize_weights(proposal, 0.0, 1.0)  # validates; a schedule's weights stand
                if np.max(np.abs(new - proposal)) < 1e-9:
                    new = np.asarray(proposal, dtype=np.float64).copy()
            else:
                new = normalize_weights(proposal, cfg.sampling.min_weight, cfg.sampling.max_weight)
        except ValueError as e:
            rt.skipped_steps += 1
            logger.warning("acodm: mixer proposed invalid weights at step %d (%s); keeping the "
                           "previous weights", rt.step, e)
            return rt.weights, {"skipped": 1.0}
        if cfg.shadow:  # the mixer's choice is logged, the plan keeps the static weights
            metrics = self._metrics(rt.weights, loss)
            metrics.update({f"shadow_weight/{n}": float(w) for n, w in zip(cfg.domain_names, new)})
            new = rt.weights
        else:
            metrics = self._metrics(new, loss)
        if gram is not None and (rt.step + 1) % cfg.log_interval == 0:  # a logged step
            metrics.update(grad_cosines(cfg.domain_names, stats.gram, stats.present))
        return new, metrics

    def _metrics(self, new: np.ndarray, loss: np.ndarray) -> dict[str, float]:
        rt, names = self.rt, self.rt.cfg.domain_names
        metrics = {f"weight/{n}": float(w) for n, w in zip(names, new)}
        metrics.update({f"loss/{n}": float(x) for n, x in zip(names, loss) if np.isfinite(x)})
        if rt.mixer.last_reward is not None:
            metrics.update({f"reward/{n}": float(r) for n, r in zip(names, rt.mixer.last_reward)})
        metrics.update(rt.mixer.last_metrics)
        metrics["reward_path_seconds"] = sum(rt.timings.values())
        if rt.cursors is not None:  # the cursors have consumed this step's samples already
            steps_left = rt.total_steps - rt.step - 1
            n = rt.layout.dp_size * rt.grad_accum * rt.micro_batch
            acct, projected = accounting_metrics(names, rt.cursors.positions, rt.cursors.sizes, new,
                                                 steps_left, n, self.tokens_per_sample)
            metrics.update(acct)
            self.repeat_watch.check(projected, rt.step + 1)
        return metrics


def grad_cosines(names, gram: np.ndarray, present: np.ndarray) -> dict[str, float]:
    """``grad_cos/<a>/<b>`` (a before b in domain order): cosine of the two domains' mean
    gradients over the selected layers, from the [K, K] Gram; pairs with an absent domain
    (no micro-batch, zero norm) are left out. The run report draws them as a heatmap."""
    g = np.asarray(gram, dtype=np.float64)
    d = np.sqrt(np.clip(np.diag(g), 0.0, None))
    out = {}
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            if present[i] and present[j] and d[i] > 0 and d[j] > 0:
                out[f"grad_cos/{names[i]}/{names[j]}"] = float(np.clip(g[i, j] / (d[i] * d[j]), -1.0, 1.0))
    return out
