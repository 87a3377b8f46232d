import dataclasses
import json

import nibabel as nib
import numpy as np
import pytest
from helpers import small_params

from rtdecode.numerics.response import canonical_hrf
from rtdecode.sim.features import make_feature_bank
from rtdecode.sim.phantom import COMPOSITES, ROIS, make_phantom
from rtdecode.sim.session import SimParams, make_subject, simulate_session

TINY = SimParams(n_train_categories=10, n_test_categories=5, n_units=20, n_categories=100)


def test_phantom_rois_are_disjoint_nonempty_and_composites_are_unions():
    ph = make_phantom()
    total = np.zeros(ph.brain.shape, int)
    for name in ROIS:
        assert ph.rois[name].sum() > 100
        assert (ph.rois[name] <= ph.brain).all()
        total += ph.rois[name]
    assert total.max() == 1
    assert ph.roi_mask("VC").sum() == total.sum()
    assert ph.roi_mask("LVC").sum() == sum(ph.rois[r].sum() for r in COMPOSITES["LVC"])


def test_same_seed_same_session_other_seed_other_noise():
    a, b = simulate_session(TINY), simulate_session(TINY)
    np.testing.assert_array_equal(a["bold"], b["bold"])
    c = simulate_session(dataclasses.replace(TINY, seed=5))
    assert not np.array_equal(a["bold"], c["bold"])


def test_train_and_test_categories_are_disjoint():
    s = make_subject(TINY)
    assert not set(s.train_categories) & set(s.test_categories)
    test = simulate_session(dataclasses.replace(TINY, kind="test"), s)
    assert {e["category_index"] for e in test["events"]} == set(s.test_categories)


def test_temporal_snr_of_brain_voxels_is_as_configured():
    p = dataclasses.replace(
        TINY, motion=False, drift_pct=0.0, visual_on_pct=0.0, tuned_change_pct=(0, 0), weak_change_pct=(0, 0)
    )
    sim = simulate_session(p)
    brain = sim["subject"].phantom.brain
    ts = sim["bold"][brain].astype(float)
    tsnr = np.median(ts.mean(1) / ts.std(1, ddof=1))
    # median over voxels brighter and darker than average straddles the configured value
    assert 0.8 * p.tsnr < tsnr < 1.25 * p.tsnr


def test_motion_stays_within_the_configured_maxima_and_starts_at_zero():
    sim = simulate_session(dataclasses.replace(TINY, n_train_categories=40))
    m = sim["motion"]
    np.testing.assert_array_equal(m[0], 0)
    assert np.abs(m[:, :3]).max() <= TINY.max_translation_mm + 1e-9
    assert np.abs(m[:, 3:]).max() <= TINY.max_rotation_deg + 1e-9
    assert np.abs(m).max() > 0.3  # it does move


def test_higher_layers_are_more_categorical():
    bank = make_feature_bank(n_categories=300, n_units=50)
    rng = np.random.default_rng(0)
    ratios = []
    for layer in bank.layers:
        imgs = bank.image_features(np.arange(300), rng)[layer]
        between = bank.category_features[layer].var(0).mean()
        within = (imgs - bank.category_features[layer]).var(0).mean()
        ratios.append(between / within)
    assert all(b > a for a, b in zip(ratios, ratios[1:]))


def test_similar_categories_have_similar_features():
    bank = make_feature_bank(n_categories=300, n_units=50)
    f = bank.category_features["cnn8"]
    c = np.corrcoef(f - f.mean(0))
    same = bank.superclass[:, None] == bank.superclass[None, :]
    off = ~np.eye(300, dtype=bool)
    assert c[same & off].mean() > c[~same].mean() + 0.2


def test_hrf_peaks_near_five_seconds():
    h = canonical_hrf(0.1)
    assert 4.5 < np.argmax(h) * 0.1 < 5.5


def test_written_session_layout(experiment):
    d = experiment / "train"
    img = nib.load(d / "bold.nii")
    meta = json.loads((d / "session.json").read_text())
    assert img.shape[3] == meta["n_volumes"] and img.header.get_zooms()[3] == meta["tr_s"]
    header = (d / "events.tsv").read_text().splitlines()[0].split("\t")
    assert header[:3] == ["onset", "duration", "trial_type"]
    with np.load(d / "features.npz") as z:
        assert z["labels"].shape == (1000,) and z["feat_cnn1"].shape == (1000, 50)
    assert sorted(p.name for p in (d / "rois").iterdir()) == sorted(f"{r}.nii.gz" for r in ROIS)


def _rise_s(curve, tr):
    # Scan time at which a curve first reaches half its maximum (linear between volumes).
    half = curve.max() / 2
    k = int(np.argmax(curve >= half))
    return (k - 1 + (half - curve[k - 1]) / (curve[k] - curve[k - 1])) * tr


def test_imagery_trials_are_gods_and_the_signal_is_weaker_and_top_down():
    p = dataclasses.replace(TINY, noiseless=True, motion=False, kind="imagery", seed=5)
    subject = make_subject(p)
    sim = simulate_session(p, subject)
    ev = sim["events"]
    assert [e["trial_type"] for e in ev[:4]] == ["cue", "imagery", "cue", "imagery"]
    assert [e["duration"] for e in ev[:2]] == [3.0, 15.0] and ev[1]["onset"] == ev[0]["onset"] + 3.0
    assert ev[2]["onset"] - ev[0]["onset"] == 24.0  # cue, imagery, evaluation, rest
    assert {e["category_index"] for e in ev} == set(subject.test_categories.tolist())
    assert sim["bold"].shape[-1] == p.baseline_volumes + 5 * 8 + p.tail_volumes
    tuned = dataclasses.replace(p, visual_on_pct=0.0)  # the category-specific part only
    perception = simulate_session(dataclasses.replace(tuned, kind="test"), subject)["signal_pct"]
    imagery = simulate_session(tuned, subject)["signal_pct"]
    assert np.abs(imagery).mean() < 0.4 * np.abs(perception).mean()
    # Within a trial the highest layer's voxels respond first, the lowest layer's
    # imagery_layer_delay_s later.
    trial = np.abs(imagery[p.baseline_volumes : p.baseline_volumes + 9])
    hi, lo = trial[:, subject.voxel_layer == 7].mean(1), trial[:, subject.voxel_layer == 0].mean(1)
    assert _rise_s(lo, p.tr_s) - _rise_s(hi, p.tr_s) == pytest.approx(p.imagery_layer_delay_s, abs=p.tr_s / 2)


def test_simulated_spikes_are_recovered_by_despiking():
    """Spikes (a slice of a volume brightened) lower the voxels' correlation with the simulated
    task signal; the despiker gives it back, and costs the voxels without spikes almost nothing."""
    from rtdecode.pipeline.chain import Pipeline
    from rtdecode.pipeline.denoise import Denoiser, Despiker
    from rtdecode.pipeline.preprocess import Preprocessor
    from rtdecode.volume import Volume

    p = small_params("test", 3, spike_rate=0.15, spike_pct=10.0, motion=False)
    subject = make_subject(p)
    sim = simulate_session(p, subject)
    bold, spikes = sim["bold"], sim["spikes"]
    assert 5 <= (spikes >= 0).sum() <= 30
    mask = np.zeros(bold.shape[:3], bool)
    mask.ravel()[subject.voxel_index] = True
    truth = sim["signal_pct"][:, np.argsort(subject.voxel_index)]  # in the mask's (flat) order

    def values(denoiser):
        pipe = Pipeline(mask, Preprocessor(8), None, denoiser=denoiser)
        vols = (
            Volume(bold[..., k], subject.phantom.affine, k, p.tr_s, 0.0, "s", "r")
            for k in range(bold.shape[-1])
        )
        return np.array([r.values for r in pipe.process_series(vols)])

    def corr(a, b):  # mean over voxels of the correlation with the truth, after the baseline
        a, b = a[8:] - a[8:].mean(0), b[8:] - b[8:].mean(0)
        return float(np.mean((a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))))

    raw, clean = values(None), values(Denoiser(Despiker(4.0, 30.0, 8), None))
    z = np.unravel_index(np.flatnonzero(mask), mask.shape)[2]
    hit = np.isin(z, spikes[spikes >= 0])
    assert corr(clean[:, hit], truth[:, hit]) > corr(raw[:, hit], truth[:, hit]) + 0.02
    assert corr(clean[:, ~hit], truth[:, ~hit]) > corr(raw[:, ~hit], truth[:, ~hit]) - 0.01


def test_simulated_slice_timing_is_undone_by_the_correction():
    """Slices acquired across the TR sample the task signal late; slice-timing correction with the
    sidecar's times brings the voxels back to the volume's time, and wrong times do not."""
    from rtdecode.pipeline.chain import Pipeline
    from rtdecode.pipeline.preprocess import Preprocessor
    from rtdecode.pipeline.slicetiming import SliceTimer
    from rtdecode.volume import Volume

    p = small_params("test", 4, slice_order="interleaved", noiseless=True, motion=False, drift_pct=0.0)
    subject = make_subject(p)
    sim = simulate_session(p, subject)
    bold, times = sim["bold"], p.slice_times_s
    assert times.max() < p.tr_s and len(set(times)) == p.shape[2]
    mask = np.zeros(bold.shape[:3], bool)
    mask.ravel()[subject.voxel_index] = True
    truth = sim["signal_pct"][:, np.argsort(subject.voxel_index)]  # the signal at each volume's start
    base = subject.phantom.baseline.ravel()[np.flatnonzero(mask)]

    def error(slice_times):
        pipe = Pipeline(mask, Preprocessor(8), None, slice_timer=SliceTimer())
        vols = (
            Volume(bold[..., k], subject.phantom.affine, k, p.tr_s, 0.0, "s", "r", slice_times_s=slice_times)
            for k in range(bold.shape[-1])
        )
        pct = np.array([100 * (r.values / base - 1) for r in pipe.process_series(vols)])
        return float(np.sqrt(np.mean((pct[1:] - truth[1:]) ** 2)))

    uncorrected, corrected = error(None), error(tuple(times))
    wrong = error(tuple(p.tr_s - 1e-3 - times))  # the order reversed
    print(f"RMS error (%): uncorrected {uncorrected:.4f}, corrected {corrected:.4f}, wrong times {wrong:.4f}")
    assert corrected < 0.5 * uncorrected and corrected < 0.5 * wrong, (uncorrected, corrected, wrong)
