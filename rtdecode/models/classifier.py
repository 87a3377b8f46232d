"""A linear classifier over one ROI's voxel pattern, for decoded neurofeedback (DecNef).

As in Shibata et al. (2011), a logistic regression trained on block-averaged patterns of a
training session gives, for each new volume (or block), the likelihood that the pattern belongs
to the target class; that likelihood is the feedback. Saved as NPZ + JSON with checksums, never
pickled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rtdecode.errors import VolumeError
from rtdecode.models.files import read_model, write_model

CLASSIFIER_FORMAT = "rtdecode-classifier"
CLASSIFIER_VERSION = 1


@dataclass
class LinearClassifier:
    """``p(target | x) = 1 / (1 + exp(-(w . x[positions] + b)))``.

    Parameters
    ----------
    roi : str
        The ROI whose voxels it reads.
    positions : numpy.ndarray
        int64, positions of those voxels in the analysis vector.
    weights : numpy.ndarray
        float64, shape (n_positions,).
    bias : float
    target : str
        What the target class is (the rule it was trained with).
    mask_sha256 : str
        Checksum of the analysis mask the positions refer to (:func:`rtdecode.models.files.mask_checksum`).
    meta : dict
        Training details (accuracy, number of blocks, ...).
    """

    roi: str
    positions: np.ndarray
    weights: np.ndarray
    bias: float
    target: str
    mask_sha256: str
    meta: dict = field(default_factory=dict)

    def probability(self, x: np.ndarray) -> float:
        """Likelihood of the target class for one preprocessed analysis vector."""
        if x.ndim != 1 or x.size <= int(self.positions.max(initial=-1)):
            raise VolumeError(f"classifier for {self.roi!r}: analysis vector of shape {x.shape} is too short")
        z = float(np.dot(x[self.positions], self.weights)) + self.bias
        return float(1.0 / (1.0 + np.exp(-np.clip(z, -50, 50))))

    def save(self, path: str | Path) -> Path:
        """Write ``<path>.npz`` and ``<path>.json``; return the JSON path."""
        meta = {
            "roi": self.roi,
            "bias": float(self.bias),
            "target": self.target,
            "mask_sha256": self.mask_sha256,
            "meta": self.meta,
        }
        arrays = {"positions": self.positions, "weights": self.weights}
        return write_model(Path(path).with_suffix(""), CLASSIFIER_FORMAT, CLASSIFIER_VERSION, arrays, meta)

    @classmethod
    def load(cls, path: str | Path) -> LinearClassifier:
        """Load and verify a classifier written by :meth:`save` (either file's path).

        Raises
        ------
        ModelFileError
            If a file is missing or corrupt, or the format is unknown.
        """
        meta, z = read_model(Path(path).with_suffix(""), CLASSIFIER_FORMAT, CLASSIFIER_VERSION)
        return cls(
            meta["roi"], z["positions"], z["weights"], meta["bias"], meta["target"], meta["mask_sha256"],
            meta["meta"],
        )  # fmt: skip


def fit_classifier(
    x_blocks: np.ndarray,
    is_target: np.ndarray,
    positions: np.ndarray,
    roi: str,
    target: str,
    mask_sha256: str,
    c: float = 1.0,
) -> LinearClassifier:
    """Fit an L2-penalised logistic regression on block-averaged patterns.

    Parameters
    ----------
    x_blocks : numpy.ndarray
        Shape (n_blocks, n_voxels): preprocessed analysis vectors, averaged per block.
    is_target : numpy.ndarray
        bool, shape (n_blocks,).
    positions : numpy.ndarray
        The ROI's positions in the analysis vector.
    roi, target, mask_sha256 : str
        Stored with the classifier.
    c : float
        Inverse penalty strength (scikit-learn's ``C``); 0 chooses it by cross-validation among
        ``1e-4 .. 10`` (the reported AUC is then nested: the choice is made inside each fold).

    Raises
    ------
    ValueError
        If either class has fewer than two blocks.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, cross_val_score

    is_target = np.asarray(is_target, dtype=bool)
    n_pos, n_neg = int(is_target.sum()), int((~is_target).sum())
    if min(n_pos, n_neg) < 2:
        raise ValueError(f"need at least two blocks of each class, got {n_pos} target and {n_neg} other")
    x = x_blocks[:, positions]
    folds = min(5, n_pos, n_neg)
    model = LogisticRegression(C=c or 1.0, class_weight="balanced", max_iter=2000)
    if c <= 0:
        model = GridSearchCV(model, {"C": np.logspace(-4, 1, 6)}, cv=folds, scoring="roc_auc")
    cv = cross_val_score(model, x, is_target, cv=folds, scoring="roc_auc")
    model.fit(x, is_target)
    if c <= 0:
        c, model = float(model.best_params_["C"]), model.best_estimator_
    meta = {
        "n_target_blocks": n_pos,
        "n_other_blocks": n_neg,
        "cv_auc": float(cv.mean()),
        "cv_folds": folds,
        "C": c,
    }
    return LinearClassifier(
        roi,
        positions,
        model.coef_[0].astype(np.float64),
        float(model.intercept_[0]),
        target,
        mask_sha256,
        meta,
    )
