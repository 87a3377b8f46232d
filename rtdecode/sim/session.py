"""Simulated fMRI sessions: a GOD-like block design rendered through an encoding model.

A *subject* (phantom, feature bank, voxel tuning, category split) is fixed by ``subject_seed``;
each *session* (design order, images, noise, drift, head motion) by its own ``seed``. The
training and test sessions of one subject share the brain and the bank but not the categories.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import nibabel as nib
import numpy as np

from rtdecode.numerics.kernels import grid_points, resample
from rtdecode.numerics.rigid import rigid_matrix
from rtdecode.progress import progress
from rtdecode.sim.imagery import imagery_signal
from rtdecode.sim.latents import latent_targets
from rtdecode.sim.phantom import tissue_masks
from rtdecode.sim.physio import PhysioNoise, simulate_recording, write_physio
from rtdecode.sim.subject import SimParams, Subject, boxcar_response, make_subject, voxel_responses


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
    """Render one session: perception blocks (``kind`` train or test) or imagery trials (imagery).

    Returns
    -------
    dict
        ``bold`` (int16 array (nx, ny, nz, n_vols), with ``p.echo_times_ms`` (…, n_echoes)),
        ``events`` (list of dicts), ``motion`` (array (n_vols, 6)), ``stimulus_features`` (dict
        layer -> (n_blocks, n_units): the shown images' features, or the imagined categories'),
        ``signal_pct`` (array (n_vols, n_vc), the
        noiseless task signal of VC voxels), ``spikes`` (array (n_vols,): the slice each volume's
        spike brightened, −1 none), ``subject``, with ``p.latents``, ``latents``
        (:func:`rtdecode.sim.latents.latent_targets`) and, with ``p.physio_pct``, ``physio``
        (:func:`rtdecode.sim.physio.simulate_recording`'s traces and the ``noise`` model).
    """
    subject = subject or make_subject(p)
    rng = np.random.default_rng([p.subject_seed, p.seed])
    if p.kind == "imagery":
        n_vols, signal_pct, events, feats = imagery_signal(p, subject, rng)
    elif p.kind in ("train", "test"):
        n_vols, signal_pct, events, feats = _perception_signal(p, subject, rng)
    else:
        raise ValueError(f"kind must be 'train', 'test' or 'imagery', got {p.kind!r}")
    physio = None
    if p.physio_pct > 0:  # from a generator of its own, so sessions without it are unchanged
        physio_rng = np.random.default_rng([p.subject_seed, p.seed, 11])
        physio = simulate_recording(n_vols * p.tr_s + 2 * p.tr_s, physio_rng)
        tissue = subject.phantom.tissue[subject.phantom.brain]
        physio["noise"] = PhysioNoise(physio, tissue, p.physio_pct, p.tr_s, physio_rng)
    bold, motion, spikes = _render(p, subject, signal_pct, n_vols, rng, physio)
    out = {
        "bold": bold,
        "events": events,
        "motion": motion,
        "spikes": spikes,
        "stimulus_features": feats,
        "signal_pct": signal_pct.astype(np.float32),
        "subject": subject,
    }
    if p.latents:
        out["latents"] = latent_targets(feats, p.subject_seed)
    if physio is not None:
        out["physio"] = physio
    return out


def _perception_signal(p: SimParams, subject: Subject, rng: np.random.Generator) -> tuple:
    if p.kind == "train":
        cats, reps = subject.train_categories, p.train_blocks_per_category
    else:
        cats, reps = subject.test_categories, p.test_blocks_per_category
    order, n_vols = block_design(p, rng, cats, reps)
    feats = subject.bank.image_features(order, rng)
    resp = voxel_responses(subject, feats) + p.visual_on_pct
    onsets = p.baseline_volumes * p.tr_s + np.arange(len(order)) * (p.block_volumes + p.rest_volumes) * p.tr_s
    duration = p.block_volumes * p.tr_s
    signal_pct = boxcar_response(onsets, duration, n_vols, p.tr_s) @ resp  # (n_vols, n_vc)
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
    return n_vols, signal_pct, events, feats


def _render(
    p: SimParams,
    subject: Subject,
    signal_pct: np.ndarray,
    n_vols: int,
    rng: np.random.Generator,
    recording: dict | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # The brain, its drift, physiological and thermal noise, head motion and spikes around the task signal.
    ph = subject.phantom
    base = ph.baseline.astype(np.float32)
    brain = ph.brain
    sigma = base[brain].mean() / p.tsnr  # noise of an average brain voxel
    motion = motion_trajectory(p, n_vols, rng)
    t_norm = np.linspace(-0.5, 0.5, n_vols)
    drift_map = (rng.normal(1.0, 0.5, brain.sum()) * p.drift_pct / 100.0).astype(np.float32)
    physio = np.zeros(brain.sum(), dtype=np.float32)
    grid = grid_points(p.shape)
    # Echoes: (decay relative to the reference echo time, BOLD sensitivity relative to it) each.
    echoes = [(np.float32(1.0), np.float32(1.0))]
    if p.echo_times_ms:
        t2s = np.vectorize(T2STAR_MS.get)(ph.tissue).astype(np.float32)
        echoes = [(np.exp(-(te - TE_REF_MS) / t2s), np.float32(te / TE_REF_MS)) for te in p.echo_times_ms]
    bold = np.empty((*p.shape, n_vols, len(echoes)), dtype=np.int16)
    flat_vc = subject.voxel_index
    brain_pos = np.flatnonzero(brain)
    vc_in_brain = np.searchsorted(brain_pos, flat_vc)
    times = p.slice_times_s
    # Where a slice is acquired later in the TR, its voxels sample the task signal later: linearly
    # towards the next volume's (the HRF-smoothed signal is close to linear over a TR).
    late = (
        None if times is None else (times[np.unravel_index(flat_vc, p.shape)[2]] / p.tr_s).astype(np.float32)
    )
    # Each brain voxel's acquisition time within its volume, for the physiological noise.
    z_brain = np.unravel_index(brain_pos, p.shape)[2]
    offset = np.zeros(brain_pos.size) if times is None else times[z_brain]
    spike_rng = np.random.default_rng([p.seed, 7])
    spikes = np.where(spike_rng.random(n_vols) < p.spike_rate, spike_rng.integers(0, p.shape[2], n_vols), -1)
    for k in progress(range(n_vols), f"simulating the {p.kind} session", unit="vol"):
        mod = drift_map * np.float32(t_norm[k] + 0.3 * np.cos(np.pi * t_norm[k] * 2))
        signal = signal_pct[k]
        if late is not None:
            signal = signal + late * (signal_pct[min(k + 1, n_vols - 1)] - signal)
        mod[vc_in_brain] += signal / 100.0
        if recording is not None:
            mod += recording["noise"].at(k * p.tr_s + offset).astype(np.float32)
        if not p.noiseless:
            innov = rng.standard_normal(brain.sum(), dtype=np.float32) * np.float32(np.sqrt(1 - p.ar1**2))
            physio = np.float32(p.ar1) * physio + innov
            mod += physio * np.float32(np.sqrt(p.physio_fraction) / p.tsnr)
        for e, (decay, gain) in enumerate(echoes):
            img = base * decay
            img.ravel()[brain_pos] *= 1.0 + mod * gain  # BOLD: a change of R2*, felt in proportion to TE
            if p.motion:
                img = apply_motion(img, ph.affine, motion[k], grid)
            if spikes[k] >= 0:
                img[:, :, spikes[k]] *= np.float32(1 + p.spike_pct / 100)
            if not p.noiseless:  # thermal noise: the same in every echo
                img += rng.standard_normal(p.shape, dtype=np.float32) * np.float32(
                    sigma * np.sqrt(1 - p.physio_fraction)
                )
            bold[..., k, e] = np.clip(np.rint(img), -32768, 32767)
    return (bold[..., 0] if not p.echo_times_ms else bold), motion, spikes


# Multi-echo: T2* per tissue at 3 T (ms; outside the brain, the scalp's), and the echo time at which
# the single-echo simulation's signal changes are defined.
T2STAR_MS = {"gm": 45.0, "wm": 40.0, "csf": 150.0, "": 30.0}
TE_REF_MS = 30.0


def write_session(out_dir: str | Path, p: SimParams, sim: dict) -> Path:
    """Write a simulated session in a BIDS-like layout and return the directory.

    Layout: ``bold.nii`` (4-D, int16, TR in the header; ``bold.json`` with its ``SliceTiming``
    when ``p.slice_order`` is set; with ``p.echo_times_ms``, ``echo-<k>_bold.nii`` and ``.json``
    instead), ``physio.tsv.gz`` and ``physio.json`` (BIDS, with ``p.physio_pct``),
    ``wm_mask.nii.gz`` and ``csf_mask.nii.gz``, ``events.tsv`` (BIDS columns onset, duration,
    trial_type plus category_index, category_label, block), ``rois/<ROI>.nii.gz``,
    ``features.npz`` (candidate bank: ``labels`` and ``feat_<layer>``), ``stimulus_features.npz``
    (``feat_<layer>`` per block), ``truth.npz`` (``motion``, ``signal_pct``, ``vc_index``,
    ``spikes``) and ``session.json`` (all parameters).
    """
    out = Path(out_dir)
    (out / "rois").mkdir(parents=True, exist_ok=True)
    subject: Subject = sim["subject"]
    ph = subject.phantom
    # One echo: bold.nii. Several: BIDS's echo-<k>_bold.nii, each with its EchoTime (s).
    for e, te in enumerate(p.echo_times_ms or [None]):
        img = nib.Nifti1Image(sim["bold"] if te is None else sim["bold"][..., e], ph.affine)
        img.header.set_xyzt_units("mm", "sec")
        img.header["pixdim"][4] = p.tr_s
        name = "bold" if te is None else f"echo-{e + 1}_bold"
        nib.save(img, out / f"{name}.nii")
        if te is not None:
            sidecar = {"EchoTime": te / 1000, "RepetitionTime": p.tr_s}
            if p.slice_times_s is not None:
                sidecar["SliceTiming"] = [round(float(t), 6) for t in p.slice_times_s]
            (out / f"{name}.json").write_text(json.dumps(sidecar))
    if p.slice_times_s is not None and not p.echo_times_ms:  # as dcm2niix writes it beside a series
        sidecar = {"RepetitionTime": p.tr_s, "SliceTiming": [round(float(t), 6) for t in p.slice_times_s]}
        (out / "bold.json").write_text(json.dumps(sidecar))
    if "physio" in sim:  # BIDS physiological recording, times relative to the first volume
        write_physio(out / "physio.tsv.gz", sim["physio"])
    for tissue, mask in tissue_masks(ph).items():  # nuisance masks, as a segmentation gives them
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), ph.affine), out / f"{tissue}_mask.nii.gz")
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
        **{f"feat_{k}": bank.to_raw(k, v) for k, v in bank.category_features.items()},
    )
    shown = sim["stimulus_features"]
    np.savez(out / "stimulus_features.npz", **{f"feat_{k}": bank.to_raw(k, v) for k, v in shown.items()})
    if "latents" in sim:
        np.savez(out / "latents.npz", **sim["latents"])
    np.savez(
        out / "truth.npz", motion=sim["motion"], signal_pct=sim["signal_pct"], vc_index=subject.voxel_index,
        spikes=sim["spikes"],
    )  # fmt: skip
    meta = asdict(p)
    meta["n_volumes"] = int(sim["bold"].shape[3])
    meta["n_blocks"] = len(sim["events"])
    meta["train_categories"] = subject.train_categories.tolist()
    meta["test_categories"] = subject.test_categories.tolist()
    (out / "session.json").write_text(json.dumps(meta, indent=1))
    return out
