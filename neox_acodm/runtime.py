"""MixingRuntime: the per-process object every adapter (NeoX, Megatron, the demo loop) drives.

One optimizer step, seen from any rank::

    plan = rt.plan()                         # same on every rank: f(seed, step, weights)
    for g, (domain, idx) in enumerate(rt.micro_batches()):
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
from .accounting import RepeatWatch, accounting_metrics
from .config import ACODMConfig, ConfigError
from .dist import all_reduce_sum, all_stage_keys, broadcast_weights, group_rank, group_size, sum_over
from .mixers import Mixer, StepStats, build_mixer
from .ops import get_ops
from .plan import DomainCursors, StepPlan, build_step_plan, normalize_weights
from .probe import GradientProbe
from .selectors import chosen_layer_keys, matching_layer_keys, select_params
from .state import ParamNorms

__all__ = ["MixingRuntime", "PlanIterator", "resolve_initial_weights"]

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


class MixingRuntime:
    """Plans each step's data, captures per-domain gradients, reduces step statistics, runs
    the mixer on the owner and broadcasts the next weights."""

    def __init__(self, cfg: ACODMConfig, *, dataset_sizes: Sequence[int] | None = None,
                 dp_size: int = 1, dp_rank: int = 0, grad_accum: int = 1, micro_batch: int = 1,
                 total_steps: int | None = None, model: torch.nn.Module | None = None,
                 token_counts: Sequence[float] | None = None, group=None, dp_group=None,
                 partial_sum_group=None, pipe_group=None, comm_device: torch.device | str = "cpu",
                 agent_device: torch.device | str | None = None):
        self.cfg = cfg
        self.k = cfg.num_domains
        self.dp_size, self.dp_rank = dp_size, dp_rank
        self.grad_accum, self.micro_batch = grad_accum, micro_batch
        self.total_steps = cfg.total_steps or total_steps
        if self.total_steps is None:
            raise ConfigError("acodm.total_steps: not set and the integration did not provide "
                              "train_iters; set acodm.total_steps")
        # group: owner + broadcast (None = world); dp_group: sums over data parallel (None =
        # world); partial_sum_group (tensor parallel) and pipe_group: partial Grams and norms of
        # different shards/stages are summed there (None = no such parallelism)
        self.group, self.dp_group, self.partial_sum_group = group, dp_group, partial_sum_group
        self.pipe_group = pipe_group
        self.comm_device = torch.device(comm_device)
        self.timeout = cfg.collective_timeout_s
        learner = cfg.mixer == "acodm" and cfg.proxy.role != "target"
        if learner and cfg.agent.warmup_steps >= self.total_steps:
            logger.warning("acodm.agent.warmup_steps=%d >= the run's %d steps: the actor never "
                           "chooses the weights in this run", cfg.agent.warmup_steps, self.total_steps)
        if cfg.mixer == "odm" and cfg.odm.warmup_steps >= self.total_steps:
            logger.warning("acodm.odm.warmup_steps=%d >= the run's %d steps: ODM never moves the "
                           "weights in this run", cfg.odm.warmup_steps, self.total_steps)
        self.is_owner = group_rank(group) == 0
        init = resolve_initial_weights(cfg, token_counts)
        self.initial_weights = normalize_weights(init, cfg.sampling.min_weight, cfg.sampling.max_weight)
        if cfg.schedule_path:  # a replay starts exactly where the recorded run started
            from .schedule import load_schedule

            self.initial_weights = load_schedule(cfg.schedule_path, cfg.domain_names).weights_at(0)
        self.weights = self.initial_weights.copy()
        self.cursors = DomainCursors(dataset_sizes, cfg.seed) if dataset_sizes is not None else None
        self._tokens_per_sample = (np.asarray(token_counts, dtype=np.float64) / self.cursors.sizes
                                   if token_counts is not None and self.cursors is not None else None)
        self._repeat_watch = RepeatWatch(cfg.domain_names, cfg.sampling.max_epochs)
        self.step = 0
        self._plan: StepPlan | None = None
        self._starts: np.ndarray | None = None
        self.skipped_steps = 0
        self.timings = {"capture": 0.0, "reduce_gram": 0.0, "mixer": 0.0}

        model_device = next(model.parameters()).device if model is not None else torch.device("cpu")
        staged = group_size(pipe_group) > 1
        sharded = staged or group_size(partial_sum_group) > 1
        if sharded and cfg.state.update_norm == "exact":
            raise ConfigError("acodm.state.update_norm: 'exact' keeps per-rank weight copies that "
                              "are not checkpointed under tensor/pipeline parallelism; use 'norm_change'")
        update_norm = cfg.state.update_norm
        if update_norm == "auto":
            update_norm = "norm_change" if sharded else "exact"
        lagged = cfg.reward.mode == "aligned" and cfg.reward.self_term == "lagged"
        if sharded and lagged and cfg.needs_rewards:
            raise ConfigError("acodm.reward.self_term: 'lagged' keeps per-rank gradient shards of the "
                              "previous step that are not checkpointed under tensor/pipeline "
                              "parallelism; use 'raw' or 'drop'")
        self.probe: GradientProbe | None = None
        if cfg.needs_rewards:
            if model is None:
                raise ValueError("AC-ODM (non-proxy) needs the model to capture per-domain gradients")
            keys = all_stage_keys(matching_layer_keys(model, cfg.reward.params), pipe_group) if staged else None
            params = select_params(model, cfg.reward.params, "acodm.reward.params", keys=keys)
            if params:  # a pipeline stage may own none of the selected layers
                ops = get_ops(cfg.reward.backend, model_device)
                self.probe = GradientProbe(params, self.k, cfg.reward.estimator, cfg.reward.sketch_dim,
                                           cfg.reward.sketch_seed, ops,
                                           domain_source=lambda: self.plan().domains[self.dp_rank],
                                           lagged=lagged and self.is_owner)
                logger.info("acodm: capturing per-domain gradients of %d tensors (%d elements, %s, "
                            "buffer %.1f MiB, backend %s): %s", len(params), self.probe.num_params,
                            cfg.reward.estimator, self.probe.memory_bytes() / 2**20, ops.name,
                            [p.name for p in params])
        self.norms: ParamNorms | None = None
        num_norm_layers = 0
        if cfg.mixer == "acodm":
            if model is None:
                raise ValueError("AC-ODM needs the model for the weight-norm state features")
            sel = cfg.state.norm_params
            keys = all_stage_keys(matching_layer_keys(model, sel), pipe_group) if staged else None
            norm_params = select_params(model, sel, "acodm.state.norm_params", keys=keys)
            if keys is None:
                positions, num_norm_layers = None, len(norm_params)
            else:
                chosen = chosen_layer_keys(keys, sel, "acodm.state.norm_params")
                positions, num_norm_layers = [chosen.index(p.layer) for p in norm_params], len(chosen)
            self.norms = ParamNorms(norm_params, update_norm, positions, num_norm_layers)
        self.mixer: Mixer | None = None
        if self.is_owner:
            dev = agent_device or (model_device if cfg.agent.device == "auto" else cfg.agent.device)
            self.mixer = build_mixer(cfg, self.initial_weights, num_norm_layers, self.total_steps, dev)
        self._loss_sum = torch.zeros(self.k, dtype=torch.float32, device=self.comm_device)
        self._loss_cnt = torch.zeros(self.k, dtype=torch.float32, device=self.comm_device)

    # -- data plan --------------------------------------------------------------------------
    def plan(self) -> StepPlan:
        """This step's plan; the first call of a step advances the per-domain cursors."""
        if self._plan is None:
            self._plan = build_step_plan(self.cfg.seed, self.step, self.weights, self.dp_size,
                                         self.grad_accum, self.cfg.sampling.min_microbatches_per_domain,
                                         self.cfg.sampling.allocation)
            if self.cursors is not None:
                self._starts = self.cursors.assign(self._plan, self.micro_batch)
        return self._plan

    def micro_batches(self, dp_rank: int | None = None) -> list[tuple[int, np.ndarray]]:
        """(domain, [micro_batch] sample indices into that domain) for each of this rank's
        micro-batches of the current step."""
        if self.cursors is None:
            raise RuntimeError("micro_batches() needs dataset_sizes at construction")
        plan = self.plan()
        r = self.dp_rank if dp_rank is None else dp_rank
        return [(int(d), self.cursors.sample_indices(int(d), int(s), self.micro_batch))
                for d, s in zip(plan.domains[r], self._starts[r])]

    # -- per micro-batch --------------------------------------------------------------------
    def begin_microbatch(self, index: int, grad_scale: float | None = None) -> int:
        """Micro-batch ``index`` of this rank starts; returns its domain. ``grad_scale``
        multiplies the captured gradients (e.g. ``grad_accum / loss_scale``); None keeps the
        scale last set (here or by :meth:`set_grad_scale`)."""
        d = int(self.plan().domains[self.dp_rank, index])
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
        weights. Collective: every rank of ``group``/``dp_group`` must call it.

        ``skipped``: the framework did not apply this step (fp16 loss-scale overflow); no mixer
        learns from it and the weights stay, whatever the mixer."""
        plan = self.plan()
        to = self.timeout
        what = f"step {self.step} loss all-reduce"
        stats_t = all_reduce_sum(torch.stack([self._loss_sum, self._loss_cnt]), self.dp_group, to, what)
        stats_t = sum_over(stats_t, self.pipe_group, to, what).cpu()  # losses live on the last stage
        cnt = stats_t[1].double()
        loss = torch.where(cnt > 0, stats_t[0].double() / cnt.clamp_min(1), float("nan")).numpy()
        gram = lagged = None
        if self.cfg.needs_rewards:
            t0 = time.perf_counter()
            if self.probe is not None:
                gram = self.probe.reduce_gram(torch.as_tensor(plan.counts), self.dp_group, to)
                lagged = None if self.probe.lagged_gram is None else self.probe.lagged_gram.cpu()
                self.timings["capture"] = self.probe.capture_seconds
            else:
                gram = torch.zeros(self.k, self.k)
            if group_size(self.partial_sum_group) > 1 or group_size(self.pipe_group) > 1:
                gram = gram.to(self.comm_device)
                what = f"step {self.step} Gram all-reduce"
                gram = sum_over(sum_over(gram, self.partial_sum_group, to, what), self.pipe_group, to, what).cpu()
            self.timings["reduce_gram"] += time.perf_counter() - t0
        norms = upd = None
        if self.norms is not None:  # collective under TP/PP: every rank measures
            norms, upd = self.norms.measure(
                lambda t: sum_over(sum_over(t.to(self.comm_device), self.partial_sum_group, to, "norm all-reduce"),
                                    self.pipe_group, to, "norm all-reduce").cpu())
        new, error = None, None
        metrics: dict[str, float] = {}
        if self.is_owner:
            t0 = time.perf_counter()
            try:
                new, metrics = self._owner_update(plan, loss, gram, norms, upd, lagged, skipped)
            except Exception as e:  # noqa: BLE001 - re-raised below, after telling every rank
                logger.error("acodm: the mixer update failed at step %d: %s: %s", self.step, type(e).__name__, e)
                error = e
            self.timings["mixer"] += time.perf_counter() - t0
        self.weights = broadcast_weights(new, self.k, self.group, self.comm_device, to,
                                         f"step {self.step} weight broadcast", failed=error is not None)
        if error is not None:
            raise error
        self.step += 1
        self._plan, self._starts = None, None
        self._loss_sum.zero_()
        self._loss_cnt.zero_()
        return metrics

    def _owner_update(self, plan: StepPlan, loss: np.ndarray, gram, norms, upd,
                      lagged=None, skipped: bool = False) -> tuple[np.ndarray, dict]:
        stats = StepStats(step=self.step, weights=self.weights.copy(), probs=plan.probs,
                          counts=plan.counts, loss=loss, gram=gram, norms=norms, update_norms=upd,
                          inclusion=plan.inclusion, lagged_gram=lagged)
        if skipped or not stats.is_finite():
            self.skipped_steps += 1
            self.mixer.skip(stats)
            why = ("was not applied by the optimizer (loss-scale overflow)" if skipped
                   else f"has non-finite statistics (loss {loss})")
            logger.warning("acodm: step %d %s; the mixer is not updated and the weights are kept",
                           self.step, why)
            return self.weights, {"skipped": 1.0}
        with torch.profiler.record_function("acodm/mixer_update"):
            proposal = self.mixer.update(stats)
        try:
            if self.mixer.final_weights:
                new = normalize_weights(proposal, 0.0, 1.0)  # validates; a schedule's weights stand
                if np.max(np.abs(new - proposal)) < 1e-9:
                    new = np.asarray(proposal, dtype=np.float64).copy()
            else:
                new = normalize_weights(proposal, self.cfg.sampling.min_weight, self.cfg.sampling.max_weight)
        except ValueError as e:
            self.skipped_steps += 1
            logger.warning("acodm: mixer proposed invalid weights at step %d (%s); keeping the "
                           "previous weights", self.step, e)
            return self.weights, {"skipped": 1.0}
        metrics = {f"weight/{n}": float(w) for n, w in zip(self.cfg.domain_names, new)}
        metrics.update({f"loss/{n}": float(x) for n, x in zip(self.cfg.domain_names, loss)
                        if np.isfinite(x)})
        if self.mixer.last_reward is not None:
            metrics.update({f"reward/{n}": float(r)
                            for n, r in zip(self.cfg.domain_names, self.mixer.last_reward)})
        metrics.update(self.mixer.last_metrics)
        metrics["reward_path_seconds"] = sum(self.timings.values())
        if self.cursors is not None:  # the cursors have consumed this step's samples already
            steps_left = self.total_steps - self.step - 1
            n = self.dp_size * self.grad_accum * self.micro_batch
            acct, projected = accounting_metrics(self.cfg.domain_names, self.cursors.positions,
                                                 self.cursors.sizes, new, steps_left, n, self._tokens_per_sample)
            metrics.update(acct)
            self._repeat_watch.check(projected, self.step + 1)
        return new, metrics

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
