"""DeepSpeedMixingSession: connects a :class:`MixingRuntime` to a DeepSpeed engine.

It is what the GPT-NeoX patches call, and it works for any DeepSpeed engine (a plain engine
or a single-stage ``PipelineEngine``).

* **Training data.** :meth:`train_iterator` yields this DP rank's micro-batches in plan order.
  It reads the per-domain datasets in the main process with no DataLoader, so it never
  prefetches: weights act on the very next step and the saved cursors count exactly the
  consumed samples.
* **Micro-batch domains and losses.** The loss function is wrapped (:meth:`wrap_loss`). On
  every rank that computes the loss (the last pipeline stage, tensor-parallel ranks without
  a data loader included), each grad-enabled call is micro-batch ``g`` of the step, and the
  wrapper records the per-domain loss. Gradients are attributed by the probe itself: the
  n-th gradient of a selected weight is micro-batch n, on every stage, whatever the schedule.
* **Step boundary.** :meth:`end_step` runs after the engine's optimizer step. It reduces the
  statistics, updates the agent on rank 0 and broadcasts the weights.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from torch.utils.data import default_collate

from ..config import ACODMConfig
from ..runtime import MixingRuntime, PlanIterator

logger = logging.getLogger(__name__)


def _loss_scale(engine) -> float:
    opt = getattr(engine, "optimizer", None)
    scale = getattr(opt, "cur_scale", None) or getattr(opt, "loss_scale", None)
    try:
        return float(scale) if scale else 1.0
    except (TypeError, ValueError):
        return 1.0


class DeepSpeedMixingSession:
    """Per-process glue between a DeepSpeed engine and the mixing runtime."""

    def __init__(self, cfg: ACODMConfig, engine, *, datasets: Sequence | None, dp_size: int, dp_rank: int,
                 grad_accum: int, micro_batch: int, total_steps: int, dp_group=None, group=None,
                 partial_sum_group=None, pipe_group=None, comm_device: torch.device | str = "cpu",
                 collate: Callable[[list], dict] = default_collate):
        self.engine = engine
        self.datasets = list(datasets) if datasets is not None else None
        self.collate = collate
        module = getattr(engine, "module", engine)
        self.rt = MixingRuntime(
            cfg, dataset_sizes=[len(d) for d in self.datasets] if self.datasets is not None else None,
            dp_size=dp_size, dp_rank=dp_rank, grad_accum=grad_accum, micro_batch=micro_batch,
            total_steps=total_steps, model=module, group=group, dp_group=dp_group,
            partial_sum_group=partial_sum_group, pipe_group=pipe_group, comm_device=comm_device)
        self.micro = 0
        self.domains_seen: list[int] = []  # domains the loss saw this step (for checks/tests)
        # every stage scales its captured gradients the same way from the first step on
        self.rt.set_grad_scale(self._grad_scale())

    def _grad_scale(self) -> float:
        """``grad_accum / loss_scale``: undoes DeepSpeed's scaling of the hooked gradients."""
        ga = getattr(self.engine, "gradient_accumulation_steps", None)
        return (float(ga()) if callable(ga) else float(self.rt.grad_accum)) / _loss_scale(self.engine)

    # -- data ---------------------------------------------------------------------------------
    def train_iterator(self):
        """Endless iterator of collated micro-batches for this DP rank, in plan order."""
        if self.datasets is None:
            raise RuntimeError("this rank has no training datasets (not a data-loading rank)")
        datasets, collate = self.datasets, self.collate
        return PlanIterator(self.rt, lambda d, idx: collate([datasets[d][int(i)] for i in idx]))

    # -- loss ---------------------------------------------------------------------------------
    def wrap_loss(self, loss_fn: Callable) -> Callable:
        """Wrap a loss function ``(outputs, labels, ...) -> scalar``; behaviour is unchanged."""

        def acodm_loss(*args, **kwargs):
            loss = loss_fn(*args, **kwargs)
            if torch.is_grad_enabled():  # evaluation runs under no_grad and is not counted
                self.observe_loss(loss)
            return loss

        acodm_loss.__wrapped__ = loss_fn
        return acodm_loss

    def observe_loss(self, loss: torch.Tensor) -> None:
        """Micro-batch ``self.micro`` produced ``loss``; its backward comes next."""
        if self.micro >= self.rt.grad_accum:
            raise RuntimeError(f"acodm: more than gradient_accumulation_steps={self.rt.grad_accum} "
                               f"training losses in one step; was end_step() skipped?")
        d = self.rt.begin_microbatch(self.micro, grad_scale=self._grad_scale())
        self.rt.record_loss(d, loss)
        self.domains_seen.append(d)
        self.micro += 1

    # -- step boundary ------------------------------------------------------------------------
    def end_step(self, skipped: bool | None = None) -> dict[str, float]:
        """Close the step (collective over the runtime's groups). ``skipped``: the optimizer did
        not apply the step (fp16 overflow); None = ask the engine (``was_step_applied``)."""
        if self.micro not in (0, self.rt.grad_accum):
            raise RuntimeError(f"acodm: saw {self.micro} training losses in a step of "
                               f"{self.rt.grad_accum} micro-batches; the loss wrapper missed some")
        if skipped is None:
            applied = getattr(self.engine, "was_step_applied", None)
            skipped = callable(applied) and not applied()
        metrics = self.rt.end_step(skipped=bool(skipped))
        # ranks that compute no loss (earlier pipeline stages) follow loss-scale changes here
        self.rt.set_grad_scale(self._grad_scale())
        self.micro = 0
        self.domains_seen = []
        return metrics

