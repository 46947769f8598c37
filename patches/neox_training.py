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
* ``megatron.training.evaluate_and_print_results``: after NeoX's blended validation, the
  per-domain validation perplexity through NeoX's own ``evaluate``, when ``valid_data_paths``
  match the domains one-to-one (``acodm/val_ppl/<domain>``).
* ``megatron.checkpointing.save_ds_checkpoint``: writes ``<save>/global_stepN/acodm/state.pt``
  next to the DeepSpeed checkpoint, before NeoX's barrier, upload and rotation.
"""

import logging
import os

from ._registry import NEOX_VERIFIED, Patch

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


#: the evaluate_and_print_results arguments the per-domain evaluation binds by name
EVAL_PARAMS = ("neox_args", "prefix", "forward_step_func", "data_iterator", "model", "iteration",
               "verbose", "timers", "chart_name", "reference_model")


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
        self.valid_datasets = None
        valid_paths = list(getattr(neox_args, "valid_data_paths", None) or [])
        # per-domain validation needs one valid path per domain, in domain order
        self.per_domain_eval = len(valid_paths) == cfg.num_domains and all(
            d.valid_path is None or os.path.normpath(d.valid_path) == os.path.normpath(p)
            for d, p in zip(cfg.domains, valid_paths))
        if valid_paths and not self.per_domain_eval:
            logger.warning("acodm: valid_data_paths do not match acodm.domains one-to-one; per-domain "
                           "validation perplexity is off")
        self.session = None
        self.patches: list[Patch] = []

    # -- patches ------------------------------------------------------------------------------
    def build_patches(self) -> list[Patch]:
        return [
            Patch("megatron.training:build_train_valid_test_data_loaders", self._wrap_build_loaders, params=("neox_args",)),
            Patch("megatron.training:setup_model_and_optimizer", self._wrap_setup, params=("neox_args",)),
            Patch("megatron.training:cross_entropy", self._wrap_cross_entropy, params=("output", "labels")),
            Patch("megatron.training:shift_and_wrap_data_loaders", self._wrap_shift,
                  params=("neox_args", "data_loaders")),
            Patch("megatron.training:train_step", self._wrap_train_step, params=("neox_args",)),
            Patch("megatron.training:forward_step", _wrap_forward_step,
                  params=("data_iterator", "model", "neox_args", "timers", "return_logits")),
            Patch("megatron.training:evaluate_and_print_results", self._wrap_eval,
                  params=EVAL_PARAMS),
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
                integ.valid_datasets = list(valid.dataset.datasets)
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
        from neox_acodm.neox.session import DeepSpeedMixingSession

        na = self.neox_args
        comm = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"
        tp_group = mpu.get_model_parallel_group() if mpu.get_model_parallel_world_size() > 1 else None
        pp_group = mpu.get_pipe_parallel_group() if mpu.get_pipe_parallel_world_size() > 1 else None
        self.session = DeepSpeedMixingSession(
            self.cfg, model, datasets=self.datasets, dp_size=mpu.get_data_parallel_world_size(),
            dp_rank=mpu.get_data_parallel_rank(), grad_accum=na.gradient_accumulation_steps,
            micro_batch=na.train_micro_batch_size_per_gpu, total_steps=self.cfg.total_steps,
            dp_group=mpu.get_data_parallel_group(), group=None, partial_sum_group=tp_group,
            pipe_group=pp_group, comm_device=comm,
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

    def _wrap_eval(self, original):
        import inspect

        integ = self
        sig = inspect.signature(original)

        def evaluate_and_print_results(*args, **kwargs):
            out = original(*args, **kwargs)
            a = sig.bind(*args, **kwargs)
            a.apply_defaults()
            a = a.arguments
            if a["chart_name"] == "validation" and integ.per_domain_eval and a["neox_args"].eval_iters > 0:
                integ._evaluate_domains(a["neox_args"], a["forward_step_func"], a["model"], a["iteration"],
                                        a["timers"], a["reference_model"])
            return out

        return evaluate_and_print_results

    def _evaluate_domains(self, neox_args, forward_step_func, model, iteration, timers, reference_model) -> None:
        """Per-domain validation perplexity with NeoX's own ``evaluate`` (every rank calls it),
        on fixed windows of each domain's validation dataset; logged as acodm/val_ppl/<domain>."""
        import megatron.training as training
        import numpy as np
        import torch
        from megatron import mpu, print_rank_0
        from megatron.logging import tb_wandb_log
        from torch.utils.data import default_collate

        mb = neox_args.train_micro_batch_size_per_gpu
        dp, r = mpu.get_data_parallel_world_size(), mpu.get_data_parallel_rank()

        def windows(ds):
            b = 0
            while True:
                idx = ((b * dp + r) * mb + np.arange(mb)) % len(ds)
                yield default_collate([ds[int(i)] for i in idx])
                b += 1

        ppl = {}
        for i, name in enumerate(self.cfg.domain_names):
            it = windows(self.valid_datasets[i]) if self.valid_datasets is not None else None
            res = training.evaluate(neox_args=neox_args, forward_step_fn=forward_step_func, data_iterator=it,
                                    model=model, verbose=False, timers=timers, reference_model=reference_model)
            ppl[name] = res["lm_loss_ppl"]
        ppl["avg"] = float(np.mean(list(ppl.values())))
        if torch.distributed.get_rank() == 0:
            for name, v in ppl.items():
                tb_wandb_log(f"acodm/val_ppl/{name}", v, iteration, use_wandb=neox_args.use_wandb,
                             tensorboard_writer=neox_args.tensorboard_writer,
                             comet_experiment=getattr(neox_args, "comet_experiment", None))
        print_rank_0(" acodm per-domain validation ppl at iteration {} | {}".format(
            iteration, " | ".join(f"{k}: {v:.3f}" for k, v in ppl.items())))

    def _wrap_save(self, original):
        integ = self

        def save_ds_checkpoint(iteration, model, neox_args):
            original(iteration, model, neox_args)
            if integ.session is not None:
                integ.session.rt.save(state_path(neox_args.save, iteration))

        return save_ds_checkpoint


def eval_output_pair(out, return_logits: bool):
    """NeoX's ``evaluate`` unpacks ``loss, metric_dict = forward_step(...)``. On the pipe path
    that is ``PipelineEngine.eval_batch``: DeeperSpeed returns a pair, PyPI DeepSpeed a bare
    loss tensor. Both become ``(loss, metrics)``; a ``return_logits`` call is left as it is."""
    if return_logits or isinstance(out, (tuple, list)):
        return out
    return out, {}


def _wrap_forward_step(original):
    def forward_step(*args, **kwargs):
        out = original(*args, **kwargs)
        neox_args = kwargs.get("neox_args", args[2] if len(args) > 2 else None)
        if getattr(neox_args, "is_pipe_parallel", False):
            return eval_output_pair(out, bool(kwargs.get("return_logits", args[4] if len(args) > 4 else False)))
        return out

    return forward_step


def _wrap_pretrain(original):
    def pretrain(neox_args, *args, **kwargs):
        if getattr(neox_args, "acodm", None) is None:
            return original(neox_args, *args, **kwargs)
        integ = NeoXIntegration(neox_args)
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
