"""The capture side of a mixer's requirements: the gradient probe (Gram, lagged Gram) and the
weight-norm features, built on every rank from :class:`~neox_acodm.mixers.Requirements`."""

from __future__ import annotations

import logging

import torch

from .config import ACODMConfig
from .dist import ParallelLayout
from .mixers import Requirements
from .ops import get_ops
from .probe import GradientProbe
from .selectors import resolve_selection
from .state import ParamNorms
from .typed_yaml import ConfigError

__all__ = ["build_norms", "build_probe"]

logger = logging.getLogger(__name__)


def build_probe(
    cfg: ACODMConfig,
    needs: Requirements,
    layout: ParallelLayout,
    model: torch.nn.Module | None,
    model_device: torch.device,
    is_owner: bool,
) -> GradientProbe | None:
    """The per-domain gradient probe when ``needs.gram`` (None when not needed, or where this
    pipeline stage owns none of the selected layers). The lagged buffer lives on the owner."""
    if not needs.gram:
        return None
    if model is None:
        raise ValueError(f"mixer {cfg.mixer!r} needs the model to capture per-domain gradients")
    lagged = needs.lagged_gram
    if layout.sharded and lagged:
        raise ConfigError(
            "acodm.reward.self_term: 'lagged' keeps per-rank gradient shards of the "
            "previous step that are not checkpointed under tensor/pipeline "
            "parallelism; use 'raw' or 'drop'"
        )
    sel = resolve_selection(model, cfg.reward.params, "acodm.reward.params", layout.all_stages())
    if not sel.params:  # a pipeline stage may own none of the selected layers
        return None
    ops = get_ops(cfg.reward.backend, model_device)
    probe = GradientProbe(
        sel.params,
        cfg.num_domains,
        cfg.reward.estimator,
        cfg.reward.sketch_dim,
        cfg.reward.sketch_seed,
        ops,
        lagged=lagged and is_owner,
    )
    logger.info(
        "acodm: capturing per-domain gradients of %d tensors (%d elements, %s, buffer %.1f MiB, backend %s): %s",
        len(sel.params),
        probe.num_params,
        cfg.reward.estimator,
        probe.memory_bytes() / 2**20,
        ops.name,
        [p.name for p in sel.params],
    )
    return probe


def build_norms(
    cfg: ACODMConfig, needs: Requirements, layout: ParallelLayout, model: torch.nn.Module | None
) -> ParamNorms | None:
    """The norm-layer statistics of the state when ``needs.norms``."""
    if not needs.norms:
        return None
    if model is None:
        raise ValueError(f"mixer {cfg.mixer!r} needs the model for the weight-norm state features")
    update_norm = cfg.state.update_norm
    if layout.sharded and update_norm == "exact":
        raise ConfigError(
            "acodm.state.update_norm: 'exact' keeps per-rank weight copies that "
            "are not checkpointed under tensor/pipeline parallelism; use 'norm_change'"
        )
    if update_norm == "auto":
        update_norm = "norm_change" if layout.sharded else "exact"
    sel = resolve_selection(model, cfg.state.norm_params, "acodm.state.norm_params", layout.all_stages())
    return ParamNorms(sel, update_norm)
