"""Stock GPT-NeoX on CPU with 2 ranks: ``python deepy.py train.py tiny.yml acodm.yml``.

Needs ``NEOX_DIR`` (a GPT-NeoX checkout; verified at ea7aefd8) and NeoX's Python deps in this
environment (DeepSpeed from PyPI with DS_BUILD_OPS=0, transformers==4.38, numpy<2,
setuptools<81, tensorboard). Skipped otherwise. ``tests/neox_cpu_shim`` (test-only) redirects
NeoX's unconditional CUDA calls to the CPU; no NeoX file is edited.

Checks: the block is accepted in deepy.py and every rank, weights move and are logged to
TensorBoard, the mixer state is saved in NeoX checkpoints, resume reproduces the uninterrupted
run bit for bit, and a policy learned on a small model drives a larger one frozen.
"""

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from neox_acodm.checkpoint import load as checkpoint_load

NEOX_DIR = os.environ.get("NEOX_DIR")
pytestmark = [pytest.mark.neox, pytest.mark.skipif(not NEOX_DIR, reason="set NEOX_DIR to a GPT-NeoX checkout to run")]
SHIM = Path(__file__).resolve().parent / "neox_cpu_shim"
DOMAINS = ["wiki", "code", "arxiv"]

MKDATA = """
import sys, numpy as np
sys.path.insert(0, sys.argv[1])
from megatron.data.indexed_dataset import MMapIndexedDatasetBuilder
for d, name in enumerate(%r):
    for split, ndocs in (("train", 60), ("valid", 10)):
        b = MMapIndexedDatasetBuilder(f"{sys.argv[2]}/{name}_{split}_text_document.bin", dtype=np.uint16)
        rng = np.random.default_rng(d * 10 + (split == "valid"))
        for _ in range(ndocs):
            n = int(rng.integers(40, 200))
            ids = (d * 150 + 33 + (np.arange(n) * (d + 1)) %% 150 + rng.integers(0, 3, n)) %% 500 + 1
            b.add_item(np.append(ids, 0).astype(np.uint16))
            b.end_document()
        b.finalize(f"{sys.argv[2]}/{name}_{split}_text_document.idx")
""" % (DOMAINS,)


def neox_config(root: Path, save: str, load: str, tb: str, hidden: int = 64, **over) -> dict:
    data = [str(root / "data" / f"{d}_train_text_document") for d in DOMAINS]
    valid = [str(root / "data" / f"{d}_valid_text_document") for d in DOMAINS]
    return {
        "pipe_parallel_size": 1,
        "model_parallel_size": 1,
        "num_layers": 2,
        "hidden_size": hidden,
        "num_attention_heads": 4,
        "seq_length": 64,
        "max_position_embeddings": 64,
        "pos_emb": "rotary",
        "no_weight_tying": True,
        "norm": "layernorm",
        "scaled_upper_triang_masked_softmax_fusion": False,
        "bias_gelu_fusion": False,
        "rope_fusion": False,
        "layernorm_fusion": False,
        "attention_config": [[["global"], 2]],
        "optimizer": {"type": "lion", "params": {"lr": 0.001, "betas": [0.9, 0.99]}},
        "min_lr": 0.0001,
        "zero_optimization": {"stage": 0},
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 3,
        "precision": "fp32",
        "checkpoint_activations": False,
        "train_iters": 6,
        "lr_decay_iters": 6,
        "lr_decay_style": "cosine",
        "warmup": 0.0,
        "eval_interval": 100000,
        "eval_iters": 0,
        "checkpoint_factor": 3,
        "log_interval": 1,
        "steps_per_print": 1,
        "data_impl": "mmap",
        "train_data_paths": data,
        "valid_data_paths": valid,
        "test_data_paths": valid,
        "train_data_weights": [1.0] * 3,
        "valid_data_weights": [1.0] * 3,
        "test_data_weights": [1.0] * 3,
        "tokenizer_type": "CharLevelTokenizer",
        "num_workers": 0,
        "distributed_backend": "gloo",
        "global_num_gpus": 2,
        "hostfile": str(root / "hostfile"),
        "no_ssh_check": True,
        "master_addr": "127.0.0.1",
        "launcher": "pdsh",
        "save": save,
        "load": load,
        "tensorboard_dir": tb,
        "use_wandb": False,
        "seed": 1234,
        **over,
    }


def acodm_block(root: Path, mixer: str = "acodm", reward: str = "estimator: exact", extra=(), **proxy) -> str:
    lines = ["acodm:", f"  mixer: {mixer}", "  seed: 7", "  domains:"]
    lines += [
        f"    - {{name: {d}, train_path: {root / 'data' / (d + '_train_text_document')}, weight: 1.0}}" for d in DOMAINS
    ]
    lines += [
        "  agent: {hidden_dim: 32, num_layers: 2, warmup_steps: 2, batch_size: 2, buffer_size: 64, "
        "tau: 0.05, device: cpu}",
        f"  reward: {{params: {{module: mlp_out, layers: all}}, {reward}}}",
        "  state: {norm_params: {module: mlp_out, layers: all}}",
        *extra,
    ]
    if proxy:
        lines += [f"  proxy: {{role: {proxy['role']}, policy_path: {proxy['path']}}}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def neox_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("neox")
    (root / "data").mkdir()
    res = subprocess.run([sys.executable, "-c", MKDATA, NEOX_DIR, str(root / "data")], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"this environment cannot import GPT-NeoX: {res.stderr.strip().splitlines()[-1]}")
    (root / "hostfile").write_text("localhost slots=2\n")
    pth = Path(sysconfig.get_paths()["purelib"]) / "neox_acodm.pth"
    installed_here = not pth.exists()
    if installed_here:  # users run `neox-acodm install-hook` once; do the same for the test
        subprocess.run([sys.executable, "-m", "neox_acodm.tools.cli", "install-hook"], check=True, capture_output=True)
    yield root
    if installed_here:
        pth.unlink()


def deepy(root: Path, name: str, cfg: dict, block: str, expect_ok: bool = True):
    (root / f"{name}.yml").write_text(json.dumps(cfg, indent=1))
    (root / f"{name}_acodm.yml").write_text(block)
    env = {
        **os.environ,
        "PYTHONPATH": str(SHIM),
        "NEOX_CPU_SHIM": "1",
        "DS_ACCELERATOR": "cpu",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    res = subprocess.run(
        [sys.executable, "deepy.py", "train.py", str(root / f"{name}.yml"), str(root / f"{name}_acodm.yml")],
        cwd=NEOX_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = res.stdout + res.stderr
    if not expect_ok:
        return res
    assert res.returncode == 0, log[-4000:]
    return log


def scalars(tb_dir: str, tag: str) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = []
    for f in sorted(Path(tb_dir).glob("events.*")):
        ev = EventAccumulator(str(f))
        ev.Reload()
        if tag in ev.Tags()["scalars"]:
            values = [e.value for e in ev.Scalars(tag)]
    return values


def test_deepy_train_logs_checkpoints_and_resumes_exactly(neox_env):
    root = neox_env
    ckpt, tb = str(root / "ckpt"), str(root / "tb")
    log = deepy(root, "run", neox_config(root, ckpt, ckpt, tb), acodm_block(root))
    assert "iteration        6/       6" in log
    assert "acodm: active (acodm, 3 domains, dp=2, grad_accum=3)" in log
    assert "acodm: capturing per-domain gradients of 2 tensors" in log
    for d in DOMAINS:
        w = scalars(tb, f"acodm/weight/{d}")
        assert len(w) == 6
        assert len(scalars(tb, f"acodm/reward/{d}")) == 6
    assert max(abs(a - b) for a, b in zip(scalars(tb, "acodm/weight/code"), scalars(tb, "acodm/weight/code")[1:])) > 0
    full = checkpoint_load(Path(ckpt) / "global_step6" / "acodm" / "state.pt")
    assert full["step"] == 6 and sum(full["cursors"]["positions"]) == 6 * 12

    # resume from step 3 into a fresh directory: the next steps must be bit-identical
    ckpt2 = root / "ckpt_resume"
    ckpt2.mkdir()
    subprocess.run(["cp", "-r", str(Path(ckpt) / "global_step3"), str(ckpt2)], check=True)
    (ckpt2 / "latest").write_text("global_step3")
    deepy(root, "resume", neox_config(root, str(ckpt2), str(ckpt2), str(root / "tb_resume")), acodm_block(root))
    resumed = checkpoint_load(ckpt2 / "global_step6" / "acodm" / "state.pt")
    assert torch.equal(full["weights"], resumed["weights"])
    assert full["cursors"] == resumed["cursors"]
    for k, v in full["mixer"]["agent"]["actor"].items():
        assert torch.equal(v, resumed["mixer"]["agent"]["actor"][k])


def test_proxy_policy_from_small_neox_model_drives_a_larger_one(neox_env):
    root = neox_env
    policy = root / "policy.pt"
    small = str(root / "ckpt_small")
    deepy(
        root,
        "small",
        neox_config(root, small, small, str(root / "tb_small"), hidden=64),
        acodm_block(root, role="source", path=policy),
    )
    assert policy.exists()
    big = str(root / "ckpt_big")
    log = deepy(
        root,
        "big",
        neox_config(root, big, big, str(root / "tb_big"), hidden=128),
        acodm_block(root, role="target", path=policy),
    )
    assert "acodm: active (acodm" in log
    assert "capturing per-domain gradients" not in log  # proxy target: no reward computation
    assert scalars(str(root / "tb_big"), "acodm/reward/wiki") == []
    assert len(scalars(str(root / "tb_big"), "acodm/weight/wiki")) == 6
    state = checkpoint_load(Path(big) / "global_step6" / "acodm" / "state.pt")
    src = checkpoint_load(policy)["actor"]
    for k, v in src.items():  # frozen: the target's actor is exactly the transferred policy
        assert torch.equal(v, state["mixer"]["agent"]["actor"][k])
    assert len(state["mixer"]["agent"]["replay"]["rewards"]) == 0


def test_non_pipe_path_with_per_domain_validation(neox_env):
    """pipe_parallel_size 0 (sequential model, losses through megatron.training.cross_entropy)
    and per-domain validation perplexity through NeoX's own evaluate."""
    root = neox_env
    ckpt, tb = str(root / "ckpt_seq"), str(root / "tb_seq")
    log = deepy(
        root,
        "seq",
        neox_config(root, ckpt, ckpt, tb, pipe_parallel_size=0, eval_interval=3, eval_iters=2),
        acodm_block(root),
    )
    assert log.count("acodm per-domain validation ppl at iteration") >= 2
    for d in DOMAINS + ["avg"]:
        vals = scalars(tb, f"acodm/val_ppl/{d}")
        assert len(vals) >= 2 and all(1 < v < 1e4 for v in vals)
    assert len(scalars(tb, "acodm/weight/wiki")) == 6
    state = checkpoint_load(Path(ckpt) / "global_step6" / "acodm" / "state.pt")
    assert sum(state["cursors"]["positions"]) == 6 * 12
    # the run report on the event files this NeoX run wrote
    from neox_acodm.tools.report import read_run, write_report

    run = read_run(tb)
    assert run.domains == DOMAINS and set(run.family("val_ppl")) == set(DOMAINS) | {"avg"}
    page = write_report(tb, root / "report_seq").read_text()
    assert all(f'alt="{p}"' in page for p in ("weights", "train_loss", "val_ppl", "rewards", "grad_cos"))


def test_two_pipeline_stages_train_and_resume_exactly(neox_env):
    """pipe_parallel_size 2 (1F1B): each stage captures the selected layers it owns, losses
    and partial Grams are summed over the pipe group, and resume is bit-identical."""
    root = neox_env
    over = dict(pipe_parallel_size=2, num_layers=4, attention_config=[[["global"], 4]])
    ckpt, tb = str(root / "ckpt_pp"), str(root / "tb_pp")
    log = deepy(root, "pp", neox_config(root, ckpt, ckpt, tb, **over), acodm_block(root))
    assert "acodm: active (acodm, 3 domains, dp=1, grad_accum=3)" in log
    assert "['2.mlp.linear2.weight', '3.mlp.linear2.weight']" in log  # stage 0
    assert "['4.mlp.linear2.weight', '5.mlp.linear2.weight']" in log  # stage 1
    assert len(scalars(tb, "acodm/reward/wiki")) == 6
    full = checkpoint_load(Path(ckpt) / "global_step6" / "acodm" / "state.pt")
    ckpt2 = root / "ckpt_pp_resume"
    ckpt2.mkdir()
    subprocess.run(["cp", "-r", str(Path(ckpt) / "global_step3"), str(ckpt2)], check=True)
    (ckpt2 / "latest").write_text("global_step3")
    deepy(
        root,
        "pp_resume",
        neox_config(root, str(ckpt2), str(ckpt2), str(root / "tb_pp_resume"), **over),
        acodm_block(root),
    )
    resumed = checkpoint_load(ckpt2 / "global_step6" / "acodm" / "state.pt")
    assert torch.equal(full["weights"], resumed["weights"])
    for k, v in full["mixer"]["agent"]["critic"].items():
        assert torch.equal(v, resumed["mixer"]["agent"]["critic"][k])


@pytest.mark.parametrize("layout", ["dp", "pp"])
def test_mixed_micro_batches_train_and_resume_exactly(neox_env, layout):
    """sampling.granularity sample: every micro-batch mixes domains, per-domain losses come from
    the per-token losses, gradients from activations ([s, b, h], Kronecker-projected), on 2 DP
    ranks or 2 pipeline stages; a resume from step 3 is bit-identical."""
    root = neox_env
    over = dict(pipe_parallel_size=2, num_layers=4, attention_config=[[["global"], 4]]) if layout == "pp" else {}
    block = acodm_block(
        root,
        mixer="gram_softmax",
        reward="mode: aligned, self_term: raw, estimator: projected, projection_rank: 16",
        extra=["  sampling: {granularity: sample, allocation: stratified}"],
    )
    ckpt, tb = str(root / f"ckpt_mix_{layout}"), str(root / f"tb_mix_{layout}")
    log = deepy(root, f"mix_{layout}", neox_config(root, ckpt, ckpt, tb, **over), block)
    assert "projected, activations" in log
    losses = [scalars(tb, f"acodm/loss/{d}") for d in DOMAINS]
    # a loss is logged for the steps that drew the domain: nearly all of them (6-12 samples a step)
    assert all(len(v) >= 4 and all(np.isfinite(v)) for v in losses), [len(v) for v in losses]
    assert len(set(scalars(tb, "acodm/weight/code"))) > 1, "the weights never moved"
    full = checkpoint_load(Path(ckpt) / "global_step6" / "acodm" / "state.pt")
    ckpt2 = root / f"ckpt_mix_{layout}_resume"
    ckpt2.mkdir()
    subprocess.run(["cp", "-r", str(Path(ckpt) / "global_step3"), str(ckpt2)], check=True)
    (ckpt2 / "latest").write_text("global_step3")
    deepy(
        root, f"mix_{layout}_r", neox_config(root, str(ckpt2), str(ckpt2), str(root / f"tb_mr_{layout}"), **over), block
    )
    resumed = checkpoint_load(ckpt2 / "global_step6" / "acodm" / "state.pt")
    assert torch.equal(full["weights"], resumed["weights"]) and full["cursors"] == resumed["cursors"]


def test_two_tensor_parallel_ranks(neox_env):
    """model_parallel_size 2: each TP rank captures its shard, partial Grams are summed over
    the TP group, and the rank without a data loader still follows the plan."""
    root = neox_env
    ckpt, tb = str(root / "ckpt_tp"), str(root / "tb_tp")
    log = deepy(root, "tp", neox_config(root, ckpt, ckpt, tb, model_parallel_size=2), acodm_block(root))
    assert log.count("capturing per-domain gradients of 2 tensors (16384 elements") == 2  # half of 32768 each
    rewards = [scalars(tb, f"acodm/reward/{d}") for d in DOMAINS]
    assert all(len(r) == 6 for r in rewards) and any(v != 0 for r in rewards for v in r)
    state = checkpoint_load(Path(ckpt) / "global_step6" / "acodm" / "state.pt")
    assert state["step"] == 6 and sum(state["cursors"]["positions"]) == 6 * 6  # dp=1: 6 samples/step


def test_pipe_path_per_domain_validation_with_pypi_deepspeed(neox_env):
    """pipe_parallel_size 1 with eval_iters > 0: PyPI DeepSpeed's eval_batch returns a bare
    loss, DeeperSpeed's a pair; NeoX's evaluate gets (loss, metrics) from both."""
    root = neox_env
    ckpt, tb = str(root / "ckpt_pe"), str(root / "tb_pe")
    log = deepy(root, "pe", neox_config(root, ckpt, ckpt, tb, eval_interval=3, eval_iters=2), acodm_block(root))
    assert log.count("acodm per-domain validation ppl at iteration") >= 2
    assert all(1 < v < 1e4 for v in scalars(tb, "acodm/val_ppl/avg"))


def test_a_train_path_mismatch_fails_in_deepy_before_launch(neox_env):
    root = neox_env
    block = acodm_block(root).replace("wiki_train_text_document", "elsewhere_text_document", 1)
    res = deepy(
        root,
        "bad",
        neox_config(root, str(root / "c_bad"), str(root / "c_bad"), str(root / "tb_bad")),
        block,
        expect_ok=False,
    )
    err = res.stdout + res.stderr
    assert res.returncode != 0
    assert "neox_acodm: error: acodm.domains[0].train_path:" in err and "differs from train_data_paths[0]" in err
    assert "Traceback" not in err and "deepspeed.launcher" not in err  # nothing was launched
