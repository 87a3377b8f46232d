"""A simulated subject: brain, feature bank, voxel tuning and category split, and its responses.

A *subject* (phantom, feature bank, voxel tuning, category split) is fixed by ``subject_seed``;
:mod:`rtdecode.sim.session` renders sessions of it, :mod:`rtdecode.sim.imagery` its imagery runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from rtdecode.numerics.response import canonical_hrf
from rtdecode.sim.features import FeatureBank, load_feature_bank, make_feature_bank
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
    test_labels: tuple[str, ...] = ()  # these categories are the test set (default: drawn at random)
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
    # Spikes (a scanner artefact: one axial slice of a volume brightened by spike_pct %), drawn per
    # volume with this chance from a generator of their own, so sessions without them are unchanged.
    spike_rate: float = 0.0
    spike_pct: float = 20.0
    # "ascending" or "interleaved": slices acquired one after another across the TR, so each slice
    # samples the task signal at its own time (written as the BIDS sidecar's SliceTiming); "" at once.
    slice_order: str = ""
    # Cardiac and respiratory noise (rtdecode.sim.physio): its SD in grey matter, %; 0 none. The
    # recordings are written as the BIDS physio.tsv.gz beside the series.
    physio_pct: float = 0.0
    # Multi-echo: the echo times (ms), e.g. (14, 30, 46); the task and noise signals are changes of
    # R2*, so echo e sees them times TE_e / 30 ms; thermal noise is the same in every echo.
    echo_times_ms: tuple[float, ...] = ()
    max_translation_mm: float = 2.0
    max_rotation_deg: float = 2.0
    jump_rate_per_min: float = 0.5
    noiseless: bool = False
    motion: bool = True
    latents: bool = False  # also write diffusion-model targets per block (latents.npz)
    # Imagery runs (kind "imagery", rtdecode.sim.imagery): GOD's trial and how imagery differs.
    imagery_cue_s: float = 3.0
    imagery_s: float = 15.0
    imagery_eval_s: float = 3.0
    imagery_rest_s: float = 3.0
    imagery_trials_per_category: int = 1
    imagery_gain: dict = field(  # share of the perception response kept in imagery, per ROI
        default_factory=lambda: {
            "V1": 0.1,
            "V2": 0.15,
            "V3": 0.2,
            "V4": 0.25,
            "LOC": 0.33,
            "FFA": 0.33,
            "PPA": 0.33,
        }  # fmt: skip
    )
    imagery_vividness_sd: float = 0.3  # trial-to-trial vividness: log-normal gain of this sd
    imagery_layer_delay_s: float = 6.0  # the lowest layer's features appear this much after the highest's
    subject_seed: int = 0
    seed: int = 1
    kind: str = "train"

    @property
    def slice_times_s(self) -> np.ndarray | None:
        """Each slice's acquisition time within the TR (``slice_order``), or None."""
        return slice_times(self.slice_order, self.shape[2], self.tr_s)


def slice_times(order: str, n_slices: int, tr_s: float) -> np.ndarray | None:
    """Acquisition time of each slice within the TR, evenly over it, or None for ``""`` (at once).

    ``order`` is ``ascending`` or ``interleaved`` (even slices first).
    """
    if order == "ascending":
        sequence = list(range(n_slices))
    elif order == "interleaved":
        sequence = [*range(0, n_slices, 2), *range(1, n_slices, 2)]
    elif order == "":
        return None
    else:
        raise ValueError(f"slice_order must be '', 'ascending' or 'interleaved': {order!r}")
    return np.array([sequence.index(z) for z in range(n_slices)]) * tr_s / n_slices


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
    is_test = np.zeros(order.size, dtype=bool)
    if p.test_labels:
        if missing := sorted(set(p.test_labels) - set(bank.labels)):
            raise ValueError(f"test_labels {missing} are not categories of the bank")
        is_test = np.isin(np.array(bank.labels)[order], list(p.test_labels))
    n_tr = p.n_train_categories
    n_te = int(is_test.sum()) or p.n_test_categories
    if n_tr + n_te > p.n_categories:
        raise ValueError(f"{n_tr} training + {n_te} test categories exceed the bank's {p.n_categories}")
    train = order[~is_test][:n_tr]
    test = order[is_test] if is_test.any() else order[n_tr : n_tr + n_te]
    return Subject(
        phantom,
        bank,
        idx,
        layers,
        weights,
        gain,
        norm,
        np.sort(train),
        np.sort(test),
    )


def voxel_responses(subject: Subject, feats: dict[str, np.ndarray]) -> np.ndarray:
    """Tuned response of every VC voxel to each feature row, in percent signal change.

    Returns
    -------
    numpy.ndarray
        Shape (n_rows, n_vc).
    """
    n_rows = len(next(iter(feats.values())))
    resp = np.zeros((n_rows, subject.voxel_index.size))
    for li, layer in enumerate(subject.bank.layers):
        sel = subject.voxel_layer == li
        raw = feats[layer] @ subject.voxel_weights[sel].T
        resp[:, sel] = (raw - subject.response_norm[0, sel]) / subject.response_norm[1, sel]
    return resp * subject.voxel_gain_pct


def boxcar_response(
    onsets_s: np.ndarray, duration_s: float, n_vols: int, tr_s: float, dt: float = 0.1
) -> np.ndarray:
    """HRF-convolved boxcars sampled at mid-acquisition of each volume; a block's plateau is 1.

    Returns
    -------
    numpy.ndarray
        Shape (n_vols, n_blocks).
    """
    hrf = canonical_hrf(dt)
    t_fine = np.arange(0, n_vols * tr_s, dt)
    design = np.zeros((t_fine.size, len(onsets_s)))
    for b, on in enumerate(onsets_s):
        design[(t_fine >= on) & (t_fine < on + duration_s), b] = 1.0
    conv = np.apply_along_axis(lambda c: np.convolve(c, hrf)[: t_fine.size], 0, design) * dt
    conv /= np.convolve(np.ones(int(round(duration_s / dt))), hrf).max() * dt
    sample = np.clip(np.rint((np.arange(n_vols) * tr_s + tr_s / 2) / dt).astype(int), 0, t_fine.size - 1)
    return conv[sample]
