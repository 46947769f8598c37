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
  deterministic plan (``--dataloader-type external``). Validation uses a fixed megatron-core
  ``BlendedDataset`` over the domains' ``valid_path`` at the initial weights, so validation
  losses stay comparable across runs and mixers.
* ``forward_step``: the stock one, with its loss function wrapped to record each training
  micro-batch's mean loss under its planned domain. Gradients of the selected layers are
  captured by the runtime's probe (tensor hooks), so ``--no-gradient-accumulation-fusion`` is
  required when rewards are computed.
* ``train_step`` (Megatron's module global): after the optimizer step every rank calls
  :meth:`MixingRuntime.end_step` (reduce over DP/TP/PP, agent update on global rank 0,
  broadcast of the weights).
* ``save_checkpoint``: the mixer state is written atomically to
  ``<save>/acodm/iter_XXXXXXX.pt`` next to each checkpoint and read back on ``--load``.
* The wheel ships the dataset helpers prebuilt but no Makefile, and Megatron's
  ``initialize`` runs ``make`` on rank 0 and exits when it fails. The build is skipped when the
  prebuilt helpers import.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable, Iterator

import torch

from ..config import ACODMConfig, ConfigError, load_config
from ..runtime import MixingRuntime
from .data import DynamicBlendedDataset, DynamicBlendedIterator, build_domain_datasets
from .model import GlobalLayerView

logger = logging.getLogger(__name__)


def add_acodm_args(parser):
    """Megatron ``extra_args_provider``: the ``--acodm-config`` flag."""
    group = parser.add_argument_group("acodm", "AC-ODM online data mixing (neox_acodm)")
    group.add_argument("--acodm-config", type=str, required=True,
                       help="YAML file with an acodm: block (domains with train_path/valid_path, "
                            "mixer, agent, reward); see the neox_acodm README")
    return parser


def guard_compile_helpers() -> None:
    """Skip ``compile_helpers()`` (``make -C``) when megatron-core's prebuilt helpers import."""
    from megatron.core.datasets import utils as dataset_utils

    original = dataset_utils.compile_helpers
    if getattr(original, "_acodm_guard", False):
        return

    def compile_helpers():
        try:
            importlib.import_module("megatron.core.datasets.helpers_cpp")
        except ImportError:
            return original()
        logger.info("acodm: megatron-core dataset helpers are prebuilt; skipping compile_helpers()")

    compile_helpers._acodm_guard = True
    dataset_utils.compile_helpers = compile_helpers


def check_args(args, cfg: ACODMConfig) -> None:
    """Reject Megatron flags the mixing cannot honour; each message names the flag and the fix."""
    errors = []
    if args.data_path or args.train_data_path or args.valid_data_path or args.test_data_path:
        errors.append("--data-path/--train-data-path/--valid-data-path/--test-data-path: the data come "
                      "from acodm.domains (train_path/valid_path); remove these flags")
    if getattr(args, "data_args_path", None) or getattr(args, "per_split_data_args_path", None):
        errors.append("--data-args-path/--per-split-data-args-path: the data come from acodm.domains")
    if args.mock_data or getattr(args, "sft", False) or getattr(args, "fim_data", False):
        errors.append("--mock-data/--sft/--fim-data: AC-ODM mixes GPT pretraining datasets only")
    if args.dataloader_type != "external":
        errors.append(f"--dataloader-type {args.dataloader_type}: the mixing iterator is an external "
                      f"loader; drop the flag (it defaults to external here)")
    if args.rampup_batch_size:
        errors.append("--rampup-batch-size: the plan needs a fixed number of micro-batches per step")
    if args.context_parallel_size > 1:
        errors.append("--context-parallel-size > 1 is not supported by neox_acodm yet")
    if cfg.needs_rewards and args.gradient_accumulation_fusion:
        errors.append("--no-gradient-accumulation-fusion is required: fused weight-gradient "
                      "accumulation bypasses autograd, so per-domain gradients cannot be captured")
    if cfg.needs_rewards and args.calculate_per_token_loss:
        errors.append("--calculate-per-token-loss: rewards are defined on per-micro-batch mean "
                      "losses; remove the flag")
    if not args.train_iters:
        errors.append("--train-iters is required (the agent's schedule and the dataset sizes use it)")
    if errors:
        raise ConfigError("neox_acodm.megatron.pretrain_gpt: " + "; ".join(errors))


def _cyclic(loader) -> Iterator:
    while True:
        yield from loader


class MegatronMixingSession:
    """Per-process glue between Megatron-LM's training loop and :class:`MixingRuntime`."""

    def __init__(self, cfg: ACODMConfig, upstream):
        self.cfg = cfg
        self.upstream = upstream  # Megatron-LM's pretrain_gpt module
        self.rt: MixingRuntime | None = None
        self.train_iter: DynamicBlendedIterator | None = None
        self.optimizer = None
        self.step_grad_scale = 1.0
        self.micro = 0
        self.last_metrics: dict[str, float] = {}

    # -- helpers ------------------------------------------------------------------------------
    @staticmethod
    def _args():
        from megatron.training import get_args
        return get_args()

    def _is_data_rank(self) -> bool:
        from megatron.core import mpu
        from megatron.training.utils import is_first_or_last_pipeline_stage
        return mpu.get_tensor_model_parallel_rank() == 0 and is_first_or_last_pipeline_stage(None)

    def _tokenizer(self, args):
        from megatron.core.tokenizers.utils.build_tokenizer import build_tokenizer
        return build_tokenizer(args)

    def _gpt_kwargs(self, args) -> dict:
        return dict(reset_position_ids=args.reset_position_ids, reset_attention_mask=args.reset_attention_mask,
                    eod_mask_loss=args.eod_mask_loss, mmap_bin_files=args.mmap_bin_files,
                    create_attention_mask=args.create_attention_mask_in_dataloader)

    def state_path(self, root: str, iteration: int) -> str:
        return os.path.join(root, "acodm", f"iter_{iteration:07d}.pt")

    # -- setup (after Megatron built the model and loaded the checkpoint) --------------------
    def setup(self, model_chunks, optimizer) -> None:
        from megatron.core import mpu
        from megatron.core.num_microbatches_calculator import get_num_microbatches

        args = self._args()
        datasets = build_domain_datasets(
            self.cfg, num_samples=args.train_iters * args.global_batch_size, seq_len=args.seq_length,
            seed=args.seed, tokenizer=self._tokenizer(args), split="train",
            is_built_on_rank=self._is_data_rank, path_to_cache=args.data_cache_path, **self._gpt_kwargs(args))
        blended = DynamicBlendedDataset(datasets) if datasets is not None else None
        tp = mpu.get_tensor_model_parallel_world_size()
        pp = mpu.get_pipeline_model_parallel_world_size()
        self.rt = MixingRuntime(
            self.cfg, dataset_sizes=blended.sizes if blended is not None else None,
            dp_size=mpu.get_data_parallel_world_size(), dp_rank=mpu.get_data_parallel_rank(),
            grad_accum=get_num_microbatches(), micro_batch=args.micro_batch_size,
            total_steps=args.train_iters, model=GlobalLayerView(model_chunks),
            dp_group=mpu.get_data_parallel_group(),
            partial_sum_group=mpu.get_tensor_model_parallel_group() if tp > 1 else None,
            pipe_group=mpu.get_pipeline_model_parallel_group() if pp > 1 else None,
            comm_device=torch.device("cuda", torch.cuda.current_device()))
        self.optimizer = optimizer
        if args.load and args.iteration > 0:
            path = self.state_path(args.load, args.iteration)
            try:
                self.rt.load(path)  # collective: a missing file raises on every rank
            except (FileNotFoundError, RuntimeError) as e:
                raise RuntimeError(
                    f"acodm: resuming from iteration {args.iteration} needs {path} ({e}); was the "
                    f"checkpoint written by neox_acodm.megatron.pretrain_gpt? Start a new run or copy "
                    f"the matching acodm state there") from e
            logger.info("acodm: resumed mixer state from %s (step %d)", path, self.rt.step)
        if self.rt.step != args.iteration:
            raise RuntimeError(f"acodm: mixer step {self.rt.step} != Megatron iteration {args.iteration}")
        if blended is not None:
            self.train_iter = DynamicBlendedIterator(blended, self.rt)
        self._refresh_grad_scale()

    def _refresh_grad_scale(self) -> None:
        """Read the loss scale once per step (a host sync; it only changes in optimizer.step)."""
        self.step_grad_scale = self._grad_scale()
        self.rt.set_grad_scale(self.step_grad_scale)

    def _grad_scale(self) -> float:
        """``num_microbatches / loss_scale``: the schedule divides each micro-batch loss by the
        number of micro-batches and the optimizer multiplies it by its loss scale."""
        scale = self.optimizer.get_loss_scale() if self.optimizer is not None else 1.0
        return float(self.rt.grad_accum) / float(scale)

    # -- data ---------------------------------------------------------------------------------
    def datasets_provider(self, train_val_test_num_samples, vp_stage=None):
        """Megatron's dataset provider (``--dataloader-type external``): ready iterators."""
        from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
        from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
        from megatron.core import mpu
        from megatron.training.datasets.data_samplers import MegatronPretrainingSampler

        args = self._args()
        valid = None
        prefixes = [d.valid_path for d in self.cfg.domains]
        if all(prefixes) and train_val_test_num_samples[1] > 0:
            config = GPTDatasetConfig(
                random_seed=args.seed, sequence_length=args.seq_length,
                blend_per_split=[None, (prefixes, [float(w) for w in self.rt.initial_weights]), None],
                tokenizer=self._tokenizer(args), path_to_cache=args.data_cache_path, **self._gpt_kwargs(args))
            _, valid_ds, _ = BlendedMegatronDatasetBuilder(
                GPTDataset, [0, train_val_test_num_samples[1], 0], self._is_data_rank, config).build()
            if valid_ds is not None:
                # continue where the checkpointed run stopped, as Megatron's own loader does
                consumed = (args.consumed_valid_samples or 0) % len(valid_ds)
                sampler = MegatronPretrainingSampler(
                    total_samples=len(valid_ds), consumed_samples=consumed, micro_batch_size=args.micro_batch_size,
                    data_parallel_rank=mpu.get_data_parallel_rank(),
                    data_parallel_size=mpu.get_data_parallel_world_size())
                loader = torch.utils.data.DataLoader(valid_ds, batch_sampler=sampler, num_workers=args.num_workers,
                                                     pin_memory=True)
                valid = _cyclic(loader)
        elif any(prefixes):
            raise ConfigError("acodm.domains[*].valid_path: give it for every domain or for none")
        return self.train_iter, valid, None

    # -- forward / loss -----------------------------------------------------------------------
    def forward_step(self, data_iterator, model, return_schedule_plan: bool = False):
        """The stock ``forward_step`` with its loss function wrapped."""
        if return_schedule_plan:
            out, loss_fn = self.upstream.forward_step(data_iterator, model, return_schedule_plan=True)
        else:
            out, loss_fn = self.upstream.forward_step(data_iterator, model)
        return out, self.wrap_loss(loss_fn)

    def wrap_loss(self, loss_fn: Callable) -> Callable:
        def acodm_loss(output_tensor, *a, **kw):
            result = loss_fn(output_tensor, *a, **kw)
            if torch.is_grad_enabled() and not kw.get("non_loss_data", False):  # eval runs under no_grad
                if len(result) == 3:
                    loss, num_tokens, _ = result
                    mean = loss.detach().float() / num_tokens.clamp(min=1).float()
                else:  # legacy (loss, report): already a mean
                    mean = result[0].detach().float()
                self.observe_loss(mean)
            return result

        return acodm_loss

    @staticmethod
    def _rerunning_in_place() -> bool:
        """Megatron's rerun state machine replays a step's micro-batches (result validation)."""
        try:
            from megatron.core.rerun_state_machine import RerunState, get_rerun_state_machine
        except ImportError:
            return False
        return get_rerun_state_machine().state == RerunState.RERUNNING_IN_PLACE

    def observe_loss(self, mean_loss: torch.Tensor) -> None:
        if self.micro >= self.rt.grad_accum and self._rerunning_in_place():
            # a replay of this step's micro-batches: the first run's statistics stand (the
            # probe likewise ignores gradients past the step's planned micro-batches)
            return
        if self.micro >= self.rt.grad_accum:
            raise RuntimeError(f"acodm: more than {self.rt.grad_accum} training losses in one step; "
                               f"was the train_step wrapper bypassed?")
        d = self.rt.begin_microbatch(self.micro, grad_scale=self.step_grad_scale)
        self.rt.record_loss(d, mean_loss)
        self.micro += 1

    # -- step boundary ------------------------------------------------------------------------
    def end_step(self, skipped: bool = False) -> dict[str, float]:
        """``skipped``: Megatron's train_step reported ``skipped_iter`` (fp16 overflow)."""
        if self.micro not in (0, self.rt.grad_accum):
            raise RuntimeError(f"acodm: saw {self.micro} training losses in a step of "
                               f"{self.rt.grad_accum} micro-batches")
        metrics = self.rt.end_step(skipped=skipped)
        self.micro = 0
        self._refresh_grad_scale()
        self.last_metrics = metrics
        self._log(self.rt.step, metrics)  # = Megatron's iteration once this step is counted
        return metrics

    def _log(self, iteration: int, metrics: dict[str, float]) -> None:
        if self.rt.step % self.cfg.log_interval:
            return
        if self.rt.is_owner and metrics:
            logger.info("acodm step %d: weights %s", self.rt.step,
                        " ".join(f"{n}={w:.4f}" for n, w in zip(self.cfg.domain_names, self.rt.weights)))
        try:
            from megatron.training.global_vars import get_tensorboard_writer
        except ImportError:  # megatron-core < 0.17 has no megatron.training (unit tests)
            return
        writer = get_tensorboard_writer()  # exists on the last rank only; weights are broadcast
        if writer is not None:
            for n, w in zip(self.cfg.domain_names, self.rt.weights):
                writer.add_scalar(f"acodm/weight/{n}", float(w), iteration)

    def save(self, iteration: int) -> None:
        args = self._args()
        if args.save and self.rt is not None:
            self.rt.save(self.state_path(args.save, iteration))


def install(session: MegatronMixingSession) -> None:
    """Wrap Megatron-LM's module globals ``setup_model_and_optimizer``, ``train_step`` and
    ``save_checkpoint`` (``megatron.training.training``)."""
    from megatron.training import training

    setup_orig, step_orig, save_orig = (training.setup_model_and_optimizer, training.train_step,
                                        training.save_checkpoint)

    def setup_model_and_optimizer(*a, **kw):
        model, optimizer, scheduler = setup_orig(*a, **kw)
        session.setup(model, optimizer)
        return model, optimizer, scheduler

    def train_step(*a, **kw):
        result = step_orig(*a, **kw)
        # train_step returns (loss_dict, skipped_iter, ...): an overflow step updates no mixer
        skipped = isinstance(result, tuple) and len(result) > 1 and isinstance(result[1], (bool, int)) and bool(result[1])
        session.end_step(skipped=skipped)
        return result

    def save_checkpoint(iteration, *a, **kw):
        out = save_orig(iteration, *a, **kw)
        session.save(iteration)
        return out

    training.setup_model_and_optimizer = setup_model_and_optimizer
    training.train_step = train_step
    training.save_checkpoint = save_checkpoint


def main(argv: list[str] | None = None) -> None:
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    try:
        upstream = importlib.import_module("pretrain_gpt")
    except ModuleNotFoundError as e:
        if e.name in ("pretrain_gpt", "model_provider", "gpt_builders"):
            raise SystemExit("neox_acodm.megatron.pretrain_gpt: Megatron-LM's pretrain_gpt.py is not "
                             "importable; put your Megatron-LM checkout (the release matching your "
                             "megatron-core) on PYTHONPATH") from None
        raise
    from megatron.core.enums import ModelType
    from megatron.training import argument_utils, inprocess_restart, pretrain
    from megatron.training.arguments import parse_and_validate_args

    if not hasattr(argument_utils, "pretrain_cfg_container_from_args"):
        raise SystemExit("neox_acodm.megatron.pretrain_gpt supports megatron-core >= 0.19 "
                         "(pretrain() taking a config container)")
    guard_compile_helpers()
    args = parse_and_validate_args(extra_args_provider=add_acodm_args,
                                   args_defaults={"tokenizer_type": "GPT2BPETokenizer",
                                                  "dataloader_type": "external"})
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
    run(full_config, provider, ModelType.encoder_or_decoder, session.forward_step, store=store,
        get_embedding_ranks=getattr(upstream, "get_embedding_ranks", None))


if __name__ == "__main__":
    main()
