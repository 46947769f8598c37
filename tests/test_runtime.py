"""MixingRuntime end to end on a tiny model: resume is exact, NaN never reaches the weights,
proxy mode captures nothing, AC-ODM moves toward the domain with the best reward."""

import numpy as np
import pytest
import torch

from neox_acodm.checkpoint import load as checkpoint_load
from neox_acodm.mixers import StepStats, build_mixer
from neox_acodm.runtime import MixingRuntime
from neox_acodm.selectors import select_params

from conftest import TinyLM, tiny_cfg, train_steps


def make(cfg, seed=0, **kw):
    model = TinyLM(seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    rt = MixingRuntime(
        cfg, dataset_sizes=[50, 60, 70][: cfg.num_domains], grad_accum=4, micro_batch=2, model=model, **kw
    )
    return rt, model, opt


@pytest.mark.parametrize(
    "mixer,extra",
    [
        ("static", {}),
        ("odm", {}),
        ("acodm", {}),
        ("acodm", {"reward": {"mode": "reference"}}),
        ("acodm", {"reward": {"estimator": "sketch", "sketch_dim": 64}}),
        (
            "acodm",
            {
                "agent": {
                    "warmup_policy": "odm",
                    "warmup_steps": 5,
                    "hidden_dim": 32,
                    "num_layers": 2,
                    "batch_size": 4,
                    "buffer_size": 64,
                    "tau": 0.05,
                },
                "state": {"update_norm": "exact"},
            },
        ),
        (
            "gram_softmax",
            {"reward": {"mode": "aligned", "self_term": "lagged"}, "sampling": {"allocation": "stratified"}},
        ),
        ("acodm", {"preset": "aligned", "agent": {"hidden_dim": 32, "batch_size": 4, "buffer_size": 64}}),
        (
            "mirror",
            {
                "reward": {"estimate": "masked", "self_term": "lagged"},
                "mirror": {"kappa": 20.0},
                "sampling": {"allocation": "stratified"},
            },
        ),
    ],
)
def test_resume_reproduces_next_50_weight_vectors(tmp_path, mixer, extra):
    cfg = tiny_cfg(mixer, **extra)
    rt, model, opt = make(cfg)
    train_steps(rt, model, opt, 10)
    rt.save(str(tmp_path / "mix.pt"))
    model_state, opt_state = (
        {k: v.clone() for k, v in model.state_dict().items()},
        {k: v for k, v in opt.state_dict().items()},
    )
    expected = train_steps(rt, model, opt, 50)

    rt2, model2, opt2 = make(cfg, seed=123)  # different init: everything must come from state
    model2.load_state_dict(model_state)
    opt2.load_state_dict(opt_state)
    rt2.load(str(tmp_path / "mix.pt"))
    got = train_steps(rt2, model2, opt2, 50)
    assert rt2.step == 60
    for a, b in zip(expected, got):
        assert np.array_equal(a, b)
    if mixer != "static":
        assert np.abs(np.diff(np.array(expected), axis=0)).max() > 0, "weights never moved"


def test_resume_with_different_domains_is_a_clear_error(tmp_path):
    rt, model, opt = make(tiny_cfg("odm"))
    train_steps(rt, model, opt, 2)
    rt.save(str(tmp_path / "s.pt"))
    cfg2 = tiny_cfg("odm", domains=[{"name": "x"}, {"name": "d1"}, {"name": "d2"}])
    rt2, *_ = make(cfg2)
    with pytest.raises(ValueError, match=r"checkpoint domains \['d0', 'd1', 'd2'\] differ"):
        rt2.load(str(tmp_path / "s.pt"))


def test_nan_loss_never_reaches_weights():
    rt, model, opt = make(tiny_cfg("acodm"))
    train_steps(rt, model, opt, 5)
    before_w = rt.weights.copy()
    before_agent = {k: v.clone() for k, v in rt.mixer.agent.actor.state_dict().items()}
    rt.plan()
    for g, (d, _idx) in enumerate(rt.micro_batches()):
        rt.begin_microbatch(g)
        rt.record_loss(d, torch.tensor(float("nan")))
    rt.end_step()
    assert np.array_equal(rt.weights, before_w) and rt.skipped_steps == 1
    for k, v in rt.mixer.agent.actor.state_dict().items():
        assert torch.equal(v, before_agent[k])
    train_steps(rt, model, opt, 2)  # and training continues
    assert np.all(np.isfinite(rt.weights))


def test_proxy_source_then_frozen_target_without_capture(tmp_path):
    policy = str(tmp_path / "policy.pt")
    src_cfg = tiny_cfg("acodm", proxy={"role": "source", "policy_path": policy})
    rt, model, opt = make(src_cfg)
    train_steps(rt, model, opt, 12)
    rt.save(str(tmp_path / "src_state.pt"))
    assert rt.probe.hook_calls > 0
    # target: a *different model size* (wider, deeper) with the same domains and norm-layer count
    tgt_cfg = tiny_cfg(
        "acodm",
        proxy={"role": "target", "policy_path": policy},
        state={"norm_params": {"module": "mlp_out", "layers": [0, 1, 2, 3]}},
    )
    big = TinyLM(d=32, layers=6, seed=5)
    opt_big = torch.optim.SGD(big.parameters(), lr=0.05)
    rt_t = MixingRuntime(tgt_cfg, dataset_sizes=[50, 60, 70], grad_accum=4, micro_batch=2, model=big)
    assert rt_t.probe is None, "proxy target must not capture gradients"
    assert all(not p._backward_hooks for p in big.parameters())
    actor0 = {k: v.clone() for k, v in rt_t.mixer.agent.actor.state_dict().items()}
    src_actor = checkpoint_load(policy)["actor"]
    for k in actor0:
        assert torch.equal(actor0[k], src_actor[k])
    ws = train_steps(rt_t, big, opt_big, 6)
    assert len(rt_t.mixer.agent.replay) == 0
    for k, v in rt_t.mixer.agent.actor.state_dict().items():
        assert torch.equal(v, actor0[k]), "frozen actor changed"
    assert all(np.all(np.isfinite(w)) for w in ws)


def test_acodm_moves_toward_the_aligned_domain():
    """Synthetic environment: domain 0's gradient agrees with the others, domain 2's opposes;
    with the paper reward the policy must shift weight to domain 0."""
    cfg = tiny_cfg(
        "acodm",
        agent={
            "warmup_steps": 20,
            "actor_lr": 1e-3,
            "critic_lr": 1e-3,
            "exploration_std": 0.05,
            "warmup_noise_std": 0.1,
            "gamma": 0.5,
            "batch_size": 16,
            "lr_decay": "constant",
        },
        initial_weights="uniform",
        total_steps=300,
    )
    mixer = build_mixer(cfg, np.ones(3) / 3, 2, 300)
    grads = torch.tensor([[1.0, 1.0, 0.2], [1.0, 0.5, 0.0], [-1.0, 0.3, 0.0]])
    gram = grads @ grads.T
    w = np.ones(3) / 3
    for t in range(300):
        counts = np.maximum(1, np.round(w * 16)).astype(int)
        stats = StepStats(
            step=t,
            weights=w,
            probs=w,
            counts=counts,
            loss=np.array([3.0, 3.0, 3.0]),
            gram=gram,
            norms=torch.ones(2),
            update_norms=torch.zeros(2),
        )
        w = mixer.update(stats)
        w = np.clip(w, 1e-4, None) / np.clip(w, 1e-4, None).sum()
    final = mixer.agent.act(mixer.prev_state).numpy()
    # W = (0.8, 0.65, -1.55): weight leaves the opposing domain and goes to the aligned ones;
    # the importance correction (W / p) keeps domain 1 from collapsing as its p shrinks
    assert final[2] < 0.05 and final[0] > 0.45 and final[0] > final[2], final


def test_selectors_resolve_by_role_and_position():
    model = TinyLM(layers=6)
    sel = select_params(model, tiny_cfg().reward.params)
    assert [p.name for p in sel] == ["layers.5.mlp.dense_4h_to_h.weight", "layers.4.mlp.dense_4h_to_h.weight"]
    from neox_acodm.config import ConfigError, ParamSelector

    norm = select_params(model, ParamSelector(layers="first_and_even"))
    assert [p.layer for p in norm] == [0, 1, 3, 5]
    assert [p.layer for p in select_params(model, ParamSelector(layers="::2"))] == [0, 2, 4]
    with pytest.raises(ConfigError, match="acodm.reward.params.module: 'linear_fc9' matches no module"):
        select_params(model, ParamSelector(module="linear_fc9"), "acodm.reward.params")
    with pytest.raises(ConfigError, match="index 9 is out of range for 6"):
        select_params(model, ParamSelector(layers=(9,)), "acodm.reward.params")


def test_selectors_resolve_positions_across_pipeline_stages():
    """With the layer keys of all stages, -1 means the model's last layer, wherever it lives."""
    from neox_acodm.config import ParamSelector
    from neox_acodm.selectors import matching_layer_keys

    model = TinyLM(layers=6)
    keys = matching_layer_keys(model, ParamSelector())
    assert keys == [0, 1, 2, 3, 4, 5]
    stage0 = torch.nn.Module()
    stage0.layers = torch.nn.ModuleList(model.layers[:3])  # owns layers 0..2 only
    sel = ParamSelector(layers=(-1, -4))
    assert [p.layer for p in select_params(stage0, sel, keys=keys)] == [2]
    assert [p.layer for p in select_params(model, sel, keys=keys)] == [5, 2]
    assert select_params(stage0, ParamSelector(layers=(-1,)), keys=keys) == []


def test_token_accounting_and_repeat_warning(caplog):
    cfg = tiny_cfg("static", sampling={"max_epochs": 2.0}, total_steps=100)
    rt, model, opt = make(cfg, token_counts=[500, 600, 700])
    with caplog.at_level("WARNING", logger="neox_acodm.accounting"):
        for _ in range(5):
            opt.zero_grad()
            for g, (d, _idx) in enumerate(rt.micro_batches()):
                rt.begin_microbatch(g)
                model.loss(torch.randint(0, 32, (2, 9))).backward()
                rt.record_loss(d, torch.tensor(1.0))
            metrics = rt.end_step()
    pos, sizes = rt.cursors.positions, rt.cursors.sizes
    assert sum(pos) == 5 * 8
    assert metrics["epochs/d0"] == pytest.approx(pos[0] / sizes[0])
    expect = (pos[2] + rt.weights[2] * 95 * 8) / sizes[2]  # 95 steps left x 4 micro-batches x 2 samples
    assert metrics["projected_epochs/d2"] == pytest.approx(expect)
    assert metrics["tokens/d1"] == pytest.approx(pos[1] * 600 / 60)
    # 800 samples at weights (1, 2, 3) / 6 over domains of 50-70 samples: all read > 2 times
    assert "will have been read" in caplog.text and "max_epochs=2" in caplog.text
    assert all(caplog.text.count(f"'d{i}'") == 1 for i in range(3))  # once per domain


def test_gram_softmax_keeps_its_lagged_self_term_whatever_reward_mode():
    """The runtime builds the probe from the mixer's declared needs: ``gram_softmax`` with the
    default ``reward.mode`` (paper) and ``self_term: lagged`` gets the lagged Gram every step
    after the first (it used to be decided from ``reward.mode`` and silently lost)."""
    cfg = tiny_cfg("gram_softmax", sampling={"allocation": "stratified"})
    assert cfg.reward.mode == "paper" and cfg.reward.self_term == "lagged"
    rt, model, opt = make(cfg)
    assert rt.needs.lagged_gram and rt.probe is not None and rt.probe.lagged
    seen = []
    update = rt.mixer.update
    rt.mixer.update = lambda stats: seen.append(stats.lagged_gram) or update(stats)
    train_steps(rt, model, opt, 3)
    assert seen[0] is None  # no previous step yet
    assert len(seen) == 3 and all(g is not None and g.shape == (3, 3) for g in seen[1:])
    assert np.abs(seen[-1]).sum() > 0  # <g_i(t), g_j(t-1)> of real gradients


@pytest.mark.parametrize(
    "mixer,extra,gram,lagged,norms",
    [
        ("static", {}, False, False, False),
        ("odm", {}, False, False, False),
        ("acodm", {}, True, False, True),
        ("acodm", {"preset": "aligned"}, True, True, True),
        ("acodm", {"preset": "aligned", "reward": {"self_term": "raw"}}, True, False, True),
        ("gram_softmax", {"reward": {"self_term": "drop"}}, True, False, False),
    ],
)
def test_each_mixer_declares_what_it_needs(mixer, extra, gram, lagged, norms):
    from neox_acodm.mixers import requirements

    cfg = tiny_cfg(mixer, **extra)
    need = requirements(cfg)
    assert (need.gram, need.lagged_gram, need.norms) == (gram, lagged, norms)
    rt, _, _ = make(cfg)
    assert (rt.probe is not None, rt.probe is not None and rt.probe.lagged, rt.norms is not None) == (
        gram,
        lagged,
        norms,
    )
    rt.close()
