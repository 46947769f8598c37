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
  statistics, updates the agent on rank 0 and broadcasts the weights. The bookkeeping shared
  with the Megatron adapter lives in :class:`~neox_acodm.session.MixingSession`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import default_collate

from ..config import ACODMConfig
from ..dist import ParallelLayout
from ..metrics import MetricsSink
from ..plan_iterator import PlanIterator
from ..runtime import MixingRuntime
from ..session import MixingSession

logger = logging.getLogger(__name__)


def _loss_scale(engine) -> float:
    opt = getattr(engine, "optimizer", None)
    scale = getattr(opt, "cur_scale", None) or getattr(opt, "loss_scale", None)
    try:
        return float(scale) if scale else 1.0
    except (TypeError, ValueError):
        return 1.0


def neox_layout(mpu) -> ParallelLayout:
    """The layout of this rank from GPT-NeoX's ``megatron.mpu`` (owner: global rank 0)."""
    tp, pp = mpu.get_model_parallel_world_size(), mpu.get_pipe_parallel_world_size()
    comm = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"
    return ParallelLayout(
        dp_size=mpu.get_data_parallel_world_size(),
        dp_rank=mpu.get_data_parallel_rank(),
        dp_group=mpu.get_data_parallel_group(),
        partial_sum_group=mpu.get_model_parallel_group() if tp > 1 else None,
        pipe_group=mpu.get_pipe_parallel_group() if pp > 1 else None,
        comm_device=comm,
    )


class DeepSpeedMixingSession(MixingSession):
    """Per-process glue between a DeepSpeed engine and the mixing runtime."""

    def __init__(
        self,
        cfg: ACODMConfig,
        engine,
        *,
        datasets: Sequence | None,
        layout: ParallelLayout,
        grad_accum: int,
        micro_batch: int,
        total_steps: int,
        collate: Callable[[list], dict] = default_collate,
        sink: MetricsSink | None = None,
        token_losses: list | None = None,
    ):
        super().__init__(cfg, grad_scale=self._grad_scale, sink=sink)
        self.engine = engine
        self.datasets = list(datasets) if datasets is not None else None
        self.collate = collate
        self.token_losses = token_losses if token_losses is not None else []
        module = getattr(engine, "module", engine)
        # every stage scales its captured gradients the same way from the first step on
        self.attach(
            MixingRuntime(
                cfg,
                layout=layout,
                dataset_sizes=[len(d) for d in self.datasets] if self.datasets is not None else None,
                grad_accum=grad_accum,
                micro_batch=micro_batch,
                total_steps=total_steps,
                model=module,
                batch_dim=1,  # NeoX's transformer layers run on [s, b, h]
            )
        )

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

        def fetch(d, idx):  # d: the micro-batch's domain, or [b] domains at sample granularity
            doms = np.broadcast_to(np.asarray(d), np.shape(idx))
            return collate([datasets[int(di)][int(i)] for di, i in zip(doms, idx)])

        return PlanIterator(self.rt, fetch)

    def sample_losses(self, labels) -> torch.Tensor | None:
        """[b] mean loss of each sample of the micro-batch whose loss was just computed (sample
        granularity only): the kept per-token losses [b, s] averaged under NeoX's loss mask
        (``labels`` = the loss function's ``(labels, loss_mask)``)."""
        if not self.rt.data.per_sample:
            return None
        if not self.token_losses or not isinstance(labels, (tuple, list)) or len(labels) < 2:
            raise RuntimeError(
                "acodm: sampling.granularity 'sample' needs each sample's loss: the loss function's "
                "per-token losses were not seen (is megatron.mpu.vocab_parallel_cross_entropy patched?)"
            )
        tok, mask = self.token_losses[0], labels[1]
        tok = tok.reshape(mask.shape[0], -1).float()
        mask = mask.reshape(mask.shape[0], -1).to(tok.dtype)
        return (tok * mask).sum(1) / mask.sum(1).clamp_min(1)

    # -- loss ---------------------------------------------------------------------------------
    def wrap_loss(self, loss_fn: Callable) -> Callable:
        """Wrap a loss function ``(outputs, labels, ...) -> scalar``; behaviour is unchanged."""

        def acodm_loss(*args, **kwargs):
            loss = loss_fn(*args, **kwargs)
            if torch.is_grad_enabled():  # evaluation runs under no_grad and is not counted
                self.observe_loss(loss, self.sample_losses(args[1] if len(args) > 1 else kwargs.get("labels")))
            return loss

        acodm_loss.__wrapped__ = loss_fn
        return acodm_loss

    # -- step boundary ------------------------------------------------------------------------
    def end_step(self, skipped: bool | None = None) -> dict[str, float]:
        """Close the step. ``skipped``: the optimizer did not apply the step (fp16 overflow);
        None = ask the engine (``was_step_applied``)."""
        if skipped is None:
            applied = getattr(self.engine, "was_step_applied", None)
            skipped = callable(applied) and not applied()
        return super().end_step(skipped=bool(skipped))
