"""Save and load of the mixing runtime's components: collective, verified, transactional.

The runtime hands its components over as :class:`Parts` (each with ``state_dict`` /
``load_state_dict`` / ``check_state``); this module never sees the runtime itself.

* **Save** (every rank calls it): the owner writes one checksummed file atomically; a failure
  there raises on every rank (:func:`~neox_acodm.dist.agree`).
* **Load** (every rank calls it): the owner reads and verifies the file, validates every value as
  strictly as a configured one and stages the mixer state into a *copy*; the global part (step,
  weights, cursors) is broadcast and staged on every rank. Only when every rank staged without
  error is anything returned to apply, so a failed load leaves every rank exactly as it was, and
  every rank raises the same error naming the path.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import checkpoint
from .checkpoint import CheckpointError
from .dist import ParallelLayout, agree, broadcast_object, is_distributed

__all__ = ["Header", "Parts", "Staged", "check_finite", "load", "save", "state_dict", "validate_global"]

_GLOBAL = ("version", "mixer_kind", "domains", "step", "weights", "skipped_steps", "cursors")
_LOCAL = ("mixer", "norms", "probe")


@dataclass(frozen=True)
class Header:
    """What a state must match to be loaded: the domains (in order) and the mixer's name."""

    domains: tuple[str, ...]
    mixer_kind: str

    @property
    def k(self) -> int:
        return len(self.domains)


@dataclass(frozen=True)
class Parts:
    """The runtime's stateful components on this rank (None where absent).

    cursors: global (every data-loading rank); mixer, norms, probe: the owner's (local).
    The probe takes part only when it keeps last step's gradients (``probe.lagged``)."""

    cursors: Any = None
    mixer: Any = None
    norms: Any = None
    probe: Any = None

    @property
    def lagged_probe(self):
        return self.probe if self.probe is not None and self.probe.lagged else None


@dataclass(frozen=True)
class Staged:
    """A validated state, ready to apply on this rank (nothing was changed yet)."""

    step: int
    weights: np.ndarray
    skipped_steps: int
    cursors: Any = None  # a staged copy of the cursors, or None
    mixer: Any = None  # a staged copy of the mixer (owner), or None
    norms: dict | None = None  # checked norm state for ``norms.load_state_dict`` (owner)
    probe: dict | None = None  # checked probe state for ``probe.load_state_dict`` (owner)


def state_dict(header: Header, step: int, weights: np.ndarray, skipped_steps: int, parts: Parts) -> dict:
    """The full state (local parts only where this rank holds them)."""
    probe = parts.lagged_probe
    return {
        "version": checkpoint.SCHEMA_VERSION,
        "mixer_kind": header.mixer_kind,
        "domains": list(header.domains),
        "step": step,
        "weights": torch.as_tensor(weights),
        "skipped_steps": skipped_steps,
        "cursors": parts.cursors.state_dict() if parts.cursors is not None else None,
        "mixer": parts.mixer.state_dict() if parts.mixer is not None else None,
        "norms": parts.norms.state_dict() if parts.norms is not None else None,
        "probe": probe.state_dict() if probe is not None else None,
    }


def check_finite(obj: Any, where: str) -> None:
    """Every float and floating tensor inside ``obj`` (nested dicts/lists) is finite."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and not bool(torch.isfinite(obj).all()):
            raise CheckpointError(f"{where}: holds NaN/Inf values")
    elif isinstance(obj, float):
        if not math.isfinite(obj):
            raise CheckpointError(f"{where}: holds a non-finite number {obj}")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            check_finite(v, f"{where}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_finite(v, f"{where}[{i}]")


def validate_global(state: Any, header: Header, path: str) -> None:
    """The global part of a state must fit this run exactly; raises CheckpointError naming ``path``."""
    if not isinstance(state, dict) or any(k not in state for k in _GLOBAL):
        missing = [k for k in _GLOBAL if not isinstance(state, dict) or k not in state]
        raise CheckpointError(f"{path}: not a neox_acodm runtime state (missing {missing})")
    if state["version"] != checkpoint.SCHEMA_VERSION:
        raise CheckpointError(
            f"{path}: acodm state has schema version {state['version']!r}, this "
            f"neox_acodm reads {checkpoint.SCHEMA_VERSION}"
        )
    if not isinstance(state["domains"], list) or not all(isinstance(d, str) for d in state["domains"]):
        raise CheckpointError(f"{path}: domains must be a list of domain names, got {state['domains']!r:.200}")
    if not isinstance(state["mixer_kind"], str):
        raise CheckpointError(f"{path}: mixer_kind must be a mixer name, got {state['mixer_kind']!r:.200}")
    if list(state["domains"]) != list(header.domains):
        raise CheckpointError(
            f"acodm checkpoint domains {state['domains']} differ from the "
            f"config's acodm.domains {list(header.domains)}; resume with "
            f"the same domains in the same order ({path})"
        )
    if state["mixer_kind"] != header.mixer_kind:
        raise CheckpointError(
            f"{path}: acodm checkpoint was written by mixer {state['mixer_kind']!r}, "
            f"the config says acodm.mixer={header.mixer_kind!r}"
        )
    for key in ("step", "skipped_steps"):
        if isinstance(state[key], bool) or not isinstance(state[key], int) or state[key] < 0:
            raise CheckpointError(f"{path}: {key} must be a non-negative integer, got {state[key]!r}")
    w = state["weights"]
    if not isinstance(w, torch.Tensor) or tuple(w.shape) != (header.k,):
        raise CheckpointError(f"{path}: weights must be a [{header.k}] tensor, got {getattr(w, 'shape', w)!r}")
    w = w.double()
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or abs(float(w.sum()) - 1.0) > 1e-6:
        raise CheckpointError(f"{path}: weights {w.tolist()} are not a probability vector (finite, >= 0, summing to 1)")
    cur = state["cursors"]
    if cur is not None:
        pos = np.asarray(cur.get("positions", []) if isinstance(cur, dict) else [])
        if pos.shape != (header.k,) or pos.dtype.kind not in "iu" or np.any(pos < 0):
            raise CheckpointError(
                f"{path}: cursor positions must be {header.k} non-negative integers, got {pos.tolist()}"
            )
    check_finite({k: state[k] for k in _GLOBAL}, path)


def _stage_global(parts: Parts, state: dict, path: str):
    cursors = None
    if parts.cursors is not None and state["cursors"] is not None:
        cursors = copy.deepcopy(parts.cursors)
        try:
            cursors.load_state_dict(state["cursors"])
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path}: {e}") from None
    return cursors


def _stage_local(parts: Parts, header: Header, state: dict, path: str):
    """The owner's parts: each one this run holds must be present and fit (checked before the
    agreement, so a bad part fails the load on every rank with nothing applied)."""
    needed = {"mixer": parts.mixer, "norms": parts.norms, "probe": parts.lagged_probe}
    missing = [k for k, part in needed.items() if part is not None and state.get(k) is None]
    if missing:
        raise CheckpointError(
            f"{path}: the state lacks {missing}, which this run's {header.mixer_kind} mixer needs; "
            f"resume with the acodm block the run was saved with"
        )
    if parts.mixer is not None and not isinstance(state["mixer"], dict):
        raise CheckpointError(f"{path}: mixer state must be a mapping, got {type(state['mixer']).__name__}")
    mixer = None
    if parts.mixer is not None:
        check_finite(state["mixer"], f"{path}: mixer")
        mixer = copy.deepcopy(parts.mixer)
        try:
            mixer.load_state_dict(state["mixer"])
        except (ValueError, KeyError, TypeError, RuntimeError, IndexError, AttributeError) as e:
            raise CheckpointError(
                f"{path}: the saved {header.mixer_kind} mixer state does not fit this "
                f"config ({type(e).__name__}: {str(e).splitlines()[0][:300]}); resume "
                f"with the acodm block the run was saved with"
            ) from None
    if parts.norms is not None and state.get("norms") is not None:
        parts.norms.check_state(state["norms"], path)
    if parts.lagged_probe is not None and state.get("probe") is not None:
        parts.probe.check_state(state["probe"], path)
    return mixer


def load(
    path: str,
    header: Header,
    parts: Parts,
    layout: ParallelLayout,
    timeout: float,
    is_owner: bool,
    refused: BaseException | None = None,
) -> Staged:
    """Collective over ``layout.group``; see the module docstring. Returns what to apply.
    ``refused``: this rank cannot load now (e.g. mid-step); every rank then raises."""
    error, state, mixer = refused, None, None
    if is_owner and refused is None:
        try:
            state = checkpoint.load(path)
            validate_global(state, header, path)
            mixer = _stage_local(parts, header, state, path)
        except (CheckpointError, FileNotFoundError) as e:
            error = e
    agree(error, layout.group, timeout, f"loading {path}", layout.comm_device)
    if is_distributed(layout.group):
        glob = broadcast_object(
            {k: state[k] for k in _GLOBAL} if is_owner else None, layout.group, timeout, f"loading {path}"
        )
        if not is_owner:
            state = dict(glob)
    cursors = None
    try:
        if not is_owner:
            validate_global(state, header, path)
        cursors = _stage_global(parts, state, path)
    except CheckpointError as e:
        error = e
    agree(error, layout.group, timeout, f"loading {path}", layout.comm_device)
    # every rank staged without error (nothing below can fail on valid input)
    local = is_owner
    return Staged(
        step=int(state["step"]),
        weights=state["weights"].double().numpy().copy(),
        skipped_steps=int(state["skipped_steps"]),
        cursors=cursors,
        mixer=mixer,
        norms=state.get("norms") if local and parts.norms is not None else None,
        probe=state.get("probe") if local and parts.lagged_probe is not None else None,
    )


def save(
    make_state: Callable[[], dict],
    path: str,
    layout: ParallelLayout,
    timeout: float,
    is_owner: bool,
    after: Callable[[], None] | None = None,
) -> None:
    """Collective over ``layout.group``: the owner writes ``make_state()`` (then runs ``after``),
    every rank learns whether it worked."""
    error = None
    if is_owner:
        try:
            checkpoint.atomic_save(make_state(), path)
            if after is not None:
                after()
        except (OSError, RuntimeError, ValueError) as e:
            error = e
    agree(error, layout.group, timeout, f"saving {path}", layout.comm_device)
