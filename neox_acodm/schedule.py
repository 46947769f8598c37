"""Weight schedules: the realised weights of a run as an artifact that replays with no agent.

A schedule is a list of phases ``(start_step, weights[K])``; phase p holds from its start until
the next phase starts. ``mixer: static`` with ``schedule_path`` replays one step by step, so a
learned mix (a proxy policy, an AC-ODM run) can be reviewed as data, diffed, and re-run on a
larger model without the agent. Files are YAML; floats are written with ``repr`` precision, so
a schedule built from a run's float64 weights replays that run's plan exactly.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from .typed_yaml import ConfigError, load_yaml

FORMAT = "neox_acodm.schedule/1"


@dataclass(frozen=True)
class Schedule:
    domains: tuple[str, ...]
    starts: tuple[int, ...]  # strictly increasing, starts[0] == 0
    weights: tuple[tuple[float, ...], ...]

    def weights_at(self, step: int) -> np.ndarray:
        """[K] float64 weights of ``step`` (the last phase holds after the schedule ends)."""
        i = bisect.bisect_right(self.starts, step) - 1
        return np.array(self.weights[max(i, 0)], dtype=np.float64)

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "domains": list(self.domains),
            "phases": [{"start": s, "weights": list(w)} for s, w in zip(self.starts, self.weights)],
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False, width=10_000))

    def megatron_blends(self, prefixes: list[str] | None = None) -> list[str]:
        """One ``--data-path w1 p1 w2 p2 ...`` per phase (with ``--phase-transition-iterations``
        at the phase starts, megatron-core >= 0.17 changes the blend between restarts)."""
        names = prefixes or list(self.domains)
        return [" ".join(f"{w:.6g} {p}" for w, p in zip(ws, names)) for ws in self.weights]


def from_weights(domains, history, every: int = 1) -> Schedule:
    """Schedule from per-step weights ``history`` [T, K] (row t = the weights of step t).

    ``every`` > 1 averages the weights over blocks of that many steps (a coarse, reviewable
    schedule); consecutive identical rows always merge into one phase.
    """
    h = np.asarray(history, dtype=np.float64)
    if h.ndim != 2 or h.shape[1] != len(domains) or h.shape[0] == 0:
        raise ValueError(f"weight history must be [T, {len(domains)}], got {h.shape}")
    if every > 1:  # every step of a block gets the block's mean
        blocks = [h[i : i + every] for i in range(0, len(h), every)]
        h = np.concatenate([np.repeat(b.mean(0, keepdims=True), len(b), axis=0) for b in blocks])
        h = h / h.sum(1, keepdims=True)
    starts, rows = [0], [h[0]]
    for t in range(1, len(h)):
        if not np.array_equal(h[t], rows[-1]):
            starts.append(t)
            rows.append(h[t])
    return Schedule(tuple(domains), tuple(starts), tuple(tuple(float(x) for x in r) for r in rows))


def load_schedule(path: str | Path, domains: tuple[str, ...] | None = None) -> Schedule:
    """Read and validate a schedule file (ConfigError naming the file and the problem)."""
    path = Path(path)
    try:
        data = load_yaml(path.read_bytes(), str(path))
    except OSError as e:
        raise ConfigError(f"acodm.schedule_path: cannot read {path} ({e.strerror or e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(
            f"{path}: not a neox_acodm schedule (format {FORMAT}); write one with `neox-acodm export-schedule`"
        )
    names = tuple(str(d) for d in data.get("domains") or ())
    if domains is not None and names != tuple(domains):
        raise ConfigError(f"{path}: schedule domains {list(names)} differ from acodm.domains {list(domains)}")
    starts, rows = [], []
    for i, ph in enumerate(data.get("phases") or ()):
        w = ph.get("weights") if isinstance(ph, dict) else None
        s = ph.get("start") if isinstance(ph, dict) else None
        if not isinstance(s, int) or isinstance(s, bool) or (starts and s <= starts[-1]) or (not starts and s != 0):
            raise ConfigError(f"{path}: phases[{i}].start must be an integer, 0 first, strictly increasing")
        if (
            not isinstance(w, list)
            or len(w) != len(names)
            or not all(isinstance(x, (int, float)) and math.isfinite(x) and x >= 0 for x in w)
            or abs(sum(w) - 1.0) > 1e-6
        ):
            raise ConfigError(f"{path}: phases[{i}].weights must be {len(names)} non-negative numbers summing to 1")
        starts.append(s)
        rows.append(tuple(float(x) for x in w))
    if not starts:
        raise ConfigError(f"{path}: the schedule has no phases")
    return Schedule(names, tuple(starts), tuple(rows))
