"""Megatron-LM entry point: ``pretrain_gpt.py`` with AC-ODM online data mixing.

Run it where Megatron-LM's ``pretrain_gpt.py`` runs (a Megatron-LM checkout on ``PYTHONPATH``
for ``pretrain_gpt``/``model_provider``/``gpt_builders``; megatron-core >= 0.19 from that
checkout or from the wheel)::

    PYTHONPATH=/path/to/Megatron-LM torchrun --nproc-per-node 8 \\
        -m neox_acodm.megatron.pretrain_gpt <the usual pretrain_gpt.py arguments> \\
        --acodm-config acodm.yml

The data come from ``acodm.domains`` (``train_path``/``valid_path`` prefixes), not from
``--data-path``. What it adds to the stock script:

* ``--acodm-config``: the YAML ``acodm:`` block (validated before Megatron initialises).
* Training data: one megatron-core ``GPTDataset`` per domain, built by
  ``BlendedMegatronDatasetBuilder`` and sized for the largest weight a domain may reach,
  read through :class:`~neox_acodm.megatron.data.DynamicBlendedIterator` in the order of the
  deterministic plan (``--dataloader-type external``). Validation: one megatron-core dataset
  per domain's ``valid_path``, evaluated as Megatron's multiple validation sets named after
  the domains (:mod:`.validation`), so validation losses stay comparable across mixers.
* ``forward_step``: the stock one, with its loss function wrapped to record each training
  micro-batch's mean loss under its planned domain. Gradients of the selected layers are
  captured by the runtime's probe (tensor hooks); fused wgrad accumulation stays on for every
  other layer (:func:`~neox_acodm.megatron.model.unfuse_selected`).
* ``train_step`` (Megatron's module global): after the optimizer step every rank calls
  :meth:`MixingRuntime.end_step` (reduce over DP/TP/PP, agent update on global rank 0,
  broadcast of the weights).
* ``save_checkpoint``: the mixer state is written atomically to
  ``<save>/acodm/iter_XXXXXXX.pt`` next to each checkpoint and read back on ``--load``.
* The wheel ships the dataset helpers prebuilt but no Makefile, and Megatron's
  ``initialize`` runs ``make`` on rank 0 and exits when it fails. The build is skipped when the
  prebuilt helpers import.

Every wrapper of Megatron-LM code lives in :mod:`neox_acodm.patches.megatron_training`.
"""

from __future__ import annotations

import importlib
import logging
import sys

from ..config import ACODMConfig, ConfigError, load_config
from ..mixers import requirements
from ..patches.megatron_training import compile_helpers_patch, megatron_patches
from .session import MegatronMixingSession

logger = logging.getLogger(__name__)

_COMPILE_HELPERS = compile_helpers_patch()


def add_acodm_args(parser):
    """Megatron ``extra_args_provider``: the ``--acodm-config`` flag."""
    group = parser.add_argument_group("acodm", "AC-ODM online data mixing (neox_acodm)")
    group.add_argument(
        "--acodm-config",
        type=str,
        required=True,
        help="YAML file with an acodm: block (domains with train_path/valid_path, "
        "mixer, agent, reward); see docs/megatron.md of neox_acodm",
    )
    return parser


def guard_compile_helpers() -> None:
    """Skip ``compile_helpers()`` (``make -C``) when megatron-core's prebuilt helpers import."""
    _COMPILE_HELPERS.apply()


def check_args(args, cfg: ACODMConfig) -> None:
    """Reject Megatron flags the mixing cannot honour; each message names the flag and the fix."""
    errors = []
    if args.data_path or args.train_data_path or args.valid_data_path or args.test_data_path:
        errors.append(
            "--data-path/--train-data-path/--valid-data-path/--test-data-path: the data come "
            "from acodm.domains (train_path/valid_path); remove these flags"
        )
    if getattr(args, "data_args_path", None) or getattr(args, "per_split_data_args_path", None):
        errors.append("--data-args-path/--per-split-data-args-path: the data come from acodm.domains")
    if args.mock_data or getattr(args, "sft", False) or getattr(args, "fim_data", False):
        errors.append("--mock-data/--sft/--fim-data: AC-ODM mixes GPT pretraining datasets only")
    if args.dataloader_type != "external":
        errors.append(
            f"--dataloader-type {args.dataloader_type}: the mixing iterator is an external "
            f"loader; drop the flag (it defaults to external here)"
        )
    if args.rampup_batch_size:
        errors.append("--rampup-batch-size: the plan needs a fixed number of micro-batches per step")
    if args.context_parallel_size > 1:
        errors.append("--context-parallel-size > 1 is not supported by neox_acodm yet")
    # fused wgrad accumulation is kept: gradient hooks switch it off on the observed modules
    # only, activation capture reads no .grad and needs no change
    if getattr(args, "phase_transition_iterations", None):
        errors.append(
            "--phase-transition-iterations: a phase restart re-counts each phase's samples "
            "from zero and expects a new --data-path blend; the mixer owns the data order "
            "(export the weights with `neox-acodm export-schedule` for phased runs); remove it"
        )
    if getattr(args, "sequence_packing_scheduler", None):
        errors.append(
            f"--sequence-packing-scheduler {args.sequence_packing_scheduler}: it moves samples "
            f"across data-parallel ranks, so a micro-batch no longer holds one planned domain; "
            f"remove it"
        )
    if requirements(cfg).gram and args.calculate_per_token_loss:
        errors.append("--calculate-per-token-loss: rewards are defined on per-micro-batch mean losses; remove the flag")
    activations = cfg.sampling.granularity == "sample" or cfg.reward.estimator == "projected"
    if requirements(cfg).gram and activations and getattr(args, "sequence_parallel", False):
        errors.append(
            "--sequence-parallel: activation capture (acodm.sampling.granularity 'sample' or "
            "acodm.reward.estimator 'projected') needs each rank's activations to cover its samples' "
            "whole sequences; drop the flag, or use granularity 'microbatch' with estimator 'exact'"
        )
    if not args.train_iters:
        errors.append("--train-iters is required (the agent's schedule and the dataset sizes use it)")
    if errors:
        raise ConfigError("neox_acodm.megatron.pretrain_gpt: " + "; ".join(errors))


def install(session: MegatronMixingSession) -> list:
    """Apply the Megatron-LM wrappers (:func:`neox_acodm.patches.megatron_training.megatron_patches`)
    for ``session``; returns them (``remove()`` reverts each)."""
    patches = megatron_patches(session)
    for p in patches:
        p.apply()
    return patches


def main(argv: list[str] | None = None) -> None:
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    try:
        upstream = importlib.import_module("pretrain_gpt")
    except ModuleNotFoundError as e:
        if e.name in ("pretrain_gpt", "model_provider", "gpt_builders"):
            raise SystemExit(
                "neox_acodm.megatron.pretrain_gpt: Megatron-LM's pretrain_gpt.py is not "
                "importable; put your Megatron-LM checkout (the release matching your "
                "megatron-core) on PYTHONPATH"
            ) from None
        raise
    from megatron.core.enums import ModelType
    from megatron.training import argument_utils, inprocess_restart, pretrain
    from megatron.training.arguments import parse_and_validate_args

    if not hasattr(argument_utils, "pretrain_cfg_container_from_args"):
        raise SystemExit(
            "neox_acodm.megatron.pretrain_gpt supports megatron-core >= 0.19 (pretrain() taking a config container)"
        )
    guard_compile_helpers()
    args = parse_and_validate_args(
        extra_args_provider=add_acodm_args,
        args_defaults={"tokenizer_type": "GPT2BPETokenizer", "dataloader_type": "external"},
    )
    cfg = load_config(args.acodm_config)
    check_args(args, cfg)
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("neox_acodm").setLevel(logging.INFO)
    session = MegatronMixingSession(cfg, upstream)
    install(session)
    provider = session.datasets_provider
    provider.__func__.is_distributed = True  # called on every rank (the builders synchronise)
    run, store = inprocess_restart.maybe_wrap_for_inprocess_restart(pretrain)
    model_cfg = argument_utils.gpt_config_from_args(args)
    full_config = argument_utils.pretrain_cfg_container_from_args(args, model_cfg)
    run(
        full_config,
        provider,
        ModelType.encoder_or_decoder,
        session.forward_step,
        store=store,
        get_embedding_ranks=getattr(upstream, "get_embedding_ranks", None),
    )


if __name__ == "__main__":
    main()
