"""``bench-mix`` outputs: report.json (one schema for every scenario), PNG plots, summary.md."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from neox_acodm.checkpoint import atomic_write


def _rounded(obj, digits: int = 6):
    """Floats to ``digits`` significant digits (the report stays diffable and small)."""
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}") if math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {k: _rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v, digits) for v in obj]
    return obj


def write_json(path: Path, obj) -> None:
    atomic_write(path, json.dumps(_rounded(obj), separators=(",", ":")).encode())


def _fmt_ci(p: dict) -> str:
    lo, hi = p["ci95"]
    if not math.isfinite(lo):
        return f"{p['mean']:+.4f}"
    star = " *" if p.get("excludes_zero") else ""
    return f"{p['mean']:+.4f} [{lo:+.4f}, {hi:+.4f}]{star}"


def summary_markdown(rep: dict) -> str:
    sc = rep["scenario"]
    n = len(rep["seeds"])
    lines = [
        f"## bench-mix: {sc['name']} (size {rep['size']}, {n} paired seeds {rep['seeds']}, "
        f"{rep['wall_seconds'] / 60:.1f} min on {rep['threads']} threads)",
        "",
        sc.get("description", "").strip(),
        "",
        "Primary metric: metric-weighted mean per-domain validation loss (nats, full held-out "
        "sets; lower is better). Differences are paired by seed: mean [95 % t-interval]; "
        "`*` = the interval excludes zero.",
        "",
        "| mixer | mean loss (± s.d.) | arith ppl | worst domain | Δ vs static natural | Δ vs uniform "
        "| Δ vs gram_softmax | steps to static's final | reward-path share |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m, row in rep["table"].items():
        ml, ap, wl = row["mean_loss"], row["arith_ppl"], row["worst_loss"]
        cells = [f"{ml['mean']:.4f} ± {ml['sd']:.4f}", f"{ap['mean']:.2f}", f"{wl['mean']:.3f}"]
        for b in ("static_natural", "uniform", "gram_softmax"):
            cells.append(_fmt_ci(row[f"vs_{b}"]) if f"vs_{b}" in row else "—")
        reach = row.get("steps_to_static_final")
        cells.append("—" if reach is None else ", ".join("never" if r is None else str(r) for r in reach))
        cells.append(f"{100 * row['reward_time_share']:.1f}%")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    best, oracle = rep.get("best_prior_static"), rep.get("oracle")
    if best or oracle:
        lines += [
            "",
            "The user's real question: each mixer against the oracle static mix (regret; the best mix "
            f"of a sweep on seeds {oracle['seeds'] if oracle else '—'}, not reported) and against the best "
            f"static mix that needs no sweep ({best or '—'}, the better of uniform, metric-weighted and "
            "temperature by mean).",
            "",
            "| mixer | regret vs oracle static | Δ vs best prior static | scored domain most at the floor |",
            "|---|---|---|---|",
        ]
        for m, row in rep["table"].items():
            cells = [_fmt_ci(row[k]) if k in row else "—" for k in ("vs_oracle_static", "vs_best_prior")]
            fl = row.get("floor")
            if fl is None:
                cells.append("—")
            else:
                cells.append(f"{fl['domain']}: {100 * fl['share']:.0f} % of steps" if fl["share"] > 0 else "none")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        if oracle:
            w = ", ".join(f"{d} {x:.3f}" for d, x in zip(rep["domains"], oracle["weights"]))
            lines += ["", f"Oracle static: `{oracle['chosen']}` of {len(oracle['candidates'])} candidates ({w})."]
    if "acodm" in rep["table"] and "vs_acodm_control" in rep["table"]["acodm"]:
        lines += ["", f"AC-ODM vs its no-learning noise control: {_fmt_ci(rep['table']['acodm']['vs_acodm_control'])}"]
    lines += [
        "",
        "Mean weights over the run (averaged over seeds):",
        "",
        "| mixer | " + " | ".join(rep["domains"]) + " |",
        "|---|" + "---|" * len(rep["domains"]),
    ]
    for m, row in rep["table"].items():
        lines.append(f"| {m} | " + " | ".join(f"{w:.3f}" for w in row["mean_weights"]) + " |")
    lines += ["", "Mixers: " + "; ".join(f"`{m}` = {row['description']}" for m, row in rep["table"].items()), ""]
    return "\n".join(lines)


def plot(rep: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = [str(s) for s in rep["seeds"]]
    mixers = rep["mixers"]
    files = []
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for m in mixers:
        curves = [rep["runs"][m][s]["curve"] for s in seeds]
        steps = [p[0] for p in curves[0]]
        vals = np.array([[p[1] for p in c] for c in curves])
        mean = vals.mean(0)
        ax.plot(steps, mean, marker="o", ms=3, label=m)
        if len(seeds) > 1:
            ax.fill_between(steps, vals.min(0), vals.max(0), alpha=0.15)
    ax.set_xlabel("step")
    ax.set_ylabel("mean per-domain validation loss")
    ax.set_ylim(top=float(np.percentile([rep["runs"][m][s]["curve"][1][1] for m in mixers for s in seeds], 90)))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(f"{rep['scenario']['name']}: validation loss (mean over seeds, band = min..max)")
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=110)
    plt.close(fig)
    files.append("loss.png")

    cols = min(4, len(mixers))
    rows = math.ceil(len(mixers) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), sharey=True, squeeze=False)
    for ax, m in zip(axes.flat, mixers):
        w = np.mean([rep["runs"][m][s]["weights_curve"] for s in seeds], axis=0)
        ax.stackplot(np.arange(len(w)), w.T, labels=rep["domains"])
        ax.set_title(m, fontsize=9)
        ax.set_ylim(0, 1)
    for ax in list(axes.flat)[len(mixers) :]:
        ax.axis("off")
    fig.legend(rep["domains"], loc="lower center", ncol=min(8, len(rep["domains"])), fontsize=8)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(out / "weights.png", dpi=100)
    plt.close(fig)
    files.append("weights.png")

    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(mixers)
    doms = rep["domains"]
    for i, m in enumerate(mixers):
        losses = [np.mean([rep["runs"][m][s]["val_curve"][-1]["loss"][d] for s in seeds]) for d in doms]
        ax.bar(np.arange(len(doms)) + i * width, losses, width, label=m)
    ax.set_xticks(np.arange(len(doms)) + 0.4 - width / 2)
    ax.set_xticklabels(doms, rotation=20, fontsize=8)
    ax.set_ylabel("final validation loss")
    lo = min(min(rep["runs"][m][s]["val_curve"][-1]["loss"].values()) for m in mixers for s in seeds)
    ax.set_ylim(bottom=max(0.0, lo - 0.3))
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(out / "domains.png", dpi=100)
    plt.close(fig)
    files.append("domains.png")
    return files


def write_report(rep: dict, out: Path) -> dict:
    rep["plots"] = plot(rep, out)
    write_json(out / "report.json", rep)
    (out / "summary.md").write_text(summary_markdown(rep))
    return rep


def _delta(p: dict | None) -> str:
    if p is None:
        return "—"
    return f"{p['mean']:+.3f}{'*' if p.get('excludes_zero') else ''}"


def combined_markdown(reports: list[dict]) -> str:
    """One table across scenarios. Cell: mean loss ± s.d. over seeds, then the paired mean
    differences vs static natural / uniform / gram_softmax (``*`` = 95 % interval excludes 0)."""
    mixers: list[str] = []
    for rep in reports:
        mixers += [m for m in rep["mixers"] if m not in mixers]
    lines = ["| mixer | " + " | ".join(r["scenario"]["name"] for r in reports) + " |", "|---|" + "---|" * len(reports)]
    for m in mixers:
        cells = []
        for rep in reports:
            row = rep["table"].get(m)
            if row is None:
                cells.append("—")
                continue
            d = " / ".join(_delta(row.get(f"vs_{b}")) for b in ("static_natural", "uniform", "gram_softmax"))
            cells.append(f"{row['mean_loss']['mean']:.3f} ± {row['mean_loss']['sd']:.3f} ({d})")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
