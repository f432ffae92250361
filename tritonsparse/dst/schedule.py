"""The shared mask-update schedule: update every ΔT steps until T_end, cosine drop fraction."""
from __future__ import annotations

import math


def drop_fraction(step: int, alpha: float, end_step: float) -> float:
    """α_t = α/2 · (1 + cos(π t / T_end)) for t < T_end, else 0."""
    if end_step <= 0 or step >= end_step:
        return 0.0
    return alpha / 2.0 * (1.0 + math.cos(math.pi * step / end_step))


class UpdateSchedule:
    """When masks change: at optimizer steps t = ΔT, 2ΔT, ... with t < t_end · total_steps.

    Args:
        total_steps: optimizer steps in the whole run (T).
        delta_t: steps between updates (ΔT).
        t_end: fraction of training after which masks are frozen.
        alpha: initial drop fraction.
    """

    def __init__(self, total_steps: int, delta_t: int = 100, t_end: float = 0.75, alpha: float = 0.3):
        for name, v in (("total_steps", total_steps), ("delta_t", delta_t)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not 0.0 <= t_end <= 1.0:
            raise ValueError(f"t_end must be in [0, 1], got {t_end!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
        self.total_steps, self.delta_t, self.t_end, self.alpha = total_steps, delta_t, float(t_end), float(alpha)

    @property
    def end_step(self) -> float:
        return self.t_end * self.total_steps

    def is_update(self, step: int) -> bool:
        """True if the mask changes after optimizer step ``step`` (1-based)."""
        return step > 0 and step % self.delta_t == 0 and step < self.end_step

    def drop_fraction(self, step: int) -> float:
        return drop_fraction(step, self.alpha, self.end_step)
