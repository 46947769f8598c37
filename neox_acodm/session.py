"""MixingSession: the per-process bookkeeping every framework adapter shares.

An adapter (GPT-NeoX/DeepSpeed, Megatron-LM) subclasses it with only what is framework-specific:
how to read the loss scale, where metrics are written, whether a step is being replayed. The
session counts the step's micro-batches, checks the count at the step boundary, reads the
gradient scale once per step (after the optimizer step, where the loss scale changes), resumes
with one error message, and hands each step's metrics to a :class:`~neox_acodm.metrics.MetricsSink`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch

from .checkpoint import CheckpointError
from .config import ACODMConfig
from .dist import CollectiveTimeout, RemoteFailure
from .metrics import MetricsSink
from .runtime import MixingRuntime

logger = logging.getLogger(__name__)


class MixingSession:
    """``grad_scale()`` -> the factor that turns a hooked gradient into the per-micro-batch mean
    gradient (e.g. ``grad_accum / loss_scale``); called once per step."""

    def __init__(
        self, cfg: ACODMConfig, grad_scale: Callable[[], float] | None = None, sink: MetricsSink | None = None
    ):
        self.cfg = cfg
        self.rt: MixingRuntime | None = None
        self.sink = sink
        self._grad_scale_fn = grad_scale
        self.step_grad_scale = 1.0
        self.micro = 0
        self.domains_seen: list[int] = []  # domains the loss saw this step (for checks/tests)
        self.last_metrics: dict[str, float] = {}

    def attach(self, rt: MixingRuntime) -> None:
        self.rt = rt
        self.refresh_grad_scale()

    def refresh_grad_scale(self) -> None:
        """Read the gradient scale (one host sync) and give it to every stage's probe."""
        if self._grad_scale_fn is not None:
            self.step_grad_scale = float(self._grad_scale_fn())
        self.rt.set_grad_scale(self.step_grad_scale)

    def replaying(self) -> bool:
        """True while the framework replays this step's micro-batches (their statistics stand)."""
        return False

    def observe_loss(self, loss: torch.Tensor, sample_losses: torch.Tensor | None = None) -> None:
        """Micro-batch ``self.micro`` produced ``loss`` (its mean; at sample granularity also
        ``sample_losses``, each sample's mean [b]); its backward comes next."""
        if self.micro >= self.rt.grad_accum:
            if self.replaying():
                return
            raise RuntimeError(
                f"acodm: more than {self.rt.grad_accum} training losses in one step; "
                f"was the train-step wrapper bypassed or end_step() skipped?"
            )
        d = self.rt.begin_microbatch(self.micro, grad_scale=self.step_grad_scale)
        if np.ndim(d):  # mixed micro-batch: per-domain losses from the samples'
            if sample_losses is None or sample_losses.numel() != len(d):
                raise RuntimeError(
                    f"acodm: micro-batch {self.micro} mixes {len(d)} samples' domains; the adapter "
                    f"passed {None if sample_losses is None else sample_losses.numel()} sample losses"
                )
            self.rt.record_loss(d, sample_losses)
        else:
            self.rt.record_loss(d, loss)
        self.domains_seen.append(d)
        self.micro += 1

    def end_step(self, skipped: bool = False) -> dict[str, float]:
        """Close the step (collective over the runtime's groups). ``skipped``: the optimizer did
        not apply it (fp16 overflow)."""
        if self.micro not in (0, self.rt.grad_accum):
            raise RuntimeError(
                f"acodm: saw {self.micro} training losses in a step of "
                f"{self.rt.grad_accum} micro-batches; the loss wrapper missed some"
            )
        metrics = self.rt.end_step(skipped=skipped)
        self.micro = 0
        self.domains_seen = []
        self.refresh_grad_scale()
        self.last_metrics = metrics
        if self.sink is not None:
            self.sink.write(self.rt.step, metrics)
        return metrics

    def resume(self, path: str, expected_step: int, hint: str) -> None:
        """Load the mixer state of ``expected_step`` from ``path``; one clear error otherwise."""
        try:
            self.rt.load(path)
        except (FileNotFoundError, CheckpointError, RemoteFailure, CollectiveTimeout) as e:
            raise RuntimeError(f"acodm: resuming from step {expected_step} needs {path} ({e}); {hint}") from e
        if self.rt.step != expected_step:
            raise RuntimeError(
                f"acodm: mixer state {path} is at step {self.rt.step}, the framework "
                f"resumes at {expected_step}; the checkpoint and its acodm state differ"
            )
        logger.info("acodm: resumed mixer state from %s (step %d)", path, self.rt.step)
        self.refresh_grad_scale()
