"""The GPT-NeoX wrappers on stand-in upstream modules (no NeoX checkout needed): the ``pretrain``
gate, and each wrapper calling the integration with what NeoX passed. The ``NEOX_DIR`` tests
run the same wrappers inside real GPT-NeoX."""

from __future__ import annotations

import sys
import types

import pytest

from neox_acodm.patches import neox_training

from conftest import tiny_cfg


class _Integration:
    """Records what the wrappers call (the duck type of ``NeoXIntegration``)."""

    def __init__(self, neox_args):
        self.neox_args, self.cfg, self.calls, self.patches = neox_args, tiny_cfg(), [], []
        self.evaluation = types.SimpleNamespace(wrap=lambda original: lambda *a, **kw: original(*a, **kw))
        self.finished = False

    def build_patches(self):
        return neox_training.neox_patches(self)

    def on_loaders(self, train, valid):
        self.calls.append(("loaders", train, valid))

    def start_session(self, model):
        self.calls.append(("session", model))

    def observe_loss(self, loss, labels=None):
        self.calls.append(("loss", float(loss)))

    def train_iterator(self):
        return "plan-iterator"

    def end_step(self, skipped):
        self.calls.append(("end_step", skipped))

    def save(self, neox_args, iteration):
        self.calls.append(("save", iteration))

    def finish(self):
        self.finished = True


@pytest.fixture
def neox(monkeypatch):
    """Stand-ins for the NeoX modules the wrappers target, with NeoX's signatures."""
    seen = {}
    training = types.ModuleType("megatron.training")
    data_utils = types.ModuleType("megatron.data.data_utils")
    checkpointing = types.ModuleType("megatron.checkpointing")
    deepspeed = types.ModuleType("deepspeed")

    def get_normalized_weights_and_num_samples(weights, num_samples):
        norm = [w / sum(weights) for w in weights]
        return norm, [None if num_samples is None else int(num_samples * w) for w in norm]

    class BlendableDataset:
        def __init__(self, datasets, weights):
            self.datasets, self.blend_index = datasets, [0] * 1000

    def build_train_valid_test_data_loaders(neox_args):
        norm, seen["sizes"] = data_utils.get_normalized_weights_and_num_samples(neox_args.train_data_weights, 1000)
        valid_norm, _ = data_utils.get_normalized_weights_and_num_samples(neox_args.train_data_weights, None)
        seen["train_ds"] = data_utils.BlendableDataset(["d0", "d1"], norm)
        seen["valid_ds"] = data_utils.BlendableDataset(["v0", "v1"], valid_norm)
        return ("train-loader", "valid-loader", None)

    def setup_model_and_optimizer(neox_args, use_cache=False):
        return "model", "optimizer", "scheduler"

    def cross_entropy(output, labels, _fp16=False):
        import torch

        return torch.tensor(2.5)

    def shift_and_wrap_data_loaders(neox_args, data_loaders):
        return iter(data_loaders["train"] or []), "valid-it", "test-it"

    def train_step(neox_args, timers, data_iterator, model, optimizer, lr_scheduler):
        return {"lm_loss": 1.0}, neox_args.overflow

    def forward_step(data_iterator, model, neox_args, timers, return_logits=False, is_train=False):
        return "loss"

    def evaluate_and_print_results(
        neox_args,
        prefix,
        forward_step_func,
        data_iterator,
        model,
        iteration,
        verbose=False,
        timers=None,
        chart_name="validation",
        reference_model=None,
    ):
        return None

    def save_ds_checkpoint(iteration, model, neox_args):
        seen.setdefault("saved", []).append(iteration)

    def pretrain(neox_args):
        seen["applied_during_pretrain"] = getattr(training.train_step, "__acodm_patch__", None) is not None
        if getattr(neox_args, "fail", False):
            raise RuntimeError("upstream failed")
        return "done"

    def init_distributed(
        dist_backend="nccl",
        auto_mpi_discovery=True,
        distributed_port=29500,
        verbose=True,
        timeout=None,
        init_method=None,
    ):
        return None

    for name, fn in list(locals().items()):
        if callable(fn) and name not in ("seen", "monkeypatch"):
            target = {
                "get_normalized_weights_and_num_samples": data_utils,
                "BlendableDataset": data_utils,
                "save_ds_checkpoint": checkpointing,
                "init_distributed": deepspeed,
            }.get(name, training)
            setattr(target, name, fn)
    for name, mod in (
        ("megatron.training", training),
        ("megatron.data.data_utils", data_utils),
        ("megatron.checkpointing", checkpointing),
        ("deepspeed", deepspeed),
    ):
        monkeypatch.setitem(sys.modules, name, mod)
    gate = neox_training.gate(_Integration)
    yield training, data_utils, checkpointing, seen, gate
    gate.remove()


def _args(**kw):
    base = dict(acodm={"domains": [{"name": "a"}, {"name": "b"}]}, train_data_weights=[1.0, 3.0], overflow=False)
    return types.SimpleNamespace(**{**base, **kw})


def test_gate_without_a_block_patches_nothing(neox):
    training, _, _, seen, gate = neox
    original_step = training.train_step
    gate.apply()
    assert training.pretrain(_args(acodm=None)) == "done"
    assert seen["applied_during_pretrain"] is False and training.train_step is original_step


def test_gate_applies_the_wrappers_for_the_call_and_removes_them_on_failure(neox):
    training, data_utils, checkpointing, seen, gate = neox
    originals = (
        training.train_step,
        data_utils.get_normalized_weights_and_num_samples,
        checkpointing.save_ds_checkpoint,
    )
    gate.apply()
    gate.apply()  # idempotent
    assert training.pretrain(_args()) == "done" and seen["applied_during_pretrain"] is True
    assert (
        training.train_step,
        data_utils.get_normalized_weights_and_num_samples,
        checkpointing.save_ds_checkpoint,
    ) == originals
    with pytest.raises(RuntimeError, match="upstream failed"):
        training.pretrain(_args(fail=True))
    assert training.train_step is originals[0]


def test_each_wrapper_hands_neox_values_to_the_integration(neox):
    import torch

    training, data_utils, _, seen, _ = neox
    integ = _Integration(_args())
    patches = integ.build_patches()
    for p in patches:
        p.apply()
    try:
        na = _args()
        # loaders: every train domain built for one epoch of its own data (1 sample requested:
        # NeoX's index builder rounds up to whole epochs), for this call only
        training.build_train_valid_test_data_loaders(neox_args=na)
        assert seen["sizes"] == [1] * 2
        # the train blend has no index (the plan reads the domains); validation keeps NeoX's blend
        assert isinstance(seen["train_ds"], neox_training.DomainDatasets) and seen["train_ds"].datasets == ["d0", "d1"]
        assert seen["valid_ds"].blend_index and seen["valid_ds"].datasets == ["v0", "v1"]
        assert data_utils.BlendableDataset(["x"], [1.0]).blend_index, "the patch outlived the call"
        assert data_utils.get_normalized_weights_and_num_samples([1.0, 3.0], 1000)[1] == [250, 750]
        assert training.setup_model_and_optimizer(na) == ("model", "optimizer", "scheduler")
        with torch.no_grad():
            training.cross_entropy(None, None)  # evaluation: not a training micro-batch
        training.cross_entropy(None, None)
        assert training.shift_and_wrap_data_loaders(na, {"train": [1], "valid": None, "test": None}) == (
            "plan-iterator",
            "valid-it",
            "test-it",
        )
        training.train_step(_args(overflow=True), None, None, None, None, None)
        training.train_step(na, None, None, None, None, None)
        import megatron.checkpointing as ckpt

        ckpt.save_ds_checkpoint(7, "model", na)
        # the pipe path's eval_batch bare loss becomes NeoX's (loss, metrics)
        assert training.forward_step(None, None, types.SimpleNamespace(is_pipe_parallel=True), None) == ("loss", {})
    finally:
        for p in reversed(patches):
            p.remove()
    assert integ.calls == [
        ("loaders", "train-loader", "valid-loader"),
        ("session", "model"),
        ("loss", 2.5),
        ("end_step", True),
        ("end_step", None),
        ("save", 7),
    ]
    assert seen["saved"] == [7]
    assert [p.target for p in patches if p.is_applied()] == []


def test_pipe_loss_patch_wraps_the_module_attribute_and_reverts():
    module = types.SimpleNamespace(loss_fn=lambda out, labels: out - labels)
    original = module.loss_fn
    calls = []

    def wrap_loss(fn):
        def acodm_loss(*a):
            calls.append(a)
            return fn(*a)

        return acodm_loss

    patch = neox_training.pipe_loss_patch(module, wrap_loss)
    patch.apply()
    assert module.loss_fn(5, 2) == 3 and calls == [(5, 2)] and module.loss_fn.__wrapped__ is original
    patch.remove()
    assert module.loss_fn is original
