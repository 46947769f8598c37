"""``sampling.granularity: sample``: a domain for every sample, mixed micro-batches, per-domain
losses from per-sample losses and gradients from activations, through MixingRuntime."""

import numpy as np
import pytest
import torch
from torch import nn

from neox_acodm.dist import ParallelLayout
from neox_acodm.plan import normalize_weights
from neox_acodm.runtime import MixingRuntime

from conftest import TinyLM, domain_batch, tiny_cfg

PILE = np.array([0.1811, 0.144, 0.1207, 0.1001, 0.0896, 0.0759, 0.0612, 0.0513, 0.0365, 0.0307, 0.0217, 0.0155, 0.0153,
                 0.0124, 0.0088, 0.0075, 0.0073, 0.0062, 0.006, 0.0038, 0.003, 0.0014])  # fmt: skip


def _cfg(k=3, **sampling):
    domains = [{"name": f"d{i}", "weight": float(w)} for i, w in enumerate(PILE[:k] if k == 22 else 1.0 + np.arange(k))]
    sampling = {"granularity": "sample", "allocation": "stratified", **sampling}
    return tiny_cfg("static", k=k, domains=domains, sampling=sampling)


def test_every_domain_is_seen_every_step_when_the_global_batch_holds_them():
    """(e) Pile-22 weights, 8 ranks x 4 micro-batches x 32 samples: all 22 domains every step;
    one domain per micro-batch (32 slots) sees Enron_Emails in about 4.5 % of the steps."""
    w = normalize_weights(PILE)
    mixed = MixingRuntime(_cfg(22), layout=ParallelLayout(dp_size=8), grad_accum=4, micro_batch=32)
    whole = MixingRuntime(
        _cfg(22, granularity="microbatch"), layout=ParallelLayout(dp_size=8), grad_accum=4, micro_batch=32
    )
    seen_whole = []
    for _ in range(200):
        assert (mixed.plan().counts >= 1).all() and mixed.plan().counts.sum() == 1024
        seen_whole.append(whole.plan().counts > 0)
        for rt in (mixed, whole):
            rt.end_step()
    assert np.isclose(mixed.weights, w).all()
    assert np.mean(seen_whole, axis=0)[-1] < 0.1


def _run(rt, model, opt, steps):
    """Train on mixed micro-batches; returns the weights after each step."""
    out = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        for g, (doms, idx) in enumerate(rt.micro_batches()):
            assert rt.begin_microbatch(g, grad_scale=float(rt.grad_accum)).tolist() == doms.tolist()
            tokens = torch.cat([domain_batch(int(d), np.array([i])) for d, i in zip(doms, idx)])
            logits = model(tokens[:, :-1])
            tok = nn.functional.cross_entropy(logits.reshape(-1, 32), tokens[:, 1:].reshape(-1), reduction="none")
            losses = tok.view(len(doms), -1).mean(1)
            (losses.mean() / rt.grad_accum).backward()
            rt.record_loss(doms, losses)
        opt.step()
        rt.end_step()
        out.append(rt.weights.copy())
    return out


@pytest.mark.parametrize("estimator", ["exact", "projected"])
def test_a_gram_mixer_steers_on_mixed_micro_batches_and_resumes_bit_identically(tmp_path, estimator):
    """(d, core) gram_softmax on mixed micro-batches: losses and Gram reach the mixer, the
    weights move, every sample is drawn once per epoch, and a resume repeats the run exactly."""
    cfg = tiny_cfg(
        "gram_softmax",
        sampling={"granularity": "sample", "allocation": "stratified"},
        reward={"estimator": estimator, "projection_rank": 8, "self_term": "raw", "mode": "aligned"},
    )

    def fresh():
        model = TinyLM(seed=5)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        rt = MixingRuntime(cfg, dataset_sizes=[40, 50, 60], grad_accum=2, micro_batch=4, model=model)
        return model, opt, rt

    model, opt, rt = fresh()
    first = _run(rt, model, opt, 3)
    rt.save(str(tmp_path / "s.pt"))
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "m.pt")
    rest = _run(rt, model, opt, 5)
    m = rt.mixer
    assert m.last_reward is not None and np.all(np.isfinite(m.last_reward))
    assert not np.allclose(first[0], rest[-1]), "the weights never moved"
    assert rt.cursors.positions.sum() == 8 * 8  # 8 steps x 8 samples, one stream position each
    rt.close()

    model2, opt2, rt2 = fresh()
    saved = torch.load(tmp_path / "m.pt")
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    rt2.load(str(tmp_path / "s.pt"))
    again = _run(rt2, model2, opt2, 5)
    assert all(np.array_equal(a, b) for a, b in zip(rest, again)), "resume diverged"
    assert rt2.cursors.positions.tolist() == rt.cursors.positions.tolist()
    rt2.close()


def test_sample_granularity_refuses_the_count_sketch():
    from neox_acodm.typed_yaml import ConfigError

    with pytest.raises(ConfigError, match="acodm.reward.estimator: 'sketch'.*'exact' or 'projected'"):
        tiny_cfg("gram_softmax", sampling={"granularity": "sample"}, reward={"estimator": "sketch"})
