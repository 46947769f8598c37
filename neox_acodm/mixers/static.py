"""Static mixing: the initial weights forever (e.g. the Pile's natural weights), or a replayed
weight schedule (``acodm.schedule_path``)."""

from __future__ import annotations

import numpy as np

from .base import Mixer, StepStats


class StaticMixer(Mixer):
    chooses_weights = False
    replays_schedule = True

    def __init__(self, initial_weights: np.ndarray, schedule=None):
        super().__init__(initial_weights)
        self.schedule = schedule
        # a schedule's weights are used exactly as written, so a replay plans what the run planned
        self.final_weights = schedule is not None

    def update(self, stats: StepStats) -> np.ndarray:
        if self.schedule is not None:
            return self.schedule.weights_at(stats.step + 1)
        return self.initial
