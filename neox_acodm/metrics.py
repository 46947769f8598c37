"""The ``acodm/*`` metrics: their names and which rank writes them.

The mixer's metrics exist on the owner (group rank 0). Frameworks keep their writer elsewhere
(Megatron-LM: the last rank; GPT-NeoX: global rank 0). :class:`MetricsSink` routes them:
``route="owner"`` writes on the owner, ``route="broadcast"`` sends the few scalars of a logged
step to every rank (one small collective every ``log_interval`` steps; every rank calls
:meth:`write`) and the rank that has a writer writes them.
"""

from __future__ import annotations

from collections.abc import Callable

from .dist import broadcast_object

PREFIX = "acodm/"

#: per-domain families and their meaning (the TensorBoard tags are acodm/<family>/<domain>)
FAMILIES = {
    "weight": "sampling weight of the next step",
    "loss": "mean training loss this step",
    "reward": "per-domain reward estimate",
    "val_ppl": "validation perplexity",
    "epochs": "epochs of the domain read so far",
    "projected_epochs": "epochs by the run's end at the current weights",
    "tokens": "tokens of the domain read so far",
    "shadow_weight": "shadow mode: the weight the mixer would have chosen",
    "staleness": "steps since the domain last drew data (0: drawn this step)",
    "at_floor": "share of the steps so far planned with the domain at the weight floor",
}
#: pair family: acodm/grad_cos/<a>/<b>, cosine of two domains' mean gradients (logged steps)
PAIR_FAMILY = "grad_cos"


def tag(key: str) -> str:
    """``weight/code`` -> ``acodm/weight/code``."""
    return key if key.startswith(PREFIX) else PREFIX + key


class MetricsSink:
    """Writes ``acodm/*`` scalars once per logged step, on the rank that has a writer.

    ``writer()`` returns this rank's ``write(tag, value, step)`` callable, or None where this
    rank does not write.
    """

    def __init__(
        self,
        writer: Callable[[], Callable[[str, float, int], None] | None],
        log_interval: int,
        route: str = "owner",
        group=None,
        is_owner: bool = True,
        timeout: float | None = None,
    ):
        if route not in ("owner", "broadcast"):
            raise ValueError(f"route must be 'owner' or 'broadcast', got {route!r}")
        self.writer, self.log_interval, self.route = writer, log_interval, route
        self.group, self.is_owner, self.timeout = group, is_owner, timeout
        self.written = 0

    def write(self, step: int, metrics: dict[str, float], logged: bool | None = None) -> None:
        """Every rank calls this after each step (a collective at logged steps when broadcasting).
        ``logged``: write at this step whatever ``log_interval`` says (e.g. an evaluation)."""
        if not (step % self.log_interval == 0 if logged is None else logged):
            return
        if self.route == "broadcast":
            metrics = broadcast_object(
                metrics if self.is_owner else None, self.group, self.timeout, f"step {step} metrics broadcast"
            )
        elif not self.is_owner:
            return
        write = self.writer()
        if write is None or not metrics:
            return
        for key, value in metrics.items():
            write(tag(key), float(value), step)
        self.written += 1
