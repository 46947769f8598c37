"""Bad inputs for every surface, generated per surface, against one contract: a bad input gets
exit 2 and one to three lines starting with ``error`` that name the file or flag; no traceback;
nothing is created, changed or half-written. State files: a crafted but correctly checksummed
state is refused with a CheckpointError and the runtime is left exactly as it was."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from neox_acodm import checkpoint
from neox_acodm.checkpoint import CheckpointError
from neox_acodm.runtime import MixingRuntime
from neox_acodm.tools.cli import main

from conftest import TinyLM, tiny_cfg, train_steps


# -- the contract ------------------------------------------------------------------------------
def _snapshot(root):
    return {
        str(p.relative_to(root)): (p.is_dir(), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
    }


def _refused(argv, root, capsys, must_name: str | None = None):
    before = _snapshot(root)
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        rc = e.code
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error")]
    assert rc == 2, (argv, rc, err[-1500:])
    assert "Traceback" not in err and 1 <= len(err.strip().splitlines()) <= 3, err
    assert lines and lines[0].startswith("error"), err
    if must_name is not None:
        assert must_name in err, (must_name, err)
    assert _snapshot(root) == before, f"{argv} changed files: {set(_snapshot(root)) ^ set(before)}"


# -- report ----------------------------------------------------------------------------------
def _events(root, scalars=(("acodm/weight/a", 0.5), ("acodm/weight/b", 0.5)), steps=5):
    from torch.utils.tensorboard import SummaryWriter

    root.mkdir(parents=True, exist_ok=True)
    with SummaryWriter(str(root)) as w:
        for s in range(1, steps + 1):
            for tag, v in scalars:
                w.add_scalar(tag, v, s)
    return next(root.glob("events.out.tfevents.*"))


def _flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x5A
    path.write_bytes(bytes(data))


def _dir(root, files: dict):
    """``root`` made, holding ``files`` (name -> str or bytes); returns it."""
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (root / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return root


REPORT_CASES = {
    "missing": lambda r: (r / "nope", "nope"),
    "file": lambda r: (_dir(r, {"f.txt": "x"}) / "f.txt", "f.txt"),
    "empty dir": lambda r: (_dir(r / "e", {}), "no TensorBoard event files"),
    "other files": lambda r: (_dir(r / "o", {"log.txt": "x"}), "event files"),
    "no acodm tags": lambda r: (_events(r / "t", (("lm_loss", 1.0),)).parent, "no acodm/"),
    "garbage events": lambda r: (_dir(r / "g", {"events.out.tfevents.1": bytes(range(256)) * 8}), "tfevents"),
    "empty events": lambda r: (_dir(r / "z", {"events.out.tfevents.1": b""}), "z"),
    "json garbage": lambda r: (_dir(r / "j", {"report.json": "{not json"}), "report.json"),
    "json list": lambda r: (_dir(r / "l", {"report.json": "[1, 2]"}), "report.json"),
    "json foreign": lambda r: (_dir(r / "k", {"report.json": '{"schema": "x/1"}'}), "schema"),
    "json binary": lambda r: (_dir(r / "b", {"report.json": b"\xff\xfe\x00"}), "report.json"),
    "json empty": lambda r: (_dir(r / "m", {"report.json": ""}), "report.json"),
}
# corrupt records at several places (a damaged length field or payload; more records follow)
for _off in (0, 3, 9, 14, 30, 60, 90, 120):
    REPORT_CASES[f"corrupt@{_off}"] = (
        lambda off: lambda r: (_flip(_events(r / f"c{off}", steps=8), off) or r / f"c{off}", "corrupt")
    )(_off)


@pytest.mark.parametrize("case", sorted(REPORT_CASES))
def test_report_refuses(case, tmp_path, capsys):
    pytest.importorskip("tensorboard")
    run_dir, name = REPORT_CASES[case](tmp_path)
    _refused(["report", run_dir, "--out", tmp_path / "out"], tmp_path, capsys, name)


@pytest.mark.parametrize("case", ["out is a file", "out under a file"])
def test_report_refuses_bad_out(case, tmp_path, capsys):
    pytest.importorskip("tensorboard")
    run = _events(tmp_path / "run").parent
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" if case == "out is a file" else tmp_path / "file" / "sub"
    _refused(["report", run, "--out", out], tmp_path, capsys, "--out" if case == "out is a file" else None)


def test_report_of_a_cut_short_file_is_partial_and_says_so(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    f = _events(tmp_path / "run", steps=6)
    f.write_bytes(f.read_bytes()[:-7])  # a run killed while writing its last record
    assert main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 0
    assert "Partial" in (tmp_path / "out" / "report.html").read_text()


# -- schedules (through check-config: the file is opened and validated there) ---------------
SCHEDULES = {
    "binary": b"\x00\x01\xff\xfe",
    "not a mapping": "[1, 2]",
    "wrong format": "format: other/1\ndomains: [d0, d1, d2]\nphases: [{start: 0, weights: [1, 0, 0]}]",
    "domains not list": "format: neox_acodm.schedule/1\ndomains: d0\nphases: [{start: 0, weights: [1, 0, 0]}]",
    "domains ints": "format: neox_acodm.schedule/1\ndomains: [1, 2, 3]\nphases: [{start: 0, weights: [1, 0, 0]}]",
    "domains repeat": "format: neox_acodm.schedule/1\ndomains: [d0, d0, d2]\nphases: [{start: 0, weights: [1, 0, 0]}]",
    "domains differ": "format: neox_acodm.schedule/1\ndomains: [x, y, z]\nphases: [{start: 0, weights: [1, 0, 0]}]",
    "domains fewer": "format: neox_acodm.schedule/1\ndomains: [d0, d1]\nphases: [{start: 0, weights: [1, 0]}]",
    "no phases": "format: neox_acodm.schedule/1\ndomains: [d0, d1, d2]",
    "phases mapping": "format: neox_acodm.schedule/1\ndomains: [d0, d1, d2]\nphases: {start: 0}",
    "phases int": "format: neox_acodm.schedule/1\ndomains: [d0, d1, d2]\nphases: 3",
    "phases empty": "format: neox_acodm.schedule/1\ndomains: [d0, d1, d2]\nphases: []",
    "phase not mapping": "format: neox_acodm.schedule/1\ndomains: [d0, d1, d2]\nphases: [[0, 1]]",
}
_W = "format: neox_acodm.schedule/1\ndomains: [d0, d1, d2]\nphases: [{start: %s, weights: %s}]"
for _name, _start, _w in [
    ("start missing", None, "[1, 0, 0]"),
    ("start bool", "true", "[1, 0, 0]"),
    ("start 3", "3", "[1, 0, 0]"),
    ("start -1", "-1", "[1, 0, 0]"),
    ("start float", "0.0", "[1, 0, 0]"),
    ("start string", "'0'", "[1, 0, 0]"),
    ("weights missing", "0", None),
    ("weights short", "0", "[1, 0]"),
    ("weights long", "0", "[1, 0, 0, 0]"),
    ("weights bool", "0", "[true, false, false]"),
    ("weights strings", "0", "['1', '0', '0']"),
    ("weights negative", "0", "[1.5, -0.5, 0]"),
    ("weights nan", "0", "[.nan, 0, 1]"),
    ("weights inf", "0", "[.inf, 0, 0]"),
    ("weights sum", "0", "[0.5, 0.6, 0]"),
    ("weights zero", "0", "[0, 0, 0]"),
    ("weights huge", "0", "[1e400, 0, 0]"),
    ("weights bigint", "0", f"[{10**400}, 0, 0]"),
    ("weights null", "0", "[null, 1, 0]"),
    ("weights nested", "0", "[[1], 0, 0]"),
    ("weights mapping", "0", "{a: 1}"),
]:
    if _start is None:
        SCHEDULES[_name] = "format: neox_acodm.schedule/1\ndomains: [d0, d1, d2]\nphases: [{weights: [1, 0, 0]}]"
    elif _w is None:
        SCHEDULES[_name] = "format: neox_acodm.schedule/1\ndomains: [d0, d1, d2]\nphases: [{start: 0}]"
    else:
        SCHEDULES[_name] = _W % (_start, _w)
SCHEDULES["not increasing"] = (
    "format: neox_acodm.schedule/1\ndomains: [d0, d1, d2]\nphases: [{start: 0, weights: "
    "[1, 0, 0]}, {start: 0, weights: [0, 1, 0]}]"
)
SCHEDULES["yaml syntax"] = "format: neox_acodm.schedule/1\ndomains: [d0, d1\nphases: ["


def _config(tmp_path, schedule_path: str, mixer: str = "static"):
    cfg = tmp_path / "acodm.yml"
    cfg.write_text(
        f"acodm:\n  mixer: {mixer}\n  domains: [{{name: d0}}, {{name: d1}}, {{name: d2}}]\n"
        f"  schedule_path: {schedule_path}\n"
    )
    return cfg


@pytest.mark.parametrize("case", sorted(SCHEDULES))
def test_schedule_refused_at_check_config(case, tmp_path, capsys):
    text = SCHEDULES[case]
    (tmp_path / "s.yml").write_bytes(text if isinstance(text, bytes) else text.encode())
    _refused(["check-config", _config(tmp_path, "s.yml")], tmp_path, capsys, "s.yml")


@pytest.mark.parametrize("case", ["missing file", "a directory", "not static"])
def test_schedule_path_refused(case, tmp_path, capsys):
    (tmp_path / "dir").mkdir()
    (tmp_path / "ok.yml").write_text(_W % ("0", "[1, 0, 0]"))
    path, mixer = {
        "missing file": ("nope.yml", "static"),
        "a directory": ("dir", "static"),
        "not static": ("ok.yml", "odm"),
    }[case]
    _refused(["check-config", _config(tmp_path, path, mixer)], tmp_path, capsys, "schedule_path")


def test_relative_schedule_path_resolves_from_the_config_folder(tmp_path, monkeypatch):
    from neox_acodm.config import load_config

    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "s.yml").write_text(_W % ("0", "[0.5, 0.5, 0]"))
    monkeypatch.chdir(tmp_path)  # elsewhere: the config's folder is looked in first
    cfg = load_config(_config(tmp_path / "conf", "s.yml"))
    assert cfg.schedule_path == str(tmp_path / "conf" / "s.yml")


# -- export-schedule -------------------------------------------------------------------------
def _report(tmp_path, curve, domains=("a", "b")):
    f = tmp_path / "report.json"
    f.write_text(json.dumps({"domains": list(domains), "runs": {"m": {"1": {"weights_curve": curve}}}}))
    return f


EXPORTS = {
    "no source": lambda t: ["--out", t / "s.yml"],
    "both sources": lambda t: [
        "--run",
        t,
        "--report",
        _report(t, [[1, 0]] * 3),
        "--mixer",
        "m",
        "--seed",
        1,
        "--out",
        t / "s.yml",
    ],
    "report without mixer": lambda t: ["--report", _report(t, [[1, 0]] * 3), "--out", t / "s.yml"],
    "report missing": lambda t: ["--report", t / "nope.json", "--mixer", "m", "--seed", 1, "--out", t / "s.yml"],
    "report is dir": lambda t: ["--report", t, "--mixer", "m", "--seed", 1, "--out", t / "s.yml"],
    "report bad json": lambda t: [
        "--report",
        (t / "r.json").write_text("{") and t / "r.json",
        "--mixer",
        "m",
        "--seed",
        1,
        "--out",
        t / "s.yml",
    ],
    "report list": lambda t: [
        "--report",
        (t / "r.json").write_text("[]") and t / "r.json",
        "--mixer",
        "m",
        "--seed",
        1,
        "--out",
        t / "s.yml",
    ],
    "unknown mixer": lambda t: [
        "--report",
        _report(t, [[1, 0]] * 3),
        "--mixer",
        "x",
        "--seed",
        1,
        "--out",
        t / "s.yml",
    ],
    "unknown seed": lambda t: ["--report", _report(t, [[1, 0]] * 3), "--mixer", "m", "--seed", 9, "--out", t / "s.yml"],
    "curve not list": lambda t: ["--report", _report(t, "x"), "--mixer", "m", "--seed", 1, "--out", t / "s.yml"],
    "curve too short": lambda t: ["--report", _report(t, [[1, 0]]), "--mixer", "m", "--seed", 1, "--out", t / "s.yml"],
    "every 0": lambda t: [
        "--report",
        _report(t, [[1, 0]] * 3),
        "--mixer",
        "m",
        "--seed",
        1,
        "--every",
        0,
        "--out",
        t / "s.yml",
    ],
    "every -3": lambda t: [
        "--report",
        _report(t, [[1, 0]] * 3),
        "--mixer",
        "m",
        "--seed",
        1,
        "--every",
        -3,
        "--out",
        t / "s.yml",
    ],
    "every abc": lambda t: [
        "--report",
        _report(t, [[1, 0]] * 3),
        "--mixer",
        "m",
        "--seed",
        1,
        "--every",
        "abc",
        "--out",
        t / "s.yml",
    ],
    "seed -1": lambda t: ["--report", _report(t, [[1, 0]] * 3), "--mixer", "m", "--seed", -1, "--out", t / "s.yml"],
    "out is dir": lambda t: ["--report", _report(t, [[1, 0]] * 3), "--mixer", "m", "--seed", 1, "--out", t],
    "out folder missing": lambda t: [
        "--report",
        _report(t, [[1, 0]] * 3),
        "--mixer",
        "m",
        "--seed",
        1,
        "--out",
        t / "no" / "s.yml",
    ],
    "run missing": lambda t: ["--run", t / "nope", "--out", t / "s.yml"],
    "run is file": lambda t: ["--run", _report(t, [[1, 0]] * 3), "--out", t / "s.yml"],
    "run empty": lambda t: ["--run", _dir(t / "e", {}), "--out", t / "s.yml"],
}
for _name, _rows in [
    ("nan", [[float("nan"), 1.0]]),
    ("negative", [[-0.5, 1.5]]),
    ("short row", [[1.0]]),
    ("strings", [["a", "b"]]),
    ("sum 2", [[1.0, 1.0]]),
    ("zeros", [[0.0, 0.0]]),
    ("inf", [[float("inf"), 0.0]]),
    ("ragged", [[1.0, 0.0], [1.0]]),
]:
    EXPORTS[f"weights {_name}"] = (
        lambda rows: (
            lambda t: ["--report", _report(t, rows + [[0.5, 0.5]]), "--mixer", "m", "--seed", 1, "--out", t / "s.yml"]
        )
    )(_rows)


@pytest.mark.parametrize("case", sorted(EXPORTS))
def test_export_schedule_refuses(case, tmp_path, capsys):
    argv = EXPORTS[case](tmp_path)
    _refused(["export-schedule", *argv], tmp_path, capsys)
    assert not (tmp_path / "s.yml").exists()


# -- flags of the other subcommands ------------------------------------------------------------
FLAGS = {
    "bench-mix seeds abc": ["bench-mix", "--scenario", "noisy", "--out", "{t}/o", "--seeds", "abc"],
    "bench-mix seeds empty item": ["bench-mix", "--scenario", "noisy", "--out", "{t}/o", "--seeds", "1,,2"],
    "bench-mix seeds repeated": ["bench-mix", "--scenario", "noisy", "--out", "{t}/o", "--seeds", "1,1"],
    "bench-mix seeds negative": ["bench-mix", "--scenario", "noisy", "--out", "{t}/o", "--seeds", "-1"],
    "bench-mix mixers empty": ["bench-mix", "--scenario", "noisy", "--out", "{t}/o", "--mixers", ","],
    "bench-mix mixers unknown": ["bench-mix", "--scenario", "noisy", "--out", "{t}/o", "--mixers", "nope", "--quick"],
    "bench-mix mixers repeated": ["bench-mix", "--scenario", "noisy", "--out", "{t}/o", "--mixers", "odm,odm"],
    "bench-mix size unknown": ["bench-mix", "--scenario", "noisy", "--out", "{t}/o", "--size", "huge"],
    "bench-mix scenario missing": ["bench-mix", "--scenario", "{t}/nope.yml", "--out", "{t}/o"],
    "bench-mix out is a file": ["bench-mix", "--scenario", "noisy", "--out", "{t}/file"],
    "bench-mix no out": ["bench-mix", "--scenario", "noisy"],
    "bench-mix combine missing": ["bench-mix", "--combine", "{t}/nope"],
    "bench-mix combine no report": ["bench-mix", "--combine", "{t}"],
    "bench-mix combine out dir": ["bench-mix", "--combine", "{t}", "--out", "{t}"],
    "demo out is a file": ["demo", "--out", "{t}/file", "--quick"],
    "demo seeds": ["demo", "--out", "{t}/o", "--seeds", "x"],
    "build-corpus cap -1": ["build-corpus", "--out", "{t}/c", "--cap-mb", "-1"],
    "build-corpus cap 0": ["build-corpus", "--out", "{t}/c", "--cap-mb", "0"],
    "build-corpus cap nan": ["build-corpus", "--out", "{t}/c", "--cap-mb", "nan"],
    "build-corpus cap inf": ["build-corpus", "--out", "{t}/c", "--cap-mb", "inf"],
    "build-corpus cap abc": ["build-corpus", "--out", "{t}/c", "--cap-mb", "abc"],
    "build-corpus out file": ["build-corpus", "--out", "{t}/file"],
    "bench-reward P -5": ["bench-reward", "--P", "-5"],
    "bench-reward P 0": ["bench-reward", "--P", "0"],
    "bench-reward P abc": ["bench-reward", "--P", "abc"],
    "bench-reward P huge": ["bench-reward", "--P", str(10**12), "--D", "22"],
    "bench-reward D 0": ["bench-reward", "--D", "0"],
    "bench-reward k 100": ["bench-reward", "--k", "100"],
    "bench-reward k 0": ["bench-reward", "--k", "0"],
    "bench-reward k -8": ["bench-reward", "--k", "-8"],
    "bench-reward repeats -1": ["bench-reward", "--repeats", "-1"],
    "bench-reward repeats 0": ["bench-reward", "--repeats", "0"],
    "bench-reward step-model foo": ["bench-reward", "--step-model", "foo"],
    "bench-reward step-model 0x64": ["bench-reward", "--step-model", "0x64"],
    "bench-reward step-model 2x100": ["bench-reward", "--step-model", "2x100"],
    "bench-reward device tpu": ["bench-reward", "--device", "tpu"],
    "bench-reward device junk": ["bench-reward", "--device", "cuda:x"],
    "bench-reward step-batch 0": ["bench-reward", "--step-batch", "0"],
    "bench-reward grad-accum 0": ["bench-reward", "--grad-accum", "0"],
    "bench-reward dtype": ["bench-reward", "--dtype", "int8"],
    "install-hook site missing": ["install-hook", "--site", "{t}/nope"],
    "install-hook site file": ["install-hook", "--site", "{t}/file"],
    "check-config missing": ["check-config", "{t}/nope.yml"],
    "check-config dir": ["check-config", "{t}"],
    "check-config no file": ["check-config"],
    "unknown subcommand": ["nope"],
}
if not torch.cuda.is_available():
    FLAGS["bench-reward device cuda"] = ["bench-reward", "--device", "cuda"]


@pytest.mark.parametrize("case", sorted(FLAGS))
def test_flags_refused_before_any_work(case, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    argv = [a.format(t=tmp_path) for a in FLAGS[case]]
    _refused(argv, tmp_path, capsys)


# -- config files -------------------------------------------------------------------------------
CONFIGS = {
    "binary": b"\xff\xfe\x00\x01",
    "yaml syntax": "acodm:\n  domains: [a, b\n  mixer: odm\n",
    "not a mapping": "- a\n- b\n",
    "no block": "train_iters: 10\n",
    "block is a list": "acodm: [1, 2]\n",
    "domains int": "acodm: {domains: 3}\n",
    "domains empty": "acodm: {domains: []}\n",
    "duplicate key": "acodm: {domains: [{name: a}], domains: [{name: b}]}\n",
    "complex key": "acodm:\n  ? [a, b]\n  : 1\n",
    "unknown mixer": "acodm: {domains: [{name: a}], mixer: magic}\n",
    "unknown key": "acodm: {domains: [{name: a}], mixr: odm}\n",
    "bad preset": "acodm: {domains: [{name: a}], preset: best}\n",
    "seed negative": "acodm: {domains: [{name: a}], seed: -1}\n",
    "domain list file missing": "acodm: {domains: nope.yml}\n",
    "empty": "",
}


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_config_files_refused(case, tmp_path, capsys):
    text = CONFIGS[case]
    f = tmp_path / "c.yml"
    f.write_bytes(text if isinstance(text, bytes) else text.encode())
    _refused(["check-config", f], tmp_path, capsys)


# -- scenarios (refused before any corpus is built or any output written) -----------------------
_SC = (
    "name: s\nmixers: [uniform]\ndomains:\n  - {name: a, source: drama, train_tokens: 20000}\n"
    "  - {name: b, source: legal, train_tokens: 20000}\nsizes:\n  cpu: %s\n"
)
SCENARIOS = {
    "heads do not divide": _SC % "{model: {hidden: 60, heads: 7}}",
    "head size odd": _SC % "{model: {hidden: 66, heads: 2}}",
    "huge hidden": _SC % "{model: {hidden: 1000000}}",
    "many layers": _SC % "{model: {layers: 100000}}",
    "huge vocab": _SC % "{vocab: 100000000}",
    "negative lr": _SC % "{train: {lr: -1}}",
    "zero steps": _SC % "{train: {steps: 0}}",
    "grad_accum below K": _SC % "{train: {grad_accum: 1}}",
    "token_scale 2": _SC % "{token_scale: 2}",
    "size not mapping": _SC % "3",
    "unknown size key": _SC % "{modle: {}}",
    "complex key": _SC % "{? [a, b] : 1}",
    "no cpu size": _SC.replace("  cpu: %s\n", "  gpu: {}\n"),
    "one domain": "name: s\nmixers: [uniform]\ndomains: [{name: a, source: drama, train_tokens: 20000}]\nsizes: {cpu: {}}\n",
    "unknown mixer": (_SC % "{}").replace("[uniform]", "[best]"),
    "no seeds": (_SC % "{}") + "seeds: []\n",
    "duplicate names": (_SC % "{}").replace("name: b", "name: a"),
    "metric weights zero": (_SC % "{}").replace("train_tokens: 20000}", "train_tokens: 20000, metric_weight: 0}"),
    "tiny train_tokens": (_SC % "{}").replace("20000", "10"),
    "unknown transform": (_SC % "{}").replace("train_tokens: 20000}", "train_tokens: 20000, transform: x}", 1),
    "yaml syntax": "name: s\ndomains: [\n",
    "binary": "\udcff",
    "empty": "",
}


@pytest.mark.parametrize("case", sorted(SCENARIOS))
def test_scenarios_refused(case, tmp_path, capsys):
    f = tmp_path / "sc.yml"
    f.write_bytes(SCENARIOS[case].encode("utf-8", "surrogateescape"))
    _refused(["bench-mix", "--scenario", f, "--out", tmp_path / "out", "--cache", tmp_path / "cache"], tmp_path, capsys)


# -- state files (crafted, correctly checksummed) --------------------------------------------------
def _runtime(mixer, **extra):
    cfg = tiny_cfg(mixer, **extra)
    model = TinyLM()
    rt = MixingRuntime(cfg, dataset_sizes=[50, 60, 70], grad_accum=4, micro_batch=2, model=model)
    return rt, model


STATE_EDITS = {
    "mixer part deleted": ("acodm", lambda s: s.pop("mixer"), "lacks"),
    "mixer part none": ("odm", lambda s: s.update(mixer=None), "lacks"),
    "mixer part a list": ("odm", lambda s: s.update(mixer=[1, 2]), "mixer state must be a mapping"),
    "norms part deleted": ("acodm", lambda s: s.update(norms=None), "lacks"),
    "norms part a list": ("acodm", lambda s: s.update(norms=[1.0]), "norm state"),
    "norms wrong keys": ("acodm", lambda s: s.update(norms={"x": 1}), "norm state"),
    "norms wrong shape": ("acodm", lambda s: s["norms"].update(prev_norms=torch.zeros(7)), "norm state"),
    "norms int dtype": (
        "acodm",
        lambda s: s["norms"].update(prev_norms=torch.zeros(4, dtype=torch.int64)),
        "norm state",
    ),
    "norm weights not list": ("acodm", lambda s: s["norms"].update(prev_weights=3), "weight copies"),
    "probe part deleted": ("acodm", lambda s: s.update(probe=None), "lacks"),
    "probe wrong shape": ("acodm", lambda s: s["probe"].update(prev_mean=torch.zeros(2, 2)), "lagged gradients"),
    "probe wrong type": ("acodm", lambda s: s.update(probe="x"), "probe state"),
    "domains int": ("odm", lambda s: s.update(domains=3), "domains must be a list"),
    "domains string": ("odm", lambda s: s.update(domains="d0d1d2"), "domains must be a list"),
    "domains ints": ("odm", lambda s: s.update(domains=[0, 1, 2]), "domains must be a list"),
    "domains other": ("odm", lambda s: s.update(domains=["x", "d1", "d2"]), "differ"),
    "mixer kind int": ("odm", lambda s: s.update(mixer_kind=3), "mixer_kind"),
    "mixer kind other": ("odm", lambda s: s.update(mixer_kind="static"), "mixer"),
    "weights list": ("odm", lambda s: s.update(weights=[0.2, 0.3, 0.5]), "weights"),
    "weights shape": ("odm", lambda s: s.update(weights=torch.ones(4) / 4), "weights"),
    "weights nan": ("odm", lambda s: s.update(weights=torch.tensor([math.nan, 0.5, 0.5])), "weights"),
    "step negative": ("odm", lambda s: s.update(step=-1), "step"),
    "step bool": ("odm", lambda s: s.update(step=True), "step"),
    "step float": ("odm", lambda s: s.update(step=2.0), "step"),
    "version": ("odm", lambda s: s.update(version=99), "schema version"),
    "cursors garbage": ("odm", lambda s: s.update(cursors={"positions": "x"}), "cursor"),
    "mixer values nan": ("odm", lambda s: s["mixer"].update(reward=[math.nan] * 3), "non-finite"),
}


def _plain(obj):
    """Nested state as plain Python values (tensors as lists): comparable across calls."""
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _fingerprint(rt):
    parts = (
        rt.mixer.state_dict(),
        rt.norms.state_dict() if rt.norms else None,
        rt.probe.state_dict() if rt.probe else None,
    )
    return rt.step, rt.weights.tobytes(), rt.skipped_steps, _plain(parts), rt.cursors.positions.tobytes()


@pytest.mark.parametrize("case", sorted(STATE_EDITS))
def test_crafted_states_refused_and_nothing_applied(case, tmp_path):
    mixer, edit, match = STATE_EDITS[case]
    extra = (
        {"preset": "aligned", "agent": {"hidden_dim": 32, "batch_size": 4, "buffer_size": 64}}
        if mixer == "acodm"
        else {}
    )
    rt, model = _runtime(mixer, **extra)
    train_steps(rt, model, torch.optim.SGD(model.parameters(), lr=0.05), 3)
    state = rt.state_dict()
    edit(state)
    path = tmp_path / "s.pt"
    checkpoint.atomic_save(state, str(path))
    rt2, model2 = _runtime(mixer, **extra)
    train_steps(rt2, model2, torch.optim.SGD(model2.parameters(), lr=0.05), 1)
    before = _fingerprint(rt2)
    with pytest.raises(CheckpointError, match=match):
        rt2.load(str(path))
    assert _fingerprint(rt2) == before


def test_load_in_the_middle_of_a_step_is_refused(tmp_path):
    rt, model = _runtime("odm")
    rt.save(str(tmp_path / "s.pt"))
    d, idx = rt.micro_batches()[0]
    rt.record_loss(d, torch.tensor(1.0))
    with pytest.raises(RuntimeError, match="middle of a step"):
        rt.load(str(tmp_path / "s.pt"))
    assert rt.in_step and np.isfinite(rt.weights).all()


def test_the_suite_has_at_least_150_cases():
    n = (
        len(REPORT_CASES)
        + 2
        + len(SCHEDULES)
        + 3
        + len(EXPORTS)
        + len(FLAGS)
        + len(CONFIGS)
        + len(SCENARIOS)
        + len(STATE_EDITS)
    )
    assert n >= 150, n
