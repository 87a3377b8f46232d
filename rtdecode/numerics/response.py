"""Response functions of the BOLD signal: to neural activity and to changes in breathing."""

from __future__ import annotations

import numpy as np
from scipy.stats import gamma


def canonical_hrf(dt_s: float, length_s: float = 32.0) -> np.ndarray:
    """SPM's canonical double-gamma HRF sampled every ``dt_s`` seconds, peak-normalised to 1."""
    t = np.arange(0.0, length_s, dt_s)
    h = gamma.pdf(t, 6) - gamma.pdf(t, 16) / 6.0
    return h / h.max()


def rrf(t_s: np.ndarray) -> np.ndarray:
    """Birn et al.'s (2008) respiration response function at times ``t_s`` (s)."""
    t = np.asarray(t_s, np.float64)
    return 0.6 * t**2.1 * np.exp(-t / 1.6) - 0.0023 * t**3.54 * np.exp(-t / 4.25)
