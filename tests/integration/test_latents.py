"""Takagi & Nishimoto-style latent decoders: recovery of unseen targets, fast maps, files."""

import json

import numpy as np
import pytest
from helpers import small_config

from rtdecode.apps.session import LiveSession
from rtdecode.errors import ModelFileError
from rtdecode.io.nifti import iter_volumes, read_events
from rtdecode.models.latents import LatentDecoders, fit_latent_map
from rtdecode.sim.latents import IMAGE_SHAPE, TEXT_SHAPE


class ListSink:
    def __init__(self):
        self.latent = {}

    def publish(self, msg):
        if msg.kind == "latent":
            self.latent[msg.seq] = {k: v.copy() for k, v in msg.targets.items()}


def test_latents_of_categories_never_trained_on_are_decoded_per_volume(experiment):
    cfg = small_config()
    cfg.run.bundle = str(experiment / "decoder")
    cfg.run.latents = str(experiment / "decoder" / "latents")
    sink = ListSink()
    dec = LiveSession(cfg.run, sink)
    for vol in iter_volumes(experiment / "test" / "bold.nii"):
        dec.step(vol)
    assert sink.latent and all(v["image"].shape == IMAGE_SHAPE for v in sink.latent.values())
    assert next(iter(sink.latent.values()))["text"].shape == TEXT_SHAPE
    events = read_events(experiment / "test" / "events.tsv")
    with np.load(experiment / "test" / "latents.npz") as z:
        truth = {n: z[n].reshape(len(events), -1) for n in ("image", "text")}
    for name in ("image", "text"):
        pred = []
        for e in events:
            start = float(e["onset"]) + 6.0
            seqs = [s for s in sink.latent if start <= s * 3.0 < start + float(e["duration"])]
            pred.append(np.mean([sink.latent[s][name].ravel() for s in seqs], axis=0))
        r = np.corrcoef(np.array(pred), truth[name])[: len(events), len(events) :]
        # Each block's decoded target is closer to its own truth than to other blocks' (chance 0.5).
        pairwise = np.mean([(r[b, b] > np.delete(r[b], b)).mean() for b in range(len(events))])
        assert pairwise > 0.75, (name, pairwise)


def test_fast_maps_have_their_error_measured_and_exact_rank_is_exact(experiment):
    lat = LatentDecoders.load(experiment / "decoder" / "latents")
    m = lat.maps["text"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, int(m.positions.max()) + 1)).astype(np.float32)
    assert m.reduced(rank=m.left.shape[1]).error_against(m, x) < 1e-4
    small = m.reduced(rank=10)
    assert small.left.shape[1] == 10 and 1e-4 < small.error_against(m, x) < 1.0


def test_penalty_is_chosen_by_cross_validation():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((60, 200))
    w = rng.standard_normal((200, 300)) * (rng.random((200, 1)) < 0.05)
    y = x @ w + rng.standard_normal((60, 300)) * 5
    m = fit_latent_map("t", x, y, (300,), np.arange(200), [0.1, 10.0, 1e3, 1e5, 1e7])
    scores = m.meta["cv_scores"]
    assert m.meta["alpha"] == max(scores, key=scores.get)
    assert scores[1e7] < scores[m.meta["alpha"]] and len(scores) == 5


def test_latent_files_round_trip_and_refuse_tampering(experiment, tmp_path):
    lat = LatentDecoders.load(experiment / "decoder" / "latents")
    lat.save(tmp_path / "l")
    again = LatentDecoders.load(tmp_path / "l")
    n = max(int(m.positions.max()) for m in lat.maps.values()) + 1
    x = np.random.default_rng(2).standard_normal(n).astype(np.float32)
    np.testing.assert_array_equal(again.predict(x)["image"], lat.predict(x)["image"])
    meta = json.loads((tmp_path / "l" / "latents.json").read_text())
    assert set(meta["maps"]) == {"image", "text"} and meta["maps"]["text"]["shape"] == list(TEXT_SHAPE)
    npz = tmp_path / "l" / "latents.npz"
    npz.write_bytes(npz.read_bytes()[:-4] + b"abcd")
    with pytest.raises(ModelFileError, match="checksum"):
        LatentDecoders.load(tmp_path / "l")
