"""numba kernels of the hot path: B-splines (motion), sparse decoding, int8 candidate scoring.

Single-threaded, ``nogil`` (two volumes can be processed on two cores) and cached on disk. The
spline boundary condition is whole-sample mirror, the same as ``scipy.ndimage``'s ``mode="mirror"``,
against which the tests check these kernels.
"""

from __future__ import annotations

import numba
import numpy as np

_POLE = np.sqrt(3.0) - 2.0  # the cubic B-spline's pole
_GAIN = (1.0 - _POLE) * (1.0 - 1.0 / _POLE)  # = 6


@numba.njit(nogil=True, cache=True, fastmath=True, error_model="numpy")
def _filter_middle(c: np.ndarray) -> None:
    # Unser's recursive filter (Thevenaz et al. 2000), causal then anti-causal, mirror boundary,
    # along the middle axis of a C-contiguous (a, n, b) array: the inner loops walk b contiguous
    # values, which numba vectorises only when it knows the layout is C.
    na, n, nb = c.shape
    if n == 1:
        return
    z = _POLE
    for i in range(na):
        for m in range(n):
            for k in range(nb):
                c[i, m, k] *= _GAIN
        if n > 30:  # |z|^30 < 1e-17: a truncated sum is exact in float64
            for k in range(nb):
                s = c[i, 0, k]
                zn = z
                for m in range(1, 30):
                    s += zn * c[i, m, k]
                    zn *= z
                c[i, 0, k] = s
        else:  # short lines: the exact mirror-symmetric initial value
            iz = 1.0 / z
            for k in range(nb):
                zn = z
                z2n = z ** (n - 1)
                s = c[i, 0, k] + z2n * c[i, n - 1, k]
                z2n *= z2n * iz
                for m in range(1, n - 1):
                    s += (zn + z2n) * c[i, m, k]
                    zn *= z
                    z2n *= iz
                c[i, 0, k] = s / (1.0 - zn * zn)
        for m in range(1, n):
            for k in range(nb):
                c[i, m, k] += z * c[i, m - 1, k]
        f = z / (z * z - 1.0)
        for k in range(nb):
            c[i, n - 1, k] = f * (z * c[i, n - 2, k] + c[i, n - 1, k])
        for m in range(n - 2, -1, -1):
            for k in range(nb):
                c[i, m, k] = z * (c[i, m + 1, k] - c[i, m, k])


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _transpose(src: np.ndarray, dst: np.ndarray) -> None:
    # dst = src.T in 16 x 16 tiles: 3-4x faster than numpy's copy for a (short, long) source.
    a, b = src.shape
    for i0 in range(0, a, 16):
        for j0 in range(0, b, 16):
            for i in range(i0, min(i0 + 16, a)):
                for j in range(j0, min(j0 + 16, b)):
                    dst[j, i] = src[i, j]


def spline_coefficients(img: np.ndarray) -> np.ndarray:
    """Cubic B-spline coefficients of a 3-D image (mirror boundary).

    Parameters
    ----------
    img : numpy.ndarray
        Shape (nx, ny, nz), any real dtype.

    Returns
    -------
    numpy.ndarray
        float32 array of the same shape, C-contiguous.
    """
    nx, ny, nz = img.shape
    # z, the contiguous axis, is filtered on a transposed copy (made while converting to
    # float32), so that each of the three passes reads contiguous rows.
    t = np.array(np.asarray(img).reshape(nx * ny, nz).T, dtype=np.float32, order="C")
    _filter_middle(t.reshape(1, nz, nx * ny))
    c = np.empty((nx, ny, nz), dtype=np.float32)
    _transpose(t, c.reshape(nx * ny, nz))
    _filter_middle(c)
    _filter_middle(c.reshape(1, nx, ny * nz))
    return c


@numba.njit(nogil=True, cache=True, fastmath=True, error_model="numpy", inline="always")
def _mirror(i: int, n: int) -> int:
    if n == 1:
        return 0
    period = 2 * n - 2
    i = abs(i) % period
    return period - i if i >= n else i


@numba.njit(nogil=True, cache=True, fastmath=True, error_model="numpy")
def inside_grid(mat: np.ndarray, points: np.ndarray, shape: tuple, out: np.ndarray) -> None:
    """Mark the points that an affine map sends inside a grid (at most half a voxel beyond it).

    Parameters
    ----------
    mat : numpy.ndarray
        float64 (3, 4).
    points : numpy.ndarray
        float64 (n, 3).
    shape : tuple of int
        Grid shape.
    out : numpy.ndarray
        bool (n,).
    """
    for p in range(points.shape[0]):
        ok = True
        for d in range(3):
            v = mat[d, 0] * points[p, 0] + mat[d, 1] * points[p, 1] + mat[d, 2] * points[p, 2] + mat[d, 3]
            if v < -0.5 or v > shape[d] - 0.5:
                ok = False
        out[p] = ok


@numba.njit(nogil=True, cache=True, fastmath=True, error_model="numpy")
def sample(coef: np.ndarray, mat: np.ndarray, points: np.ndarray, out: np.ndarray) -> None:
    """Evaluate a cubic B-spline at affinely mapped points.

    Parameters
    ----------
    coef : numpy.ndarray
        float32 (nx, ny, nz) coefficients from :func:`spline_coefficients`.
    mat : numpy.ndarray
        float64 (3, 4): maps a point's voxel coordinates to the voxel coordinates to sample.
    points : numpy.ndarray
        float64 (n, 3) voxel coordinates.
    out : numpy.ndarray
        float32 (n,), filled with the values.

    Returns
    -------
    int
        How many points mapped outside the grid (more than half a voxel beyond its edge); their
        values come from the mirror-extended image.
    """
    nx, ny, nz = coef.shape
    n_out = 0
    wx = np.empty(4)
    wy = np.empty(4)
    wz = np.empty(4)
    ix = np.empty(4, dtype=np.int64)
    iy = np.empty(4, dtype=np.int64)
    iz = np.empty(4, dtype=np.int64)
    for p in range(points.shape[0]):
        px, py, pz = points[p, 0], points[p, 1], points[p, 2]
        x = mat[0, 0] * px + mat[0, 1] * py + mat[0, 2] * pz + mat[0, 3]
        y = mat[1, 0] * px + mat[1, 1] * py + mat[1, 2] * pz + mat[1, 3]
        z = mat[2, 0] * px + mat[2, 1] * py + mat[2, 2] * pz + mat[2, 3]
        if x < -0.5 or y < -0.5 or z < -0.5 or x > nx - 0.5 or y > ny - 0.5 or z > nz - 0.5:
            n_out += 1
        _weights(x, nx, wx, ix)
        _weights(y, ny, wy, iy)
        _weights(z, nz, wz, iz)
        acc = 0.0
        if iz[3] - iz[0] == 3:  # away from the z edges (no mirror fold): four adjacent values
            z0 = iz[0]
            for a in range(4):
                ca = 0.0
                for b in range(4):
                    row = coef[ix[a], iy[b]]
                    ca += wy[b] * (
                        wz[0] * row[z0] + wz[1] * row[z0 + 1] + wz[2] * row[z0 + 2] + wz[3] * row[z0 + 3]
                    )
                acc += wx[a] * ca
        else:
            for a in range(4):
                ca = 0.0
                for b in range(4):
                    cb = 0.0
                    for c in range(4):
                        cb += wz[c] * coef[ix[a], iy[b], iz[c]]
                    ca += wy[b] * cb
                acc += wx[a] * ca
        out[p] = acc
    return n_out


@numba.njit(nogil=True, cache=True, fastmath=True, error_model="numpy", inline="always")
def _weights(x: float, n: int, w: np.ndarray, idx: np.ndarray) -> None:
    f = np.floor(x)
    t = x - f
    i0 = int(f) - 1
    t2 = t * t
    t3 = t2 * t
    omt = 1.0 - t
    w[0] = omt * omt * omt / 6.0
    w[1] = (3.0 * t3 - 6.0 * t2 + 4.0) / 6.0
    w[2] = (-3.0 * t3 + 3.0 * t2 + 3.0 * t + 1.0) / 6.0
    w[3] = t3 / 6.0
    if i0 >= 0 and i0 + 3 < n:
        for k in range(4):
            idx[k] = i0 + k
    else:
        for k in range(4):
            idx[k] = _mirror(i0 + k, n)


@numba.njit(nogil=True, cache=True, fastmath=True, error_model="numpy")
def sample_gradient(coef: np.ndarray, points: np.ndarray, out: np.ndarray) -> None:
    """Gradient of a cubic B-spline at points, in intensity per voxel along each axis.

    Parameters
    ----------
    coef : numpy.ndarray
        float32 (nx, ny, nz) coefficients.
    points : numpy.ndarray
        float64 (n, 3) voxel coordinates.
    out : numpy.ndarray
        float64 (n, 3), filled with d/dx, d/dy, d/dz.
    """
    shape = coef.shape
    w = np.empty((3, 4))
    dw = np.empty((3, 4))
    idx = np.empty((3, 4), dtype=np.int64)
    for p in range(points.shape[0]):
        for d in range(3):
            x = points[p, d]
            _weights(x, shape[d], w[d], idx[d])
            t = x - np.floor(x)
            dw[d, 0] = -0.5 * (1.0 - t) * (1.0 - t)
            dw[d, 1] = 1.5 * t * t - 2.0 * t
            dw[d, 2] = -1.5 * t * t + t + 0.5
            dw[d, 3] = 0.5 * t * t
        gx = 0.0
        gy = 0.0
        gz = 0.0
        for a in range(4):
            for b in range(4):
                for c in range(4):
                    v = coef[idx[0, a], idx[1, b], idx[2, c]]
                    gx += dw[0, a] * w[1, b] * w[2, c] * v
                    gy += w[0, a] * dw[1, b] * w[2, c] * v
                    gz += w[0, a] * w[1, b] * dw[2, c] * v
        out[p, 0] = gx
        out[p, 1] = gy
        out[p, 2] = gz


def grid_points(shape: tuple[int, int, int]) -> np.ndarray:
    """Voxel coordinates of every voxel of a grid in C order, float64 (n, 3)."""
    return np.indices(shape, dtype=np.float64).reshape(3, -1).T.copy()


def resample(img: np.ndarray, mat: np.ndarray, points: np.ndarray | None = None) -> np.ndarray:
    """Resample a whole image: ``out[x] = img(mat @ x)`` with cubic B-splines.

    Parameters
    ----------
    img : numpy.ndarray
        Shape (nx, ny, nz).
    mat : numpy.ndarray
        Shape (4, 4) or (3, 4), output voxel -> input voxel coordinates.
    points : numpy.ndarray, optional
        ``grid_points(img.shape)``, when the caller resamples many images of one shape.

    Returns
    -------
    numpy.ndarray
        float32, same shape as ``img``.
    """
    coef = spline_coefficients(img)
    out = np.empty(img.size, dtype=np.float32)
    pts = grid_points(img.shape) if points is None else points
    sample(coef, np.ascontiguousarray(mat[:3], dtype=np.float64), pts, out)
    return out.reshape(img.shape)


@numba.njit(nogil=True, cache=True, error_model="numpy", boundscheck=False)
def sparse_blocks(w: np.ndarray, idx: np.ndarray, x: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """``out[u, c] = b[u] + sum_k w[u, k] * x[idx[u, k], c]``, summed in order of k.

    The portable kernel of :mod:`rtdecode.numerics.sparsedot`, and the reference its compiled
    kernels must match bit for bit: ``w`` (float32) and ``idx`` (int32) are in blocks of units,
    shape (blocks, k, lanes), unit ``u = block * lanes + lane``; ``x`` (n_inputs, columns),
    ``b`` (blocks * lanes,), ``out`` (blocks * lanes, columns). No fastmath: each product is
    rounded, then added, in order of k (the lanes of a block are summed side by side).
    """
    n_blocks, k, lanes = w.shape
    acc = np.empty(lanes, np.float32)
    for c in range(x.shape[1]):
        for blk in range(n_blocks):
            acc[:] = 0
            for j in range(k):
                for n in range(lanes):
                    acc[n] += w[blk, j, n] * x[idx[blk, j, n], c]
            for n in range(lanes):
                out[blk * lanes + n, c] = acc[n] + b[blk * lanes + n]


@numba.njit(nogil=True, cache=True, error_model="numpy", boundscheck=False)
def int8_scores(codes: np.ndarray, query: np.ndarray, out: np.ndarray) -> None:
    """``out[q, i] = sum_j codes[i, j] * query[q, j]`` in exact integer arithmetic.

    ``codes`` int8 (n, m), ``query`` int8 (r, m), ``out`` int32 (r, n). The portable kernel of
    :mod:`rtdecode.numerics.intdot`, and the reference its CPU-specific kernels must match. Each
    code row is read once for all queries: the bank is what costs memory bandwidth.
    """
    for i in range(codes.shape[0]):
        row = codes[i]
        for q in range(query.shape[0]):
            qq = query[q]
            acc = np.int32(0)
            for j in range(row.size):
                acc += np.int32(row[j]) * np.int32(qq[j])
            out[q, i] = acc


def warm_up() -> None:
    """Compile (or load from the disk cache) every kernel now, not on the first volume."""
    img = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    coef = spline_coefficients(img)
    pts = grid_points(img.shape)
    sample(coef, np.eye(4)[:3], pts, np.empty(len(pts), dtype=np.float32))
    sample_gradient(coef, pts, np.empty((len(pts), 3)))
    sparse_blocks(
        np.ones((1, 2, 2), np.float32),
        np.zeros((1, 2, 2), np.int32),
        np.ones((2, 1), np.float32),
        np.zeros(2, np.float32),
        np.empty((2, 1), np.float32),
    )
    int8_scores(np.ones((2, 3), np.int8), np.ones((1, 3), np.int8), np.empty((1, 2), np.int32))
