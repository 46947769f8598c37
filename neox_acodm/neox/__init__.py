"""GPT-NeoX adapter: the session (:mod:`.session`), the integration of one ``pretrain`` call
(:mod:`.integration`) and :func:`activate`.

Importing this package changes nothing. :func:`activate` installs a post-import hook on
``megatron.neox_arguments.arguments`` (the ``acodm`` argument) and ``megatron.training`` (the
``pretrain`` gate); nothing else is patched unless the YAML has an ``acodm:`` block. Call it
from NeoX's ``train.py``/``deepy.py`` (``import neox_acodm.neox; neox_acodm.neox.activate()``),
or let the ``.pth`` start-up hook of ``neox-acodm install-hook`` call it in every interpreter.
``NEOX_ACODM_DISABLE=1`` turns it off.
"""

from __future__ import annotations

import os

__all__ = ["activate"]


def _on_training_import(module) -> None:
    """``megatron.training`` was imported: install the ``pretrain`` gate (heavy imports wait until now)."""
    from .integration import install_gate

    install_gate()


def activate() -> bool:
    """Install the NeoX import hook (idempotent). Returns False when disabled by env."""
    if os.environ.get("NEOX_ACODM_DISABLE") == "1":
        return False
    from neox_acodm.patches import hook, neox_args, neox_training

    hook.install({neox_args.TARGET: neox_args.apply, neox_training.TARGET: _on_training_import})
    return True
