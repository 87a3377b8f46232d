"""Setting up a live session from its configuration: the pipeline, its extras, its endpoints.

Everything here reads files or opens sockets once, before the first volume; the per-volume step
(:mod:`rtdecode.apps.session`) only uses what it returns.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from rtdecode.config import RunConfig, is_loopback
from rtdecode.errors import BindError, ConfigError, FileError, VolumeError
from rtdecode.io.nifti import load_mask_on_grid, load_volume
from rtdecode.models.bank import CandidateBank
from rtdecode.models.bundle import Decoder, load_bundle
from rtdecode.models.files import mask_checksum
from rtdecode.models.latents import LatentDecoders
from rtdecode.numerics.grid import match_grid, reorient
from rtdecode.numerics.kernels import warm_up
from rtdecode.pipeline.chain import Pipeline, sampled_index
from rtdecode.pipeline.denoise import Denoiser
from rtdecode.pipeline.feedback import Feedback, Score
from rtdecode.pipeline.motion import MotionCorrector
from rtdecode.pipeline.multiecho import EchoCombiner
from rtdecode.pipeline.preprocess import Preprocessor
from rtdecode.pipeline.quality import QualityMonitor
from rtdecode.pipeline.ranking import Identifier
from rtdecode.pipeline.slicetiming import SliceTimer
from rtdecode.transport.zmq import CurveServer, HistoryServer, Publisher, Receiver
from rtdecode.wire.ports import Sink, VolumeSource

log = logging.getLogger(__name__)


def build_pipeline(cfg: RunConfig) -> Pipeline:
    """Load the bundle and candidates named in ``cfg`` and assemble the stages."""
    bundle = load_bundle(cfg.bundle)
    bank = CandidateBank.load(cfg.candidates or Path(cfg.bundle) / "candidates.npz")
    identifier = Identifier(bank, bundle.layer_slices, cfg.top_k, cfg.rank_precision, cfg.rank_threads)
    tissue = tissue_masks(cfg, bundle)
    try:
        denoiser = Denoiser.from_config(
            cfg.preprocess, bundle.mask, bundle.affine, tissue, cfg.physio.window_s
        )
    except ValueError as err:
        raise ConfigError(f"run.preprocess.nuisance: {err}") from err
    motion = None
    if cfg.motion.enabled:
        warm_up()
        motion = MotionCorrector(
            sampled_index(bundle.mask, denoiser),
            cfg.motion.n_reference,
            cfg.motion.fd_threshold_mm,
            threads=cfg.motion.threads,
        )
        if cfg.motion.reference:
            try:
                data, affine = load_volume(cfg.motion.reference)
                ornt = match_grid(affine, data.shape, bundle.affine, bundle.mask.shape, "the reference")
            except (FileError, VolumeError) as err:  # not an image, or not on the decoders' grid
                raise ConfigError(f"run.motion.reference: {cfg.motion.reference!r}: {err}") from err
            if ornt is not None:  # the same grid saved in another voxel order (dcm2niix, SPM)
                data, affine = reorient(data, ornt), bundle.affine
            motion.set_reference(data, affine)
    pre = Preprocessor.from_config(cfg.preprocess)
    quality = QualityMonitor(bundle.rois, cfg.expected_volumes)
    timer = SliceTimer() if cfg.preprocess.slice_timing else None
    return Pipeline(
        bundle.mask,
        pre,
        motion,
        bundle,
        identifier,
        cfg.max_gap_volumes,
        bundle.affine,
        denoiser,
        quality,
        timer,
        EchoCombiner(cfg.preprocess.baseline_volumes),
        cfg.decode_threads,
    )


def tissue_masks(cfg: RunConfig, bundle: Decoder) -> dict[str, np.ndarray]:
    """The white-matter and CSF masks the nuisance regressors read, on the decoders' grid.

    ``run.preprocess.nuisance.wm_mask`` and ``csf_mask``, or the bundle's ``wm_mask.nii.gz`` and
    ``csf_mask.nii.gz``; only those the regressors need are loaded.
    """
    nu = cfg.preprocess.nuisance
    masks = {}
    for name in nu.masks_needed:
        path = getattr(nu, f"{name}_mask") or Path(cfg.bundle) / f"{name}_mask.nii.gz"
        try:
            masks[name] = load_mask_on_grid(path, bundle.affine, bundle.mask.shape, f"the {name} mask")
        except (FileError, VolumeError) as err:
            raise ConfigError(f"run.preprocess.nuisance.{name}_mask: {str(path)!r}: {err}") from err
    return masks


def load_latents(cfg: RunConfig, pipe: Pipeline) -> LatentDecoders | None:
    """The latent decoders named by ``cfg.latents``, checked against the bundle's mask."""
    if not cfg.latents:
        return None
    lat = LatentDecoders.load(cfg.latents)
    if lat.mask_sha256 != mask_checksum(pipe.decoder.mask):
        raise ConfigError(f"run.latents {cfg.latents!r} was trained on another analysis mask than the bundle")
    return lat


def build_feedback(cfg: RunConfig, pipe: Pipeline) -> Feedback:
    """The feedback scores configured in ``cfg.feedback``.

    Raises
    ------
    ConfigError
        A score that does not fit the bundle, naming its ``run.feedback[i]`` key.
    """
    scores = []
    for i, spec in enumerate(cfg.feedback):
        try:
            scores.append(Score(spec, pipe.decoder, pipe.identifier.bank, cfg.bundle))
        except ConfigError as err:
            raise ConfigError(f"run.feedback[{i}]: {err}") from err
    return Feedback(scores)


def curve_server(cfg: RunConfig) -> CurveServer | None:
    """The CurveZMQ settings of the decoder's sockets, if enabled."""
    return CurveServer(cfg.curve.secret_key, cfg.curve.clients) if cfg.curve.enabled else None


def open_source(cfg: RunConfig) -> VolumeSource:
    """The volume input named by ``cfg.transport``."""
    if cfg.transport == "lsl":
        from rtdecode.transport.lsl import VolumeInlet

        return VolumeInlet(cfg.lsl.volume_stream)
    try:
        return Receiver(
            cfg.input.address,
            cfg.input.bind,
            curve=curve_server(cfg),
            max_message_bytes=int(cfg.input.max_message_mb * 2**20),
        )
    except BindError as err:
        raise BindError(f"run.input.address: {err}") from err


def open_publisher(cfg: RunConfig) -> Publisher:
    """The results' ZeroMQ PUB socket (``cfg.output``)."""
    try:
        return Publisher(cfg.output.address, cfg.output.bind, curve=curve_server(cfg))
    except BindError as err:
        raise BindError(f"run.output.address: {err}") from err


def open_history(cfg: RunConfig, kinds: tuple[str, ...]) -> HistoryServer | None:
    """The session so far on ``cfg.history`` (REP), or None when it is off."""
    if not cfg.history.address:
        return None
    try:
        return HistoryServer(cfg.history.address, kinds, curve=curve_server(cfg))
    except BindError as err:
        raise BindError(f"run.history.address: {err}") from err


def warn_if_exposed(cfg: RunConfig) -> None:
    """Log a warning at every start when a socket is bound beyond loopback without encryption."""
    for key, sock in (("run.input", cfg.input), ("run.output", cfg.output), ("run.history", cfg.history)):
        if sock.address and sock.bind and not is_loopback(sock.address) and not cfg.curve.enabled:
            log.warning(
                "%s.address %s is reachable from the network without encryption "
                "(run.allow_insecure_network: true); anyone on it can send volumes or read results",
                key,
                sock.address,
            )


def open_lsl_outputs(cfg: RunConfig, pipe: Pipeline, feedback: Feedback) -> Sink:
    """LSL outlets for every result (``cfg.lsl.outputs``)."""
    from rtdecode.transport.lsl_outlets import LslPublisher

    dec = pipe.decoder
    return LslPublisher(
        dec.roi_names,
        dec.layers,
        dec.n_units,
        pipe.identifier.bank.labels,
        cfg.top_k,
        feedback.names,
        cfg.lsl.prefix,
    )
