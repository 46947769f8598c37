"""The patch layer that hooks GPT-NeoX's data pipeline and training step, installed as
``neox_acodm.patches``. One module per upstream seam; see UPSTREAM.md for verified commits.

* ``neox_args``     : the ``acodm`` field of ``NeoXArgs``;
* ``neox_training`` : the ``pretrain`` gate and, only with an ``acodm:`` block, the data
                      loader, setup, loss, iterator, train-step and checkpoint patches;
* ``_registry``     : :class:`Patch` (apply/remove, idempotent, loud when upstream changed);
* ``_hook``         : the lazy post-import hook.
"""
