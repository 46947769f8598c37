"""Seams 2-5: GPT-NeoX's training loop (``megatron.training``) and checkpointing.

The only function wrapped at import time is ``megatron.training.pretrain``, the *gate*. When
``neox_args.acodm`` is None, it calls the original and nothing else is patched. When the
block is set, it applies the patches below for the duration of ``pretrain`` and removes them
afterwards:

* ``megatron.training.build_train_valid_test_data_loaders``: each domain's ``GPT2Dataset``
  is sized for the largest weight it may reach (``N * sampling.max_weight``), not for its
  initial weight. The datasets are kept for the plan-driven iterator.
* ``megatron.training.setup_model_and_optimizer``: builds the
  :class:`~neox_acodm.neox.session.DeepSpeedMixingSession` with NeoX's process groups, wraps
  the loss (the pipe engine's ``loss_fn``), and restores the mixer state on resume.
* ``megatron.training.cross_entropy``: the loss on the non-pipe path.
* ``megatron.training.shift_and_wrap_data_loaders``: the train iterator becomes the session's
  plan iterator. Validation and test are unchanged.
* ``megatron.training.train_step``: closes the step (reduce, rank-0 update, broadcast) and
  logs ``acodm/*`` through NeoX's TensorBoard/W&B writer.
* ``megatron.training.evaluate_and_print_results`` and ``forward_step``: per-domain
  validation (see :mod:`.neox_eval`).
* ``megatron.checkpointing.save_ds_checkpoint``: writes ``<save>/global_stepN/acodm/state.pt``
  next to the DeepSpeed checkpoint, before NeoX's barrier, upload and rotation.
"""

import logging
import os

from ._registry import NEOX_VERIFIED, Patch
from .neox_dist import INIT_PARAMS, register_clean_exit, wrap_init_distributed
from .neox_eval import EVAL_PARAMS, FORWARD_PARAMS, DomainEvaluation, eval_output_pair, wrap_forward_step

__all__ = ["GATE", "NeoXIntegration", "apply", "eval_output_pair", "state_path"]

logger = logging.getLogger("neox_acodm.patches.neox_training")  # under the neox_acodm logger

TARGET = "megatron.training"
VERIFIED = NEOX_VERIFIED


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


def state_path(root: str, iteration: int) -> str:
    return os.path.join(root, f"global_step{iteration}", "acodm", "state.pt")


class NeoXIntegration:
    """State of one ``pretrain`` call with an ``acodm`` block (held by closure, no globals)."""

    def __init__(self, neox_args):
        from neox_acodm.config import parse_config

        from .neox_args import reconcile

        _ensure_log_handler()
        self.neox_args = neox_args
        cfg = reconcile(parse_config(neox_args.acodm), neox_args)
        self.cfg = cfg
        self.datasets = None
        self.evaluation = DomainEvaluation(self)
        self.session = None
        self.patches: list[Patch] = []

    # -- patches ------------------------------------------------------------------------------
    def build_patches(self) -> list[Patch]:
        return [
            Patch("deepspeed:init_distributed", wrap_init_distributed(self.cfg.collective_timeout_s),
                  params=INIT_PARAMS),
            Patch("megatron.training:build_train_valid_test_data_loaders", self._wrap_build_loaders, params=("neox_args",)),
            Patch("megatron.training:setup_model_and_optimizer", self._wrap_setup, params=("neox_args",)),
            Patch("megatron.training:cross_entropy", self._wrap_cross_entropy, params=("output", "labels")),
            Patch("megatron.training:shift_and_wrap_data_loaders", self._wrap_shift,
                  params=("neox_args", "data_loaders")),
            Patch("megatron.training:train_step", self._wrap_train_step, params=("neox_args",)),
            Patch("megatron.training:forward_step", wrap_forward_step, params=FORWARD_PARAMS),
            Patch("megatron.training:evaluate_and_print_results", self.evaluation.wrap, params=EVAL_PARAMS),
            Patch("megatron.checkpointing:save_ds_checkpoint", self._wrap_save,
                  params=("iteration", "model", "neox_args")),
        ]

    def _wrap_build_loaders(self, original):
        import megatron.data.data_utils as data_utils

        from neox_acodm.plan import samples_per_domain

        integ = self

        def build_train_valid_test_data_loaders(neox_args):
            train_weights = neox_args.train_data_weights
            sizing = data_utils.get_normalized_weights_and_num_samples
            cap = integ.cfg.sampling.max_weight

            def sized_for_max_weight(weights, num_samples):
                norm, nums = sizing(weights, num_samples)
                if weights is train_weights and num_samples is not None:
                    nums = [samples_per_domain(num_samples, cap) for _ in norm]
                return norm, nums

            data_utils.get_normalized_weights_and_num_samples = sized_for_max_weight
            try:
                loaders = original(neox_args=neox_args)
            finally:
                data_utils.get_normalized_weights_and_num_samples = sizing
            train = loaders[0] if isinstance(loaders, tuple) else loaders.get("train")
            valid = loaders[1] if isinstance(loaders, tuple) else loaders.get("valid")
            if train is not None:
                integ.datasets = list(train.dataset.datasets)
            if valid is not None and len(getattr(valid.dataset, "datasets", [])) == integ.cfg.num_domains:
                integ.evaluation.datasets = list(valid.dataset.datasets)
            return loaders

        return build_train_valid_test_data_loaders

    def _wrap_setup(self, original):
        integ = self

        def setup_model_and_optimizer(neox_args, *args, **kwargs):
            out = original(neox_args, *args, **kwargs)
            integ._start_session(out[0])
            return out

        return setup_model_and_optimizer

    def _start_session(self, model) -> None:
        import torch
        from megatron import mpu

        from neox_acodm.metrics import MetricsSink
        from neox_acodm.neox.session import DeepSpeedMixingSession, neox_layout

        na = self.neox_args
        self.session = DeepSpeedMixingSession(
            self.cfg, model, datasets=self.datasets, layout=neox_layout(mpu),
            grad_accum=na.gradient_accumulation_steps, micro_batch=na.train_micro_batch_size_per_gpu,
            total_steps=self.cfg.total_steps,
            sink=MetricsSink(lambda: self._writer(na), self.cfg.log_interval, route="owner",
                             is_owner=torch.distributed.get_rank() == 0))
        if na.is_pipe_parallel:
            model.module.loss_fn = self.session.wrap_loss(model.module.loss_fn)
        if na.load and na.iteration:
            self.session.resume(state_path(na.load, na.iteration), na.iteration,
                                "was the checkpoint written with this acodm block?")
        if torch.distributed.get_rank() == 0:
            logger.info("acodm: active (%s, %d domains, dp=%d, grad_accum=%d)", self.cfg.mixer,
                        self.cfg.num_domains, mpu.get_data_parallel_world_size(), na.gradient_accumulation_steps)

    def _wrap_cross_entropy(self, original):
        integ = self

        def cross_entropy(*args, **kwargs):
            loss = original(*args, **kwargs)
            import torch

            if integ.session is not None and torch.is_grad_enabled():
                integ.session.observe_loss(loss)
            return loss

        return cross_entropy

    def _wrap_shift(self, original):
        integ = self

        def shift_and_wrap_data_loaders(neox_args, data_loaders, *args, **kwargs):
            train_loader = data_loaders["train"]
            data_loaders = dict(data_loaders, train=None)
            _, valid_it, test_it = original(neox_args, data_loaders, *args, **kwargs)
            train_it = integ.session.train_iterator() if train_loader is not None else None
            return train_it, valid_it, test_it

        return shift_and_wrap_data_loaders

    def _wrap_train_step(self, original):
        integ = self

        def train_step(neox_args, *args, **kwargs):
            out = original(neox_args, *args, **kwargs)
            # NeoX's train_step returns (loss_dict, skipped_iter); otherwise ask the engine
            reported = isinstance(out, tuple) and len(out) > 1 and isinstance(out[1], (bool, int)) and bool(out[1])
            integ.session.end_step(skipped=True if reported else None)  # logs through its sink
            return out

        return train_step

    @staticmethod
    def _writer(neox_args):
        """NeoX's logger (TensorBoard / W&B / Comet) as ``write(tag, value, step)``."""
        from megatron.logging import tb_wandb_log

        def write(tag: str, value: float, step: int) -> None:
            tb_wandb_log(tag, value, step, use_wandb=neox_args.use_wandb,
                         tensorboard_writer=neox_args.tensorboard_writer,
                         comet_experiment=getattr(neox_args, "comet_experiment", None))

        return write

    def _wrap_save(self, original):
        integ = self

        def save_ds_checkpoint(iteration, model, neox_args):
            original(iteration, model, neox_args)
            if integ.session is not None:
                integ.session.rt.save(state_path(neox_args.save, iteration))

        return save_ds_checkpoint


def _wrap_pretrain(original):
    def pretrain(neox_args, *args, **kwargs):
        if getattr(neox_args, "acodm", None) is None:
            return original(neox_args, *args, **kwargs)
        integ = NeoXIntegration(neox_args)
        register_clean_exit()
        integ.patches = integ.build_patches()
        for p in integ.patches:
            p.apply()
        try:
            return original(neox_args, *args, **kwargs)
        finally:
            for p in reversed(integ.patches):
                p.remove()
            if integ.session is not None:
                integ.session.rt.export_policy()
                integ.session.rt.close()

    return pretrain


GATE = Patch("megatron.training:pretrain", _wrap_pretrain, params=("neox_args",))


def apply(training_module) -> None:
    """Post-import callback for ``megatron.training``: install the gate."""
    GATE.apply()
