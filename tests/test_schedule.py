"""Schedule export -> replay: the replay plans exactly what the recorded run planned."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from neox_acodm.config import ConfigError
from neox_acodm.runtime import MixingRuntime
from neox_acodm.schedule import from_weights, load_schedule

from conftest import TinyLM, tiny_cfg, train_steps


def _run(cfg, steps):
    model = TinyLM(seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    rt = MixingRuntime(cfg, dataset_sizes=[50, 60, 70], grad_accum=4, micro_batch=2, model=model)
    history, plans = [rt.weights.copy()], []
    for _ in range(steps):
        plans.append(rt.plan().domains.copy())
        train_steps(rt, model, opt, 1)
        history.append(rt.weights.copy())
    return history, plans


def test_export_then_replay_gives_the_identical_plan(tmp_path):
    src_cfg = tiny_cfg("gram_softmax", reward={"mode": "aligned"}, sampling={"min_weight": 0.05})
    history, plans = _run(src_cfg, 25)
    assert len({tuple(w) for w in history}) > 5  # the source mix moved
    path = tmp_path / "s.yml"
    from_weights(src_cfg.domain_names, history[:-1]).save(path)
    replay_cfg = tiny_cfg("static", schedule_path=str(path))
    replay_history, replay_plans = _run(replay_cfg, 25)
    for a, b in zip(plans, replay_plans):
        assert np.array_equal(a, b)
    for a, b in zip(history[:-1], replay_history[:-1]):
        assert np.array_equal(a, b)


def test_coarse_schedule_and_megatron_blends(tmp_path):
    h = np.array([[0.5, 0.5], [0.7, 0.3], [0.7, 0.3], [0.1, 0.9]])
    s = from_weights(("a", "b"), h)
    assert (
        s.starts == (0, 1, 3) and np.allclose(s.weights_at(2), [0.7, 0.3]) and np.allclose(s.weights_at(99), [0.1, 0.9])
    )
    c = from_weights(("a", "b"), h, every=2)
    assert c.starts == (0, 2) and np.allclose(c.weights_at(1), [0.6, 0.4])
    assert c.megatron_blends(["pa", "pb"])[0] == "0.6 pa 0.4 pb"


@pytest.mark.parametrize(
    "text,match",
    [
        ("format: x\n", "not a neox_acodm schedule"),
        ("format: neox_acodm.schedule/1\ndomains: [d0, d1, d2]\nphases: []\n", "no phases"),
        ("format: neox_acodm.schedule/1\ndomains: [d0, d1, d2]\nphases: [{start: 3, weights: [1, 0, 0]}]\n", "0 first"),
        (
            "format: neox_acodm.schedule/1\ndomains: [d0, d1, d2]\nphases: [{start: 0, weights: [0.5, 0.6, 0]}]\n",
            "summing to 1",
        ),
        (
            "format: neox_acodm.schedule/1\ndomains: [x, y, z]\nphases: [{start: 0, weights: [1, 0, 0]}]\n",
            "differ from acodm.domains",
        ),
    ],
)
def test_bad_schedules_are_clear_errors(tmp_path, text, match):
    p = tmp_path / "bad.yml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_schedule(p, ("d0", "d1", "d2"))
    with pytest.raises(ConfigError, match="needs mixer 'static'"):
        tiny_cfg("odm", schedule_path=str(p))


def _export(*args: str) -> subprocess.CompletedProcess:
    """``neox-acodm export-schedule ARGS`` in a fresh interpreter."""
    cmd = [sys.executable, "-m", "neox_acodm.tools.cli", "export-schedule", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True)


def test_export_schedule_cli_from_a_report(tmp_path):
    report = {"domains": ["a", "b"], "runs": {"m": {"1": {"weights_curve": [[0.5, 0.5], [0.25, 0.75], [0.25, 0.75]]}}}}
    (tmp_path / "report.json").write_text(json.dumps(report))
    out = tmp_path / "s.yml"
    res = _export("--report", tmp_path / "report.json", "--mixer", "m", "--seed", 1, "--out", out, "--megatron")
    assert res.returncode == 0, res.stderr
    assert load_schedule(out).starts == (0, 1) and res.stdout.splitlines()[1] == "1\t--data-path 0.25 a 0.75 b"
    bad = _export("--report", tmp_path / "report.json", "--mixer", "nope", "--seed", 1, "--out", out)
    assert bad.returncode == 2 and "no weights for mixer 'nope'" in bad.stderr


def test_export_schedule_from_a_runs_tensorboard_events(tmp_path):
    """``--run``: the realised weights of any run, from its acodm/weight/* scalars (logged every
    2 steps here); the written schedule replays step by step."""
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    from neox_acodm.tools.export import history_from_run

    w = SummaryWriter(str(tmp_path / "tb"))
    logged = {2: [0.25, 0.75], 4: [0.5, 0.5], 6: [0.5, 0.5]}
    for step, (a, b) in logged.items():
        w.add_scalar("acodm/weight/a", a, step)
        w.add_scalar("acodm/weight/b", b, step)
    w.close()
    domains, history = history_from_run(tmp_path / "tb")
    assert domains == ["a", "b"] and history.shape == (7, 2)
    assert np.allclose(history[:4], [0.25, 0.75]) and np.allclose(history[4:], [0.5, 0.5])
    out = tmp_path / "s.yml"
    res = _export("--run", tmp_path / "tb", "--out", out)
    assert res.returncode == 0, res.stderr
    sched = load_schedule(out, ("a", "b"))
    assert sched.starts == (0, 4) and np.allclose(sched.weights_at(5), [0.5, 0.5])
    bad = _export("--run", tmp_path / "nothing", "--out", out)
    assert bad.returncode == 2 and "--run" in bad.stderr and "no such directory" in bad.stderr
