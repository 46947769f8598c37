"""neox-acodm report: read on the TensorBoard event files a real DeepSpeed engine run writes
(torch's SummaryWriter, as GPT-NeoX and Megatron-LM use), plots, one self-contained page."""

import base64
import os
import pickle
import re

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

pytest.importorskip("tensorboard")
pytest.importorskip("deepspeed")

from neox_acodm.tools.cli import main as cli_main  # noqa: E402
from neox_acodm.tools.report import read_run, write_report  # noqa: E402

from conftest import tiny_cfg  # noqa: E402
from support import free_port  # noqa: E402
from test_deepspeed_engine import GA, MB, SyntheticDomain, ce, layers  # noqa: E402

STEPS = 10


def _worker(rank, port, out_dir):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", DS_ACCELERATOR="cpu"
    )
    torch.set_num_threads(1)
    import deepspeed
    from torch import nn
    from torch.utils.tensorboard import SummaryWriter

    from neox_acodm.dist import ParallelLayout
    from neox_acodm.metrics import MetricsSink
    from neox_acodm.neox.session import DeepSpeedMixingSession

    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    torch.manual_seed(0)
    model = nn.Sequential(*layers())
    engine, *_ = deepspeed.initialize(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        config={
            "train_batch_size": MB * GA,
            "train_micro_batch_size_per_gpu": MB,
            "gradient_accumulation_steps": GA,
            "steps_per_print": 10**9,
        },
    )
    tb = SummaryWriter(os.path.join(out_dir, "tb"))
    cfg = tiny_cfg("acodm", total_steps=STEPS, log_interval=2)
    session = DeepSpeedMixingSession(
        cfg,
        engine,
        datasets=[SyntheticDomain(d) for d in range(3)],
        layout=ParallelLayout(),
        grad_accum=GA,
        micro_batch=MB,
        total_steps=STEPS,
        sink=MetricsSink(lambda: tb.add_scalar, cfg.log_interval),
    )
    loss_fn, it, weights = session.wrap_loss(ce), session.train_iterator(), {}
    for _ in range(STEPS):
        for _ in range(GA):
            x, y = next(it)
            engine.backward(loss_fn(engine(x), y))
            engine.step()
        session.end_step()
        weights[session.rt.step] = session.rt.weights.copy()
    tb.close()
    with open(os.path.join(out_dir, "weights.pkl"), "wb") as f:
        pickle.dump(weights, f)
    os._exit(0)  # skip gloo destructors (see test_deepspeed_engine)


def test_report_of_a_deepspeed_run(tmp_path):
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=1, join=True)
    weights = pickle.load(open(tmp_path / "weights.pkl", "rb"))
    run = read_run(tmp_path / "tb")
    assert run.domains == ["d0", "d1", "d2"]
    w = run.family("weight")
    assert list(w["d0"].steps) == [2, 4, 6, 8, 10]  # every log_interval steps
    for i, s in enumerate(w["d0"].steps):  # what was logged is what the run planned with
        logged = np.array([w[d].values[i] for d in run.domains])
        assert np.allclose(logged, weights[int(s)], atol=1e-6)  # TensorBoard stores float32
    # loss/<d> is logged only at steps where domain d got a micro-batch; a pair's cosine only
    # where both did. Latest matrix: NaN iff the pair never met at a logged step.
    loss = run.family("loss")
    drawn = {int(s): {d for d in run.domains if d in loss and s in loss[d].steps} for s in w["d0"].steps}
    step, cos = run.pair_matrix()
    assert step == 10 and np.allclose(cos, cos.T, equal_nan=True) and np.all(np.diag(cos) == 1)
    assert np.nanmax(np.abs(cos)) <= 1 and np.isfinite(cos).sum() > 3
    at10 = run.pair_matrix(10)[1]
    for i, a in enumerate(run.domains):
        for j, b in enumerate(run.domains):
            if i != j:
                assert np.isnan(at10[i, j]) == (not {a, b} <= drawn[10])
                assert np.isnan(cos[i, j]) == (not any({a, b} <= ds for ds in drawn.values()))
    assert {"critic_loss", "actor_loss", "reward_path_seconds"} <= set(run.series)
    # per-domain diagnostics in every run: steps since last drawn, share of steps at the floor
    for d in run.domains:
        stale, floor = run.series[f"staleness/{d}"].values, run.series[f"at_floor/{d}"].values
        assert stale.min() >= 0 and ((floor >= 0) & (floor <= 1)).all()
    assert cli_main(["report", str(tmp_path / "tb"), "--out", str(tmp_path / "rep")]) == 0
    page = (tmp_path / "rep" / "report.html").read_text()
    stems = (
        "weights",
        "train_loss",
        "rewards",
        "agent",
        "reward_time",
        "grad_cos",
        "projected_epochs",
        "staleness",
        "at_floor",
    )
    for stem in stems:
        assert (tmp_path / "rep" / f"{stem}.png").is_file() and f'alt="{stem}"' in page
    assert not {"val_ppl.png", "shadow_weights.png"} & set(os.listdir(tmp_path / "rep"))  # no data: no panel
    imgs = re.findall(r'src="data:image/png;base64,([^"]+)"', page)  # self-contained: inlined PNGs
    assert len(imgs) == len(stems) and all(base64.b64decode(i)[:4] == b"\x89PNG" for i in imgs)


def test_report_reads_a_run_in_progress_and_keeps_the_last_write_of_a_step(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    tb = SummaryWriter(str(tmp_path))
    for s in range(1, 6):
        tb.add_scalar("acodm/weight/a", 0.5, s)
        tb.add_scalar("acodm/weight/b", 0.5, s)
        tb.add_scalar("acodm/shadow_weight/a", 0.7, s)  # a shadow-mode run
        tb.add_scalar("acodm/shadow_weight/b", 0.3, s)
    tb.flush()  # still open: a run in progress
    assert list(read_run(tmp_path).family("weight")["a"].steps) == [1, 2, 3, 4, 5]
    tb2 = SummaryWriter(str(tmp_path))  # a resumed run re-logs steps 4, 5 in a new event file
    for s in range(4, 8):
        tb2.add_scalar("acodm/weight/a", 0.25, s)
        tb2.add_scalar("acodm/weight/b", 0.75, s)
    tb2.flush()
    a = read_run(tmp_path).family("weight")["a"]
    assert list(a.steps) == list(range(1, 8)) and list(a.values) == [0.5] * 3 + [0.25] * 4
    page = write_report(tmp_path)
    assert page.name == "report.html" and (page.parent / "shadow_weights.png").is_file()
    tb.close(), tb2.close()


def test_report_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="no TensorBoard event files"):
        read_run(tmp_path)
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path)) as tb:
        tb.add_scalar("lm_loss", 1.0, 1)
    with pytest.raises(FileNotFoundError, match="no acodm/\\* scalars"):
        read_run(tmp_path)


def test_report_of_a_bench_directory():
    from pathlib import Path

    src = Path(__file__).resolve().parent / "fixtures" / "bench_small"
    import tempfile

    with tempfile.TemporaryDirectory() as out:
        page = write_report(src, out).read_text()
    assert "bench-mix report" in page and page.count("data:image/png;base64,") == len(list(src.glob("*.png")))


def test_every_subcommand_help_shows_an_example():
    import argparse

    from neox_acodm.tools.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert {"report", "bench-mix", "bench-reward", "demo", "check-config", "export-schedule"} <= set(sub.choices)
    for name, parser in sub.choices.items():
        assert "Example: neox-acodm " + name in " ".join(parser.format_help().split()), name
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        build_parser().parse_args(["--version"])
    assert out.getvalue().startswith("neox-acodm ")
