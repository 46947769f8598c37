"""Dynamic blending over real megatron-core GPTDatasets built from small indexed datasets."""

import numpy as np
import pytest
import torch

pytest.importorskip("megatron.core")
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder  # noqa: E402

from neox_acodm.config import parse_config  # noqa: E402
from neox_acodm.dist import ParallelLayout
from neox_acodm.megatron import DynamicBlendedDataset, DynamicBlendedIterator, build_domain_datasets  # noqa: E402
from neox_acodm.runtime import MixingRuntime  # noqa: E402

SEQ = 16


def null_tokenizer():
    """megatron-core's own synthetic-id tokenizer (ids are used as given; eod = 1000)."""
    from megatron.core.tokenizers import MegatronTokenizer

    return MegatronTokenizer.from_pretrained(metadata_path={"library": "null"}, vocab_size=1000)


@pytest.fixture(scope="module")
def prefixes(tmp_path_factory):
    root = tmp_path_factory.mktemp("idx")
    out = []
    for d in range(3):
        prefix = root / f"dom{d}_text_document"
        b = IndexedDatasetBuilder(str(prefix) + ".bin", dtype=np.uint16)
        rng = np.random.default_rng(d)
        for _ in range(40):
            # token ids encode the domain so a sample's origin is checkable: d*300 + ...
            ids = d * 300 + 1 + rng.integers(0, 299, size=int(rng.integers(20, 60)))
            b.add_item(torch.tensor(np.append(ids, 1000), dtype=torch.int64))
            b.end_document()
        b.finalize(str(prefix) + ".idx")
        out.append(str(prefix))
    return out


def make(prefixes, mixer="static", weights=(0.6, 0.3, 0.1), steps=200):
    cfg = parse_config(
        {
            "mixer": mixer,
            "seed": 3,
            "total_steps": steps,
            "domains": [
                {"name": f"d{i}", "train_path": p, "weight": w} for i, (p, w) in enumerate(zip(prefixes, weights))
            ],
        }
    )
    ds = DynamicBlendedDataset(build_domain_datasets(cfg, seq_len=SEQ, seed=3, tokenizer=null_tokenizer()))
    rt = MixingRuntime(cfg, dataset_sizes=ds.sizes, grad_accum=2, micro_batch=2, layout=ParallelLayout(dp_size=2))
    return cfg, ds, rt, DynamicBlendedIterator(ds, rt)


def run(it, rt, steps):
    out = []
    for _ in range(steps):
        for _ in range(rt.grad_accum):
            out.append(next(it))
        rt.end_step()
    return out


def test_samples_are_megatron_samples_tagged_with_their_domain(prefixes):
    _, ds, rt, it = make(prefixes)
    assert ds.sizes == [len(d) for d in ds.datasets]
    b = next(it)
    assert set(b) >= {"tokens", "labels", "loss_mask", "position_ids", "dataset_id"}
    assert b["tokens"].shape == (2, SEQ)
    d = int(rt.plan().domains[0, 0])
    assert (b["dataset_id"] == d).all()
    toks = b["tokens"][b["tokens"] < 1000]
    assert ((toks - 1) // 300 == d).all(), "sample does not come from its tagged domain"


def test_frequencies_follow_weights(prefixes):
    _, ds, rt, it = make(prefixes, steps=300)
    batches = run(it, rt, 300)
    counts = np.bincount(np.concatenate([b["dataset_id"].numpy() for b in batches]), minlength=3)
    n = counts.sum()
    w = np.array([0.6, 0.3, 0.1])
    chi2 = float(((counts - n * w) ** 2 / (n * w)).sum())
    assert chi2 < 13.8, counts / n  # 2 dof, p = 0.001


def test_changing_weights_never_repeats_or_drops(prefixes):
    _, ds, rt, it = make(prefixes, steps=60)
    rng = np.random.default_rng(0)
    drawn, plans = [[], [], []], []
    for _ in range(60):
        rt.set_weights(rng.dirichlet(np.ones(3)))  # an adversarial mixer: new weights every step
        planned = rt.plan().counts
        for r in range(rt.layout.dp_size):
            for d, idx in rt.micro_batches(r):
                drawn[d].extend(idx.tolist())
        for _ in range(rt.grad_accum):
            next(it)
        rt.end_step()
        plans.append(tuple(planned))
    assert len(set(plans)) > 10, "the weights never changed the plan"
    for d in range(3):
        size, n = ds.sizes[d], len(drawn[d])
        full = n // size
        assert full >= 1, "the run should cross an epoch of every domain"
        stream = rt.cursors.sample_indices(d, 0, n).tolist()
        assert sorted(drawn[d]) == sorted(stream), "the ranks drew other samples than the stream's first n"
        for e in range(full):  # every epoch is a permutation of the domain: nothing dropped or repeated
            assert sorted(stream[e * size : (e + 1) * size]) == list(range(size))
        assert len(set(stream[full * size :])) == n - full * size
        # consumption is a prefix of the domain's stream: cursor = number drawn
        assert rt.cursors.positions[d] == n


def test_each_domain_is_built_for_one_epoch_whatever_the_run_length(prefixes):
    """The index does not grow with the run: a domain holds one epoch of its own tokens."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    short, long_ = make(prefixes, steps=10)[1], make(prefixes, steps=100_000)[1]
    assert short.sizes == long_.sizes
    for prefix, size in zip(prefixes, short.sizes):
        indexed = IndexedDataset(prefix)  # keep it alive: sequence_lengths is a view of its mmap
        tokens = int(indexed.sequence_lengths.sum())
        assert size == (tokens - 1) // SEQ  # megatron-core's samples per epoch (one extra label token)


def test_no_lookahead(prefixes):
    _, _, rt, it = make(prefixes)
    next(it), next(it)
    with pytest.raises(RuntimeError, match="call MixingRuntime.end_step"):
        next(it)


def test_resume_is_exact(prefixes, tmp_path):
    _, _, rt, it = make(prefixes, mixer="odm")
    run(it, rt, 7)
    it.save_state(str(tmp_path / "s.pt"))
    expect = run(it, rt, 10)
    _, _, rt2, it2 = make(prefixes, mixer="odm")
    it2.load_state(str(tmp_path / "s.pt"))
    got = run(it2, rt2, 10)
    for a, b in zip(expect, got):
        for k in a:
            assert torch.equal(a[k], b[k]), k
