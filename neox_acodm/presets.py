"""Named defaults of the ``acodm:`` block (``acodm.preset``), applied under the keys a block sets."""

from __future__ import annotations

import difflib
from typing import Any

from .typed_yaml import ConfigError

__all__ = ["PRESETS", "apply_preset"]

#: named defaults applied under the user's keys (``acodm.preset``); ``paper`` = field defaults
PRESETS: dict[str, dict] = {
    "paper": {},
    "mirror": {
        "mixer": "mirror",
        "initial_weights": "prior",
        "sampling": {"allocation": "stratified"},
        "reward": {"estimate": "masked", "self_term": "lagged"},
    },
    "aligned": {
        "sampling": {"allocation": "stratified"},
        "reward": {"mode": "aligned", "self_term": "lagged"},
        "state": {"include_reward": True},
        "agent": {
            "actor_init": "prior",
            "critic_action": "log_ratio",
            "objective": "decomposed",
            "noise_space": "log",
            "exploration_std": 0.1,
            "warmup_noise_std": 0.1,
            "warmup_steps": 0,
            "hidden_dim": 256,
            "num_layers": 2,
            "gamma": 0.5,
            "tau": 0.05,
            "kl_coef": 1.0,
            "actor_lr": 1e-3,
        },
    },
}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def apply_preset(block: Any, path: str = "acodm") -> Any:
    """The block with its preset's defaults filled in under the keys it sets."""
    if not isinstance(block, dict) or "preset" not in block:
        return block
    name = block["preset"]
    if name not in PRESETS:
        close = difflib.get_close_matches(str(name), list(PRESETS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{path}.preset: got {name!r}{hint} (allowed: {', '.join(PRESETS)})")
    return _merge(PRESETS[name], block)
