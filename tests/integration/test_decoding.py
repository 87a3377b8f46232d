"""Decoding checked against the simulator's ground truth (offline driver of the same pipeline)."""

import dataclasses

import numpy as np
from helpers import small_config
from scipy import stats

from rtdecode.apps.setup import build_pipeline
from rtdecode.io.nifti import iter_volumes, read_events
from rtdecode.models.bank import CandidateBank
from rtdecode.numerics.stats import correlations
from rtdecode.offline.evaluate import identification_table
from rtdecode.offline.train import block_average
from rtdecode.pipeline.ranking import pairwise_identification


def decode_offline(root, motion=True, reference=""):
    cfg = small_config().run
    cfg = dataclasses.replace(
        cfg,
        bundle=str(root / "decoder"),
        motion=dataclasses.replace(cfg.motion, enabled=motion, reference=reference),
    )
    pipe = build_pipeline(cfg)
    results = list(pipe.process_series(iter_volumes(root / "test" / "bold.nii")))
    dec = pipe.decoder
    feats = {}
    for i, roi in enumerate(dec.roi_names):
        for layer, sl in dec.layer_slices.items():
            feats[(roi, layer)] = np.array(
                [
                    r.predictions[i, sl] if r.predictions is not None else np.full(sl.stop - sl.start, np.nan)
                    for r in results
                ]
            )
    events = read_events(root / "test" / "events.tsv")
    onsets = np.array([float(e["onset"]) for e in events])
    truth = np.array([int(e["category_index"]) for e in events])
    times = np.array([r.volume.seq * r.volume.tr_s for r in results])
    bank = CandidateBank.load(root / "decoder" / "candidates.npz")
    return feats, times, onsets, truth, bank, float(events[0]["duration"])


def test_realistic_session_decodes_well_above_chance(experiment):
    feats, times, onsets, truth, bank, dur = decode_offline(experiment)
    table = identification_table(feats, times, onsets, dur, 6.0, truth, bank)
    # per-block accuracy of VC, averaged over layers, tested against chance (0.5)
    per_block = []
    for layer in bank.features:
        avg, kept = block_average(feats[("VC", layer)], times, onsets, dur, 6.0)
        per_block.append(pairwise_identification(correlations(avg, bank.features[layer]), truth[kept]))
    per_block = np.mean(per_block, axis=0)
    assert per_block.size == 20
    t, p = stats.ttest_1samp(per_block, 0.5, alternative="greater")
    assert p < 1e-6, (per_block, p)
    assert np.mean(list(table["VC"].values())) > 0.75, table["VC"]
    # lower areas follow lower layers, higher areas higher layers
    assert table["V1"]["cnn1"] > table["V1"]["cnn8"] + 0.1, table["V1"]
    assert table["LOC"]["cnn8"] > table["LOC"]["cnn1"] + 0.1, table["LOC"]


def test_noiseless_session_decodes_nearly_perfectly(noiseless_experiment):
    feats, times, onsets, truth, bank, dur = decode_offline(noiseless_experiment, motion=False)
    table = identification_table(feats, times, onsets, dur, 6.0, truth, bank)
    assert min(table["VC"].values()) > 0.95, table["VC"]


def test_the_training_reference_anchors_a_later_session(experiment):
    feats, times, onsets, truth, bank, dur = decode_offline(
        experiment, reference=str(experiment / "decoder" / "reference.nii.gz")
    )
    table = identification_table(feats, times, onsets, dur, 6.0, truth, bank)
    assert np.mean(list(table["VC"].values())) > 0.75, table["VC"]


def test_a_reference_of_the_wrong_grid_is_refused(experiment, tmp_path):
    import nibabel as nib
    import pytest

    from rtdecode.errors import ConfigError

    nib.save(nib.Nifti1Image(np.zeros((10, 10, 10), np.float32), np.eye(4)), tmp_path / "small.nii")
    refused = r"run.motion.reference: .*shape \(10, 10, 10\).*against shape \(64, 64, 36\)"
    with pytest.raises(ConfigError, match=refused):
        decode_offline(experiment, reference=str(tmp_path / "small.nii"))
    with pytest.raises(ConfigError, match="cannot read image"):
        decode_offline(experiment, reference=str(tmp_path / "missing.nii"))
