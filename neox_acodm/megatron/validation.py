"""Per-domain validation on Megatron-LM (``acodm/val_ppl/<domain>`` and ``/avg``, as on NeoX).

Megatron-LM (core_r0.19) evaluates a *list* of validation iterators when
``args.multiple_validation_sets`` is set, one ``evaluate`` call per set, and logs
``lm loss validation-<name>`` for each. With every domain's ``valid_path`` given, the session
hands it one iterator per domain (in domain order, named after the domains) and turns the
flags on; the wrappers below read each set's ``lm loss`` from ``evaluate`` and write the
perplexities on the rank that has Megatron's writer (the last rank, where the losses are).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

logger = logging.getLogger(__name__)

#: evaluate_and_print_results / evaluate leading parameters the wrappers rely on
EVAL_PRINT_PARAMS = ("prefix", "forward_step_func", "data_iterator", "model", "iteration")
EVALUATE_PARAMS = ("forward_step_func", "data_iterator", "model")


def enable_multiple_sets(args, names: list[str]) -> None:
    """Turn Megatron's multiple validation sets on for one set per domain (``names``)."""
    if getattr(args, "full_validation", False):
        from ..config import ConfigError

        raise ConfigError("--full-validation: per-domain validation (acodm.domains[*].valid_path) evaluates "
                          "eval_iters batches of each domain; remove --full-validation")
    given = getattr(args, "validation_set_names", None)
    if given and list(given) != list(names):
        from ..config import ConfigError

        raise ConfigError(f"--validation-set-names {list(given)}: the sets are acodm's domains {list(names)}; "
                          f"drop the flag or list the domains in order")
    args.multiple_validation_sets = True
    args.validation_set_names = list(names)
    if not isinstance(args.eval_iters, (list, tuple)):
        args.eval_iters = [args.eval_iters] * len(names)


class DomainValidation:
    """Collects each validation set's ``lm loss`` during one ``evaluate_and_print_results``.

    names: the domains, in the order of the iterators handed to Megatron.
    writer: ``() -> write(tag, value, step) | None`` (Megatron's writer, on the last rank).
    """

    def __init__(self, names: list[str], writer: Callable[[], Callable[[str, float, int], None] | None]):
        self.names, self.writer = list(names), writer
        self.enabled = False
        self._losses: list[float | None] | None = None
        self.logged: list[dict[str, float]] = []

    def record(self, result) -> None:
        """``evaluate``'s return value ``(total_loss_dict, non_loss_data, timelimit)``."""
        if self._losses is None:
            return
        loss_dict = result[0] if isinstance(result, tuple) and result else None
        value = (loss_dict or {}).get("lm loss")
        self._losses.append(float(value.item() if hasattr(value, "item") else value) if value is not None else None)

    def ppl(self, losses: list[float | None]) -> dict[str, float]:
        """``val_ppl/<domain>`` and ``val_ppl/avg`` (mean of the domains' perplexities, as NeoX's
        integration logs it); empty unless every domain's loss is present (the last stage)."""
        if len(losses) != len(self.names) or any(v is None for v in losses):
            return {}
        out = {f"val_ppl/{n}": math.exp(min(20.0, v)) for n, v in zip(self.names, losses)}
        out["val_ppl/avg"] = sum(out.values()) / len(self.names)
        return out

    def wrap_evaluate_and_print(self, original):
        val = self

        def evaluate_and_print_results(prefix, forward_step_func, data_iterator, model, iteration, *a, **kw):
            if not val.enabled or not isinstance(data_iterator, (list, tuple)):
                return original(prefix, forward_step_func, data_iterator, model, iteration, *a, **kw)
            val._losses = []
            try:
                out = original(prefix, forward_step_func, data_iterator, model, iteration, *a, **kw)
            finally:
                losses, val._losses = val._losses, None
            metrics = val.ppl(losses)
            write = val.writer() if metrics else None
            if write is not None:
                from ..metrics import tag

                for key, value in metrics.items():
                    write(tag(key), value, iteration)
                val.logged.append(metrics)
                logger.info("acodm per-domain validation ppl at iteration %d | %s", iteration,
                            " | ".join(f"{k.split('/', 1)[1]}: {v:.3f}" for k, v in metrics.items()))
            return out

        return evaluate_and_print_results

    def wrap_evaluate(self, original):
        val = self

        def evaluate(forward_step_func, data_iterator, model, *a, **kw):
            out = original(forward_step_func, data_iterator, model, *a, **kw)
            val.record(out)
            return out

        return evaluate
