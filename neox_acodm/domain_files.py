"""``domains: <file>``: a domain list read from a YAML file (the bundled ``pile-22.yml`` among them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .typed_yaml import ConfigError, load_yaml

__all__ = ["DOMAIN_LISTS", "include_domains"]

#: where ``domains: <file>`` looks last: the lists shipped with the package (``pile-22.yml``)
DOMAIN_LISTS = Path(__file__).resolve().parent / "domain_lists"


def include_domains(block: Any, path: str = "acodm", base_dir: str | Path | None = None) -> Any:
    """``domains: <file>``: the block with the domain list read from a YAML file (a list, or a
    mapping with ``domains:``). A relative name is looked up in ``base_dir`` (the including
    file's folder), the working directory, then :data:`DOMAIN_LISTS`."""
    if not isinstance(block, dict) or not isinstance(block.get("domains"), str):
        return block
    name = Path(block["domains"])
    tried = (
        [name]
        if name.is_absolute()
        else [*([Path(base_dir) / name] if base_dir is not None else []), Path.cwd() / name, DOMAIN_LISTS / name]
    )
    file = next((f for f in tried if f.is_file()), None)
    if file is None:
        raise ConfigError(
            f"{path}.domains: domain list file {str(name)!r} not found (looked in "
            f"{', '.join(str(f.parent) for f in tried)}); give a list or an existing file"
        )
    data = load_yaml(file.read_bytes(), str(file))
    if isinstance(data, dict) and "domains" in data:
        data = data["domains"]
    if not isinstance(data, list):
        raise ConfigError(
            f"{path}.domains: {file} must hold a list of domains (or a mapping with "
            f"`domains:`), got {type(data).__name__}"
        )
    return {**block, "domains": data}
