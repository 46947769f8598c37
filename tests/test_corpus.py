"""The offline corpus builder: split by document, paragraphs kept whole."""

import json

from neox_acodm.tools.benchmix.corpus import build_corpus, split_documents


def test_corpus_split_is_by_document(tmp_path):
    m = build_corpus(
        tmp_path / "c", cap_mb=0.5, domains=["code_python", "code_c", "changelogs", "drama", "legal", "dictionary"]
    )
    assert len(m["domains"]) >= 6
    for d in m["domains"]:
        train = {json.loads(x)["text"] for x in (tmp_path / "c" / f"{d}.train.jsonl").read_text().splitlines()}
        valid = {json.loads(x)["text"] for x in (tmp_path / "c" / f"{d}.valid.jsonl").read_text().splitlines()}
        assert valid and train and not train & valid


def test_split_documents():
    text = "\n\n".join(f"paragraph {i} " + "x" * 100 for i in range(50))
    docs = list(split_documents(text, max_chars=1000))
    assert all(len(d) <= 1300 for d in docs) and len(docs) > 3
    assert "".join(docs).count("paragraph") == 50
