"""Pipeline state on disk, so that a decoder killed mid-series resumes where it stopped.

A checkpoint directory holds ``reference.npz`` (the arrays named ``reference/*``: the motion
reference image and grid, written when the reference changes) and ``state.npz`` (everything
else: series, last volume index, pose, baseline statistics, drift filter), rewritten after every
volume by a temporary file and an atomic rename, so a kill leaves the previous or the new state,
never half of one. What the state holds is the pipeline's business
(:meth:`~rtdecode.pipeline.chain.Pipeline.get_state`); this module only keeps it. The state is
written just after a volume's results are published, so a kill in between reports that volume in
the gap although its results went out (over-reported, never silently lost). Feedback
normalisation and open blocks are not kept; they restart.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from rtdecode.errors import CheckpointError

FORMAT = "rtdecode-checkpoint"
VERSION = 2  # 2: the arrays are the pipeline's own names (Pipeline.get_state)
_STATIC = "reference/"  # arrays written once per reference, not after every volume


def _write_atomic(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    # No fsync: the state must survive a killed process (the page cache does), not a power cut.
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, meta=np.array(json.dumps({"format": FORMAT, "version": VERSION})), **arrays)
    os.replace(tmp, path)


def _read(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays.pop("meta")))
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: expected {FORMAT} version {VERSION}, got {meta.get('format')!r} "
            f"version {meta.get('version')!r}"
        )
    return arrays


class Checkpoint:
    """Keep a pipeline's state in ``directory`` after each volume, and give it back at start.

    Parameters
    ----------
    directory : str or Path
        Created when first needed.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._reference: np.ndarray | None = None  # the reference array last written

    def save(self, state: Mapping[str, np.ndarray] | None) -> None:
        """Write a state (nothing for None, a pipeline that has seen no volume)."""
        if state is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        static = {k: v for k, v in state.items() if k.startswith(_STATIC)}
        first = next(iter(static.values()), None)
        if first is not None and first is not self._reference:
            _write_atomic(self.directory / "reference.npz", static)
            self._reference = first
        _write_atomic(self.directory / "state.npz", {k: v for k, v in state.items() if k not in static})

    def restore(self) -> dict[str, np.ndarray] | None:
        """The last state saved, or None when there is none.

        Raises
        ------
        CheckpointError
            If the files are unreadable or of another format.
        """
        d = self.directory
        if not (d / "state.npz").exists():
            return None
        try:
            state = _read(d / "state.npz")
            if (d / "reference.npz").exists():
                reference = _read(d / "reference.npz")
                self._reference = next(iter(reference.values()), None)
                state |= reference
        except (OSError, KeyError, ValueError) as err:
            raise CheckpointError(f"cannot read the checkpoint in {str(d)!r}: {err}") from err
        return state
