"""A typed YAML engine: frozen dataclasses whose fields carry their documentation and ranges.

:func:`build` turns a loaded mapping into a dataclass, converting every field by its type
annotation and checking ranges; a class may define ``_check(self, path)`` for its cross-field
checks. Errors are :class:`ConfigError` whose one-line message starts with the dotted key path.
:func:`load_yaml` refuses duplicate keys (YAML would otherwise keep the last one silently).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Literal, Union

import yaml

__all__ = ["ConfigError", "build", "field", "load_yaml", "reference_rows", "to_plain"]


class ConfigError(ValueError):
    """A bad ``acodm`` value; the message starts with the dotted key path."""


def field(default: Any = dataclasses.MISSING, doc: str = "", rng: tuple | None = None, factory=None):
    """Declare a documented field; ``rng`` = (lo, hi, lo_inclusive, hi_inclusive), None = open."""
    meta = {"doc": doc}
    if rng is not None:
        meta["range"] = rng
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def to_plain(obj: Any) -> Any:
    """Dataclasses (nested) as plain dicts and lists (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(x) for x in obj]
    return obj


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def _check_range(value: float, rng: tuple, path: str) -> None:
    lo, hi, lo_inc, hi_inc = rng
    ok = True
    if lo is not None:
        ok &= value >= lo if lo_inc else value > lo
    if hi is not None:
        ok &= value <= hi if hi_inc else value < hi
    if not ok:
        left = ("[" if lo_inc else "(") + ("-inf" if lo is None else f"{lo:g}")
        right = ("inf" if hi is None else f"{hi:g}") + ("]" if hi_inc else ")")
        raise ConfigError(f"{path}: must be in {left}, {right}, got {_short(value)}")


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{path}: got {value!r}{hint} (allowed: {', '.join(map(str, allowed))})")
        return value
    if origin in (Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return _convert(arg, value, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        return tuple(_convert(item_tp, v, f"{path}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {_short(value)}")
        if not -(2**63) <= value < 2**63:
            raise ConfigError(f"{path}: {_short(value)} does not fit in 64 bits")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {_short(value)}")
        try:
            value = float(value)
        except OverflowError:
            raise ConfigError(f"{path}: {_short(value)} is too large for a float") from None
        if not math.isfinite(value):
            raise ConfigError(f"{path}: must be finite, got {value!r}")
        return value
    if tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__} {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {path}")  # programming error


def build(cls: type, data: Any, path: str) -> Any:
    """``cls`` built from the mapping ``data`` (None = all defaults); raises ConfigError naming ``path``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"{path}.{key}: unknown key; {hint}(valid: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        sub = f"{path}.{name}"
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{sub}: required key is missing")
            continue
        value = _convert(hints[name], data[name], sub)
        rng = f.metadata.get("range")
        if rng is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
            _check_range(value, rng, sub)
        kwargs[name] = value
    obj = cls(**kwargs)
    check = getattr(obj, "_check", None)
    if check is not None:
        check(path)
    return obj


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, (str, int, float, bool)) and key is not None:
            raise ConfigError(
                f"line {key_node.start_mark.line + 1}: a mapping key must be a name, got a "
                f"{type(key).__name__} ({key!r:.60})"
            )
        if key in seen:
            raise ConfigError(
                f"line {key_node.start_mark.line + 1}: key {key!r} appears twice in "
                f"one mapping (YAML would silently keep the last); remove one"
            )
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(raw: bytes | str, source: str) -> Any:
    """Parse YAML text from ``source`` (named in messages); every failure is a one-line ConfigError."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{source}: not UTF-8 text (byte {e.start}); save the file as UTF-8") from None
    try:
        return yaml.load(raw, Loader=_UniqueKeyLoader)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = " ".join(str(x) for x in (getattr(e, "context", None), getattr(e, "problem", None)) if x)
        raise ConfigError(f"{source}: invalid YAML{where}: {what or str(e).splitlines()[0]}") from None
    except RecursionError:
        raise ConfigError(f"{source}: the YAML nests too deeply to be a config") from None


def reference_rows(cls: type, prefix: str) -> list[str]:
    """Markdown rows ``| key | type | default | meaning |`` of every field, recursively."""
    rows: list[str] = []

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            key = f"{prefix}.{f.name}"
            if dataclasses.is_dataclass(tp):
                walk(tp, key)
                continue
            if typing.get_origin(tp) is tuple and dataclasses.is_dataclass(typing.get_args(tp)[0]):
                rows.append(f"| `{key}` | list | (required) | {f.metadata.get('doc', '')} |")
                walk(typing.get_args(tp)[0], key + "[]")
                continue
            if f.default is not dataclasses.MISSING:
                default = f"`{to_plain(f.default)!r}`" if f.default is not None else "`null`"
            elif f.default_factory is not dataclasses.MISSING:
                default = f"`{to_plain(f.default_factory())!r}`"
            else:
                default = "(required)"
            rng = f.metadata.get("range")
            extra = ""
            if rng:
                lo, hi, li, hi_inc = rng
                extra = (
                    f" Range {'[' if li else '('}{'-inf' if lo is None else lo}, "
                    f"{'inf' if hi is None else hi}{']' if hi_inc else ')'}."
                )
            doc = f.metadata.get("doc", "").replace("|", "\\|")
            rows.append(f"| `{key}` | {_type_name(tp).replace('|', '/')} | {default} | {doc}{extra} |")

    walk(cls, prefix)
    return rows
