"""Static mixing: the initial weights forever (e.g. the Pile's natural weights)."""

from __future__ import annotations

import numpy as np

from .base import Mixer, StepStats


class StaticMixer(Mixer):
    def update(self, stats: StepStats) -> np.ndarray:
        return self.initial
