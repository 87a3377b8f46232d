"""Candidate banks, correlation ranking and pairwise identification accuracy.

Ranking reads the whole candidate bank for every volume (8 layers x 15,372 candidates x 1,000 units
is 490 MB as float32), so its speed is set by memory bandwidth. ``precision="int8"`` reads a copy
quantised to one byte per value, then re-scores in float32 every candidate whose error bound lets
it reach the top k: the ranking is the float32 ranking, at a quarter of the bytes.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rtdecode.errors import BundleError
from rtdecode.numerics.kernels import int8_scores

BANK_FORMAT = "rtdecode-candidates"
BANK_VERSION = 1


def normalise_rows(a: np.ndarray) -> np.ndarray:
    """Centre each row and scale it to unit L2 norm, so a dot product is a Pearson correlation.

    Rows with no variation become zeros (correlation 0 with anything).
    """
    a = np.asarray(a, dtype=np.float64)
    c = a - a.mean(axis=-1, keepdims=True)
    n = np.linalg.norm(c, axis=-1, keepdims=True)
    return np.divide(c, n, out=np.zeros_like(c), where=n > 0)


class CandidateBank:
    """Category features to compare predictions with, stored centred and L2-normalised.

    Parameters
    ----------
    labels : list of str
        Category names, shape (n_candidates,).
    features : dict of str to numpy.ndarray
        Per layer, array of shape (n_candidates, n_units); normalised here unless
        ``normalised`` is True.
    normalised : bool
        The features are already centred and normalised (as stored on disk).
    """

    def __init__(self, labels: list[str], features: dict[str, np.ndarray], normalised: bool = False) -> None:
        self.labels = list(labels)
        self.features = {}
        for layer, f in features.items():
            if f.ndim != 2 or f.shape[0] != len(self.labels):
                raise BundleError(
                    f"layer {layer!r}: candidate features of shape {f.shape} do not match "
                    f"{len(self.labels)} labels"
                )
            self.features[layer] = np.ascontiguousarray(
                f if normalised else normalise_rows(f), dtype=np.float32
            )

    def save(self, path: str | Path) -> None:
        """Write the bank as NPZ (``format``, ``version``, ``labels``, ``feat/<layer>``)."""
        np.savez(
            path,
            format=np.array(BANK_FORMAT),
            version=np.array(BANK_VERSION),
            labels=np.array(self.labels),
            **{f"feat/{k}": v for k, v in self.features.items()},
        )

    @classmethod
    def from_features(cls, path: str | Path) -> CandidateBank:
        """A bank from raw category features: a ``features.npz`` with ``labels`` and ``feat_<layer>``.

        That is the layout of a session's bank (:func:`rtdecode.sim.session.write_session`) and of
        ``tools/extract_features.py``.
        """
        with np.load(path, allow_pickle=False) as z:
            return cls(
                [str(s) for s in z["labels"]],
                {k.removeprefix("feat_"): z[k] for k in z.files if k.startswith("feat_")},
            )

    @classmethod
    def load(cls, path: str | Path) -> CandidateBank:
        """Read a bank written by :meth:`save`."""
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["format"]) != BANK_FORMAT or int(z["version"]) != BANK_VERSION:
                    raise BundleError(
                        f"{path}: expected {BANK_FORMAT!r} version {BANK_VERSION}, got "
                        f"{str(z['format'])!r} version {int(z['version'])}"
                    )
                feats = {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith("feat/")}
                labels = [str(s) for s in z["labels"]]
        except (OSError, KeyError, ValueError) as err:
            if isinstance(err, BundleError):
                raise
            raise BundleError(f"cannot read candidate bank {str(path)!r}: {err}") from None
        return cls(labels, feats, normalised=True)


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


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the ``k`` largest scores along the last axis, best first."""
    k = min(k, scores.shape[-1])
    part = np.argpartition(-scores, k - 1, axis=-1)[..., :k]
    vals = np.take_along_axis(scores, part, -1)
    order = np.argsort(-vals, axis=-1, kind="stable")
    return np.take_along_axis(part, order, -1).astype(np.int32), np.take_along_axis(vals, order, -1)


def pairwise_identification(scores: np.ndarray, true_index: np.ndarray) -> np.ndarray:
    """Pairwise identification accuracy (Horikawa & Kamitani 2017).

    For each sample, the share of false candidates whose correlation with the prediction is
    below the true candidate's; ties count as correct. Chance is 0.5.

    Parameters
    ----------
    scores : numpy.ndarray
        Shape (n_samples, n_candidates), correlations.
    true_index : numpy.ndarray
        Shape (n_samples,), index of the true candidate.

    Returns
    -------
    numpy.ndarray
        Shape (n_samples,).
    """
    scores = np.atleast_2d(scores)
    true_index = np.asarray(true_index)
    true = scores[np.arange(scores.shape[0]), true_index][:, None]
    n_false = scores.shape[1] - 1
    beaten = (scores > true).sum(1)  # only strictly better false candidates count against
    return 1.0 - beaten / n_false


PRECISIONS = ("float32", "int8")


@dataclass
class QuantisedRows:
    """Rows stored as int8 codes with one scale each: ``row ~= scale * codes``.

    ``error`` is each row's exact L2 quantisation error, which bounds the error of any dot product
    with a unit vector (Cauchy-Schwarz).
    """

    codes: np.ndarray  # int8 (n, m); int16 when quantised to more than 127 levels
    scale: np.ndarray  # float64 (n,)
    error: np.ndarray  # float64 (n,)

    @classmethod
    def quantise(cls, rows: np.ndarray, levels: int = 127) -> QuantisedRows:
        """Quantise each row symmetrically to ``-levels..levels`` (int8 up to 127, else int16)."""
        rows = np.asarray(rows, dtype=np.float64)
        amax = np.abs(rows).max(axis=1) if rows.shape[1] else np.zeros(rows.shape[0])
        scale = np.where(amax > 0, amax / levels, 1.0)
        q = np.rint(rows / scale[:, None])
        error = np.linalg.norm(rows - q * scale[:, None], axis=1)
        return cls(q.astype(np.int8 if levels <= 127 else np.int16), scale, error)

    def dot_bounds(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Approximate ``rows @ p`` for each row of ``p`` and a bound on the error of each value.

        Parameters
        ----------
        p : numpy.ndarray
            float32 (r, m), rows of unit norm or zero; the original rows are also of unit norm
            or zero.

        Returns
        -------
        approx, bound : numpy.ndarray
            float64 (r, n): ``|rows @ p.T - approx| <= bound`` element-wise, counting the
            quantisation of both sides and float32 rounding of an m-term dot product.
        """
        m = p.shape[1]
        # int16 query codes, as fine as int32 accumulation of m products with int8 allows.
        limit = min(32767, (2**31 - 1) // (127 * max(m, 1)))
        pq = QuantisedRows.quantise(p, limit)
        acc = np.empty((p.shape[0], self.codes.shape[0]), dtype=np.int32)
        int8_scores(self.codes, pq.codes, acc)
        approx = acc * pq.scale[:, None] * self.scale[None, :]
        p_hat_norm = np.linalg.norm(pq.codes * pq.scale[:, None], axis=1)
        rounding = 4.0 * m * 2.0**-24  # float32 dot products of unit vectors, computed twice
        bound = pq.error[:, None] + self.error[None, :] * p_hat_norm[:, None] + rounding
        return approx, bound


def certified_top_k(
    p: np.ndarray, features: np.ndarray, quantised: QuantisedRows, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The float32 top-k of ``p @ features.T`` found through int8 codes and re-scoring.

    Only the rows whose upper bound reaches the k-th best exact score of the approximate top k
    are read in float32, so the answer is that of :func:`top_k` on the full float32 product
    (up to float32 rounding of near-equal scores).

    Parameters
    ----------
    p : numpy.ndarray
        float32 (r, m), centred, unit-norm rows (from :func:`normalise_rows`).
    features : numpy.ndarray
        float32 (n, m), the rows ``quantised`` was made from.
    quantised : QuantisedRows
    k : int

    Returns
    -------
    indices : numpy.ndarray
        int32 (r, k), best first.
    scores : numpy.ndarray
        float32 (r, k).
    """
    k = min(k, features.shape[0])
    approx, bound = quantised.dot_bounds(p)
    idx = np.empty((p.shape[0], k), dtype=np.int32)
    val = np.empty((p.shape[0], k), dtype=np.float32)
    for q in range(p.shape[0]):
        first = np.argpartition(-approx[q], k - 1)[:k]
        threshold = (features[first] @ p[q]).min()
        need = np.flatnonzero(approx[q] + bound[q] >= threshold)
        top, val[q] = top_k((features[need] @ p[q])[None], k)
        idx[q] = need[top[0]]
    return idx, val


class Identifier:
    """Rank every candidate for every ROI x layer prediction of a volume.

    Parameters
    ----------
    bank : CandidateBank
    layer_slices : dict of str to slice
        Where each layer's units sit in a prediction row (from the decoder bundle).
    k : int
        How many top candidates to report.
    precision : {"float32", "int8"}
        How the bank is read: float32 products, or int8 codes with certified float32
        re-scoring (same ranking, a quarter of the memory traffic, plus a quarter more memory).
    threads : int
        Layers ranked at once; the kernels release the GIL, and idle threads sleep (no spinning).

    Raises
    ------
    BundleError
        If the bank lacks a layer of the decoder or its unit count differs.
    """

    def __init__(
        self,
        bank: CandidateBank,
        layer_slices: dict[str, slice],
        k: int = 5,
        precision: str = "float32",
        threads: int = 1,
    ) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads!r}")
        for layer, sl in layer_slices.items():
            if layer not in bank.features:
                raise BundleError(f"candidate bank has no layer {layer!r}; it has {list(bank.features)}")
            n = sl.stop - sl.start
            if bank.features[layer].shape[1] != n:
                raise BundleError(
                    f"layer {layer!r}: decoder predicts {n} units, candidates have "
                    f"{bank.features[layer].shape[1]}"
                )
        self.bank = bank
        self.layer_slices = layer_slices
        self.k = k
        self.precision = precision
        self.quantised = (
            {layer: QuantisedRows.quantise(bank.features[layer]) for layer in layer_slices}
            if precision == "int8"
            else {}
        )
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="rank") if threads > 1 else None

    def rank(self, predictions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top-k candidates per ROI and layer.

        Parameters
        ----------
        predictions : numpy.ndarray
            Shape (n_rois, n_units_total) as from :meth:`DecoderBundle.predict`.

        Returns
        -------
        indices : numpy.ndarray
            int32, shape (n_rois, n_layers, k), best first.
        scores : numpy.ndarray
            float32, shape (n_rois, n_layers, k), Pearson correlations.
        """
        layers = list(self.layer_slices)
        ranked = (
            self._pool.map(self._rank_layer, layers, [predictions] * len(layers))
            if self._pool is not None
            else map(self._rank_layer, layers, [predictions] * len(layers))
        )
        idx, val = zip(*ranked)
        return np.stack(idx, axis=1), np.stack(val, axis=1)

    def _rank_layer(self, layer: str, predictions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = min(self.k, len(self.bank.labels))
        pred = predictions[:, self.layer_slices[layer]]
        if self.precision == "int8":
            p = normalise_rows(pred).astype(np.float32)
            return certified_top_k(p, self.bank.features[layer], self.quantised[layer], k)
        return top_k(correlations(pred, self.bank.features[layer]), k)
