"""Save and load of a :class:`~neox_acodm.runtime.MixingRuntime`: collective, verified, transactional.

* **Save** (every rank calls it): the owner writes one checksummed file atomically; a failure
  there raises on every rank (:func:`~neox_acodm.dist.agree`).
* **Load** (every rank calls it): the owner reads and verifies the file, validates every value as
  strictly as a configured one and stages the mixer state into a *copy*; the global part (step,
  weights, cursors) is broadcast and staged on every rank. Only when every rank staged without
  error is anything applied, so a failed load leaves every rank exactly as it was, and every
  rank raises the same error naming the path.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from . import checkpoint
from .checkpoint import CheckpointError
from .dist import agree, broadcast_object, is_distributed

if TYPE_CHECKING:
    from .runtime import MixingRuntime

_GLOBAL = ("version", "mixer_kind", "domains", "step", "weights", "skipped_steps", "cursors")
_LOCAL = ("mixer", "norms", "probe")


def state_dict(rt: "MixingRuntime") -> dict:
    if rt.in_step:
        raise RuntimeError("acodm state saved in the middle of a step; save after end_step()")
    return {
        "version": checkpoint.SCHEMA_VERSION, "mixer_kind": rt.cfg.mixer,
        "domains": list(rt.cfg.domain_names), "step": rt.step,
        "weights": torch.as_tensor(rt.weights), "skipped_steps": rt.skipped_steps,
        "cursors": rt.cursors.state_dict() if rt.cursors is not None else None,
        "mixer": rt.mixer.state_dict() if rt.mixer is not None else None,
        "norms": rt.norms.state_dict() if rt.norms is not None else None,
        "probe": rt.probe.state_dict() if rt.probe is not None and rt.probe.lagged else None,
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


def validate_global(state: Any, rt: "MixingRuntime", path: str) -> None:
    """The global part of a state must fit this run exactly; raises CheckpointError naming ``path``."""
    if not isinstance(state, dict) or any(k not in state for k in _GLOBAL):
        missing = [k for k in _GLOBAL if not isinstance(state, dict) or k not in state]
        raise CheckpointError(f"{path}: not a neox_acodm runtime state (missing {missing})")
    if state["version"] != checkpoint.SCHEMA_VERSION:
        raise CheckpointError(f"{path}: acodm state has schema version {state['version']!r}, this "
                              f"neox_acodm reads {checkpoint.SCHEMA_VERSION}")
    if list(state["domains"]) != list(rt.cfg.domain_names):
        raise CheckpointError(f"acodm checkpoint domains {state['domains']} differ from the "
                              f"config's acodm.domains {list(rt.cfg.domain_names)}; resume with "
                              f"the same domains in the same order ({path})")
    if state["mixer_kind"] != rt.cfg.mixer:
        raise CheckpointError(f"{path}: acodm checkpoint was written by mixer {state['mixer_kind']!r}, "
                              f"the config says acodm.mixer={rt.cfg.mixer!r}")
    for key in ("step", "skipped_steps"):
        if isinstance(state[key], bool) or not isinstance(state[key], int) or state[key] < 0:
            raise CheckpointError(f"{path}: {key} must be a non-negative integer, got {state[key]!r}")
    w = state["weights"]
    if not isinstance(w, torch.Tensor) or tuple(w.shape) != (rt.k,):
        raise CheckpointError(f"{path}: weights must be a [{rt.k}] tensor, got {getattr(w, 'shape', w)!r}")
    w = w.double()
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or abs(float(w.sum()) - 1.0) > 1e-6:
        raise CheckpointError(f"{path}: weights {w.tolist()} are not a probability vector "
                              f"(finite, >= 0, summing to 1)")
    cur = state["cursors"]
    if cur is not None:
        pos = np.asarray(cur.get("positions", []) if isinstance(cur, dict) else [])
        if pos.shape != (rt.k,) or pos.dtype.kind not in "iu" or np.any(pos < 0):
            raise CheckpointError(f"{path}: cursor positions must be {rt.k} non-negative integers, "
                                  f"got {pos.tolist()}")
    check_finite({k: state[k] for k in _GLOBAL}, path)


def _stage_global(rt: "MixingRuntime", state: dict, path: str):
    cursors = None
    if rt.cursors is not None and state["cursors"] is not None:
        cursors = copy.deepcopy(rt.cursors)
        try:
            cursors.load_state_dict(state["cursors"])
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path}: {e}") from None
    return cursors


def _stage_local(rt: "MixingRuntime", state: dict, path: str):
    mixer = None
    if rt.mixer is not None and state.get("mixer") is not None:
        check_finite(state["mixer"], f"{path}: mixer")
        mixer = copy.deepcopy(rt.mixer)
        try:
            mixer.load_state_dict(state["mixer"])
        except (ValueError, KeyError, TypeError, RuntimeError, IndexError, AttributeError) as e:
            raise CheckpointError(f"{path}: the saved {rt.cfg.mixer} mixer state does not fit this "
                                  f"config ({type(e).__name__}: {str(e).splitlines()[0][:300]}); resume "
                                  f"with the acodm block the run was saved with") from None
    if rt.norms is not None and state.get("norms") is not None:
        rt.norms.check_state(state["norms"], path)
    if rt.probe is not None and rt.probe.lagged and state.get("probe") is not None:
        rt.probe.check_state(state["probe"], path)
    return mixer


def load(rt: "MixingRuntime", path: str) -> None:
    """Collective over ``rt.layout.group``; see the module docstring."""
    error, state, mixer = None, None, None
    if rt.is_owner:
        try:
            state = checkpoint.load(path)
            validate_global(state, rt, path)
            mixer = _stage_local(rt, state, path)
        except (CheckpointError, FileNotFoundError) as e:
            error = e
    agree(error, rt.layout.group, rt.timeout, f"loading {path}", rt.layout.comm_device)
    if is_distributed(rt.layout.group):
        glob = broadcast_object({k: state[k] for k in _GLOBAL} if rt.is_owner else None, rt.layout.group,
                                rt.timeout, f"loading {path}")
        if not rt.is_owner:
            state = dict(glob)
    cursors = None
    try:
        if not rt.is_owner:
            validate_global(state, rt, path)
        cursors = _stage_global(rt, state, path)
    except CheckpointError as e:
        error = e
    agree(error, rt.layout.group, rt.timeout, f"loading {path}", rt.layout.comm_device)
    # every rank staged without error: apply (nothing below can fail on valid input)
    rt.step = int(state["step"])
    rt.weights = state["weights"].double().numpy().copy()
    rt.skipped_steps = int(state["skipped_steps"])
    if cursors is not None:
        rt.cursors = cursors
    if mixer is not None:
        rt.mixer = mixer
    if rt.is_owner and rt.norms is not None and state.get("norms") is not None:
        rt.norms.load_state_dict(state["norms"])
    if rt.is_owner and rt.probe is not None and rt.probe.lagged and state.get("probe") is not None:
        rt.probe.load_state_dict(state["probe"])
    rt._begin_step()


def save(rt: "MixingRuntime", path: str) -> None:
    """Collective over ``rt.layout.group``: the owner writes, every rank learns whether it worked."""
    error = None
    if rt.is_owner:
        try:
            checkpoint.atomic_save(state_dict(rt), path)
            rt.export_policy()
        except (OSError, RuntimeError, ValueError) as e:
            error = e
    agree(error, rt.layout.group, rt.timeout, f"saving {path}", rt.layout.comm_device)
