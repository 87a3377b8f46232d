"""Real DNN features: EfficientNet-lite0 (ImageNet weights) on scikit-image's photographs."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rtdecode.models.bank import CandidateBank
from rtdecode.sim.session import SimParams, make_subject, simulate_session

for module in ("torch", "efficientnet_lite_pytorch", "skimage"):
    pytest.importorskip(module, reason="real CNN features need the torch extra (pip install torch==2.13.0)")
TOOL = Path(__file__).parents[2] / "tools" / "extract_features.py"
# ImageNet-1k class indices: 281-285 are the domestic cats (tabby, tiger cat, Persian, Siamese,
# Egyptian); 504 coffee mug, 967 espresso, 968 cup.
CATS = {281, 282, 283, 284, 285}
COFFEE = {504, 967, 968}


@pytest.fixture(scope="module")
def bank_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bank")
    cmd = [sys.executable, str(TOOL), "--skimage", "--out", str(out), "--n-units", "100", "--seed", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return out


def test_the_weights_are_real_imagenet_weights(bank_dir):
    top5 = json.loads((bank_dir / "features.json").read_text())["top5_imagenet_classes"]
    assert top5["chelsea/chelsea"][0] in CATS
    assert top5["coffee/coffee"][0] in COFFEE


def test_bank_layers_units_and_reproducible_sampling(bank_dir, tmp_path):
    meta = json.loads((bank_dir / "features.json").read_text())
    assert meta["layers"] == [f"stage{i}" for i in range(1, 8)] + ["fc"] and meta["seed"] == 3
    with np.load(bank_dir / "features.npz") as z:
        assert list(z["labels"]) == meta["categories"]
        shapes = {ly: z[f"feat_{ly}"].shape for ly in meta["layers"]}
        units = {ly: z[f"units_{ly}"] for ly in meta["layers"]}
        fc = z["feat_fc"]
    assert set(shapes.values()) == {(7, 100)}
    assert units["fc"].max() < 1000 and units["stage1"].max() >= 1000  # stage1 has 16 x 112 x 112 units
    # Same seed, same units and features; the bank ranks like the raw features.
    again = tmp_path / "again"
    cmd = [sys.executable, str(TOOL), "--skimage", "--out", str(again), "--n-units", "100", "--seed", "3"]
    assert subprocess.run(cmd, capture_output=True, timeout=600).returncode == 0
    with np.load(again / "features.npz") as z:
        np.testing.assert_array_equal(z["units_stage4"], units["stage4"])
        np.testing.assert_allclose(z["feat_fc"], fc, rtol=1e-5, atol=1e-5)
    bank = CandidateBank.load(bank_dir / "candidates.npz")
    assert bank.labels == meta["categories"]
    np.testing.assert_allclose(np.linalg.norm(bank.features["fc"], axis=1), 1.0, rtol=1e-5)


def test_the_simulator_runs_on_the_real_bank(bank_dir):
    p = SimParams(
        kind="train",
        feature_bank=str(bank_dir / "features.npz"),
        n_train_categories=4,
        n_test_categories=3,
        shape=(32, 32, 18),
        voxel_size_mm=6.0,
        motion=False,
    )
    subject = make_subject(p)
    assert subject.bank.labels[1] == "chelsea" and subject.bank.layers[-1] == "fc"
    sim = simulate_session(p, subject)
    labels = [e["category_label"] for e in sim["events"]]
    assert sorted(set(labels)) == sorted(subject.bank.labels[i] for i in subject.train_categories)
    # Each block's stimulus features are its category's (z-scored) features plus image noise.
    for layer in ("stage2", "fc"):
        for ev, f in zip(sim["events"], sim["stimulus_features"][layer]):
            c = subject.bank.category_features[layer][ev["category_index"]]
            assert np.corrcoef(f, c)[0, 1] > 0.9
