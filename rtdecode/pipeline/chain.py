"""The stage chain: slice timing -> motion -> denoise -> preprocess -> decode -> identify, per volume.

The live loop (:mod:`rtdecode.apps.session`) and the offline batch (training, ``rtdecode offline``) call
the same :meth:`Pipeline.process`, so streaming and offline results agree by construction.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from rtdecode.errors import VolumeError
from rtdecode.models.bundle import Decoder
from rtdecode.numerics.grid import match_grid, orientation_between, reorient, reoriented_shape
from rtdecode.pipeline.decoding import Decoding
from rtdecode.pipeline.denoise import Denoiser
from rtdecode.pipeline.motion import MotionCorrector, MotionEstimate
from rtdecode.pipeline.multiecho import EchoCombiner
from rtdecode.pipeline.physio import Physio
from rtdecode.pipeline.preprocess import Preprocessor
from rtdecode.pipeline.quality import Quality, QualityMonitor
from rtdecode.pipeline.ranking import Identifier
from rtdecode.pipeline.slicetiming import SliceTimer
from rtdecode.volume import NOT_REACHED, Stage, Volume, series_key, stamp

log = logging.getLogger(__name__)

MAX_ABS_VALUE = 1e15  # larger voxel values overflow float32 sums of squares in motion correction


@dataclass
class Result:
    """What the pipeline made of one volume.

    ``status`` is ``"ok"`` when features were produced (and ranked, by :meth:`Pipeline.decode_and_rank`),
    ``"baseline"`` while the baseline is being collected. Arrays are None where a stage did not run.
    """

    volume: Volume
    status: str
    motion: MotionEstimate | None = None
    values: np.ndarray | None = None  # motion-corrected (and denoised) analysis voxels, scanner units
    spikes: int | None = None  # analysis voxels the despiker replaced (None: despiking off)
    quality: Quality | None = None  # DVARS, global signal, tSNR, FIRMM's summary so far
    x: np.ndarray | None = None  # preprocessed analysis voxels, (n_voxels,)
    predictions: np.ndarray | None = None  # (n_rois, n_units_total)
    top_indices: np.ndarray | None = None  # (n_rois, n_layers, k)
    top_scores: np.ndarray | None = None
    dropped_before: int = 0  # volumes missing between the previous one and this
    series_index: int = 0  # how many series the pipeline had started when it took this volume


def sampled_index(mask: np.ndarray, denoiser: Denoiser | None) -> np.ndarray:
    """Flat grid indices a pipeline reads from each volume: ``mask``'s voxels, then the denoiser's."""
    index = np.flatnonzero(np.asarray(mask, dtype=bool))
    return index if denoiser is None else np.concatenate([index, denoiser.extra_index])


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
    max_gap_volumes : int
        A volume further ahead of the last one than this is refused by name (a corrupt index
        would otherwise make every later volume of the series look late).
    affine : numpy.ndarray or None
        Shape (4, 4): the grid ``mask`` is on (the decoders'). A series on the same grid in another
        voxel order is reoriented to it, exactly; one on any other grid is refused by name. None
        takes every series as it comes (training, whose grid is the session's own).
    decode_threads : int
        Threads decoding a volume or a backlog (:class:`~rtdecode.pipeline.decoding.Decoding`).
    """

    def __init__(
        self,
        mask: np.ndarray,
        preprocessor: Preprocessor,
        motion: MotionCorrector | None = None,
        decoder: Decoder | None = None,
        identifier: Identifier | None = None,
        max_gap_volumes: int = 10_000,
        affine: np.ndarray | None = None,
        denoiser: Denoiser | None = None,
        quality: QualityMonitor | None = None,
        slice_timer: SliceTimer | None = None,
        echoes: EchoCombiner | None = None,
        decode_threads: int = 1,
    ) -> None:
        self.mask = np.asarray(mask, dtype=bool)
        self.index = np.flatnonzero(self.mask)
        if decoder is not None and decoder.mask.shape != self.mask.shape:
            raise VolumeError(
                f"decoder mask {decoder.mask.shape} differs from pipeline mask {self.mask.shape}"
            )
        # The voxels read from each volume: the analysis voxels, then those the denoiser reads
        # besides (its tissue masks); a motion corrector must reslice exactly these.
        self.sampled_index = sampled_index(self.mask, denoiser)
        if motion is not None and not np.array_equal(motion.analysis_index, self.sampled_index):
            raise ValueError("the motion corrector must reslice sampled_index(mask, denoiser)")
        self.preprocessor = preprocessor
        self.denoiser = denoiser
        self.quality = quality
        self.slice_timer = slice_timer
        self.echoes = echoes or EchoCombiner()
        self.motion = motion
        self.decoder = decoder
        self.decoding = None if decoder is None else Decoding(decoder, decode_threads)
        self.identifier = identifier
        self.max_gap_volumes = max_gap_volumes
        self.affine = None if affine is None else np.asarray(affine, dtype=np.float64)
        self._reorient: np.ndarray | None = None  # how this series' volumes are put on the grid
        self._series: tuple[str, str] | None = None
        self._series_affine: np.ndarray | None = None
        self._last_seq = -1
        self._undo: tuple[int, np.ndarray | None] = (-1, None)  # what a volume that fails mid-way restores
        # The last volume of every series seen: a series the sender returns to goes on from there.
        self.last_seq_of: OrderedDict[str, int] = OrderedDict()
        self.series_started = 0  # series begun so far; later stages reset their state when it changes

    @property
    def physio(self) -> Physio | None:
        """The physiological recording the denoiser reads (None: no retroicor or rvt regressors)."""
        return None if self.denoiser is None else self.denoiser.physio

    def get_state(self) -> dict[str, np.ndarray] | None:
        """What a restarted pipeline needs to continue the series, as named arrays.

        Keys: ``series`` (JSON ``[session, series]``), ``last_seq``, ``series_affine``,
        ``pre/*`` (baseline and drift filter), ``slicetiming/*``, ``denoise/*`` (despiking and
        nuisance fit), ``quality/*``, ``motion/*`` (pose) and ``reference/image``,
        ``reference/affine`` (the motion reference, unchanged between volumes). None before the
        first volume.
        """
        if self._series is None:
            return None
        state = {"series": np.array(json.dumps(list(self._series))), "last_seq": np.array(self._last_seq)}
        state |= {f"pre/{k}": v for k, v in self.preprocessor.get_state().items()}
        for name, step in self._stateful():
            state |= {f"{name}/{k}": v for k, v in step.get_state().items()}
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
        self._reorient = None
        if self.affine is not None and affine is not None and not np.allclose(affine, self.affine, atol=1e-3):
            self._reorient = orientation_between(self._series_affine, self.affine)  # checked when it began
        self.preprocessor.set_state({k[4:]: v for k, v in state.items() if k.startswith("pre/")})
        for name, step in self._stateful():
            step.set_state({k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(f"{name}/")})
        motion = {k[7:]: v for k, v in state.items() if k.startswith("motion/")}
        if self.motion is not None and motion:
            self.motion.set_reference(state["reference/image"], state["reference/affine"])
            self.motion.set_state(motion)
        return {"session": session, "series": series, "last_seq": self._last_seq}

    def _stateful(self) -> list[tuple[str, EchoCombiner | SliceTimer | Denoiser | QualityMonitor]]:
        # The optional stages with a series' state, by their checkpoint prefix.
        steps = (
            ("echoes", self.echoes),
            ("slicetiming", self.slice_timer),
            ("denoise", self.denoiser),
            ("quality", self.quality),
        )
        return [(name, step) for name, step in steps if step is not None]

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
        if self._series is None or series_key(vol) != self._series[1]:
            if self._series is not None:
                log.info("new series %s/%s: preprocessing restarts", vol.session, vol.series)
                self.preprocessor.reset()
                for _, step in self._stateful():
                    step.reset()
                if self.motion is not None:
                    self.motion.new_series()
            self._series, self._series_affine = (vol.session, vol.series), None
            self._last_seq = self.last_seq_of.get(vol.series, -1)
            self.series_started += 1
        elif vol.session != self._series[0]:
            log.warning(
                "series %r continues under session %r (was %r)", vol.series, vol.session, self._series[0]
            )
            self._series = (vol.session, vol.series)
        # Motion correction realigns on the series' first grid: a moved grid would be read wrongly.
        if self._series_affine is not None and not np.allclose(vol.affine, self._series_affine, atol=1e-4):
            raise VolumeError(
                f"volume {vol.seq}: affine differs from the series' ({np.round(vol.affine, 3).tolist()} vs "
                f"{np.round(self._series_affine, 3).tolist()}); a new grid needs a new series"
            )
        shape = vol.data.shape[:3]  # a multi-echo volume's echoes lie along a fourth axis
        n_echoes = len(vol.echo_times_ms) if vol.echo_times_ms is not None else 1
        if vol.data.ndim != (3 if n_echoes == 1 else 4) or vol.data.shape[3:] not in ((), (n_echoes,)):
            raise VolumeError(
                f"volume {vol.seq}: shape {vol.data.shape} does not fit {n_echoes} echo(es) (echo_times_ms)"
            )
        if self._series_affine is None and self.affine is not None:
            # The series' first volume: its grid is matched to the decoders' once.
            self._reorient = match_grid(vol.affine, shape, self.affine, self.mask.shape, f"volume {vol.seq}")
        if reoriented_shape(shape, self._reorient) != self.mask.shape:
            raise VolumeError(
                f"volume {vol.seq}: shape {vol.data.shape} differs from expected {self.mask.shape}"
            )
        if vol.seq <= self._last_seq:
            raise VolumeError(
                f"volume {vol.seq} repeats or precedes volume {self._last_seq} of series {vol.series!r}"
            )
        jump = vol.seq - self._last_seq - 1
        if jump > self.max_gap_volumes:
            raise VolumeError(
                f"volume {vol.seq} jumps {jump} volumes ahead of volume {self._last_seq} of series "
                f"{vol.series!r} (more than run.max_gap_volumes, {self.max_gap_volumes})"
            )
        # Anywhere, not only in the mask: one NaN would poison the motion estimate and the warm start.
        if vol.data.dtype.kind == "f":
            peak = float(np.abs(vol.data).max())  # NaN if any voxel is NaN
            if not math.isfinite(peak):
                raise VolumeError(f"volume {vol.seq}: non-finite values (NaN or inf)")
            if peak > MAX_ABS_VALUE:
                raise VolumeError(
                    f"volume {vol.seq}: values up to {peak:.3g} overflow the arithmetic "
                    f"(|value| > {MAX_ABS_VALUE:g})"
                )
        if not vol.data.any():
            raise VolumeError(f"volume {vol.seq}: every voxel is zero (a failed reconstruction or transfer)")
        self._undo = (self._last_seq, self._series_affine)
        if self._series_affine is None:
            self._series_affine = np.array(vol.affine, dtype=np.float64)
        dropped = vol.seq - self._last_seq - 1
        self._last_seq = self.last_seq_of[vol.series] = vol.seq
        self.last_seq_of.move_to_end(vol.series)
        if len(self.last_seq_of) > 256:
            self.last_seq_of.popitem(last=False)
        return dropped

    def close(self) -> None:
        """Stop the threads of the stages that have them (motion, decoding, ranking); safe to call twice."""
        for stage in (self.motion, self.decoding, self.identifier):
            if stage is not None:
                stage.close()

    def process(self, vol: Volume) -> Result:
        """Run all stages on one volume, stamping each.

        Raises
        ------
        VolumeError
            If :meth:`check` refuses the volume; the pipeline state is unchanged then.
        """
        res = self.prepare(vol)
        self.decode_and_rank([res])
        return res

    def prepare(self, vol: Volume) -> Result:
        """Every stage up to the preprocessed voxels; :meth:`decode_and_rank` does the rest.

        Raises
        ------
        VolumeError
            If :meth:`check` refuses the volume; the pipeline state is unchanged then.
        """
        dropped = self.check(vol)
        if dropped:
            log.warning("series %r: %d volume(s) missing before volume %d", vol.series, dropped, vol.seq)
        try:
            return self._stages(
                vol, Result(vol, "baseline", dropped_before=dropped, series_index=self.series_started)
            )
        except Exception:
            # The volume was not processed: the sender may send it again.
            self._last_seq, self._series_affine = self._undo
            self.last_seq_of[vol.series] = self._last_seq
            raise

    def decode_and_rank(self, results: list[Result]) -> None:
        """Decode and rank :meth:`prepare`'s results, all volumes in one pass over the weights and the bank.

        Volumes that queued up while the decoder was busy are decoded and ranked together, at much
        less than the cost of each alone (the weights and the bank are read once); each gets the
        features and ranking it would get alone. Results without preprocessed voxels (the baseline)
        are left as they are.
        """
        todo = [r for r in results if r.x is not None]
        if self.decoder is None or not todo:
            return
        predictions = self.decoding.predict_many(np.stack([r.x for r in todo]))
        for res, pred in zip(todo, predictions):
            res.predictions, res.status = pred, "ok"
            stamp(res.volume.stamps, Stage.DECODED)
        if self.identifier is None:
            return
        ranked = self.identifier.rank_many([r.predictions for r in todo])
        for res, (indices, scores) in zip(todo, ranked):
            res.top_indices, res.top_scores = indices, scores
            stamp(res.volume.stamps, Stage.IDENTIFIED)

    def _slice_offsets(self, times: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
        # Each analysis voxel's acquisition time within its volume, from the slice times along
        # the third axis as received; None when they are unknown or corrected away.
        if times is None or self.slice_timer is not None:
            return None
        grid = np.broadcast_to(np.asarray(times, np.float64), shape)
        if self._reorient is not None:
            grid = reorient(grid, self._reorient)
        return grid.take(self.index)

    def _stages(self, vol: Volume, res: Result) -> Result:
        if vol.echo_times_ms is not None:  # first: everything after sees one image per volume
            data = self.echoes.update(vol.data, vol.echo_times_ms)
            vol = dataclasses.replace(vol, data=data, echo_times_ms=None)
            res.volume = vol
        slice_times, shape = vol.slice_times_s, vol.data.shape
        if self.slice_timer is not None:  # on the slices as acquired, before any reorientation
            data = self.slice_timer.update(vol.data, vol.slice_times_s, vol.seq, vol.tr_s)
            vol = dataclasses.replace(vol, data=data)
            res.volume = vol
        if self._reorient is not None:
            vol = dataclasses.replace(vol, data=reorient(vol.data, self._reorient), affine=self.affine)
            res.volume = vol
        if self.motion is not None:
            values, res.motion = self.motion.correct(vol.data, vol.affine)
        else:
            values = vol.data.take(self.sampled_index).astype(np.float32)
        stamp(vol.stamps, Stage.MOTION)
        values, extra = values[: self.index.size], values[self.index.size :]
        if self.denoiser is not None:  # timed with the preprocessing
            motion = None if res.motion is None else res.motion.params
            acquired = vol.stamps[Stage.ACQUIRED]
            denoised = self.denoiser.update(
                values,
                motion,
                vol.seq,
                vol.tr_s,
                extra,
                None if acquired == NOT_REACHED else acquired / 1e9,
                self._slice_offsets(slice_times, shape) if self.denoiser.physio is not None else None,
            )
            values, res.spikes = denoised.values, denoised.spikes
        res.values = values
        if self.quality is not None:
            fd, censored = (None, False) if res.motion is None else (res.motion.fd_mm, res.motion.censored)
            res.quality = self.quality.update(values, fd, censored, vol.tr_s)
        res.x = self.preprocessor.update(values, vol.tr_s)
        stamp(vol.stamps, Stage.PREPROCESSED)
        return res

    def process_series(self, volumes: Iterable[Volume]) -> Iterator[Result]:
        """Offline driver: process volumes in turn, skipping (and logging) refused ones."""
        for vol in volumes:
            stamp(vol.stamps, Stage.RECEIVED)
            try:
                yield self.process(vol)
            except VolumeError as err:
                log.warning("skipped: %s", err)
