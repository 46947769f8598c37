"""The owner's half of a step: statistics -> mixer update -> validated weights + metrics.

Runs on the owning rank only (group rank 0), after the runtime reduced the step's statistics.
It takes explicit inputs (:class:`StepInputs`) and returns :class:`OwnerResult`; it never
holds or writes the runtime.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from .accounting import RepeatWatch, accounting_metrics
from .mixers import Mixer, StepStats
from .plan import StepPlan, normalize_weights

__all__ = ["OwnerResult", "OwnerUpdate", "StepInputs", "grad_cosines"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepInputs:
    """One finished step as the owner sees it (globally reduced, identical on every rank).

    weights: [K] the weights the step was planned with; loss: [K] (NaN where absent);
    gram, lagged: [K, K] or None; norms, update_norms: [L] or None.
    positions, sizes: [K] the cursors after the step's draws (None off data-loading ranks);
    samples_per_step: dp x grad_accum x micro_batch; steps_left: steps after this one.
    """

    step: int
    weights: np.ndarray
    plan: StepPlan
    loss: np.ndarray
    gram: object = None
    lagged: object = None
    norms: object = None
    update_norms: object = None
    skipped: bool = False
    reward_seconds: float = 0.0
    positions: np.ndarray | None = None
    sizes: np.ndarray | None = None
    samples_per_step: int = 0
    steps_left: int = 0


@dataclass(frozen=True)
class OwnerResult:
    """weights: [K] for the next step; skipped: the mixer learned nothing from this step."""

    weights: np.ndarray
    metrics: dict[str, float]
    skipped: bool = False


@dataclass(frozen=True)
class OwnerSettings:
    """The parts of the block the owner's update reads."""

    domain_names: tuple[str, ...]
    min_weight: float
    max_weight: float
    shadow: bool
    log_interval: int
    max_epochs: float | None

    @classmethod
    def of(cls, block) -> OwnerSettings:
        """From the ``acodm:`` block (an ``ACODMConfig``)."""
        sampling = block.sampling
        return cls(
            block.domain_names,
            sampling.min_weight,
            sampling.max_weight,
            block.shadow,
            block.log_interval,
            sampling.max_epochs,
        )


class OwnerUpdate:
    """Feeds each step to ``mixer``, validates its proposal and builds the ``acodm/*`` metrics.

    ``tokens_per_sample``: [K] for token accounting, or None (samples only)."""

    def __init__(self, settings: OwnerSettings, mixer: Mixer, tokens_per_sample: np.ndarray | None):
        self.settings = settings
        self.mixer = mixer
        self.tokens_per_sample = tokens_per_sample
        self.repeat_watch = RepeatWatch(settings.domain_names, settings.max_epochs)
        # per-domain diagnostics, counted from the first step this process sees (a resume restarts them)
        self.last_drawn: np.ndarray | None = None  # [K] step each domain last drew data
        self.floor_steps = np.zeros(len(settings.domain_names))
        self.steps_seen = 0

    def _diagnostics(self, x: StepInputs) -> dict[str, float]:
        """``staleness/<domain>`` and ``at_floor/<domain>`` of the step ``x``."""
        names, floor = self.settings.domain_names, self.settings.min_weight
        if self.last_drawn is None:
            self.last_drawn = np.full(len(names), float(x.step))
        self.last_drawn = np.where(np.asarray(x.plan.counts) > 0, float(x.step), self.last_drawn)
        self.steps_seen += 1
        self.floor_steps += np.asarray(x.weights) <= floor * (1 + 1e-9) + 1e-15
        out = {f"staleness/{n}": float(x.step - s) for n, s in zip(names, self.last_drawn)}
        out.update({f"at_floor/{n}": float(c / self.steps_seen) for n, c in zip(names, self.floor_steps)})
        return out

    def update(self, x: StepInputs) -> OwnerResult:
        """Keeps the weights on a skipped or non-finite step, and when the mixer proposes
        invalid weights."""
        st, mixer = self.settings, self.mixer
        plan = x.plan
        diagnostics = self._diagnostics(x)
        stats = StepStats(
            step=x.step,
            weights=x.weights.copy(),
            probs=plan.probs,
            counts=plan.counts,
            loss=x.loss,
            gram=x.gram,
            norms=x.norms,
            update_norms=x.update_norms,
            inclusion=plan.inclusion,
            lagged_gram=x.lagged,
        )
        if x.skipped or not stats.is_finite():
            mixer.skip(stats)
            why = (
                "was not applied by the optimizer (loss-scale overflow)"
                if x.skipped
                else f"has non-finite statistics (loss {x.loss})"
            )
            logger.warning("acodm: step %d %s; the mixer is not updated and the weights are kept", x.step, why)
            return OwnerResult(x.weights, {"skipped": 1.0}, skipped=True)
        with torch.profiler.record_function("acodm/mixer_update"):
            proposal = mixer.update(stats)
        try:
            if mixer.final_weights:
                new = normalize_weights(proposal, 0.0, 1.0)  # validates; a schedule's weights stand
                if np.max(np.abs(new - proposal)) < 1e-9:
                    new = np.asarray(proposal, dtype=np.float64).copy()
            else:
                new = normalize_weights(proposal, st.min_weight, st.max_weight)
        except ValueError as e:
            logger.warning(
                "acodm: mixer proposed invalid weights at step %d (%s); keeping the previous weights", x.step, e
            )
            return OwnerResult(x.weights, {"skipped": 1.0}, skipped=True)
        if st.shadow:  # the mixer's choice is logged, the plan keeps the static weights
            metrics = self._metrics(x, x.weights)
            metrics.update({f"shadow_weight/{n}": float(w) for n, w in zip(st.domain_names, new)})
            new = x.weights
        else:
            metrics = self._metrics(x, new)
        if x.gram is not None and (x.step + 1) % st.log_interval == 0:  # a logged step
            metrics.update(grad_cosines(st.domain_names, stats.gram, stats.present))
        metrics.update(diagnostics)
        return OwnerResult(new, metrics)

    def _metrics(self, x: StepInputs, new: np.ndarray) -> dict[str, float]:
        names, mixer = self.settings.domain_names, self.mixer
        metrics = {f"weight/{n}": float(w) for n, w in zip(names, new)}
        metrics.update({f"loss/{n}": float(v) for n, v in zip(names, x.loss) if np.isfinite(v)})
        if mixer.last_reward is not None:
            metrics.update({f"reward/{n}": float(r) for n, r in zip(names, mixer.last_reward)})
        metrics.update(mixer.last_metrics)
        metrics["reward_path_seconds"] = x.reward_seconds
        if x.positions is not None:  # the cursors have consumed this step's samples already
            acct, projected = accounting_metrics(
                names, x.positions, x.sizes, new, x.steps_left, x.samples_per_step, self.tokens_per_sample
            )
            metrics.update(acct)
            self.repeat_watch.check(projected, x.step + 1)
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
