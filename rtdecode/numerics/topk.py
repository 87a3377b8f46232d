"""The exact top k of float32 scores found from approximate ones with an error bound.

Ranking scores every candidate approximately from int8 codes (:mod:`rtdecode.numerics.intdot`)
and knows how far each approximate score can be from the float32 one. :func:`certified_top_k`
turns that into the float32 top k, re-scoring as few rows as the bound allows.
:func:`quantise_rows` makes the codes and their error bounds, and :func:`normalise_and_quantise`
makes a query's. :func:`rank_layers` does all of it for several layers in one call without the
GIL: a volume arrives after the decoder has idled most of a TR, and every time a ranking thread
hands the GIL back and forth with the other, it risks waiting for a virtual CPU to wake (a tenth
of a millisecond typically, several now and then).
"""

from __future__ import annotations

import numba
import numpy as np

from rtdecode.numerics.intdot import products


@numba.njit(cache=True)
def rounding(m: int) -> float:
    """What float32 rounding of an m-term dot product of unit vectors can add, twice over."""
    return 4.0 * m * 2.0**-24


@numba.njit(nogil=True, cache=True, error_model="numpy", boundscheck=False)
def quantise_rows(
    rows: np.ndarray, codes: np.ndarray, scale: np.ndarray, error: np.ndarray, norm: np.ndarray
) -> None:
    """Quantise each row symmetrically: ``rows[i] ~= scale[i] * codes[i, :m]``, codes in -127..127.

    Parameters
    ----------
    rows : numpy.ndarray
        float32 or float64 (n, m).
    codes : numpy.ndarray
        int8 (n, width), width >= m, zeros beyond m: filled up to m.
    scale, error, norm : numpy.ndarray
        float64 (n,): filled with each row's scale, the L2 norm of its quantisation error
        (computed in float64 from the values as given) and the L2 norm of ``scale * codes``.
    """
    n, m = rows.shape
    for i in range(n):
        amax = 0.0
        for j in range(m):
            v = abs(np.float64(rows[i, j]))
            if v > amax:
                amax = v
        s = amax / 127 if amax > 0 else 1.0
        e2 = 0.0
        c2 = 0.0  # an exact integer sum in float64
        for j in range(m):
            x = np.float64(rows[i, j])
            q = np.rint(x / s)
            codes[i, j] = np.int8(q)
            e2 += (x - q * s) ** 2
            c2 += q * q
        scale[i], error[i], norm[i] = s, np.sqrt(e2), np.sqrt(c2) * s


@numba.njit(nogil=True, cache=True, error_model="numpy", boundscheck=False)
def normalise_and_quantise(
    pred: np.ndarray, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Centre and unit-normalise each row of ``pred`` into float32 ``p``, then :func:`quantise_rows` it.

    ``p`` is :func:`rtdecode.numerics.stats.normalise_rows` of ``pred`` (in float64, rows with no
    variation become zeros) cast to float32, up to the order of the float64 sums.

    Parameters
    ----------
    pred : numpy.ndarray
        float32 or float64 (r, m).
    width : int
        Bytes per row of codes, at least m (zeros beyond m).

    Returns
    -------
    p : numpy.ndarray
        float32 (r, m).
    codes, scale, error, norm : numpy.ndarray
        ``p`` quantised, as :func:`quantise_rows` fills them.
    """
    r, m = pred.shape
    p = np.empty((r, m), dtype=np.float32)
    codes = np.zeros((r, width), dtype=np.int8)
    scale, error, norm = np.empty(r), np.empty(r), np.empty(r)
    c = np.empty(m)
    for i in range(r):
        mean = 0.0
        for j in range(m):
            mean += pred[i, j]
        mean /= m
        ss = 0.0
        for j in range(m):
            c[j] = pred[i, j] - mean
            ss += c[j] * c[j]
        length = np.sqrt(ss)
        for j in range(m):
            p[i, j] = c[j] / length if length > 0 else 0.0
    quantise_rows(p, codes, scale, error, norm)
    return p, codes, scale, error, norm


@numba.njit(nogil=True, cache=True, error_model="numpy", boundscheck=False)
def certified_top_k(
    acc: np.ndarray, row_scale: np.ndarray, row_error: np.ndarray, q_scale: np.ndarray,
    q_slack: np.ndarray, q_norm: np.ndarray, features: np.ndarray, p: np.ndarray,
    idx: np.ndarray, val: np.ndarray,
) -> np.ndarray:  # fmt: skip
    """Fill ``idx``/``val`` with the top k of ``features @ p[q]`` for each query q, best first.

    The approximate score of row i is ``acc[q, i] * row_scale[i] * q_scale[q]``, within
    ``row_error[i] * q_norm[q] + q_slack[q]`` of the float32 one. The k best approximate rows,
    scored in float32, set a floor the k-th best score cannot be below; only the rows whose upper
    bound reaches the floor are scored in float32.

    Parameters
    ----------
    acc : numpy.ndarray
        int32 (r, n) integer products.
    row_scale, row_error : numpy.ndarray
        float64 (n,).
    q_scale, q_slack, q_norm : numpy.ndarray
        float64 (r,).
    features : numpy.ndarray
        float32 (n, m), C-contiguous.
    p : numpy.ndarray
        float32 (r, m), C-contiguous.
    idx, val : numpy.ndarray
        int32 and float32 (r, k), k <= n: filled.

    Returns
    -------
    numpy.ndarray
        int64 (r,): rows scored in float32 per query.
    """
    r, n = acc.shape
    k = idx.shape[1]
    kept = np.empty(k)
    first = np.empty(k, dtype=np.int64)
    need = np.empty(n, dtype=np.int64)
    exact = np.empty(n, dtype=np.float32)
    approx = np.empty(n)
    scored = np.empty(r, dtype=np.int64)
    for q in range(r):
        pq, aq = p[q], acc[q]
        for i in range(n):  # in one loop that vectorises, not in each of the two below
            approx[i] = aq[i] * row_scale[i]
        for i in range(k):
            kept[i], first[i] = approx[i], i
        low = _lowest(kept)  # the smallest kept one, replaced only by a larger one (rare)
        least = kept[low]
        for i in range(k, n):
            if approx[i] > least:
                kept[low], first[low] = approx[i], i
                low = _lowest(kept)
                least = kept[low]
        floor = np.inf
        for j in range(k):
            floor = min(floor, np.dot(features[first[j]], pq))
        floor -= q_slack[q]
        qs, qn = q_scale[q], q_norm[q]
        c = 0
        for i in range(n):
            if approx[i] * qs + row_error[i] * qn >= floor:
                need[c] = i
                c += 1
        for j in range(c):
            exact[j] = np.dot(features[need[j]], pq)
        if c < k:  # only if rounding defeated the bound: score every row
            c = n
            for i in range(n):
                need[i] = i
                exact[i] = np.dot(features[i], pq)
        order = np.argsort(-exact[:c], kind="mergesort")[:k]
        for j in range(k):
            idx[q, j] = need[order[j]]
            val[q, j] = exact[order[j]]
        scored[q] = c
    return scored


@numba.njit(nogil=True, cache=True, error_model="numpy", boundscheck=False, inline="always")
def _lowest(kept: np.ndarray) -> int:
    # The position of the smallest value, the first of equal ones.
    low = 0
    for j in range(1, kept.size):
        if kept[j] < kept[low]:
            low = j
    return low


@numba.njit(nogil=True, cache=True, error_model="numpy", boundscheck=False)
def rank_layers(
    scores: object, biased: bool, rows: np.ndarray, starts: np.ndarray, stops: np.ndarray,
    codes: list, scale: list, error: list, features: list, k: int,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The float32 top k of every row of predictions against several layers' candidates.

    For each layer t: the predictions' columns ``starts[t]:stops[t]`` are normalised and
    quantised (:func:`normalise_and_quantise`), scored against the layer's codes by the int8
    kernel ``scores`` (:mod:`rtdecode.numerics.intdot`), and the top k certified and re-scored
    in float32 (:func:`certified_top_k`).

    Parameters
    ----------
    scores, biased
        The int8 kernel's C function and whether it takes a bias
        (:func:`rtdecode.numerics.intdot.products`).
    rows : numpy.ndarray
        float32 or float64 (r, units), raw predicted features.
    starts, stops : numpy.ndarray
        int64 (layers,): each layer's columns in ``rows``.
    codes, scale, error, features : numba.typed.List
        Per layer: the candidates' int8 codes, their scales and quantisation errors (a
        :class:`~rtdecode.pipeline.ranking.QuantisedRows`), and their float32 centred unit-norm rows.
    k : int
        At most the number of candidates of every layer.

    Returns
    -------
    idx, val : numpy.ndarray
        int32 and float32 (r, layers, k), best first.
    """
    r = rows.shape[0]
    idx = np.empty((r, len(codes), k), dtype=np.int32)
    val = np.empty((r, len(codes), k), dtype=np.float32)
    for t in range(len(codes)):
        bank = codes[t]
        n, width = bank.shape
        m = stops[t] - starts[t]
        p, query, q_scale, q_error, q_norm = normalise_and_quantise(rows[:, starts[t] : stops[t]], width)
        acc = np.empty((r, n), dtype=np.int32)
        products(scores, biased, bank, query, acc)
        certified_top_k(
            acc,
            scale[t],
            error[t],
            q_scale,
            q_error + rounding(m),
            q_norm,
            features[t],
            p,
            idx[:, t],
            val[:, t],
        )
    return idx, val
