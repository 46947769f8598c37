"""The agent's observation s_t (paper: per-domain loss, its change, sample counts, weight norms
of selected layers and of their updates, training progress).

Layout, dimension 3K + 2L + 1::

    [0,   K)     loss_i             mean LM loss of domain i this step (last seen if absent)
    [K,  2K)     loss_i - prev      change since the *previous* step (D5 fixed)
    [2K, 3K)     n_i / sum_j n_j    cumulative micro-batches per domain (paper: cumulative n)
    [3K, 3K+L)   ||W_l||            Frobenius norms of the norm layers
    [3K+L, 3K+2L) update norm       ||W_l(t) - W_l(t-1)|| or | ||W_l(t)|| - ||W_l(t-1)|| |
    [3K+2L]      t / T              progress in [0, 1] (the reference code used 100 t / T)
    [3K+2L+1, +E) extra             optional (``state.include_reward``): z(rhat), the reward estimate

Each of the first five groups is z-scored across its entries when ``normalize == "zscore"``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .rewards import zscore
from .selectors import Selection


def state_dim(num_domains: int, num_norm_layers: int, extra: int = 0) -> int:
    return 3 * num_domains + 2 * num_norm_layers + 1 + extra


class ParamNorms:
    """Norms of the norm layers and of their last update.

    ``selection`` holds this rank's selected tensors and their places among the norm layers
    of the whole model. Each rank contributes squared norms of what
    it owns; ``reduce`` sums them over tensor/pipeline-parallel groups, so sharded or staged
    models give full norms. Keeps a device copy only in ``exact`` mode.
    """

    def __init__(self, selection: Selection, update_norm: str):
        self.params = selection.params
        self.positions = selection.positions
        self.num_layers = selection.num_layers
        self.update_norm = update_norm
        self._prev_norms: torch.Tensor | None = None
        self._prev_weights: list[torch.Tensor] | None = None

    @torch.no_grad()
    def measure(
        self, reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (norms [L], update_norms [L]) float32 on the CPU (one small transfer per step)."""
        first = self._prev_weights is None
        device = self.params[0].param.device if self.params else torch.device("cpu")
        sq = torch.zeros(2, self.num_layers, dtype=torch.float64, device=device)
        for i, (p, pos) in enumerate(zip(self.params, self.positions)):
            w = p.param.detach()
            # dtype= accumulates in fp32 without materialising an fp32 copy of a bf16 weight
            sq[0, pos] += torch.linalg.vector_norm(w, dtype=torch.float32).double() ** 2
            if self.update_norm == "exact" and not first:
                sq[1, pos] += torch.linalg.vector_norm(w - self._prev_weights[i], dtype=torch.float32).double() ** 2
        if self.update_norm == "exact":
            if first:
                self._prev_weights = [p.param.detach().clone() for p in self.params]
            else:
                for p, q in zip(self.params, self._prev_weights):
                    q.copy_(p.param.detach())
        sq = reduce(sq.cpu())  # the one host transfer of the step's norm features
        norms = sq[0].sqrt()
        if self.update_norm == "exact":
            upd = sq[1].sqrt()
        else:
            upd = torch.zeros_like(norms) if self._prev_norms is None else (norms - self._prev_norms).abs()
            self._prev_norms = norms
        return norms.float(), upd.float()

    def check_state(self, state, path: str) -> None:
        """Raise CheckpointError unless ``state`` fits these norm layers."""
        from .checkpoint import CheckpointError

        if not isinstance(state, dict) or set(state) != {"prev_norms", "prev_weights"}:
            raise CheckpointError(
                f"{path}: norm state must be a mapping of prev_norms and prev_weights, got "
                f"{sorted(state) if isinstance(state, dict) else type(state).__name__}"
            )
        prev = state["prev_norms"]
        if prev is not None and (
            not isinstance(prev, torch.Tensor)
            or not prev.is_floating_point()
            or tuple(prev.shape) != (self.num_layers,)
        ):
            raise CheckpointError(
                f"{path}: norm state is for {getattr(prev, 'shape', prev)} layers, "
                f"this run has {self.num_layers} (acodm.state.norm_params changed?)"
            )
        pw = state["prev_weights"]
        if pw is not None and (
            not isinstance(pw, list)
            or not all(isinstance(w, torch.Tensor) and w.is_floating_point() for w in pw)
            or [tuple(w.shape) for w in pw] != [tuple(p.param.shape) for p in self.params]
        ):
            raise CheckpointError(
                f"{path}: saved norm-layer weight copies do not match this model's "
                f"selected layers (acodm.state.norm_params or the model changed)"
            )

    def state_dict(self) -> dict:
        return {
            "prev_norms": self._prev_norms,
            "prev_weights": [w.cpu() for w in self._prev_weights] if self._prev_weights else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self._prev_norms = state["prev_norms"]
        pw = state.get("prev_weights")
        self._prev_weights = [w.to(p.param.device) for w, p in zip(pw, self.params)] if pw else None


class StateBuilder:
    """Builds s_t from one step's statistics; remembers the previous losses."""

    def __init__(self, num_domains: int, num_norm_layers: int, total_steps: int, normalize: str, extra: int = 0):
        self.k = num_domains
        self.extra = extra
        self.l = num_norm_layers
        self.total_steps = max(1, total_steps)
        self.normalize = normalize
        self.prev_loss: torch.Tensor | None = None
        self.cum_counts = torch.zeros(num_domains, dtype=torch.float64)

    @property
    def dim(self) -> int:
        return state_dim(self.k, self.l, self.extra)

    def build(
        self,
        step: int,
        loss: torch.Tensor,
        counts: torch.Tensor,
        norms: torch.Tensor,
        update_norms: torch.Tensor,
        extra: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """loss: [K] (NaN where the domain drew nothing); counts: [K] this step's micro-batches;
        norms, update_norms: [L]; extra: [E] appended as is. Returns [3K + 2L + 1 + E] float32."""
        loss = loss.to(torch.float32)
        present = torch.isfinite(loss)
        if self.prev_loss is None:
            fill = loss[present].mean() if present.any() else torch.tensor(0.0)
            prev = torch.where(present, loss, fill)
        else:
            prev = self.prev_loss
        cur = torch.where(present, loss, prev)
        delta = cur - prev
        self.prev_loss = cur
        self.cum_counts += counts.to(torch.float64)
        share = (self.cum_counts / self.cum_counts.sum().clamp_min(1)).to(torch.float32)
        groups = [cur, delta, share, norms.to(torch.float32), update_norms.to(torch.float32)]
        if self.normalize == "zscore":
            # z-scoring fewer than 3 entries gives constants (+-0.707 for 2): use log-scale there
            groups = [
                zscore(g) if g.numel() >= 3 or i < 3 else torch.log1p(g.clamp_min(0)) for i, g in enumerate(groups)
            ]
        progress = torch.tensor([min(step / self.total_steps, 1.0)], dtype=torch.float32)
        tail = [] if self.extra == 0 else [torch.zeros(self.extra) if extra is None else extra.float()]
        return torch.cat(groups + [progress] + tail)

    def state_dict(self) -> dict:
        return {"prev_loss": self.prev_loss, "cum_counts": self.cum_counts.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.prev_loss = state["prev_loss"]
        self.cum_counts = state["cum_counts"].clone()
