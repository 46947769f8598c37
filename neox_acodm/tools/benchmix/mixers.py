"""The mixers ``bench-mix`` compares: each a function of the scenario that returns the ``acodm:``
block it runs with (the same keys a NeoX YAML carries), so every mixer goes through the same
plan, cursors, gradient probe and runtime."""

from __future__ import annotations

from collections.abc import Callable

# block(steps) -> the mixer-specific part of the acodm block for a run of ``steps`` steps
MixerFn = Callable[[int], dict]


def _agent_paper(steps: int) -> dict:
    # the paper's DDPG with its warm-up scaled to the run (833 of 10k steps ~ 8 %); a 256x3 net
    # instead of 1024x5 so that CPU runs stay in budget (the demo's setting)
    return {
        "hidden_dim": 256,
        "num_layers": 3,
        "warmup_steps": max(1, steps // 12),
        "batch_size": 32,
        "actor_lr": 3e-4,
        "critic_lr": 1e-3,
        "tau": 0.01,
        "gamma": 0.9,
        "exploration_std": 0.01,
        "warmup_noise_std": 0.02,
        "device": "cpu",
    }


#: the static mix a sweep on other seeds found best (see :mod:`.oracle`); its weights are given per run
ORACLE = "oracle_static"
#: headroom probe for path dependence: the oracle static mix, then from 2/3 of the run (cosine LR
#: at 0.33 of its peak) half of it moved to the metric weights; fixed before any run (see run.py)
ORACLE_ANNEAL = "oracle_anneal"
ANNEAL_START, ANNEAL_SHARE = 2 / 3, 0.5
#: the static mixes that need no sweep; the best of them is each report's "best prior-information static"
PRIOR_STATICS = ("uniform", "metric_weighted", "temperature")

MIXERS: dict[str, MixerFn] = {
    "static_natural": lambda steps: {"mixer": "static", "initial_weights": "tokens"},
    ORACLE: lambda steps: {"mixer": "static", "initial_weights": "config"},
    ORACLE_ANNEAL: lambda steps: {"mixer": "static", "initial_weights": "config"},  # + schedule_path
    # the mirror-descent closed form, settings frozen in `preset: mirror` before any scenario run
    "mirror": lambda steps: {"preset": "mirror"},
    "static_natural_iid": lambda steps: {
        "mixer": "static",
        "initial_weights": "tokens",
        "sampling": {"allocation": "iid"},
    },
    "uniform": lambda steps: {"mixer": "static", "initial_weights": "uniform"},
    "temperature": lambda steps: {"mixer": "static", "initial_weights": "tokens", "sampling": {"temperature": 2.0}},
    "metric_weighted": lambda steps: {"mixer": "static", "initial_weights": "metric"},
    "odm": lambda steps: {
        "mixer": "odm",
        "initial_weights": "tokens",
        "odm": {"variant": "paper", "smoothing": 0.9, "warmup_steps": max(1, steps // 12)},
    },
    "gram_softmax": lambda steps: {
        "mixer": "gram_softmax",
        "initial_weights": "tokens",
        "reward": {"mode": "aligned", "self_term": "lagged"},
    },
    "acodm_paper": lambda steps: {"mixer": "acodm", "initial_weights": "tokens", "agent": _agent_paper(steps)},
    "acodm": lambda steps: {
        "mixer": "acodm",
        "preset": "aligned",
        "initial_weights": "tokens",
        "agent": {"device": "cpu"},
    },
    "acodm_control": lambda steps: {
        "mixer": "acodm",
        "preset": "aligned",
        "initial_weights": "tokens",
        "agent": {"device": "cpu", "updates_per_step": 0},
    },
    "acodm_shadow": lambda steps: {
        "mixer": "acodm",
        "preset": "aligned",
        "initial_weights": "tokens",
        "agent": {"device": "cpu"},
        "shadow": True,
    },
    "acodm_proxy": lambda steps: {
        "mixer": "acodm",
        "preset": "aligned",
        "initial_weights": "tokens",
        "agent": {"device": "cpu"},
        "state": {"include_reward": False},
    },
}

#: what each mixer is, for the report
DESCRIPTIONS = {
    "static_natural": "static, natural token proportions",
    ORACLE: "static, the best mix of a sweep on other seeds (the reference for regret)",
    ORACLE_ANNEAL: "schedule: the oracle static mix, then from 2/3 of the run half of it on the metric weights",
    "mirror": "mirror descent on the masked Gram estimate from the best prior mix (preset mirror)",
    "static_natural_iid": "static natural with i.i.d. allocation (seed-noise check)",
    "uniform": "static, uniform",
    "temperature": "static, tokens^(1/2) (temperature sampling, T = 2)",
    "metric_weighted": "static, proportional to the metric weights",
    "odm": "ODM (Exp3 on the training loss, paper variant)",
    "gram_softmax": "closed form on the Gram: prior * exp(z(G c)) (R&B-style)",
    "acodm_paper": "AC-ODM, paper mode (reward.mode paper, random actor)",
    "acodm": "AC-ODM, preset aligned (our defaults)",
    "acodm_control": "noise control: preset aligned with no agent updates (prior + its exploration noise)",
    "acodm_shadow": "AC-ODM aligned in shadow mode: learns, but the plan stays static natural",
    "acodm_proxy": "AC-ODM aligned, policy learned on the small proxy model and frozen",
}

#: mixers that need a learned, frozen source policy first
PROXY_MIXERS = ("acodm_proxy",)
