"""The capture side of a mixer's requirements: the gradient probe (Gram, lagged Gram) and the
weight-norm features, built on every rank from :class:`~neox_acodm.mixers.Requirements`."""

from __future__ import annotations

import logging

import torch

from .activation_probe import ActivationProbe
from .config import ACODMConfig
from .dist import ParallelLayout, group_rank
from .mixers import Requirements
from .ops import get_ops
from .probe import GradientProbe, ProbeBuffer
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
    micro_batch: int = 1,
    batch_dim: int = 0,
) -> ProbeBuffer | None:
    """The per-domain gradient probe when ``needs.gram`` (None when not needed, or where this
    pipeline stage owns none of the selected layers). The lagged buffer lives on the owner.

    Gradient hooks on the selected tensors (one domain per micro-batch, `exact` or `sketch`), or
    activation capture on their modules (mixed micro-batches, or `estimator: projected`);
    ``batch_dim`` tells activation capture where the samples are ([b, T, h]: 0, [T, b, h]: 1)."""
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
    if cfg.sampling.granularity == "sample" or cfg.reward.estimator == "projected":
        probe = ActivationProbe(
            _modules_of(model, [sp.name for sp in sel.params], cfg.reward.params.param),
            cfg.num_domains,
            cfg.reward.estimator,
            ops,
            micro_batch,
            batch_dim,
            cfg.reward.projection_rank,
            # the same projections on every DP replica (their buffers are summed), independent per TP shard
            cfg.reward.sketch_seed + 7919 * (group_rank(layout.partial_sum_group) if layout.partial_sum_group else 0),
            lagged=lagged and is_owner,
        )
        _log(cfg, sel, probe, "activations")
        return probe
    probe = GradientProbe(
        sel.params,
        cfg.num_domains,
        cfg.reward.estimator,
        cfg.reward.sketch_dim,
        cfg.reward.sketch_seed,
        ops,
        lagged=lagged and is_owner,
    )
    _log(cfg, sel, probe, "gradient hooks")
    return probe


def _modules_of(model, param_names: list[str], param: str) -> list[torch.nn.Module]:
    """The modules that own the selected ``<module>.<param>`` (activation capture needs ``weight``)."""
    if param != "weight":
        raise ConfigError(
            f"acodm.reward.params.param: activation capture (sampling.granularity 'sample' or "
            f"reward.estimator 'projected') reads a linear layer's input and output, so it needs "
            f"'weight', got {param!r}"
        )
    modules = dict(model.named_modules())  # also a view over model chunks (Megatron)
    return [modules[name[: -len(".weight")]] for name in param_names]


def _log(cfg: ACODMConfig, sel, probe: ProbeBuffer, how: str) -> None:
    logger.info(
        "acodm: capturing per-domain gradients of %d tensors (%d elements, %s, %s, buffer %.1f MiB, backend %s): %s",
        len(sel.params),
        probe.num_params,
        cfg.reward.estimator,
        how,
        probe.memory_bytes() / 2**20,
        probe.ops.name,
        [p.name for p in sel.params],
    )


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
