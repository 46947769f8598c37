"""Joining ``torch.distributed`` under GPT-NeoX (part of the ``neox_training`` seam).

``deepspeed.init_distributed`` (called by NeoX's ``initialize_megatron``) waits for every rank
of the job to join. A rank that dies before joining (a node whose environment lacks the
plugin's start-up hook rejects the ``acodm`` key in NeoX's own argument parser) would leave the
others waiting for the full process-group timeout with torch's bare "waiting for clients". The
patch bounds the *join* by ``acodm.collective_timeout_s`` (the process group's own timeout is
restored right after, so NeoX's collectives keep theirs) and turns a join timeout into one error
that names the likely cause and the fix.
"""

import datetime
import logging

logger = logging.getLogger("neox_acodm.patches.neox_dist")

#: init_distributed's leading parameters, up to the `timeout` keyword the wrapper sets
INIT_PARAMS = ("dist_backend", "auto_mpi_discovery", "distributed_port", "verbose", "timeout")


def join_error(seconds: float, error: BaseException) -> RuntimeError:
    """The message a rank raises when the job's ranks did not all join in time."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return RuntimeError(
        f"acodm: not every rank of the job joined torch.distributed within {seconds:g} s "
        f"(acodm.collective_timeout_s): a rank exited before joining ({first}). Read the other "
        f"nodes' logs: `unexpected keyword argument 'acodm'` there means neox_acodm's start-up hook "
        f"is missing in that node's environment; run `neox-acodm install-hook` in it (and unset "
        f"NEOX_ACODM_DISABLE)"
    )


def wrap_init_distributed(timeout_s: float):
    """``Patch`` wrapper factory for ``deepspeed:init_distributed``."""

    def make(original):
        import inspect

        default = inspect.signature(original).parameters["timeout"].default

        def init_distributed(*args, **kwargs):
            import torch.distributed as dist
            from torch.distributed import distributed_c10d as c10d

            if dist.is_initialized():
                return original(*args, **kwargs)
            full = kwargs.get("timeout") or default
            join = datetime.timedelta(seconds=min(timeout_s, full.total_seconds()))
            restore = join < full and hasattr(c10d, "_set_pg_timeout")
            if restore:
                kwargs["timeout"] = join
            try:
                out = original(*args, **kwargs)
            except RuntimeError as e:  # DistStoreError / store barrier: "Timed out ..."
                if "timed out" in str(e).lower() or "timeout" in str(e).lower():
                    raise join_error(join.total_seconds(), e) from e
                raise
            if restore:  # the process group's and its store's own timeout for the rest of the job
                c10d._set_pg_timeout(full, None)
                try:
                    c10d._get_default_store().set_timeout(full)
                except (AttributeError, RuntimeError, ValueError) as e:
                    logger.warning(
                        "acodm: could not restore the store timeout (%s); later store waits are bounded by %g s",
                        e,
                        join.total_seconds(),
                    )
            return out

        init_distributed.__wrapped__ = original
        return init_distributed

    return make


_EXIT_REGISTERED = False


def _destroy_process_group() -> None:
    try:
        import torch.distributed as dist

        from neox_acodm.dist import timed_out

        if timed_out():  # a stuck collective: the process ends without tearing the group down
            return
        # gloo only: NCCL communicators with work in flight may block at shutdown
        if dist.is_available() and dist.is_initialized() and dist.get_backend() == "gloo":
            dist.destroy_process_group()
    except Exception as e:  # noqa: BLE001 - exiting anyway; never turn a clean exit into a failure
        logger.debug("acodm: destroy_process_group at exit failed: %s", e)


def register_clean_exit() -> None:
    """Destroy the default process group when the interpreter exits (atexit, before module
    teardown). Left to interpreter shutdown, gloo's process group can be torn down while its
    threads are still joinable, and the rank aborts after a finished run with ``terminate called
    without an active exception`` (signal 6). Destruction is local: no collective at exit. Only
    gloo groups are destroyed (the abort is gloo's; NCCL keeps its own shutdown)."""
    global _EXIT_REGISTERED
    if not _EXIT_REGISTERED:
        import atexit

        atexit.register(_destroy_process_group)
        _EXIT_REGISTERED = True
