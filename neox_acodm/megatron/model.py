"""Megatron model views for the mixing runtime.

Megatron names a stage's transformer layers by their *local* index (``decoder.layers.0`` on
every pipeline stage), while the runtime's selectors resolve layer positions over the whole
model. :class:`GlobalLayerView` presents one rank's model chunks with each layer renamed to
its global index (``TransformerLayer.layer_number - 1``) and the wrappers (DDP,
``Float16Module``) stripped from the names.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """Strip Megatron's DDP / Float16Module wrappers (each keeps the model in ``.module``)."""
    while hasattr(module, "module") and isinstance(module.module, torch.nn.Module):
        module = module.module
    return module


class GlobalLayerView:
    """Read-only view of a rank's model chunks: ``named_modules()`` and ``parameters()`` with
    layers named by their global position.

    chunks: the model chunks this rank holds (one, or several under virtual pipelining).
    """

    def __init__(self, chunks: torch.nn.Module | Sequence[torch.nn.Module]):
        if isinstance(chunks, torch.nn.Module):
            chunks = [chunks]
        self.chunks = [_unwrap(c) for c in chunks]
        if not self.chunks:
            raise ValueError("GlobalLayerView needs at least one model chunk")

    @staticmethod
    def _renames(chunk: torch.nn.Module) -> list[tuple[str, str]]:
        """(local prefix, global prefix) for every module that carries ``layer_number``."""
        out = []
        for name, mod in chunk.named_modules():
            number = getattr(mod, "layer_number", None)
            if name and isinstance(number, int) and name.rsplit(".", 1)[-1].isdigit():
                head = name.rsplit(".", 1)[0]
                out.append((name, f"{head}.{number - 1}"))
        return out

    def named_modules(self) -> Iterator[tuple[str, torch.nn.Module]]:
        seen: set[str] = set()
        for chunk in self.chunks:
            renames = self._renames(chunk)
            for name, mod in chunk.named_modules():
                new = name
                for local, glob in renames:
                    if name == local or name.startswith(local + "."):
                        new = glob + name[len(local) :]
                        break
                if new in seen and new:
                    raise ValueError(
                        f"GlobalLayerView: two modules map to {new!r}; the model's "
                        f"layers carry no distinct layer_number"
                    )
                seen.add(new)
                yield new, mod

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        for chunk in self.chunks:
            yield from chunk.parameters()


#: per-module switches of fused weight-gradient accumulation (megatron-core linear layers,
#: Transformer Engine modules), read at every forward
FUSION_ATTRS = ("gradient_accumulation_fusion", "fuse_wgrad_accumulation")


def unfuse_selected(model: GlobalLayerView | torch.nn.Module, params: Sequence[torch.nn.Parameter]) -> list[str]:
    """Turn fused wgrad accumulation off on the modules that own ``params`` only.

    With fusion on, a linear layer's weight gradient is written straight into
    ``weight.main_grad`` by a fused GEMM and no autograd hook sees it; with it off, autograd
    produces ``weight.grad`` (which the tensor hooks capture) and Megatron's DDP adds it to
    ``main_grad``. Every other layer keeps its fused path. Returns the switched modules' names."""
    wanted = {id(p) for p in params}
    switched = []
    for name, mod in model.named_modules():
        if any(id(p) in wanted for p in mod._parameters.values() if p is not None):
            hit = False
            for attr in FUSION_ATTRS:
                if getattr(mod, attr, False):
                    setattr(mod, attr, False)
                    hit = True
            if hit:
                switched.append(name)
    return switched
