"""The initial domain weights of a run (``acodm.initial_weights``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .config import ACODMConfig
from .typed_yaml import ConfigError

__all__ = ["PRIOR_TEMPERATURE", "resolve_initial_weights"]

#: ``initial_weights: prior`` with equal metric weights: temperature sampling at this T (tokens^(1/2),
#: bench-mix's ``temperature`` static mix) unless ``sampling.temperature`` sets another
PRIOR_TEMPERATURE = 2.0


def resolve_initial_weights(cfg: ACODMConfig, token_counts: Sequence[float] | None) -> np.ndarray:
    """[K] initial weights per ``cfg.initial_weights``."""
    mode = cfg.initial_weights
    temperature = cfg.sampling.temperature
    if mode == "prior":  # the best mix that needs no sweep
        metric = {d.metric_weight for d in cfg.domains}
        mode = "metric" if len(metric) > 1 else "tokens"
        temperature = temperature if temperature != 1.0 else PRIOR_TEMPERATURE
    if mode == "auto":
        mode = "config" if all(d.weight is not None for d in cfg.domains) else "uniform"
    if mode == "config":
        return np.array([d.weight for d in cfg.domains], dtype=np.float64)
    if mode == "metric":  # zero-weight domains get sampling.min_weight when the weights are projected
        return np.array([d.metric_weight for d in cfg.domains], dtype=np.float64)
    if mode == "tokens":
        if token_counts is None:
            raise ConfigError(
                "acodm.initial_weights: 'tokens' needs the per-domain token counts, "
                "which this integration did not provide; use 'config' or 'uniform'"
            )
        return np.asarray(token_counts, dtype=np.float64) ** (1.0 / temperature)
    return np.full(cfg.num_domains, 1.0 / cfg.num_domains)
