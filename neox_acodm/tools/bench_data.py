"""``neox-acodm bench-data``: the data layer at the Pile's scale, measured.

Writes synthetic indexed datasets (the MMIDIDX format NeoX and megatron-core share) with the
Pile's per-domain document and token counts, then builds, on the same files:

* **stock**: megatron-core's blended loader for the run (``BlendedMegatronDatasetBuilder``
  with the mix as blend weights: every domain sized ``N w 1.005`` samples, plus the blend
  index), or, with a GPT-NeoX checkout, NeoX's index builder for the same sizes
  (``megatron/data/gpt2_dataset.py``'s doc/sample/shuffle-index functions and its blend helper);
* **acodm**: what the plugin builds: one epoch per domain, no blend index;

and reports index bytes on disk, build seconds, and the cursors' memory and slowest step
(one global batch drawn at an epoch boundary of every domain). The ``.bin`` files are sparse
(no token is ever read), so the Pile's 825 GiB cost no disk.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["PILE_22", "DomainStats", "measure_cursors", "pile_domains", "write_synthetic"]

#: (name, raw size GiB, weight in the Pile, mean document KiB): Gao et al. 2020 (arXiv 2101.00027), Table 1
PILE_22 = (
    ("Pile-CC", 227.12, 0.1811, 4.33),
    ("PubMed_Central", 90.27, 0.1440, 30.55),
    ("Books3", 100.96, 0.1207, 538.36),
    ("OpenWebText2", 62.77, 0.1001, 3.85),
    ("ArXiv", 56.21, 0.0896, 46.61),
    ("Github", 95.16, 0.0759, 5.25),
    ("FreeLaw", 51.15, 0.0612, 15.06),
    ("StackExchange", 32.20, 0.0513, 2.16),
    ("USPTO_Backgrounds", 22.90, 0.0365, 4.08),
    ("PubMed_Abstracts", 19.26, 0.0307, 1.30),
    ("Gutenberg_(PG-19)", 10.88, 0.0217, 398.73),
    ("OpenSubtitles", 12.98, 0.0155, 30.48),
    ("Wikipedia_(en)", 6.38, 0.0153, 1.11),
    ("DM_Mathematics", 7.75, 0.0124, 8.00),
    ("Ubuntu_IRC", 5.52, 0.0088, 545.48),
    ("BookCorpus2", 6.30, 0.0075, 369.87),
    ("EuroParl", 4.59, 0.0073, 68.87),
    ("HackerNews", 3.90, 0.0062, 4.92),
    ("YoutubeSubtitles", 3.73, 0.0060, 22.55),
    ("PhilPapers", 2.38, 0.0038, 73.37),
    ("NIH_ExPorter", 1.89, 0.0030, 2.11),
    ("Enron_Emails", 0.88, 0.0014, 1.78),
)


@dataclass(frozen=True)
class DomainStats:
    name: str
    docs: int
    tokens: int
    weight: float


def pile_domains(scale: float = 1.0, bytes_per_token: float = 3.0) -> list[DomainStats]:
    """The Pile's 22 domains, documents and tokens scaled by ``scale`` (both, so document sizes
    and epochs per run keep the Pile's)."""
    out = []
    for name, gib, weight, kib in PILE_22:
        raw = gib * 2**30
        docs = max(1, round(raw / (kib * 1024) * scale))
        tokens = max(docs, round(raw / bytes_per_token * scale))
        out.append(DomainStats(name, docs, tokens, weight))
    return out


def write_synthetic(root: Path, domains: list[DomainStats]) -> list[str]:
    """One ``<root>/<name>_text_document.{idx,bin}`` per domain: equal-sized documents summing
    to the domain's tokens (uint16), a sparse ``.bin``. Returns the prefixes."""
    root.mkdir(parents=True, exist_ok=True)
    prefixes = []
    for d in domains:
        prefix = root / f"{d.name}_text_document"
        sizes = np.full(d.docs, d.tokens // d.docs, dtype=np.int32)
        sizes[: d.tokens % d.docs] += 1
        pointers = np.zeros(d.docs, dtype=np.int64)
        np.cumsum(sizes[:-1].astype(np.int64) * 2, out=pointers[1:])
        with open(str(prefix) + ".idx", "wb") as f:
            f.write(b"MMIDIDX\x00\x00")
            f.write(np.array([1], "<u8").tobytes())  # version
            f.write(np.array([8], "<u1").tobytes())  # dtype code 8: uint16
            f.write(np.array([d.docs, d.docs + 1], "<u8").tobytes())
            f.write(sizes.tobytes())
            f.write(pointers.tobytes())
            f.write(np.arange(d.docs + 1, dtype=np.int64).tobytes())  # one sequence per document
        with open(str(prefix) + ".bin", "wb") as f:
            f.truncate(int(d.tokens) * 2)
        prefixes.append(str(prefix))
    return prefixes


def _bytes(root: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in root.rglob(pattern) if p.is_file())


def build_megatron(prefixes, weights, num_samples, seq_len: int, seed: int, cache: Path, blended: bool) -> dict:
    """megatron-core's builder: the stock blend (``blended``) or one single-epoch dataset per
    domain (the plugin's). Index bytes are what megatron-core writes under ``cache``."""
    import torch.distributed as dist
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
    from megatron.core.tokenizers import MegatronTokenizer

    own_group = not dist.is_initialized()
    if own_group:  # megatron-core's blend index asks for the rank: a one-process group, for this call
        dist.init_process_group("gloo", init_method=f"file://{cache.parent / '.pg'}", rank=0, world_size=1)
    mlog = logging.getLogger("megatron.core")
    level, _ = mlog.level, mlog.setLevel(logging.WARNING)
    try:
        tok = MegatronTokenizer.from_pretrained(metadata_path={"library": "null"}, vocab_size=65535)
        common = dict(random_seed=seed, sequence_length=seq_len, tokenizer=tok, path_to_cache=str(cache))
        common.update(reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False, mmap_bin_files=True)
        t0 = time.perf_counter()
        if blended:
            cfg = GPTDatasetConfig(blend_per_split=[(list(prefixes), list(weights)), None, None], **common)
            ds = BlendedMegatronDatasetBuilder(GPTDataset, [num_samples, 0, 0], lambda: True, cfg).build()[0]
            sizes = [len(d) for d in ds.datasets]
        else:
            sizes = []
            for p in prefixes:
                cfg = GPTDatasetConfig(blend_per_split=[([p], None), None, None], **common)
                built = BlendedMegatronDatasetBuilder(GPTDataset, [None, 0, 0], lambda: True, cfg).build()
                sizes.append(len(built[0]))
    finally:
        mlog.setLevel(level)
        if own_group:
            dist.destroy_process_group()
    return {"seconds": time.perf_counter() - t0, "index_bytes": _bytes(cache, "*.npy"), "samples": sizes}


def build_neox(neox_dir: str, prefixes, nums, seq_len: int, seed: int, tag: str, blend_weights=None) -> dict:
    """NeoX's rank-0 index build (``_build_index_mappings``' packed path, with its own
    functions and C++ helpers) for ``nums[i]`` samples of domain i; with ``blend_weights``,
    also NeoX's in-memory blend index (``BlendableDataset``) over the built datasets."""
    if neox_dir not in sys.path:
        sys.path.insert(0, neox_dir)
    from megatron.data import gpt2_dataset as g
    from megatron.data import helpers
    from megatron.data.indexed_dataset import MMapIndexedDataset

    t0, sizes, written = time.perf_counter(), [], 0
    for i, (prefix, n) in enumerate(zip(prefixes, nums)):
        ds = MMapIndexedDataset(prefix, skip_warmup=True)
        docs = np.arange(len(ds.sizes), dtype=np.int32)
        tokens = int(g._num_tokens(docs, ds.sizes))
        epochs = g._num_epochs(tokens, seq_len, n)
        rng = np.random.RandomState(seed=seed)
        doc_idx = g._build_doc_idx(docs, epochs, rng)
        small = 2 * ((epochs * tokens - 1) / seq_len + 1) < np.iinfo(np.int32).max  # NeoX's own test
        build = helpers.build_sample_idx_int32 if small else helpers.build_sample_idx_int64
        sample_idx = build(ds.sizes, doc_idx, seq_len, epochs, tokens)
        shuffle_idx = g._build_shuffle_idx(sample_idx.shape[0] - 1, rng)
        base = f"{prefix}_{tag}_{i}_indexmap"
        for name, arr in (("doc", doc_idx), ("sample", sample_idx), ("shuffle", shuffle_idx)):
            np.save(f"{base}_{name}_idx.npy", arr, allow_pickle=True)
            written += os.path.getsize(f"{base}_{name}_idx.npy")
        sizes.append(int(min(shuffle_idx.shape[0], sample_idx.shape[0] - 1)))
        del doc_idx, sample_idx, shuffle_idx, ds
    out = {"seconds": time.perf_counter() - t0, "index_bytes": written, "samples": sizes}
    if blend_weights is not None:
        t1, total = time.perf_counter(), sum(sizes)
        w = np.asarray(blend_weights, dtype=np.float64) / np.sum(blend_weights)
        dataset_index = np.zeros(total, dtype=np.uint8)
        sample_index = np.zeros(total, dtype=np.int64)
        helpers.build_blending_indices(dataset_index, sample_index, w, len(sizes), total, False)
        out["blend_seconds"] = time.perf_counter() - t1
        out["blend_bytes_per_rank"] = int(dataset_index.nbytes + sample_index.nbytes)
        out["seconds"] += out["blend_seconds"]
    return out


def measure_cursors(sizes, weights, global_batch: int, micro_batch: int, steps: int, seed: int = 1) -> dict:
    """Memory and time of the cursors of a data-loading rank over ``steps`` steps that start
    ``global_batch // 2`` samples before every domain's epoch boundary: one pass timed, one
    traced (``tracemalloc`` slows Python, so it never times)."""
    from neox_acodm.plan import DomainCursors, build_step_plan

    slots = global_batch // micro_batch

    def one_pass(trace: bool) -> list[float]:
        cur = DomainCursors(sizes, seed)
        cur.positions[:] = np.maximum(0, cur.sizes - global_batch // 2)
        times = []
        for t in range(steps):
            t0 = time.perf_counter()
            plan = build_step_plan(seed, t, weights, 1, slots, 0, "stratified")
            starts = cur.assign(plan, micro_batch)
            for d, s in zip(plan.domains[0], starts[0]):
                cur.sample_indices(int(d), int(s), micro_batch)
            times.append(time.perf_counter() - t0)
        return times

    times = np.array(one_pass(False))
    tracemalloc.start()
    one_pass(True)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {
        "peak_traced_bytes": int(peak),
        "median_step_seconds": float(np.median(times)),
        "max_step_seconds": float(times.max()),
        "steps": steps,
        "slots": slots,
    }


def measure_permutation(size: int, seed: int = 1) -> dict:
    """The order this replaced: one materialised ``numpy`` permutation of ``size`` samples."""
    t0 = time.perf_counter()
    perm = np.random.default_rng([2, seed, 0, 0]).permutation(size)
    return {"seconds": time.perf_counter() - t0, "bytes": int(perm.nbytes), "size": size}


def run_length_samples(iters: int, global_batch: int) -> int:
    return int(iters) * int(global_batch)


def stock_nums(weights, num_samples: int) -> list[int]:
    """The frameworks' per-dataset sizes for a blended run (``ceil(N w 1.005)``)."""
    w = np.asarray(weights, dtype=np.float64) / np.sum(weights)
    return [int(math.ceil(num_samples * x * 1.005)) for x in w]
