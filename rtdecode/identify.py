"""Candidate banks, correlation ranking and pairwise identification accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rtdecode.errors import BundleError

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


class Identifier:
    """Rank every candidate for every ROI x layer prediction of a volume.

    Parameters
    ----------
    bank : CandidateBank
    layer_slices : dict of str to slice
        Where each layer's units sit in a prediction row (from the decoder bundle).
    k : int
        How many top candidates to report.

    Raises
    ------
    BundleError
        If the bank lacks a layer of the decoder or its unit count differs.
    """

    def __init__(self, bank: CandidateBank, layer_slices: dict[str, slice], k: int = 5) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k!r}")
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
        n_rois, n_layers = predictions.shape[0], len(self.layer_slices)
        k = min(self.k, len(self.bank.labels))
        idx = np.empty((n_rois, n_layers, k), dtype=np.int32)
        val = np.empty((n_rois, n_layers, k), dtype=np.float32)
        for j, (layer, sl) in enumerate(self.layer_slices.items()):
            idx[:, j], val[:, j] = top_k(correlations(predictions[:, sl], self.bank.features[layer]), k)
        return idx, val
