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
from .capture import build_norms, build_probe
from .config import ACODMConfig, ConfigError
from .dist import ParallelLayout, all_reduce_sum, broadcast_weights, group_rank, sum_over
from .initial import resolve_initial_weights
from .mixers import Mixer, Requirements, build_mixer, inactive_warning, requirements
from .owner import OwnerSettings, OwnerUpdate, StepInputs
from .plan import DomainCursors, StepPlan, normalize_weights, slot_warning
from .schedule import load_schedule
from .step_data import StepData

__all__ = ["MixingRuntime", "ParallelLayout"]

logger = logging.getLogger(__name__)

_MID_STEP_LOAD = "acodm state loaded in the middle of a step; load before the first micro-batch or after end_step()"


class MixingRuntime:
    """Plans each step's data, captures per-domain gradients, reduces step statistics, runs
    the mixer on the owner and broadcasts the next weights.

    ``layout``: this rank's place in the parallel job (see :class:`~neox_acodm.dist.ParallelLayout`).
    ``dataset_sizes``: [K] samples per domain on data-loading ranks (None elsewhere).
    ``token_counts``: [K] tokens per domain (token accounting, ``initial_weights: tokens``).
    ``batch_dim``: where the samples are in the model's activations ([b, T, h]: 0, [T, b, h]: 1),
    for activation capture (``sampling.granularity: sample``, ``reward.estimator: projected``).
    """

    def __init__(
        self,
        cfg: ACODMConfig,
        *,
        layout: ParallelLayout | None = None,
        dataset_sizes: Sequence[int] | None = None,
        grad_accum: int = 1,
        micro_batch: int = 1,
        total_steps: int | None = None,
        model: torch.nn.Module | None = None,
        token_counts: Sequence[float] | None = None,
        agent_device: torch.device | str | None = None,
        batch_dim: int = 0,
    ):
        self.cfg = cfg
        self.k = cfg.num_domains
        self.layout = layout = layout or ParallelLayout()
        self.grad_accum, self.micro_batch = grad_accum, micro_batch
        self.total_steps = cfg.total_steps or total_steps
        if self.total_steps is None:
            raise ConfigError(
                "acodm.total_steps: not set and the integration did not provide train_iters; set acodm.total_steps"
            )
        self.timeout = cfg.collective_timeout_s
        #: what the mixer needs each step (decided from the config, the same on every rank)
        self.needs: Requirements = requirements(cfg)
        self.is_owner = group_rank(layout.group) == 0
        init = resolve_initial_weights(cfg, token_counts)
        self.initial_weights = normalize_weights(init, cfg.sampling.min_weight, cfg.sampling.max_weight)
        sw = slot_warning(self.initial_weights, layout.dp_size, grad_accum, cfg.sampling, micro_batch)
        for warning in (inactive_warning(cfg, self.total_steps), sw if self.needs.gram else None):
            if warning and self.is_owner:
                logger.warning(warning)
        if cfg.schedule_path:  # a replay starts exactly where the recorded run started
            self.initial_weights = load_schedule(cfg.schedule_path, cfg.domain_names).weights_at(0)
        self.weights = self.initial_weights.copy()
        self.data = StepData(cfg.sampling, cfg.seed, layout.dp_size, grad_accum, micro_batch, dataset_sizes)
        tokens_per_sample = (
            np.asarray(token_counts, dtype=np.float64) / self.cursors.sizes
            if token_counts is not None and self.cursors is not None
            else None
        )
        self.step = self.skipped_steps = 0
        self.timings = {"capture": 0.0, "reduce_gram": 0.0, "mixer": 0.0}
        model_device = next(model.parameters()).device if model is not None else torch.device("cpu")
        self.probe = build_probe(cfg, self.needs, layout, model, model_device, self.is_owner, micro_batch, batch_dim)
        self.norms = build_norms(cfg, self.needs, layout, model)
        self.owner: OwnerUpdate | None = None
        if self.is_owner:
            dev = agent_device or (model_device if cfg.agent.device == "auto" else cfg.agent.device)
            num_norm_layers = self.norms.num_layers if self.norms is not None else 0
            mixer = build_mixer(cfg, self.initial_weights, num_norm_layers, self.total_steps, dev)
            self.owner = OwnerUpdate(OwnerSettings.of(cfg), mixer, tokens_per_sample)
        self._loss_sum = torch.zeros(self.k, dtype=torch.float32, device=layout.comm_device)
        self._loss_cnt = torch.zeros(self.k, dtype=torch.float32, device=layout.comm_device)
        self._begin_step()

    @property
    def mixer(self) -> Mixer | None:
        """The mixer (on the owner; None on the other ranks)."""
        return self.owner.mixer if self.owner is not None else None

    # -- data plan --------------------------------------------------------------------------
    @property
    def cursors(self) -> DomainCursors | None:
        """Per-domain stream positions (None on ranks built without dataset_sizes)."""
        return self.data.cursors

    def _begin_step(self) -> None:
        """Plan the current step (a pure function of seed, step and weights) and hand this
        rank's micro-batch (or sample) domains to the probe; the cursors move when samples are drawn."""
        self._plan = self.data.begin(self.step, self.weights)
        if self.probe is not None:
            self.probe.begin_step(self.data.rank_domains(self.layout.dp_rank))

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
        return self.data.starts is not None or bool(self._loss_cnt.any())

    def micro_batches(self, dp_rank: int | None = None) -> list[tuple]:
        """(domain, [micro_batch] sample indices into that domain) for each of this rank's
        micro-batches of the current step; at ``sampling.granularity: sample``, ([b] domains,
        [b] indices). The first call of a step advances the cursors."""
        if self.cursors is None:
            raise RuntimeError("micro_batches() needs dataset_sizes at construction")
        return self.data.micro_batches(self.layout.dp_rank if dp_rank is None else dp_rank)

    # -- per micro-batch --------------------------------------------------------------------
    def begin_microbatch(self, index: int, grad_scale: float | None = None):
        """Micro-batch ``index`` of this rank starts; returns its domain (a [b] array of the
        samples' domains at sample granularity). ``grad_scale`` multiplies the captured
        gradients (e.g. ``grad_accum / loss_scale``); None keeps the scale last set."""
        doms = self.data.rank_domains(self.layout.dp_rank)[index]
        if self.probe is not None and grad_scale is not None:
            self.probe.set_grad_scale(grad_scale)
        return doms if self.data.per_sample else int(doms)

    def set_grad_scale(self, grad_scale: float) -> None:
        """Scale applied to captured gradients (ranks that see no loss call this)."""
        if self.probe is not None:
            self.probe.set_grad_scale(grad_scale)

    def record_loss(self, domain, loss) -> None:
        """Add one micro-batch's mean loss of ``domain``, or at sample granularity each sample's
        mean loss: ``domain`` [b] domains, ``loss`` [b]. No host sync: it stays on device."""
        if isinstance(loss, torch.Tensor):
            loss = loss.detach().to(self._loss_sum.device, torch.float32)
        if np.ndim(domain) == 0:
            self._loss_sum[int(domain)] += loss
            self._loss_cnt[int(domain)] += 1
            return
        idx = torch.as_tensor(np.asarray(domain, dtype=np.int64), device=self._loss_sum.device)
        self._loss_sum.index_add_(0, idx, torch.as_tensor(loss, dtype=torch.float32, device=idx.device).reshape(-1))
        self._loss_cnt.index_add_(0, idx, torch.ones(idx.numel(), device=idx.device))

    # -- step boundary ----------------------------------------------------------------------
    def end_step(self, skipped: bool = False) -> dict[str, float]:
        """Reduce the step's statistics, update the mixer on the owner, broadcast the next
        weights. Collective: every rank of the layout's groups must call it.

        ``skipped``: the framework did not apply this step (fp16 loss-scale overflow); no mixer
        learns from it and the weights stay, whatever the mixer."""
        plan, lay, to = self._plan, self.layout, self.timeout
        self.data.draw()
        what = f"step {self.step} loss all-reduce"
        stats_t = all_reduce_sum(torch.stack([self._loss_sum, self._loss_cnt]), lay.dp_group, to, what)
        stats_t = sum_over(stats_t, lay.pipe_group, to, what).cpu()  # losses live on the last stage
        cnt = stats_t[1].double()
        loss = torch.where(cnt > 0, stats_t[0].double() / cnt.clamp_min(1), float("nan")).numpy()
        gram = lagged = None
        if self.needs.gram:
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
                result = self.owner.update(self._step_inputs(plan, loss, gram, lagged, norms, upd, skipped))
                new, metrics = result.weights, result.metrics
                self.skipped_steps += int(result.skipped)
            except Exception as e:  # noqa: BLE001 - re-raised below, after telling every rank
                logger.error("acodm: the mixer update failed at step %d: %s: %s", self.step, type(e).__name__, e)
                error = e
            self.timings["mixer"] += time.perf_counter() - t0
        self.weights = broadcast_weights(
            new, self.k, lay.group, lay.comm_device, to, f"step {self.step} weight broadcast", failed=error is not None
        )
        if error is not None:
            raise error
        self.step += 1
        self._loss_sum.zero_()
        self._loss_cnt.zero_()
        self._begin_step()
        return metrics

    def _step_inputs(self, plan, loss, gram, lagged, norms, upd, skipped) -> StepInputs:
        cur = self.cursors
        return StepInputs(
            step=self.step,
            weights=self.weights,
            plan=plan,
            loss=loss,
            gram=gram,
            lagged=lagged,
            norms=norms,
            update_norms=upd,
            skipped=skipped,
            reward_seconds=sum(self.timings.values()),
            positions=cur.positions if cur is not None else None,
            sizes=cur.sizes if cur is not None else None,
            samples_per_step=self.layout.dp_size * self.grad_accum * self.micro_batch,
            steps_left=self.total_steps - self.step - 1,
        )

    # -- persistence (see persist.py: collective, verified, transactional) -------------------
    def _header(self) -> persist.Header:
        return persist.Header(tuple(self.cfg.domain_names), self.cfg.mixer)

    def _parts(self) -> persist.Parts:
        return persist.Parts(cursors=self.cursors, mixer=self.mixer, norms=self.norms, probe=self.probe)

    def state_dict(self) -> dict:
        """Full state (mixer part only on the owner). Call between steps."""
        if self.in_step:
            raise RuntimeError("acodm state saved in the middle of a step; save after end_step()")
        return persist.state_dict(self._header(), self.step, self.weights, self.skipped_steps, self._parts())

    def save(self, path: str) -> None:
        """Owner writes ``path`` atomically; collective: a failure raises on every rank."""
        persist.save(self.state_dict, path, self.layout, self.timeout, self.is_owner, after=self.export_policy)

    def load(self, path: str) -> None:
        """Collective: the owner reads and validates ``path``; nothing changes on any rank
        unless every rank could stage the state, and every rank raises the same error."""
        refused = RuntimeError(_MID_STEP_LOAD) if self.in_step else None
        staged = persist.load(path, self._header(), self._parts(), self.layout, self.timeout, self.is_owner, refused)
        self.step, self.skipped_steps = staged.step, staged.skipped_steps
        self.weights = staged.weights
        if staged.cursors is not None:
            self.data.cursors = staged.cursors
        if staged.mixer is not None:
            self.owner.mixer = staged.mixer
        if staged.norms is not None:
            self.norms.load_state_dict(staged.norms)
        if staged.probe is not None:
            self.probe.load_state_dict(staged.probe)
        self._begin_step()

    def export_policy(self) -> None:
        """Proxy source: write the actor to ``acodm.proxy.policy_path`` (owner only)."""
        if self.is_owner and self.cfg.proxy.role == "source" and self.mixer is not None:
            self.mixer.export_policy(self.cfg.proxy.policy_path)

    def close(self) -> None:
        if self.probe is not None:
            self.probe.remove()
