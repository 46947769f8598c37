"""Per-domain validation on Megatron-LM (``acodm/val_ppl/<domain>`` and ``/avg``, as on NeoX).

Megatron-LM (core_r0.19) evaluates a *list* of validation iterators when
``args.multiple_validation_sets`` is set, one ``evaluate`` call per set, and logs
``lm loss validation-<name>`` for each. Its loader builder refuses several sets without
``--full-validation`` (whole sets, which endless per-domain streams are not), so the session
hands Megatron one :class:`DomainIterators` and the ``evaluate_and_print_results`` wrapper
(:mod:`neox_acodm.patches.megatron_training`) expands it: for the call,
``multiple_validation_sets``, ``validation_set_names`` (the domains) and per-set
``eval_iters`` are set, and each set's ``lm loss`` is read from ``evaluate``. The
perplexities are written on the rank that has Megatron's writer (the last rank, where the
losses are).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from ..metrics import tag
from ..typed_yaml import ConfigError

logger = logging.getLogger(__name__)


class DomainIterators:
    """The per-domain validation streams, handed to Megatron as its one validation "loader";
    only the ``evaluate_and_print_results`` wrapper reads them."""

    def __init__(self, iterators: list):
        self.iterators = list(iterators)

    def __iter__(self):
        return self

    def __next__(self):
        raise RuntimeError(
            "acodm: the per-domain validation sets are read through neox_acodm's "
            "evaluate_and_print_results wrapper, which is not installed"
        )


def _domain_sets(data_iterator) -> DomainIterators | None:
    it = getattr(data_iterator, "iterable", data_iterator)  # Megatron wraps it in RerunDataIterator
    return it if isinstance(it, DomainIterators) else None


def check_validation_args(args, names: list[str]) -> None:
    """Per-domain validation takes ``eval_iters`` batches of each domain's endless stream."""
    if getattr(args, "full_validation", False):
        raise ConfigError(
            "--full-validation: per-domain validation (acodm.domains[*].valid_path) evaluates "
            "eval_iters batches of each domain; remove --full-validation"
        )
    if getattr(args, "multiple_validation_sets", False):
        raise ConfigError(
            "--multiple-validation-sets: with acodm.domains[*].valid_path the sets are the "
            "domains, set up by neox_acodm; remove the flag"
        )
    given = getattr(args, "validation_set_names", None)
    if given and list(given) != list(names):
        raise ConfigError(
            f"--validation-set-names {list(given)}: the sets are acodm's domains {list(names)}; "
            f"drop the flag or list the domains in order"
        )


_SET_ARGS = ("multiple_validation_sets", "validation_set_names", "eval_iters")


class DomainValidation:
    """Collects each validation set's ``lm loss`` during one ``evaluate_and_print_results``.

    names: the domains, in the order of the iterators handed to Megatron.
    writer: ``() -> write(tag, value, step) | None`` (Megatron's writer, on the last rank).
    """

    def __init__(
        self,
        names: list[str],
        writer: Callable[[], Callable[[str, float, int], None] | None],
        get_args: Callable | None = None,
    ):
        self.names, self.writer = list(names), writer
        self.get_args = get_args
        self._losses: list[float | None] | None = None
        self._saved: dict = {}

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

    def begin(self, data_iterator) -> list | None:
        """Before Megatron's ``evaluate_and_print_results``: the per-domain iterators to evaluate
        as Megatron's validation sets (args set for the call), or None when ``data_iterator``
        is not ours (it is then evaluated as it is)."""
        sets = _domain_sets(data_iterator)
        if sets is None:
            return None
        args = self._args()
        self._saved = {k: getattr(args, k, None) for k in _SET_ARGS}
        args.multiple_validation_sets, args.validation_set_names = True, list(self.names)
        n = self._saved["eval_iters"]
        args.eval_iters = list(n) if isinstance(n, (list, tuple)) else [n] * len(self.names)
        self._losses = []
        return [_rerun(s) for s in sets.iterators]

    def end(self) -> list[float | None]:
        """After the call (also on failure): restores the args, returns each set's loss."""
        losses, self._losses = self._losses, None
        args = self._args()
        for k, v in self._saved.items():
            setattr(args, k, v)
        return losses or []

    def publish(self, losses: list[float | None], iteration: int) -> None:
        """Write ``val_ppl/*`` on the rank that has Megatron's writer, flush it, log one line."""
        metrics = self.ppl(losses)
        write = self.writer() if metrics else None
        if write is None:
            return
        for key, value in metrics.items():
            write(tag(key), value, iteration)
        flush = getattr(getattr(write, "__self__", None), "flush", None)
        if callable(flush):  # the last evaluation runs right before the process exits
            flush()
        logger.info(
            "acodm per-domain validation ppl at iteration %d | %s",
            iteration,
            " | ".join(f"{k.split('/', 1)[1]}: {v:.3f}" for k, v in metrics.items()),
        )

    def _args(self):
        if self.get_args is not None:
            return self.get_args()
        from megatron.training import get_args

        return get_args()


def _rerun(iterator):
    """Megatron's replay wrapper around one set's iterator (as its loader builder would)."""
    try:
        from megatron.core.rerun_state_machine import RerunDataIterator
    except ImportError:  # stand-ins without megatron-core
        return iterator
    return RerunDataIterator(iterator) if iterator is not None else None
