"""Benchmark scenarios as data: a YAML file names the domains, their sizes and transforms, the
metric weights, the model, the run length and the seeds. Validated by the same typed engine as
the ``acodm:`` block, so a bad key fails with its dotted path (``scenario.train.steps: ...``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from neox_acodm.typed_yaml import ConfigError, build, field, load_yaml

from .mixers import MIXERS

__all__ = ["Scenario", "builtin_scenarios", "load_scenario"]


@dataclass(frozen=True)
class ScenarioDomain:
    """One benchmark domain, cut from a corpus domain."""

    name: str = field(doc="Domain name in the report.")
    source: str = field(doc="Corpus domain it is cut from (see `neox-acodm build-corpus`).")
    train_tokens: int = field(
        doc="Training tokens kept (the natural mix is proportional to these).", rng=(1024, None, True, None)
    )
    transform: Literal["none", "shuffle_tokens"] = field(
        "none", doc="`shuffle_tokens`: tokens permuted over the whole stream (unigram noise)."
    )
    metric_weight: float = field(
        1.0, doc="Weight in the primary metric (0 = trained on, not scored).", rng=(0.0, None, True, None)
    )
    offset_tokens: int = field(
        0,
        doc="Tokens of the source skipped first (two domains may share a source without sharing text).",
        rng=(0, None, True, None),
    )


@dataclass(frozen=True)
class ModelSize:
    """A Pythia-shaped benchmark model (bounded: bench-mix trains tens of them)."""

    layers: int = field(2, rng=(1, 64, True, True))
    hidden: int = field(64, rng=(8, 8192, True, True))
    heads: int = field(2, rng=(1, 128, True, True))
    seq_len: int = field(64, rng=(8, 8192, True, True))
    proxy_hidden: int = field(32, doc="Width of the proxy-source model.", rng=(8, 8192, True, True))

    def _check(self, path: str) -> None:
        proxy_heads = max(1, self.heads // 2)
        for key, width, heads in (
            ("hidden", self.hidden, self.heads),
            ("proxy_hidden", self.proxy_hidden, proxy_heads),
        ):
            if width % heads or (width // heads) % 4:
                raise ConfigError(
                    f"{path}.{key}: {width} must split into {heads} heads of a size divisible by 4 "
                    f"(rotary embeddings); e.g. {heads * 4 * max(1, width // (4 * heads))}"
                )


@dataclass(frozen=True)
class TrainSize:
    steps: int = field(240, rng=(2, None, True, None))
    micro_batch: int = field(8, rng=(1, None, True, None))
    grad_accum: int = field(8, doc="Micro-batches per step (>= the number of domains).", rng=(1, None, True, None))
    lr: float = field(3e-3, rng=(0.0, None, False, None))
    warmup: int = field(20, rng=(0, None, True, None))
    eval_points: int = field(6, doc="Evaluations over the run (the last at the final step).", rng=(1, None, True, None))


@dataclass(frozen=True)
class Size:
    """One size preset: model + run length + validation tokens per domain."""

    model: ModelSize = field(factory=ModelSize)
    train: TrainSize = field(factory=TrainSize)
    valid_tokens: int = field(
        8192, doc="Held-out tokens per domain; every one is evaluated.", rng=(128, None, True, None)
    )
    vocab: int = field(1024, rng=(256, 262144, True, True))
    cap_mb: float = field(2.0, doc="MB of text per corpus domain.", rng=(0.05, None, True, None))
    token_scale: float = field(
        1.0, doc="Multiplier on every domain's train_tokens (small sizes).", rng=(0.0, 1.0, False, True)
    )


@dataclass(frozen=True)
class Scenario:
    name: str = field(doc="Scenario name.")
    domains: tuple[ScenarioDomain, ...] = field(doc="The domains (>= 2).")
    mixers: tuple[str, ...] = field(doc="Mixers to compare (see `neox_acodm.tools.benchmix.mixers.MIXERS`).")
    description: str = field("", doc="What the scenario tests.")
    seeds: tuple[int, ...] = field(
        (1, 2, 3, 4, 5), doc="Paired seeds: same init and data order for every mixer (5 resolve 0.02 nats at cpu size)."
    )
    oracle_seeds: tuple[int, ...] = field(
        (101, 102), doc="Seeds of the oracle-static sweep (never reported; must not overlap `seeds`)."
    )
    oracle_draws: int = field(
        8, doc="Dirichlet(1) mixes in the oracle sweep, beside the four prior mixes.", rng=(0, 1000, True, True)
    )
    allocation: Literal["iid", "stratified"] = field("stratified", doc="Plan allocation for every mixer.")
    min_weight: float = field(0.005, doc="Weight floor of every mixer.", rng=(0.0, 1.0, True, False))
    sizes: dict = field(
        factory=dict,
        doc="Size presets by name (`cpu`, `quick`, `gpu`, `demo`): "
        "each a mapping of `model`, `train`, `valid_tokens`, `vocab`, `cap_mb`.",
    )


def _check(sc: Scenario, path: str) -> None:
    if len(sc.domains) < 2:
        raise ConfigError(f"{path}.domains: at least two domains are required")
    if set(sc.oracle_seeds) & set(sc.seeds) or not sc.oracle_seeds:
        raise ConfigError(
            f"{path}.oracle_seeds: {list(sc.oracle_seeds)} must be non-empty and disjoint from seeds "
            f"{list(sc.seeds)} (the oracle is chosen on seeds that are not reported)"
        )
    names = [d.name for d in sc.domains]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}.domains: duplicate names {names}")
    if sum(d.metric_weight for d in sc.domains) <= 0:
        raise ConfigError(f"{path}.domains: at least one metric_weight must be positive")
    for m in sc.mixers:
        if m not in MIXERS:
            raise ConfigError(f"{path}.mixers: unknown mixer {m!r} (known: {', '.join(MIXERS)})")
    if not sc.seeds:
        raise ConfigError(f"{path}.seeds: at least one seed is required")
    if "cpu" not in sc.sizes:
        raise ConfigError(f"{path}.sizes.cpu: required (the default size)")
    for key, value in sc.sizes.items():
        size = build(Size, value, f"{path}.sizes.{key}")
        if size.train.grad_accum < len(sc.domains):
            raise ConfigError(
                f"{path}.sizes.{key}.train.grad_accum: {size.train.grad_accum} < "
                f"{len(sc.domains)} domains; every domain must be drawable every step"
            )


def parse_scenario(data: Any, path: str = "scenario") -> Scenario:
    sc = build(Scenario, data, path)
    _check(sc, path)
    return sc


def size_of(sc: Scenario, name: str) -> Size:
    if name not in sc.sizes:
        raise ConfigError(f"scenario {sc.name}: no size {name!r} (has {', '.join(sc.sizes)})")
    return build(Size, sc.sizes[name], f"scenario.sizes.{name}")


def builtin_scenarios() -> dict[str, Path]:
    root = resources.files(__package__) / "scenarios"
    return {Path(str(p)).stem: Path(str(p)) for p in root.iterdir() if str(p).endswith(".yml")}


def load_scenario(name_or_path: str) -> Scenario:
    """A built-in scenario by name, or a scenario YAML file."""
    builtin = builtin_scenarios()
    path = builtin.get(name_or_path, Path(name_or_path))
    if not path.exists():
        raise ConfigError(
            f"{name_or_path}: no such scenario file or built-in scenario (built-in: {', '.join(sorted(builtin))})"
        )
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the scenario file ({e.strerror or e})") from None
    return parse_scenario(load_yaml(raw, str(path)), "scenario")


def to_dict(obj: Any) -> Any:
    return dataclasses.asdict(obj)
