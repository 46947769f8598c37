"""GPT-NeoX adapter.

``import neox_acodm.neox`` at the top of NeoX's ``train.py``/``deepy.py`` activates the plugin
explicitly (the alternative to the ``.pth`` hook from ``neox-acodm install-hook``). Activation
installs a post-import hook on ``megatron.neox_arguments.arguments`` (the ``acodm`` argument)
and ``megatron.training`` (the ``pretrain`` gate). Nothing else is patched unless the YAML has
an ``acodm:`` block. ``NEOX_ACODM_DISABLE=1`` turns it off.
"""

from __future__ import annotations

import os


def activate() -> bool:
    """Install the NeoX import hook (idempotent). Returns False when disabled by env."""
    if os.environ.get("NEOX_ACODM_DISABLE") == "1":
        return False
    from neox_acodm.patches import _hook, neox_args, neox_training

    _hook.install({neox_args.TARGET: neox_args.apply, neox_training.TARGET: neox_training.apply})
    return True


activate()
