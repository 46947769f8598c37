"""Seam 1: the ``acodm`` argument of GPT-NeoX's ``NeoXArgs``.

Target: ``megatron.neox_arguments.arguments`` (``NeoXArgs``, ``BASE_CLASSES``,
``NEOX_ARG_CLASSES``). Without this, NeoX rejects the block in the ``deepy.py`` process with
``NeoXArgs.__init__() got an unexpected keyword argument 'acodm'``.

Adds an inert ``acodm: dict = None`` field through an extra base class, so that every path
NeoX uses sees it: ``from_ymls``, the base64 ``--megatron_config`` to every rank,
``consume_neox_args``, ``all_config`` (W&B). A given block is validated with the core parser
at construction, so a typo fails in ``deepy.py`` with the dotted key, before anything is
launched. No other NeoX function is touched here.
"""

import dataclasses
import os
import sys

from .registry import NEOX_VERIFIED, Patch

TARGET = "megatron.neox_arguments.arguments"
VERIFIED = NEOX_VERIFIED
_DOC = "AC-ODM online data mixing (neox_acodm): the acodm block; see docs/neox.md of neox_acodm."


def reconcile(cfg, neox_args):
    """The acodm config checked against NeoX's data arguments; returns it with each domain's
    ``train_path`` and ``total_steps`` filled in. Raises ConfigError (called in ``deepy.py``
    too, so a mismatch fails before anything is launched)."""
    from neox_acodm.config import ConfigError

    paths = list(getattr(neox_args, "train_data_paths", None) or [])
    if not paths:
        raise ConfigError(
            "acodm.domains: GPT-NeoX must be given train_data_paths (one per domain); "
            "data_path (a single blended dataset) has no domains"
        )
    if len(paths) != cfg.num_domains:
        raise ConfigError(
            f"acodm.domains: {cfg.num_domains} domains but train_data_paths has "
            f"{len(paths)} entries; list one domain per path, in the same order"
        )
    for i, (d, p) in enumerate(zip(cfg.domains, paths)):
        if d.train_path is not None and os.path.normpath(d.train_path) != os.path.normpath(p):
            raise ConfigError(
                f"acodm.domains[{i}].train_path: {d.train_path!r} differs from train_data_paths[{i}] = {p!r}"
            )
    if getattr(neox_args, "train_epochs", None):
        raise ConfigError(
            "acodm: train_epochs mode is not supported (dynamic weights need train_iters); set train_iters"
        )
    domains = [{**dataclasses.asdict(d), "train_path": p} for d, p in zip(cfg.domains, paths)]
    return cfg.replace(domains=domains, total_steps=cfg.total_steps or getattr(neox_args, "train_iters", None))


def _one_line(previous):
    """``sys.excepthook``: an uncaught ConfigError (a bad acodm block) prints one line, not a traceback."""

    def excepthook(kind, value, tb):
        from neox_acodm.config import ConfigError

        if isinstance(value, ConfigError):
            sys.stderr.write(f"neox_acodm: error: {value}\n")
            return
        previous(kind, value, tb)

    return excepthook


def _validating_init(original_init):
    """``NeoXArgs.__init__`` taking ``acodm=``: the block is validated with the core parser and
    checked against NeoX's data arguments at construction (in ``deepy.py``, before launch)."""

    def __init__(self, *args, acodm=None, **kwargs):
        if acodm is not None:
            from neox_acodm.config import parse_config

            cfg = parse_config(acodm)  # raises ConfigError naming the dotted key
        object.__setattr__(self, "acodm", acodm)
        original_init(self, *args, **kwargs)
        if acodm is not None:
            reconcile(cfg, self)  # data paths vs domains: fails in deepy.py, before launch

    return __init__


EXCEPTHOOK = Patch("sys:excepthook", _one_line)


def init_patch(neox_args_cls) -> Patch:
    """``NeoXArgs.__init__`` of the given class (the imported module's) validating ``acodm=``."""
    return Patch(f"{TARGET}:NeoXArgs.__init__", _validating_init, owner=neox_args_cls)


def apply(arguments_module) -> None:
    """Register the field on ``arguments_module.NeoXArgs`` (idempotent)."""
    for name in ("NeoXArgs", "BASE_CLASSES", "NEOX_ARG_CLASSES"):
        if not hasattr(arguments_module, name):
            raise RuntimeError(
                f"neox_acodm: {TARGET}.{name} not found (verified on GPT-NeoX {', '.join(VERIFIED)}); "
                f"upstream changed its argument system"
            )
    neox_args_cls = arguments_module.NeoXArgs
    EXCEPTHOOK.apply()
    if "acodm" in neox_args_cls.__dataclass_fields__:
        return
    # the field itself: an extra base class, so every path NeoX uses (from_ymls, the base64
    # --megatron_config, consume_neox_args, all_config) sees it
    template = arguments_module.BASE_CLASSES[0].__mro__[1]  # NeoXArgsTemplate
    extra = dataclasses.make_dataclass(
        "NeoXArgsACODM", [("acodm", dict, dataclasses.field(default=None, metadata={"doc": _DOC}))], bases=(template,)
    )
    extra.__doc__ = _DOC
    neox_args_cls.__bases__ += (extra,)
    arguments_module.BASE_CLASSES.append(extra)
    arguments_module.NEOX_ARG_CLASSES.append(extra)
    neox_args_cls.__dataclass_fields__["acodm"] = extra.__dataclass_fields__["acodm"]
    init_patch(neox_args_cls).apply()
