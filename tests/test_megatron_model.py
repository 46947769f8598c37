"""The Megatron adapter's model side on a real megatron-core GPTModel, on CPU.

megatron-core's model code asks CUDA for its RNG tracker and the default causal mask; the
``cpu_megatron`` fixture redirects those few calls to the CPU (test-only shim). The full
Megatron-LM entry point (``megatron.training``) needs megatron-core >= 0.19 and a GPU; it was
run on an H100 (README, Megatron-LM section).
"""

import argparse
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("megatron.core")

from neox_acodm.config import ConfigError, parse_config  # noqa: E402
from neox_acodm.megatron.model import GlobalLayerView  # noqa: E402
from neox_acodm.megatron.pretrain_gpt import MegatronMixingSession, check_args, guard_compile_helpers  # noqa: E402
from neox_acodm.runtime import MixingRuntime  # noqa: E402
from neox_acodm.selectors import select_params  # noqa: E402

from support import free_port  # noqa: E402

VOCAB, SEQ = 64, 16


@pytest.fixture(scope="module")
def cpu_megatron():
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel

    mp = pytest.MonkeyPatch()
    mp.setattr(torch.cuda, "current_device", lambda: "cpu")
    mp.setattr(torch.cuda, "get_rng_state", lambda *a, **k: torch.get_rng_state())
    mp.setattr(torch.cuda, "set_rng_state", lambda s, *a, **k: torch.set_rng_state(s))
    mp.setattr(torch.cuda, "manual_seed", torch.manual_seed)
    mp.setattr(torch.cuda.random, "get_rng_state", lambda *a, **k: torch.get_rng_state())
    mp.setenv("MASTER_ADDR", "127.0.0.1")
    mp.setenv("MASTER_PORT", str(free_port()))
    owns_pg = not dist.is_initialized()
    if owns_pg:
        dist.init_process_group("gloo", rank=0, world_size=1)
    ps.initialize_model_parallel(1, 1)
    tensor_parallel.model_parallel_cuda_manual_seed(123)
    yield
    ps.destroy_model_parallel()
    if owns_pg:
        dist.destroy_process_group()
    mp.undo()


def gpt(layers=3, seed=0):
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.transformer_config import TransformerConfig

    torch.manual_seed(seed)
    cfg = TransformerConfig(
        num_layers=layers,
        hidden_size=32,
        num_attention_heads=4,
        use_cpu_initialization=True,
        attention_dropout=0.0,
        hidden_dropout=0.0,
    )
    return GPTModel(cfg, get_gpt_layer_local_spec(), vocab_size=VOCAB, max_sequence_length=SEQ)


class Wrapper(torch.nn.Module):  # stands in for Megatron's DDP / Float16Module (``.module``)
    def __init__(self, module):
        super().__init__()
        self.module = module


def domain_tokens(d: int, idx: np.ndarray) -> torch.Tensor:
    return torch.tensor([[(int(i) + j * (d + 1)) % VOCAB for j in range(SEQ)] for i in idx])


def cfg_for(mixer="acodm"):
    return parse_config(
        {
            "mixer": mixer,
            "seed": 3,
            "total_steps": 40,
            "domains": [{"name": f"d{i}", "weight": 1.0} for i in range(3)],
            "agent": {"hidden_dim": 32, "num_layers": 2, "batch_size": 4, "buffer_size": 64, "warmup_steps": 3},
            "reward": {"params": {"module": "mlp_out", "layers": [-1, -2]}},
            "state": {"norm_params": {"module": "mlp_out", "layers": "all"}},
        }
    )


def test_global_layer_view_names_layers_by_global_position(cpu_megatron):
    stage = gpt(layers=3)
    for mod in stage.modules():  # as if this were pipeline stage 2 of 2 (layers 4..6 of 6)
        if type(mod).__name__ == "TransformerLayer":
            mod.layer_number += 3
    view = GlobalLayerView([Wrapper(Wrapper(stage))])
    names = [n for n, _ in view.named_modules()]
    assert "decoder.layers.3.mlp.linear_fc2" in names and "decoder.layers.5.mlp.linear_fc2" in names
    assert not any(n.startswith("decoder.layers.0") for n in names)
    sel = select_params(view, cfg_for().reward.params, keys=[0, 1, 2, 3, 4, 5])
    assert [p.layer for p in sel] == [5, 4]  # positions [-1, -2] of the whole 6-layer model
    assert sel[0].param is stage.decoder.layers[2].mlp.linear_fc2.weight


def test_runtime_captures_megatron_gradients_and_moves_weights(cpu_megatron):
    model = gpt()
    cfg = cfg_for()
    rt = MixingRuntime(
        cfg, dataset_sizes=[40, 40, 40], grad_accum=3, micro_batch=2, model=GlobalLayerView(Wrapper(model))
    )
    assert [p.name for p in rt.probe.params] == [
        "decoder.layers.2.mlp.linear_fc2.weight",
        "decoder.layers.1.mlp.linear_fc2.weight",
    ]
    session = MegatronMixingSession(cfg, upstream=None)
    session.rt = rt
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mask = torch.triu(torch.ones(SEQ, SEQ), diagonal=1).bool()[None, None]
    pos = torch.arange(SEQ)[None]

    def loss_func(loss_mask, output_tensor):  # Megatron-LM's loss_func contract
        loss = torch.sum(output_tensor.view(-1).float() * loss_mask.view(-1))
        n = loss_mask.sum().to(torch.int)
        return loss, n, {"lm loss": torch.stack([loss.detach(), n.float()])}

    weights = []
    for _ in range(12):
        opt.zero_grad(set_to_none=True)
        for d, idx in rt.micro_batches():
            tok = domain_tokens(d, idx)
            out = model(tok, pos.expand(len(idx), SEQ), mask.expand(len(idx), 1, SEQ, SEQ), labels=tok)
            loss, n, _ = session.wrap_loss(lambda o: loss_func(torch.ones_like(o), o))(out)
            (loss / n / rt.grad_accum).backward()
        opt.step()
        session.end_step()
        weights.append(rt.weights.copy())
    assert rt.probe.hook_calls == 12 * 3 * 2
    assert session.last_metrics and all(np.isfinite(v) for v in session.last_metrics.values())
    assert {"reward/d0", "loss/d2"} <= set(session.last_metrics)
    assert np.abs(np.diff(weights, axis=0)).max() > 0, "weights never moved"

    with torch.no_grad():  # evaluation losses are not recorded
        tok = domain_tokens(0, np.arange(2))
        out = model(tok, pos.expand(2, SEQ), mask.expand(2, 1, SEQ, SEQ), labels=tok)
        session.wrap_loss(lambda o: loss_func(torch.ones_like(o), o))(out)
    assert session.micro == 0


def test_megatron_rerun_in_place_keeps_the_first_run_statistics(cpu_megatron, monkeypatch):
    """Megatron's rerun state machine may replay a step (result validation): the replay's
    losses and gradients are not counted twice; outside a rerun, extra losses are an error."""
    from megatron.core.rerun_state_machine import RerunState, get_rerun_state_machine

    model = gpt()
    cfg = cfg_for("odm")
    rt = MixingRuntime(cfg, dataset_sizes=[40, 40, 40], grad_accum=2, micro_batch=2, model=GlobalLayerView(model))
    session = MegatronMixingSession(cfg, upstream=None)
    session.rt = rt
    for _ in range(2):
        session.observe_loss(torch.tensor(1.0))
    monkeypatch.setattr(get_rerun_state_machine(), "state", RerunState.RERUNNING_IN_PLACE)
    session.observe_loss(torch.tensor(5.0))  # the replay: ignored
    monkeypatch.setattr(get_rerun_state_machine(), "state", RerunState.NOT_RUNNING_YET)
    with pytest.raises(RuntimeError, match="more than 2 training losses"):
        session.observe_loss(torch.tensor(5.0))
    session.end_step()
    losses = {k: v for k, v in session.last_metrics.items() if k.startswith("loss/")}
    assert losses and all(v == 1.0 for v in losses.values()), losses  # the replay's 5.0 is not in


def megatron_args(**over):
    base = dict(
        data_path=None,
        train_data_path=None,
        valid_data_path=None,
        test_data_path=None,
        data_args_path=None,
        per_split_data_args_path=None,
        mock_data=False,
        sft=False,
        fim_data=False,
        dataloader_type="external",
        rampup_batch_size=None,
        context_parallel_size=1,
        gradient_accumulation_fusion=False,
        calculate_per_token_loss=False,
        train_iters=100,
    )
    base.update(over)
    return argparse.Namespace(**base)


@pytest.mark.parametrize(
    "over,flag",
    [
        ({"data_path": ["1.0", "x"]}, "--data-path"),
        ({"dataloader_type": "single"}, "--dataloader-type single"),
        ({"phase_transition_iterations": [50]}, "--phase-transition-iterations"),
        ({"sequence_packing_scheduler": "dp_balanced"}, "--sequence-packing-scheduler dp_balanced"),
        ({"rampup_batch_size": [8, 8, 100]}, "--rampup-batch-size"),
        ({"context_parallel_size": 2}, "--context-parallel-size"),
        ({"calculate_per_token_loss": True}, "--calculate-per-token-loss"),
        ({"mock_data": True}, "--mock-data"),
        ({"train_iters": None}, "--train-iters is required"),
    ],
)
def test_megatron_flags_the_mixing_cannot_honour_are_named(over, flag):
    check_args(megatron_args(), cfg_for())  # the defaults pass
    with pytest.raises(ConfigError, match=flag.replace("-", r"\-")):
        check_args(megatron_args(**over), cfg_for())


def test_fused_wgrad_stays_on_except_for_the_observed_layers(cpu_megatron):
    from neox_acodm.megatron.model import FUSION_ATTRS, unfuse_selected

    check_args(megatron_args(gradient_accumulation_fusion=True), cfg_for())  # no longer refused
    check_args(megatron_args(gradient_accumulation_fusion=True), cfg_for("odm"))
    model = gpt()
    view = GlobalLayerView(Wrapper(model))
    rt = MixingRuntime(cfg_for(), dataset_sizes=[40, 40, 40], grad_accum=2, micro_batch=2, model=view)
    fusable = {n: m for n, m in view.named_modules() if hasattr(m, "gradient_accumulation_fusion")}
    assert len(fusable) >= 6
    for m in fusable.values():  # as a production config builds them (the CUDA kernel is absent here)
        m.gradient_accumulation_fusion = True
    switched = unfuse_selected(view, [p.param for p in rt.probe.params])
    assert switched == ["decoder.layers.1.mlp.linear_fc2", "decoder.layers.2.mlp.linear_fc2"]
    for n, m in fusable.items():
        assert m.gradient_accumulation_fusion == (n not in switched), n
    assert all(not getattr(fusable[n], a, False) for n in switched for a in FUSION_ATTRS)
    for m in fusable.values():  # then the observed layers' gradients reach the hooks (CPU path)
        m.gradient_accumulation_fusion = False
    unfuse_selected(view, [p.param for p in rt.probe.params])
    mask = torch.triu(torch.ones(SEQ, SEQ), diagonal=1).bool()[None, None]
    for d, idx in rt.micro_batches():
        tok = domain_tokens(d, idx)
        model(tok, torch.arange(SEQ)[None].expand(2, SEQ), mask.expand(2, 1, SEQ, SEQ), labels=tok).sum().backward()
    assert rt.probe.hook_calls == 2 * 2 and rt.probe.buffer.abs().sum() > 0


def test_compile_helpers_skipped_when_prebuilt(monkeypatch):
    from megatron.core.datasets import utils as du

    def no_make(*a, **k):
        raise AssertionError("make must not run when the prebuilt helpers import")

    calls = []
    monkeypatch.setattr(du, "compile_helpers", lambda: calls.append("make"))  # stands for upstream's
    monkeypatch.setattr(subprocess, "run", no_make)
    guard_compile_helpers()
    guard_compile_helpers()  # idempotent
    assert du.compile_helpers.__acodm_patch__.target == "megatron.core.datasets.utils:compile_helpers"
    du.compile_helpers()
    assert calls == []  # the prebuilt helpers import, so the upstream build never ran
    du.compile_helpers.__acodm_patch__.remove()


def test_entry_point_without_megatron_lm_checkout_says_what_to_do(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "neox_acodm.megatron.pretrain_gpt", "--acodm-config", "x.yml"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode != 0
    assert "Megatron-LM checkout" in out.stderr and "PYTHONPATH" in out.stderr


def test_activation_capture_on_megatron_layers_attributes_mixed_micro_batches(cpu_megatron):
    """megatron-core's RowParallelLinear ([s, b, h] input, (out, bias) output): the per-domain
    parts of a mixed micro-batch equal per-domain autograd; no observed layer is unfused."""
    import dataclasses

    base = cfg_for("gram_softmax")
    cfg = dataclasses.replace(
        base,
        sampling=dataclasses.replace(base.sampling, granularity="sample"),
        reward=dataclasses.replace(base.reward, mode="aligned", self_term="raw"),
    )
    check_args(megatron_args(gradient_accumulation_fusion=True, sequence_parallel=False), cfg)
    with pytest.raises(ConfigError, match="--sequence-parallel: activation capture"):
        check_args(megatron_args(sequence_parallel=True), cfg)
    model = gpt()
    view = GlobalLayerView(Wrapper(model))
    rt = MixingRuntime(cfg, dataset_sizes=[40, 40, 40], grad_accum=1, micro_batch=4, model=view, batch_dim=1)
    mask = torch.triu(torch.ones(SEQ, SEQ), diagonal=1).bool()[None, None]
    ((doms, idx),) = rt.micro_batches()
    tok = torch.cat([domain_tokens(int(d), [i]) for d, i in zip(doms, idx)])
    pos, att = torch.arange(SEQ)[None].expand(4, SEQ), mask.expand(4, 1, SEQ, SEQ)
    rt.begin_microbatch(0, grad_scale=1.0)
    model(tok, pos, att, labels=tok).mean(1).mean().backward()  # mean of per-sample means
    lin = model.decoder.layers[2].mlp.linear_fc2
    w, k = lin.weight, rt.probe.modules.index(lin)
    got = rt.probe.buffer[:, rt.probe.offsets[k] : rt.probe.offsets[k] + w.numel()].clone()
    for d in range(3):
        model.zero_grad()
        model(tok, pos, att, labels=tok).mean(1)[torch.as_tensor(doms == d)].sum().backward()
        torch.testing.assert_close(got[d], w.grad.reshape(-1), rtol=1e-4, atol=1e-6)
    rt.close()
