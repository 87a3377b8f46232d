"""Ridge decoders for high-dimensional targets, as Takagi & Nishimoto (2023).

Their two: a diffusion model's image latent (4 x 40 x 40 = 6,400 values, from early visual cortex)
and its text conditioning (77 x 768 = 59,136 values, from ventral cortex).

A ridge solution trained on ``n`` blocks has rank at most ``n``: ``W = Xz' (K + aI)^-1 Yz`` with
``K = Xz Xz'``. It is kept factored, ``W = L R`` with ``L`` (voxels x r) and ``R`` (r x outputs),
which is exact for ``r = n`` and costs ``voxels x r + r x outputs`` per volume instead of
``voxels x outputs``; a smaller ``r`` (truncated SVD) trades accuracy for time, with the error
measured by :meth:`LatentMap.error_against` (``tools/bench_latents.py``). float16 storage is not
offered: numpy has no float16 BLAS, and it measured 12-28 times slower than float32 here. The
penalty is chosen per target by K-fold cross-validation over blocks, all penalties sharing one
eigendecomposition per fold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rtdecode.models.files import read_model, write_model
from rtdecode.numerics.stats import mean_column_correlation, zscore

LATENTS_FORMAT = "rtdecode-latents"
LATENTS_VERSION = 1


@dataclass
class LatentMap:
    """``y = x[positions] @ left @ right + bias``, reshaped to ``shape``."""

    name: str
    shape: tuple[int, ...]
    positions: np.ndarray
    left: np.ndarray  # (n_positions, rank) float32
    right: np.ndarray  # (rank, n_outputs) float32
    bias: np.ndarray  # (n_outputs,) float32
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        # float64 factors (from another tool) would make every volume cast 300 MB: keep float32.
        self.left = np.ascontiguousarray(self.left, dtype=np.float32)
        self.right = np.ascontiguousarray(self.right, dtype=np.float32)
        self.bias = np.asarray(self.bias, dtype=np.float32)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The target for one preprocessed analysis vector, shape ``self.shape``."""
        return (x[self.positions] @ self.left @ self.right + self.bias).reshape(self.shape)

    def reduced(self, rank: int) -> LatentMap:
        """A faster map: the best rank-``rank`` approximation (SVD of the factored map)."""
        left, right = self.left, self.right
        if rank < left.shape[1]:
            # W = L R = (Ql Rl) R; the SVD of the small Rl R gives the best rank-r W.
            q, r_l = np.linalg.qr(left.astype(np.float64))
            u, s, vt = np.linalg.svd(r_l @ right, full_matrices=False)
            left = (q @ (u[:, :rank] * s[:rank])).astype(np.float32)
            right = vt[:rank].astype(np.float32)
        meta = dict(self.meta, rank=int(left.shape[1]))
        return LatentMap(self.name, self.shape, self.positions, left, right, self.bias, meta)

    def error_against(self, exact: LatentMap, x: np.ndarray) -> float:
        """Relative RMS error of this map's outputs against ``exact``'s over the rows of ``x``."""
        a = np.stack([self.predict(row).ravel() for row in x])
        b = np.stack([exact.predict(row).ravel() for row in x])
        return float(np.sqrt(np.mean((a - b) ** 2)) / np.sqrt(np.mean((b - b.mean(0)) ** 2)))


def _cv_penalty(
    xz: np.ndarray, yz: np.ndarray, alphas: list[float], folds: int, n_check: int, seed: int
) -> dict:
    rng = np.random.default_rng(seed)
    cols = rng.choice(yz.shape[1], min(n_check, yz.shape[1]), replace=False)
    fold_of = np.arange(xz.shape[0]) % folds
    rng.shuffle(fold_of)
    pred = np.zeros((len(alphas), xz.shape[0], cols.size))
    for k in range(folds):
        tr, te = fold_of != k, fold_of == k
        xt, xm, xs = zscore(xz[tr])
        yt, ym, ys = zscore(yz[tr][:, cols])
        s, u = np.linalg.eigh(xt @ xt.T)
        k_te = ((xz[te] - xm) / xs) @ xt.T
        uy = u.T @ yt
        for i, a in enumerate(alphas):
            pred[i][te] = ym + ys * (k_te @ (u @ (uy / (np.maximum(s, 0) + a)[:, None])))
    return {float(a): mean_column_correlation(pred[i], yz[:, cols]) for i, a in enumerate(alphas)}


def fit_latent_map(
    name: str,
    x_blocks: np.ndarray,
    targets: np.ndarray,
    shape: tuple[int, ...],
    positions: np.ndarray,
    alphas: list[float],
    folds: int = 4,
    n_check: int = 512,
    seed: int = 0,
) -> LatentMap:
    """Fit a ridge map from the voxels at ``positions`` to a high-dimensional target.

    Parameters
    ----------
    x_blocks : numpy.ndarray
        Shape (n_blocks, n_voxels): block-averaged preprocessed analysis vectors.
    targets : numpy.ndarray
        Shape (n_blocks, prod(shape)).
    alphas : list of float
        Candidate penalties (on z-scored data); the best by cross-validation is used.
    n_check : int
        Outputs (a seeded sample) on which the penalties are compared.
    """
    x = x_blocks[:, positions].astype(np.float64)
    y = targets.astype(np.float64)
    if x.shape[0] != y.shape[0] or y.shape[1] != int(np.prod(shape)):
        raise ValueError(f"{name}: {x.shape[0]} blocks of x, targets {y.shape}, shape {shape}")
    scores = _cv_penalty(x, y, alphas, folds, n_check, seed)
    alpha = max(scores, key=scores.get)
    xz, xm, xs = zscore(x)
    yz, ym, ys = zscore(y)
    s, u = np.linalg.eigh(xz @ xz.T)
    coef = u @ ((u.T @ yz) / (np.maximum(s, 0) + alpha)[:, None])  # (n, outputs) in z units
    # y = ym + ys * (((x - xm)/xs) @ xz.T @ coef): fold the scalings into left, right and bias.
    left = (xz / xs).T  # (voxels, n)
    right = coef * ys[None, :]
    bias = ym - (xm @ left) @ right
    meta = {"alpha": alpha, "cv_scores": scores, "n_blocks": int(x.shape[0]), "rank": int(left.shape[1])}
    return LatentMap(
        name,
        tuple(shape),
        positions,
        left.astype(np.float32),
        right.astype(np.float32),
        bias.astype(np.float32),
        meta,
    )


@dataclass
class LatentDecoders:
    """Several latent maps, saved as ``latents.npz`` + ``latents.json`` with checksums."""

    maps: dict[str, LatentMap]
    mask_sha256: str

    def predict(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every target for one preprocessed analysis vector."""
        return {name: m.predict(x) for name, m in self.maps.items()}

    def save(self, directory: str | Path) -> Path:
        """Write ``latents.npz`` and ``latents.json`` into ``directory``."""
        arrays = {}
        for n, m in self.maps.items():
            arrays |= {
                f"{n}/positions": m.positions,
                f"{n}/left": m.left,
                f"{n}/right": m.right,
                f"{n}/bias": m.bias,
            }
        meta = {
            "mask_sha256": self.mask_sha256,
            "maps": {n: {"shape": list(m.shape), "meta": m.meta} for n, m in self.maps.items()},
        }
        write_model(Path(directory) / "latents", LATENTS_FORMAT, LATENTS_VERSION, arrays, meta)
        return Path(directory)

    @classmethod
    def load(cls, directory: str | Path) -> LatentDecoders:
        """Load and verify decoders written by :meth:`save`.

        Raises
        ------
        ModelFileError
            If a file is missing or corrupt or the format is unknown.
        """
        meta, z = read_model(Path(directory) / "latents", LATENTS_FORMAT, LATENTS_VERSION)
        maps = {
            n: LatentMap(
                n,
                tuple(info["shape"]),
                z[f"{n}/positions"],
                z[f"{n}/left"],
                z[f"{n}/right"],
                z[f"{n}/bias"],
                info["meta"],
            )
            for n, info in meta["maps"].items()
        }
        return cls(maps, meta["mask_sha256"])
