"""Lazy post-import hook: runs a callback right after a target module's body executed.

Installed from ``neox_acodm.pth`` (every interpreter of the environment: the ``deepy.py``
process and every launched rank) or explicitly by ``import neox_acodm.neox``. It imports
nothing heavy and does nothing until one of the target modules is imported.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from collections.abc import Callable


class _PostImportFinder(importlib.abc.MetaPathFinder):
    def __init__(self, callbacks: dict[str, list[Callable]]):
        self.callbacks = callbacks
        self._busy: set[str] = set()

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.callbacks or fullname in self._busy:
            return None
        self._busy.add(fullname)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._busy.discard(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader, callbacks = spec.loader, self.callbacks[fullname]

        class _Loader(importlib.abc.Loader):
            def create_module(self, s):
                return loader.create_module(s)

            def exec_module(self, module):
                loader.exec_module(module)
                for callback in list(callbacks):
                    callback(module)

        spec.loader = _Loader()
        return spec


def install(callbacks: dict[str, Callable]) -> None:
    """Register ``callbacks`` (module name -> fn(module)); modules already imported get the
    callback immediately. Registering the same function twice is a no-op."""
    finder = next((f for f in sys.meta_path if isinstance(f, _PostImportFinder)), None)
    if finder is None:
        finder = _PostImportFinder({})
        sys.meta_path.insert(0, finder)
    for name, cb in callbacks.items():
        registered = finder.callbacks.setdefault(name, [])
        if cb in registered:
            continue
        registered.append(cb)
        if name in sys.modules:
            cb(sys.modules[name])


def uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _PostImportFinder)]
