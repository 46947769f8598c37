"""The shared adapter contract: one Patch registry (idempotent, reversible, signature-checked)
for the Megatron entry point too, the shared MixingSession, and the metrics owner that
routes acodm/* scalars to the rank that has the writer (Megatron's is the last rank)."""

import os
import pickle
import sys
import types

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from neox_acodm.config import ConfigError
from neox_acodm.dist import ParallelLayout
from neox_acodm.metrics import MetricsSink, tag
from neox_acodm.runtime import MixingRuntime
from neox_acodm.session import MixingSession

from conftest import TinyLM, domain_batch, tiny_cfg
from support import free_port


def _standin_training(rename: bool = False):
    mod = types.ModuleType("megatron.training.training")
    calls = []

    def setup_model_and_optimizer(model_provider_func, model_type, *a, **kw):
        calls.append("setup")
        return "model", "optimizer", "scheduler"

    if rename:

        def train_step(forward_step_fn, data_iterator, model, optimizer, *a, **kw):  # renamed arg
            return {}, 0
    else:

        def train_step(forward_step_func, data_iterator, model, optimizer, *a, **kw):
            calls.append("step")
            return {}, 1, False

    def save_checkpoint(iteration, model, optimizer, *a, **kw):
        calls.append("save")

    def evaluate(
        forward_step_func,
        data_iterator,
        model,
        process_non_loss_data_func,
        config,
        verbose=False,
        non_loss_data_func=None,
        eval_iters=None,
        pg_collection=None,
        p2p_communicator=None,
    ):
        calls.append("evaluate")
        return {"lm loss": torch.tensor(float(next(data_iterator)))}, None, False

    def evaluate_and_print_results(
        prefix,
        forward_step_func,
        data_iterator,
        model,
        iteration,
        process_non_loss_data_func,
        config,
        verbose=False,
        write_to_tensorboard=True,
        non_loss_data_func=None,
        pg_collection=None,
        p2p_communicator=None,
    ):
        # core_r0.19: one evaluate() per validation set when args.multiple_validation_sets
        iterators = data_iterator if isinstance(data_iterator, list) else [data_iterator]
        for it in iterators:
            mod.evaluate(forward_step_func, it, model, process_non_loss_data_func, config, verbose)

    mod.setup_model_and_optimizer, mod.train_step, mod.save_checkpoint = (
        setup_model_and_optimizer,
        train_step,
        save_checkpoint,
    )
    mod.evaluate, mod.evaluate_and_print_results = evaluate, evaluate_and_print_results
    return mod, calls


class _Session:
    def __init__(self, writer=None):
        from neox_acodm.megatron.validation import DomainValidation

        self.events = []
        self.validation = DomainValidation(["a", "b"], lambda: writer)

    def setup(self, model, optimizer):
        self.events.append(("setup", model, optimizer))

    def end_step(self, skipped=False):
        self.events.append(("end_step", skipped))

    def save(self, iteration):
        self.events.append(("save", iteration))


@pytest.fixture
def standin(monkeypatch):
    pytest.importorskip("megatron.core")
    from neox_acodm.megatron import pretrain_gpt

    def make(rename=False):
        mod, calls = _standin_training(rename)
        monkeypatch.setitem(sys.modules, "megatron.training.training", mod)
        return mod, calls

    return pretrain_gpt, make


def test_megatron_patches_use_the_registry_and_pass_skipped_iter(standin):
    pretrain_gpt, make = standin
    mod, calls = make()
    originals = (mod.setup_model_and_optimizer, mod.train_step, mod.save_checkpoint)
    session = _Session()
    patches = pretrain_gpt.install(session)
    assert {p.attr for p in patches} == {
        "setup_model_and_optimizer",
        "train_step",
        "save_checkpoint",
        "evaluate_and_print_results",
        "evaluate",
    }
    assert all(p.is_applied() for p in patches)
    for p in patches:
        p.apply()  # idempotent
    assert mod.train_step.__wrapped__ is originals[1]
    assert mod.setup_model_and_optimizer(lambda: None, "encoder") == ("model", "optimizer", "scheduler")
    mod.train_step(None, None, None, None)
    mod.save_checkpoint(5, None, None)
    assert session.events == [("setup", "model", "optimizer"), ("end_step", True), ("save", 5)]
    assert calls == ["setup", "step", "save"]
    for p in patches:
        p.remove()
    assert (mod.setup_model_and_optimizer, mod.train_step, mod.save_checkpoint) == originals


def test_megatron_logs_per_domain_validation_ppl(standin):
    import argparse
    import math

    from neox_acodm.megatron.validation import DomainIterators, check_validation_args

    pretrain_gpt, make = standin
    mod, calls = make()
    written, args = [], argparse.Namespace(eval_iters=3, multiple_validation_sets=False, validation_set_names=None)
    seen = []
    original_eval = mod.evaluate

    def evaluate(forward_step_func, data_iterator, model, *a, **kw):  # what Megatron sees per set
        seen.append((args.multiple_validation_sets, args.validation_set_names, args.eval_iters))
        return original_eval(forward_step_func, data_iterator, model, *a, **kw)

    mod.evaluate = evaluate
    session = _Session(writer=lambda t, v, s: written.append((t, round(v, 6), s)))
    session.validation.get_args = lambda: args
    patches = pretrain_gpt.install(session)
    try:
        check_validation_args(args, ["a", "b"])  # what the dataset provider checks
        sets = DomainIterators([iter([1.0]), iter([2.0])])  # handed to Megatron as one "loader"
        mod.evaluate_and_print_results("iteration 10", None, sets, None, 10, None, None)
        mod.evaluate_and_print_results("iteration 10", None, iter([5.0]), None, 10, None, None)  # not ours
    finally:
        for p in patches:
            p.remove()
    assert seen == [(True, ["a", "b"], [3, 3])] * 2 + [(False, None, 3)]  # Megatron's sets, named by domain
    assert (args.multiple_validation_sets, args.validation_set_names, args.eval_iters) == (False, None, 3)
    e1, e2 = round(math.e, 6), round(math.e**2, 6)
    assert written == [
        ("acodm/val_ppl/a", e1, 10),
        ("acodm/val_ppl/b", e2, 10),
        ("acodm/val_ppl/avg", round((math.e + math.e**2) / 2, 6), 10),
    ]
    assert calls.count("evaluate") == 3
    with pytest.raises(RuntimeError, match="read through neox_acodm's evaluate_and_print_results"):
        next(sets)
    with pytest.raises(ConfigError, match="--full-validation"):
        check_validation_args(argparse.Namespace(full_validation=True), ["a", "b"])
    with pytest.raises(ConfigError, match="--validation-set-names"):
        check_validation_args(argparse.Namespace(validation_set_names=["x", "y"]), ["a", "b"])


def test_a_renamed_upstream_argument_fails_loudly(standin):
    pretrain_gpt, make = standin
    mod, _ = make(rename=True)
    with pytest.raises(RuntimeError, match=r"train_step takes .*forward_step_fn.*verified on core_r0.19.0"):
        pretrain_gpt.install(_Session())


def test_session_counts_micro_batches_and_reads_the_scale_once_per_step():
    cfg = tiny_cfg("odm")
    model = TinyLM()
    reads = []
    session = MixingSession(cfg, grad_scale=lambda: reads.append(1) or 2.0)
    session.attach(MixingRuntime(cfg, dataset_sizes=[50, 60, 70], grad_accum=3, micro_batch=2, model=model))
    for _ in range(2):
        for d, idx in session.rt.micro_batches():
            session.observe_loss(model.loss(domain_batch(d, idx)))
        session.end_step()
    assert len(reads) == 3  # attach + one per step, never per micro-batch
    for _ in session.rt.micro_batches():
        session.observe_loss(torch.tensor(1.0))
    with pytest.raises(RuntimeError, match="more than 3 training losses"):
        session.observe_loss(torch.tensor(1.0))
    session.micro = 2
    with pytest.raises(RuntimeError, match="saw 2 training losses in a step of 3"):
        session.end_step()


def _sink_worker(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    written = []
    cfg = tiny_cfg("acodm", log_interval=2)
    model = TinyLM()
    rt = MixingRuntime(
        cfg,
        dataset_sizes=[50, 60, 70],
        grad_accum=2,
        micro_batch=2,
        model=model,
        layout=ParallelLayout(2, rank, dist.group.WORLD, dist.group.WORLD),
    )
    # Megatron's layout: the mixer on rank 0, the writer on the last rank
    sink = MetricsSink(
        lambda: (lambda t, v, s: written.append((t, s))) if rank == 1 else None,
        2,
        route="broadcast",
        group=dist.group.WORLD,
        is_owner=rt.is_owner,
        timeout=30,
    )
    session = MixingSession(cfg, sink=sink)
    session.attach(rt)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(8):
        opt.zero_grad()
        for d, idx in rt.micro_batches():
            loss = model.loss(domain_batch(d, idx))
            session.observe_loss(loss.detach())
            loss.backward()
        opt.step()
        session.end_step()
    with open(os.path.join(out, f"sink{rank}.pkl"), "wb") as f:
        pickle.dump(written, f)
    dist.barrier()
    os._exit(0)


def test_metrics_reach_the_writer_on_another_rank(tmp_path):
    mp.spawn(_sink_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    owner = pickle.load(open(tmp_path / "sink0.pkl", "rb"))
    writer = pickle.load(open(tmp_path / "sink1.pkl", "rb"))
    assert owner == []
    tags = {t for t, _ in writer}
    steps = sorted({s for _, s in writer})
    assert steps == [2, 4, 6, 8]  # every log_interval steps
    for d in ("d0", "d1", "d2"):
        assert tag(f"weight/{d}") in tags and tag(f"reward/{d}") in tags
    assert {"acodm/critic_loss", "acodm/actor_loss"} <= tags  # agent losses, as NeoX logs them


def test_sink_owner_route_writes_only_on_the_owner():
    got = []
    MetricsSink(lambda: lambda t, v, s: got.append(t), 1, is_owner=False).write(1, {"x": 1.0})
    assert got == []
    MetricsSink(lambda: lambda t, v, s: got.append(t), 1, is_owner=True).write(1, {"x": 1.0})
    assert got == ["acodm/x"]
    with pytest.raises(ValueError, match="route"):
        MetricsSink(lambda: None, 1, route="everywhere")


def test_layout_rejects_a_rank_outside_data_parallelism():
    with pytest.raises(ValueError, match="dp_rank 2 is outside dp_size 2"):
        ParallelLayout(dp_size=2, dp_rank=2)
    assert not ParallelLayout().sharded and ParallelLayout().all_stages() is None


def test_plan_is_a_pure_getter_and_drawing_moves_the_cursors():
    model = TinyLM()
    rt = MixingRuntime(tiny_cfg("odm"), dataset_sizes=[50, 60, 70], grad_accum=3, micro_batch=2, model=model)
    before = rt.cursors.positions.copy()
    a, b = rt.plan(), rt.plan()
    assert a is b and (rt.cursors.positions == before).all() and not rt.in_step
    rt.micro_batches()
    assert rt.in_step and rt.cursors.positions.sum() == before.sum() + 3 * 2


def test_the_runtime_hands_each_step_s_domains_to_the_probe():
    """A rank that never asks for the plan (a middle pipeline stage) still attributes each
    micro-batch's gradient to the planned domain: the runtime pushes the domains down."""
    model = TinyLM()
    rt = MixingRuntime(tiny_cfg("acodm"), dataset_sizes=[50, 60, 70], grad_accum=1, micro_batch=2, model=model)
    for _ in range(3):
        d = int(rt.plan().domains[0, 0])
        model.loss(domain_batch(d, torch.arange(2).numpy())).backward()  # no plan()/micro_batches() call
        rows = rt.probe.buffer.abs().sum(dim=1)
        assert rows[d] > 0 and all(rows[j] == 0 for j in range(3) if j != d)
        rt.end_step()
    model.loss(domain_batch(0, torch.arange(2).numpy())).backward()
    rt.probe.reduce_gram(torch.ones(3))
    model.loss(domain_batch(0, torch.arange(2).numpy())).backward()  # after the step's end: not captured
    assert rt.probe.buffer.abs().sum() == 0


def test_step_stats_hold_one_array_type():
    import numpy as np

    from neox_acodm.mixers import StepStats

    s = StepStats(
        step=0,
        weights=np.full(2, 0.5),
        probs=np.full(2, 0.5),
        counts=torch.tensor([1, 1]),
        loss=np.ones(2),
        gram=torch.eye(2),
        norms=torch.ones(3),
    )
    assert all(isinstance(getattr(s, f), np.ndarray) for f in ("counts", "gram", "norms"))
    assert s.gram.dtype == np.float32 and s.is_finite()
    bad = StepStats(
        step=0,
        weights=np.full(2, 0.5),
        probs=np.full(2, 0.5),
        counts=np.ones(2),
        loss=np.ones(2),
        gram=torch.tensor([[1.0, float("nan")], [0.0, 1.0]]),
    )
    assert not bad.is_finite()
