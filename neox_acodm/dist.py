"""Every collective the plugin issues. Every rank of a group must call each function (a
rank-0-only branch around one of these hangs the job).

Collectives take ``timeout`` (seconds, None = the process group's own) and a ``what`` label:
a collective that does not complete in time raises :class:`CollectiveTimeout` naming it, so a
rank that died or skipped a call fails the job instead of leaving the others waiting forever.
:func:`agree` turns a failure on *any* rank into the same error on every rank.
"""

from __future__ import annotations

import atexit
import datetime
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


class CollectiveTimeout(RuntimeError):
    """A plugin collective did not complete within ``acodm.collective_timeout_s``."""


class RemoteFailure(RuntimeError):
    """Another rank failed inside a plugin operation; the message is that rank's error."""


#: set when a plugin collective timed out: its work stays queued in the process group, whose
#: teardown at interpreter exit would then block until the group's own timeout (30 min)
_TIMED_OUT = False


def timed_out() -> bool:
    """True once a plugin collective of this process has timed out."""
    return _TIMED_OUT


def _exit_promptly() -> None:
    """Last at-exit step (registered at import, so the writers' own handlers ran before it):
    after a collective timeout, end the process without tearing down the stuck process group."""
    if _TIMED_OUT:
        import os
        import sys

        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(1)


atexit.register(_exit_promptly)


def _timeout(message: str) -> CollectiveTimeout:
    global _TIMED_OUT
    _TIMED_OUT = True
    return CollectiveTimeout(message)


def _wait(work, timeout: float | None, what: str) -> None:
    if timeout is None:
        work.wait()
        return
    try:
        ok = work.wait(timeout=datetime.timedelta(seconds=timeout))
    except RuntimeError as e:
        raise _timeout(
            f"acodm: {what} did not complete within {timeout:g} s "
            f"(acodm.collective_timeout_s): another rank failed or never "
            f"reached it ({str(e).splitlines()[0]})"
        ) from None
    if ok is False:
        raise _timeout(f"acodm: {what} did not complete within {timeout:g} s (acodm.collective_timeout_s)")


def _all_reduce(t: torch.Tensor, group, timeout: float | None, what: str, op=dist.ReduceOp.SUM) -> None:
    _wait(dist.all_reduce(t, op=op, group=group, async_op=True), timeout, what)


def agree(
    error: BaseException | None,
    group=None,
    timeout: float | None = None,
    what: str = "acodm operation",
    device: torch.device | str = "cpu",
) -> None:
    """Collective: raise on every rank of ``group`` if ``error`` is set on any rank.

    The failing rank re-raises its own exception; the others raise :class:`RemoteFailure`
    carrying the highest failing rank's message. Not distributed: re-raises ``error``.
    """
    if not is_distributed(group):
        if error is not None:
            raise error
        return
    me = group_rank(group)
    flag = torch.tensor([me + 1 if error is not None else 0], dtype=torch.int64, device=device)
    _all_reduce(flag, group, timeout, f"{what} (status exchange)", op=dist.ReduceOp.MAX)
    if int(flag.item()) == 0:
        return
    # the highest failing rank's message reaches everyone (every rank is alive: it got here)
    src_rank = int(flag.item()) - 1
    box = [f"{type(error).__name__}: {error}" if error is not None and me == src_rank else None]
    src = dist.get_global_rank(group, src_rank) if group is not None else src_rank
    dist.broadcast_object_list(box, src=src, group=group)
    if error is not None:
        raise error
    raise RemoteFailure(f"acodm: {what} failed on rank {src} of the group: {box[0]}")


def is_distributed(group=None) -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def group_rank(group=None) -> int:
    return dist.get_rank(group) if dist.is_available() and dist.is_initialized() else 0


def broadcast_weights(
    weights: np.ndarray | None,
    num_domains: int,
    group=None,
    device: torch.device | str = "cpu",
    timeout: float | None = None,
    what: str = "weight broadcast",
    failed: bool = False,
) -> np.ndarray:
    """Broadcast the owner's (group rank 0) [K] weights; returns identical float64 on all ranks.

    Non-owners pass ``None``. float64 travels bit-exactly, so every rank plans the same data.
    ``failed`` (owner only): the owner's update raised; every rank raises :class:`RemoteFailure`
    (one extra slot carries the flag, so a failure never leaves the others waiting).
    """
    buf = torch.zeros(num_domains + 1, dtype=torch.float64, device=device)
    owner = group_rank(group) == 0
    if owner:
        if failed:
            buf[-1] = 1.0
        else:
            buf[:-1].copy_(torch.as_tensor(np.asarray(weights, dtype=np.float64)))
    if is_distributed(group):
        src = dist.get_global_rank(group, 0) if group is not None else 0
        _wait(dist.broadcast(buf, src=src, group=group, async_op=True), timeout, what)
    out = buf.cpu().numpy()
    if out[-1] != 0 and not owner:
        raise RemoteFailure(
            f"acodm: {what}: the owner rank failed to update the mixer (its log has the error); stopping every rank"
        )
    return out[:-1]


def all_reduce_sum(t: torch.Tensor, group=None, timeout: float | None = None, what: str = "all-reduce") -> torch.Tensor:
    """In-place SUM over ``group`` (no-op when not distributed)."""
    if is_distributed(group):
        _all_reduce(t, group, timeout, what)
    return t


def group_size(group) -> int:
    """World size of ``group``; 1 when ``group`` is None or torch.distributed is not running."""
    return dist.get_world_size(group) if group is not None and dist.is_available() and dist.is_initialized() else 1


def sum_over(t: torch.Tensor, group, timeout: float | None = None, what: str = "all-reduce") -> torch.Tensor:
    """In-place SUM over ``group``; a no-op when ``group`` is None (unlike :func:`all_reduce_sum`,
    where None means the world): for optional tensor/pipeline-parallel groups."""
    if group_size(group) > 1:
        _all_reduce(t, group, timeout, what)
    return t


def broadcast_object(obj, group=None, timeout: float | None = None, what: str = "broadcast"):
    """The owner's (group rank 0) picklable ``obj`` on every rank (preceded by a timed barrier
    so a missing owner cannot hang the others)."""
    if not is_distributed(group):
        return obj
    ping = torch.zeros(1)
    _all_reduce(ping, group, timeout, what)
    box = [obj if group_rank(group) == 0 else None]
    src = dist.get_global_rank(group, 0) if group is not None else 0
    dist.broadcast_object_list(box, src=src, group=group)
    return box[0]


def all_stage_keys(local_keys: list[int], pipe_group) -> list[int]:
    """Union over the pipeline stages of each stage's ``local_keys``."""
    gathered: list = [None] * group_size(pipe_group)
    dist.all_gather_object(gathered, local_keys, group=pipe_group)
    return sorted({k for part in gathered for k in part})


@dataclass(frozen=True)
class ParallelLayout:
    """Where this rank sits; built once by each adapter from its framework's groups.

    dp_size, dp_rank: data parallelism (each DP rank loads its own micro-batches).
    group: owner election + weight broadcast (None = world); the owner is its rank 0.
    dp_group: sums per-domain losses/gradients over data parallelism (None = world).
    partial_sum_group: tensor parallelism: partial Grams/norms of the shards summed here.
    pipe_group: pipeline parallelism: stages' partial Grams/norms summed here, and losses
        (computed on the last stage) reach every stage (None = no such parallelism).
    comm_device: device of the tensors in these collectives (NCCL needs CUDA).
    """

    dp_size: int = 1
    dp_rank: int = 0
    group: object = None
    dp_group: object = None
    partial_sum_group: object = None
    pipe_group: object = None
    comm_device: str | torch.device = "cpu"

    def __post_init__(self):
        if not 0 <= self.dp_rank < self.dp_size:
            raise ValueError(f"ParallelLayout: dp_rank {self.dp_rank} is outside dp_size {self.dp_size}")
        object.__setattr__(self, "comm_device", torch.device(self.comm_device))

    @property
    def staged(self) -> bool:
        """The model is split into pipeline stages (this rank holds some layers)."""
        return group_size(self.pipe_group) > 1

    @property
    def sharded(self) -> bool:
        """This rank holds part of the model (tensor or pipeline parallelism)."""
        return self.staged or group_size(self.partial_sum_group) > 1

    def sum_partials(self, t: torch.Tensor, timeout: float | None, what: str) -> torch.Tensor:
        """Sum a per-rank partial statistic over the TP shards and the pipeline stages; CPU result."""
        t = t.to(self.comm_device)
        return sum_over(sum_over(t, self.partial_sum_group, timeout, what), self.pipe_group, timeout, what).cpu()

    def all_stages(self):
        """For :func:`selectors.resolve_selection`: the layer-key union over stages, or None."""
        return (lambda keys: all_stage_keys(keys, self.pipe_group)) if self.staged else None
