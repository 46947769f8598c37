"""Seams 2-5: GPT-NeoX's training loop (``megatron.training``) and checkpointing.

The only function wrapped at import time is ``megatron.training.pretrain``, the *gate* (applied
by :func:`neox_acodm.neox.activate`'s post-import hook). When ``neox_args.acodm`` is None, it
calls the original and nothing else is patched. When the block is set, it builds the adapter's
integration (:class:`neox_acodm.neox.integration.NeoXIntegration`, passed in: this module
imports nothing of the adapter), applies the patches below for the duration of ``pretrain`` and
removes them afterwards. Every wrapper calls one method of that integration:

* ``megatron.training.build_train_valid_test_data_loaders``: each domain's ``GPT2Dataset``
  is built for one epoch of its own data, whatever the run length (1 sample requested through a
  patch of ``megatron.data.data_utils.get_normalized_weights_and_num_samples`` for the call;
  NeoX's index builder rounds up to whole epochs). The plugin's cursors walk it epoch after
  epoch. The train ``BlendableDataset`` becomes :class:`DomainDatasets` (no blend index, which
  would cost 9 bytes per sample on every rank). The datasets are kept for the plan-driven
  iterator.
* ``megatron.training.setup_model_and_optimizer``: builds the
  :class:`~neox_acodm.neox.session.DeepSpeedMixingSession` with NeoX's process groups, wraps
  the loss (the pipe engine's ``loss_fn``, :func:`pipe_loss_patch`), and restores the mixer
  state on resume.
* ``megatron.training.cross_entropy``: the loss on the non-pipe path.
* ``megatron.mpu.vocab_parallel_cross_entropy`` (``sampling.granularity: sample`` only): keeps
  the per-token losses of the call, from which each sample's loss is read (no recomputation).
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

from .neox_dist import INIT_PARAMS, register_clean_exit, wrap_init_distributed
from .neox_eval import EVAL_PARAMS, FORWARD_PARAMS, eval_output_pair, wrap_forward_step
from .registry import NEOX_VERIFIED, Patch

__all__ = ["TARGET", "DomainDatasets", "eval_output_pair", "gate", "neox_patches", "pipe_loss_patch"]

logger = logging.getLogger("neox_acodm.patches.neox_training")  # under the neox_acodm logger

TARGET = "megatron.training"
VERIFIED = NEOX_VERIFIED


class DomainDatasets:
    """What stands for NeoX's train ``BlendableDataset`` under the plugin: the per-domain
    datasets, with no blend index (NeoX's costs 9 bytes per sample on every rank; the plan
    iterator reads the domains directly). Indexing it is an error: nothing should."""

    def __init__(self, datasets):
        self.datasets = list(datasets)

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets)

    def __getitem__(self, idx):
        raise RuntimeError(
            "acodm: the train data are read through the mixing plan (per-domain datasets), "
            "not through the blended dataset's index"
        )


def _wrap_build_loaders(integ):
    def make(original):
        def build_train_valid_test_data_loaders(neox_args):
            train_weights, train_norm = neox_args.train_data_weights, []

            def one_epoch_each(sizing):
                def get_normalized_weights_and_num_samples(weights, num_samples):
                    norm, nums = sizing(weights, num_samples)
                    if weights is train_weights and num_samples is not None:
                        nums = [1 for _ in norm]  # the index builder makes it one whole epoch
                        train_norm.append(norm)
                    return norm, nums

                return get_normalized_weights_and_num_samples

            def no_blend_index(blendable):
                def BlendableDataset(datasets, weights):  # noqa: N802 - stands for NeoX's class
                    if any(weights is w for w in train_norm):
                        return DomainDatasets(datasets)
                    return blendable(datasets, weights)

                return BlendableDataset

            for_the_call = [
                Patch(
                    "megatron.data.data_utils:get_normalized_weights_and_num_samples",
                    one_epoch_each,
                    params=("weights", "num_samples"),
                ),
                Patch("megatron.data.data_utils:BlendableDataset", no_blend_index, params=("datasets", "weights")),
            ]
            for p in for_the_call:
                p.apply()
            try:
                loaders = original(neox_args=neox_args)
            finally:
                for p in for_the_call:
                    p.remove()
            train = loaders[0] if isinstance(loaders, tuple) else loaders.get("train")
            valid = loaders[1] if isinstance(loaders, tuple) else loaders.get("valid")
            integ.on_loaders(train, valid)
            return loaders

        return build_train_valid_test_data_loaders

    return make


def _wrap_setup(integ):
    def make(original):
        def setup_model_and_optimizer(neox_args, *args, **kwargs):
            out = original(neox_args, *args, **kwargs)
            integ.start_session(out[0])
            return out

        return setup_model_and_optimizer

    return make


def _wrap_cross_entropy(integ):
    def make(original):
        def cross_entropy(*args, **kwargs):
            loss = original(*args, **kwargs)
            import torch

            if torch.is_grad_enabled():
                integ.observe_loss(loss, args[1] if len(args) > 1 else kwargs.get("labels"))
            return loss

        return cross_entropy

    return make


def _keep_token_losses(holder: list):
    """``megatron.mpu.vocab_parallel_cross_entropy``: keep the last call's per-token losses
    [b, s] (detached) in ``holder[0]``, for per-sample losses at sample granularity."""

    def make(original):
        def vocab_parallel_cross_entropy(vocab_parallel_logits, target):
            losses = original(vocab_parallel_logits, target)
            holder[:] = [losses.detach()]
            return losses

        return vocab_parallel_cross_entropy

    return make


def _wrap_shift(integ):
    def make(original):
        def shift_and_wrap_data_loaders(neox_args, data_loaders, *args, **kwargs):
            train_loader = data_loaders["train"]
            data_loaders = dict(data_loaders, train=None)
            _, valid_it, test_it = original(neox_args, data_loaders, *args, **kwargs)
            train_it = integ.train_iterator() if train_loader is not None else None
            return train_it, valid_it, test_it

        return shift_and_wrap_data_loaders

    return make


def _wrap_train_step(integ):
    def make(original):
        def train_step(neox_args, *args, **kwargs):
            out = original(neox_args, *args, **kwargs)
            # NeoX's train_step returns (loss_dict, skipped_iter); otherwise ask the engine
            reported = isinstance(out, tuple) and len(out) > 1 and isinstance(out[1], (bool, int)) and bool(out[1])
            integ.end_step(True if reported else None)
            return out

        return train_step

    return make


def _wrap_save(integ):
    def make(original):
        def save_ds_checkpoint(iteration, model, neox_args):
            original(iteration, model, neox_args)
            integ.save(neox_args, iteration)

        return save_ds_checkpoint

    return make


def neox_patches(integ) -> list[Patch]:
    """The wrappers applied for one ``pretrain`` call with an ``acodm:`` block."""
    return [
        Patch("deepspeed:init_distributed", wrap_init_distributed(integ.cfg.collective_timeout_s), params=INIT_PARAMS),
        Patch(
            "megatron.training:build_train_valid_test_data_loaders", _wrap_build_loaders(integ), params=("neox_args",)
        ),
        Patch("megatron.training:setup_model_and_optimizer", _wrap_setup(integ), params=("neox_args",)),
        Patch("megatron.training:cross_entropy", _wrap_cross_entropy(integ), params=("output", "labels")),
        Patch(
            "megatron.training:shift_and_wrap_data_loaders", _wrap_shift(integ), params=("neox_args", "data_loaders")
        ),
        Patch("megatron.training:train_step", _wrap_train_step(integ), params=("neox_args",)),
        Patch("megatron.training:forward_step", wrap_forward_step, params=FORWARD_PARAMS),
        Patch("megatron.training:evaluate_and_print_results", integ.evaluation.wrap, params=EVAL_PARAMS),
        Patch(
            "megatron.checkpointing:save_ds_checkpoint", _wrap_save(integ), params=("iteration", "model", "neox_args")
        ),
        *(
            [
                Patch(
                    "megatron.mpu:vocab_parallel_cross_entropy",
                    _keep_token_losses(integ.token_losses),
                    params=("vocab_parallel_logits", "target"),
                )
            ]
            if integ.cfg.sampling.granularity == "sample"
            else []
        ),
    ]


def pipe_loss_patch(pipe_module, wrap_loss) -> Patch:
    """The pipe engine's ``loss_fn`` (an attribute of NeoX's ``PipelineModule``) wrapped by the
    session's loss recorder ``wrap_loss(loss_fn)``."""
    return Patch("megatron.model.gpt2_model:GPT2ModelPipe.loss_fn", wrap_loss, owner=pipe_module)


_GATES: dict = {}


def gate(make_integration) -> Patch:
    """The ``megatron.training:pretrain`` gate (one per integration class, so applying it again
    is a no-op). ``make_integration(neox_args)`` returns an object with ``build_patches()``,
    ``patches`` (a list) and ``finish()``."""
    if make_integration in _GATES:
        return _GATES[make_integration]

    def wrap_pretrain(original):
        def pretrain(neox_args, *args, **kwargs):
            if getattr(neox_args, "acodm", None) is None:
                return original(neox_args, *args, **kwargs)
            integ = make_integration(neox_args)
            register_clean_exit()
            integ.patches = integ.build_patches()
            for p in integ.patches:
                p.apply()
            try:
                return original(neox_args, *args, **kwargs)
            finally:
                for p in reversed(integ.patches):
                    p.remove()
                integ.finish()

        return pretrain

    _GATES[make_integration] = Patch(f"{TARGET}:pretrain", wrap_pretrain, params=("neox_args",))
    return _GATES[make_integration]
