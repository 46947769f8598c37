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

from ._registry import NEOX_VERIFIED

TARGET = "megatron.neox_arguments.arguments"
VERIFIED = NEOX_VERIFIED
_DOC = "AC-ODM online data mixing (neox_acodm): the acodm block; see the neox_acodm README."


def apply(arguments_module) -> None:
    """Register the field on ``arguments_module.NeoXArgs`` (idempotent)."""
    for name in ("NeoXArgs", "BASE_CLASSES", "NEOX_ARG_CLASSES"):
        if not hasattr(arguments_module, name):
            raise RuntimeError(
                f"neox_acodm: {TARGET}.{name} not found (verified on GPT-NeoX {', '.join(VERIFIED)}); "
                f"upstream changed its argument system")
    neox_args_cls = arguments_module.NeoXArgs
    if "acodm" in neox_args_cls.__dataclass_fields__:
        return
    template = arguments_module.BASE_CLASSES[0].__mro__[1]  # NeoXArgsTemplate
    extra = dataclasses.make_dataclass(
        "NeoXArgsACODM", [("acodm", dict, dataclasses.field(default=None, metadata={"doc": _DOC}))],
        bases=(template,))
    extra.__doc__ = _DOC
    neox_args_cls.__bases__ += (extra,)
    arguments_module.BASE_CLASSES.append(extra)
    arguments_module.NEOX_ARG_CLASSES.append(extra)
    neox_args_cls.__dataclass_fields__["acodm"] = extra.__dataclass_fields__["acodm"]
    original_init = neox_args_cls.__init__

    def __init__(self, *args, acodm=None, **kwargs):
        if acodm is not None:
            from neox_acodm.config import parse_config

            parse_config(acodm)  # raises ConfigError naming the dotted key
        object.__setattr__(self, "acodm", acodm)
        original_init(self, *args, **kwargs)

    __init__.__wrapped__ = original_init
    neox_args_cls.__init__ = __init__
