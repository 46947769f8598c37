"""A stuck (alive, not dead) peer: a rank SIGSTOPped in the middle of a job. The survivors raise
the plugin's CollectiveTimeout on time and then *exit*: the stuck collective's work would
otherwise keep each survivor's interpreter alive at shutdown until the process group's own
timeout (30 min by default)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import free_port

TIMEOUT_S = 4.0
WORKER = r"""
import os, signal, sys
import torch, torch.distributed as dist
sys.path.insert(0, {tests!r})
from conftest import TinyLM, tiny_cfg, train_steps
from neox_acodm.dist import ParallelLayout
from neox_acodm.runtime import MixingRuntime

rank, world = int(sys.argv[1]), int(sys.argv[2])
dist.init_process_group("gloo", rank=rank, world_size=world)
cfg = tiny_cfg("odm", collective_timeout_s={timeout})
model = TinyLM()
rt = MixingRuntime(cfg, layout=ParallelLayout(world, rank, dist.group.WORLD, dist.group.WORLD),
                   dataset_sizes=[50, 60, 70], grad_accum=2, micro_batch=2, model=model)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
train_steps(rt, model, opt, 2)  # every rank steps together
print("stepped", flush=True)
if rank == world - 1:
    os.kill(os.getpid(), signal.SIGSTOP)  # alive but stuck, as a hung rank is
train_steps(rt, model, opt, 1)  # the survivors' end_step waits for the stuck rank
"""


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs POSIX signals")
@pytest.mark.parametrize("world", [2, 3])
def test_every_survivor_exits_soon_after_the_collective_timeout(world, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(Path(__file__).resolve().parent), timeout=TIMEOUT_S))
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(r), str(world)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(world)
    ]
    stuck, survivors = procs[-1], procs[:-1]
    try:
        t0 = time.monotonic()
        outs = [p.communicate(timeout=TIMEOUT_S + 90) for p in survivors]  # start-up + 2 steps + timeout
        elapsed = time.monotonic() - t0
        for p, (out, err) in zip(survivors, outs):
            assert "stepped" in out, err[-2000:]
            assert p.returncode != 0 and "CollectiveTimeout" in err and "did not complete within" in err, err[-2000:]
        # measured from the start (start-up and 2 steps included): within the timeout + 30 s
        assert elapsed < TIMEOUT_S + 30, f"survivors took {elapsed:.0f} s to exit"
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
            p.communicate()
    assert stuck.returncode != 0
