"""Tokenizer (SentencePiece BPE, trained locally) and per-domain Megatron indexed datasets
(``.bin/.idx`` written with megatron-core's ``IndexedDatasetBuilder``, the format GPT-NeoX and
megatron-core read), plus fixed-length token windows for training and evaluation."""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)


def _iter_docs(path: Path):
    with open(path) as f:
        for line in f:
            yield json.loads(line)["text"]


def train_tokenizer(
    corpus: Path, manifest: dict, vocab_size: int, out_dir: Path, chars_per_domain: int = 2_000_000
) -> Path:
    """Train (or reuse) a lossless SentencePiece BPE model on a per-domain-balanced sample."""
    import sentencepiece as spm

    key = hashlib.sha1(
        json.dumps([manifest["domains"], vocab_size, chars_per_domain], sort_keys=True).encode()
    ).hexdigest()[:12]
    prefix = out_dir / f"spm_bpe{vocab_size}_{key}"
    model = prefix.with_suffix(".model")
    if model.exists():
        return model
    out_dir.mkdir(parents=True, exist_ok=True)
    sample = out_dir / f"spm_sample_{key}.txt"
    with open(sample, "w") as f:
        for domain in manifest["domains"]:
            n = 0
            for doc in _iter_docs(corpus / f"{domain}.train.jsonl"):
                for line in doc.split("\n"):
                    if line.strip():
                        f.write(line + "\n")
                        n += len(line)
                if n >= chars_per_domain:
                    break
    spm.SentencePieceTrainer.train(
        input=str(sample),
        model_prefix=str(prefix),
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        user_defined_symbols=["\n", "\t", "    ", "        "],
        character_coverage=0.9995,
        input_sentence_size=400_000,
        shuffle_input_sentence=True,
        num_threads=2,
        bos_id=-1,
        eos_id=1,
        unk_id=0,
        pad_id=-1,
        minloglevel=2,
    )
    sample.unlink()
    return model


@dataclass
class DomainData:
    """Token stream of one domain and its fixed-length windows (sample i = tokens[i*T : i*T+T+1])."""

    name: str
    tokens: np.ndarray
    seq_len: int

    def __len__(self) -> int:
        return max(0, (len(self.tokens) - 1) // self.seq_len)

    def windows(self, idx: np.ndarray) -> torch.Tensor:
        """[len(idx), T + 1] int64."""
        t = self.seq_len
        return torch.from_numpy(np.stack([self.tokens[i * t : i * t + t + 1] for i in idx]).astype(np.int64))


def build_indexed(corpus: Path, manifest: dict, tokenizer_model: Path, out_dir: Path) -> dict[str, Path]:
    """Encode every domain/split to ``out_dir/<domain>_<split>_text_document.{bin,idx}``
    (one document per corpus document, EOD appended). Returns the prefixes."""
    import sentencepiece as spm
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
    dtype = np.uint16 if sp.get_piece_size() < 65500 else np.int32
    prefixes = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    for domain in manifest["domains"]:
        for split in ("train", "valid"):
            prefix = out_dir / f"{domain}_{split}_text_document"
            prefixes[f"{domain}/{split}"] = prefix
            if prefix.with_suffix(".idx").exists():
                continue
            builder = IndexedDatasetBuilder(str(prefix.with_suffix(".bin")), dtype=dtype)
            docs = list(_iter_docs(corpus / f"{domain}.{split}.jsonl"))
            for ids in sp.encode(docs):
                builder.add_item(torch.tensor(ids + [sp.eos_id()], dtype=torch.int64))
                builder.end_document()
            builder.finalize(str(prefix.with_suffix(".idx")))
    return prefixes


def load_domain(prefix: Path, name: str, seq_len: int, max_tokens: int | None = None) -> DomainData:
    """Read an indexed dataset back with megatron-core's ``IndexedDataset``; documents are
    concatenated in a fixed shuffled order (seeded by the name) into one token stream."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(str(prefix))
    order = list(range(len(ds)))
    random.Random(name).shuffle(order)
    parts, n = [], 0
    for i in order:
        seq = np.asarray(ds[i])
        parts.append(seq)
        n += len(seq)
        if max_tokens and n >= max_tokens:
            break
    return DomainData(name, np.concatenate(parts), seq_len)
