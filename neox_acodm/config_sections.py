"""The sections of the ``acodm:`` block (one frozen dataclass each, with its own checks).

See :mod:`neox_acodm.config` for the whole block, parsing and presets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from .typed_yaml import ConfigError, field

_LAYER_WORDS = ("all", "first_and_even")


@dataclass(frozen=True)
class DomainSpec:
    """One data domain: a name and the data prefixes NeoX/Megatron read for it."""

    name: str = field(doc="Unique domain name, used in logs (`acodm/weight/<name>`) and checkpoints.")
    train_path: str | None = field(
        None,
        doc="Indexed-dataset prefix (`.bin/.idx` without extension) of the training data; "
        "must equal the matching entry of NeoX `train_data_paths` when used with NeoX.",
    )
    valid_path: str | None = field(None, doc="Indexed-dataset prefix of the validation data (optional).")
    weight: float | None = field(
        None,
        doc="Initial sampling weight (any positive scale; normalised). Used when `initial_weights` is `config`.",
        rng=(0.0, None, False, None),
    )
    metric_weight: float = field(
        1.0,
        doc="How much this domain's loss counts in the objective the gradient rewards serve "
        "(`reward.mode: aligned` and the `gram_*` mixers): the reward of domain i is "
        "sum_j metric_weight_j <g_i, g_j>. 0 = a domain you train on but do not target.",
        rng=(0.0, None, True, None),
    )


# Role aliases of ParamSelector.module: the MLP/attention projection names of the frameworks we support.
ROLE_PATTERNS: dict[str, str] = {
    "mlp_out": r"(^|\.)mlp\.(dense_4h_to_h|linear2|linear_fc2|c_proj|down_proj|fc2)$",
    "mlp_in": r"(^|\.)mlp\.(dense_h_to_4h|linear1|linear_fc1|c_fc|up_proj|fc1)$",
    "attn_out": r"(^|\.)(attention|self_attention|attn)\.(dense|linear_proj|c_proj|o_proj)$",
    "attn_qkv": r"(^|\.)(attention|self_attention|attn)\.(query_key_value|linear_qkv|c_attn)$",
}


def compile_module_pattern(module: str) -> re.Pattern:
    """The regex a ``ParamSelector.module`` value stands for (a role alias or a regex)."""
    return re.compile(ROLE_PATTERNS.get(module, module))


@dataclass(frozen=True)
class ParamSelector:
    """Selects weight tensors by module role and layer position, never by full parameter name.

    Modules whose qualified name matches ``module`` are ordered by the last numeric component of their
    name (the layer index in every NeoX / Hugging Face / Megatron naming), then ``layers``
    picks among them with Python indexing.
    """

    module: str = field(
        "mlp_out",
        doc="Role alias (`mlp_out`, `mlp_in`, `attn_out`, `attn_qkv`) or a regular "
        "expression searched in the module's qualified name.",
    )
    layers: tuple[int, ...] | str = field(
        (-1, -3, -5),
        doc="Layer positions among the matches: a list of Python indices "
        "(`[-1, -3, -5]`), a slice string (`'::2'`), `all`, or `first_and_even` (layer 0 and "
        "every even 1-based layer, the paper's norm-layer choice).",
    )
    param: str = field("weight", doc="Parameter name inside the module (`weight` or `bias`).")

    def _check(self, path: str) -> None:
        """Cross-field checks (called by the typed-YAML engine after the fields)."""
        if isinstance(self.layers, str) and self.layers not in _LAYER_WORDS:
            parts = self.layers.split(":")
            try:
                if len(parts) not in (2, 3):
                    raise ValueError
                ints = [int(p) if p.strip() else None for p in parts]
            except ValueError:
                raise ConfigError(
                    f"{path}.layers: {self.layers!r} is not a list of ints, a slice like '::2', "
                    f"'all' or 'first_and_even'"
                ) from None
            if len(ints) == 3 and ints[2] == 0:
                raise ConfigError(f"{path}.layers: slice step must not be zero, got {self.layers!r}")
        if isinstance(self.layers, tuple) and not self.layers:
            raise ConfigError(f"{path}.layers: must select at least one layer")
        if not self.module.strip():
            raise ConfigError(
                f"{path}.module: an empty pattern matches every module; give a role "
                f"alias (mlp_out, mlp_in, attn_out, attn_qkv) or a regex"
            )
        try:
            compile_module_pattern(self.module)
        except Exception as e:  # re.error
            raise ConfigError(f"{path}.module: invalid regular expression {self.module!r}: {e}") from None


@dataclass(frozen=True)
class ODMConfig:
    """ODM baseline (Albalak et al. 2023): Exp3 over domains with the training loss as reward."""

    variant: Literal["paper", "smoothed_mean", "exp3"] = field(
        "paper",
        doc="`paper`: importance-weighted EMA of the loss in a Gibbs policy with "
        "eps_{t-1} temperature; `smoothed_mean`: the ODM repo's EMA of exp(loss), linear "
        "normalisation; `exp3`: the repo's cumulative importance-weighted reward.",
    )
    smoothing: float = field(0.9, doc="EMA factor alpha of the reward estimate.", rng=(0.0, 1.0, True, False))
    reward_scale: float = field(
        1.0,
        doc="Multiplier on the loss before it enters the estimate (the repo's exp3 uses 0.1).",
        rng=(0.0, None, False, None),
    )
    warmup_steps: int = field(
        0,
        doc="Steps that sample with the initial weights before the bandit starts; t counts from the end of warm-up.",
        rng=(0, None, True, None),
    )


@dataclass(frozen=True)
class RewardConfig:
    """The gradient-alignment reward of AC-ODM."""

    mode: Literal["paper", "reference", "aligned"] = field(
        "paper",
        doc="`paper`: importance-corrected EMA of the scale-free alignment, scalar "
        "reward sum_i a_i r_i and scalar critic. `reference`: the reference code's z-scored "
        "vector reward and vector critic (with its defects fixed). `aligned`: an unbiased EMA of "
        "the Gram *entries* (Horvitz-Thompson by the plan's inclusion probabilities, updated every "
        "step), r_i = sum_j metric_weight_j G_ij with the self term per `self_term`.",
    )
    params: ParamSelector = field(
        factory=ParamSelector,
        doc="Weight tensors whose per-domain gradients form the reward "
        "(default: MLP output projection of layers -1, -3, -5).",
    )
    estimator: Literal["exact", "sketch", "projected"] = field(
        "exact",
        doc="`exact`: dense per-domain gradient buffer [K, P]; `sketch`: count-sketch "
        "[K, sketch_dim] (unbiased inner products, O(P) per micro-batch, all-reducible; one domain "
        "per micro-batch only); `projected`: per-domain [r, r] Kronecker projections of each "
        "layer's activations and output gradients (unbiased inner products, K*r^2 floats per "
        "layer, cost independent of K; reads no `.grad`, so fused wgrad accumulation stays on).",
    )
    projection_rank: int = field(
        64,
        doc="r of `estimator: projected` (variance of an inner product ~ 4/r of its scale).",
        rng=(1, 4096, True, True),
    )
    sketch_dim: int = field(16384, doc="Count-sketch width k (a multiple of 8).", rng=(8, None, True, None))
    sketch_seed: int = field(
        0, doc="Seed of the count-sketch hashes (identical on every rank).", rng=(0, 2**32 - 1, True, True)
    )
    ema: float = field(
        0.9, doc="xi, the EMA factor of the paper's reward (not given by the paper).", rng=(0.0, 1.0, True, False)
    )
    importance_correction: bool = field(True, doc="Divide the alignment by the domain's sampling probability (paper).")
    self_term: Literal["drop", "lagged", "raw"] = field(
        "lagged",
        doc="`aligned` mode's diagonal <g_i, g_i>: `lagged` = <g_i(t), g_i(t-1)> "
        "(unbiased: independent samples; keeps one more [K, P] buffer), `raw` = ||g_i(t)||^2 "
        "(includes the sampling noise), `drop` = 0 (paper).",
    )
    clip: float = field(
        10.0,
        doc="Clip of the normalised alignment (paper mode) / of W/mean|g| (reference mode, where the code used 999).",
        rng=(0.0, None, False, None),
    )
    estimate: Literal["horvitz_thompson", "masked"] = field(
        "horvitz_thompson",
        doc="The Gram estimate of `aligned`, `gram_softmax` and `mirror`: `horvitz_thompson` = every "
        "step's inverse-probability term in an EMA (unbiased mean; a rare domain's median is 0); `masked` = "
        "each entry's average moves only when observed, self terms from each domain's last observation.",
    )
    backend: Literal["auto", "ext", "torch"] = field(
        "auto", doc="Kernel backend for accumulation/Gram (`NEOX_ACODM_OPS` overrides)."
    )

    def _check(self, path: str) -> None:
        """Cross-field checks (called by the typed-YAML engine after the fields)."""
        if self.sketch_dim % 8:
            raise ConfigError(f"{path}.sketch_dim: must be a multiple of 8, got {self.sketch_dim}")


@dataclass(frozen=True)
class StateConfig:
    """The agent's observation."""

    norm_params: ParamSelector = field(
        factory=lambda: ParamSelector(layers="first_and_even"),
        doc="Weight tensors whose norms and update norms enter the state.",
    )
    normalize: Literal["zscore", "none"] = field(
        "zscore",
        doc="Per-group z-scoring across domains/layers (keeps the state scale-free, which proxy transfer relies on).",
    )
    update_norm: Literal["auto", "exact", "norm_change"] = field(
        "auto",
        doc="`exact`: ||W_t - W_{t-1}|| (paper; keeps a device copy of the norm "
        "layers); `norm_change`: | ||W_t|| - ||W_{t-1}|| | (no copy); `auto`: `exact` without "
        "tensor/pipeline parallelism, `norm_change` with it.",
    )
    include_reward: bool = field(
        False,
        doc="Append the per-domain reward estimate (z-scored, [K]) to the state, so the "
        "critic sees what the reward depends on.",
    )


@dataclass(frozen=True)
class GramMixerConfig:
    """The `gram_softmax` closed form on the captured Gram (no agent)."""

    eta: float = field(
        1.0,
        doc="w_i = prior_i exp(eta z_i), z = the z-scored reward estimate across "
        "domains: a domain one s.d. above the mean gets e^eta times its prior share.",
        rng=(0.0, None, True, None),
    )
    warmup_steps: int = field(
        0, doc="Steps at the prior before the weights move (the estimate still updates).", rng=(0, None, True, None)
    )


@dataclass(frozen=True)
class ProxyConfig:
    """Proxy mode: learn the policy on a small model, transfer it frozen to a large one."""

    role: Literal["none", "source", "target"] = field(
        "none",
        doc="`source`: train normally and export the policy to `policy_path`; "
        "`target`: load the policy frozen and compute no rewards (no gradient capture).",
    )
    policy_path: str | None = field(None, doc="Policy file written (source) or read (target).")

    def _check(self, path: str) -> None:
        """Cross-field checks (called by the typed-YAML engine after the fields)."""
        if self.role != "none" and not self.policy_path:
            raise ConfigError(f"{path}.policy_path: required when proxy.role is {self.role!r}")
