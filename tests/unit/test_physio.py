"""Physiological and tissue regressors: causal estimates follow the truth, streamed equals offline."""

import dataclasses
import gzip
import json

import numpy as np
import pytest
from scipy.signal import detrend
from sklearn.decomposition import PCA

from rtdecode.config import PreprocessConfig
from rtdecode.errors import FileError
from rtdecode.io.physio import physio_path_for, read_physio
from rtdecode.numerics.response import rrf
from rtdecode.pipeline.chain import Pipeline
from rtdecode.pipeline.denoise import Denoiser
from rtdecode.pipeline.nuisance import NuisanceRegressor
from rtdecode.pipeline.physio import Physio
from rtdecode.pipeline.preprocess import Preprocessor
from rtdecode.sim.phantom import tissue_masks
from rtdecode.sim.physio import FS_HZ, simulate_recording
from rtdecode.sim.session import simulate_session
from rtdecode.sim.subject import SimParams
from rtdecode.volume import Volume

TR = 2.0


def _circular_spread(d):
    # Mean absolute deviation of angles from their circular mean.
    mean = np.angle(np.mean(np.exp(1j * d)))
    return float(np.mean(np.abs(np.angle(np.exp(1j * (d - mean))))))


def test_causal_phases_and_rvt_follow_the_simulated_heart_and_breath():
    rec = simulate_recording(300, np.random.default_rng(0))
    physio = Physio()
    physio.add(rec["time"], rec["cardiac"], rec["respiratory"])
    offsets = np.linspace(0, TR, 15, endpoint=False)
    d_card, d_resp, rvt = [], [], []
    for seq in range(140):
        t_vol = seq * TR
        reg, r = physio.regressors(seq, TR, offsets)
        t = t_vol + offsets
        beats = rec["beats"]
        k = np.searchsorted(beats, t, side="right") - 1
        true_card = 2 * np.pi * (t - beats[k]) / (beats[k + 1] - beats[k])
        d_card.append(np.arctan2(reg[:, 1], reg[:, 0]) - true_card)
        d_resp.append(np.arctan2(reg[:, 5], reg[:, 4]) - np.interp(t, rec["time"], rec["breath_phase"]))
        rvt.append(r)
    # The pulse wave peaks a fixed part of a cycle after the beat: a constant offset, which the
    # regression absorbs; what matters is the spread.
    assert _circular_spread(np.concatenate(d_card)) < 0.15
    # Glover's phase is the belt's amplitude rank, not the cycle's angle: close, not equal.
    assert _circular_spread(np.concatenate(d_resp)) < 0.3
    dt = 1 / FS_HZ
    true_rvt = np.convolve(rec["rvt"], rrf(np.arange(0, 40, dt)) * dt)[: rec["time"].size]
    expected = np.interp(np.arange(140) * TR, rec["time"], true_rvt)
    assert np.corrcoef(rvt[20:], expected[20:])[0, 1] > 0.9


def test_a_recording_fed_as_it_arrives_gives_what_it_gives_at_once():
    rec = simulate_recording(120, np.random.default_rng(1))
    whole, live = Physio(60.0), Physio(60.0)
    whole.add(rec["time"], rec["cardiac"], rec["respiratory"])
    rng = np.random.default_rng(2)
    t0 = 5000.0  # live: samples on the machine's clock, volume 0 acquired at t0
    sent = 0
    offsets = np.array([0.0, 0.7, 1.4])
    for seq in range(50):
        # Samples arrive in chunks, up to the volume's end and some beyond, some sent twice.
        upto = np.searchsorted(rec["time"], (seq + 1) * TR + rng.uniform(0, 1.5), side="right")
        start = max(0, sent - rng.integers(0, 20))
        live.add(t0 + rec["time"][start:upto], rec["cardiac"][start:upto], rec["respiratory"][start:upto])
        sent = max(sent, upto)
        a = whole.regressors(seq, TR, offsets)
        b = live.regressors(seq, TR, offsets, t0 + seq * TR if seq == 0 else -1.0)  # the first fixes it
        np.testing.assert_allclose(a[0], b[0], atol=1e-9)
        assert a[1] == pytest.approx(b[1], abs=1e-9)


def test_retroicor_per_slice_equals_a_ridge_refitted_for_each_slice():
    rng = np.random.default_rng(3)
    n, v, groups_n = 60, 40, 4
    groups = rng.integers(0, groups_n, v)
    retro = rng.uniform(-1, 1, (n, groups_n, 8))
    rvt = rng.normal(0, 0.2, n)
    x = 500 + rng.normal(0, 1, (n, v)) + np.einsum("tvk,kv->tv", retro[:, groups], rng.normal(0, 3, (8, v)))
    reg = NuisanceRegressor(["drift", "retroicor", "rvt"], penalty=2.0)
    streamed = np.array([reg.update(x[t], None, t, TR, None, (retro[t], rvt[t]), groups) for t in range(n)])
    for g in range(groups_n):
        sel = groups == g
        design = np.column_stack([np.ones(n), np.arange(n) * TR / 60, retro[:, g], rvt])
        penalty = np.diag([1e-8] + [2.0] * (design.shape[1] - 1))
        for k in (0, 3, 20, n - 1):
            r = design[: k + 1]
            beta = np.linalg.solve(r.T @ r + penalty, r.T @ x[: k + 1, sel])
            np.testing.assert_allclose(streamed[k, sel], x[k, sel] - design[k, 1:] @ beta[1:], atol=1e-6)


def test_acompcor_components_are_the_baseline_principal_components_of_wm_and_csf():
    rng = np.random.default_rng(4)
    n, warm, nw, nc, k = 50, 12, 80, 30, 3
    sources = rng.normal(0, 1, (n, 4))
    wm = 700 + sources @ rng.normal(0, 5, (4, nw)) + rng.normal(0, 0.5, (n, nw)) + np.arange(n)[:, None] * 0.1
    csf = 1400 + sources @ rng.normal(0, 8, (4, nc)) + rng.normal(0, 0.5, (n, nc))
    x = 1000 + sources @ rng.normal(0, 4, (4, 20)) + rng.normal(0, 0.5, (n, 20))
    reg = NuisanceRegressor(["acompcor"], penalty=1.0, compcor_components=k, warmup=warm)
    rows = np.array([reg.design(x[t], None, t, TR, {"wm": wm[t], "csf": csf[t]})[0] for t in range(n)])
    assert not rows[:warm, 1:].any()  # the baseline volumes teach nothing
    # Independently: scikit-learn's PCA of the detrended baseline.
    both = np.hstack([wm, csf])
    pca = PCA(k).fit(detrend(both[:warm], axis=0))
    centre = both[:warm].mean(0)
    expected = (
        (both[warm:] - centre) @ pca.components_.T / np.sqrt(pca.explained_variance_ * (warm - 1) / warm)
    )
    signs = np.sign(np.sum(rows[warm:, 1:] * expected, axis=0))
    np.testing.assert_allclose(rows[warm:, 1:], expected * signs, rtol=1e-6, atol=1e-6)
    # And the shared sources leave the analysis voxels.
    reg = NuisanceRegressor(["acompcor"], penalty=1.0, compcor_components=4, warmup=warm)
    cleaned = np.array([reg.update(x[t], None, t, TR, {"wm": wm[t], "csf": csf[t]}) for t in range(n)])
    assert cleaned[30:].std(0).mean() < 0.35 * x[30:].std(0).mean()


@pytest.fixture(scope="module")
def physio_session():
    p = SimParams(
        shape=(32, 32, 18), voxel_size_mm=6.0, n_categories=100, n_units=30, n_train_categories=40,
        n_test_categories=10, motion=False, tr_s=TR, slice_order="interleaved", physio_pct=3.0, seed=3,
    )  # fmt: skip
    return p, simulate_session(p)


def _decode_values(p, sim, regressors, checkpoint_at=None):
    ph = sim["subject"].phantom
    mask = np.zeros(p.shape, bool)
    mask.ravel()[sim["subject"].voxel_index] = True
    pc = PreprocessConfig(baseline_volumes=8)
    pc.nuisance.regressors = regressors

    def build():
        d = Denoiser.from_config(pc, mask, ph.affine, tissue_masks(ph))
        if d is not None and d.physio is not None:
            d.physio.add(sim["physio"]["time"], sim["physio"]["cardiac"], sim["physio"]["respiratory"])
        return Pipeline(mask, Preprocessor.from_config(pc), None, denoiser=d)

    pipe, out = build(), []
    for k in range(sim["bold"].shape[-1]):
        if k == checkpoint_at:
            state = pipe.get_state()
            pipe = build()
            pipe.set_state(state)
        vol = Volume(sim["bold"][..., k], ph.affine, k, p.tr_s, k * p.tr_s, slice_times_s=p.slice_times_s)
        out.append(pipe.process(vol).values)
    return np.array(out, np.float64)


def _signal_correlation(values, sim):
    a, b = values[20:] - values[20:].mean(0), sim["signal_pct"][20:] - sim["signal_pct"][20:].mean(0)
    return float(np.mean((a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))))


def test_each_physiological_and_tissue_regressor_recovers_the_simulated_signal_better(physio_session):
    p, sim = physio_session
    base = _signal_correlation(_decode_values(p, sim, ["drift"]), sim)
    got = {
        name: _signal_correlation(_decode_values(p, sim, ["drift", *regs]), sim)
        for name, regs in {
            "retroicor+rvt": ["retroicor", "rvt"],
            "wm+csf": ["wm", "csf"],
            "acompcor": ["acompcor"],
        }.items()
    }
    assert got["retroicor+rvt"] > base + 0.03, (base, got)
    assert got["wm+csf"] > base + 0.01, (base, got)
    assert got["acompcor"] > base, (base, got)
    # Without the noise, nothing to recover: the same regressors cost little.
    quiet = dataclasses.replace(p, physio_pct=1e-9)
    sim_quiet = simulate_session(quiet)
    plain = _signal_correlation(_decode_values(quiet, sim_quiet, ["drift"]), sim_quiet)
    assert plain > got["retroicor+rvt"]


def test_a_pipeline_with_every_regressor_resumes_from_its_checkpoint_exactly(physio_session):
    p, sim = physio_session
    regs = ["drift", "global", "wm", "csf", "acompcor", "retroicor", "rvt"]
    np.testing.assert_array_equal(_decode_values(p, sim, regs, checkpoint_at=5), _decode_values(p, sim, regs))
    np.testing.assert_array_equal(
        _decode_values(p, sim, regs, checkpoint_at=40), _decode_values(p, sim, regs)
    )


def test_bids_recordings_are_read_and_bad_ones_refused(tmp_path):
    path = tmp_path / "sub-01_task-x_physio.tsv.gz"
    assert physio_path_for(tmp_path / "sub-01_task-x_bold.nii.gz") == path
    assert physio_path_for(tmp_path / "bold.nii").name == "physio.tsv.gz"
    with gzip.open(path, "wt") as f:
        f.write("0.1\t5\t0\n0.2\t6\t1\n0.3\t7\t0\n")
    sidecar = tmp_path / "sub-01_task-x_physio.json"
    sidecar.write_text(
        json.dumps(
            {"SamplingFrequency": 10, "StartTime": -1.0, "Columns": ["respiratory", "cardiac", "trigger"]}
        )
    )
    rec = read_physio(path)
    np.testing.assert_allclose(rec["time"], [-1.0, -0.9, -0.8])
    np.testing.assert_allclose(rec["cardiac"], [5, 6, 7])
    np.testing.assert_allclose(rec["respiratory"], [0.1, 0.2, 0.3])
    for meta, match in (
        ({"SamplingFrequency": 10, "StartTime": 0, "Columns": ["cardiac"]}, "3 columns for 1"),
        ({"SamplingFrequency": 10, "StartTime": 0, "Columns": ["a", "b", "c"]}, "none of the columns"),
        ({"StartTime": 0, "Columns": ["cardiac", "b", "c"]}, "not a BIDS"),
    ):
        sidecar.write_text(json.dumps(meta))
        with pytest.raises(FileError, match=match):
            read_physio(path)
    sidecar.unlink()
    with pytest.raises(FileError, match="not a BIDS"):
        read_physio(path)


def test_regressors_without_their_inputs_are_refused_by_name():
    mask = np.ones((4, 1, 1), bool)
    pc = PreprocessConfig()
    pc.nuisance.regressors = ["acompcor"]
    with pytest.raises(ValueError, match="non-empty csf mask"):
        Denoiser.from_config(pc, mask, np.eye(4), {"wm": np.ones((4, 1, 1), bool)})
    with pytest.raises(ValueError, match="need physiological recordings"):
        NuisanceRegressor(["retroicor"]).update(np.ones(3), None, 0, TR)
    with pytest.raises(ValueError, match="need a wm mask"):
        NuisanceRegressor(["wm"]).update(np.ones(3), None, 0, TR)
    # A recording with no samples for a volume gives zeros, not an error.
    reg, rvt = Physio().regressors(0, TR, np.zeros(2))
    assert not reg.any() and rvt == 0.0
