"""Reliability (issue: no hang on any bad state): every failure on one rank during load, save or
end_step reaches every rank as a clear error; state files are checksummed and validated; a
failed load changes nothing. Multi-rank cases are real 2-process gloo runs under a timeout, so
a hang fails the test instead of stalling CI."""

import os
import pickle
import stat
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from neox_acodm import checkpoint
from neox_acodm.checkpoint import CheckpointError
from neox_acodm.dist import ParallelLayout
from neox_acodm.runtime import MixingRuntime

from conftest import TinyLM, tiny_cfg, train_steps
from support import free_port

WORLD = 2


def _rt(cfg, rank=0, world=1, group=None, seed=0):
    model = TinyLM(seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    rt = MixingRuntime(
        cfg,
        dataset_sizes=[50, 60, 70],
        grad_accum=2,
        micro_batch=2,
        model=model,
        layout=ParallelLayout(world, rank, group, group),
    )
    return rt, model, opt


def _snapshot(rt):
    return pickle.dumps(
        (
            rt.step,
            rt.weights.tolist(),
            rt.skipped_steps,
            rt.cursors.positions.tolist(),
            None if rt.mixer is None else _tensors(rt.mixer.state_dict()),
        )
    )


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, dict):
        return {k: _tensors(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_tensors(v) for v in obj]
    return obj


# -- 2-rank scenarios -------------------------------------------------------------------------
def _scenario(rank, name, out):
    group = dist.group.WORLD
    timeout_cfg = {"collective_timeout_s": 5.0}
    if name == "not_a_mapping":  # unpickles fine, wrong type
        bad = os.path.join(out, "list.pt")
        if rank == 0:
            checkpoint.atomic_save([1, 2, 3], bad)
        dist.barrier()
        rt, *_ = _rt(tiny_cfg("odm", **timeout_cfg), rank, WORLD, group)
        before = _snapshot(rt)
        try:
            rt.load(bad)
        finally:
            assert _snapshot(rt) == before
    elif name == "owner_part_mismatch":  # only the owner's mixer state fails to stage
        path = os.path.join(out, "s.pt")
        rt, model, opt = _rt(tiny_cfg("acodm", **timeout_cfg), rank, WORLD, group)
        train_steps(rt, model, opt, 3)
        rt.save(path)
        rt2, *_ = _rt(tiny_cfg("acodm", agent={"hidden_dim": 16}, **timeout_cfg), rank, WORLD, group)
        before = _snapshot(rt2)
        try:
            rt2.load(path)
        finally:
            assert _snapshot(rt2) == before
    elif name in ("domains_wrong_type", "norms_wrong_type", "mixer_part_deleted"):  # crafted, checksummed
        path = os.path.join(out, "s.pt")
        rt, model, opt = _rt(tiny_cfg("acodm", **timeout_cfg), rank, WORLD, group)
        train_steps(rt, model, opt, 2)
        if rank == 0:
            state = rt.state_dict()
            {
                "domains_wrong_type": lambda: state.update(domains=7),
                "norms_wrong_type": lambda: state.update(norms=[1, 2]),
                "mixer_part_deleted": lambda: state.pop("mixer"),
            }[name]()
            checkpoint.atomic_save(state, path)
        dist.barrier()
        before = _snapshot(rt)
        try:
            rt.load(path)
        finally:
            assert _snapshot(rt) == before
    elif name == "owner_update_fails":
        rt, model, opt = _rt(tiny_cfg("odm", **timeout_cfg), rank, WORLD, group)
        if rt.mixer is not None:
            rt.mixer.update = lambda stats: (_ for _ in ()).throw(ZeroDivisionError("boom"))
        train_steps(rt, model, opt, 1)
    elif name == "save_fails":
        rt, *_ = _rt(tiny_cfg("odm", **timeout_cfg), rank, WORLD, group)
        blocker = os.path.join(out, "file")
        open(blocker, "w").close()
        rt.save(os.path.join(blocker, "sub", "s.pt"))  # a file where a directory must be
    elif name == "rank_missing":  # rank 1 never reaches end_step
        rt, model, opt = _rt(tiny_cfg("odm", collective_timeout_s=2.0), rank, WORLD, group)
        if rank == 1:
            time.sleep(8)
            return "slept"
        train_steps(rt, model, opt, 1)
    return "ok"


def _worker(rank, port, name, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    try:
        outcome = _scenario(rank, name, out)
    except Exception as e:  # noqa: BLE001 - recorded for the assertions
        outcome = f"{type(e).__name__}: {e}"
    with open(os.path.join(out, f"{name}{rank}.txt"), "w") as f:
        f.write(outcome)
    os._exit(0)  # no barrier: a failed rank must not need the other to exit


def _run(tmp_path, name, timeout=90):
    ctx = mp.start_processes(
        _worker, args=(free_port(), name, str(tmp_path)), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.time() + timeout
    while not ctx.join(timeout=max(0.1, deadline - time.time())):
        if time.time() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"{name}: a rank hung for {timeout} s")
    return [(tmp_path / f"{name}{r}.txt").read_text() for r in range(WORLD)]


@pytest.mark.parametrize(
    "name,owner,other",
    [
        ("not_a_mapping", "CheckpointError", "RemoteFailure"),
        ("owner_part_mismatch", "CheckpointError", "RemoteFailure"),
        ("domains_wrong_type", "CheckpointError", "RemoteFailure"),
        ("norms_wrong_type", "CheckpointError", "RemoteFailure"),
        ("mixer_part_deleted", "CheckpointError", "RemoteFailure"),
        ("owner_update_fails", "ZeroDivisionError", "RemoteFailure"),
        ("save_fails", ("FileExistsError", "NotADirectoryError"), "RemoteFailure"),
    ],
)
def test_a_failure_on_the_owner_reaches_every_rank(tmp_path, name, owner, other):
    o, r = _run(tmp_path, name)
    assert o.startswith(owner), o
    assert r.startswith(other), r
    if name != "owner_update_fails":
        assert o.split(": ", 1)[1][:60] in r  # the same message on the other rank
    if name == "owner_part_mismatch":
        assert "does not fit this config" in o and "s.pt" in o


def test_a_missing_rank_is_a_timeout_not_a_hang(tmp_path):
    start = time.time()
    o, r = _run(tmp_path, "rank_missing", timeout=60)
    assert o.startswith("CollectiveTimeout") and "step 0 loss all-reduce" in o and "2 s" in o, o
    assert r == "slept" and time.time() - start < 60


# -- single process: files, validation, transactions ------------------------------------------
def _saved(tmp_path, mixer="acodm", **over):
    rt, model, opt = _rt(tiny_cfg(mixer, **over))
    train_steps(rt, model, opt, 4)
    path = tmp_path / "s.pt"
    rt.save(str(path))
    return rt, path


def test_flipped_bytes_fail_the_checksum(tmp_path):
    _, path = _saved(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 8] = b"\x41" * 8
    path.write_bytes(bytes(raw))
    rt, *_ = _rt(tiny_cfg("acodm"))
    with pytest.raises(CheckpointError, match=f"{path}: checksum mismatch"):
        rt.load(str(path))


@pytest.mark.parametrize(
    "content,match",
    [
        (b"", "the file is empty"),
        (b"\x80\x04garbage", "no NEOX_ACODM_STATE header"),
    ],
)
def test_unreadable_files_name_the_path_and_what_it_should_be(tmp_path, content, match):
    p = tmp_path / "bad.pt"
    p.write_bytes(content)
    with pytest.raises(CheckpointError, match=match) as e:
        checkpoint.load(p)
    assert str(p) in str(e.value) and "written by MixingRuntime.save" in str(e.value)
    assert "weights_only=False" not in str(e.value)
    with pytest.raises(CheckpointError, match="cannot read it"):
        checkpoint.load(tmp_path)  # a directory


def _rewrite(path, edit):
    state = checkpoint.load(path)
    edit(state)
    checkpoint.atomic_save(state, path)


@pytest.mark.parametrize(
    "mixer,edit,match",
    [
        ("odm", lambda s: s.update(weights=torch.full((3,), float("nan"))), "not a probability vector"),
        (
            "odm",
            lambda s: s.update(weights=torch.tensor([-0.5, 1.0, 0.5], dtype=torch.float64)),
            "not a probability vector",
        ),
        (
            "odm",
            lambda s: s.update(weights=torch.tensor([1.0, 0.5, 0.5], dtype=torch.float64)),
            "not a probability vector",
        ),
        (
            "odm",
            lambda s: s["mixer"].update(reward=[float("nan")] * 3),
            r"mixer.reward\[0\]: holds a non-finite number",
        ),
        ("odm", lambda s: s.update(step=-3), "step must be a non-negative integer"),
        ("odm", lambda s: s["cursors"].update(positions=[-1, 0, 0]), "cursor positions"),
        (
            "acodm",
            lambda s: s["mixer"]["agent"]["actor"].update(
                {k: v * float("inf") for k, v in s["mixer"]["agent"]["actor"].items() if k.endswith("weight")}
            ),
            "NaN/Inf",
        ),
    ],
)
def test_loaded_values_are_validated_and_a_failed_load_changes_nothing(tmp_path, mixer, edit, match):
    _, path = _saved(tmp_path, mixer)
    _rewrite(path, edit)
    rt, model, opt = _rt(tiny_cfg(mixer))
    train_steps(rt, model, opt, 2)
    before = _snapshot(rt)
    with pytest.raises(CheckpointError, match=match):
        rt.load(str(path))
    assert _snapshot(rt) == before


def test_changed_agent_config_is_a_clear_error_and_transactional(tmp_path):
    _, path = _saved(tmp_path, "acodm")
    rt, *_ = _rt(tiny_cfg("acodm", agent={"buffer_size": 32}))
    before = _snapshot(rt)
    with pytest.raises(CheckpointError, match="replay buffer capacity changed"):
        rt.load(str(path))
    assert _snapshot(rt) == before and len(rt.mixer.agent.replay) == 0


def test_stale_temporaries_are_removed_and_umask_respected(tmp_path):
    target = tmp_path / "s.pt"
    stale = tmp_path / ".s.pt.abc123.tmp"
    other = tmp_path / ".other.pt.abc123.tmp"
    stale.write_bytes(b"x" * 100)
    other.write_bytes(b"y")
    old = os.umask(0o022)
    try:
        checkpoint.atomic_save({"a": 1}, target)
    finally:
        os.umask(old)
    assert not stale.exists() and other.exists()  # only temporaries of the same target
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert checkpoint.load(target) == {"a": 1}


@pytest.mark.parametrize("mixer", ["static", "odm", "gram_softmax"])
def test_overflow_steps_are_skipped_for_every_mixer(mixer):
    rt, model, opt = _rt(tiny_cfg(mixer, reward={"mode": "aligned"}))
    train_steps(rt, model, opt, 3)
    w, state = rt.weights.copy(), pickle.dumps(_tensors(rt.mixer.state_dict()))
    for mb, (d, _idx) in enumerate(rt.micro_batches()):
        rt.begin_microbatch(mb)
        loss = model.loss(torch.randint(0, 32, (2, 9)))
        loss.backward()
        rt.record_loss(d, loss)
    metrics = rt.end_step(skipped=True)
    assert metrics == {"skipped": 1.0} and rt.skipped_steps == 1
    assert np.array_equal(rt.weights, w) and pickle.dumps(_tensors(rt.mixer.state_dict())) == state


# -- config values the code cannot use are caught at validation ------------------------------
from neox_acodm.config import ConfigError, load_config, parse_config  # noqa: E402


def _block(**over):
    block = {"domains": [{"name": "a"}, {"name": "b"}]}
    block.update(over)
    return block


@pytest.mark.parametrize(
    "block,match",
    [
        (_block(seed=2**40), r"acodm.seed: must be in \[0, 4.29497e\+09\]"),
        (_block(seed=2**63), r"acodm.seed: 9223372036854775808 does not fit in 64 bits"),
        (_block(reward={"sketch_seed": -1}), r"acodm.reward.sketch_seed: must be in"),
        (_block(seed=int("9" * 400)), r"acodm.seed: 9999.*\(400 characters\) does not fit in 64 bits"),
        (_block(agent={"warmup_steps": int("9" * 400)}), "does not fit in 64 bits"),
        (_block(agent={"actor_lr": int("9" * 400)}), "too large for a float"),
        (_block(reward={"params": {"layers": "::0"}}), "slice step must not be zero"),
        (_block(reward={"params": {"module": ""}}), "an empty pattern matches every module"),
        (_block(agent={"device": "tpu"}), r"acodm.agent.device: got 'tpu'"),
        (_block(agent={"batch_size": 64, "buffer_size": 32}), "the agent never updates"),
        ({"domains": [{"name": "a", "weight": 1e308}, {"name": "b", "weight": 1e308}]}, "sum to infinity"),
    ],
)
def test_values_the_code_cannot_use_are_config_errors(block, match):
    with pytest.raises(ConfigError, match=match):
        parse_config(block)


def test_selectors_that_select_nothing_or_twice_are_errors():
    from neox_acodm.selectors import select_params

    from conftest import TinyLM

    model = TinyLM()
    with pytest.raises(ConfigError, match=r"acodm.reward.params.layers: \[-1, 3\] selects layer 3 of 4 twice"):
        select_params(
            model, parse_config(_block(reward={"params": {"layers": [-1, 3]}})).reward.params, "acodm.reward.params"
        )
    with pytest.raises(ConfigError, match="selects none of the 4 matching layers"):
        select_params(
            model, parse_config(_block(reward={"params": {"layers": "7:"}})).reward.params, "acodm.reward.params"
        )


@pytest.mark.parametrize(
    "content,match",
    [
        (b"acodm:\n  domains: [{name: a}]\n  seed: 1\n  seed: 2\n", r"key 'seed' appears twice"),
        (b"domians: [{name: a}]\nmixer: odm\n", r"acodm.domains: required key is missing; did you mean 'domians'"),
        (b"mixer: odm\nseed: 3\n", "looks like a bare acodm block"),
        (b"\xff\xfe\x00binary\x00", "not UTF-8 text"),
        ("acodm:\n  domains: [{name: caf\u00e9}]\n".encode("latin-1"), "not UTF-8 text"),
        (b"[" * 5000 + b"]" * 5000, "nests too deeply|invalid YAML|expected a mapping"),
    ],
)
def test_check_config_never_tracebacks(tmp_path, content, match):
    import subprocess
    import sys

    f = tmp_path / "c.yml"
    f.write_bytes(content)
    with pytest.raises(ConfigError, match=match):
        load_config(f)
    res = subprocess.run(
        [sys.executable, "-m", "neox_acodm.tools.cli", "check-config", str(f)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and res.stderr.startswith("error:") and "Traceback" not in res.stderr


def test_warmup_longer_than_the_run_warns(caplog):
    cfg = tiny_cfg("acodm", agent={"warmup_steps": 500}, total_steps=100)
    with caplog.at_level("WARNING", logger="neox_acodm.runtime"):
        _rt(cfg)
    assert "the actor never chooses the weights" in caplog.text
