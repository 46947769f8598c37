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
        """Write the schedule atomically, after checking that replay would accept it."""
        validate_schedule(self.to_dict(), str(path), self.domains)
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, width=10_000)
        tmp = Path(path).with_name(Path(path).name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)

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
    try:
        h = np.asarray(history, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("weight history must be a [T, K] array of numbers") from None
    if h.ndim != 2 or h.shape[1] != len(domains) or h.shape[0] == 0:
        raise ValueError(f"weight history must be [T, {len(domains)}], got {h.shape}")
    if every < 1:
        raise ValueError(f"every must be a positive integer, got {every}")
    bad_rows = ~np.isfinite(h).all(1) | (h < 0).any(1) | (np.abs(h.sum(1) - 1.0) > 1e-6)
    if bad_rows.any():
        bad = int(np.nonzero(bad_rows)[0][0])
        raise ValueError(
            f"weight history row {bad} ({h[bad].tolist()[:8]}) is not a probability vector "
            f"(finite, non-negative, summing to 1)"
        )
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


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def validate_schedule(data, where: str, domains: tuple[str, ...] | None = None) -> Schedule:
    """A schedule from its loaded mapping, every value checked; ConfigError names ``where`` and the key."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(
            f"{where}: not a neox_acodm schedule (format {FORMAT}); write one with `neox-acodm export-schedule`"
        )
    names = data.get("domains")
    if not isinstance(names, list) or not names or not all(isinstance(d, str) and d for d in names):
        raise ConfigError(f"{where}: domains must be a non-empty list of domain names")
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: domains {names} repeat a name")
    names = tuple(names)
    if domains is not None and names != tuple(domains):
        raise ConfigError(f"{where}: schedule domains {list(names)} differ from acodm.domains {list(domains)}")
    phases = data.get("phases")
    if not isinstance(phases, list) or not phases:
        raise ConfigError(f"{where}: the schedule has no phases (phases must be a non-empty list)")
    starts, rows = [], []
    for i, ph in enumerate(phases):
        s = ph.get("start") if isinstance(ph, dict) else None
        w = ph.get("weights") if isinstance(ph, dict) else None
        if not isinstance(s, int) or isinstance(s, bool) or (starts and s <= starts[-1]) or (not starts and s != 0):
            raise ConfigError(f"{where}: phases[{i}].start must be an integer, 0 first, strictly increasing")
        ok = isinstance(w, list) and len(w) == len(names) and all(_number(x) for x in w)
        if ok:
            try:
                values = [float(x) for x in w]
            except OverflowError:
                ok = False
            else:
                total = math.fsum(values)
                ok = all(math.isfinite(x) and x >= 0 for x in values) and abs(total - 1.0) <= 1e-6
        if not ok:
            raise ConfigError(
                f"{where}: phases[{i}].weights must be {len(names)} finite non-negative numbers summing to 1"
            )
        starts.append(s)
        rows.append(tuple(values))
    return Schedule(names, tuple(starts), tuple(rows))


def load_schedule(path: str | Path, domains: tuple[str, ...] | None = None) -> Schedule:
    """Read and validate a schedule file (ConfigError naming the file and the problem)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"acodm.schedule_path: cannot read {path} ({e.strerror or e})") from None
    return validate_schedule(load_yaml(raw, str(path)), str(path), domains)


def resolve_schedule_path(
    name: str, base_dir: str | Path | None, domains: tuple[str, ...], key: str = "acodm.schedule_path"
) -> str:
    """``schedule_path`` looked up like ``domains: <file>`` (the including file's folder first,
    then the working directory), read and validated against ``domains``; returns the path found."""
    given = Path(name)
    tried = (
        [given]
        if given.is_absolute()
        else [*([Path(base_dir) / given] if base_dir is not None else []), Path.cwd() / given]
    )
    found = next((f for f in tried if f.is_file()), None)
    if found is None:
        where = ", ".join(str(f.parent) for f in tried)
        raise ConfigError(
            f"{key}: schedule file {name!r} not found (looked in {where}); write one with `neox-acodm export-schedule`"
        )
    load_schedule(found, domains)
    return str(found)
