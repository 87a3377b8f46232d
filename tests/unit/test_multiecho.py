"""Multi-echo volumes: T2*-weighted combination, causal, checked against an independent fit and the truth."""

import json

import nibabel as nib
import numpy as np
import pytest

from rtdecode.config import PreprocessConfig
from rtdecode.errors import ProtocolError, VolumeError
from rtdecode.io.nifti import echo_files, iter_volumes, session_bold
from rtdecode.io.physio import physio_path_for
from rtdecode.pipeline.chain import Pipeline
from rtdecode.pipeline.multiecho import EchoCombiner
from rtdecode.pipeline.preprocess import Preprocessor
from rtdecode.sim.session import simulate_session, write_session
from rtdecode.sim.subject import SimParams
from rtdecode.volume import Volume
from rtdecode.wire.frames import decode
from rtdecode.wire.inputs import VolumeMessage, decode_volume

TE = (14.0, 30.0, 46.0)


def _decays(n=20, seed=0):
    rng = np.random.default_rng(seed)
    s0 = rng.uniform(500, 1500, (4, 5, 3))
    t2 = rng.uniform(20, 80, (4, 5, 3))
    clean = s0[..., None] * np.exp(-np.array(TE) / t2[..., None])
    series = clean[None] * (1 + rng.normal(0, 0.01, (n, 1, 1, 1, 1))) + rng.normal(0, 2, (n, 4, 5, 3, 3))
    return series, t2


def test_weights_come_from_an_independent_fit_on_the_first_volumes_then_stay():
    series, t2_true = _decays()
    comb = EchoCombiner(n_fit=6)
    out = np.array([comb.update(v, TE) for v in series])
    for k in (0, 2, 5, 12, 19):
        # Independently: numpy's polyfit of log signal on TE, on the mean of the volumes so far
        # (up to six), and Posse's weights written out.
        mean = series[: min(k + 1, 6)].mean(0).reshape(-1, 3)
        slope = np.array([np.polyfit(TE, np.log(m), 1)[0] for m in mean])
        t2 = (-1 / slope).reshape(4, 5, 3)
        w = np.array(TE) * np.exp(-np.array(TE) / t2[..., None])
        expected = (series[k] * w / w.sum(-1, keepdims=True)).sum(-1)
        np.testing.assert_allclose(out[k], expected, rtol=1e-4)
    assert np.abs(-1 / np.array([np.polyfit(TE, np.log(m), 1)[0] for m in series[:6].mean(0).reshape(-1, 3)])
                  - t2_true.ravel()).max() < 2.0  # fmt: skip
    resumed = EchoCombiner(n_fit=6)
    first = EchoCombiner(n_fit=6)
    for v in series[:4]:
        first.update(v, TE)
    resumed.set_state({k: np.array(v) for k, v in first.get_state().items()})
    np.testing.assert_array_equal(np.array([resumed.update(v, TE) for v in series[4:]]), out[4:])
    with pytest.raises(VolumeError, match="echo times"):
        comb.update(series[0], (14.0, 31.0, 46.0))


def _correlation(values, truth):
    a, b = values[15:] - values[15:].mean(0), truth[15:] - truth[15:].mean(0)
    return float(np.nanmean((a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))))


def test_the_combination_follows_the_simulated_signal_better_than_any_echo():
    p = SimParams(
        shape=(32, 32, 18), voxel_size_mm=6.0, n_categories=100, n_units=30, n_train_categories=40,
        n_test_categories=10, motion=False, echo_times_ms=TE, seed=4,
    )  # fmt: skip
    sim = simulate_session(p)
    ph = sim["subject"].phantom
    mask = np.zeros(p.shape, bool)
    mask.ravel()[sim["subject"].voxel_index] = True
    n = sim["bold"].shape[3]

    def run(volumes):
        pipe = Pipeline(mask, Preprocessor.from_config(PreprocessConfig()), None)
        return np.array([pipe.process(v).values for v in volumes], np.float64)

    combined = run(
        Volume(sim["bold"][..., k, :], ph.affine, k, p.tr_s, k * p.tr_s, echo_times_ms=TE) for k in range(n)
    )
    single = [
        run(Volume(sim["bold"][..., k, e], ph.affine, k, p.tr_s, k * p.tr_s) for k in range(n))
        for e in range(3)
    ]
    truth = sim["signal_pct"].astype(np.float64)
    r_single = [_correlation(s, truth) for s in single]
    r_combined = _correlation(combined, truth)
    assert r_combined > max(r_single) + 0.01, (r_combined, r_single)


def test_bids_echo_files_are_read_as_one_series(tmp_path):
    p = SimParams(
        shape=(8, 8, 6), voxel_size_mm=12.0, n_categories=20, n_units=5, n_train_categories=3,
        n_test_categories=2, motion=False, echo_times_ms=TE, baseline_volumes=2, tail_volumes=1,
    )  # fmt: skip
    sim = simulate_session(p)
    write_session(tmp_path, p, sim)
    first = session_bold(tmp_path)
    assert first.name == "echo-1_bold.nii"
    assert [t for _, t in echo_files(tmp_path / "echo-2_bold.nii")] == list(TE)
    vols = list(iter_volumes(tmp_path / "echo-3_bold.nii"))
    assert vols[0].echo_times_ms == TE and vols[0].data.shape == (8, 8, 6, 3)
    np.testing.assert_array_equal(np.stack([v.data for v in vols], 3), sim["bold"])
    assert physio_path_for(tmp_path / "sub-1_echo-2_bold.nii.gz").name == "sub-1_physio.tsv.gz"
    (tmp_path / "echo-2_bold.json").write_text(json.dumps({"RepetitionTime": 3}))
    with pytest.raises(VolumeError, match="no EchoTime"):
        list(iter_volumes(first))
    (tmp_path / "echo-2_bold.json").write_text(json.dumps({"EchoTime": 0.050}))
    with pytest.raises(VolumeError, match="do not increase"):
        list(iter_volumes(first))
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 5, 4), np.int16), np.eye(4)), tmp_path / "echo-2_bold.nii")
    (tmp_path / "echo-2_bold.json").write_text(json.dumps({"EchoTime": 0.030}))
    with pytest.raises(VolumeError, match="one shape"):
        list(iter_volumes(first))


def test_multi_echo_volumes_cross_the_wire_and_bad_ones_are_refused():
    data = np.arange(4 * 4 * 2 * 3, dtype=np.int16).reshape(4, 4, 2, 3)
    vol = Volume(data, np.eye(4), 3, 2.0, 100.0, echo_times_ms=TE)
    back = decode_volume(decode(VolumeMessage.of(vol).encode()))
    assert back.echo_times_ms == TE
    np.testing.assert_array_equal(back.data, data)
    for echoes, d, match in (
        (None, data, "must be 3-D"),
        ([14.0, 30.0], data, "echo_times_ms"),
        ([30.0, 14.0, 46.0], data, "echo_times_ms"),
        ([14.0, 30.0, 46.0], data[..., 0], "echo_times_ms"),
        ([14.0], data[..., :1], "echo_times_ms"),
    ):
        msg = VolumeMessage.of(Volume(d, np.eye(4), 3, 2.0, 100.0))
        msg.echo_times_ms = echoes
        with pytest.raises(ProtocolError, match=match):
            decode_volume(decode(msg.encode()))
    # A pipeline refuses a multi-echo volume whose echo count does not fit its data.
    pipe = Pipeline(np.ones((4, 4, 2), bool), Preprocessor.from_config(PreprocessConfig()), None)
    with pytest.raises(VolumeError, match="does not fit 2 echo"):
        pipe.process(Volume(data, np.eye(4), 0, 2.0, 0.0, echo_times_ms=(14.0, 30.0)))
    assert pipe.process(Volume(data, np.eye(4), 0, 2.0, 0.0, echo_times_ms=TE)).values.shape == (32,)
