"""Two simulated nodes: stock GPT-NeoX ``deepy.py train.py`` over two network namespaces.

Run by ``.ci/multinode-cpu`` (root, ``ip netns``), which creates the namespaces ``acodm_n0`` and
``acodm_n1`` joined by a veth pair (10.77.0.1 / 10.77.0.2, interface ``acodm0`` in each) and
sets ``ACODM_MULTINODE=1``. ``deepy.py`` runs in node 0 with a two-host hostfile, so DeepSpeed's
multi-node PDSH runner launches ``deepspeed.launcher.launch --node_rank=%n`` on each host; the
test-only ``tests/multinode/pdsh`` enters the host's namespace where real pdsh would ssh. gloo
runs over the namespace addresses. Skipped elsewhere.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_neox_integration import MKDATA, NEOX_DIR, SHIM, acodm_block, neox_config, scalars

from neox_acodm.checkpoint import load as checkpoint_load

NODES = os.environ.get("ACODM_NETNS", "acodm_n0,acodm_n1").split(",")
MASTER = os.environ.get("ACODM_MASTER_ADDR", "10.77.0.1")
SLOTS = int(os.environ.get("ACODM_SLOTS", "2"))
WORLD = SLOTS * len(NODES)
pytestmark = [
    pytest.mark.multinode,
    pytest.mark.skipif(
        not (NEOX_DIR and os.environ.get("ACODM_MULTINODE") == "1"),
        reason="run by .ci/multinode-cpu (needs root, ip netns and NEOX_DIR)",
    ),
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("multinode")
    (root / "data").mkdir()
    subprocess.run([sys.executable, "-c", MKDATA, NEOX_DIR, str(root / "data")], check=True)
    (root / "hostfile").write_text("".join(f"{n} slots={SLOTS}\n" for n in NODES))
    return root


def launch(root: Path, name: str, cfg: dict, block: str, node_env: dict[int, str] | None = None, timeout: int = 900):
    """``deepy.py`` on node 0; returns (completed process, per-rank trace records)."""
    trace = root / f"trace_{name}"
    trace.mkdir()
    (root / f"{name}.yml").write_text(json.dumps(cfg, indent=1))
    (root / f"{name}_acodm.yml").write_text(block)
    env = {
        **os.environ,
        "PYTHONPATH": str(SHIM),
        "NEOX_CPU_SHIM": "1",
        "DS_ACCELERATOR": "cpu",
        "GLOO_SOCKET_IFNAME": "acodm0",
        "ACODM_TRACE_DIR": str(trace),
        "OMP_NUM_THREADS": "1",
        "PATH": f"{Path(__file__).parent / 'multinode'}:{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    for i in range(len(NODES)):
        env[f"ACODM_NODE_ENV_{i}"] = f"ACODM_NODE={NODES[i]} " + (node_env or {}).get(i, "")
    res = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            NODES[0],
            sys.executable,
            "deepy.py",
            "train.py",
            str(root / f"{name}.yml"),
            str(root / f"{name}_acodm.yml"),
        ],
        cwd=NEOX_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    records = [json.loads(line) for f in sorted(trace.glob("rank*.jsonl")) for line in f.read_text().splitlines()]
    return res, records


def cluster_config(root: Path, ckpt: str, tb: str, **over) -> dict:
    return neox_config(root, ckpt, ckpt, tb, global_num_gpus=WORLD, master_addr=MASTER, **over)


def weights_by_step(records) -> dict[int, dict[int, list[float]]]:
    out: dict[int, dict[int, list[float]]] = {}
    for r in records:
        if "step" in r:
            out.setdefault(r["step"], {})[r["rank"]] = r["weights"]
    return out


def test_two_nodes_agree_every_step_save_once_and_resume_bit_identically(cluster):
    root = cluster
    ckpt, tb = str(root / "ckpt"), str(root / "tb")
    res, records = launch(root, "full", cluster_config(root, ckpt, tb), acodm_block(root))
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-5000:]
    assert f"dp={WORLD}" in log and all(f"{n}: " in log for n in NODES)  # ranks ran on both hosts
    assert {r["node"] for r in records} == set(NODES) and {r["rank"] for r in records} == set(range(WORLD))
    steps = weights_by_step(records)
    assert sorted(steps) == list(range(1, 7))
    for s, per_rank in steps.items():  # every rank of both nodes plans with the same weights
        assert len(per_rank) == WORLD and all(w == per_rank[0] for w in per_rank.values()), s
    assert steps[1][0] != steps[6][0], "the weights never moved"
    saves = [r for r in records if "saved" in r]  # only the owner writes the mixer state
    # (NeoX saves global_step6 twice: at checkpoint_factor and at the end of training)
    assert {r["saved"].rsplit("/", 3)[-3] for r in saves} == {"global_step3", "global_step6"}
    assert {r["rank"] for r in saves} == {0}
    events = [p for p in Path(tb).rglob("events.*") if scalars(str(p.parent), "acodm/weight/wiki")]
    assert len({p.parent for p in events}) == 1  # acodm/* written by one rank
    assert len(scalars(tb, "acodm/weight/wiki")) == 6

    # the whole job restarts from step 3: both nodes read the one state file the owner wrote
    ckpt2 = root / "ckpt_resume"
    ckpt2.mkdir()
    subprocess.run(["cp", "-r", str(Path(ckpt) / "global_step3"), str(ckpt2)], check=True)
    (ckpt2 / "latest").write_text("global_step3")
    print(
        f"\nmulti-node: {WORLD} ranks on {NODES}: weights identical on every rank for steps "
        f"{sorted(steps)}; state written by rank 0 only: {sorted({r['saved'] for r in saves})}"
    )
    res2, records2 = launch(
        root, "resume", cluster_config(root, str(ckpt2), str(root / "tb_resume")), acodm_block(root)
    )
    assert res2.returncode == 0, (res2.stdout + res2.stderr)[-5000:]
    resumed = weights_by_step(records2)
    assert sorted(resumed) == [4, 5, 6]
    for s in (4, 5, 6):  # bit-identical continuation on every rank of both nodes
        assert resumed[s] == steps[s], s
    print(f"multi-node: restart from global_step3: steps 4-6 bit-identical on all {WORLD} ranks")
    full, again = (checkpoint_load(Path(c) / "global_step6" / "acodm" / "state.pt") for c in (ckpt, ckpt2))
    assert torch.equal(full["weights"], again["weights"]) and full["cursors"] == again["cursors"]
    for k, v in full["mixer"]["agent"]["actor"].items():
        assert torch.equal(v, again["mixer"]["agent"]["actor"][k])


def test_a_node_without_the_hook_fails_the_job_with_the_cause(cluster):
    """Node 1's environment lacks the start-up hook (NEOX_ACODM_DISABLE=1 there): NeoX on node 1
    rejects the acodm key; node 0 must not wait out the process-group timeout."""
    root = cluster
    block = acodm_block(root) + "  collective_timeout_s: 20\n"
    t0 = time.monotonic()
    res, _ = launch(
        root,
        "nohook",
        cluster_config(root, str(root / "ckpt_nohook"), str(root / "tb_nohook")),
        block,
        node_env={1: "NEOX_ACODM_DISABLE=1"},
        timeout=600,
    )
    elapsed = time.monotonic() - t0
    log = res.stdout + res.stderr
    print(f"\nmulti-node: node 1 without the hook: job failed (rc {res.returncode}) after {elapsed:.0f} s")
    assert res.returncode != 0
    assert elapsed < 240, f"the job took {elapsed:.0f} s to fail"
    assert "acodm: not every rank of the job joined torch.distributed within 20 s" in log, log[-5000:]
    assert f"{NODES[1]}: " in log and "acodm" in "".join(line for line in log.splitlines() if line.startswith(NODES[1]))
