"""Scenario data: the offline corpus (:mod:`.corpus`), a local SentencePiece tokenizer and
megatron-core indexed datasets (:mod:`.tokens`), cut into the scenario's domains: each keeps
``train_tokens`` of its source's training split and ``valid_tokens`` of its held-out split,
optionally transformed (``shuffle_tokens``: the stream permuted, i.e. unigram noise)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .corpus import build_corpus
from .scenario import Scenario, Size
from .tokens import DomainData, build_indexed, load_domain, train_tokenizer

logger = logging.getLogger(__name__)

_SHUFFLE_SEED = 0x5EED_0003


def _cut(
    stream: DomainData, name: str, offset: int, tokens: int, transform: str, seq_len: int, what: str
) -> DomainData:
    have = len(stream.tokens) - offset
    if have < tokens + 1:
        raise ValueError(
            f"scenario domain {name!r}: wants {tokens} {what} tokens of {stream.name!r} "
            f"from offset {offset}, the corpus has {max(have, 0)}; lower train_tokens/"
            f"valid_tokens or raise the size's cap_mb"
        )
    t = np.array(stream.tokens[offset : offset + tokens + 1])
    if transform == "shuffle_tokens":
        np.random.default_rng([_SHUFFLE_SEED, len(t)]).shuffle(t)
    return DomainData(name, t, seq_len)


def build_domains(sc: Scenario, size: Size, cache: Path) -> tuple[list[DomainData], list[DomainData], dict]:
    """(train, valid, info) for the scenario at ``size``."""
    corpus_dir = cache / f"corpus_{size.cap_mb}mb"
    manifest = build_corpus(corpus_dir, cap_mb=size.cap_mb)
    missing = sorted({d.source for d in sc.domains} - set(manifest["domains"]))
    if missing:
        raise ValueError(
            f"scenario {sc.name}: corpus domains {missing} could not be built "
            f"(have {sorted(manifest['domains'])}; skipped: {manifest['skipped']})"
        )
    tok = train_tokenizer(corpus_dir, manifest, size.vocab, cache / "tokenizers")
    prefixes = build_indexed(corpus_dir, manifest, tok, corpus_dir / f"indexed_{tok.stem}")
    seq = size.model.seq_len
    sources = {
        s: (load_domain(prefixes[f"{s}/train"], s, seq), load_domain(prefixes[f"{s}/valid"], s, seq))
        for s in {d.source for d in sc.domains}
    }
    train, valid, info = [], [], {}
    for d in sc.domains:
        tr, va = sources[d.source]
        # a valid offset proportional to the train offset keeps shared sources disjoint there too
        voff = d.offset_tokens * len(va.tokens) // max(1, len(tr.tokens))
        n_train = max(seq + 1, int(d.train_tokens * size.token_scale))
        train.append(_cut(tr, d.name, d.offset_tokens, n_train, d.transform, seq, "train"))
        valid.append(_cut(va, d.name, voff, size.valid_tokens, d.transform, seq, "valid"))
        info[d.name] = {
            "source": d.source,
            "transform": d.transform,
            "train_tokens": n_train,
            "valid_tokens": size.valid_tokens,
            "metric_weight": d.metric_weight,
        }
    return train, valid, {"domains": info, "tokenizer": tok.name}
