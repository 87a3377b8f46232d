"""Statistics shared by ranking, training and evaluation.

Z-scoring with sample statistics, row normalisation and Pearson correlation of predictions with
candidates, the mean per-column correlation (GOD's feature-prediction accuracy), and Welford's
running mean and variance (the causal stages' baselines).
"""

from __future__ import annotations

import numpy as np


def zscore(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Z-score the columns of ``a`` with their mean and SD (ddof=1, as GOD); constant columns get SD 1.

    Returns
    -------
    z, mean, sd : numpy.ndarray
    """
    mean, sd = a.mean(0), a.std(0, ddof=1)
    sd = np.where(sd > 0, sd, 1.0)
    return (a - mean) / sd, mean, sd


def mean_column_correlation(pred: np.ndarray, true: np.ndarray) -> float:
    """Pearson r of each column of ``pred`` with the same column of ``true``, averaged over columns.

    This is GOD's feature-prediction accuracy when columns are units and rows samples. Columns
    constant in either array are left out; NaN if all are.
    """
    p = pred - pred.mean(0)
    t = true - true.mean(0)
    denom = np.sqrt((p * p).sum(0) * (t * t).sum(0))
    ok = denom > 0
    return float(((p * t).sum(0)[ok] / denom[ok]).mean()) if ok.any() else float("nan")


def normalise_rows(a: np.ndarray) -> np.ndarray:
    """Centre each row and scale it to unit L2 norm, so a dot product is a Pearson correlation.

    Rows with no variation become zeros (correlation 0 with anything).
    """
    a = np.asarray(a, dtype=np.float64)
    c = a - a.mean(axis=-1, keepdims=True)
    n = np.linalg.norm(c, axis=-1, keepdims=True)
    return np.divide(c, n, out=np.zeros_like(c), where=n > 0)


def correlations(pred: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Pearson correlation of each prediction with each candidate.

    Parameters
    ----------
    pred : numpy.ndarray
        Shape (n, n_units) raw predicted features.
    candidates : numpy.ndarray
        Shape (n_candidates, n_units), centred and normalised rows.

    Returns
    -------
    numpy.ndarray
        Shape (n, n_candidates), float32.
    """
    return (normalise_rows(pred).astype(np.float32) @ candidates.T).astype(np.float32)


def welford(
    mean: np.ndarray | None, m2: np.ndarray | None, x: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """One step of Welford's running mean and sum of squared deviations, taking ``x`` as value ``n``.

    Starts from ``None`` (``n`` = 1); afterwards ``mean`` and ``m2`` are updated in place and
    returned. The sample variance is ``m2 / (n - 1)``.
    """
    if mean is None or m2 is None:
        return x.copy(), np.zeros_like(x)
    d = x - mean
    mean += d / n
    m2 += d * (x - mean)
    return mean, m2
