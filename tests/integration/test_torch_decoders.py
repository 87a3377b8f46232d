"""MLP decoders in torch: trained by the CLI, run by the same pipeline, loaded weights-only."""

import hashlib
import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
from helpers import small_config

from rtdecode.apps.batch import decode_series
from rtdecode.errors import ModelFileError
from rtdecode.models.bank import CandidateBank
from rtdecode.models.bundle import load_bundle
from rtdecode.offline.evaluate import evaluate_session

torch = pytest.importorskip("torch", reason="MLP decoders need the torch extra (pip install torch==2.13.0)")
from rtdecode.models.mlp import MLPBundle  # noqa: E402  (imports torch)


@pytest.fixture(scope="module")
def mlp_bundle(experiment, tmp_path_factory):
    out = tmp_path_factory.mktemp("mlp") / "decoder"
    cfg = tmp_path_factory.mktemp("cfg") / "train.yaml"
    cfg.write_text("train:\n  rois: [V1, LOC, LVC, HVC, VC]\n")
    cmd = [
        sys.executable,
        "-m",
        "rtdecode",
        "train",
        "--model",
        "mlp",
        "--session",
        str(experiment / "train"),
    ]
    proc = subprocess.run(
        [*cmd, "--out", str(out), "-c", str(cfg)], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr
    return out


def test_mlp_decoders_identify_unseen_categories(experiment, mlp_bundle, tmp_path):
    bundle = load_bundle(mlp_bundle)
    assert isinstance(bundle, MLPBundle) and bundle.roi_names == ["V1", "LOC", "LVC", "HVC", "VC"]
    cfg = small_config()
    cfg.run.bundle = str(mlp_bundle)
    decode_series(cfg.run, experiment / "test" / "bold.nii", tmp_path / "mlp.h5")
    bank = CandidateBank.from_features(experiment / "test" / "features.npz")
    out = evaluate_session(tmp_path / "mlp.h5", experiment / "test", bank, 6.0)
    vc = np.mean(list(out["identification"]["VC"].values()))
    assert vc > 0.65, out["identification"]["VC"]  # ridge: 0.83, MLP 0.71 on these 80 blocks


def test_mlp_bundle_round_trip_gives_the_same_predictions(mlp_bundle, tmp_path):
    bundle = load_bundle(mlp_bundle)
    x = np.random.default_rng(0).standard_normal(bundle.n_voxels).astype(np.float32)
    again = MLPBundle.load(bundle.save(tmp_path / "copy"))
    np.testing.assert_array_equal(again.predict(x), bundle.predict(x))
    assert again.predict(x).shape == (5, sum(bundle.n_units))


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_weights_file_holding_objects_is_refused(mlp_bundle, tmp_path):
    bundle = load_bundle(mlp_bundle)
    d = bundle.save(tmp_path / "evil")
    torch.save({"V1.0.weight": Payload()}, d / "mlp.pt", pickle_module=pickle)
    # Keep the checksums consistent, so only weights_only stands between the file and pickle.
    meta = json.loads((d / "decoder.json").read_text())
    meta["pt_sha256"] = hashlib.sha256((d / "mlp.pt").read_bytes()).hexdigest()
    (d / "decoder.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="not a plain state dict"):
        MLPBundle.load(d)
