"""Simulated fMRI sessions: a GOD-like block design rendered through an encoding model.

A *subject* (phantom, feature bank, voxel tuning, category split) is fixed by ``subject_seed``;
each *session* (design order, images, noise, drift, head motion) by its own ``seed``. The
training and test sessions of one subject share the brain and the bank but not the categories.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.stats import gamma

from rtdecode.numerics.kernels import grid_points, resample
from rtdecode.numerics.rigid import rigid_matrix
from rtdecode.progress import progress
from rtdecode.sim.features import FeatureBank, load_feature_bank, make_feature_bank
from rtdecode.sim.latents import latent_targets
from rtdecode.sim.phantom import ROIS, Phantom, make_phantom

# Preferred DNN layer (0-based) of each ROI's voxels: lower areas follow lower layers.
_ROI_LAYER = {"V1": 0.3, "V2": 1.5, "V3": 2.5, "V4": 3.8, "LOC": 5.2, "FFA": 6.3, "PPA": 6.3}


@dataclass
class SimParams:
    """Everything that defines a simulated subject and session.

    Defaults are realistic rather than easy: 3 T EPI at 3 mm with brain tSNR about 60, 1-2 %
    task-driven change in the minority of voxels that are well tuned, head motion up to 2 mm / 2 deg.
    """

    shape: tuple[int, int, int] = (64, 64, 36)
    voxel_size_mm: float = 3.0
    tr_s: float = 3.0
    n_categories: int = 1000
    n_units: int = 200
    feature_bank: str = ""  # a features.npz of real DNN features (tools/extract_features.py); "" synthetic
    n_train_categories: int = 150
    n_test_categories: int = 50
    train_blocks_per_category: int = 1
    test_blocks_per_category: int = 1
    block_volumes: int = 3  # 9 s blocks at TR 3 s
    rest_volumes: int = 1
    baseline_volumes: int = 8  # 24 s of rest before the first block
    tail_volumes: int = 4
    tsnr: float = 60.0
    physio_fraction: float = 0.35  # share of noise variance that is AR(1) physiological noise
    ar1: float = 0.5
    tuned_fraction: float = 0.1
    tuned_change_pct: tuple[float, float] = (1.0, 2.0)
    weak_change_pct: tuple[float, float] = (0.1, 0.5)
    visual_on_pct: float = 0.5  # category-independent response of all visual voxels
    drift_pct: float = 1.0  # slow drift over the session
    max_translation_mm: float = 2.0
    max_rotation_deg: float = 2.0
    jump_rate_per_min: float = 0.5
    noiseless: bool = False
    motion: bool = True
    latents: bool = False  # also write diffusion-model targets per block (latents.npz)
    subject_seed: int = 0
    seed: int = 1
    kind: str = "train"


@dataclass
class Subject:
    """The fixed parts of a simulated subject."""

    phantom: Phantom
    bank: FeatureBank
    voxel_index: np.ndarray  # flat indices of VC voxels, shape (n_vc,)
    voxel_layer: np.ndarray  # layer index per VC voxel
    voxel_weights: np.ndarray  # shape (n_vc, n_units)
    voxel_gain_pct: np.ndarray  # tuning amplitude per VC voxel, percent
    response_norm: np.ndarray  # (mean, sd) of each voxel's raw response over the bank, (2, n_vc)
    train_categories: np.ndarray
    test_categories: np.ndarray


def make_subject(p: SimParams) -> Subject:
    """Build the subject fixed by ``p.subject_seed``."""
    rng = np.random.default_rng(p.subject_seed + 1000)
    phantom = make_phantom(p.shape, p.voxel_size_mm, seed=p.subject_seed)
    if p.feature_bank:
        bank = load_feature_bank(p.feature_bank)
        p = replace(
            p, n_categories=bank.n_categories, n_units=bank.category_features[bank.layers[0]].shape[1]
        )
    else:
        bank = make_feature_bank(p.n_categories, p.n_units, seed=p.subject_seed)
    vc = np.zeros(p.shape, dtype=bool)
    layer_centre = np.zeros(p.shape)
    for roi in ROIS:
        vc |= phantom.rois[roi]
        layer_centre[phantom.rois[roi]] = _ROI_LAYER[roi]
    idx = np.flatnonzero(vc)
    n_vc = idx.size
    layers = np.clip(np.rint(layer_centre.ravel()[idx] + rng.normal(0, 0.7, n_vc)), 0, 7).astype(int)
    weights = rng.standard_normal((n_vc, p.n_units)).astype(np.float32)
    tuned = rng.random(n_vc) < p.tuned_fraction
    gain = np.where(tuned, rng.uniform(*p.tuned_change_pct, n_vc), rng.uniform(*p.weak_change_pct, n_vc))
    norm = np.zeros((2, n_vc))
    for li, layer in enumerate(bank.layers):
        sel = layers == li
        raw = bank.category_features[layer] @ weights[sel].T
        norm[0, sel], norm[1, sel] = raw.mean(0), raw.std(0)
    order = np.random.default_rng(p.subject_seed + 2000).permutation(p.n_categories)
    n_tr, n_te = p.n_train_categories, p.n_test_categories
    if n_tr + n_te > p.n_categories:
        raise ValueError(f"{n_tr} training + {n_te} test categories exceed the bank's {p.n_categories}")
    return Subject(
        phantom,
        bank,
        idx,
        layers,
        weights,
        gain,
        norm,
        np.sort(order[:n_tr]),
        np.sort(order[n_tr : n_tr + n_te]),
    )


def canonical_hrf(dt_s: float, length_s: float = 32.0) -> np.ndarray:
    """SPM's canonical double-gamma HRF sampled every ``dt_s`` seconds, peak-normalised to 1."""
    t = np.arange(0.0, length_s, dt_s)
    h = gamma.pdf(t, 6) - gamma.pdf(t, 16) / 6.0
    return h / h.max()


def block_design(
    p: SimParams, rng: np.random.Generator, categories: np.ndarray, reps: int
) -> tuple[np.ndarray, int]:
    """Return the block order (category indices) and the number of volumes of the session."""
    order = np.concatenate([rng.permutation(categories) for _ in range(reps)])
    n_vols = p.baseline_volumes + len(order) * (p.block_volumes + p.rest_volumes) + p.tail_volumes
    return order, n_vols


def motion_trajectory(p: SimParams, n_vols: int, rng: np.random.Generator) -> np.ndarray:
    """Head motion per volume: smooth drift plus occasional jumps.

    Returns
    -------
    numpy.ndarray
        Array of shape (n_vols, 6): translations (mm) then rotations (deg) about x, y, z,
        within the configured maxima.
    """
    if not p.motion:
        return np.zeros((n_vols, 6))
    scale = np.array([p.max_translation_mm] * 3 + [p.max_rotation_deg] * 3) * rng.uniform(0.6, 1.0, 6)
    # Slow drift: a mean-reverting random walk (AR(1), rho 0.995) whose volume-to-volume steps
    # are 1.5 % of the range, so a still subject's framewise displacement is ~0.1-0.2 mm whatever
    # the session's length.
    steps = rng.standard_normal((n_vols, 6)) * 0.015
    drift = np.zeros((n_vols, 6))
    for t in range(1, n_vols):
        drift[t] = 0.995 * drift[t - 1] + steps[t]
    jumps = np.zeros((n_vols, 6))
    n_jumps = rng.poisson(p.jump_rate_per_min * n_vols * p.tr_s / 60.0)
    for t in rng.integers(p.baseline_volumes, n_vols, n_jumps):
        jumps[t:] += rng.normal(0, 0.25, 6)  # sudden shift that persists (head settles elsewhere)
    traj = (drift + jumps) * scale
    traj -= traj[0]  # the first volume is the reference position
    return np.clip(traj, -scale, scale)


def apply_motion(
    img: np.ndarray, affine: np.ndarray, params: np.ndarray, grid: np.ndarray | None = None
) -> np.ndarray:
    """Render an image as seen after the head moved by ``params`` (see :mod:`rtdecode.numerics.rigid`).

    ``grid`` is ``grid_points(img.shape)``, passed by callers that move many images.
    """
    # moved(y) = img(T^-1 y), interpolated with cubic B-splines (trilinear would blur it).
    t_vox = np.linalg.inv(affine) @ np.linalg.inv(rigid_matrix(params, affine, img.shape)) @ affine
    return resample(img, t_vox, grid)


def simulate_session(p: SimParams, subject: Subject | None = None) -> dict:
    """Render one session.

    Returns
    -------
    dict
        ``bold`` (int16 array (nx, ny, nz, n_vols)), ``events`` (list of dicts), ``motion``
        (array (n_vols, 6)), ``stimulus_features`` (dict layer -> (n_blocks, n_units)),
        ``signal_pct`` (array (n_vols, n_vc), the noiseless task signal of VC voxels),
        ``subject`` and, with ``p.latents``, ``latents`` (:func:`rtdecode.sim.latents.latent_targets`).
    """
    subject = subject or make_subject(p)
    rng = np.random.default_rng([p.subject_seed, p.seed])
    if p.kind == "train":
        cats, reps = subject.train_categories, p.train_blocks_per_category
    elif p.kind == "test":
        cats, reps = subject.test_categories, p.test_blocks_per_category
    else:
        raise ValueError(f"kind must be 'train' or 'test', got {p.kind!r}")
    order, n_vols = block_design(p, rng, cats, reps)
    feats = subject.bank.image_features(order, rng)
    # Response of each VC voxel to each block's image, in percent signal change.
    n_vc = subject.voxel_index.size
    resp = np.zeros((len(order), n_vc))
    for li, layer in enumerate(subject.bank.layers):
        sel = subject.voxel_layer == li
        raw = feats[layer] @ subject.voxel_weights[sel].T
        resp[:, sel] = (raw - subject.response_norm[0, sel]) / subject.response_norm[1, sel]
    resp = resp * subject.voxel_gain_pct + p.visual_on_pct
    # Convolve block boxcars with the HRF and sample at mid-acquisition of each volume.
    dt = 0.1
    hrf = canonical_hrf(dt)
    t_fine = np.arange(0, n_vols * p.tr_s, dt)
    onsets = p.baseline_volumes * p.tr_s + np.arange(len(order)) * (p.block_volumes + p.rest_volumes) * p.tr_s
    duration = p.block_volumes * p.tr_s
    design = np.zeros((t_fine.size, len(order)))
    for b, on in enumerate(onsets):
        design[(t_fine >= on) & (t_fine < on + duration), b] = 1.0
    conv = np.apply_along_axis(lambda c: np.convolve(c, hrf)[: t_fine.size], 0, design) * dt
    conv /= np.convolve(np.ones(int(duration / dt)), hrf).max() * dt  # plateau of a block = 1
    sample = np.clip(np.rint((np.arange(n_vols) * p.tr_s + p.tr_s / 2) / dt).astype(int), 0, t_fine.size - 1)
    signal_pct = conv[sample] @ resp  # (n_vols, n_vc)

    ph = subject.phantom
    base = ph.baseline.astype(np.float32)
    brain = ph.brain
    sigma = base[brain].mean() / p.tsnr  # noise of an average brain voxel
    motion = motion_trajectory(p, n_vols, rng)
    t_norm = np.linspace(-0.5, 0.5, n_vols)
    drift_map = (rng.normal(1.0, 0.5, brain.sum()) * p.drift_pct / 100.0).astype(np.float32)
    physio = np.zeros(brain.sum(), dtype=np.float32)
    grid = grid_points(p.shape)
    bold = np.empty((*p.shape, n_vols), dtype=np.int16)
    flat_vc = subject.voxel_index
    brain_pos = np.flatnonzero(brain)
    vc_in_brain = np.searchsorted(brain_pos, flat_vc)
    for k in progress(range(n_vols), f"simulating the {p.kind} session", unit="vol"):
        img = base.copy()
        mod = drift_map * np.float32(t_norm[k] + 0.3 * np.cos(np.pi * t_norm[k] * 2))
        mod[vc_in_brain] += signal_pct[k] / 100.0
        if not p.noiseless:
            innov = rng.standard_normal(brain.sum(), dtype=np.float32) * np.float32(np.sqrt(1 - p.ar1**2))
            physio = np.float32(p.ar1) * physio + innov
            mod += physio * np.float32(np.sqrt(p.physio_fraction) / p.tsnr)
        img.ravel()[brain_pos] *= 1.0 + mod
        if p.motion:
            img = apply_motion(img, ph.affine, motion[k], grid)
        if not p.noiseless:
            img += rng.standard_normal(p.shape, dtype=np.float32) * np.float32(
                sigma * np.sqrt(1 - p.physio_fraction)
            )
        bold[..., k] = np.clip(np.rint(img), -32768, 32767)
    events = [
        {
            "onset": float(on),
            "duration": duration,
            "trial_type": "stimulus",
            "category_index": int(c),
            "category_label": subject.bank.labels[c],
            "block": b,
        }
        for b, (on, c) in enumerate(zip(onsets, order))
    ]
    out = {
        "bold": bold,
        "events": events,
        "motion": motion,
        "stimulus_features": feats,
        "signal_pct": signal_pct.astype(np.float32),
        "subject": subject,
    }
    if p.latents:
        out["latents"] = latent_targets(feats, p.subject_seed)
    return out


def write_session(out_dir: str | Path, p: SimParams, sim: dict) -> Path:
    """Write a simulated session in a BIDS-like layout and return the directory.

    Layout: ``bold.nii`` (4-D, int16, TR in the header), ``events.tsv`` (BIDS columns onset,
    duration, trial_type plus category_index, category_label, block), ``rois/<ROI>.nii.gz``,
    ``features.npz`` (candidate bank: ``labels`` and ``feat_<layer>``), ``stimulus_features.npz``
    (``feat_<layer>`` per block), ``truth.npz`` (``motion``, ``signal_pct``, ``vc_index``) and
    ``session.json`` (all parameters).
    """
    out = Path(out_dir)
    (out / "rois").mkdir(parents=True, exist_ok=True)
    subject: Subject = sim["subject"]
    ph = subject.phantom
    img = nib.Nifti1Image(sim["bold"], ph.affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = p.tr_s
    nib.save(img, out / "bold.nii")
    for name, mask in ph.rois.items():
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), ph.affine), out / "rois" / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(ph.brain.astype(np.uint8), ph.affine), out / "brain_mask.nii.gz")
    with open(out / "events.tsv", "w") as f:
        cols = ["onset", "duration", "trial_type", "category_index", "category_label", "block"]
        f.write("\t".join(cols) + "\n")
        for ev in sim["events"]:
            f.write("\t".join(str(ev[c]) for c in cols) + "\n")
    bank = subject.bank
    np.savez(
        out / "features.npz",
        labels=np.array(bank.labels),
        superclass=bank.superclass,
        **{f"feat_{k}": v for k, v in bank.category_features.items()},
    )
    np.savez(out / "stimulus_features.npz", **{f"feat_{k}": v for k, v in sim["stimulus_features"].items()})
    if "latents" in sim:
        np.savez(out / "latents.npz", **sim["latents"])
    np.savez(
        out / "truth.npz", motion=sim["motion"], signal_pct=sim["signal_pct"], vc_index=subject.voxel_index
    )
    meta = asdict(p)
    meta["n_volumes"] = int(sim["bold"].shape[-1])
    meta["n_blocks"] = len(sim["events"])
    meta["train_categories"] = subject.train_categories.tolist()
    meta["test_categories"] = subject.test_categories.tolist()
    (out / "session.json").write_text(json.dumps(meta, indent=1))
    return out
