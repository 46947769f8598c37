"""Megatron-LM seams (``megatron.training.training`` and megatron-core's dataset helpers).

Every wrapper takes the adapter's session (duck-typed; see
:class:`neox_acodm.megatron.session.MegatronMixingSession`) and imports nothing of the adapter:

* ``setup_model_and_optimizer``: builds the session's runtime once Megatron built the model and
  loaded the checkpoint (``session.setup(model, optimizer)``);
* ``train_step``: closes the step after the optimizer (``session.end_step(skipped=...)``);
* ``save_checkpoint``: writes the mixer state next to the checkpoint (``session.save``);
* ``evaluate_and_print_results`` / ``evaluate``: per-domain validation, Megatron's multiple
  validation sets named after the domains (``session.validation``: begin/record/end/publish);
* ``megatron.core.datasets.utils:compile_helpers``: skipped when the prebuilt helpers import
  (the wheel ships them without the Makefile that ``initialize`` would run).
"""

import importlib
import logging

from .registry import MEGATRON_VERIFIED, Patch

__all__ = ["EVALUATE_PARAMS", "EVAL_PRINT_PARAMS", "compile_helpers_patch", "megatron_patches"]

logger = logging.getLogger("neox_acodm.patches.megatron_training")

TARGET = "megatron.training.training"
#: evaluate_and_print_results / evaluate leading parameters the wrappers rely on
EVAL_PRINT_PARAMS = ("prefix", "forward_step_func", "data_iterator", "model", "iteration")
EVALUATE_PARAMS = ("forward_step_func", "data_iterator", "model")


def _skip_prebuilt(original):
    def compile_helpers():
        try:
            importlib.import_module("megatron.core.datasets.helpers_cpp")
        except ImportError:
            return original()
        logger.info("acodm: megatron-core dataset helpers are prebuilt; skipping compile_helpers()")

    return compile_helpers


def compile_helpers_patch() -> Patch:
    """``compile_helpers`` (``make -C``) skipped when megatron-core's prebuilt helpers import."""
    return Patch("megatron.core.datasets.utils:compile_helpers", _skip_prebuilt, MEGATRON_VERIFIED)


def megatron_patches(session) -> list[Patch]:
    """The wrappers of Megatron-LM's training module globals for one session."""

    def wrap_setup(setup_orig):
        def setup_model_and_optimizer(*a, **kw):
            model, optimizer, scheduler = setup_orig(*a, **kw)
            session.setup(model, optimizer)
            return model, optimizer, scheduler

        return setup_model_and_optimizer

    def wrap_step(step_orig):
        def train_step(*a, **kw):
            result = step_orig(*a, **kw)
            # train_step returns (loss_dict, skipped_iter, ...): an overflow step updates no mixer
            skipped = (
                isinstance(result, tuple) and len(result) > 1 and isinstance(result[1], (bool, int)) and bool(result[1])
            )
            session.end_step(skipped=skipped)
            return result

        return train_step

    def wrap_save(save_orig):
        def save_checkpoint(iteration, *a, **kw):
            out = save_orig(iteration, *a, **kw)
            session.save(iteration)
            return out

        return save_checkpoint

    val = session.validation

    def wrap_evaluate_and_print(original):
        def evaluate_and_print_results(prefix, forward_step_func, data_iterator, model, iteration, *a, **kw):
            iterators = val.begin(data_iterator)
            if iterators is None:
                return original(prefix, forward_step_func, data_iterator, model, iteration, *a, **kw)
            try:
                out = original(prefix, forward_step_func, iterators, model, iteration, *a, **kw)
            finally:
                losses = val.end()
            val.publish(losses, iteration)
            return out

        return evaluate_and_print_results

    def wrap_evaluate(original):
        def evaluate(forward_step_func, data_iterator, model, *a, **kw):
            out = original(forward_step_func, data_iterator, model, *a, **kw)
            val.record(out)
            return out

        return evaluate

    mod = TARGET
    # setup_model_and_optimizer: the wrapper passes every argument through and reads only the
    # returned (model, optimizer, scheduler); core_r0.19 swapped its first two parameters
    return [
        Patch(f"{mod}:setup_model_and_optimizer", wrap_setup, MEGATRON_VERIFIED),
        Patch(
            f"{mod}:train_step",
            wrap_step,
            MEGATRON_VERIFIED,
            ("forward_step_func", "data_iterator", "model", "optimizer"),
        ),
        Patch(f"{mod}:save_checkpoint", wrap_save, MEGATRON_VERIFIED, ("iteration", "model", "optimizer")),
        Patch(f"{mod}:evaluate_and_print_results", wrap_evaluate_and_print, MEGATRON_VERIFIED, EVAL_PRINT_PARAMS),
        Patch(f"{mod}:evaluate", wrap_evaluate, MEGATRON_VERIFIED, EVALUATE_PARAMS),
    ]
