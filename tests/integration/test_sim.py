import dataclasses
import json

import nibabel as nib
import numpy as np

from rtdecode.sim.features import make_feature_bank
from rtdecode.sim.phantom import COMPOSITES, ROIS, make_phantom
from rtdecode.sim.session import SimParams, make_subject, simulate_session
from rtdecode.sim.subject import canonical_hrf

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
