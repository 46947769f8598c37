"""The patch layer without NeoX: registry semantics, the lazy import hook, activation switches,
the .pth installer, and that the top-level patches/ folder installs as neox_acodm.patches."""

import subprocess
import sys
import types
from pathlib import Path

import pytest

from neox_acodm.patches import hook as _hook
from neox_acodm.patches.registry import Patch

from conftest import tiny_cfg

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake_module(monkeypatch):
    mod = types.ModuleType("acodm_fake_upstream")
    mod.train_step = lambda x: x + 1
    monkeypatch.setitem(sys.modules, "acodm_fake_upstream", mod)
    return mod


def test_patch_apply_is_idempotent_and_removable(fake_module):
    original = fake_module.train_step
    calls = []

    def make(orig):
        def wrapped(x):
            calls.append(x)
            return orig(x) * 10

        return wrapped

    p = Patch("acodm_fake_upstream:train_step", make)
    p.apply()
    p.apply()  # no double wrapping
    assert fake_module.train_step(1) == 20 and calls == [1]
    assert fake_module.train_step.__wrapped__ is original and p.is_applied()
    p.remove()
    assert fake_module.train_step is original and not p.is_applied()
    p.remove()  # harmless


def test_missing_target_names_target_and_verified_commit(fake_module):
    p = Patch("acodm_fake_upstream:build_train_valid_test_data_iterators", lambda o: o)
    with pytest.raises(
        RuntimeError, match=r"acodm_fake_upstream:build_train_valid_test_data_iterators not found.*ea7aefd8"
    ):
        p.apply()


def test_import_hook_runs_after_module_body(tmp_path, monkeypatch):
    pkg = tmp_path / "acodm_hook_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "target.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    _hook.install({"acodm_hook_pkg.target": lambda m: seen.append(m.VALUE)})
    try:
        import acodm_hook_pkg.target  # noqa: F401

        assert seen == [1]
        cb = lambda m: seen.append("second")  # noqa: E731
        _hook.install({"acodm_hook_pkg.target": cb})  # already imported: runs at once, once
        _hook.install({"acodm_hook_pkg.target": cb})
        assert seen == [1, "second"]
    finally:
        _hook.uninstall()
        sys.modules.pop("acodm_hook_pkg.target", None)
        sys.modules.pop("acodm_hook_pkg", None)


def _py(code: str, **env):
    import os

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env})


def test_activation_is_import_cheap_and_switchable():
    r = _py(
        "import sys, neox_acodm._bootstrap; "
        "print('torch' in sys.modules, any(type(f).__name__ == '_PostImportFinder' for f in sys.meta_path))"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "True"]
    r = _py(
        "import sys, neox_acodm._bootstrap; print(any(type(f).__name__ == '_PostImportFinder' for f in sys.meta_path))",
        NEOX_ACODM_DISABLE="1",
    )
    assert r.stdout.strip() == "False"


def test_install_hook_writes_and_removes_pth(tmp_path):
    from neox_acodm.tools.cli import PTH_LINE

    cmd = [sys.executable, "-m", "neox_acodm.tools.cli", "install-hook", "--site", str(tmp_path)]
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    assert (tmp_path / "neox_acodm.pth").read_text() == PTH_LINE
    # the line activates the hook where neox_acodm imports, and is silent where it does not
    # (uninstalled before `install-hook --remove`): no traceback at every Python start
    probe = f"import sys; exec({PTH_LINE!r}); print('neox_acodm._bootstrap' in sys.modules)"
    for flags, expect in (([], "True"), (["-S"], "False")):  # -S: no site-packages, as if uninstalled
        res = subprocess.run([sys.executable, *flags, "-c", probe], capture_output=True, text=True, cwd=tmp_path)
        assert (res.returncode, res.stdout.strip(), res.stderr) == (0, expect, ""), res
    removed = subprocess.run(cmd + ["--remove"], capture_output=True, text=True)
    assert removed.returncode == 0 and "removed" in removed.stderr
    assert not (tmp_path / "neox_acodm.pth").exists()
    again = subprocess.run(cmd + ["--remove"], capture_output=True, text=True)
    assert again.returncode == 0 and "nothing to remove" in again.stderr
    missing = subprocess.run(cmd[:-1] + [str(tmp_path / "nope")], capture_output=True, text=True)
    assert missing.returncode == 2 and "--site" in missing.stderr and "Traceback" not in missing.stderr


def test_patches_folder_is_installed_as_neox_acodm_patches():
    import neox_acodm.patches as p

    assert Path(p.__file__).resolve().parent == ROOT / "patches"


def _standin_arguments():
    """A stand-in of megatron.neox_arguments.arguments with NeoX's class layout."""
    import dataclasses
    import types

    @dataclasses.dataclass
    class NeoXArgsTemplate:
        pass

    @dataclasses.dataclass
    class NeoXArgsData(NeoXArgsTemplate):
        train_data_paths: list = None
        train_iters: int = None
        train_epochs: int = None

    @dataclasses.dataclass
    class NeoXArgs(NeoXArgsData):
        pass

    mod = types.ModuleType("standin_arguments")
    mod.NeoXArgs, mod.BASE_CLASSES, mod.NEOX_ARG_CLASSES = NeoXArgs, [NeoXArgsData], [NeoXArgsData]
    return mod


def test_neox_args_check_data_paths_before_launch(monkeypatch, capsys):
    import sys

    from neox_acodm.config import ConfigError
    from neox_acodm.patches import neox_args

    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    mod = _standin_arguments()
    neox_args.apply(mod)
    block = {"domains": [{"name": "a", "train_path": "data/a"}, {"name": "b"}]}
    ok = mod.NeoXArgs(acodm=block, train_data_paths=["data/a", "data/b"], train_iters=10)
    assert ok.acodm == block
    with pytest.raises(
        ConfigError, match=r"acodm.domains\[0\].train_path: 'data/a' differs from train_data_paths\[0\]"
    ):
        mod.NeoXArgs(acodm=block, train_data_paths=["data/x", "data/b"], train_iters=10)
    with pytest.raises(ConfigError, match="2 domains but train_data_paths has 1"):
        mod.NeoXArgs(acodm=block, train_data_paths=["data/a"], train_iters=10)
    # deepy.py does not catch it: our excepthook prints one line instead of a traceback
    try:
        mod.NeoXArgs(acodm=block, train_data_paths=["data/x", "data/b"], train_iters=10)
    except ConfigError:
        sys.excepthook(*sys.exc_info())
    err = capsys.readouterr().err
    assert err.startswith("neox_acodm: error: acodm.domains[0].train_path") and "Traceback" not in err
    assert err.count("\n") == 1
    from neox_acodm.config import parse_config

    cfg = neox_args.reconcile(parse_config({"domains": [{"name": "a", "metric_weight": 0.0}, {"name": "b"}]}), ok)
    assert cfg.domains[0].metric_weight == 0.0 and cfg.domains[1].train_path == "data/b"
    assert cfg.total_steps == 10


def test_pipe_eval_output_has_one_shape_for_both_deepspeeds():
    import torch

    from neox_acodm.patches.neox_eval import eval_output_pair

    loss = torch.tensor(2.5)
    assert eval_output_pair(loss, False) == (loss, {})  # PyPI DeepSpeed: a bare tensor
    pair = (loss, {"lm_loss": loss})
    assert eval_output_pair(pair, False) is pair  # DeeperSpeed: already a pair
    logits = (loss, torch.zeros(2))
    assert eval_output_pair(logits, True) is logits  # return_logits callers get what they asked for


def test_every_neox_patch_declares_its_signature_and_is_documented():
    import types
    from pathlib import Path

    from neox_acodm.patches import megatron_training, neox_args, neox_training

    integ = types.SimpleNamespace(cfg=tiny_cfg(), evaluation=types.SimpleNamespace(wrap=lambda f: f))
    patches = neox_training.neox_patches(integ) + [neox_training.gate(object)]
    targets = [p.target for p in patches]
    assert len(set(targets)) == len(targets)
    assert all(p.params for p in patches), [p.target for p in patches if not p.params]
    session = types.SimpleNamespace(validation=None)
    others = [
        neox_args.init_patch(object),
        neox_args.EXCEPTHOOK,
        neox_training.pipe_loss_patch(object(), lambda f: f),
        megatron_training.compile_helpers_patch(),
        *megatron_training.megatron_patches(session),
    ]
    upstream = (Path(__file__).resolve().parents[1] / "patches" / "UPSTREAM.md").read_text()
    for t in targets + [p.target for p in others] + ["megatron.data.data_utils:get_normalized_weights_and_num_samples"]:
        assert f"`{t.replace(':', '.')}`" in upstream, f"{t} is not documented in patches/UPSTREAM.md"


def _join_worker(rank, port, q):
    """Rank 0 of a 2-rank job whose rank 1 never starts (it died before joining)."""
    import datetime

    import torch.distributed as dist

    from neox_acodm.patches.neox_dist import wrap_init_distributed

    def init_distributed(
        dist_backend=None,
        auto_mpi_discovery=True,
        distributed_port=0,
        verbose=True,
        timeout=datetime.timedelta(seconds=600),
    ):  # DeepSpeed's signature, gloo
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=2, timeout=timeout)

    try:
        wrap_init_distributed(2.0)(init_distributed)(dist_backend="gloo")
        q.put("joined")
    except RuntimeError as e:
        q.put(str(e))


def test_a_rank_that_never_joins_fails_the_job_with_the_cause():
    import multiprocessing as mp
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    t0 = time.monotonic()
    p = ctx.Process(target=_join_worker, args=(0, port, q))
    p.start()
    msg = q.get(timeout=120)
    p.join(30)
    assert time.monotonic() - t0 < 100  # bounded by the 2 s join, not the 600 s default
    assert msg.startswith("acodm: not every rank of the job joined torch.distributed within 2 s")
    assert "neox-acodm install-hook" in msg
