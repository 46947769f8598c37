"""The data side of one optimizer step: its plan, the cursors, and this rank's micro-batches.

Two granularities (``acodm.sampling.granularity``):

* ``microbatch``: the plan draws a domain for each of the ``dp * G`` micro-batches; a
  micro-batch's ``b`` samples come from one domain (consecutive positions of its stream);
* ``sample``: the plan draws a domain for each of the ``dp * G * b`` samples, like the stock
  blended loaders, so every micro-batch mixes domains and a domain of weight ``w`` is seen
  in a step with probability ``min(1, n w)`` (stratified) for ``n = dp * G * b``.

Either way the plan is a pure function of ``(seed, step, weights)``, slots take stream positions
in (slot, rank) order, and a domain's stream is consumed strictly in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .plan import DomainCursors, StepPlan, build_step_plan
from .typed_yaml import ConfigError, field

__all__ = ["GRANULARITIES", "SamplingConfig", "StepData"]

GRANULARITIES = ("microbatch", "sample")


@dataclass(frozen=True)
class SamplingConfig:
    """How weights become the domains of a step's micro-batches."""

    min_microbatches_per_domain: int = field(
        0,
        doc="Floor: every domain gets at least this many micro-batches per global step "
        "(the reference code's `domain_num`, 1 there). Needs K*floor <= dp*grad_accum.",
        rng=(0, None, True, None),
    )
    min_weight: float = field(
        0.0,
        doc="Every weight is clipped to at least this value before renormalising.",
        rng=(0.0, 1.0, True, False),
    )
    max_weight: float = field(
        1.0,
        doc="Cap on any single weight.",
        rng=(0.0, 1.0, False, True),
    )
    allocation: Literal["iid", "stratified"] = field(
        "iid",
        doc="How a step's micro-batches are drawn from the weights: `iid` draws (paper, "
        "reference code) or `stratified` (systematic sampling: counts floor/ceil of n*w, same "
        "expectation, far less per-step variance).",
    )
    granularity: Literal["microbatch", "sample"] = field(
        "microbatch",
        doc="What the plan assigns a domain to: `microbatch` (each micro-batch from one domain; a step "
        "sees at most dp*grad_accum domains) or `sample` (every sample of the global batch, like the "
        "stock blended loaders; micro-batches mix domains and the per-domain gradients are attributed "
        "inside them from activations, see `reward.estimator`). With `sample`, "
        "`min_microbatches_per_domain` counts samples.",
    )
    max_epochs: float | None = field(
        None,
        doc="Warn (once per domain) when, at the current weights, a domain is projected to be "
        "read more than this many times by the end of the run; null = no warning. The projected "
        "epochs are logged as `acodm/projected_epochs/<domain>` either way.",
        rng=(0.0, None, False, None),
    )
    temperature: float = field(
        1.0,
        doc="With `initial_weights: tokens`, weights are proportional to tokens^(1/temperature) "
        "(temperature sampling; 1 = natural mix, large = uniform).",
        rng=(0.0, None, False, None),
    )

    def _check(self, path: str) -> None:
        """Cross-field checks (called by the typed-YAML engine after the fields)."""
        if self.min_weight >= self.max_weight:
            raise ConfigError(f"{path}.min_weight: must be below max_weight ({self.max_weight}), got {self.min_weight}")


class StepData:
    """Plan and cursors of the current step for a job of ``dp_size`` data-parallel ranks, each
    running ``grad_accum`` micro-batches of ``micro_batch`` samples.

    ``dataset_sizes``: [K] samples per domain on data-loading ranks (None elsewhere: no cursors).
    """

    def __init__(
        self,
        sampling: SamplingConfig,
        seed: int,
        dp_size: int,
        grad_accum: int,
        micro_batch: int,
        dataset_sizes: Sequence[int] | None = None,
    ):
        self.sampling, self.seed = sampling, seed
        self.dp_size, self.grad_accum, self.micro_batch = dp_size, grad_accum, micro_batch
        self.per_sample = sampling.granularity == "sample"
        #: slots per rank (micro-batches or samples) and the samples each slot takes
        self.slots = grad_accum * micro_batch if self.per_sample else grad_accum
        self.slot_samples = 1 if self.per_sample else micro_batch
        self.cursors = DomainCursors(dataset_sizes, seed) if dataset_sizes is not None else None
        self.plan: StepPlan | None = None
        self.starts: np.ndarray | None = None

    def begin(self, step: int, weights) -> StepPlan:
        """Plan ``step`` (nothing is drawn yet)."""
        s = self.sampling
        self.plan = build_step_plan(
            self.seed, step, weights, self.dp_size, self.slots, s.min_microbatches_per_domain, s.allocation
        )
        self.starts = None
        return self.plan

    def rank_domains(self, dp_rank: int) -> np.ndarray:
        """Domains of this rank's step: [G] (one per micro-batch) or [G, b] (one per sample)."""
        d = self.plan.domains[dp_rank]
        return d.reshape(self.grad_accum, self.micro_batch) if self.per_sample else d

    def draw(self) -> np.ndarray | None:
        """[dp, slots] cursor start of every slot; the first call of a step advances the cursors."""
        if self.starts is None and self.cursors is not None:
            self.starts = self.cursors.assign(self.plan, self.slot_samples)
        return self.starts

    def micro_batches(self, dp_rank: int) -> list[tuple]:
        """This rank's micro-batches: ``(domain, [b] indices)``, or ``([b] domains, [b] indices)``
        at sample granularity (indices into each sample's domain)."""
        starts = self.draw()[dp_rank]
        doms = self.plan.domains[dp_rank]
        cur, b = self.cursors, self.micro_batch
        if not self.per_sample:
            return [(int(d), cur.sample_indices(int(d), int(s), b)) for d, s in zip(doms, starts)]
        idx = np.empty_like(starts)
        for d in np.unique(doms):  # one vectorised order lookup per domain present
            sel = doms == d
            idx[sel] = cur.indices_at(int(d), starts[sel])
        return [(doms[g * b : (g + 1) * b].copy(), idx[g * b : (g + 1) * b]) for g in range(self.grad_accum)]
