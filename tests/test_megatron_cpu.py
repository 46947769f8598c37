"""Megatron-LM through ``neox_acodm.megatron.pretrain_gpt`` on CPU: DP 2, TP 2 and PP 2 (gloo).

Run by ``.ci/megatron-cpu`` (Python 3.12, megatron-core 0.19 from a Megatron-LM checkout,
``tests/megatron_cpu_shim`` sending Megatron's CUDA placements to the CPU). Skipped elsewhere.
Each case trains 6 iterations with checkpoints at 3 and 6; DP 2 and PP 2 then resume a second
job from 3 and must reproduce the mixer state and the training losses bit for bit.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from support import free_port

MLM = os.environ.get("MEGATRON_LM_DIR")
pytestmark = [
    pytest.mark.megatron_cpu,
    pytest.mark.skipif(
        not (MLM and os.environ.get("MEGATRON_CPU") == "1"),
        reason="run by .ci/megatron-cpu (Python 3.12, a Megatron-LM checkout)",
    ),
]
SHIM = Path(__file__).resolve().parent / "megatron_cpu_shim"
DOMAINS = ["wiki", "code", "arxiv"]

MKDATA = """
import sys, numpy as np
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
for d, name in enumerate(%r):
    for split, ndocs in (("train", 120), ("valid", 20)):
        prefix = f"{sys.argv[1]}/{name}_{split}_text_document"
        b = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
        rng = np.random.default_rng(d * 10 + (split == "valid"))
        for _ in range(ndocs):
            n = int(rng.integers(40, 200))
            ids = (d * 150 + 33 + (np.arange(n) * (d + 1)) %% 150 + rng.integers(0, 3, n)) %% 500 + 1
            b.add_document(np.append(ids, 0).astype(np.uint16), [n + 1])
        b.finalize(prefix + ".idx")
""" % (DOMAINS,)

ARGS = [
    "--tokenizer-type",
    "NullTokenizer",
    "--vocab-size",
    "512",
    "--num-layers",
    "4",
    "--hidden-size",
    "64",
    "--num-attention-heads",
    "4",
    "--seq-length",
    "64",
    "--max-position-embeddings",
    "64",
    "--micro-batch-size",
    "2",
    "--global-batch-size",
    "8",
    "--train-iters",
    "6",
    "--lr",
    "1e-3",
    "--min-lr",
    "1e-4",
    "--clip-grad",
    "0",
    "--lr-decay-style",
    "cosine",
    "--transformer-impl",
    "local",
    "--distributed-backend",
    "gloo",
    "--no-gradient-accumulation-fusion",
    "--no-bias-gelu-fusion",
    "--no-bias-dropout-fusion",
    "--no-rope-fusion",
    "--no-persist-layer-norm",
    "--no-masked-softmax-fusion",
    "--use-cpu-initialization",
    "--attention-dropout",
    "0",
    "--hidden-dropout",
    "0",
    "--eval-iters",
    "1",
    "--eval-interval",
    "3",
    "--log-interval",
    "1",
    "--save-interval",
    "3",
    "--ckpt-format",
    "torch",
    "--num-workers",
    "0",
    "--seed",
    "1234",
]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("megatron_cpu")
    (root / "data").mkdir()
    subprocess.run([sys.executable, "-c", MKDATA, str(root / "data")], check=True, env=_env())
    lines = ["acodm:", "  mixer: acodm", "  seed: 7", "  log_interval: 1", "  collective_timeout_s: 120", "  domains:"]
    lines += [
        f"    - {{name: {d}, train_path: {root}/data/{d}_train_text_document, "
        f"valid_path: {root}/data/{d}_valid_text_document}}"
        for d in DOMAINS
    ]
    lines += [
        "  agent: {hidden_dim: 32, num_layers: 2, batch_size: 2, buffer_size: 64, warmup_steps: 2, "
        "tau: 0.05, device: cpu}",
        "  reward: {params: {module: mlp_out, layers: [-1, -2]}}",
        "  state: {norm_params: {module: mlp_out, layers: all}}",
    ]
    (root / "acodm.yml").write_text("\n".join(lines) + "\n")
    mixed = [ln for ln in lines if not ln.startswith("  reward:")] + [
        "  reward: {params: {module: mlp_out, layers: [-1, -2]}, estimator: projected, projection_rank: 16}",
        "  sampling: {granularity: sample, allocation: stratified}",
    ]
    (root / "acodm_mixed.yml").write_text("\n".join(mixed) + "\n")
    return root


def _env() -> dict:
    return {
        **os.environ,
        "PYTHONPATH": f"{SHIM}:{MLM}",
        "MEGATRON_CPU_SHIM": "1",
        "OMP_NUM_THREADS": "1",
        "CUDA_DEVICE_MAX_CONNECTIONS": "1",
    }


def train(root: Path, name: str, *extra: str, config: str = "acodm.yml") -> str:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(free_port()),
        "-m",
        "neox_acodm.megatron.pretrain_gpt",
        *ARGS,
        "--data-cache-path",
        str(root / "cache"),
        "--acodm-config",
        str(root / config),
        "--tensorboard-dir",
        str(root / f"tb_{name}"),
        *extra,
    ]
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-6000:]
    return log


def scalars(tb: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, dict[int, float]] = {}
    for f in sorted(tb.rglob("events.*")):
        acc = EventAccumulator(str(f))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
    return out


def state(ckpt: Path, it: int) -> dict:
    from neox_acodm.checkpoint import load

    return load(ckpt / "acodm" / f"iter_{it:07d}.pt")


def check_run(root: Path, name: str, log: str) -> dict:
    tb = scalars(root / f"tb_{name}")
    assert "acodm: capturing per-domain gradients" in log
    for d in DOMAINS:
        assert sorted(tb[f"acodm/weight/{d}"]) == list(range(1, 7))  # every step, on the writer rank
        assert {3, 6} <= set(tb[f"acodm/val_ppl/{d}"])  # Megatron's validation sets, one per domain
        assert f"lm loss validation-{d}" in tb
    assert {3, 6} <= set(tb["acodm/val_ppl/avg"]) and "acodm/critic_loss" in tb
    w = [tb[f"acodm/weight/{d}"] for d in DOMAINS]
    assert max(abs(w[0][s] - w[0][s + 1]) for s in range(1, 6)) > 0, "the weights never moved"
    return tb


def resume_matches(root: Path, name: str, parallel: list[str], full_tb: dict, config: str = "acodm.yml") -> None:
    """A second job from iteration 3 reproduces the mixer state and training losses at 4-6."""
    load = root / f"ck_{name}_load"
    shutil.copytree(root / f"ck_{name}", load)
    (load / "latest_checkpointed_iteration.txt").write_text("3")
    log = train(
        root, f"{name}_resume", "--load", str(load), "--save", str(root / f"ck_{name}_resume"), *parallel, config=config
    )
    tb = check_run_resumed(root, f"{name}_resume", log)
    for s in (4, 5, 6):
        assert tb["lm loss"][s] == full_tb["lm loss"][s], s
        for d in DOMAINS:
            assert tb[f"acodm/weight/{d}"][s] == full_tb[f"acodm/weight/{d}"][s]
    a, b = state(root / f"ck_{name}", 6), state(root / f"ck_{name}_resume", 6)
    assert torch.equal(a["weights"], b["weights"]) and a["cursors"] == b["cursors"]
    for k, v in a["mixer"]["agent"]["actor"].items():
        assert torch.equal(v, b["mixer"]["agent"]["actor"][k]), k
    val_a, val_b = full_tb["acodm/val_ppl/avg"][6], tb["acodm/val_ppl/avg"][6]
    assert val_a == val_b  # each domain's validation stream resumes where it stopped
    print(
        f"\nmegatron-cpu {name}: resume from 3 bit-identical (weights, cursors, actor, lm loss 4-6); "
        f"final val ppl avg @6 {val_a:.3f} (both runs)"
    )


def check_run_resumed(root: Path, name: str, log: str) -> dict:
    tb = scalars(root / f"tb_{name}")
    assert sorted(tb["acodm/weight/wiki"]) == [4, 5, 6]
    return tb


@pytest.mark.parametrize(
    "name,parallel,resume",
    [
        ("dp2", [], True),
        ("tp2", ["--tensor-model-parallel-size", "2"], False),
        ("pp2", ["--pipeline-model-parallel-size", "2"], True),
    ],
)
def test_megatron_lm_two_ranks(work, name, parallel, resume):
    log = train(work, name, "--save", str(work / f"ck_{name}"), *parallel)
    tb = check_run(work, name, log)
    if name == "tp2":  # each rank captures its shard of the selected linear_fc2 weights
        assert "capturing per-domain gradients of 2 tensors (16384 elements" in log
    print(
        f"\nmegatron-cpu {name}: 6 iterations, lm loss {tb['lm loss'][1]:.4f} -> {tb['lm loss'][6]:.4f}, "
        f"val ppl avg @6 {tb['acodm/val_ppl/avg'][6]:.3f}"
    )
    if resume:
        resume_matches(work, name, parallel, tb)


@pytest.mark.parametrize(
    "name,parallel,resume",
    [
        ("mixed_dp2", [], True),
        ("mixed_tp2", ["--tensor-model-parallel-size", "2"], False),
        ("mixed_pp2", ["--pipeline-model-parallel-size", "2"], True),
    ],
)
def test_megatron_lm_mixed_micro_batches(work, name, parallel, resume):
    """sampling.granularity sample: every micro-batch mixes domains; per-sample losses come from
    Megatron's per-token losses, gradients from activations (Kronecker-projected, each TP shard
    its own projection); no observed layer is unfused; DP 2 and PP 2 resume bit-identically."""
    log = train(work, name, "--save", str(work / f"ck_{name}"), *parallel, config="acodm_mixed.yml")
    assert "projected, activations" in log and "fused wgrad accumulation stays on except" not in log
    tb = check_run(work, name, log)
    if resume:
        resume_matches(work, name, parallel, tb, config="acodm_mixed.yml")
