"""The embedded demo: a preset of ``bench-mix``, one discriminating scenario on real
multi-domain text, on CPU. See :func:`run_demo` for what runs and docs/benchmark.md for results."""

from __future__ import annotations

from pathlib import Path

from .run import bench

__all__ = ["DEMO_MIXERS", "DEMO_SCENARIO", "DEMO_SEEDS", "run_demo"]

#: the demo = bench-mix on the scenario that discriminates, at a size that fits ~10 min on 2 cores
DEMO_SCENARIO = "noisy"
DEMO_MIXERS = ("static_natural", "uniform", "odm", "gram_softmax", "acodm", "acodm_control")
DEMO_SEEDS = (1, 2, 3)


def run_demo(out: Path, quick: bool = False, cache: Path | None = None, seeds: tuple[int, ...] | None = None) -> dict:
    """``neox-acodm demo``: the ``noisy`` scenario (a 40 % noise domain excluded from the
    metric) with static natural, uniform, ODM, the Gram closed form, AC-ODM (preset aligned)
    and AC-ODM's no-learning noise control, 3 paired seeds. Writes what ``bench-mix`` writes."""
    return bench(DEMO_SCENARIO, Path(out), "quick" if quick else "demo", cache, seeds or DEMO_SEEDS, DEMO_MIXERS)
