"""The stage chain: motion -> preprocess -> decode -> identify, for one volume at a time.

The live loop (:mod:`rtdecode.apps.session`) and the offline batch (training, ``rtdecode offline``) call
the same :meth:`Pipeline.process`, so streaming and offline results agree by construction.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from rtdecode.errors import VolumeError
from rtdecode.models.bundle import Decoder
from rtdecode.pipeline.motion import MotionCorrector, MotionEstimate
from rtdecode.pipeline.preprocess import Preprocessor
from rtdecode.pipeline.ranking import Identifier
from rtdecode.volume import Stage, Volume, series_key, stamp

log = logging.getLogger(__name__)


@dataclass
class Result:
    """What the pipeline made of one volume.

    ``status`` is ``"ok"`` when features and a ranking were produced, ``"baseline"`` while the
    baseline is being collected. Arrays are None where a stage did not run.
    """

    volume: Volume
    status: str
    motion: MotionEstimate | None = None
    values: np.ndarray | None = None  # motion-corrected analysis voxels, scanner units, (n_voxels,)
    x: np.ndarray | None = None  # preprocessed analysis voxels, (n_voxels,)
    predictions: np.ndarray | None = None  # (n_rois, n_units_total)
    top_indices: np.ndarray | None = None  # (n_rois, n_layers, k)
    top_scores: np.ndarray | None = None
    dropped_before: int = 0  # volumes missing between the previous one and this
    series_index: int = 0  # how many series the pipeline had started when it took this volume


class Pipeline:
    """Process volumes of a series in order.

    Parameters
    ----------
    mask : numpy.ndarray
        bool, shape (nx, ny, nz): the analysis voxels.
    preprocessor : Preprocessor
    motion : MotionCorrector or None
        None switches motion correction off (the analysis voxels are read as they are).
    decoder : Decoder or None
        None stops after preprocessing (as training does).
    identifier : Identifier or None
    """

    def __init__(
        self,
        mask: np.ndarray,
        preprocessor: Preprocessor,
        motion: MotionCorrector | None = None,
        decoder: Decoder | None = None,
        identifier: Identifier | None = None,
    ) -> None:
        self.mask = np.asarray(mask, dtype=bool)
        self.index = np.flatnonzero(self.mask)
        if decoder is not None and decoder.mask.shape != self.mask.shape:
            raise VolumeError(
                f"decoder mask {decoder.mask.shape} differs from pipeline mask {self.mask.shape}"
            )
        self.preprocessor = preprocessor
        self.motion = motion
        self.decoder = decoder
        self.identifier = identifier
        self._series: tuple[str, str] | None = None
        self._series_affine: np.ndarray | None = None
        self._last_seq = -1
        self.series_started = 0  # series begun so far; later stages reset their state when it changes

    def get_state(self) -> dict[str, np.ndarray] | None:
        """What a restarted pipeline needs to continue the series, as named arrays.

        Keys: ``series`` (JSON ``[session, series]``), ``last_seq``, ``series_affine``,
        ``pre/*`` (baseline and drift filter), ``motion/*`` (pose) and ``reference/image``,
        ``reference/affine`` (the motion reference, unchanged between volumes). None before the
        first volume.
        """
        if self._series is None:
            return None
        state = {"series": np.array(json.dumps(list(self._series))), "last_seq": np.array(self._last_seq)}
        state |= {f"pre/{k}": v for k, v in self.preprocessor.get_state().items()}
        if self._series_affine is not None:
            state["series_affine"] = self._series_affine
        motion = self.motion.get_state() if self.motion is not None else None
        if motion is not None:
            state |= {f"motion/{k}": v for k, v in motion.items()}
            state["reference/image"], state["reference/affine"] = self.motion.reference_, self.motion.affine_
        return state

    def set_state(self, state: dict[str, np.ndarray]) -> dict:
        """Continue from :meth:`get_state`'s arrays; return the ``session``, ``series`` and ``last_seq``.

        Raises
        ------
        KeyError, ValueError
            The arrays are not a pipeline state or do not fit this pipeline.
        """
        session, series = json.loads(str(state["series"]))
        self._series, self._last_seq = (session, series), int(state["last_seq"])
        affine = state.get("series_affine")
        self._series_affine = None if affine is None else np.asarray(affine, dtype=np.float64)
        self.preprocessor.set_state({k[4:]: v for k, v in state.items() if k.startswith("pre/")})
        motion = {k[7:]: v for k, v in state.items() if k.startswith("motion/")}
        if self.motion is not None and motion:
            self.motion.set_reference(state["reference/image"], state["reference/affine"])
            self.motion.set_state(motion)
        return {"session": session, "series": series, "last_seq": self._last_seq}

    def check(self, vol: Volume) -> int:
        """Cheap per-volume checks; return how many volumes were dropped before this one.

        Raises
        ------
        VolumeError
            Wrong shape, an affine other than the series', a repeated or out-of-order index,
            non-finite values, or no signal at all (every voxel zero).
        """
        if vol.data.dtype.kind not in "iuf":
            raise VolumeError(
                f"volume {vol.seq}: voxel type {vol.data.dtype} is not supported (real magnitudes)"
            )
        if vol.data.shape != self.mask.shape:
            raise VolumeError(
                f"volume {vol.seq}: shape {vol.data.shape} differs from expected {self.mask.shape}"
            )
        key = series_key(vol)
        if key != self._series:
            if self._series is not None:
                log.info("new series %s/%s: preprocessing restarts", *key)
                self.preprocessor.reset()
            self._series, self._last_seq, self._series_affine = key, -1, None
            self.series_started += 1
        # Motion correction realigns on the series' first grid: a moved grid would be read wrongly.
        if self._series_affine is not None and not np.allclose(vol.affine, self._series_affine, atol=1e-4):
            raise VolumeError(
                f"volume {vol.seq}: affine differs from the series' ({np.round(vol.affine, 3).tolist()} vs "
                f"{np.round(self._series_affine, 3).tolist()}); a new grid needs a new series"
            )
        if vol.seq <= self._last_seq:
            raise VolumeError(
                f"volume {vol.seq} repeats or precedes volume {self._last_seq} of series {vol.series!r}"
            )
        # Anywhere, not only in the mask: one NaN would poison the motion estimate and the warm start.
        if vol.data.dtype.kind == "f" and not np.isfinite(vol.data).all():
            raise VolumeError(f"volume {vol.seq}: non-finite values (NaN or inf)")
        if not vol.data.any():
            raise VolumeError(f"volume {vol.seq}: every voxel is zero (a failed reconstruction or transfer)")
        if self._series_affine is None:
            self._series_affine = np.array(vol.affine, dtype=np.float64)
        dropped = vol.seq - self._last_seq - 1
        self._last_seq = vol.seq
        return dropped

    def process(self, vol: Volume) -> Result:
        """Run all stages on one volume, stamping each.

        Raises
        ------
        VolumeError
            If :meth:`check` refuses the volume; the pipeline state is unchanged then.
        """
        dropped = self.check(vol)
        if dropped:
            log.warning("series %r: %d volume(s) missing before volume %d", vol.series, dropped, vol.seq)
        res = Result(volume=vol, status="baseline", dropped_before=dropped, series_index=self.series_started)
        if self.motion is not None:
            values, res.motion = self.motion.correct(vol.data, vol.affine)
        else:
            values = vol.data.take(self.index).astype(np.float32)
        stamp(vol.stamps, Stage.MOTION)
        res.values = values
        res.x = self.preprocessor.update(values, vol.tr_s)
        stamp(vol.stamps, Stage.PREPROCESSED)
        if res.x is None or self.decoder is None:
            return res
        res.predictions = self.decoder.predict(res.x)
        stamp(vol.stamps, Stage.DECODED)
        if self.identifier is not None:
            res.top_indices, res.top_scores = self.identifier.rank(res.predictions)
            stamp(vol.stamps, Stage.IDENTIFIED)
        res.status = "ok"
        return res

    def process_series(self, volumes: Iterable[Volume]) -> Iterator[Result]:
        """Offline driver: process volumes in turn, skipping (and logging) refused ones."""
        for vol in volumes:
            stamp(vol.stamps, Stage.RECEIVED)
            try:
                yield self.process(vol)
            except VolumeError as err:
                log.warning("skipped: %s", err)
