"""Reconstruction: feature inversion through the real EfficientNet-lite0, and the subscriber process."""

import json
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import collect, stop, wait_for_file

for module in ("torch", "efficientnet_lite_pytorch", "skimage"):
    pytest.importorskip(module, reason="reconstruction needs the torch extra (pip install torch==2.13.0)")

import torch  # noqa: E402
from skimage.transform import resize  # noqa: E402

from rtdecode.apps.demo import free_tcp_address  # noqa: E402
from rtdecode.errors import ConfigError, ReceiveTimeout  # noqa: E402
from rtdecode.models.cnn import BankSpec, Network, centre_square, extract_bank, skimage_photos, write_bank  # noqa: E402
from rtdecode.models.inversion import FeatureInverter, InversionParams, true_features  # noqa: E402
from rtdecode.transport.zmq import Publisher, Subscriber  # noqa: E402
from rtdecode.wire import messages as m  # noqa: E402

EXE = [sys.executable, "-m", "rtdecode"]
PHOTOS = ("chelsea", "coffee", "rocket", "coins")


@pytest.fixture(scope="module")
def network():
    torch.set_num_threads(1)
    return Network()


@pytest.fixture(scope="module")
def photos():
    return {k: v for k, v in skimage_photos(grey=True).items() if k in PHOTOS}


@pytest.fixture(scope="module")
def bank(tmp_path_factory, network, photos):
    out = tmp_path_factory.mktemp("bank")
    write_bank(
        out, extract_bank({k: [v] for k, v in photos.items()}, n_units=300, seed=0, network=network), 0
    )
    return out


def pixel_vector(img):
    a = resize(np.asarray(img, dtype=float), (48, 48), anti_aliasing=True).ravel()
    return (a - a.mean()) / a.std()


def test_a_reconstruction_from_own_features_is_closest_to_its_image(bank, network, photos):
    spec = BankSpec.load(bank)
    inverter = FeatureInverter(spec, InversionParams(steps=60), network)
    feats = true_features(spec, photos, network)
    names = list(photos)
    recon = np.array([pixel_vector(inverter.reconstruct(feats[n]).image) for n in names])
    orig = np.array([pixel_vector(centre_square(photos[n])) for n in names])
    r = recon @ orig.T / orig.shape[1]
    for i, name in enumerate(names):
        others = np.delete(r[i], i)
        assert r[i, i] > others.max(), (
            f"{name}: r with itself {r[i, i]:.2f}, with others {np.round(others, 2)}"
        )


def test_the_inversion_is_deterministic_and_matches_the_features(bank, network, photos):
    spec = BankSpec.load(bank)
    target = true_features(spec, {"coffee": photos["coffee"]}, network)["coffee"]

    def run(seed):
        return FeatureInverter(spec, InversionParams(steps=12, seed=seed), network).reconstruct(target)

    a, b, c = run(0), run(0), run(1)
    np.testing.assert_array_equal(a.image, b.image)
    assert not np.array_equal(a.image, c.image)
    assert a.image.shape == (224, 224, 3) and a.image.dtype == np.uint8
    # The loss falls, and only the decoded (sampled) units were matched: r with the target rises.
    assert a.history[-1][1] < a.history[0][1] and a.steps == 12 and a.loss < 1
    assert set(a.layer_r) == set(spec.layers) and np.mean(list(a.layer_r.values())) > 0.2


def test_bad_targets_and_parameters_are_refused(bank, network):
    spec = BankSpec.load(bank)
    inverter = FeatureInverter(spec, InversionParams(steps=1), network)
    good = {ly: spec.mean[ly] for ly in spec.layers}
    with pytest.raises(ValueError, match="stage2"):
        inverter.reconstruct({**good, "stage2": np.zeros(7)})
    with pytest.raises(ValueError, match="finite"):
        inverter.reconstruct({**good, "fc": np.full(spec.units["fc"].size, np.nan)})
    with pytest.raises(KeyError, match="conv9"):
        inverter.reconstruct({"conv9": np.zeros(3)})
    for bad in (
        {"steps": 0},
        {"learning_rate": -1.0},
        {"pyramid": (7, 100)},
        {"layer_weights": {"fc": -1.0}},
    ):
        with pytest.raises(ConfigError):
            InversionParams(**bad).check()


class TinyGenerator(torch.nn.Module):
    latent_shape = (1, 16)

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(16, 3 * 28 * 28)

    def forward(self, z):
        x = self.fc(z).view(1, 3, 28, 28)
        return torch.tanh(torch.nn.functional.interpolate(x, size=(56, 56), mode="bilinear"))


def test_a_generator_prior_optimises_its_latent(bank, network, photos):
    spec = BankSpec.load(bank)
    target = true_features(spec, {"rocket": photos["rocket"]}, network)["rocket"]
    out = FeatureInverter(
        spec, InversionParams(steps=20, learning_rate=0.3, jitter_px=0), network, TinyGenerator()
    ).reconstruct(target)
    assert out.image.shape == (224, 224, 3) and out.history[-1][1] < out.history[0][1]


def block_message(block, spec, rois=("VC",), **overrides):
    rng = np.random.default_rng(block)
    pred = np.stack([np.concatenate([spec.mean[ly] for ly in spec.layers])] * len(rois)).astype(np.float32)
    pred += rng.standard_normal(pred.shape).astype(np.float32) * 0.1
    fields = dict(
        session="s1",
        series="run-01",
        seq=3 * block + 2,
        acq_time_s=time.time(),
        block=block,
        label=f"cat{block}",
        onset_s=9.0 * block,
        offset_s=9.0 * block + 9,
        seqs=[3 * block, 3 * block + 1],
        status="ok",
        rois=list(rois),
        layers=list(spec.layers),
        feedback={},
        predictions=pred,
    )
    fields.update(overrides)
    return m.Block(**fields)


def test_the_subscriber_survives_bad_blocks_and_a_restarted_decoder(bank, tmp_path):
    spec = BankSpec.load(bank)
    decoder_addr, publish = free_tcp_address(), free_tcp_address()
    out, ready = tmp_path / "recon", tmp_path / "ready"
    cmd = [
        *EXE,
        "reconstruct",
        "--address",
        decoder_addr,
        "--publish",
        publish,
        "--bank",
        str(bank),
        "--out",
        str(out),
        "--steps",
        "3",
        "--until-end",
        "--ready-file",
        str(ready),
    ]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_file(ready, 120, proc)
        with Subscriber(publish) as sub:
            pub = Publisher(decoder_addr)
            time.sleep(1.0)  # both subscriptions live
            n = sum(spec.units[ly].size for ly in spec.layers)
            sent = [
                block_message(0, spec),
                block_message(1, spec, running=True),  # a running block: not reconstructed
                block_message(2, spec, predictions=np.zeros((1, n - 1), np.float32)),  # wrong size
                block_message(3, spec, predictions=np.full((1, n), np.nan, np.float32)),  # NaN
                block_message(4, spec, status="empty", predictions=None),
                block_message(5, spec, rois=["LVC"]),  # not the ROI asked for
                block_message(6, spec, layers=["stage1", "conv9"]),  # a layer the bank lacks
            ]
            for msg in sent:
                pub.publish(msg)
            pub.socket.send_multipart([b"block", b"not json"])  # malformed frames
            pub.close()  # the decoder stops ...
            time.sleep(0.5)
            pub = Publisher(decoder_addr)  # ... and restarts on the same address
            time.sleep(1.0)
            pub.publish(block_message(7, spec, session="s1", series="run-02"))
            pub.publish(m.Status(event="end", session="s1", series="run-02"))
            got = collect(sub, until=lambda msg: msg.header.get("block") == 7, timeout_s=120)
            pub.close()
        assert proc.wait(60) == 0
    finally:
        stop(proc)
    recons = [m.parse(x) for x in got if x.header["kind"] == "reconstruction"]
    skips = [m.parse(x) for x in got if x.header["kind"] == "status"]
    assert [r.block for r in recons] == [0, 7]
    assert len(skips) == 5 and all(s.event == "skipped" for s in skips)
    reasons = " | ".join(s.reason for s in skips)
    for expected in ("need (1,", "non-finite", "no prediction", "'VC' not decoded", "conv9"):
        assert expected in reasons
    first = recons[0]
    assert first.method == "features" and first.roi == "VC" and first.label == "cat0"
    assert first.iterations == 3
    assert first.png[:8].tobytes() == b"\x89PNG\r\n\x1a\n" and first.lag_s >= first.seconds > 0
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert [(i["series"], i["block"]) for i in index] == [("run-01", 0), ("run-02", 7)]
    assert (out / "s1" / "run-02" / "block-007-features.png").read_bytes() == recons[1].png.tobytes()


def test_reconstruct_refuses_a_remote_publisher_and_a_missing_bank(tmp_path):
    bad = subprocess.run(
        [*EXE, "reconstruct", "--publish", "tcp://0.0.0.0:5999", "--bank", "x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "--allow-remote" in bad.stderr
    bad = subprocess.run(
        [*EXE, "reconstruct", "--bank", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "features.json" in bad.stderr


def test_nothing_arrives_without_a_decoder(bank):
    # The reconstructor's publisher is quiet until there is a block: no stray messages.
    publish = free_tcp_address()
    proc = subprocess.Popen(
        [
            *EXE,
            "reconstruct",
            "--address",
            free_tcp_address(),
            "--publish",
            publish,
            "--bank",
            str(bank),
            "--timeout",
            "3",
        ]
    )
    try:
        with Subscriber(publish) as sub, pytest.raises(ReceiveTimeout):
            sub.recv(2.0)
        assert proc.wait(60) == 0
    finally:
        stop(proc)
