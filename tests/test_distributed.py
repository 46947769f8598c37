"""2-process gloo: only rank 0 owns the agent; both ranks end with identical weights and plans,
and draw disjoint samples."""

import os
import pickle

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from neox_acodm.dist import ParallelLayout
from neox_acodm.runtime import MixingRuntime

from conftest import TinyLM, domain_batch, tiny_cfg
from support import free_port


def _worker(rank: int, world: int, port: int, out_dir: str, mixer: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        cfg = tiny_cfg(mixer)
        model = TinyLM(seed=0)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        rt = MixingRuntime(
            cfg,
            dataset_sizes=[50, 60, 70],
            grad_accum=3,
            micro_batch=2,
            model=model,
            layout=ParallelLayout(world, rank, dist.group.WORLD, dist.group.WORLD),
        )
        log = {"weights": [], "plans": [], "samples": [], "owner": rt.mixer is not None}
        for _ in range(8):
            log["plans"].append(rt.plan().domains.copy())
            opt.zero_grad()
            mbs = rt.micro_batches()
            log["samples"].append([(d, idx.tolist()) for d, idx in mbs])
            for g, (d, idx) in enumerate(mbs):
                rt.begin_microbatch(g)
                loss = model.loss(domain_batch(d, idx))
                loss.backward()
                rt.record_loss(d, loss)
            for p in model.parameters():  # what DDP does
                dist.all_reduce(p.grad)
                p.grad /= world
            opt.step()
            rt.end_step()
            log["weights"].append(rt.weights.copy())
        with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
            pickle.dump(log, f)
        dist.barrier()  # a sender may finish its last broadcast before the receiver got it
    except BaseException:
        dist.destroy_process_group()
        raise
    # Skip the gloo process-group destructors: at interpreter exit they intermittently abort
    # ("terminate called without an active exception") after all work is done and written.
    os._exit(0)


@pytest.mark.parametrize("mixer", ["acodm", "odm"])
def test_two_ranks_identical_weights_after_rank0_update(tmp_path, mixer):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path), mixer), nprocs=2, join=True)
    logs = [pickle.load(open(tmp_path / f"rank{r}.pkl", "rb")) for r in range(2)]
    assert logs[0]["owner"] and not logs[1]["owner"]
    for a, b in zip(logs[0]["weights"], logs[1]["weights"]):
        assert np.array_equal(a, b)
    assert np.abs(np.diff(np.array(logs[0]["weights"]), axis=0)).max() > 0
    for a, b in zip(logs[0]["plans"], logs[1]["plans"]):
        assert np.array_equal(a, b)
    for s0, s1 in zip(logs[0]["samples"], logs[1]["samples"]):
        set0 = {(d, i) for d, idx in s0 for i in idx}
        set1 = {(d, i) for d, idx in s1 for i in idx}
        assert not set0 & set1


def _missing_state_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    rt = MixingRuntime(
        tiny_cfg("odm"),
        dataset_sizes=[50, 60, 70],
        grad_accum=2,
        micro_batch=2,
        layout=ParallelLayout(world, rank, dist.group.WORLD, dist.group.WORLD),
    )
    try:
        rt.load(os.path.join(out_dir, "does_not_exist.pt"))
        outcome = "loaded"
    except (FileNotFoundError, RuntimeError) as e:
        outcome = f"{type(e).__name__}: {e}"
    with open(os.path.join(out_dir, f"missing{rank}.txt"), "w") as f:
        f.write(outcome)
    dist.barrier()
    os._exit(0)


def test_unreadable_state_raises_on_every_rank_instead_of_hanging(tmp_path):
    mp.spawn(_missing_state_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    owner = (tmp_path / "missing0.txt").read_text()
    other = (tmp_path / "missing1.txt").read_text()
    assert owner.startswith("FileNotFoundError") and "does_not_exist.pt" in owner
    assert other.startswith("RemoteFailure") and "failed on rank 0" in other and "does_not_exist.pt" in other
