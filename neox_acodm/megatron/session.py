"""MegatronMixingSession: the Megatron-LM adapter of :class:`~neox_acodm.session.MixingSession`
(per-domain datasets, Megatron's loss function and loss scale, its rerun state machine, its
TensorBoard writer on the last rank). The entry point that installs it is ``pretrain_gpt``."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterator

import torch

from ..config import ACODMConfig, ConfigError
from ..dist import ParallelLayout
from ..metrics import MetricsSink
from ..probe import GradientProbe
from ..runtime import MixingRuntime
from ..session import MixingSession
from .data import DynamicBlendedDataset, DynamicBlendedIterator, build_domain_datasets
from .model import GlobalLayerView, unfuse_selected
from .validation import DomainIterators, DomainValidation, check_validation_args

logger = logging.getLogger(__name__)


def _cyclic(loader) -> Iterator:
    while True:
        yield from loader


def _tensorboard_writer():
    """Megatron's TensorBoard writer as ``write(tag, value, step)`` (it exists on the last rank only)."""
    try:
        from megatron.training.global_vars import get_tensorboard_writer
    except ImportError:  # megatron-core < 0.17 has no megatron.training (unit tests)
        return None
    writer = get_tensorboard_writer()
    return None if writer is None else writer.add_scalar


def megatron_layout() -> ParallelLayout:
    """The layout of this rank from megatron-core's ``parallel_state`` (owner: global rank 0)."""
    from megatron.core import mpu

    tp, pp = mpu.get_tensor_model_parallel_world_size(), mpu.get_pipeline_model_parallel_world_size()
    return ParallelLayout(
        dp_size=mpu.get_data_parallel_world_size(),
        dp_rank=mpu.get_data_parallel_rank(),
        dp_group=mpu.get_data_parallel_group(),
        partial_sum_group=mpu.get_tensor_model_parallel_group() if tp > 1 else None,
        pipe_group=mpu.get_pipeline_model_parallel_group() if pp > 1 else None,
        comm_device=torch.device("cuda", torch.cuda.current_device()),
    )


class MegatronMixingSession(MixingSession):
    """Per-process glue between Megatron-LM's training loop and :class:`MixingRuntime`.

    Metrics live on global rank 0 and Megatron's writer on the last rank: the sink broadcasts
    each logged step's scalars, so Megatron logs the same ``acodm/*`` curves NeoX does."""

    def __init__(self, cfg: ACODMConfig, upstream):
        super().__init__(cfg, grad_scale=self._grad_scale)
        self.upstream = upstream  # Megatron-LM's pretrain_gpt module
        self.train_iter: DynamicBlendedIterator | None = None
        self.optimizer = None
        self.validation = DomainValidation(list(cfg.domain_names), _tensorboard_writer)

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
        return dict(
            reset_position_ids=args.reset_position_ids,
            reset_attention_mask=args.reset_attention_mask,
            eod_mask_loss=args.eod_mask_loss,
            mmap_bin_files=args.mmap_bin_files,
            create_attention_mask=args.create_attention_mask_in_dataloader,
        )

    def state_path(self, root: str, iteration: int) -> str:
        return os.path.join(root, "acodm", f"iter_{iteration:07d}.pt")

    # -- setup (after Megatron built the model and loaded the checkpoint) --------------------
    def setup(self, model_chunks, optimizer) -> None:
        from megatron.core.num_microbatches_calculator import get_num_microbatches

        args = self._args()
        datasets = build_domain_datasets(
            self.cfg,
            seq_len=args.seq_length,
            seed=args.seed,
            tokenizer=self._tokenizer(args),
            split="train",
            is_built_on_rank=self._is_data_rank,
            path_to_cache=args.data_cache_path,
            **self._gpt_kwargs(args),
        )
        blended = DynamicBlendedDataset(datasets) if datasets is not None else None
        view = GlobalLayerView(model_chunks)
        self.rt = MixingRuntime(
            self.cfg,
            layout=megatron_layout(),
            dataset_sizes=blended.sizes if blended is not None else None,
            grad_accum=get_num_microbatches(),
            micro_batch=args.micro_batch_size,
            total_steps=args.train_iters,
            model=view,
            batch_dim=1,  # megatron-core's transformer layers run on [s, b, h]
        )
        if isinstance(self.rt.probe, GradientProbe) and args.gradient_accumulation_fusion:
            names = unfuse_selected(view, [p.param for p in self.rt.probe.params])
            logger.info(
                "acodm: fused wgrad accumulation stays on except for the %d observed modules: %s", len(names), names
            )
        self.optimizer = optimizer
        self.sink = MetricsSink(
            _tensorboard_writer,
            self.cfg.log_interval,
            route="broadcast",
            group=self.rt.layout.group,
            is_owner=self.rt.is_owner,
            timeout=self.rt.timeout,
        )
        self.attach(self.rt)
        if args.load and args.iteration > 0:
            self.resume(
                self.state_path(args.load, args.iteration),
                args.iteration,
                "was the checkpoint written by neox_acodm.megatron.pretrain_gpt? Start a new "
                "run or copy the matching acodm state there",
            )
        elif self.rt.step != args.iteration:
            raise RuntimeError(f"acodm: mixer step {self.rt.step} != Megatron iteration {args.iteration}")
        if blended is not None:
            self.train_iter = DynamicBlendedIterator(blended, self.rt)

    def _grad_scale(self) -> float:
        """``num_microbatches / loss_scale``: the schedule divides each micro-batch loss by the
        number of micro-batches and the optimizer multiplies it by its loss scale."""
        scale = self.optimizer.get_loss_scale() if self.optimizer is not None else 1.0
        return float(self.rt.grad_accum) / float(scale)

    # -- data ---------------------------------------------------------------------------------
    def datasets_provider(self, train_val_test_num_samples, vp_stage=None):
        """Megatron's dataset provider (``--dataloader-type external``): ready iterators. With
        every domain's ``valid_path``: one validation stream per domain, evaluated as Megatron's
        multiple validation sets named after the domains (see :mod:`.validation`)."""
        args = self._args()
        valid = None
        prefixes = [d.valid_path for d in self.cfg.domains]
        if all(prefixes) and train_val_test_num_samples[1] > 0:
            check_validation_args(args, list(self.cfg.domain_names))
            # Megatron counts every set's samples in one consumed_valid_samples: each domain's
            # stream read an equal share of it (the same eval_iters per set)
            consumed = (args.consumed_valid_samples or 0) // len(prefixes)
            valid = DomainIterators(
                [self._valid_iterator(args, p, train_val_test_num_samples[1], consumed) for p in prefixes]
            )
        elif any(prefixes):
            raise ConfigError("acodm.domains[*].valid_path: give it for every domain or for none")
        return self.train_iter, valid, None

    def _valid_iterator(self, args, prefix: str, num_samples: int, consumed: int):
        """Endless iterator over one domain's validation data ``prefix`` (None off data ranks),
        resuming after ``consumed`` samples, as Megatron's own loader does."""
        from megatron.core import mpu
        from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
        from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
        from megatron.training.datasets.data_samplers import MegatronPretrainingSampler

        config = GPTDatasetConfig(
            random_seed=args.seed,
            sequence_length=args.seq_length,
            blend_per_split=[None, ([prefix], [1.0]), None],
            tokenizer=self._tokenizer(args),
            path_to_cache=args.data_cache_path,
            **self._gpt_kwargs(args),
        )
        _, valid_ds, _ = BlendedMegatronDatasetBuilder(
            GPTDataset, [0, num_samples, 0], self._is_data_rank, config
        ).build()
        if valid_ds is None:
            return None
        sampler = MegatronPretrainingSampler(
            total_samples=len(valid_ds),
            consumed_samples=consumed % len(valid_ds),
            micro_batch_size=args.micro_batch_size,
            data_parallel_rank=mpu.get_data_parallel_rank(),
            data_parallel_size=mpu.get_data_parallel_world_size(),
        )
        return _cyclic(
            torch.utils.data.DataLoader(valid_ds, batch_sampler=sampler, num_workers=args.num_workers, pin_memory=True)
        )

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
                self.observe_loss(mean, self._sample_losses(loss_fn, output_tensor))
            return result

        return acodm_loss

    def _sample_losses(self, loss_fn: Callable, output_tensor: torch.Tensor) -> torch.Tensor | None:
        """[b] each sample's mean loss (sample granularity only): Megatron's per-token losses
        [b, s] under the loss mask that the stock ``forward_step`` binds into its loss function."""
        if not self.rt.data.per_sample:
            return None
        mask = loss_fn.args[0] if isinstance(loss_fn, functools.partial) and loss_fn.args else None
        if not isinstance(mask, torch.Tensor):
            raise RuntimeError(
                "acodm: sampling.granularity 'sample' reads the loss mask bound into pretrain_gpt's "
                "loss function (functools.partial(loss_func, loss_mask)); this Megatron-LM binds none"
            )
        tok = output_tensor.detach().float().reshape(mask.shape[0], -1)
        mask = mask.reshape(mask.shape[0], -1).float()
        return (tok * mask).sum(1) / mask.sum(1).clamp_min(1)

    def replaying(self) -> bool:
        """Megatron's rerun state machine replays a step's micro-batches (result validation);
        the first run's statistics stand (the probe likewise ignores the extra gradients)."""
        try:
            from megatron.core.rerun_state_machine import RerunState, get_rerun_state_machine
        except ImportError:
            return False
        return get_rerun_state_machine().state == RerunState.RERUNNING_IN_PLACE

    def end_step(self, skipped: bool = False) -> dict[str, float]:
        """``skipped``: Megatron's train_step reported ``skipped_iter`` (fp16 overflow)."""
        metrics = super().end_step(skipped=skipped)
        if self.rt.is_owner and metrics and self.rt.step % self.cfg.log_interval == 0:
            logger.info(
                "acodm step %d: weights %s",
                self.rt.step,
                " ".join(f"{n}={w:.4f}" for n, w in zip(self.cfg.domain_names, self.rt.weights)),
            )
        return metrics

    def save(self, iteration: int) -> None:
        args = self._args()
        if args.save and self.rt is not None:
            self.rt.save(self.state_path(args.save, iteration))
