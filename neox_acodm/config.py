"""Typed, frozen configuration for the ``acodm:`` block of a GPT-NeoX / Megatron YAML.

The block is parsed once, at the boundary, into the dataclasses below; no raw dict travels
further. Every field carries its documentation in ``metadata["doc"]`` (the README's config
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

from .config_sections import (ROLE_PATTERNS, AgentConfig, DomainSpec, GramMixerConfig, ODMConfig,
                              ParamSelector, ProxyConfig, RewardConfig, SamplingConfig, StateConfig,
                              compile_module_pattern)
from .typed_yaml import ConfigError, _build, _f, _to_plain, load_yaml, reference_rows

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

    domains: tuple[DomainSpec, ...] = _f(doc="Ordered list of domains (required), or the name of a "
                                         "YAML file holding it (e.g. the bundled `pile-22.yml`).")
    preset: Literal["paper", "aligned"] = _f(
        "paper", doc="Defaults under the keys you set: `paper` = the field defaults below (the "
        "paper's AC-ODM); `aligned` = the improved AC-ODM measured by `bench-mix` (see "
        "`neox_acodm.config.PRESETS` and the README).")
    mixer: Literal["static", "odm", "acodm", "gram_softmax"] = _f(
        "acodm", doc="Mixing method. `gram_softmax`: the same-signal closed form (R&B-style, "
        "arXiv 2505.00358): w = prior * exp(eta z(rhat)) from the `aligned` Gram estimate, no RL.")
    seed: int = _f(1234, doc="Seed of the step plan, cursors, exploration and agent init.",
                   rng=(0, 2**32 - 1, True, True))
    total_steps: int | None = _f(
        None, doc="T, for the progress feature and LR schedules; NeoX/Megatron fill it from "
        "`train_iters` when absent.", rng=(1, None, True, None)
    )
    initial_weights: Literal["auto", "config", "uniform", "tokens", "metric"] = _f(
        "auto", doc="`config`: the domains' `weight`; `uniform`; `tokens`: proportional to "
        "training tokens (natural mix, see `sampling.temperature`); `metric`: proportional to the "
        "domains' `metric_weight` (uniform over the domains you target; the best-measured static "
        "mix of `bench-mix`); `auto`: `config` if every domain has a weight, else uniform."
    )
    sampling: SamplingConfig = _f(factory=SamplingConfig, doc="See `acodm.sampling.*`.")
    odm: ODMConfig = _f(factory=ODMConfig, doc="See `acodm.odm.*`.")
    agent: AgentConfig = _f(factory=AgentConfig, doc="See `acodm.agent.*`.")
    reward: RewardConfig = _f(factory=RewardConfig, doc="See `acodm.reward.*`.")
    state: StateConfig = _f(factory=StateConfig, doc="See `acodm.state.*`.")
    proxy: ProxyConfig = _f(factory=ProxyConfig, doc="See `acodm.proxy.*`.")
    gram: GramMixerConfig = _f(factory=lambda: GramMixerConfig(), doc="See `acodm.gram.*`.")
    schedule_path: str | None = _f(
        None, doc="With `mixer: static`: replay this weight schedule step by step (written by "
        "`neox-acodm export-schedule`; its domains must equal `domains`). The schedule's weights are "
        "used exactly as written.")
    collective_timeout_s: float = _f(
        600.0, doc="Seconds any collective of the plugin may wait before it raises an error naming "
        "itself (a failed or missing rank then stops the job instead of hanging it; gloo and CPU "
        "side; NCCL work also obeys the process group's own timeout).", rng=(0.0, None, False, None))
    log_interval: int = _f(1, doc="Steps between `acodm/*` metric logs.", rng=(1, None, True, None))
    shadow: bool = _f(False, doc="Shadow mode: the mixer runs and learns, but every step is planned "
                      "with the initial weights (the static plan, identical data and losses); the "
                      "weights it would choose are logged as `acodm/shadow_weight/<domain>`.")

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
            raise ConfigError(f"{path}.domains: the weights sum to infinity; use smaller numbers "
                              f"(any positive scale works, they are normalised)")
        if self.initial_weights == "config" and any(d.weight is None for d in self.domains):
            missing = [d.name for d in self.domains if d.weight is None]
            raise ConfigError(f"{path}.initial_weights: 'config' needs a weight on every domain; "
                              f"missing for {missing}")
        if self.sampling.min_weight * k > 1.0:
            raise ConfigError(f"{path}.sampling.min_weight: {self.sampling.min_weight} x {k} "
                              f"domains exceeds 1")
        if self.sampling.max_weight * k < 1.0:
            raise ConfigError(f"{path}.sampling.max_weight: {self.sampling.max_weight} x {k} "
                              f"domains is below 1; raise it to at least {1.0 / k:.4g}")
        if self.agent.objective == "decomposed" and self.reward.mode == "reference":
            raise ConfigError(f"{path}.agent.objective: 'decomposed' needs a scalar reward "
                              f"(reward.mode 'paper' or 'aligned'), got reward.mode 'reference'")
        if self.state.include_reward and self.proxy.role != "none":
            raise ConfigError(f"{path}.state.include_reward: a proxy target computes no rewards, so "
                              f"the transferred actor would see zeros where it was trained on "
                              f"estimates; set it false for proxy runs")
        if self.schedule_path is not None and self.mixer != "static":
            raise ConfigError(f"{path}.schedule_path: replaying a schedule needs mixer 'static', got "
                              f"{self.mixer!r}")
        if self.shadow and self.mixer == "static":
            raise ConfigError(f"{path}.shadow: shadow mode observes a mixer that chooses weights "
                              f"(odm, acodm, gram_softmax); mixer 'static' has nothing to shadow")
        if self.proxy.role != "none" and self.mixer != "acodm":
            raise ConfigError(f"{path}.proxy.role: proxy mode needs mixer 'acodm', got "
                              f"{self.mixer!r}")

    # ---- derived -------------------------------------------------------------------------
    @property
    def num_domains(self) -> int:
        return len(self.domains)

    @property
    def domain_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.domains)

    @property
    def needs_rewards(self) -> bool:
        """True when per-domain gradients must be captured (AC-ODM, not a proxy target)."""
        return (self.mixer == "acodm" and self.proxy.role != "target") or self.mixer == "gram_softmax"

    def replace(self, **changes: Any) -> "ACODMConfig":
        """A copy with top-level fields replaced (validated again)."""
        return parse_config(_to_plain(dataclasses.replace(self, **changes)))

    def to_dict(self) -> dict:
        return _to_plain(self)




#: named defaults applied under the user's keys (``acodm.preset``); ``paper`` = field defaults
PRESETS: dict[str, dict] = {
    "paper": {},
    "aligned": {
        "sampling": {"allocation": "stratified"},
        "reward": {"mode": "aligned", "self_term": "lagged"},
        "state": {"include_reward": True},
        "agent": {"actor_init": "prior", "critic_action": "log_ratio", "objective": "decomposed",
                  "noise_space": "log", "exploration_std": 0.1, "warmup_noise_std": 0.1,
                  "warmup_steps": 0, "hidden_dim": 256, "num_layers": 2, "gamma": 0.5,
                  "tau": 0.05, "kl_coef": 1.0, "actor_lr": 1e-3},
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


#: where ``domains: <file>`` looks last: the lists shipped with the package (``pile-22.yml``)
DOMAIN_LISTS = Path(__file__).resolve().parent / "domain_lists"


def include_domains(block: Any, path: str = "acodm", base_dir: str | Path | None = None) -> Any:
    """``domains: <file>``: the block with the domain list read from a YAML file (a list, or a
    mapping with ``domains:``). A relative name is looked up in ``base_dir`` (the including
    file's folder), the working directory, then :data:`DOMAIN_LISTS`."""
    if not isinstance(block, dict) or not isinstance(block.get("domains"), str):
        return block
    name = Path(block["domains"])
    tried = [name] if name.is_absolute() else [
        *([Path(base_dir) / name] if base_dir is not None else []), Path.cwd() / name, DOMAIN_LISTS / name]
    file = next((f for f in tried if f.is_file()), None)
    if file is None:
        raise ConfigError(f"{path}.domains: domain list file {str(name)!r} not found (looked in "
                          f"{', '.join(str(f.parent) for f in tried)}); give a list or an existing file")
    data = load_yaml(file.read_bytes(), str(file))
    if isinstance(data, dict) and "domains" in data:
        data = data["domains"]
    if not isinstance(data, list):
        raise ConfigError(f"{path}.domains: {file} must hold a list of domains (or a mapping with "
                          f"`domains:`), got {type(data).__name__}")
    return {**block, "domains": data}


def parse_config(block: Any, path: str = "acodm", base_dir: str | Path | None = None) -> ACODMConfig:
    """Parse the ``acodm:`` mapping (already loaded from YAML/JSON) into :class:`ACODMConfig`.
    ``base_dir``: where a relative ``domains: <file>`` is looked up first."""
    if isinstance(block, ACODMConfig):
        return block
    return _build(ACODMConfig, apply_preset(include_domains(block, path, base_dir), path), path)


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
        raise ConfigError(f"acodm.domains: required key is missing ({file} looks like a bare acodm "
                          f"block: it has {sorted(looks_bare)})")
    close = difflib.get_close_matches("acodm", keys, n=1, cutoff=0.6)
    if close:
        raise ConfigError(f"{file}: no 'acodm:' block found; did you mean {close[0]!r}?")
    raise ConfigError(f"{file}: no 'acodm:' block found (add `acodm:` with at least `domains:`)")


def config_reference() -> str:
    """Markdown table of every key, its type, default and meaning (for the README)."""
    return "\n".join(["| key | type | default | meaning |", "|---|---|---|---|"]
                      + reference_rows(ACODMConfig, "acodm"))
