"""Run by ``neox_acodm.pth`` in every interpreter of the environment (installed with
``neox-acodm install-hook``). Installs the lazy GPT-NeoX import hook; imports nothing heavy
and patches nothing until GPT-NeoX's own modules are imported. ``NEOX_ACODM_DISABLE=1`` turns
it off."""

import os

if os.environ.get("NEOX_ACODM_DISABLE") != "1":
    from neox_acodm.neox import activate

    activate()
