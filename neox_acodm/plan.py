"""Deterministic step plan: which domain every micro-batch of every data-parallel rank draws.

The plan of step ``t`` is a pure function of ``(seed, t, weights, dp_size, grad_accum,
micro_batch, floor)``; it uses a counter-based generator keyed on ``(seed, t)`` and never a
global RNG, so every rank (any TP/PP position) derives the same plan without communication.
One domain per micro-batch, as the per-domain gradient reward needs.

Two allocations of the non-forced slots: ``iid`` (independent draws from the weights) and
``stratified`` (systematic sampling: one uniform offset u, slots at (u + j) / n on the weights'
CDF). Stratified counts are floor(n w_i) or ceil(n w_i), E[count_i] = n w_i exactly (unbiased,
like i.i.d.), with far lower per-step variance -- the per-step analogue of megatron-core's
deterministic blending.

Per-domain cursors (:class:`DomainCursors`) turn the plan into sample indices: each domain's
stream is consumed strictly in order (reshuffled per epoch from ``(seed, domain, epoch)``), so
changing the weights never repeats or drops a sample of a domain.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .order import ORDER_VERSION, KeyedPermutation, epoch_key

__all__ = [
    "ALLOCATIONS",
    "DomainCursors",
    "StepPlan",
    "build_step_plan",
    "inclusion_probs",
    "normalize_weights",
    "slot_warning",
]

_PLAN_STREAM = 0x5EED_0001  # separates the plan's random stream from other uses of the seed
_SHUFFLE_STREAM = 0x5EED_0002


def normalize_weights(weights, min_weight: float = 0.0, max_weight: float = 1.0) -> np.ndarray:
    """Project weights onto the simplex with per-entry bounds [min_weight, max_weight].

    ``weights``: [K] non-negative, any scale. Raises ``ValueError`` on NaN/Inf, negative entries
    or an all-zero vector, so bad weights never reach the sampler.
    """
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.size == 0 or not np.all(np.isfinite(w)):
        raise ValueError(f"weights must be finite, got {w}")
    if np.any(w < 0):
        raise ValueError(f"weights must be non-negative, got {w}")
    s = w.sum()
    if not np.isfinite(s):  # finite entries whose sum overflows: rescale first
        w = w / w.max()
        s = w.sum()
    if s <= 0:
        raise ValueError("weights sum to zero")
    w = w / s
    if min_weight <= 0.0 and max_weight >= 1.0:
        return w
    # Water-filling: pin out-of-bound entries to their bound, rescale the free ones, repeat.
    pinned = np.full(w.size, np.nan)
    cur = w
    for _ in range(w.size + 1):
        free = np.isnan(pinned)
        rest = 1.0 - np.nansum(pinned)
        cur = np.where(free, 0.0, pinned)
        if free.any():
            wf = w[free]
            cur[free] = wf * rest / wf.sum() if wf.sum() > 0 else rest / free.sum()
        lo, hi = free & (cur < min_weight), free & (cur > max_weight)
        if hi.any():  # cap first: the freed mass may lift the small entries above the floor
            pinned[hi] = max_weight
        elif lo.any():
            pinned[lo] = min_weight
        else:
            break
    return cur / cur.sum()


@dataclass(frozen=True)
class StepPlan:
    """The data plan of one optimizer step.

    domains: [dp_size, grad_accum] int64, the domain of micro-batch g on DP rank r.
    counts:  [K] int64, micro-batches per domain over the whole global batch.
    probs:   [K] float64, the realised sampling distribution (floor included): E[counts] / n.
    inclusion: [K] float64, P(counts_i >= 1) under the allocation -- what an unbiased
             (Horvitz-Thompson) estimate of a per-domain quantity divides by.
    """

    step: int
    domains: np.ndarray
    counts: np.ndarray
    probs: np.ndarray
    inclusion: np.ndarray | None = None

    def for_rank(self, dp_rank: int) -> np.ndarray:
        """[grad_accum] domain ids of this DP rank's micro-batches, in order."""
        return self.domains[dp_rank]


ALLOCATIONS = ("iid", "stratified")


def inclusion_probs(weights, n_free: int, floor: int, allocation: str) -> np.ndarray:
    """P(domain i draws >= 1 of the step's micro-batches). weights: [K] normalised -> [K]."""
    w = np.asarray(weights, dtype=np.float64)
    if floor > 0:
        return np.ones_like(w)
    if allocation == "stratified":
        return np.minimum(1.0, n_free * w)
    return 1.0 - (1.0 - w) ** n_free


def slot_warning(weights, dp_size: int, grad_accum: int, sampling, micro_batch: int = 1) -> str | None:
    """A start-up warning when a step has fewer slots than domains (None otherwise).

    ``weights``: [K] normalised; ``sampling``: the ``acodm.sampling`` section (granularity,
    floor, allocation). At ``microbatch`` granularity a slot is a micro-batch: with
    ``dp_size * grad_accum < K`` some domains are never observed in a step, and a rare domain
    only when it wins a whole micro-batch; at ``sample`` granularity a slot is a sample.
    """
    w = np.asarray(weights, dtype=np.float64)
    per_sample = getattr(sampling, "granularity", "microbatch") == "sample"
    n = dp_size * grad_accum * (micro_batch if per_sample else 1)
    if n >= w.size:
        return None
    floor = sampling.min_microbatches_per_domain
    seen = inclusion_probs(w, n - floor * w.size, floor, sampling.allocation)
    i = int(np.argmin(seen))
    what = "samples" if per_sample else "micro-batches"
    fix = (
        "use a global batch of at least K samples"
        if per_sample
        else f"set sampling.granularity: sample (mixed micro-batches), or use smaller micro-batches and "
        f"more accumulation steps so that dp_size x grad_accum >= {w.size}"
    )
    return (
        f"acodm: a step has {n} {what} (dp_size x grad_accum{' x micro_batch' if per_sample else ''} = "
        f"{dp_size} x {grad_accum}{f' x {micro_batch}' if per_sample else ''}) for {w.size} domains, one domain each: "
        f"at most {n} domains are seen per step, and domain {i} (weight {w[i]:.4f}) is drawn in "
        f"{100 * seen[i]:.1f} % of the steps, which starves its gradient estimate; {fix}"
    )


def build_step_plan(
    seed: int, step: int, weights, dp_size: int, grad_accum: int, floor: int = 0, allocation: str = "iid"
) -> StepPlan:
    """Draw the domains of step ``step``'s ``dp_size * grad_accum`` micro-batches.

    ``floor`` copies of every domain are forced (the reference code's ``domain_num``); the
    remaining slots are drawn from ``weights`` by ``allocation`` (``iid`` or ``stratified``,
    see the module docstring); slots are then permuted so forced copies spread over ranks.
    ``weights``: [K], already normalised (see :func:`normalize_weights`).
    """
    if allocation not in ALLOCATIONS:
        raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {allocation!r}")
    w = np.asarray(weights, dtype=np.float64)
    k = w.size
    n = dp_size * grad_accum
    if dp_size < 1 or grad_accum < 1:
        raise ValueError(f"dp_size and grad_accum must be >= 1, got {dp_size}, {grad_accum}")
    if floor * k > n:
        raise ValueError(
            f"sampling.min_microbatches_per_domain={floor} x {k} domains exceeds the "
            f"{n} micro-batches of a global step (dp_size={dp_size} x grad_accum={grad_accum})"
        )
    rng = np.random.default_rng([_PLAN_STREAM, seed & 0xFFFFFFFF, step])
    forced = np.repeat(np.arange(k, dtype=np.int64), floor)
    # inverse-CDF draws against the cumulative weights: stable across numpy versions
    cdf = np.cumsum(w)
    cdf[-1] = 1.0
    free = n - forced.size
    u = (rng.random() + np.arange(free)) / max(free, 1) if allocation == "stratified" else rng.random(free)
    drawn = np.searchsorted(cdf, u, side="right").astype(np.int64)
    drawn = np.minimum(drawn, k - 1)
    slots = np.concatenate([forced, drawn])
    slots = slots[rng.permutation(n)]
    counts = np.bincount(slots, minlength=k).astype(np.int64)
    probs = (floor + (n - floor * k) * w) / n
    return StepPlan(
        step=step,
        domains=slots.reshape(dp_size, grad_accum),
        counts=counts,
        probs=probs,
        inclusion=inclusion_probs(w, free, floor, allocation),
    )


class DomainCursors:
    """Per-domain read positions over each domain's sample stream.

    The stream of domain ``d`` is an endless sequence of epochs, each a permutation of
    ``range(sizes[d])`` keyed by ``(seed, d, epoch)`` and evaluated per index
    (:class:`~neox_acodm.order.KeyedPermutation`: O(1) memory whatever the domain size, no stall
    at an epoch boundary). A micro-batch of ``micro_batch`` samples takes the next
    ``micro_batch`` positions; positions are assigned in (grad_accum, dp_rank) order so every
    rank computes every rank's indices identically.
    """

    def __init__(self, sizes, seed: int, shuffle: bool = True):
        self.sizes = np.asarray(sizes, dtype=np.int64)
        if self.sizes.ndim != 1 or np.any(self.sizes <= 0):
            raise ValueError(f"every domain needs at least one sample, got sizes {self.sizes}")
        self.seed = int(seed)
        self.shuffle = shuffle
        self.positions = np.zeros_like(self.sizes)
        self._orders: dict[int, tuple[int, KeyedPermutation]] = {}

    def order(self, d: int, epoch: int) -> KeyedPermutation | None:
        """Domain ``d``'s order in ``epoch`` (None: unshuffled, position = index)."""
        if not self.shuffle:
            return None
        last = self._orders.get(d)
        if last is None or last[0] != epoch:  # one order kept per domain: O(K) memory
            key = epoch_key(_SHUFFLE_STREAM, self.seed & 0xFFFFFFFF, d, epoch)
            last = self._orders[d] = (epoch, KeyedPermutation(int(self.sizes[d]), key))
        return last[1]

    def sample_indices(self, d: int, start: int, count: int) -> np.ndarray:
        """Indices into domain ``d`` of stream positions ``[start, start + count)``: [count] int64."""
        return self.indices_at(d, np.arange(start, start + count, dtype=np.int64))

    def indices_at(self, d: int, positions) -> np.ndarray:
        """Indices into domain ``d`` of the stream positions ``positions`` ([m] int): [m] int64."""
        size = int(self.sizes[d])
        pos = np.asarray(positions, dtype=np.int64)
        out = pos % size
        epochs = pos // size
        for epoch in np.unique(epochs):
            perm = self.order(d, int(epoch))
            if perm is not None:
                sel = epochs == epoch
                out[sel] = perm(out[sel])
        return out

    def assign(self, plan: StepPlan, micro_batch: int) -> np.ndarray:
        """Stream start positions [dp_size, grad_accum] for ``plan``; advances the cursors."""
        dp, ga = plan.domains.shape
        starts = np.empty((dp, ga), dtype=np.int64)
        for g in range(ga):
            for r in range(dp):
                d = plan.domains[r, g]
                starts[r, g] = self.positions[d]
                self.positions[d] += micro_batch
        return starts

    def state_dict(self) -> dict:
        return {
            "sizes": self.sizes.tolist(),
            "seed": self.seed,
            "shuffle": self.shuffle,
            "positions": self.positions.tolist(),
            "order": ORDER_VERSION,
        }

    def load_state_dict(self, state: dict) -> None:
        if list(state["sizes"]) != self.sizes.tolist():
            raise ValueError(
                f"cursor state is for domain sizes {state['sizes']}, this run has "
                f"{self.sizes.tolist()}; the datasets changed since the checkpoint"
            )
        if bool(state["shuffle"]) and state.get("order") != ORDER_VERSION:
            raise ValueError(
                f"cursor state uses sample order {state.get('order', 'permutation-v0')!r}, this "
                f"neox_acodm uses {ORDER_VERSION!r}; resume with the version that wrote the "
                f"checkpoint, or start the data stream afresh"
            )
        self.seed = int(state["seed"])
        self.shuffle = bool(state["shuffle"])
        self.positions = np.asarray(state["positions"], dtype=np.int64)
