"""NeoXIntegration: the state of one GPT-NeoX ``pretrain`` call with an ``acodm:`` block.

Built by the ``pretrain`` gate (:mod:`neox_acodm.patches.neox_training`), which applies the
wrappers of :func:`~neox_acodm.patches.neox_training.neox_patches` for the call and removes them
afterwards. The wrappers call the methods below; this module holds no wrapper of NeoX code.
"""

from __future__ import annotations

import logging
import os

from ..config import parse_config

__all__ = ["NeoXIntegration", "state_path"]

logger = logging.getLogger(__name__)


def state_path(root: str, iteration: int) -> str:
    """``<save>/global_step<N>/acodm/state.pt``, next to the DeepSpeed checkpoint."""
    return os.path.join(root, f"global_step{iteration}", "acodm", "state.pt")


def _ensure_log_handler() -> None:
    """Inside NeoX (which prints rather than logs) show neox_acodm's INFO lines on stdout like
    NeoX's own messages, unless the user already configured the ``neox_acodm`` logger."""
    import sys

    plugin = logging.getLogger("neox_acodm")
    if not plugin.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("[neox_acodm] %(message)s"))
        plugin.addHandler(handler)
        plugin.setLevel(logging.INFO)
        plugin.propagate = False


class NeoXIntegration:
    """State of one ``pretrain`` call with an ``acodm`` block (held by closure, no globals)."""

    def __init__(self, neox_args):
        from neox_acodm.patches.neox_args import reconcile
        from neox_acodm.patches.neox_eval import DomainEvaluation

        _ensure_log_handler()
        self.neox_args = neox_args
        self.cfg = reconcile(parse_config(neox_args.acodm), neox_args)
        self.datasets = None
        self.evaluation = DomainEvaluation(self)
        self.session = None
        self.patches: list = []
        #: the last loss call's per-token losses [b, s] (sample granularity; see the patch layer)
        self.token_losses: list = []

    def build_patches(self) -> list:
        from neox_acodm.patches.neox_training import neox_patches

        return neox_patches(self)

    # -- called by the wrappers ------------------------------------------------------------------
    def on_loaders(self, train, valid) -> None:
        """The built loaders: keep the per-domain datasets for the plan iterator and validation."""
        if train is not None:
            self.datasets = list(train.dataset.datasets)
        if valid is not None and len(getattr(valid.dataset, "datasets", [])) == self.cfg.num_domains:
            self.evaluation.datasets = list(valid.dataset.datasets)

    def start_session(self, model) -> None:
        """After NeoX built the model: the session, the pipe loss wrapper, the resumed state."""
        import torch
        from megatron import mpu

        from neox_acodm.metrics import MetricsSink
        from neox_acodm.patches.neox_training import pipe_loss_patch

        from .session import DeepSpeedMixingSession, neox_layout

        na = self.neox_args
        self.session = DeepSpeedMixingSession(
            self.cfg,
            model,
            datasets=self.datasets,
            token_losses=self.token_losses,
            layout=neox_layout(mpu),
            grad_accum=na.gradient_accumulation_steps,
            micro_batch=na.train_micro_batch_size_per_gpu,
            total_steps=self.cfg.total_steps,
            sink=MetricsSink(
                lambda: self._writer(na),
                self.cfg.log_interval,
                route="owner",
                is_owner=torch.distributed.get_rank() == 0,
            ),
        )
        if na.is_pipe_parallel:
            loss_patch = pipe_loss_patch(model.module, self.session.wrap_loss)
            loss_patch.apply()
            self.patches.append(loss_patch)
        if na.load and na.iteration:
            self.session.resume(
                state_path(na.load, na.iteration), na.iteration, "was the checkpoint written with this acodm block?"
            )
        if torch.distributed.get_rank() == 0:
            logger.info(
                "acodm: active (%s, %d domains, dp=%d, grad_accum=%d)",
                self.cfg.mixer,
                self.cfg.num_domains,
                mpu.get_data_parallel_world_size(),
                na.gradient_accumulation_steps,
            )

    def observe_loss(self, loss, labels=None) -> None:
        if self.session is not None:
            self.session.observe_loss(loss, self.session.sample_losses(labels))

    def train_iterator(self):
        return self.session.train_iterator()

    def end_step(self, skipped: bool | None) -> None:
        self.session.end_step(skipped=skipped)  # logs through its sink

    def save(self, neox_args, iteration: int) -> None:
        if self.session is not None:
            self.session.rt.save(state_path(neox_args.save, iteration))

    def finish(self) -> None:
        """After ``pretrain`` (also on failure): export the proxy policy, remove the hooks."""
        if self.session is not None:
            self.session.rt.export_policy()
            self.session.rt.close()

    @staticmethod
    def _writer(neox_args):
        """NeoX's logger (TensorBoard / W&B / Comet) as ``write(tag, value, step)``."""
        from megatron.logging import tb_wandb_log

        def write(tag: str, value: float, step: int) -> None:
            tb_wandb_log(
                tag,
                value,
                step,
                use_wandb=neox_args.use_wandb,
                tensorboard_writer=neox_args.tensorboard_writer,
                comet_experiment=getattr(neox_args, "comet_experiment", None),
            )

        return write


def install_gate() -> None:
    """Post-import callback for ``megatron.training``: the ``pretrain`` gate builds a
    :class:`NeoXIntegration` only when the YAML has an ``acodm:`` block."""
    from neox_acodm.patches.neox_training import gate

    gate(NeoXIntegration).apply()
