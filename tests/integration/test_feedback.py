"""Neurofeedback scores: PSC after nuisance regression, decoded content, DecNef classifier."""

import importlib.util
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import TARGET_CLASS, small_config

from rtdecode.apps.session import LiveSession
from rtdecode.config import FeedbackConfig
from rtdecode.configfile import load_config
from rtdecode.errors import ConfigError, ModelFileError
from rtdecode.io.nifti import iter_volumes, read_events
from rtdecode.models.bank import CandidateBank
from rtdecode.models.classifier import LinearClassifier
from rtdecode.pipeline.feedback import PercentSignalChange


class ListSink:
    def __init__(self):
        self.messages = []

    def publish(self, msg):
        self.messages.append((msg.topic, msg.header(), msg.arrays()))

    def of_kind(self, kind):
        return [(h, a) for _, h, a in self.messages if h.get("kind") == kind]


def _auc(pos, neg):
    pos, neg = np.asarray(pos), np.asarray(neg)
    return float(
        ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (pos.size * neg.size)
    )


def test_psc_recovers_activation_under_drift_and_motion_artefacts():
    rng = np.random.default_rng(0)
    n, base = 200, 1000.0
    t = np.arange(n)
    task = ((t // 10) % 2 == 1) & (t >= 20)  # rest 20 volumes, then 10 on / 10 off
    motion = np.cumsum(rng.normal(0, 0.05, (n, 6)), axis=0)
    drift = 0.03 * base * t / n + 0.01 * base * (t / n) ** 2
    y = base * (1 + 0.02 * task) + drift + 4.0 * motion[:, 0] - 3.0 * motion[:, 4] + rng.normal(0, 1.0, n)
    psc = PercentSignalChange(np.arange(4), baseline_volumes=20)
    out = np.array([psc.update(np.full(4, y[k]), motion[k], k, rest=not task[k]) for k in range(n)])
    assert np.isnan(out[:19]).all()
    late = t >= 100  # once the nuisance model has data
    assert abs(np.median(out[late & task]) - 2.0) < 0.4
    assert abs(np.median(out[late & ~task])) < 0.4
    # Without the regression the drift alone would read as 2-4 % "activation" by the end.
    raw = 100 * (y - y[:20].mean()) / y[:20].mean()
    assert np.median(raw[late & ~task]) > 1.0


def _decoder(experiment, feedback, blocks=False):
    cfg = small_config()
    cfg.run.bundle = str(experiment / "decoder")
    cfg.run.feedback = feedback
    cfg.run.blocks.enabled = blocks
    sink = ListSink()
    return LiveSession(cfg.run, sink), sink


def test_decoded_content_scores_match_an_independent_computation(experiment):
    bank = CandidateBank.load(experiment / "decoder" / "candidates.npz")
    target = json.loads((experiment / "test" / "session.json").read_text())["test_categories"][0]
    label = bank.labels[target]
    specs = [
        FeedbackConfig(name="r", kind="correlation", roi="VC", layer="cnn8", target=label),
        FeedbackConfig(name="rank", kind="rank", roi="VC", layer="cnn8", target=label),
        FeedbackConfig(name="p", kind="softmax", roi="VC", layer="cnn8", target=label, temperature=0.1),
        FeedbackConfig(
            name="z", kind="correlation", roi="VC", layer="cnn8", target=label, normalise="zscore"
        ),
        FeedbackConfig(
            name="s", kind="correlation", roi="VC", layer="cnn8", target=label, smoothing_volumes=3
        ),
    ]
    dec, sink = _decoder(experiment, specs)
    for vol in list(iter_volumes(experiment / "test" / "bold.nii"))[:40]:
        dec.step(vol)
    feats = {
        h["seq"]: a["features"]
        for h, a in sink.of_kind("features")
        if h["roi"] == "VC" and h["layer"] == "cnn8"
    }
    fb = {h["seq"]: h["scores"] for h, _ in sink.of_kind("feedback")}
    cand = bank.features["cnn8"]
    raw_r, smoothed = [], None
    for seq in sorted(feats):
        # Pearson correlation with every candidate, by numpy's corrcoef.
        r_all = np.array([np.corrcoef(feats[seq], c)[0, 1] for c in cand])
        r = r_all[target]
        s = fb[seq]
        assert s["r"]["raw"] == pytest.approx(r, abs=1e-5)
        assert s["rank"]["raw"] == 1 + (r_all > r + 1e-7).sum()
        e = np.exp((r_all - r_all.max()) / 0.1)
        assert s["p"]["raw"] == pytest.approx(e[target] / e.sum(), rel=1e-3)
        raw_r.append(r)
        a = 1 - math.exp(-1 / 3)
        smoothed = r if smoothed is None else smoothed + a * (r - smoothed)
        assert s["s"]["value"] == pytest.approx(smoothed, abs=1e-5)
    b = np.array(raw_r[:10])
    first_z = [fb[seq]["z"]["value"] for seq in sorted(feats)]
    assert all(v is None for v in first_z[:9])
    assert first_z[10] == pytest.approx((raw_r[10] - b.mean()) / b.std(ddof=1), abs=1e-4)


def test_decnef_classifier_tells_the_target_class_in_a_new_session(experiment):
    """Trained on the training session's blocks, scored on the test session's unseen categories."""
    clf = LinearClassifier.load(experiment / "decoder" / "classifier.json")
    assert clf.meta["cv_auc"] > 0.6
    specs = [FeedbackConfig(name="decnef", kind="classifier", roi="HVC")]
    dec, sink = _decoder(experiment, specs)
    for vol in iter_volumes(experiment / "test" / "bold.nii"):
        dec.step(vol)
    p = {h["seq"]: h["scores"]["decnef"]["raw"] for h, _ in sink.of_kind("feedback")}
    events = read_events(experiment / "test" / "events.tsv")

    pos, neg = [], []
    for e in events:
        start = float(e["onset"]) + 6.0
        seqs = [s for s in p if p[s] is not None and start <= s * 3.0 < start + float(e["duration"])]
        (pos if re.search(TARGET_CLASS, e["category_label"]) else neg).append(np.mean([p[s] for s in seqs]))
    assert len(pos) >= 2 and len(neg) >= 2
    assert _auc(pos, neg) > 0.7
    assert all(0.0 <= v <= 1.0 for v in p.values() if v is not None)


def test_psc_feedback_follows_the_true_signal(experiment):
    dec, sink = _decoder(experiment, [FeedbackConfig(name="act", kind="psc", roi="VC", baseline_volumes=8)])
    for vol in iter_volumes(experiment / "test" / "bold.nii"):
        dec.step(vol)
    psc = {h["seq"]: h["scores"]["act"]["raw"] for h, _ in sink.of_kind("feedback")}
    with np.load(experiment / "test" / "truth.npz") as z:
        truth = z["signal_pct"].mean(axis=1)
    seqs = [s for s in sorted(psc) if psc[s] is not None and s >= 30]
    r = np.corrcoef([psc[s] for s in seqs], truth[seqs])[0, 1]
    assert r > 0.5


def test_classifier_files_round_trip_and_refuse_tampering(experiment, tmp_path):
    clf = LinearClassifier.load(experiment / "decoder" / "classifier.json")
    path = clf.save(tmp_path / "c")
    again = LinearClassifier.load(path)
    np.testing.assert_array_equal(again.weights, clf.weights)
    assert again.bias == clf.bias and again.roi == "HVC" and again.target == TARGET_CLASS
    x = np.random.default_rng(0).standard_normal(int(clf.positions.max()) + 1)
    assert again.probability(x) == clf.probability(x)
    npz = tmp_path / "c.npz"
    npz.write_bytes(npz.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ModelFileError, match="checksum"):
        LinearClassifier.load(path)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "a", "kind": "magic"}, "kind: must be one of"),
        ({"name": "a", "kind": "correlation"}, "must name a candidate label"),
        ({"name": "a", "kind": "psc", "normalise": "minmax"}, "normalise: must be none or zscore"),
        ({"name": "a", "kind": "psc", "smoothing_volumes": -1}, "smoothing_volumes: must be >= 0"),
        ({"name": "a", "kind": "psc", "colour": 1}, "unknown key"),
    ],
)
def test_broken_feedback_configs_are_refused_with_the_key(tmp_path, entry, message):
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps({"run": {"feedback": [entry]}}))
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_unknown_feedback_target_or_roi_is_refused_at_start(experiment):
    with pytest.raises(ConfigError, match="not a candidate label"):
        _decoder(experiment, [FeedbackConfig(name="a", kind="rank", target="no-such-category")])
    with pytest.raises(ConfigError, match="ROI 'FFA' is not in the bundle"):
        _decoder(experiment, [FeedbackConfig(name="a", kind="psc", roi="FFA")])


def _psc_batch(y, x, rest, baseline):
    # The nuisance fit redone from scratch over the whole history (what rtdecode did before, and the
    # baseline of tools/bench_psc.py): an independent computation of what the incremental form keeps.
    spec = importlib.util.spec_from_file_location(
        "bench_psc", Path(__file__).parents[2] / "tools" / "bench_psc.py"
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool.refit(y, x, rest, baseline)


def test_incremental_psc_equals_a_fit_over_the_whole_history():
    rng = np.random.default_rng(3)
    n, baseline = 300, 10
    positions = np.arange(20)
    psc = PercentSignalChange(positions, baseline)
    ys, xs, rests = [], [], []
    for seq in range(n):
        motion = rng.normal(0, 0.2, 6)
        rest = bool((seq // 15) % 2 == 0)
        values = 1000 + 0.01 * seq + 5 * motion[0] + (0 if rest else 8) + rng.normal(0, 2, 40)
        got = psc.update(values, motion, seq, rest)
        ys.append(values[positions].mean())
        xs.append(np.concatenate([[1.0, seq, seq * seq], motion]))
        rests.append(rest)
        if seq + 1 < baseline:
            assert np.isnan(got)
        elif seq % 7 == 0 or seq == n - 1:
            np.testing.assert_allclose(got, _psc_batch(ys, xs, rests, baseline), rtol=1e-6, atol=1e-6)
