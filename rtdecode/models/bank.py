"""Candidate banks: the DNN features of every category a prediction is compared with.

Stored centred and L2-normalised per row, so that a dot product is a Pearson correlation; on
disk an NPZ with ``format``, ``version``, ``labels`` and ``feat/<layer>`` (``docs/formats.md``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rtdecode.errors import ModelFileError
from rtdecode.numerics.stats import normalise_rows

BANK_FORMAT = "rtdecode-candidates"
BANK_VERSION = 1


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
                raise ModelFileError(
                    f"layer {layer!r}: candidate features of shape {f.shape} do not match "
                    f"{len(self.labels)} labels"
                )
            self.features[layer] = np.ascontiguousarray(
                f if normalised else normalise_rows(f), dtype=np.float32
            )

    def without(self, labels: set[str] | list[str]) -> CandidateBank:
        """The bank without these categories (GOD leaves the training categories out)."""
        drop = set(labels)
        keep = [i for i, label in enumerate(self.labels) if label not in drop]
        return CandidateBank(
            [self.labels[i] for i in keep], {k: f[keep] for k, f in self.features.items()}, normalised=True
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
                    raise ModelFileError(
                        f"{path}: expected {BANK_FORMAT!r} version {BANK_VERSION}, got "
                        f"{str(z['format'])!r} version {int(z['version'])}"
                    )
                feats = {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith("feat/")}
                labels = [str(s) for s in z["labels"]]
        except (OSError, KeyError, ValueError) as err:
            if isinstance(err, ModelFileError):
                raise
            raise ModelFileError(f"cannot read candidate bank {str(path)!r}: {err}") from err
        return cls(labels, feats, normalised=True)
