"""MixingRuntime: the per-process object every adapter (NeoX, Megatron, the demo loop) drives.

One optimizer step, seen from any rank::

    plan = rt.plan()                         # same on every rank: f(seed, step, weights)
    for g, (domain, idx) in enumerate(rt.micro_batches()):   # draws: moves the cursors
        rt.begin_microbatch(g)               # grad scale; gradients map to plan order
        loss = model(batch(domain, idx)); loss.backward()
        rt.record_loss(domain, loss)
    optimizer.step()
    metrics = rt.end_step()                  # reduce, update on the owner, broadcast weights

Only group rank 0 (the *owner*) builds the mixer (agent, optimizers, replay buffer); the
others receive the weights. Every rank must call :meth:`end_step` (it issues collectives).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
import torch

from . import persist
from .config import ACODMConfig, ConfigError
from .dist import ParallelLayout, all_reduce_sum, broadcast_weights, group_rank, sum_over
from .mixers import Mixer, build_mixer
from .ops import get_ops
from .owner import OwnerUpdate
from .plan import DomainCursors, StepPlan, build_step_plan, normalize_weights
from .probe import GradientProbe
from .selectors import resolve_selection
from .state import ParamNorms

__all__ = ["MixingRuntime", "ParallelLayout", "PlanIterator", "resolve_initial_weights"]

logger = logging.getLogger(__name__)


def resolve_initial_weights(cfg: ACODMConfig, token_counts: Sequence[float] | None) -> np.ndarray:
    """[K] initial weights per ``cfg.initial_weights``."""
    mode = cfg.initial_weights
    if mode == "auto":
        mode = "config" if all(d.weight is not None for d in cfg.domains) else "uniform"
    if mode == "config":
        return np.array([d.weight for d in cfg.domains], dtype=np.float64)
    if mode == "metric":  # zero-weight domains get sampling.min_weight when the weights are projected
        return np.array([d.metric_weight for d in cfg.domains], dtype=np.float64)
    if mode == "tokens":
        if token_counts is None:
            raise ConfigError("acodm.initial_weights: 'tokens' needs the per-domain token counts, "
                              "which this integration did not provide; use 'config' or 'uniform'")
        return np.asarray(token_counts, dtype=np.float64) ** (1.0 / cfg.sampling.temperature)
    return np.full(cfg.num_domains, 1.0 / cfg.num_domains)


def _warn_inactive(cfg: ACODMConfig, total_steps: int) -> None:
    """Warn when a warm-up outlasts the run (the mixer would never act)."""
    if cfg.mixer == "acodm" and cfg.proxy.role != "target" and cfg.agent.warmup_steps >= total_steps:
        logger.warning("acodm.agent.warmup_steps=%d >= the run's %d steps: the actor never "
                       "chooses the weights in this run", cfg.agent.warmup_steps, total_steps)
    if cfg.mixer == "odm" and cfg.odm.warmup_steps >= total_steps:
        logger.warning("acodm.odm.warmup_steps=%d >= the run's %d steps: ODM never moves the "
                       "weights in this run", cfg.odm.warmup_steps, total_steps)


class MixingRuntime:
    """Plans each step's data, captures per-domain gradients, reduces step statistics, runs
    the mixer on the owner and broadcasts the next weights.

    ``layout``: this rank's place in the parallel job (see :class:`~neox_acodm.dist.ParallelLayout`).
    ``dataset_sizes``: [K] samples per domain on data-loading ranks (None elsewhere).
    ``token_counts``: [K] tokens per domain (token accounting, ``initial_weights: tokens``).
    """

    def __init__(self, cfg: ACODMConfig, *, layout: ParallelLayout | None = None,
                 dataset_sizes: Sequence[int] | None = None, grad_accum: int = 1, micro_batch: int = 1,
                 total_steps: int | None = None, model: torch.nn.Module | None = None,
                 token_counts: Sequence[float] | None = None,
                 agent_device: torch.device | str | None = None):
        self.cfg = cfg
        self.k = cfg.num_domains
        self.layout = layout = layout or ParallelLayout()
        self.grad_accum, self.micro_batch = grad_accum, micro_batch
        self.total_steps = cfg.total_steps or total_steps
        if self.total_steps is None:
            raise ConfigError("acodm.total_steps: not set and the integration did not provide "
                              "train_iters; set acodm.total_steps")
        self.timeout = cfg.collective_timeout_s
        _warn_inactive(cfg, self.total_steps)
        self.is_owner = group_rank(layout.group) == 0
        init = resolve_initial_weights(cfg, token_counts)
        self.initial_weights = normalize_weights(init, cfg.sampling.min_weight, cfg.sampling.max_weight)
        if cfg.schedule_path:  # a replay starts exactly where the recorded run started
            from .schedule import load_schedule

            self.initial_weights = load_schedule(cfg.schedule_path, cfg.domain_names).weights_at(0)
        self.weights = self.initial_weights.copy()
        self.cursors = DomainCursors(dataset_sizes, cfg.seed) if dataset_sizes is not None else None
        tokens_per_sample = (np.asarray(token_counts, dtype=np.float64) / self.cursors.sizes
                             if token_counts is not None and self.cursors is not None else None)
        self.step = 0
        self.skipped_steps = 0
        self.timings = {"capture": 0.0, "reduce_gram": 0.0, "mixer": 0.0}
        model_device = next(model.parameters()).device if model is not None else torch.device("cpu")
        self.probe = self._build_probe(model, model_device)
        self.norms = self._build_norms(model)
        self.mixer: Mixer | None = None
        self.owner: OwnerUpdate | None = None
        if self.is_owner:
            dev = agent_device or (model_device if cfg.agent.device == "auto" else cfg.agent.device)
            num_norm_layers = self.norms.num_layers if self.norms is not None else 0
            self.mixer = build_mixer(cfg, self.initial_weights, num_norm_layers, self.total_steps, dev)
            self.owner = OwnerUpdate(self, tokens_per_sample)
        self._loss_sum = torch.zeros(self.k, dtype=torch.float32, device=layout.comm_device)
        self._loss_cnt = torch.zeros(self.k, dtype=torch.float32, device=layout.comm_device)
        self._begin_step()

    @property
    def dp_rank(self) -> int:
        return self.layout.dp_rank

    @property
    def dp_size(self) -> int:
        return self.layout.dp_size

    def _build_probe(self, model, model_device) -> GradientProbe | None:
        cfg = self.cfg
        if not cfg.needs_rewards:
            return None
        if model is None:
            raise ValueError("AC-ODM (non-proxy) needs the model to capture per-domain gradients")
        lagged = cfg.reward.mode == "aligned" and cfg.reward.self_term == "lagged"
        if self.layout.sharded and lagged:
            raise ConfigError("acodm.reward.self_term: 'lagged' keeps per-rank gradient shards of the "
                              "previous step that are not checkpointed under tensor/pipeline "
                              "parallelism; use 'raw' or 'drop'")
        sel = resolve_selection(model, cfg.reward.params, "acodm.reward.params", self.layout.all_stages())
        if not sel.params:  # a pipeline stage may own none of the selected layers
            return None
        ops = get_ops(cfg.reward.backend, model_device)
        probe = GradientProbe(sel.params, self.k, cfg.reward.estimator, cfg.reward.sketch_dim,
                              cfg.reward.sketch_seed, ops, lagged=lagged and self.is_owner)
        logger.info("acodm: capturing per-domain gradients of %d tensors (%d elements, %s, buffer "
                    "%.1f MiB, backend %s): %s", len(sel.params), probe.num_params, cfg.reward.estimator,
                    probe.memory_bytes() / 2**20, ops.name, [p.name for p in sel.params])
        return probe

    def _build_norms(self, model) -> ParamNorms | None:
        cfg = self.cfg
        if cfg.mixer != "acodm":
            return None
        if model is None:
            raise ValueError("AC-ODM needs the model for the weight-norm state features")
        update_norm = cfg.state.update_norm
        if self.layout.sharded and update_norm == "exact":
            raise ConfigError("acodm.state.update_norm: 'exact' keeps per-rank weight copies that "
                              "are not checkpointed under tensor/pipeline parallelism; use 'norm_change'")
        if update_norm == "auto":
            update_norm = "norm_change" if self.layout.sharded else "exact"
        sel = resolve_selection(model, cfg.state.norm_params, "acodm.state.norm_params", self.layout.all_stages())
        return ParamNorms(sel, update_norm)

    # -- data plan --------------------------------------------------------------------------
    def _begin_step(self) -> None:
        """Plan the current step (a pure function of seed, step and weights) and hand this
        rank's micro-batch domains to the probe; the cursors move when samples are drawn."""
        self._plan = build_step_plan(self.cfg.seed, self.step, self.weights, self.layout.dp_size,
                                     self.grad_accum, self.cfg.sampling.min_microbatches_per_domain,
                                     self.cfg.sampling.allocation)
        self._starts: np.ndarray | None = None
        if self.probe is not None:
            self.probe.begin_step(self._plan.domains[self.layout.dp_rank])

    def plan(self) -> StepPlan:
        """This step's plan (no side effect)."""
        return self._plan

    def set_weights(self, weights) -> None:
        """Replace the current step's weights [K] and re-plan it (between steps only; every rank
        must pass the same weights). For tests and tools that drive the plan directly."""
        if self.in_step:
            raise RuntimeError("acodm: set_weights() in the middle of a step; call it after end_step()")
        self.weights = normalize_weights(weights, 0.0, 1.0)
        self._begin_step()

    @property
    def in_step(self) -> bool:
        """True between the first sample drawn / loss recorded of a step and its end_step()."""
        return self._starts is not None or bool(self._loss_cnt.any())

    def _sample_starts(self) -> np.ndarray:
        """[dp, grad_accum] cursor start of each micro-batch; the first call of a step advances
        the per-domain cursors (every rank, once per step, data-loading or not)."""
        if self._starts is None and self.cursors is not None:
            self._starts = self.cursors.assign(self._plan, self.micro_batch)
        return self._starts

    def micro_batches(self, dp_rank: int | None = None) -> list[tuple[int, np.ndarray]]:
        """(domain, [micro_batch] sample indices into that domain) for each of this rank's
        micro-batches of the current step."""
        if self.cursors is None:
            raise RuntimeError("micro_batches() needs dataset_sizes at construction")
        starts = self._sample_starts()
        r = self.layout.dp_rank if dp_rank is None else dp_rank
        return [(int(d), self.cursors.sample_indices(int(d), int(s), self.micro_batch))
                for d, s in zip(self._plan.domains[r], starts[r])]

    # -- per micro-batch --------------------------------------------------------------------
    def begin_microbatch(self, index: int, grad_scale: float | None = None) -> int:
        """Micro-batch ``index`` of this rank starts; returns its domain. ``grad_scale``
        multiplies the captured gradients (e.g. ``grad_accum / loss_scale``); None keeps the
        scale last set (here or by :meth:`set_grad_scale`)."""
        d = int(self._plan.domains[self.layout.dp_rank, index])
        if self.probe is not None and grad_scale is not None:
            self.probe.set_grad_scale(grad_scale)
        return d

    def set_grad_scale(self, grad_scale: float) -> None:
        """Scale applied to captured gradients (ranks that see no loss call this)."""
        if self.probe is not None:
            self.probe.set_grad_scale(grad_scale)

    def record_loss(self, domain: int, loss: torch.Tensor | float) -> None:
        """Add one micro-batch's mean loss (no host sync: stays on device until the step ends)."""
        if isinstance(loss, torch.Tensor):
            loss = loss.detach().to(self._loss_sum.device, torch.float32)
        self._loss_sum[domain] += loss
        self._loss_cnt[domain] += 1

    # -- step boundary ----------------------------------------------------------------------
    def end_step(self, skipped: bool = False) -> dict[str, float]:
        """Reduce the step's statistics, update the mixer on the owner, broadcast the next
        weights. Collective: every rank of the layout's groups must call it.

        ``skipped``: the framework did not apply this step (fp16 loss-scale overflow); no mixer
        learns from it and the weights stay, whatever the mixer."""
        plan, lay, to = self._plan, self.layout, self.timeout
        self._sample_starts()
        what = f"step {self.step} loss all-reduce"
        stats_t = all_reduce_sum(torch.stack([self._loss_sum, self._loss_cnt]), lay.dp_group, to, what)
        stats_t = sum_over(stats_t, lay.pipe_group, to, what).cpu()  # losses live on the last stage
        cnt = stats_t[1].double()
        loss = torch.where(cnt > 0, stats_t[0].double() / cnt.clamp_min(1), float("nan")).numpy()
        gram = lagged = None
        if self.cfg.needs_rewards:
            t0 = time.perf_counter()
            if self.probe is not None:
                gram = self.probe.reduce_gram(torch.as_tensor(plan.counts), lay.dp_group, to)
                lagged = None if self.probe.lagged_gram is None else self.probe.lagged_gram.cpu()
                self.timings["capture"] = self.probe.capture_seconds
            else:
                gram = torch.zeros(self.k, self.k)
            if lay.sharded:
                gram = lay.sum_partials(gram, to, f"step {self.step} Gram all-reduce")
            self.timings["reduce_gram"] += time.perf_counter() - t0
        norms = upd = None
        if self.norms is not None:  # collective under TP/PP: every rank measures
            norms, upd = self.norms.measure(lambda t: lay.sum_partials(t, to, "norm all-reduce"))
        new, error = None, None
        metrics: dict[str, float] = {}
        if self.is_owner:
            t0 = time.perf_counter()
            try:
                new, metrics = self.owner.update(plan, loss, gram, norms, upd, lagged, skipped)
            except Exception as e:  # noqa: BLE001 - re-raised below, after telling every rank
                logger.error("acodm: the mixer update failed at step %d: %s: %s", self.step, type(e).__name__, e)
                error = e
            self.timings["mixer"] += time.perf_counter() - t0
        self.weights = broadcast_weights(new, self.k, lay.group, lay.comm_device, to,
                                         f"step {self.step} weight broadcast", failed=error is not None)
        if error is not None:
            raise error
        self.step += 1
        self._loss_sum.zero_()
        self._loss_cnt.zero_()
        self._begin_step()
        return metrics

    # -- persistence (see persist.py: collective, verified, transactional) -------------------
    def state_dict(self) -> dict:
        """Full state (mixer part only on the owner). Call between steps."""
        return persist.state_dict(self)

    def save(self, path: str) -> None:
        """Owner writes ``path`` atomically; collective: a failure raises on every rank."""
        persist.save(self, path)

    def load(self, path: str) -> None:
        """Collective: the owner reads and validates ``path``; nothing changes on any rank
        unless every rank could stage the state, and every rank raises the same error."""
        persist.load(self, path)

    def export_policy(self) -> None:
        """Proxy source: write the actor to ``acodm.proxy.policy_path`` (owner only)."""
        if self.is_owner and self.cfg.proxy.role == "source" and self.mixer is not None:
            self.mixer.export_policy(self.cfg.proxy.policy_path)

    def close(self) -> None:
        if self.probe is not None:
            self.probe.remove()


from .plan_iterator import PlanIterator  # noqa: E402  (re-export for the adapters)
