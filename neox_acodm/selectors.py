"""Resolve :class:`~neox_acodm.config.ParamSelector` against a model's modules.

Works with GPT-NeoX (``sequential.5.mlp.linear2``, pipe or not), Hugging Face GPT-NeoX /
Pythia (``gpt_neox.layers.3.mlp.dense_4h_to_h``) and megatron-core
(``decoder.layers.3.mlp.linear_fc2``): modules are matched by role, ordered by the last
numeric component of their qualified name, then picked by position. No parameter name is hard-coded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .config_sections import ROLE_PATTERNS, ParamSelector, compile_module_pattern
from .typed_yaml import ConfigError


@dataclass(frozen=True)
class SelectedParam:
    """One selected tensor: its qualified parameter name, layer key and the tensor itself."""

    name: str
    layer: int
    param: torch.nn.Parameter


def _layer_key(name: str) -> int:
    """The last purely numeric component of the dotted name (``layers.3.mlp.dense_4h_to_h`` -> 3)."""
    ints = [int(c) for c in name.split(".") if c.isdigit()]
    return ints[-1] if ints else -1


def _pick(n: int, layers: tuple[int, ...] | str) -> list[int]:
    if layers == "all":
        return list(range(n))
    if layers == "first_and_even":
        # layer 0 plus every even 1-based layer (0-based 1, 3, 5, ...): the paper's choice
        return sorted({0, *range(1, n, 2)})
    if isinstance(layers, str):
        parts = [int(p) if p.strip() else None for p in layers.split(":")]
        return list(range(n))[slice(*parts)]
    out = []
    for i in layers:
        if not -n <= i < n:
            raise ConfigError(f"layers: index {i} is out of range for {n} matching layers")
        if i % n in out:
            raise ConfigError(f"layers: {list(layers)} selects layer {i % n} of {n} twice")
        out.append(i % n)
    return out


def _checked_pick(n: int, layers: tuple[int, ...] | str) -> list[int]:
    idx = _pick(n, layers)
    if not idx:
        raise ConfigError(f"layers: {layers!r} selects none of the {n} matching layers")
    return idx


def matching_layer_keys(model: torch.nn.Module, selector: ParamSelector) -> list[int]:
    """Sorted layer keys of the modules ``selector`` matches in ``model`` (this stage)."""
    pattern = compile_module_pattern(selector.module)
    return sorted({_layer_key(n) for n, _ in model.named_modules() if n and pattern.search(n)})


def chosen_layer_keys(keys: list[int], selector: ParamSelector, what: str = "selector") -> list[int]:
    """The layer keys ``selector.layers`` picks among the model's ``keys``, in selector order."""
    try:
        return [keys[i] for i in _checked_pick(len(keys), selector.layers)]
    except ConfigError as e:
        raise ConfigError(f"{what}.{e}") from None


def select_params(
    model: torch.nn.Module,
    selector: ParamSelector,
    what: str = "selector",
    allow_empty: bool = False,
    keys: list[int] | None = None,
) -> list[SelectedParam]:
    """Return the selected parameters in layer order.

    ``keys``: the layer keys of *all* pipeline stages (see :func:`matching_layer_keys`); the
    positions in ``selector.layers`` are then resolved against the whole model and this stage
    keeps the chosen layers it owns (possibly none). Raises ``ConfigError`` naming ``what``
    (e.g. ``acodm.reward.params``) when nothing matches, listing a few module names.
    """
    pattern = compile_module_pattern(selector.module)
    matches: list[tuple[int, str, torch.nn.Module]] = []
    for name, mod in model.named_modules():
        if name and pattern.search(name):
            matches.append((_layer_key(name), name, mod))
    if keys is not None:
        if not keys:
            raise ConfigError(f"{what}.module: {selector.module!r} matches no module on any pipeline stage")
        chosen = chosen_layer_keys(keys, selector, what)
        local = {key: (name, mod) for key, name, mod in matches}
        out = []
        for key in chosen:
            if key in local:
                name, mod = local[key]
                p = getattr(mod, selector.param, None)
                if not isinstance(p, torch.nn.Parameter):
                    raise ConfigError(f"{what}.param: module {name!r} has no parameter {selector.param!r}")
                out.append(SelectedParam(f"{name}.{selector.param}", key, p))
        return out
    if not matches:
        if allow_empty:
            return []
        sample = [n for n, _ in model.named_modules() if n][:8]
        raise ConfigError(
            f"{what}.module: {selector.module!r} matches no module of {type(model).__name__} "
            f"(first modules: {sample}); set a role alias ({', '.join(ROLE_PATTERNS)}) or a regex"
        )
    matches.sort(key=lambda m: (m[0], m[1]))
    try:
        idx = _checked_pick(len(matches), selector.layers)
    except ConfigError as e:
        raise ConfigError(f"{what}.{e}") from None
    out = []
    for i in idx:
        layer, name, mod = matches[i]
        p = getattr(mod, selector.param, None)
        if not isinstance(p, torch.nn.Parameter):
            raise ConfigError(f"{what}.param: module {name!r} has no parameter {selector.param!r}")
        out.append(SelectedParam(f"{name}.{selector.param}", layer, p))
    return out


@dataclass(frozen=True)
class Selection:
    """A resolved selector: this rank's tensors and where they sit in the whole model.

    params: the selected tensors this rank (pipeline stage) owns, in layer order.
    positions: [len(params)] index of each among all chosen layers of the model.
    num_layers: chosen layers in the whole model (all stages), >= len(params).
    """

    params: list[SelectedParam]
    positions: list[int]
    num_layers: int


def resolve_selection(
    model: torch.nn.Module,
    selector: ParamSelector,
    what: str,
    all_stages: Callable[[list[int]], list[int]] | None = None,
) -> Selection:
    """The one selector lookup. ``all_stages``: under pipeline parallelism, maps this stage's
    matching layer keys to the union over all stages (a collective, e.g. ``dist.all_stage_keys``),
    so ``selector.layers`` positions refer to the whole model; None = the model is whole here."""
    if all_stages is None:
        params = select_params(model, selector, what)
        return Selection(params, list(range(len(params))), len(params))
    keys = all_stages(matching_layer_keys(model, selector))
    params = select_params(model, selector, what, keys=keys)
    chosen = chosen_layer_keys(keys, selector, what)
    return Selection(params, [chosen.index(p.layer) for p in params], len(chosen))
