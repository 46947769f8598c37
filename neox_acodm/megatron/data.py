"""Dynamic blending over megatron-core datasets.

megatron-core's ``BlendedDataset`` fixes the mix when it is built (``dataset_index`` is
precomputed and cached under a hash of the weights), so weights cannot change during a run and
changing them on resume repeats or drops samples. Here the *mid-level* per-domain
``GPTDataset`` s are still built by ``BlendedMegatronDatasetBuilder`` (one per domain, one
epoch of its own data whatever the run length: the plugin's cursors walk it epoch after
epoch, see :class:`~neox_acodm.plan.DomainCursors`), and the top level is replaced by
:class:`DynamicBlendedDataset`, indexed by ``(domain, index)`` and driven by
:class:`~neox_acodm.runtime.MixingRuntime`'s deterministic plan and per-domain cursors. Samples
are tagged ``dataset_id`` like megatron-core's own blend. Nothing is cached under a key that
depends on the weights.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from ..config import ACODMConfig, ConfigError
from ..plan_iterator import PlanIterator
from ..runtime import MixingRuntime

logger = logging.getLogger(__name__)


def build_domain_datasets(
    cfg: ACODMConfig,
    seq_len: int,
    seed: int,
    tokenizer,
    split: str = "train",
    is_built_on_rank: Callable[[], bool] = lambda: True,
    path_to_cache: str | None = None,
    **gpt_kwargs,
) -> list | None:
    """One megatron-core ``GPTDataset`` per domain, in ``cfg.domains`` order.

    Each dataset holds one epoch of its domain (megatron-core's single-epoch build,
    ``num_samples=None``): its index does not grow with the run length; the plugin's cursors
    walk it epoch after epoch in a fresh order per ``(seed, domain, epoch)``. ``split`` picks
    ``train_path`` or ``valid_path``. Extra keyword arguments go to ``GPTDatasetConfig``.

    Collective when a process group is initialised (megatron-core's builder synchronises the
    ranks): every rank calls it; ranks where ``is_built_on_rank()`` is False get ``None``.
    """
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    key = "train_path" if split == "train" else "valid_path"
    kwargs = dict(reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False)
    kwargs.update(gpt_kwargs)
    out = []
    for i, d in enumerate(cfg.domains):
        prefix = getattr(d, key)
        if not prefix:
            raise ConfigError(f"acodm.domains[{i}].{key}: required to build the {split} datasets")
        blend = [([prefix], None), None, None] if split == "train" else [None, ([prefix], None), None]
        sizes = [None, 0, 0] if split == "train" else [0, None, 0]  # None: one epoch
        config = GPTDatasetConfig(
            random_seed=seed,
            sequence_length=seq_len,
            blend_per_split=blend,
            tokenizer=tokenizer,
            path_to_cache=path_to_cache,
            **kwargs,
        )
        built = BlendedMegatronDatasetBuilder(GPTDataset, sizes, is_built_on_rank, config).build()
        ds = built[0 if split == "train" else 1]
        if not is_built_on_rank():
            continue
        if ds is None or len(ds) == 0:
            raise ConfigError(f"acodm.domains[{i}].{key}: {prefix} yields no {seq_len}-token sequence")
        out.append(ds)
        logger.info("acodm: domain %s: %d samples (%s)", d.name, len(ds), prefix)
    return out if is_built_on_rank() else None


class DynamicBlendedDataset(Dataset):
    """Top-level dataset over per-domain datasets, indexed by ``(domain, index)``.

    ``ds[(d, i)]`` = ``{"dataset_id": d, **datasets[d][i]}`` (megatron-core's sample dict).
    """

    def __init__(self, datasets: Sequence):
        self.datasets = list(datasets)

    @property
    def sizes(self) -> list[int]:
        return [len(d) for d in self.datasets]

    def __len__(self) -> int:
        return sum(self.sizes)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        d, i = key
        return {"dataset_id": torch.tensor(d, dtype=torch.int64), **self.datasets[d][int(i)]}


class DynamicBlendedIterator(PlanIterator):
    """This DP rank's micro-batches, collated like Megatron's data loader, in plan order, with
    no look-ahead (see :class:`~neox_acodm.runtime.PlanIterator`). Use with Megatron's
    ``--dataloader-type external``."""

    def __init__(
        self,
        dataset: DynamicBlendedDataset,
        runtime: MixingRuntime,
        collate: Callable[[list[dict]], dict] = default_collate,
    ):
        if runtime.cursors is None or list(runtime.cursors.sizes) != dataset.sizes:
            raise ValueError("MixingRuntime must be built with dataset_sizes=DynamicBlendedDataset.sizes")

        def fetch(d, idx):  # d: the micro-batch's domain, or [b] domains at sample granularity
            doms = np.broadcast_to(np.asarray(d), np.shape(idx))
            return collate([dataset[(int(di), i)] for di, i in zip(doms, idx)])

        super().__init__(runtime, fetch)
        self.dataset = dataset

    # Megatron's maybe_save_dataloader_state hook: the state is global and lives in the runtime
    def save_state(self, path: str) -> None:
        self.runtime.save(path)

    def load_state(self, path: str) -> None:
        self.runtime.load(path)
