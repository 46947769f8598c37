"""The one registry of the patch layer: every wrapper of upstream code (GPT-NeoX, Megatron-LM,
DeepSpeed, and the interpreter's ``sys.excepthook``) is a :class:`Patch`.

A patch = one named attribute of one upstream module (``"pkg.mod:attr"``), of a class in it
(``"pkg.mod:Class.attr"``), or of a given object (``owner=``), replaced by a wrapper of the
original. Patches are idempotent (applying twice is a no-op), reversible (:meth:`Patch.remove`) and
loud: a missing target raises ``RuntimeError`` naming the target and the upstream commits the
patch was verified on.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: GPT-NeoX commits every NeoX patch was verified on (see patches/UPSTREAM.md)
NEOX_VERIFIED = ("ea7aefd8",)
#: Megatron-LM releases the Megatron entry point's patches were verified on
MEGATRON_VERIFIED = ("core_r0.19.0",)


@dataclass
class Patch:
    """Replace ``module:attr`` by ``make_wrapper(original)``."""

    target: str  # "package.module:attribute" or "package.module:Class.attribute"
    make_wrapper: Callable[[Any], Any]
    verified: tuple[str, ...] = NEOX_VERIFIED
    #: leading positional parameter names the wrapper relies on (checked against the target)
    params: tuple[str, ...] = ()
    #: patch this object's attribute instead of resolving the target's module (the target
    #: then names what the object is, for messages)
    owner: Any = field(default=None, repr=False)
    _original: Any = field(default=None, repr=False)

    @property
    def module_name(self) -> str:
        return self.target.split(":")[0]

    @property
    def attr(self) -> str:
        return self.target.split(":")[1].split(".")[-1]

    def _holder(self, imported_only: bool = False):
        """The object whose attribute is replaced (None: its module is not imported)."""
        if self.owner is not None:
            return self.owner
        mod = sys.modules.get(self.module_name)
        if mod is None and not imported_only:
            mod = importlib.import_module(self.module_name)
        for name in self.target.split(":")[1].split(".")[:-1]:
            mod = getattr(mod, name, None) if mod is not None else None
        return mod

    def is_applied(self) -> bool:
        holder = self._holder(imported_only=True)
        return holder is not None and getattr(getattr(holder, self.attr, None), "__acodm_patch__", None) is self

    def apply(self) -> None:
        mod = self._holder()
        current = getattr(mod, self.attr, None) if mod is not None else None
        if current is None:
            raise RuntimeError(
                f"neox_acodm: patch target {self.target} not found. It was verified on upstream "
                f"commit(s) {', '.join(self.verified)}; upstream has changed. Pin one of those "
                f"commits or update neox_acodm (see patches/UPSTREAM.md)"
            )
        if getattr(current, "__acodm_patch__", None) is self:
            return
        self.check_signature(current)
        wrapper = self.make_wrapper(current)
        wrapper.__acodm_patch__ = self
        wrapper.__wrapped__ = current
        self._original = current
        setattr(mod, self.attr, wrapper)

    def check_signature(self, target: Any) -> None:
        """The target's leading parameters must be ``params`` (a renamed argument fails loudly)."""
        if not self.params:
            return
        import inspect

        try:
            names = tuple(inspect.signature(target).parameters)[: len(self.params)]
        except (TypeError, ValueError):
            return  # builtins without a signature: existence is all we can check
        if names != self.params:
            raise RuntimeError(
                f"neox_acodm: patch target {self.target} takes {names}, the wrapper expects "
                f"{self.params} (verified on {', '.join(self.verified)}); upstream has changed. Pin "
                f"one of those versions or update neox_acodm (see patches/UPSTREAM.md)"
            )

    def remove(self) -> None:
        holder = self._holder(imported_only=True)
        if holder is not None and self.is_applied():
            setattr(holder, self.attr, self._original)
        self._original = None
