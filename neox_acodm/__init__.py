"""neox_acodm: Actor-Critic Online Data Mixing (AC-ODM) for GPT-NeoX and Megatron.

The core (config, plan, mixers, reward maths, runtime) imports only torch and numpy;
framework adapters live in ``neox_acodm.neox`` / ``neox_acodm.megatron`` and are never
imported together. Importing this package patches nothing and imports nothing heavy (the
public names below load on first use), so the start-up hook stays cheap.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "ACODMConfig": "config",
    "ConfigError": "config",
    "load_config": "config",
    "parse_config": "config",
    "DomainCursors": "plan",
    "StepPlan": "plan",
    "build_step_plan": "plan",
    "normalize_weights": "plan",
    "MixingRuntime": "runtime",
    "ParallelLayout": "dist",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'neox_acodm' has no attribute {name!r}")
