"""Reward kernels: per-domain gradient accumulation, count-sketch and Gram matrix.

The pure-torch functions here are the *specification* (fp32 accumulation); the compiled
extension ``neox_acodm._C`` (``csrc/``) implements the same contracts in one pass over memory.
:func:`get_ops` picks the backend (``auto|ext|torch``, config or ``NEOX_ACODM_OPS``), logs once
which one runs and why, and raises with rebuild instructions when the extension is requested
or present-but-broken, never silently falling back.

Count-sketch hash (shared bit-for-bit with ``csrc/``; identical on every rank so sketches can
be all-reduced). The sketch width k is a multiple of 8. Global element index ``j`` (parameter
offset + position, < 2**32) lies in block ``b = j >> 3`` at lane ``l = j & 7``::

    s      = seed * 0x9E3779B9 mod 2**32
    hb     = mix32(b ^ (s + 0x632BE5AB))                 # bucket group and lane rotation
    hs     = mix32(b ^ (s + 0x2545F491))                 # 8 sign bits, one per lane
    bucket = 8 * (((hb & 0x7FFFFFFF) * (k / 8)) >> 31) + ((l + (hb & 7)) & 7)
    sign   = -1 if (hs >> l) & 1 else +1

Elements of one block never collide; elements of different blocks collide with probability
(8/k)(1/8) = 1/k, as in a plain count-sketch. Every element has its own sign bit, so inner
products stay unbiased with Var <= 2 |a|^2 |b|^2 / k. The block layout lets the CPU kernel
handle 8 lanes with two scalar hashes, a lane rotation and one vector add.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

ABI_VERSION = 4  # bump together with csrc/bindings.cpp NEOX_ACODM_ABI_VERSION
_M32 = 0xFFFFFFFF
_CHUNK = 1 << 22

REBUILD_HINT = (
    "rebuild it with `pip install --no-build-isolation -e .` from the neox_acodm checkout "
    "(set NEOX_ACODM_FORCE_CUDA=1 to force the CUDA kernels), or select the pure-torch "
    "backend with NEOX_ACODM_OPS=torch / `acodm.reward.backend: torch`"
)


def _check_buffer(name: str, t: torch.Tensor) -> None:
    if t.dim() != 2 or t.dtype != torch.float32:
        raise ValueError(f"{name}: expected a [D, P] float32 tensor, got {tuple(t.shape)} {t.dtype}")
    if not t.is_contiguous():
        raise ValueError(f"{name}: must be contiguous")


def _check_grad(name: str, g: torch.Tensor, buf: torch.Tensor, offset: int, domain: int) -> torch.Tensor:
    if g.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"{name}: dtype must be float32, bfloat16 or float16, got {g.dtype}")
    if not g.is_contiguous():
        raise ValueError(f"{name}: must be contiguous (got strides {g.stride()})")
    if g.device != buf.device:
        raise ValueError(f"{name}: on {g.device} but the buffer is on {buf.device}")
    if not 0 <= domain < buf.shape[0]:
        raise ValueError(f"domain: {domain} out of range [0, {buf.shape[0]})")
    return g.reshape(-1)


# ------------------------------------------------------------------------------------------
# torch reference
# ------------------------------------------------------------------------------------------


def accumulate_domain_grad_torch(
    buffer: torch.Tensor, grad: torch.Tensor, domain: int, offset: int = 0, alpha: float = 1.0
) -> None:
    """``buffer[domain, offset:offset+n] += alpha * grad`` in fp32.

    buffer: [D, P] float32; grad: [n] (any shape, contiguous) float32/bfloat16/float16.
    """
    _check_buffer("buffer", buffer)
    g = _check_grad("grad", grad, buffer, offset, domain)
    if offset < 0 or offset + g.numel() > buffer.shape[1]:
        raise ValueError(f"offset: [{offset}, {offset + g.numel()}) exceeds P={buffer.shape[1]}")
    buffer[domain, offset : offset + g.numel()].add_(g.to(torch.float32), alpha=alpha)


def domain_gram_torch(buffer: torch.Tensor) -> torch.Tensor:
    """[D, D] float32 Gram ``buffer @ buffer.T`` of a [D, P] float32 buffer."""
    _check_buffer("buffer", buffer)
    return buffer @ buffer.T


def _mix32(x: torch.Tensor) -> torch.Tensor:
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    return (x >> 16) ^ x


def sketch_hash(index: torch.Tensor, seed: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bucket [n] int64 in [0, k) and sign [n] float32 (+-1) of global element indices."""
    if k % 8:
        raise ValueError(f"sketch: width k={k} must be a multiple of 8")
    s = (seed * 0x9E3779B9) & _M32
    j = index & _M32
    hb = _mix32((j >> 3) ^ ((s + 0x632BE5AB) & _M32))
    hs = _mix32((j >> 3) ^ ((s + 0x2545F491) & _M32))
    bucket = 8 * (((hb & 0x7FFFFFFF) * (k // 8)) >> 31) + (((j & 7) + (hb & 7)) & 7)
    sign = 1.0 - 2.0 * ((hs >> (j & 7)) & 1).to(torch.float32)
    return bucket, sign


def sketch_accumulate_torch(
    sketch: torch.Tensor, grad: torch.Tensor, domain: int, seed: int, offset: int = 0, alpha: float = 1.0
) -> None:
    """Count-sketch ``sketch[domain, bucket(j)] += alpha * sign(j) * grad[j - offset]``.

    sketch: [D, k] float32; grad: [n] float32/bfloat16/float16; ``offset`` is the global index
    of ``grad[0]`` (so several tensors share one sketch without colliding).
    """
    _check_buffer("sketch", sketch)
    g = _check_grad("grad", grad, sketch, offset, domain)
    k = sketch.shape[1]
    row = sketch[domain]
    for lo in range(0, g.numel(), _CHUNK):
        part = g[lo : lo + _CHUNK].to(torch.float32)
        idx = torch.arange(offset + lo, offset + lo + part.numel(), device=g.device, dtype=torch.int64)
        bucket, sign = sketch_hash(idx, seed, k)
        row.index_add_(0, bucket, part * sign, alpha=alpha)


# ------------------------------------------------------------------------------------------
# dispatch
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ops:
    """The active backend's three functions."""

    name: str
    accumulate: Callable[..., None]
    gram: Callable[[torch.Tensor], torch.Tensor]
    sketch: Callable[..., None]


TORCH_OPS = Ops("torch", accumulate_domain_grad_torch, domain_gram_torch, sketch_accumulate_torch)

_ext = None
_ext_error: BaseException | None = None
_ext_loaded = False
_logged: set[str] = set()


def load_extension():
    """Import ``neox_acodm._C`` once. Returns the module or None (not built).

    Raises RuntimeError if the extension exists but cannot be used (broken build, stale ABI).
    """
    global _ext, _ext_error, _ext_loaded
    if not _ext_loaded:
        _ext_loaded = True
        if os.environ.get("NEOX_ACODM_SKIP_EXT") == "1":
            _ext_error = ImportError("NEOX_ACODM_SKIP_EXT=1")
        else:
            try:
                _ext = importlib.import_module("neox_acodm._C")
            except ModuleNotFoundError as e:
                if e.name != "neox_acodm._C":  # the module exists but needs something missing
                    _ext_error = RuntimeError(f"neox_acodm._C fails to import: {e}; {REBUILD_HINT}")
                else:
                    _ext_error = e
            except ImportError as e:  # present but broken (undefined symbol, wrong torch)
                _ext_error = RuntimeError(f"neox_acodm._C is installed but fails to import: {e}; {REBUILD_HINT}")
            if _ext is not None and getattr(_ext, "abi_version", lambda: -1)() != ABI_VERSION:
                _ext_error = RuntimeError(
                    f"neox_acodm._C has ABI {_ext.abi_version()}, Python expects {ABI_VERSION} "
                    f"(stale build); {REBUILD_HINT}"
                )
                _ext = None
    if isinstance(_ext_error, RuntimeError):
        raise _ext_error
    return _ext


def extension_status() -> str:
    """One line: which extension features are built."""
    try:
        ext = load_extension()
    except RuntimeError as e:
        return f"broken: {e}"
    if ext is None:
        return f"not built ({_ext_error})"
    return f"built (cpu{', cuda' if ext.has_cuda() else ''}, openmp threads={ext.num_threads()})"


def _log_once(msg: str) -> None:
    if msg not in _logged:
        _logged.add(msg)
        logger.info(msg)


def get_ops(backend: str = "auto", device: torch.device | str = "cpu") -> Ops:
    """Resolve the backend for tensors on ``device``. ``NEOX_ACODM_OPS`` overrides ``backend``."""
    backend = os.environ.get("NEOX_ACODM_OPS", backend)
    if backend not in ("auto", "ext", "torch"):
        raise ValueError(f"NEOX_ACODM_OPS / acodm.reward.backend: {backend!r} is not one of auto, ext, torch")
    dev = torch.device(device)
    if backend == "torch":
        _log_once("neox_acodm reward ops: torch backend (requested)")
        return TORCH_OPS
    ext = load_extension()  # raises if broken
    if ext is None:
        if backend == "ext":
            raise RuntimeError(
                f"acodm.reward.backend=ext but neox_acodm._C is not built ({_ext_error}); {REBUILD_HINT}"
            )
        _log_once(f"neox_acodm reward ops: torch backend (extension not built: {_ext_error})")
        return TORCH_OPS
    if dev.type == "cuda" and not ext.has_cuda():
        if backend == "ext":
            raise RuntimeError(f"acodm.reward.backend=ext but neox_acodm._C was built without CUDA; {REBUILD_HINT}")
        _log_once("neox_acodm reward ops: torch backend on cuda (extension built without CUDA)")
        return TORCH_OPS
    if dev.type not in ("cpu", "cuda"):
        if backend == "ext":
            raise RuntimeError(f"the extension supports cpu and cuda, not {dev.type}")
        return TORCH_OPS
    _log_once(f"neox_acodm reward ops: extension backend on {dev.type} ({backend})")
    return Ops("ext", ext.accumulate_domain_grad, ext.domain_gram, ext.sketch_accumulate)
