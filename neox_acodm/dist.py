"""Every collective the plugin issues. Every rank of a group must call each function (a
rank-0-only branch around one of these hangs the job)."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist


def is_distributed(group=None) -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def group_rank(group=None) -> int:
    return dist.get_rank(group) if dist.is_available() and dist.is_initialized() else 0


def broadcast_weights(weights: np.ndarray | None, num_domains: int, group=None,
                      device: torch.device | str = "cpu") -> np.ndarray:
    """Broadcast the owner's (group rank 0) [K] weights; returns identical float64 on all ranks.

    Non-owners pass ``None``. float64 travels bit-exactly, so every rank plans the same data.
    """
    buf = torch.zeros(num_domains, dtype=torch.float64, device=device)
    if group_rank(group) == 0:
        buf.copy_(torch.as_tensor(np.asarray(weights, dtype=np.float64)))
    if is_distributed(group):
        src = dist.get_global_rank(group, 0) if group is not None else 0
        dist.broadcast(buf, src=src, group=group)
    return buf.cpu().numpy()


def all_reduce_sum(t: torch.Tensor, group=None) -> torch.Tensor:
    """In-place SUM over ``group`` (no-op when not distributed)."""
    if is_distributed(group):
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


def group_size(group) -> int:
    """World size of ``group``; 1 when ``group`` is None or torch.distributed is not running."""
    return dist.get_world_size(group) if group is not None and dist.is_available() and dist.is_initialized() else 1


def sum_over(t: torch.Tensor, group) -> torch.Tensor:
    """In-place SUM over ``group``; a no-op when ``group`` is None (unlike :func:`all_reduce_sum`,
    where None means the world): for optional tensor/pipeline-parallel groups."""
    if group_size(group) > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


def all_stage_keys(local_keys: list[int], pipe_group) -> list[int]:
    """Union over the pipeline stages of each stage's ``local_keys``."""
    gathered: list = [None] * group_size(pipe_group)
    dist.all_gather_object(gathered, local_keys, group=pipe_group)
    return sorted({k for part in gathered for k in part})
