"""Correlation ranking of predicted features against a candidate bank, and pairwise identification.

Ranking reads the whole candidate bank for every volume (8 layers x 15,372 candidates x 1,000 units
is 490 MB as float32), so its speed is set by memory bandwidth. ``precision="int8"`` reads a copy
quantised to one byte per value, then re-scores in float32 every candidate whose error bound lets
it reach the top k: the ranking is the float32 ranking, at a quarter of the bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numba
import numpy as np

from rtdecode.errors import ModelFileError
from rtdecode.models.bank import CandidateBank
from rtdecode.numerics.intdot import MAX_WIDTH, padded_width, selected
from rtdecode.numerics.stats import correlations
from rtdecode.numerics.topk import normalise_and_quantise, quantise_rows, rank_layers, rounding
from rtdecode.pipeline.helpers import HelperThreads, share


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
    """Rows stored as int8 codes with one scale each: ``row ~= scale * codes[:m]``.

    ``codes`` rows are padded with zeros to a multiple of 64 bytes, whole chunks for the integer
    dot-product kernels (:mod:`rtdecode.numerics.intdot`). ``error`` is each row's exact L2
    quantisation error, which bounds the error of any dot product with a unit vector
    (Cauchy-Schwarz); ``norm`` is the L2 norm of each quantised row, ``|scale * codes|``.
    """

    codes: np.ndarray  # int8 (n, padded_width(m)), values -127..127
    scale: np.ndarray  # float64 (n,)
    error: np.ndarray  # float64 (n,)
    norm: np.ndarray  # float64 (n,)

    @classmethod
    def quantise(cls, rows: np.ndarray) -> QuantisedRows:
        """Quantise each row symmetrically to ``-127..127`` times its own scale."""
        rows = _compiled_float(rows)
        n, m = rows.shape
        out = cls(np.zeros((n, padded_width(m)), np.int8), np.empty(n), np.empty(n), np.empty(n))
        quantise_rows(rows, out.codes, out.scale, out.error, out.norm)
        return out

    @classmethod
    def queries(cls, pred: np.ndarray) -> tuple[np.ndarray, QuantisedRows]:
        """Predicted features as ranking queries: centred, unit-norm float32 rows and their codes.

        Parameters
        ----------
        pred : numpy.ndarray
            float32 or float64 (r, m), raw predicted features.

        Returns
        -------
        p : numpy.ndarray
            float32 (r, m), :func:`~rtdecode.numerics.stats.normalise_rows` of ``pred``.
        query : QuantisedRows
            ``p`` quantised.
        """
        p, *query = normalise_and_quantise(_compiled_float(pred), padded_width(pred.shape[1]))
        return p, cls(*query)

    def products(self, query: QuantisedRows) -> np.ndarray:
        """Exact integer products, int32 (r, n): ``rows @ p.T ~= acc * query.scale[:, None] * self.scale``.

        ``query`` holds r rows quantised like these (unit norm or zero, as these are).
        """
        acc = np.empty((query.codes.shape[0], self.codes.shape[0]), dtype=np.int32)
        selected()(self.codes, query.codes, acc)  # exact integer sums (the kernel refuses wider rows)
        return acc

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
            quantisation of both sides and float32 rounding.
        """
        query = QuantisedRows.quantise(p)
        approx = self.products(query) * query.scale[:, None] * self.scale[None, :]
        bound = query.error[:, None] + self.error[None, :] * query.norm[:, None] + rounding(p.shape[1])
        return approx, bound


def _compiled_float(a: np.ndarray) -> np.ndarray:
    # The compiled passes take float32 or float64 as given; anything else is read as float64.
    a = np.asarray(a)
    return a if a.dtype in (np.float32, np.float64) else a.astype(np.float64)


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
        Threads ranking a volume, the calling thread one of them. With int8 the layers are split
        into this many sets of about equal bytes, each ranked in one compiled call without the
        GIL (a thread that hands the GIL back and forth waits for a CPU to wake each time);
        float32 ranks one layer per task. Idle threads sleep (no spinning). A task still running
        on a thread long after the others are done (the system paused it) is run again by an
        idle one and the first answer kept (both are the same): one stalled core does not hold
        up the volume.

    Raises
    ------
    ModelFileError
        If the bank lacks a layer of the decoder or its unit count differs.
    """

    def __init__(
        self,
        bank: CandidateBank,
        layer_slices: dict[str, slice],
        k: int = 5,
        precision: str = "int8",
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
                raise ModelFileError(f"candidate bank has no layer {layer!r}; it has {list(bank.features)}")
            n = sl.stop - sl.start
            if precision == "int8" and padded_width(n) > MAX_WIDTH:
                raise ModelFileError(f"layer {layer!r}: {n} units are too many for int8 ranking; use float32")
            if bank.features[layer].shape[1] != n:
                raise ModelFileError(
                    f"layer {layer!r}: decoder predicts {n} units, candidates have "
                    f"{bank.features[layer].shape[1]}"
                )
        self.bank = bank
        self.layer_slices = layer_slices
        self.k = min(k, len(bank.labels))  # both rankings give at most every candidate
        self.precision = precision
        self.quantised = {}
        self.kernel = None  # the int8 kernel's instruction set, with int8 ranking
        self.threads = threads
        self._pool = HelperThreads(threads - 1, "rank") if threads > 1 else None
        layers = list(layer_slices)
        if precision == "int8":
            self.kernel = selected().isa  # compiled and checked now, not on the first volume
            self.quantised = {layer: QuantisedRows.quantise(bank.features[layer]) for layer in layers}
            # One task per thread: layers of about equal bytes, each set ranked in one compiled call.
            self._tasks = [self._compiled(group) for group in _balanced(layers, self.quantised, threads)]
            # Compiled (or loaded from the disk cache) and the helpers started now, not on the
            # first volume: a float32 prediction equal to a candidate, which leaves little to re-score.
            probe = np.zeros((1, max(sl.stop for sl in layer_slices.values())), np.float32)
            for layer, sl in layer_slices.items():
                probe[0, sl] = bank.features[layer][0]
            self.rank(probe)
        else:
            self._tasks = [self._float32(i) for i in range(len(layers))]

    def rank(self, predictions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top-k candidates per ROI and layer.

        Parameters
        ----------
        predictions : numpy.ndarray
            Shape (n_rois, n_units_total) as from :meth:`~rtdecode.models.bundle.Decoder.predict`.

        Returns
        -------
        indices : numpy.ndarray
            int32, shape (n_rois, n_layers, k), best first.
        scores : numpy.ndarray
            float32, shape (n_rois, n_layers, k), Pearson correlations.
        """
        return self.rank_many([predictions])[0]

    def rank_many(self, predictions: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`rank` for several volumes, with one pass over the int8 bank for all of them.

        The answer for each volume is :meth:`rank`'s for it alone: int8 sums are exact and every
        row is re-scored by itself; float32 ranking ranks each volume's rows on their own (a
        matrix product over more rows could round differently).

        Parameters
        ----------
        predictions : list of numpy.ndarray
            Each of shape (n_rois, n_units_total).

        Returns
        -------
        list of (indices, scores)
            One pair per volume, as :meth:`rank` returns them.
        """
        sizes = [p.shape[0] for p in predictions]
        rows = np.concatenate(predictions) if len(predictions) > 1 else predictions[0]
        results = share(self._pool, lambda i: self._tasks[i][1](rows, sizes), len(self._tasks))
        shape = (rows.shape[0], len(self.layer_slices), self.k)
        idx, val = np.empty(shape, np.int32), np.empty(shape, np.float32)
        for (positions, _), (i, v) in zip(self._tasks, results):
            idx[:, positions], val[:, positions] = i, v
        cut = np.cumsum(sizes)[:-1]
        return list(zip(np.split(idx, cut), np.split(val, cut)))

    def close(self) -> None:
        """Stop the ranking threads; safe to call twice."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self) -> Identifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _compiled(self, positions: list[int]) -> tuple[list[int], Callable]:
        # These layers' arrays as the compiled pass takes them, and the call that ranks them.
        layers = [list(self.layer_slices)[i] for i in positions]
        starts = np.array([self.layer_slices[ly].start for ly in layers])
        stops = np.array([self.layer_slices[ly].stop for ly in layers])
        q = [self.quantised[ly] for ly in layers]
        lists = [
            numba.typed.List(a)
            for a in ([x.codes for x in q], [x.scale for x in q], [x.error for x in q])
            + ([self.bank.features[ly] for ly in layers],)
        ]
        kernel = selected()

        def rank(rows: np.ndarray, sizes: list[int]) -> tuple[np.ndarray, np.ndarray]:
            rows = _compiled_float(rows)
            return rank_layers(kernel.function, kernel.biased, rows, starts, stops, *lists, self.k)

        return positions, rank

    def _float32(self, position: int) -> tuple[list[int], Callable]:
        layer = list(self.layer_slices)[position]
        features, columns = self.bank.features[layer], self.layer_slices[layer]

        def rank(rows: np.ndarray, sizes: list[int]) -> tuple[np.ndarray, np.ndarray]:
            # Each volume's rows on their own: a matrix product over more rows could round differently.
            parts = np.split(rows[:, columns], np.cumsum(sizes)[:-1])
            idx, val = zip(*(top_k(correlations(part, features), self.k) for part in parts))
            return np.concatenate(idx)[:, None], np.concatenate(val)[:, None]

        return [position], rank


def _balanced(layers: list[str], quantised: dict[str, QuantisedRows], groups: int) -> list[list[int]]:
    # Layer positions in at most ``groups`` sets of about equal bytes, largest layers placed first.
    sets: list[list[int]] = [[] for _ in range(min(groups, len(layers)))]
    load = [0] * len(sets)
    for i in sorted(range(len(layers)), key=lambda i: -quantised[layers[i]].codes.nbytes):
        j = load.index(min(load))
        sets[j].append(i)
        load[j] += quantised[layers[i]].codes.nbytes
    return [sorted(s) for s in sets]
