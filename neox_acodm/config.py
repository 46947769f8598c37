"""Typed, frozen configuration for the ``acodm:`` block of a GPT-NeoX / Megatron YAML.

The block is parsed once, at the boundary, into the dataclasses below; no raw dict travels
further. Every field carries its documentation in ``metadata["doc"]`` (docs/config.md's config
reference is generated from it by ``neox-acodm check-config --reference``) and, for numbers,
its allowed range in ``metadata["range"]``. Errors are :class:`ConfigError` (a ``ValueError``)
whose one-line message starts with the dotted key path, e.g.::

    acodm.agent.gamma: must be in [0, 1), got 1.5
    acodm.agent.gama: unknown key; did you mean 'gamma'? (valid: batch_size, buffer_size, ...)
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .agent.config import AgentConfig
from .config_sections import (
    ROLE_PATTERNS,
    DomainSpec,
    GramMixerConfig,
    ODMConfig,
    ParamSelector,
    ProxyConfig,
    RewardConfig,
    StateConfig,
    compile_module_pattern,
)
from .domain_files import include_domains
from .mixers import MIXERS, check_block
from .mixers.mirror import MirrorConfig
from .presets import PRESETS, apply_preset
from .schedule import resolve_schedule_path
from .step_data import SamplingConfig
from .typed_yaml import ConfigError, build, field, load_yaml, reference_rows, to_plain

#: the ``acodm.mixer`` values (the mixer factory's names)
MixerName = Literal[tuple(MIXERS)]  # type: ignore[valid-type]
#: the ``acodm.preset`` values
PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]

__all__ = [
    "ACODMConfig",
    "AgentConfig",
    "ConfigError",
    "DomainSpec",
    "GramMixerConfig",
    "ODMConfig",
    "ParamSelector",
    "ProxyConfig",
    "RewardConfig",
    "SamplingConfig",
    "StateConfig",
    "ROLE_PATTERNS",
    "compile_module_pattern",
    "load_config",
    "parse_config",
    "config_reference",
]


@dataclass(frozen=True)
class ACODMConfig:
    """The whole ``acodm:`` block."""

    domains: tuple[DomainSpec, ...] = field(
        doc="Ordered list of domains (required), or the name of a "
        "YAML file holding it (e.g. the bundled `pile-22.yml`)."
    )
    preset: PresetName = field(
        "paper",
        doc="Defaults under the keys you set: `paper` = the field defaults below (the "
        "paper's AC-ODM); `aligned` = the improved AC-ODM measured by `bench-mix`; `mirror` = the "
        "mirror-descent closed form on the masked Gram estimate, started at the best mix that needs "
        "no sweep (see the presets table below and docs/algorithm.md).",
    )
    mixer: MixerName = field(
        "acodm",
        doc="Mixing method. `gram_softmax`: the same-signal closed form (R&B-style, "
        "arXiv 2505.00358): w = prior * exp(eta z(rhat)) from the `aligned` Gram estimate, no RL. "
        "`mirror`: cumulative mirror descent on the same estimate (see `acodm.mirror.*`), no RL.",
    )
    seed: int = field(
        1234, doc="Seed of the step plan, cursors, exploration and agent init.", rng=(0, 2**32 - 1, True, True)
    )
    total_steps: int | None = field(
        None,
        doc="T, for the progress feature and LR schedules; NeoX/Megatron fill it from `train_iters` when absent.",
        rng=(1, None, True, None),
    )
    initial_weights: Literal["auto", "config", "uniform", "tokens", "metric", "prior"] = field(
        "auto",
        doc="`config`: the domains' `weight`; `uniform`; `tokens`: proportional to "
        "training tokens (natural mix, see `sampling.temperature`); `metric`: proportional to the "
        "domains' `metric_weight` (uniform over the domains you target; the best-measured static "
        "mix of `bench-mix`); `prior`: the best mix that needs no sweep, `metric` when the metric "
        "weights differ, else temperature sampling, tokens^(1/T) with T = `sampling.temperature` (2 when "
        "it is 1); `auto`: `config` if every domain has a "
        "weight, else uniform.",
    )
    mirror: MirrorConfig = field(factory=MirrorConfig, doc="See `acodm.mirror.*`.")
    sampling: SamplingConfig = field(factory=SamplingConfig, doc="See `acodm.sampling.*`.")
    odm: ODMConfig = field(factory=ODMConfig, doc="See `acodm.odm.*`.")
    agent: AgentConfig = field(factory=AgentConfig, doc="See `acodm.agent.*`.")
    reward: RewardConfig = field(factory=RewardConfig, doc="See `acodm.reward.*`.")
    state: StateConfig = field(factory=StateConfig, doc="See `acodm.state.*`.")
    proxy: ProxyConfig = field(factory=ProxyConfig, doc="See `acodm.proxy.*`.")
    gram: GramMixerConfig = field(factory=lambda: GramMixerConfig(), doc="See `acodm.gram.*`.")
    schedule_path: str | None = field(
        None,
        doc="With `mixer: static`: replay this weight schedule step by step (written by "
        "`neox-acodm export-schedule`; its domains must equal `domains`). The schedule's weights are "
        "used exactly as written.",
    )
    collective_timeout_s: float = field(
        600.0,
        doc="Seconds any collective of the plugin may wait before it raises an error naming "
        "itself (a failed or missing rank then stops the job instead of hanging it; gloo and CPU "
        "side; NCCL work also obeys the process group's own timeout).",
        rng=(0.0, None, False, None),
    )
    log_interval: int = field(1, doc="Steps between `acodm/*` metric logs.", rng=(1, None, True, None))
    shadow: bool = field(
        False,
        doc="Shadow mode: the mixer runs and learns, but every step is planned "
        "with the initial weights (the static plan, identical data and losses); the "
        "weights it would choose are logged as `acodm/shadow_weight/<domain>`.",
    )

    def _check(self, path: str) -> None:
        """Cross-field checks (called by the typed-YAML engine after the fields)."""
        if not self.domains:
            raise ConfigError(f"{path}.domains: at least one domain is required")
        seen: set[str] = set()
        for i, d in enumerate(self.domains):
            if not d.name:
                raise ConfigError(f"{path}.domains[{i}].name: must be a non-empty string")
            if d.name in seen:
                raise ConfigError(f"{path}.domains[{i}].name: duplicate domain name {d.name!r}")
            seen.add(d.name)
        k = len(self.domains)
        given = [d.weight for d in self.domains if d.weight is not None]
        if given and not math.isfinite(sum(given)):
            raise ConfigError(
                f"{path}.domains: the weights sum to infinity; use smaller numbers "
                f"(any positive scale works, they are normalised)"
            )
        if self.initial_weights == "config" and any(d.weight is None for d in self.domains):
            missing = [d.name for d in self.domains if d.weight is None]
            raise ConfigError(f"{path}.initial_weights: 'config' needs a weight on every domain; missing for {missing}")
        if self.sampling.min_weight * k > 1.0:
            raise ConfigError(f"{path}.sampling.min_weight: {self.sampling.min_weight} x {k} domains exceeds 1")
        if self.sampling.max_weight * k < 1.0:
            raise ConfigError(
                f"{path}.sampling.max_weight: {self.sampling.max_weight} x {k} "
                f"domains is below 1; raise it to at least {1.0 / k:.4g}"
            )
        if self.agent.objective == "decomposed" and self.reward.mode == "reference":
            raise ConfigError(
                f"{path}.agent.objective: 'decomposed' needs a scalar reward "
                f"(reward.mode 'paper' or 'aligned'), got reward.mode 'reference'"
            )
        if self.state.include_reward and self.proxy.role != "none":
            raise ConfigError(
                f"{path}.state.include_reward: a proxy target computes no rewards, so "
                f"the transferred actor would see zeros where it was trained on "
                f"estimates; set it false for proxy runs"
            )
        if self.sampling.granularity == "sample" and self.reward.estimator == "sketch":
            raise ConfigError(
                f"{path}.reward.estimator: 'sketch' hooks whole-micro-batch gradients; with "
                f"sampling.granularity 'sample' (mixed micro-batches) use 'exact' or 'projected'"
            )
        check_block(self, path)  # what the chosen mixer can do (schedule, shadow, proxy)

    # ---- derived -------------------------------------------------------------------------
    @property
    def num_domains(self) -> int:
        return len(self.domains)

    @property
    def domain_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.domains)

    def replace(self, **changes: Any) -> ACODMConfig:
        """A copy with top-level fields replaced (validated again)."""
        return parse_config(to_plain(dataclasses.replace(self, **changes)))

    def to_dict(self) -> dict:
        return to_plain(self)


def parse_config(block: Any, path: str = "acodm", base_dir: str | Path | None = None) -> ACODMConfig:
    """Parse the ``acodm:`` mapping (already loaded from YAML/JSON) into :class:`ACODMConfig`.
    ``base_dir``: where a relative ``domains: <file>`` or ``schedule_path`` is looked up first;
    a schedule is read and validated here, so a bad one fails at ``check-config``."""
    if isinstance(block, ACODMConfig):
        return block
    cfg = build(ACODMConfig, apply_preset(include_domains(block, path, base_dir), path), path)
    if cfg.schedule_path is not None:
        found = resolve_schedule_path(cfg.schedule_path, base_dir, cfg.domain_names, f"{path}.schedule_path")
        cfg = dataclasses.replace(cfg, schedule_path=found)
    return cfg


def load_config(file: str | Path) -> ACODMConfig:
    """Load a YAML file that either *is* an ``acodm`` block or contains one at top level
    (a NeoX YAML with an ``acodm:`` key). Every failure is a one-line :class:`ConfigError`."""
    file = Path(file)
    try:
        raw = file.read_bytes()
    except OSError as e:
        raise ConfigError(f"{file}: cannot read config file ({e.strerror or e})") from None
    data = load_yaml(raw, str(file))
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: expected a mapping at top level")
    try:
        if "acodm" in data:
            return parse_config(data["acodm"], base_dir=file.parent)
        if "domains" in data:
            return parse_config(data, base_dir=file.parent)
    except RecursionError:
        raise ConfigError(f"{file}: the acodm block nests too deeply") from None
    keys = [str(k) for k in data]
    close = difflib.get_close_matches("domains", keys, n=1, cutoff=0.7)
    if close:
        raise ConfigError(f"acodm.domains: required key is missing; did you mean {close[0]!r}? ({file})")
    looks_bare = {"mixer", "agent", "reward", "sampling", "seed"} & set(keys)
    if looks_bare:
        raise ConfigError(
            f"acodm.domains: required key is missing ({file} looks like a bare acodm "
            f"block: it has {sorted(looks_bare)})"
        )
    close = difflib.get_close_matches("acodm", keys, n=1, cutoff=0.6)
    if close:
        raise ConfigError(f"{file}: no 'acodm:' block found; did you mean {close[0]!r}?")
    raise ConfigError(f"{file}: no 'acodm:' block found (add `acodm:` with at least `domains:`)")


def _flat(d: dict, prefix: str) -> list[tuple[str, Any]]:
    out = []
    for k, v in d.items():
        out += _flat(v, f"{prefix}.{k}") if isinstance(v, dict) else [(f"{prefix}.{k}", v)]
    return out


def config_reference() -> str:
    """The reference of docs/config.md: every key (type, default, meaning), then each preset's
    overrides (applied under the keys a block sets)."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|", *reference_rows(ACODMConfig, "acodm")]
    rows += [
        "",
        "Presets (`acodm.preset`): the defaults each one sets; keys the block gives win.",
        "",
        "| preset | key | value |",
        "|---|---|---|",
    ]
    for name, over in PRESETS.items():
        flat = _flat(over, "acodm")
        rows += [
            f"| `{name}` | {'`' + k + '`' if k else '(none)'} | {'`' + repr(v) + '`' if k else 'the field defaults'} |"
            for k, v in (flat or [("", None)])
        ]
    return "\n".join(rows)
