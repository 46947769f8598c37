"""A patch = one named attribute of one upstream module, replaced by a wrapper of the original.

Patches are idempotent (applying twice is a no-op), reversible (:meth:`Patch.remove`) and
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

    target: str  # "package.module:attribute"
    make_wrapper: Callable[[Any], Any]
    verified: tuple[str, ...] = NEOX_VERIFIED
    #: leading positional parameter names the wrapper relies on (checked against the target)
    params: tuple[str, ...] = ()
    _original: Any = field(default=None, repr=False)

    @property
    def module_name(self) -> str:
        return self.target.split(":")[0]

    @property
    def attr(self) -> str:
        return self.target.split(":")[1]

    def _module(self):
        return sys.modules.get(self.module_name) or importlib.import_module(self.module_name)

    def is_applied(self) -> bool:
        mod = sys.modules.get(self.module_name)
        return mod is not None and getattr(getattr(mod, self.attr, None), "__acodm_patch__", None) is self

    def apply(self) -> None:
        mod = self._module()
        current = getattr(mod, self.attr, None)
        if current is None:
            raise RuntimeError(
                f"neox_acodm: patch target {self.target} not found. It was verified on upstream "
                f"commit(s) {', '.join(self.verified)}; upstream has changed. Pin one of those "
                f"commits or update neox_acodm (see patches/UPSTREAM.md)")
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
            names = tuple(inspect.signature(target).parameters)[:len(self.params)]
        except (TypeError, ValueError):
            return  # builtins without a signature: existence is all we can check
        if names != self.params:
            raise RuntimeError(
                f"neox_acodm: patch target {self.target} takes {names}, the wrapper expects "
                f"{self.params} (verified on {', '.join(self.verified)}); upstream has changed. Pin "
                f"one of those versions or update neox_acodm (see patches/UPSTREAM.md)")

    def remove(self) -> None:
        mod = sys.modules.get(self.module_name)
        if mod is not None and self.is_applied():
            setattr(mod, self.attr, self._original)
        self._original = None
