"""From the per-domain gradient Gram matrix to AC-ODM rewards (pure tensor functions).

``gram[i, j] = <g_i, g_j>`` where ``g_i`` is domain i's mean gradient over the selected
tensors in this step (zero row for a domain that drew no micro-batch).
"""

from __future__ import annotations

import torch

_EPS = 1e-12


def alignment(gram: torch.Tensor) -> torch.Tensor:
    """W_i = sum_{j != i} gram[i, j] (off-diagonal row sums). gram: [K, K] -> [K]."""
    return gram.sum(dim=1) - gram.diagonal()


def zscore(x: torch.Tensor, clamp: float = 3.0) -> torch.Tensor:
    """(x - mean) / (unbiased std + 1e-8), clamped to +-clamp; zeros for a single entry."""
    if x.numel() < 2:
        return torch.zeros_like(x)
    return ((x - x.mean()) / (x.std(unbiased=True) + 1e-8)).clamp(-clamp, clamp)


def paper_alignment(gram: torch.Tensor, present: torch.Tensor, clip: float) -> torch.Tensor:
    """Scale-free alignment W_i / mean_{j present} ||g_j||^2, clipped to [-clip, clip].

    Dividing by the mean *squared* norm makes the value independent of the loss scale and of
    1/grad_accum (the reference code divides by the mean norm, so its clip depended on the fp16
    loss scale, defect D9). gram: [K, K]; present: [K] bool -> [K] float32 (0 where absent).
    """
    gram = gram.to(torch.float32)
    w = alignment(gram)
    sq = gram.diagonal()[present]
    scale = sq.mean() if sq.numel() else torch.tensor(0.0)
    w = w / (scale + _EPS)
    return torch.where(present, w.clamp(-clip, clip), torch.zeros_like(w))


def reference_reward(gram: torch.Tensor, clip: float, present: torch.Tensor | None = None) -> torch.Tensor:
    """The reference code's vector reward: z(clip(W / (mean ||g|| + 1e-6))). [K, K] -> [K].

    ``present`` [K] bool: only the domains that drew data are z-scored (and enter the mean
    norm); absent domains get 0 (the reference code z-scored their all-zero rows too)."""
    gram = gram.to(torch.float32)
    if present is None:
        present = torch.ones(gram.shape[0], dtype=torch.bool)
    present = torch.as_tensor(present, dtype=torch.bool)
    w = alignment(gram)
    norms = gram.diagonal().clamp_min(0).sqrt()[present]
    scale = norms.mean() if norms.numel() else torch.tensor(0.0)
    out = torch.zeros_like(w)
    out[present] = zscore((w[present] / (scale + 1e-6)).clamp(-clip, clip))
    return out


class RewardEMA:
    """The paper's importance-corrected EMA: r_i <- xi r_i + (1 - xi) W_i / p_i (present i only)."""

    def __init__(self, num_domains: int, xi: float, importance_correction: bool, clip: float):
        self.xi = xi
        self.importance_correction = importance_correction
        self.clip = clip
        self.value = torch.zeros(num_domains, dtype=torch.float32)
        self.initialized = torch.zeros(num_domains, dtype=torch.bool)

    def update(self, w: torch.Tensor, probs: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """w, probs: [K] float; present: [K] bool. Returns the new estimate [K]."""
        x = w.to(torch.float32)
        if self.importance_correction:
            x = x / probs.to(torch.float32).clamp_min(1e-6)
        x = x.clamp(-self.clip, self.clip)
        first = present & ~self.initialized
        blended = self.xi * self.value + (1 - self.xi) * x
        new = torch.where(first, x, torch.where(present, blended, self.value))
        self.value = new
        self.initialized = self.initialized | present
        return new.clone()

    def state_dict(self) -> dict:
        return {"value": self.value.clone(), "initialized": self.initialized.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"].clone().to(torch.float32)
        self.initialized = state["initialized"].clone().to(torch.bool)


class GramEstimate:
    """Unbiased running estimate of the scale-free Gram of per-domain gradients (``aligned``).

    Each step's entry G_ij (normalised by the mean squared norm of the present domains, so the
    loss scale and grad-accum cancel) is observed only when both domains drew data. The update
    runs *every* step with the Horvitz-Thompson term ``1[observed_ij] G_ij / P(observed_ij)``
    (inclusion probabilities from the plan; P = pi_i pi_j off the diagonal), so
    ``E[x_ij] = G_ij`` whatever the action, and ``Ghat <- xi Ghat + (1 - xi) x`` is unbiased for a
    stationary G. The diagonal is ``self_term``: ``lagged`` uses <g_i(t), g_i(t-1)> (two
    independent samples, so no sampling-noise bias), ``raw`` ||g_i(t)||^2, ``drop`` 0.

    ``reward()`` = Ghat c with c = metric weights / sum: the first-order decrease of the
    metric loss per unit step on each domain. Shapes: [K, K] Gram, [K] masks/probabilities.
    """

    def __init__(self, num_domains: int, xi: float, self_term: str, metric_weights, clip: float):
        self.k = num_domains
        self.xi = xi
        self.self_term = self_term
        self.clip = clip
        c = torch.as_tensor(metric_weights, dtype=torch.float64).reshape(-1)
        if c.numel() != num_domains or float(c.sum()) <= 0:
            raise ValueError(
                f"metric weights must be {num_domains} non-negative numbers with a positive sum, got {c.tolist()}"
            )
        self.c = c / c.sum()
        self.value = torch.zeros(num_domains, num_domains, dtype=torch.float64)
        self.steps = 0
        self._prev_present: torch.Tensor | None = None
        self._prev_incl: torch.Tensor | None = None

    def update(
        self, gram: torch.Tensor, present: torch.Tensor, inclusion: torch.Tensor, lagged: torch.Tensor | None = None
    ) -> torch.Tensor:
        """gram, lagged: [K, K] (lagged[i, j] = <g_i(t), g_j(t-1)>); present: [K] bool;
        inclusion: [K] P(present). Returns the reward vector [K] (float64)."""
        g = gram.to(torch.float64)
        present = torch.as_tensor(present, dtype=torch.bool)
        pi = torch.as_tensor(inclusion, dtype=torch.float64).clamp_min(1e-6)
        sq = g.diagonal()[present]
        scale = sq.mean() if sq.numel() else torch.tensor(0.0, dtype=torch.float64)
        if not float(scale) > 0:
            return self.reward()
        obs = present[:, None] & present[None, :]
        x = torch.where(obs, g / (scale * pi[:, None] * pi[None, :]), torch.zeros_like(g))
        x = x.clamp(-self.clip, self.clip)
        eye = torch.eye(self.k, dtype=torch.bool)
        diag = torch.zeros(self.k, dtype=torch.float64)
        if self.self_term == "raw":
            diag = torch.where(present, g.diagonal() / (scale * pi), diag)
        elif self.self_term == "lagged" and lagged is not None and self._prev_present is not None:
            both = present & self._prev_present
            p2 = pi * self._prev_incl
            diag = torch.where(both, lagged.to(torch.float64).diagonal() / (scale * p2), diag)
        x = torch.where(eye, torch.diag(diag.clamp(-self.clip, self.clip)), x)
        if self.self_term == "lagged" and (lagged is None or self._prev_present is None):
            x = torch.where(eye, self.value, x)  # nothing observed yet: keep the old diagonal
        self.value = x if self.steps == 0 else self.xi * self.value + (1 - self.xi) * x
        self.steps += 1
        self._prev_present, self._prev_incl = present.clone(), pi.clone()
        return self.reward()

    def reward(self) -> torch.Tensor:
        """[K] r_i = sum_j c_j Ghat_ij (float64)."""
        return self.value @ self.c

    def state_dict(self) -> dict:
        return {
            "value": self.value.clone(),
            "steps": self.steps,
            "prev_present": self._prev_present,
            "prev_incl": self._prev_incl,
        }

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"].clone().to(torch.float64)
        self.steps = int(state["steps"])
        self._prev_present, self._prev_incl = state["prev_present"], state["prev_incl"]
