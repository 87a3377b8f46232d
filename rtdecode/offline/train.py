"""Fitting decoders offline, as Horikawa & Kamitani (2017).

Volumes of a recorded training session go through the same motion and preprocessing stages as in
real time; the volumes of each stimulus block, shifted by the hemodynamic delay, are averaged;
voxels and features are z-scored with training statistics; for every unit the voxels most
correlated with it are selected; a ridge regression maps them to the unit. The normalisations
are then folded into one affine map per ROI.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import nibabel as nib
import numpy as np

from rtdecode.config import Config, RunConfig
from rtdecode.errors import ConfigError, DataError, EventsError
from rtdecode.io.nifti import iter_volumes, load_mask_on_grid, read_events, session_bold
from rtdecode.io.physio import physio_path_for, read_physio
from rtdecode.models.bank import CandidateBank
from rtdecode.models.classifier import LinearClassifier, fit_classifier
from rtdecode.models.files import mask_checksum
from rtdecode.models.latents import LatentDecoders, fit_latent_map
from rtdecode.models.linear import LinearBundle
from rtdecode.numerics.stats import zscore
from rtdecode.offline.ridge import choose_alpha, fit_selected_ridge
from rtdecode.pipeline.chain import Pipeline, sampled_index
from rtdecode.pipeline.denoise import Denoiser
from rtdecode.pipeline.motion import MotionCorrector
from rtdecode.pipeline.multiecho import EchoCombiner
from rtdecode.pipeline.preprocess import Preprocessor
from rtdecode.pipeline.slicetiming import SliceTimer
from rtdecode.progress import progress

log = logging.getLogger(__name__)


def block_average(
    x: np.ndarray, times_s: np.ndarray, onsets_s: np.ndarray, duration_s: float, hrf_shift_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """Average the samples of each block after shifting by the hemodynamic delay.

    Parameters
    ----------
    x : numpy.ndarray
        Shape (n_volumes, n_voxels); rows of NaN (baseline, skipped volumes) are ignored.
    times_s : numpy.ndarray
        Shape (n_volumes,), acquisition time of each volume from the start of the series.
    onsets_s : numpy.ndarray
        Shape (n_blocks,), block onsets from the start of the series.
    duration_s : float
        Block duration.
    hrf_shift_s : float
        Hemodynamic delay: a block's volumes are those acquired in
        ``[onset + shift, onset + duration + shift)``.

    Returns
    -------
    averages : numpy.ndarray
        Shape (n_kept, n_voxels).
    kept : numpy.ndarray
        Indices of the blocks that had at least one valid volume.
    """
    valid = np.isfinite(x).all(axis=1)
    rows, kept = [], []
    for b, on in enumerate(onsets_s):
        sel = valid & (times_s >= on + hrf_shift_s - 1e-6) & (times_s < on + duration_s + hrf_shift_s - 1e-6)
        if sel.any():
            rows.append(x[sel].mean(axis=0))
            kept.append(b)
    return np.array(rows), np.array(kept, dtype=int)


def fit_bundle(
    x_blocks: np.ndarray,
    y_blocks: dict[str, np.ndarray],
    mask: np.ndarray,
    affine: np.ndarray,
    rois: dict[str, np.ndarray],
    n_select: int | dict[str, int] = 500,
    alpha: float | list[float] = 100.0,
    meta: dict | None = None,
) -> LinearBundle:
    """Fit one decoder per ROI x layer and fold them into a :class:`LinearBundle`.

    Parameters
    ----------
    x_blocks : numpy.ndarray
        Shape (n_blocks, n_voxels): block-averaged preprocessed analysis voxels.
    y_blocks : dict of str to numpy.ndarray
        Per layer, shape (n_blocks, n_units): features of the stimulus of each block.
    mask : numpy.ndarray
        bool, the analysis mask (``n_voxels`` true voxels).
    affine : numpy.ndarray
        Shape (4, 4).
    rois : dict of str to numpy.ndarray
        Positions of each ROI's voxels within the analysis vector.
    n_select : int or dict of str to int
        Voxels per unit, overall or per ROI.
    alpha : float or list of float
        Ridge penalty, or candidate penalties to choose from by cross-validation per ROI and
        layer (:func:`choose_alpha`; the choices are stored in the bundle's metadata).
    meta : dict, optional
        Settings stored in the bundle.
    """
    if x_blocks.shape[0] < 3:
        raise DataError(f"need at least 3 training blocks, got {x_blocks.shape[0]}")
    layers = list(y_blocks)
    weights, intercepts, chosen = {}, {}, {}
    bar = progress(desc="fitting decoders", total=len(rois) * len(layers), unit="decoder")
    for roi, pos in rois.items():
        xz, xm, xs = zscore(x_blocks[:, pos])
        n_sel = n_select[roi] if isinstance(n_select, dict) else n_select
        w_roi, b_roi = [], []
        for layer in layers:
            yz, ym, ys = zscore(y_blocks[layer])
            a = alpha
            if isinstance(alpha, list):
                a, _ = choose_alpha(x_blocks[:, pos], y_blocks[layer], n_sel, alpha)
                chosen.setdefault(roi, {})[layer] = a
            w = fit_selected_ridge(xz, yz, n_sel, a)
            bar.update()
            # y = ym + ys * (((x - xm) / xs) @ w)  ==  x @ A + b
            a = (w / xs[:, None]) * ys[None, :]
            w_roi.append(a)
            b_roi.append(ym - xm @ a)
        weights[roi] = np.hstack(w_roi).astype(np.float32)
        intercepts[roi] = np.concatenate(b_roi).astype(np.float32)
        log.info("fitted %s: %d voxels x %d layers", roi, pos.size, len(layers))
    bar.close()
    n_units = [y_blocks[ly].shape[1] for ly in layers]
    meta = dict(meta or {}, n_select=n_select, alpha=chosen or alpha, n_blocks=int(x_blocks.shape[0]))
    return LinearBundle(mask, affine, rois, layers, n_units, weights, intercepts, meta)


def roi_positions(mask: np.ndarray, roi_masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Positions of each ROI's voxels within the C-ordered analysis vector of ``mask``."""
    lookup = np.full(mask.size, -1, dtype=np.int64)
    lookup[np.flatnonzero(mask)] = np.arange(int(mask.sum()))
    out = {}
    for name, m in roi_masks.items():
        if m.shape != mask.shape:
            raise DataError(f"ROI {name!r} has shape {m.shape}, the analysis mask {mask.shape}")
        out[name] = lookup[np.flatnonzero(m)]
    return out


def load_roi_masks(
    roi_dir: str | Path,
    composites: dict[str, list[str]],
    affine: np.ndarray,
    shape: tuple[int, ...],
) -> dict[str, np.ndarray]:
    """Load ``<roi_dir>/<ROI>.nii[.gz]`` masks on the session's grid and add the composites.

    A mask saved in another voxel order of the same grid (as SPM or dcm2niix may write it) is
    reoriented exactly; a mask on another grid is refused, naming both affines.
    """
    masks = {}
    for path in sorted(Path(roi_dir).glob("*.nii*")):
        masks[path.name.split(".")[0]] = load_mask_on_grid(path, affine, shape, f"ROI mask {path.name}")
    if not masks:
        raise DataError(f"no ROI masks (*.nii, *.nii.gz) in {str(roi_dir)!r}")
    for name, parts in composites.items():
        missing = [p for p in parts if p not in masks]
        if missing:
            raise DataError(f"composite ROI {name!r} needs {missing}, not found in {str(roi_dir)!r}")
        masks[name] = np.logical_or.reduce([masks[p] for p in parts])
    return masks


def session_tissue_masks(
    sdir: Path, rc: RunConfig, affine: np.ndarray, shape: tuple[int, ...]
) -> dict[str, np.ndarray]:
    """The session's white-matter and CSF masks, those present.

    ``wm_mask.nii.gz`` and ``csf_mask.nii.gz`` or ``run.preprocess.nuisance``'s paths; a missing
    one is an error only for the regressors that need it.
    """
    out = {}
    for name in ("wm", "csf"):
        path = getattr(rc.preprocess.nuisance, f"{name}_mask") or sdir / f"{name}_mask.nii.gz"
        if Path(path).exists():
            out[name] = load_mask_on_grid(path, affine, shape, f"the {name} mask")
    return out


def train_session(
    session_dir: str | Path, out_dir: str | Path, cfg: Config, model: str = "ridge"
) -> LinearBundle:
    """Train decoders on a recorded session and write the bundle and candidate bank.

    The session directory holds ``bold.nii``, ``events.tsv`` (with ``category_index``),
    ``rois/``, ``stimulus_features.npz`` (``feat_<layer>`` per block) and ``features.npz``
    (the candidate bank), as :func:`rtdecode.sim.session.write_session` writes them. The volumes
    go through the same motion and preprocessing stages (``cfg.run``) as in real time.

    Parameters
    ----------
    session_dir : str or Path
    out_dir : str or Path
        Receives ``decoder.npz``, ``decoder.json`` and ``candidates.npz``.
    cfg : Config

    Returns
    -------
    LinearBundle
    """
    sdir = Path(session_dir)
    tc, rc = cfg.train, cfg.run
    bold_path = session_bold(sdir)
    bold = nib.load(str(bold_path))
    masks = load_roi_masks(
        sdir / "rois", {k: list(v) for k, v in tc.composites.items()}, bold.affine, bold.shape[:3]
    )
    unknown = [r for r in tc.rois if r not in masks]
    if unknown:
        raise ConfigError(f"train.rois names {unknown}, not among the masks {sorted(masks)}")
    mask = np.logical_or.reduce([masks[r] for r in tc.rois])
    tissue = session_tissue_masks(sdir, rc, bold.affine, bold.shape[:3])
    try:
        denoiser = Denoiser.from_config(rc.preprocess, mask, bold.affine, tissue, rc.physio.window_s)
    except ValueError as err:
        raise ConfigError(f"run.preprocess.nuisance: {err}") from err
    if denoiser is not None and denoiser.physio is not None:
        rec = read_physio(rc.physio.file or physio_path_for(bold_path))
        denoiser.physio.add(rec["time"], rec["cardiac"], rec["respiratory"])
    motion = (
        MotionCorrector(sampled_index(mask, denoiser), rc.motion.n_reference, rc.motion.fd_threshold_mm)
        if rc.motion.enabled
        else None
    )
    pipe = Pipeline(
        mask,
        Preprocessor.from_config(rc.preprocess),
        motion,
        denoiser=denoiser,
        slice_timer=SliceTimer() if rc.preprocess.slice_timing else None,
        echoes=EchoCombiner(rc.preprocess.baseline_volumes),
    )
    rows, times, affine, tr = [], [], None, None
    n_censored = 0
    for res in pipe.process_series(iter_volumes(bold_path)):
        censored = tc.scrub_censored and res.motion is not None and res.motion.censored
        n_censored += bool(censored)
        usable = res.x is not None and not censored
        rows.append(res.x if usable else np.full(int(mask.sum()), np.nan, np.float32))
        times.append(res.volume.seq * res.volume.tr_s)
        affine, tr = res.volume.affine, res.volume.tr_s
    events = [e for e in read_events(sdir / "events.tsv") if e.get("trial_type", "stimulus") == "stimulus"]
    onsets = np.array([float(e["onset"]) for e in events])
    durations = {float(e["duration"]) for e in events}
    if len(durations) != 1:
        raise EventsError(f"{sdir / 'events.tsv'}: blocks of different durations {sorted(durations)}")
    x_blocks, kept = block_average(np.array(rows), np.array(times), onsets, durations.pop(), tc.hrf_shift_s)
    with np.load(sdir / "stimulus_features.npz", allow_pickle=False) as z:
        y_blocks = {k.removeprefix("feat_"): z[k][kept] for k in z.files}
    rois = roi_positions(mask, {r: masks[r] for r in tc.rois})
    meta = {
        "n_censored_volumes": n_censored,
        "session": str(sdir),
        "tr_s": tr,
        "hrf_shift_s": tc.hrf_shift_s,
        "preprocess": dataclasses.asdict(rc.preprocess),
        "motion": dataclasses.asdict(rc.motion),
    }
    # GOD: 500 voxels per unit for single ROIs, 1,000 for the composites (LVC, HVC, VC).
    n_select = {r: tc.n_voxels_composite if r in tc.composites else tc.n_voxels for r in tc.rois}
    alpha = [float(a) for a in tc.alphas] if tc.alphas else tc.alpha
    if model == "mlp":
        from rtdecode.models.mlp import fit_mlp_bundle

        bundle = fit_mlp_bundle(x_blocks, y_blocks, mask, affine, rois, meta=meta)
    elif model == "ridge":
        bundle = fit_bundle(x_blocks, y_blocks, mask, affine, rois, n_select, alpha, meta)
    else:
        raise ConfigError(f"model must be ridge or mlp, got {model!r}")
    out = bundle.save(out_dir)
    if motion is not None:
        # The grid the decoders were trained on: align a later session to it with
        # run.motion.reference when the head position differs between sessions.
        nib.save(nib.Nifti1Image(motion.reference_, motion.affine_), out / "reference.nii.gz")
    CandidateBank.from_features(sdir / "features.npz").save(out / "candidates.npz")
    for name, m in tissue.items():  # the nuisance masks travel with the bundle
        nib.save(nib.Nifti1Image(m.astype(np.uint8), affine), out / f"{name}_mask.nii.gz")
    if tc.latents.enabled:
        train_latents(sdir, x_blocks, kept, rois, mask, cfg).save(out / "latents")
    if tc.classifier.roi:
        labels = [events[b].get("category_label", "") for b in kept]
        clf = train_classifier(x_blocks, labels, mask, rois, cfg)
        clf.save(out / "classifier")
        log.info("classifier %s: cross-validated AUC %.2f", tc.classifier.roi, clf.meta["cv_auc"])
    return bundle


def train_latents(
    sdir: Path,
    x_blocks: np.ndarray,
    kept: np.ndarray,
    rois: dict[str, np.ndarray],
    mask: np.ndarray,
    cfg: Config,
) -> LatentDecoders:
    """Fit the latent maps of ``cfg.train.latents`` on ``<sdir>/latents.npz`` (one row per block)."""
    lc = cfg.train.latents
    path = sdir / "latents.npz"
    if not path.exists():
        raise ConfigError(f"train.latents is enabled but {path} does not exist")
    maps = {}
    with np.load(path, allow_pickle=False) as z:
        for name, roi in lc.sources.items():
            if name not in z.files or roi not in rois:
                raise ConfigError(
                    f"train.latents.sources: {name!r} from {roi!r} needs {path}[{name!r}] and the ROI"
                )
            target = z[name][kept]
            maps[name] = fit_latent_map(
                name,
                x_blocks,
                target.reshape(len(kept), -1),
                target.shape[1:],
                rois[roi],
                [float(a) for a in lc.alphas],
            )
            log.info("latent %s from %s: alpha %g", name, roi, maps[name].meta["alpha"])
    return LatentDecoders(maps, mask_checksum(mask))


def train_classifier(
    x_blocks: np.ndarray, labels: list[str], mask: np.ndarray, rois: dict[str, np.ndarray], cfg: Config
) -> LinearClassifier:
    """Fit the DecNef classifier of ``cfg.train.classifier`` on block-averaged patterns.

    The target class is the blocks whose category label matches the ``target`` regular expression.
    """
    cc = cfg.train.classifier
    if cc.roi not in rois:
        raise ConfigError(f"train.classifier.roi {cc.roi!r} is not among the trained ROIs {sorted(rois)}")
    is_target = np.array([re.search(cc.target, label) is not None for label in labels])
    try:
        return fit_classifier(x_blocks, is_target, rois[cc.roi], cc.roi, cc.target, mask_checksum(mask), cc.c)
    except ValueError as err:
        raise ConfigError(f"train.classifier: {err} (target {cc.target!r})") from err
