"""Per-domain gradients inside mixed-domain micro-batches (activation capture)."""

import numpy as np
import pytest
import torch
from torch import nn

from neox_acodm.activation_probe import ActivationProbe
from neox_acodm.ops import get_ops
from neox_acodm.probe import GradientProbe
from neox_acodm.selectors import SelectedParam

from conftest import TinyLM, domain_batch

K, B, SEQ = 3, 4, 9


def _modules(model):
    return [blk.mlp.dense_4h_to_h for blk in model.layers]


def _batch(domains, seed):
    """[b, SEQ] tokens, sample j drawn from domain domains[j]."""
    rng = np.random.default_rng(seed)
    return torch.cat([domain_batch(int(d), rng.integers(0, 32, size=1)) for d in domains])


def _sample_loss(model, tokens):
    """Per-sample mean token loss [b]."""
    logits = model(tokens[:, :-1])
    tok = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), reduction="none")
    return tok.view(tokens.shape[0], -1).mean(1)


def test_one_domain_micro_batches_reproduce_the_gradient_hook_probe():
    """(a) With one domain per micro-batch, activation capture gives the exact probe's Gram."""
    model = TinyLM(seed=1)
    ops = get_ops("torch", torch.device("cpu"))
    params = [SelectedParam(f"l{i}", i, m.weight) for i, m in enumerate(_modules(model))]
    hooks = GradientProbe(params, K, "exact", 64, 0, ops)
    acts = ActivationProbe(_modules(model), K, "exact", ops, micro_batch=B)
    mb_domains = [0, 2, 0, 1, 2]
    hooks.begin_step(mb_domains)
    acts.begin_step(np.repeat(np.array(mb_domains)[:, None], B, axis=1))
    for g, d in enumerate(mb_domains):
        _sample_loss(model, _batch([d] * B, g)).mean().backward()
    counts = torch.as_tensor(np.bincount(mb_domains, minlength=K))
    want = hooks.reduce_gram(counts)
    got = acts.reduce_gram(counts * B)  # sample counts
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_per_domain_sums_add_up_to_the_weight_gradient_of_a_mixed_micro_batch():
    """(b) The per-domain parts of a mixed micro-batch sum to the layer's weight gradient, and
    each part is that domain's samples' gradient."""
    model = TinyLM(seed=2)
    ops = get_ops("torch", torch.device("cpu"))
    acts = ActivationProbe(_modules(model), K, "exact", ops, micro_batch=B)
    doms = np.array([2, 0, 2, 1])
    tokens = _batch(doms, 7)
    acts.begin_step(doms[None, :])
    model.zero_grad()
    _sample_loss(model, tokens).mean().backward()
    w = model.layers[0].mlp.dense_4h_to_h.weight
    n = w.numel()
    total = acts.buffer[:, :n].sum(0) / B  # the buffer holds sum over samples of their own gradients
    torch.testing.assert_close(total, w.grad.reshape(-1), rtol=1e-5, atol=1e-7)
    for d in range(K):  # domain d's part = the gradient of d's samples' summed losses
        model.zero_grad()
        _sample_loss(model, tokens)[torch.as_tensor(doms == d)].sum().backward()
        torch.testing.assert_close(acts.buffer[d, :n], w.grad.reshape(-1), rtol=1e-5, atol=1e-7)


def test_sequence_first_layout_and_recomputation_count_once():
    """[T, b, h] activations (NeoX/Megatron) and a no-grad forward before the real one."""

    class SeqFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(5, 3)

        def forward(self, x):  # x: [b, T, 5] -> computes in [T, b, 5]
            return self.lin(x.transpose(0, 1)).transpose(0, 1)

    torch.manual_seed(0)
    m = SeqFirst()
    ops = get_ops("torch", torch.device("cpu"))
    acts = ActivationProbe([m.lin], 2, "exact", ops, micro_batch=3, batch_dim=1)
    x = torch.randn(3, 4, 5)
    doms = np.array([[1, 0, 1]])
    acts.begin_step(doms)
    with torch.no_grad():
        m(x)  # the first pass of an activation recomputation: ignored
    y = m(x)
    (y**2).sum(dim=(1, 2)).mean().backward()
    for d in (0, 1):
        m.zero_grad()
        (m(x) ** 2).sum(dim=(1, 2))[torch.as_tensor(doms[0] == d)].sum().backward()
        torch.testing.assert_close(acts.buffer[d], m.lin.weight.grad.reshape(-1), rtol=1e-5, atol=1e-6)


def test_projected_gram_is_unbiased_with_the_stated_variance():
    """(c) Over projection seeds, <S_i, S_j> averages to <G_i, G_j> (per-domain autograd), and
    its variance stays within 6 ||G_i||^2 ||G_j||^2 / r."""
    model = TinyLM(seed=3, d=16)
    ops = get_ops("torch", torch.device("cpu"))
    mods = _modules(model)[:1]
    doms = np.array([0, 1, 2, 1, 0, 2, 2, 1])
    tokens = _batch(doms, 11)
    exact = ActivationProbe(mods, K, "exact", ops, micro_batch=len(doms))
    exact.begin_step(doms[None, :])
    _sample_loss(model, tokens).mean().backward()
    exact.remove()
    g = exact.buffer.double()
    truth = g @ g.T
    r, draws = 8, 400
    est = []
    for seed in range(draws):
        p = ActivationProbe(mods, K, "projected", ops, micro_batch=len(doms), rank=r, seed=seed)
        p.begin_step(doms[None, :])
        _sample_loss(model, tokens).mean().backward()
        p.remove()
        s = p.buffer.double()
        est.append((s @ s.T).numpy())
    est = np.array(est)
    norms = np.sqrt(np.diag(truth.numpy()))
    scale = np.outer(norms, norms)
    se = est.std(0) / np.sqrt(draws)
    assert np.all(np.abs(est.mean(0) - truth.numpy()) < 4 * se + 1e-3 * scale), "biased"
    assert np.all(est.var(0) <= 6 * scale**2 / r), est.var(0) / (scale**2 / r)


def test_bad_inputs_are_refused():
    ops = get_ops("torch", torch.device("cpu"))
    with pytest.raises(ValueError, match="linear layer"):
        ActivationProbe([nn.ReLU()], 2, "exact", ops, micro_batch=2)
    p = ActivationProbe([nn.Linear(2, 2)], 2, "exact", ops, micro_batch=2)
    with pytest.raises(ValueError, match=r"\[grad_accum, 2\]"):
        p.begin_step(np.zeros((3, 4), dtype=int))


def test_bench_reward_times_the_activation_capture_of_a_step():
    """bench-reward's step report includes both activation-capture variants and their shares."""
    pytest.importorskip("transformers")
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "neox_acodm.tools.cli", "bench-reward", "--D", "4", "--P", "4096", "--repeats", "1",
         "--step-model", "1x64", "--step-batch", "2", "--step-seq", "16", "--step-repeats", "1", "--grad-accum", "2",
         "--rank", "8", "--json"],
        capture_output=True, text=True, check=True, env={"OMP_NUM_THREADS": "1", **__import__("os").environ},
    )  # fmt: skip
    step = json.loads(out.stdout)["step"]
    for est, width in (("exact", 3 * 64 * 256), ("projected", 3 * 8 * 8)):
        a = step[f"activations_{est}"]
        assert a["buffer_bytes"] == 4 * width * 4 and a["per_step_ms"] > 0 and a["to_step"] > 0
