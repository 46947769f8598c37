"""bench-mix: scenario files (built-in and user-written), their validation, the paired
statistics, and the quick path end to end through the CLI (the demo is a bench-mix run)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from neox_acodm.config import ConfigError
from neox_acodm.tools.benchmix.scenario import builtin_scenarios, load_scenario, parse_scenario, size_of
from neox_acodm.tools.benchmix.stats import metric_of, paired, steps_to_reach, summary

REQUIRED = {
    "static_natural",
    "uniform",
    "odm",
    "gram_softmax",
    "acodm_paper",
    "acodm",
    "acodm_control",
    "acodm_proxy",
    "temperature",
}


def _shares(sc):
    t = np.array([d.train_tokens for d in sc.domains], float)
    return dict(zip([d.name for d in sc.domains], t / t.sum()))


def test_builtin_scenarios_are_discriminating_by_construction():
    names = builtin_scenarios()
    assert {"skewed", "noisy", "repeat"} <= set(names)
    for name in names:
        sc = load_scenario(name)
        assert len(sc.seeds) >= 3 and REQUIRED <= set(sc.mixers), name
        for size in ("cpu", "quick", "gpu", "demo"):
            assert size_of(sc, size).train.grad_accum >= len(sc.domains)
    skewed = _shares(load_scenario("skewed"))
    assert max(skewed.values()) >= 0.40 and min(skewed.values()) <= 0.02
    noisy = load_scenario("noisy")
    noise = [d for d in noisy.domains if d.transform == "shuffle_tokens"]
    assert noise and all(d.metric_weight == 0 and _shares(noisy)[d.name] >= 0.30 for d in noise)
    repeat = load_scenario("repeat")
    small = min(repeat.domains, key=lambda d: d.train_tokens)
    assert small.metric_weight > 1 and _shares(repeat)[small.name] <= 0.02
    # difficulty: every domain scored equally; one saturates (unigram noise), one is tiny
    diff = load_scenario("difficulty")
    assert {d.metric_weight for d in diff.domains} == {1.0}
    assert any(d.transform == "shuffle_tokens" for d in diff.domains) and min(_shares(diff).values()) <= 0.025
    # transfer: one small scored target among large unscored neighbours
    transfer = load_scenario("transfer")
    scored = [d for d in transfer.domains if d.metric_weight > 0]
    assert len(scored) == 1 and _shares(transfer)[scored[0].name] <= 0.05


def _base():
    return yaml.safe_load(Path(builtin_scenarios()["noisy"]).read_text())


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda d: d.update(seedz=[1]), r"scenario.seedz: unknown key; did you mean 'seeds'"),
        (lambda d: d["domains"][0].update(train_tokens=10), r"scenario.domains\[0\].train_tokens: must be in \[1024"),
        (lambda d: d["domains"][0].update(transform="reverse"), r"scenario.domains\[0\].transform: got 'reverse'"),
        (lambda d: d.update(mixers=["static_natural", "doremi"]), r"scenario.mixers: unknown mixer 'doremi'"),
        (
            lambda d: d["sizes"]["cpu"]["train"].update(grad_accum=4),
            r"scenario.sizes.cpu.train.grad_accum: 4 < 6 domains",
        ),
        (lambda d: d["sizes"]["cpu"]["model"].update(hiden=3), r"scenario.sizes.cpu.model.hiden: unknown key"),
        (lambda d: d["sizes"].pop("cpu"), r"scenario.sizes.cpu: required"),
        (lambda d: [x.update(metric_weight=0) for x in d["domains"]], "at least one metric_weight must be positive"),
        (lambda d: d["domains"][1].update(name=d["domains"][0]["name"]), "duplicate names"),
    ],
)
def test_scenario_validation_names_the_key(edit, match):
    data = _base()
    edit(data)
    with pytest.raises(ConfigError, match=match):
        parse_scenario(data)


def test_scenario_file_errors(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_scenario(str(bad))
    with pytest.raises(ConfigError, match="no such scenario file or built-in scenario"):
        load_scenario(str(tmp_path / "missing.yml"))
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "neox_acodm.tools.cli",
            "bench-mix",
            "--scenario",
            str(bad),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and res.stderr.strip().startswith("error:") and "Traceback" not in res.stderr


def test_paired_interval_matches_hand_computation():
    a, b = [1.4, 2.0, 3.1], [0.5, 1.0, 2.0]
    d = np.array(a) - np.array(b)  # 0.9, 1.0, 1.1
    p = paired(a, b)
    half = 4.303 * d.std(ddof=1) / math.sqrt(3)
    assert p["mean"] == pytest.approx(1.0) and p["ci95"] == pytest.approx([1.0 - half, 1.0 + half])
    assert p["excludes_zero"]
    assert not paired([1.0, 2.0, 3.5], [0.5, 1.0, 2.0])["excludes_zero"]  # half-width 1.24 > 1
    assert not paired([1.0, 2.0], [1.5, 1.5])["excludes_zero"]
    assert math.isnan(summary([1.0])["sd"])
    m = metric_of({"a": 1.0, "b": 3.0, "noise": 9.0}, {"a": 1.0, "b": 1.0, "noise": 0.0})
    assert m["mean_loss"] == 2.0 and m["worst_loss"] == 3.0
    assert steps_to_reach([(0, 5.0), (10, 3.0), (20, 2.0)], 3.0) == 10
    assert steps_to_reach([(0, 5.0)], 1.0) is None


@pytest.fixture(scope="module")
def demo_quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    res = subprocess.run(
        [sys.executable, "-m", "neox_acodm.tools.cli", "demo", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return out, json.loads((out / "report.json").read_text())


def test_demo_quick_report_contract(demo_quick):
    out, rep = demo_quick
    assert rep["schema"] == "neox_acodm.bench-mix/1" and rep["scenario"]["name"] == "noisy"
    assert rep["mixers"] == ["static_natural", "uniform", "odm", "gram_softmax", "acodm", "acodm_control"]
    seeds = [str(s) for s in rep["seeds"]]
    assert len(seeds) == 3
    steps = rep["size_settings"]["train"]["steps"]
    for m in rep["mixers"]:
        row = rep["table"][m]
        assert row["mean_loss"]["n"] == 3 and row["mean_loss"]["sd"] >= 0
        for b in ("static_natural", "uniform", "gram_softmax", "odm"):
            if b != m:
                assert set(row[f"vs_{b}"]) >= {"mean", "sd", "ci95", "excludes_zero"}
        for s in seeds:
            r = rep["runs"][m][s]
            assert r["val_curve"][-1]["step"] == steps and set(r["val_curve"][-1]["loss"]) == set(rep["domains"])
            assert all(abs(sum(w) - 1) < 1e-4 for w in r["weights_curve"])  # report rounds to 6 digits
            # it learned: the final metric is well below the initial one
            assert r["curve"][-1][1] < r["curve"][0][1] - 0.3
    assert rep["table"]["static_natural"]["steps_to_static_final"] == [steps] * 3
    assert "vs_acodm_control" in rep["table"]["acodm"]
    for f in ("loss.png", "weights.png", "domains.png", "summary.md"):
        assert (out / f).stat().st_size > 1000
    assert "AC-ODM vs its no-learning noise control" in (out / "summary.md").read_text()


def test_demo_quick_pairing_and_weights(demo_quick):
    _, rep = demo_quick
    s = str(rep["seeds"][0])
    static, uniform = rep["runs"]["static_natural"][s], rep["runs"]["uniform"][s]
    # paired: same init, so the step-0 evaluation is identical across mixers of a seed
    assert static["val_curve"][0]["loss"] == uniform["val_curve"][0]["loss"]
    assert len({tuple(w) for w in static["weights_curve"]}) == 1
    gram = np.array(rep["runs"]["gram_softmax"][s]["weights_curve"])
    assert np.abs(np.diff(gram, axis=0)).max() > 1e-3
    assert rep["runs"]["gram_softmax"][s]["rewards_curve"] and rep["runs"]["odm"][s]["timings"]["capture"] == 0


def test_combine_reports_into_one_table(demo_quick, tmp_path):
    out, _ = demo_quick
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "neox_acodm.tools.cli",
            "bench-mix",
            "--combine",
            str(out),
            str(out),
            "--out",
            str(tmp_path / "t.md"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    lines = (tmp_path / "t.md").read_text().splitlines()
    assert lines[0] == "| mixer | noisy | noisy |" and len(lines) == 2 + 6
    assert lines[2].startswith("| static_natural | ") and "(— / " in lines[2]


def test_oracle_static_is_swept_on_its_own_seeds_and_every_mixer_gets_its_regret(demo_quick, tmp_path):
    """The sweep trains every candidate on the oracle seeds only, the winner is rerun on the
    reporting seeds as ``oracle_static``, and each mixer gets its regret and its difference to
    the best prior-information static mix."""
    import yaml

    from neox_acodm.tools.benchmix.scenario import builtin_scenarios

    # noisy: its noise domain has metric weight 0, so the metric candidate has a zero share
    sc = yaml.safe_load(builtin_scenarios()["noisy"].read_text())
    sc.update(name="noisy-oracle", seeds=[1], oracle_seeds=[101], oracle_draws=1)
    f = tmp_path / "sc.yml"
    f.write_text(yaml.safe_dump(sc))
    out = tmp_path / "out"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "neox_acodm.tools.cli",
            "bench-mix",
            "--scenario",
            str(f),
            "--size",
            "quick",
            "--mixers",
            "oracle_static,uniform,temperature",
            "--out",
            str(out),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    oracle = rep["oracle"]
    assert oracle["seeds"] == [101] and len(oracle["candidates"]) == 5  # 4 prior mixes + 1 draw
    scores = {n: c["scores"][0] for n, c in oracle["candidates"].items()}
    assert oracle["chosen"] == min(scores, key=scores.get)
    used = [d["weight"] for d in rep["runs"]["oracle_static"]["1"]["block"]["domains"]]
    assert np.allclose(used, np.maximum(oracle["weights"], sc["min_weight"]), atol=1e-6)
    assert rep["best_prior_static"] in ("uniform", "temperature", "metric_weighted")
    assert "vs_oracle_static" in rep["table"]["uniform"] and "vs_best_prior" in rep["table"]["oracle_static"]
    assert "regret vs oracle static" in (out / "summary.md").read_text()


def test_floor_occupancy_counts_scored_domains_at_the_floor():
    from neox_acodm.tools.benchmix.aggregate import floor_occupancy

    w = np.array([[0.6, 0.395, 0.005]] * 3 + [[0.5, 0.3, 0.2]])  # domain c at the floor 3 of 4 steps
    got = floor_occupancy([w, w], metric_weights=[1, 1, 1], min_weight=0.005, names=["a", "b", "c"])
    assert got == {"domain": "c", "share": 0.75}
    # a domain outside the metric may sit at the floor: it is not counted
    got = floor_occupancy([w], metric_weights=[1, 1, 0], min_weight=0.005, names=["a", "b", "c"])
    assert got["share"] == 0.0
