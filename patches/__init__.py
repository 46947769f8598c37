"""The patch layer, installed as ``neox_acodm.patches``: every wrapper or replacement of upstream
code (GPT-NeoX, DeepSpeed, Megatron-LM), for both frameworks, through one public registry. One
module per upstream seam; see UPSTREAM.md for the verified commits. Importing a module here
patches nothing: the adapters apply what they need (``neox_acodm.neox.activate``,
``neox_acodm.megatron.pretrain_gpt``).

* ``registry``          : :class:`~.registry.Patch` (apply/remove, idempotent, signature-checked,
                          loud when upstream changed);
* ``hook``              : the lazy post-import hook;
* ``neox_args``         : the ``acodm`` field of ``NeoXArgs`` and the one-line config errors;
* ``neox_training``     : the ``pretrain`` gate and, only with an ``acodm:`` block, the data
                          loader, setup, loss, iterator, train-step and checkpoint wrappers;
* ``neox_eval``, ``neox_dist``: per-domain validation, the bounded join of ``init_distributed``;
* ``megatron_training`` : Megatron-LM's setup, train-step, checkpoint and validation wrappers.
"""
