"""Decoder state on disk, so that a decoder killed mid-series resumes where it stopped.

A checkpoint directory holds ``reference.npz`` (the motion reference image and grid, written when
the reference is fixed) and ``state.npz`` (series, last volume index, pose, baseline statistics
and drift filter, rewritten after every volume by a temporary file and an atomic rename, so a kill
leaves the previous or the new state, never half of one). A restarted decoder loads both: the
next volume of the same series is processed exactly as if the decoder had never stopped, and
volumes lost with the killed process show as a gap. The state is written just after a volume's
results are published, so a kill in between reports that volume in the gap although its results
went out (over-reported, never silently lost). Feedback normalisation and open blocks are not
kept; they restart.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from rtdecode.errors import CheckpointError
from rtdecode.pipeline.chain import Pipeline

FORMAT = "rtdecode-checkpoint"
VERSION = 1


def _write_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    # No fsync: the state must survive a killed process (the page cache does), not a power cut.
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def _meta(**fields: object) -> np.ndarray:
    return np.array(json.dumps({"format": FORMAT, "version": VERSION, **fields}))


class Checkpoint:
    """Save a pipeline's state after each volume into ``directory``, and restore it at start.

    Parameters
    ----------
    directory : str or Path
        Created when first needed.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._reference: np.ndarray | None = None  # the reference image last written

    def save(self, pipe: Pipeline) -> None:
        """Write the pipeline's state after a volume (nothing before the first one)."""
        series, last = pipe.series_state()
        if series is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        mc = pipe.motion
        motion = mc.get_state() if mc is not None else None
        if motion is not None and mc.reference_ is not self._reference:
            _write_atomic(
                self.directory / "reference.npz",
                {"meta": _meta(), "image": mc.reference_, "affine": mc.affine_},
            )
            self._reference = mc.reference_
        arrays = {"meta": _meta(session=series[0], series=series[1], last_seq=last)}
        arrays |= {f"pre/{k}": v for k, v in pipe.preprocessor.get_state().items()}
        if pipe.series_affine is not None:
            arrays["series_affine"] = pipe.series_affine
        if motion is not None:
            arrays |= {f"motion/{k}": v for k, v in motion.items()}
        _write_atomic(self.directory / "state.npz", arrays)

    def restore(self, pipe: Pipeline) -> dict | None:
        """Load the checkpoint into a fresh pipeline; return its ``session``, ``series``, ``last_seq``.

        Returns None when there is no checkpoint.

        Raises
        ------
        CheckpointError
            If the files are unreadable, of another format, or do not fit the pipeline.
        """
        d = self.directory
        if not (d / "state.npz").exists():
            return None
        try:
            with np.load(d / "state.npz", allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                state = {k: z[k] for k in z.files}
            if meta.get("format") != FORMAT or meta.get("version") != VERSION:
                raise CheckpointError(f"{d / 'state.npz'}: not an {FORMAT} version {VERSION} file")
            pipe.preprocessor.set_state({k[4:]: v for k, v in state.items() if k.startswith("pre/")})
            motion = {k[7:]: v for k, v in state.items() if k.startswith("motion/")}
            if pipe.motion is not None and motion:
                with np.load(d / "reference.npz", allow_pickle=False) as z:
                    pipe.motion.set_reference(z["image"], z["affine"])
                pipe.motion.set_state(motion)
                self._reference = pipe.motion.reference_
            pipe.resume((meta["session"], meta["series"]), int(meta["last_seq"]), state.get("series_affine"))
        except (OSError, KeyError, ValueError) as err:
            raise CheckpointError(f"cannot restore the checkpoint in {str(d)!r}: {err}") from err
        return {"session": meta["session"], "series": meta["series"], "last_seq": int(meta["last_seq"])}
