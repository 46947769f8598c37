"""Shadow mode (``acodm.shadow: true``): the mixer runs and learns on a DeepSpeed engine run
whose data and losses stay bit-identical to a run without the plugin fed the static plan
(2 data-parallel ranks, gloo)."""

import os
import pickle

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

pytest.importorskip("deepspeed")

from neox_acodm.config import ConfigError  # noqa: E402

from conftest import tiny_cfg  # noqa: E402
from support import free_port  # noqa: E402
from test_deepspeed_engine import GA, MB, WORLD, SyntheticDomain, ce, layers  # noqa: E402

STEPS = 8


def _cfg():
    return tiny_cfg(
        "acodm",
        total_steps=STEPS,
        shadow=True,
        agent={"warmup_steps": 2, "batch_size": 2},
        reward={"params": {"module": "mlp_out", "layers": "all"}},
    )


def _worker(rank, port, out_dir, mode):
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        DS_ACCELERATOR="cpu",
    )
    torch.set_num_threads(1)
    import deepspeed
    import torch.distributed as dist
    from torch import nn

    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    torch.manual_seed(0)
    model = nn.Sequential(*layers())
    engine, *_ = deepspeed.initialize(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        config={
            "train_batch_size": MB * GA * WORLD,
            "train_micro_batch_size_per_gpu": MB,
            "gradient_accumulation_steps": GA,
            "steps_per_print": 10**9,
        },
    )
    cfg, data = _cfg(), [SyntheticDomain(d) for d in range(3)]
    log = {"losses": [], "batches": [], "weights": [], "shadow": []}
    if mode == "shadow":
        from neox_acodm.dist import ParallelLayout
        from neox_acodm.neox.session import DeepSpeedMixingSession

        session = DeepSpeedMixingSession(
            cfg,
            engine,
            datasets=data,
            layout=ParallelLayout(WORLD, rank),
            grad_accum=GA,
            micro_batch=MB,
            total_steps=STEPS,
        )
        it, loss_fn = session.train_iterator(), session.wrap_loss(ce)
    else:  # no plugin: no runtime, no hooks; the static plan from the pure planner
        from torch.utils.data import default_collate

        from neox_acodm.initial import resolve_initial_weights
        from neox_acodm.plan import DomainCursors, build_step_plan, normalize_weights

        w0 = normalize_weights(resolve_initial_weights(cfg, None), cfg.sampling.min_weight, cfg.sampling.max_weight)
        cursors = DomainCursors([len(d) for d in data], cfg.seed)

        def plain_batches():
            for step in range(STEPS):
                plan = build_step_plan(
                    cfg.seed, step, w0, WORLD, GA, cfg.sampling.min_microbatches_per_domain, cfg.sampling.allocation
                )
                starts = cursors.assign(plan, MB)
                for d, s in zip(plan.domains[rank], starts[rank]):
                    idx = cursors.sample_indices(int(d), int(s), MB)
                    yield default_collate([data[int(d)][int(i)] for i in idx])

        it, loss_fn = plain_batches(), ce
    for _ in range(STEPS):
        for _ in range(GA):
            x, y = next(it)
            loss = loss_fn(engine(x), y)
            engine.backward(loss)
            engine.step()
            log["losses"].append(loss.detach().clone())
            log["batches"].append(x.clone())
        if mode == "shadow":
            metrics = session.end_step()
            log["weights"].append(session.rt.weights.copy())
            log["shadow"].append([metrics.get(f"shadow_weight/{n}") for n in cfg.domain_names])
    log["params"] = [p.detach().clone() for p in engine.module.parameters()]
    with open(os.path.join(out_dir, f"{mode}_rank{rank}.pkl"), "wb") as f:
        pickle.dump(log, f)
    dist.barrier()
    os._exit(0)  # skip gloo destructors (see test_deepspeed_engine)


def _run(tmp_path, mode):
    mp.spawn(_worker, args=(free_port(), str(tmp_path), mode), nprocs=WORLD, join=True)
    return [pickle.load(open(tmp_path / f"{mode}_rank{r}.pkl", "rb")) for r in range(WORLD)]


def test_shadow_run_is_bit_identical_to_the_static_plan_without_the_plugin(tmp_path):
    shadow, plain = _run(tmp_path, "shadow"), _run(tmp_path, "plain")
    for s, p in zip(shadow, plain):
        assert all(torch.equal(a, b) for a, b in zip(s["batches"], p["batches"]))  # same data
        assert all(torch.equal(a, b) for a, b in zip(s["losses"], p["losses"]))  # same losses, bit for bit
        assert all(torch.equal(a, b) for a, b in zip(s["params"], p["params"]))  # same model
        w0 = s["weights"][0]
        assert all(np.array_equal(w, w0) for w in s["weights"])  # the plan never moved
    owner = np.array(shadow[0]["shadow"], dtype=float)  # the mixer's choices, logged on the owner
    assert np.allclose(owner.sum(axis=1), 1.0)
    assert np.abs(owner - shadow[0]["weights"][0]).max() > 1e-3, "the shadow mixer never moved"
    assert all(v is None for row in shadow[1]["shadow"] for v in row)  # other ranks hold no mixer


def test_shadow_needs_a_mixer_that_chooses():
    with pytest.raises(ConfigError, match=r"acodm\.shadow: .*mixer 'static' has nothing to shadow"):
        tiny_cfg("static", shadow=True)
