"""The demo's outputs: report.json, PNG plots, summary.md."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def steps_to_reach(curve: list[dict], target: float) -> int | None:
    """First evaluated step whose average perplexity is <= ``target``."""
    for point in curve:
        if point["avg_ppl"] <= target:
            return point["step"]
    return None


def write_json(path: Path, obj) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def plot(report: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mixers = report["mixers"]
    domains = report["domains"]
    files = []
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, r in mixers.items():
        ax.plot([p["step"] for p in r["val_curve"]], [p["avg_ppl"] for p in r["val_curve"]], marker="o",
                ms=3, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("average validation perplexity")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Validation perplexity (mean over domains)")
    fig.tight_layout()
    fig.savefig(out / "val_ppl.png", dpi=110)
    plt.close(fig)
    files.append("val_ppl.png")

    fig, axes = plt.subplots(1, len(mixers), figsize=(4 * len(mixers), 3.6), sharey=True)
    for ax, (name, r) in zip(axes if len(mixers) > 1 else [axes], mixers.items()):
        steps = [w["step"] for w in r["weights_curve"]]
        ws = list(zip(*[w["weights"] for w in r["weights_curve"]]))
        ax.stackplot(steps, ws, labels=domains)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylim(0, 1)
    (axes[0] if len(mixers) > 1 else axes).set_ylabel("sampling weight")
    fig.legend(domains, loc="lower center", ncol=min(8, len(domains)), fontsize=8)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(out / "weights.png", dpi=110)
    plt.close(fig)
    files.append("weights.png")

    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(mixers)
    base = mixers["static"]["final_val_ppl"] if "static" in mixers else None
    for i, (name, r) in enumerate(mixers.items()):
        vals = [r["final_val_ppl"][d] / (base[d] if base else 1.0) for d in domains]
        ax.bar([j + i * width for j in range(len(domains))], vals, width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(domains))], domains, rotation=30, ha="right")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_ylabel("final val ppl / static" if base else "final val ppl")
    ax.legend(fontsize=8)
    ax.set_title("Per-domain final validation perplexity")
    fig.tight_layout()
    fig.savefig(out / "final_ppl.png", dpi=110)
    plt.close(fig)
    files.append("final_ppl.png")
    return files


def summary_markdown(report: dict) -> str:
    mixers, domains = report["mixers"], report["domains"]
    static = mixers.get("static", {}).get("final_val_ppl", {}).get("avg")
    lines = [f"# neox_acodm demo ({report['settings']['mode']})", "",
             f"Model: {report['settings']['model']}; {report['settings']['steps']} steps x "
             f"{report['settings']['tokens_per_step']} tokens; {len(domains)} domains; "
             f"wall time {report['wall_seconds']:.0f} s.", "",
             "| mixer | final avg val ppl | vs static | steps to static's final ppl | reward-path time share |",
             "|---|---|---|---|---|"]
    for name, r in mixers.items():
        avg = r["final_val_ppl"]["avg"]
        rel = f"{100 * (avg / static - 1):+.1f}%" if static else "-"
        st = r["steps_to_static_final"]
        lines.append(f"| {name} | {avg:.2f} | {rel} | {st if st is not None else 'not reached'} | "
                     f"{100 * r['reward_time_share']:.1f}% |")
    lines += ["", "Per-domain final validation perplexity:", "",
              "| domain | " + " | ".join(mixers) + " |", "|---|" + "---|" * len(mixers)]
    for d in domains:
        lines.append(f"| {d} | " + " | ".join(f"{r['final_val_ppl'][d]:.2f}" for r in mixers.values()) + " |")
    lines += ["", "Final weights:", "", "| domain | " + " | ".join(mixers) + " |", "|---|" + "---|" * len(mixers)]
    for i, d in enumerate(domains):
        lines.append(f"| {d} | " + " | ".join(f"{r['weights_curve'][-1]['weights'][i]:.3f}"
                                              for r in mixers.values()) + " |")
    lines += ["", "![validation perplexity](val_ppl.png)", "", "![weights](weights.png)", "",
              "![per-domain](final_ppl.png)", ""]
    return "\n".join(lines)
