"""The report's figures (matplotlib, Agg): one PNG per panel, each only when its data exists."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from .events import RunScalars

FIGSIZE = (7.0, 3.6)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _lines(ax, family: dict, order: list[str], ylabel: str, log: bool = False) -> None:
    for name in [n for n in order if n in family] + sorted(set(family) - set(order)):
        s = family[name]
        ax.plot(s.steps, s.values, lw=1.0, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    if len(family) <= 12:
        ax.legend(fontsize=7, ncol=2)


def _stacked(family: str, title: str) -> Callable:
    def draw(run: RunScalars, ax) -> bool:
        fam = run.family(family)
        names = [n for n in run.domains if n in fam]
        if not names:
            return False
        steps = fam[names[0]].steps
        stack = np.stack([np.interp(steps, fam[n].steps, fam[n].values) for n in names])
        ax.stackplot(steps, stack, labels=names, linewidth=0)
        ax.set_ylim(0, 1)
        ax.set_xlabel("step")
        ax.set_ylabel("sampling weight")
        ax.set_title(title)
        if len(names) <= 12:
            ax.legend(fontsize=7, ncol=2, loc="upper right")
        return True

    return draw


def _family_panel(family: str, title: str, ylabel: str, log: bool = False) -> Callable:
    def draw(run: RunScalars, ax) -> bool:
        fam = run.family(family)
        if not fam:
            return False
        _lines(ax, fam, run.domains, ylabel, log)
        ax.set_title(title)
        return True

    return draw


def agent(run: RunScalars, ax) -> bool:
    keys = [k for k in ("critic_loss", "actor_loss") if k in run.series]
    if not keys:
        return False
    for k in keys:
        s = run.series[k]
        ax.plot(s.steps, s.values, lw=1.0, label=k)
    ax.set_xlabel("step")
    ax.set_title("agent losses")
    ax.legend(fontsize=7)
    return True


def reward_time(run: RunScalars, ax) -> bool:
    """Share of wall time spent on the reward path between logged steps (cumulative seconds
    differenced over the event files' wall clock)."""
    s = run.series.get("reward_path_seconds")
    if s is None or s.steps.size < 2:
        return False
    dt, dv = np.diff(s.wall), np.diff(s.values)
    ok = (dt > 0) & (dv >= 0)  # the seconds restart from 0 in a resumed process
    if not ok.any():
        return False
    share = dv[ok] / dt[ok]
    ax.plot(s.steps[1:][ok], 100 * share, lw=1.0)
    ax.set_xlabel("step")
    ax.set_ylabel("% of wall time")
    ax.set_title(f"reward path (capture + reduce + mixer), median {100 * np.median(share):.2f} %")
    return True


def grad_cos(run: RunScalars, ax) -> bool:
    got = run.pair_matrix()
    if got is None:
        return False
    step, m = got
    names = run.domains
    off = m.copy()
    np.fill_diagonal(off, np.nan)  # the diagonal is 1 by definition: scale to the pairs
    lim = max(0.05, float(np.nanmax(np.abs(off)))) if np.isfinite(off).any() else 1.0
    im = ax.imshow(off, vmin=-lim, vmax=lim, cmap="RdBu_r")
    if len(names) <= 8:
        for (i, j), v in np.ndenumerate(off):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    ax.set_yticks(range(len(names)), names, fontsize=6)
    ax.set_title(f"per-domain gradient cosine (each pair's latest, up to step {step})")
    ax.figure.colorbar(im, ax=ax, fraction=0.046)
    return True


#: (file stem, drawer, square figure)
PANELS = [
    ("weights", _stacked("weight", "domain weights (stacked)"), False),
    ("shadow_weights", _stacked("shadow_weight", "shadow mode: the weights the mixer would choose"), False),
    ("train_loss", _family_panel("loss", "per-domain training loss", "loss"), False),
    ("val_ppl", _family_panel("val_ppl", "per-domain validation perplexity", "ppl", log=True), False),
    ("rewards", _family_panel("reward", "per-domain reward estimate", "reward"), False),
    ("agent", agent, False),
    ("reward_time", reward_time, False),
    ("projected_epochs", _family_panel("projected_epochs", "projected epochs by the run's end", "epochs"), False),
    ("staleness", _family_panel("staleness", "steps since each domain last drew data", "steps"), False),
    ("at_floor", _family_panel("at_floor", "share of the steps so far at the weight floor", "share"), False),
    ("grad_cos", grad_cos, True),
]


def draw_all(run: RunScalars, out: Path) -> list[Path]:
    """Write every panel that has data as ``out/<stem>.png``; returns the files in order."""
    plt = _plt()
    files = []
    for stem, draw, square in PANELS:
        fig, ax = plt.subplots(figsize=(6.0, 5.2) if square else FIGSIZE)
        if draw(run, ax):
            fig.tight_layout()
            path = out / f"{stem}.png"
            fig.savefig(path, dpi=110)
            files.append(path)
        plt.close(fig)
    return files
