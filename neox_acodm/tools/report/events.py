"""Read the ``acodm/*`` scalars of a run's TensorBoard event files."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from neox_acodm.metrics import FAMILIES, PAIR_FAMILY, PREFIX

from ..args import UsageError
from .records import scan_event_file

logger = logging.getLogger(__name__)


@dataclass
class Series:
    """One tag: steps [N] (ascending, unique), values [N], wall times [N] (seconds)."""

    steps: np.ndarray
    values: np.ndarray
    wall: np.ndarray


@dataclass
class RunScalars:
    """Every ``acodm/*`` series of a run, keyed by the tag without the ``acodm/`` prefix."""

    source: str
    series: dict[str, Series] = field(default_factory=dict)
    #: event files that end inside a record (a run in progress): the report covers what they hold
    cut_short: list[str] = field(default_factory=list)

    @property
    def domains(self) -> list[str]:
        """Domain names in the run's order (that of the ``weight/*`` tags as first written)."""
        first = {k[len("weight/") :]: s.wall[0] for k, s in self.series.items() if k.startswith("weight/")}
        return sorted(first, key=lambda d: (first[d], d)) if first else []

    def family(self, name: str) -> dict[str, Series]:
        """``{domain: series}`` of a per-domain family (``weight``, ``loss``, ``val_ppl``...)."""
        pre = name + "/"
        return {k[len(pre) :]: s for k, s in self.series.items() if k.startswith(pre) and "/" not in k[len(pre) :]}

    def pair_matrix(self, step: int | None = None) -> tuple[int, np.ndarray] | None:
        """(step, [K, K] gradient cosines) at ``step``, diagonal 1, NaN where a pair was not
        logged then; ``step`` None: each pair's latest value (a pair is logged only at steps
        where both domains got a micro-batch) and the last step. None if no ``grad_cos``."""
        names = self.domains
        pairs = {k: s for k, s in self.series.items() if k.startswith(PAIR_FAMILY + "/")}
        if not pairs or not names:
            return None
        exact = step is not None
        if step is None:
            step = int(max(s.steps[-1] for s in pairs.values()))
        index = {n: i for i, n in enumerate(names)}
        m = np.full((len(names), len(names)), np.nan)
        np.fill_diagonal(m, 1.0)
        for k, s in pairs.items():
            rest = k[len(PAIR_FAMILY) + 1 :]
            # domain names may hold "/": find the split whose both halves are domains
            for cut in [i for i, c in enumerate(rest) if c == "/"]:
                a, b = rest[:cut], rest[cut + 1 :]
                if a in index and b in index:
                    hit = np.nonzero(s.steps == step)[0] if exact else [s.steps.size - 1]
                    if len(hit):
                        m[index[a], index[b]] = m[index[b], index[a]] = s.values[hit[-1]]
                    break
        return step, m


def read_run(run_dir: str | os.PathLike) -> RunScalars:
    """All ``acodm/*`` scalars under ``run_dir`` (searched recursively). A step written twice
    (a resumed run re-logs the steps after its checkpoint) keeps the last value written."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator
    except ImportError as e:
        raise UsageError(
            "neox-acodm report needs TensorBoard's event reader: pip install 'neox_acodm[report]' (or tensorboard)"
        ) from e
    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: {'is a file, not a directory' if root.exists() else 'no such directory'}")
    files = sorted(p for p in root.rglob("events.out.tfevents.*") if p.is_file())
    cut_short = []
    for f in files:  # corruption is an error naming the file; a cut-short end is a partial report
        if scan_event_file(f)[1]:
            cut_short.append(str(f))
            logger.warning(
                "report: %s ends inside a record (a run in progress?); the report covers what was written before it", f
            )
    dirs = sorted({p.parent for p in files})
    if not dirs:
        raise FileNotFoundError(
            f"{root}: no TensorBoard event files (events.out.tfevents.*) below it; point at the run's tensorboard_dir"
        )
    raw: dict[str, dict[int, tuple[float, float]]] = {}
    for d in dirs:
        acc = EventAccumulator(str(d), size_guidance={SCALARS: 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            if not tag.startswith(PREFIX):
                continue
            bucket = raw.setdefault(tag[len(PREFIX) :], {})
            for ev in acc.Scalars(tag):
                old = bucket.get(ev.step)
                if old is None or ev.wall_time >= old[0]:
                    bucket[ev.step] = (ev.wall_time, ev.value)
    out = RunScalars(str(root), cut_short=cut_short)
    for key, bucket in raw.items():
        steps = np.array(sorted(bucket), dtype=np.int64)
        out.series[key] = Series(
            steps, np.array([bucket[s][1] for s in steps]), np.array([bucket[s][0] for s in steps])
        )
    if not out.series:
        raise FileNotFoundError(
            f"{root}: the event files hold no acodm/* scalars (was the run "
            f"started with an acodm: block, and has it reached a logged step?)"
        )
    unknown = {k.split("/")[0] for k in out.series if "/" in k} - set(FAMILIES) - {PAIR_FAMILY}
    if unknown:
        logger.info("report: families not drawn: %s", sorted(unknown))
    return out
