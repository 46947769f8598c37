"""One self-contained HTML page (figures inlined as base64 PNG) for a run or a bench report."""

from __future__ import annotations

import base64
import datetime
import html
import json
import shutil
from pathlib import Path

from ..args import UsageError
from .events import RunScalars, read_run
from .figures import draw_all

BENCH_SCHEMA = "neox_acodm.bench-mix/1"
STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;"
    "text-align:right}th:first-child,td:first-child{text-align:left}img{max-width:100%}"
    "pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:12px}"
)


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}"></figure>'


def _last(series, default=float("nan")) -> float:
    return float(series.values[-1]) if series is not None and series.values.size else default


def _summary_table(run: RunScalars) -> str:
    cols = [
        ("weight", "weight"),
        ("shadow_weight", "shadow weight"),
        ("loss", "train loss"),
        ("val_ppl", "val ppl"),
        ("projected_epochs", "projected epochs"),
    ]
    fams = {c: run.family(c) for c, _ in cols}
    shown = [(c, t) for c, t in cols if fams[c]]
    rows = ["<tr><th>domain</th>" + "".join(f"<th>{t} (last)</th>" for _, t in shown) + "</tr>"]
    for d in run.domains + (["avg"] if "avg" in fams["val_ppl"] else []):
        cells = "".join(f"<td>{_last(fams[c].get(d)):.4g}</td>" for c, _ in shown)
        rows.append(f"<tr><td>{html.escape(d)}</td>{cells}</tr>")
    return "<table>" + "".join(rows) + "</table>"


def _page(title: str, source: str, body: list[str]) -> str:
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p>source: <code>{html.escape(source)}</code> · generated {when}</p>" + "".join(body) + "</body></html>"
    )


def _run_page(run: RunScalars, out: Path) -> str:
    figs = draw_all(run, out)
    last = max(int(s.steps[-1]) for s in run.series.values())
    body = [f"<p>{len(run.domains)} domains, last logged step {last}.</p>", _summary_table(run)]
    if run.cut_short:
        body.insert(
            0,
            "<p><b>Partial:</b> " + html.escape(", ".join(run.cut_short)) + " ended inside a record "
            "(a run in progress?); this report covers what was written before it.</p>",
        )
    body += [_img(f) for f in figs]
    return _page("AC-ODM run report", run.source, body)


def _bench_page(root: Path, report: dict) -> str:
    body = []
    summary = root / "summary.md"
    if summary.is_file():
        body.append(f"<pre>{html.escape(summary.read_text())}</pre>")
    body += [_img(p) for p in sorted(root.glob("*.png"))]
    return _page(f"bench-mix report: {report.get('scenario', {}).get('name', root.name)}", str(root), body)


def _bench_report(path: Path) -> dict:
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UsageError(f"{path}: not a readable bench-mix report ({type(e).__name__}: {e})") from None
    if not isinstance(report, dict) or report.get("schema") != BENCH_SCHEMA:
        found = report.get("schema") if isinstance(report, dict) else type(report).__name__
        raise UsageError(f"{path}: schema {found!r}, expected {BENCH_SCHEMA!r} (a bench-mix/demo report.json)")
    return report


def write_report(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write ``<out_dir>/report.html`` (and the PNGs) for ``run_dir``: a TensorBoard run
    directory, or a bench-mix/demo directory holding ``report.json``. Default ``out_dir``:
    ``<run_dir>/acodm_report``. Returns the HTML path. Nothing is created unless the run could
    be read, and an output folder this call created is removed again if writing fails."""
    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: {'is a file, not a directory' if root.exists() else 'no such directory'}")
    out = Path(out_dir) if out_dir is not None else root / "acodm_report"
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory; choose another path")
    bench = root / "report.json"
    report = _bench_report(bench) if bench.is_file() else None
    run = read_run(root) if report is None else None
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        text = _bench_page(root, report) if report is not None else _run_page(run, out)
        page = out / "report.html"
        tmp = page.with_suffix(".html.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(page)
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    return page


__all__ = ["write_report"]
