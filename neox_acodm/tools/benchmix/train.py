"""Single-machine training loop of ``bench-mix`` and the demo: a Pythia-architecture model (Hugging Face
``GPTNeoXForCausalLM``) trained on CPU, its data chosen by :class:`MixingRuntime` (the same
plan, gradient probe and mixers the NeoX/Megatron adapters drive)."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from neox_acodm.config import ACODMConfig
from neox_acodm.runtime import MixingRuntime

from ..model import ModelSpec
from .tokens import DomainData

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSpec:
    steps: int
    micro_batch: int
    grad_accum: int
    lr: float
    warmup: int
    eval_steps: tuple[int, ...]  # steps after which the full validation sets are evaluated
    seed: int


def _sample_losses(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Each sample's mean token cross-entropy: x [b, T + 1] -> [b]."""
    logits = model(input_ids=x[:, :-1]).logits
    tok = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="none"
    )
    return tok.view(x.shape[0], -1).mean(1)


def _windows(train: list[DomainData], d, idx: np.ndarray) -> torch.Tensor:
    """A micro-batch's windows: one domain ``d`` (int), or one per sample (``d``: [b] domains)."""
    if np.ndim(d) == 0:
        return train[d].windows(idx)
    return torch.cat([train[int(di)].windows(np.array([i])) for di, i in zip(d, idx)])


@torch.no_grad()
def evaluate(model: torch.nn.Module, valid: list[DomainData], batch: int = 32) -> dict[str, float]:
    """Per-domain mean token cross-entropy over *every* window of each validation set."""
    model.eval()
    out = {}
    for d in valid:
        idx = np.arange(len(d))
        total = 0.0
        for lo in range(0, len(idx), batch):
            x = d.windows(idx[lo : lo + batch])
            total += float(_sample_losses(model, x).sum())  # equal-length windows: the token mean
        out[d.name] = total / max(1, len(idx))
    model.train()
    return out


def train_run(
    name: str,
    cfg: ACODMConfig,
    model_spec: ModelSpec,
    spec: TrainSpec,
    train: list[DomainData],
    valid: list[DomainData],
    progress=None,
) -> dict:
    """Train one mixer from the seed's init and data order; returns its curves and timings.

    Within a seed every mixer starts from the same weights (``ModelSpec.build(seed)``) and reads
    each domain's stream in the same order (cursors seeded by ``cfg.seed``).
    """
    model = model_spec.build(spec.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.95), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / max(1, spec.warmup))
            * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / spec.steps))))
        ),
    )
    rt = MixingRuntime(
        cfg,
        dataset_sizes=[len(d) for d in train],
        grad_accum=spec.grad_accum,
        micro_batch=spec.micro_batch,
        total_steps=spec.steps,
        model=model,
        token_counts=[len(d.tokens) for d in train],
    )
    eval_steps = set(spec.eval_steps) | {spec.steps}
    val_curve = [{"step": 0, "loss": evaluate(model, valid)}]
    weights_curve = [rt.weights.tolist()]
    rewards_curve, train_loss = [], []
    train_time = 0.0
    for step in range(spec.steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        step_loss = torch.zeros(())
        for g, (d, idx) in enumerate(rt.micro_batches()):
            rt.begin_microbatch(g, grad_scale=float(spec.grad_accum))
            losses = _sample_losses(model, _windows(train, d, idx))
            loss = losses.mean()
            (loss / spec.grad_accum).backward()
            rt.record_loss(d, loss if np.ndim(d) == 0 else losses)
            step_loss += loss.detach() / spec.grad_accum
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        metrics = rt.end_step()
        train_time += time.perf_counter() - t0
        train_loss.append(float(step_loss))
        weights_curve.append(rt.weights.tolist())
        if rt.mixer is not None and rt.mixer.last_reward is not None:
            rewards_curve.append([float(x) for x in rt.mixer.last_reward])
        if step + 1 in eval_steps:
            val_curve.append({"step": step + 1, "loss": evaluate(model, valid)})
        if progress is not None:
            progress.update(1)
            progress.set_postfix_str(f"{name} loss {train_loss[-1]:.2f}", refresh=False)
    reward_time = sum(rt.timings.values())
    result = {
        "val_curve": val_curve,
        "weights_curve": weights_curve,
        "rewards_curve": rewards_curve,
        "train_loss": train_loss,
        "train_seconds": train_time,
        "reward_seconds": reward_time,
        "reward_time_share": reward_time / train_time if train_time > 0 else 0.0,
        "timings": dict(rt.timings),
        "skipped_steps": rt.skipped_steps,
        "agent_updates": getattr(getattr(rt.mixer, "agent", None), "num_updates", 0),
        "last_metrics": {k: v for k, v in metrics.items() if not k.startswith(("weight/", "loss/", "reward/"))},
    }
    rt.export_policy()
    rt.close()
    return result
