"""Semantic neighbours: when the best candidates miss, are they at least in the right group.

Horikawa & Kamitani note that misidentified categories are often semantically close ("duck" →
other birds). Groups are the simulator's superclasses or a user's table (e.g. WordNet parents).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rtdecode.errors import EventsError
from rtdecode.models.bank import CandidateBank


def superclass_rates(
    scores: np.ndarray, true_index: np.ndarray, groups: np.ndarray, ks: tuple[int, ...] = (1, 5)
) -> dict[str, float]:
    """How often the best *other* candidates share the true category's group, against chance.

    For each sample the true category is set aside; of the ``k`` best remaining candidates, the
    share in the true category's group (superclass, WordNet parent) is averaged over samples.
    Chance is the share of the remaining candidates in that group.

    Parameters
    ----------
    scores : numpy.ndarray
        Shape (n_samples, n_candidates).
    true_index : numpy.ndarray
        Shape (n_samples,).
    groups : numpy.ndarray
        Group of each candidate, shape (n_candidates,).

    Returns
    -------
    dict
        ``top<k>_rate`` per k, ``chance`` and ``n``.
    """
    groups = np.asarray(groups)
    rates = {k: [] for k in ks}
    chance = []
    for row, t in zip(np.atleast_2d(scores), np.asarray(true_index)):
        same = groups == groups[t]
        same[t] = False
        others = np.delete(np.arange(row.size), t)
        order = others[np.argsort(-row[others], kind="stable")]
        for k in ks:
            rates[k].append(same[order[:k]].mean())
        chance.append(same.sum() / (row.size - 1))
    out = {f"top{k}_rate": float(np.mean(v)) for k, v in rates.items()}
    return {**out, "chance": float(np.mean(chance)), "n": len(chance)}


def session_groups(session_dir: str | Path, bank: CandidateBank) -> np.ndarray | None:
    """Each candidate's superclass from a simulated session's ``features.npz``, if it has one."""
    path = Path(session_dir) / "features.npz"
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as z:
        if "superclass" not in z.files:
            return None
        of = dict(zip((str(s) for s in z["labels"]), z["superclass"].tolist()))
    return np.array([of.get(label, -1 - i) for i, label in enumerate(bank.labels)])  # unknown: alone


def read_groups(path: str | Path, bank: CandidateBank) -> np.ndarray:
    """Each candidate's group from a table of ``label<TAB>group`` lines (e.g. WordNet parents).

    Raises
    ------
    EventsError
        If a line is malformed.
    """
    of = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip() and not line.startswith("#"):
            parts = line.split("\t")
            if len(parts) != 2:
                raise EventsError(f"{path}:{n}: expected 'label<TAB>group', got {line!r}")
            of[parts[0].strip()] = parts[1].strip()
    return np.array([of.get(label, f"\0{label}") for label in bank.labels], dtype=object)
