"""Who may talk to the decoder: CurveZMQ allow-list, loopback defaults, no code execution from files."""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import free_address, small_config

from rtdecode.config import to_dict
from rtdecode.errors import ReceiveTimeout
from rtdecode.transport.zmq import SECRET_KEY_ENV, SERVER_KEY_ENV, Subscriber

PACKAGE = Path(__file__).parents[2] / "rtdecode"
EXE = [sys.executable, "-m", "rtdecode"]


def _replay(bold, address, env, n):
    # The first n volumes of the series, sent by a separate process with its own key (or none).
    code = (
        "import itertools, sys\n"
        "from rtdecode.io.nifti import iter_volumes\n"
        "from rtdecode.apps.replay import send_volumes\n"
        f"vols = itertools.islice(iter_volumes({str(bold)!r}, 's', 'r'), {n})\n"
        f"print(send_volumes(vols, {address!r}, 200.0))\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _status_counts(sub, timeout_s, first=False):
    # The last status with counts within timeout_s (or the first one, with first).
    last = None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            msg = sub.recv(1.0)
        except ReceiveTimeout:
            continue
        if msg.header.get("kind") == "status" and "processed" in msg.header:
            last = msg.header
            if first or msg.header.get("event") == "end":
                return last
    return last


def test_curve_admits_listed_clients_and_refuses_strangers_and_plaintext(
    experiment, tmp_path, monkeypatch, run_decoder
):
    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    proc = subprocess.run(
        [*EXE, "keygen", "decoder", "sender", "viewer", "stranger", "--out", str(keys)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert oct((keys / "decoder.key_secret").stat().st_mode & 0o777) == "0o600"
    allowed.mkdir()
    for name in ("sender", "viewer"):
        shutil.copy(keys / f"{name}.key", allowed)
    cfg = small_config()
    cfg.run.bundle = str(experiment / "decoder")
    cfg.run.input.address, cfg.run.output.address = free_address(), free_address()
    cfg.run.heartbeat_s = 0.3
    cfg.run.curve.enabled, cfg.run.curve.secret_key, cfg.run.curve.clients = (
        True,
        str(keys / "decoder.key_secret"),
        str(allowed),
    )
    decoder = run_decoder(cfg, stderr=subprocess.PIPE, text=True)
    bold = experiment / "test" / "bold.nii"
    base_env = {k: v for k, v in os.environ.items() if k not in (SECRET_KEY_ENV, SERVER_KEY_ENV)}

    def env(name):
        return base_env | {
            SECRET_KEY_ENV: str(keys / f"{name}.key_secret"),
            SERVER_KEY_ENV: str(keys / "decoder.key"),
        }

    try:
        # A listed viewer subscribes, encrypted.
        monkeypatch.setenv(SECRET_KEY_ENV, str(keys / "viewer.key_secret"))
        monkeypatch.setenv(SERVER_KEY_ENV, str(keys / "decoder.key"))
        with Subscriber(cfg.run.output.address, ["status"]) as sub:
            assert _status_counts(sub, 60, first=True) is not None  # heartbeats reach a listed subscriber
            # A stranger's key and a plaintext sender: the handshake fails, nothing reaches the
            # decoder (the sender may have queued its volumes before it failed, or time out).
            refused = [_replay(bold, cfg.run.input.address, e, 5) for e in (env("stranger"), base_env)]
            for proc in refused:  # both at once: each waits out its send timeout
                proc.communicate(timeout=120)
            counts = _status_counts(sub, 3)
            assert counts["received"] == 0 and counts["processed"] == 0
            # The listed sender's volumes are decoded.
            proc = _replay(bold, cfg.run.input.address, env("sender"), 12)
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            deadline = time.monotonic() + 60
            while (counts := _status_counts(sub, 2))["processed"] < 12 and time.monotonic() < deadline:
                pass
            assert counts["processed"] == 12 and counts["skipped"] == 0
        # A subscriber without keys hears nothing.
        monkeypatch.delenv(SECRET_KEY_ENV)
        monkeypatch.delenv(SERVER_KEY_ENV)
        with Subscriber(cfg.run.output.address) as plain:
            with pytest.raises(ReceiveTimeout):
                plain.recv(2.0)
    finally:
        decoder.terminate()
        _, err = decoder.communicate(timeout=30)
    assert decoder.returncode == 0, err


def test_curve_settings_are_checked_at_start(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("run:\n  curve: {enabled: true, secret_key: nowhere.key_secret, clients: nowhere}\n")
    proc = subprocess.run([*EXE, "run", "-c", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "run.curve.secret_key" in proc.stderr


def test_no_pickle_and_loopback_defaults_in_the_package():
    offenders = []
    for f in PACKAGE.rglob("*.py"):
        text = f.read_text()
        for pattern in (r"^\s*import pickle", r"^\s*from pickle", r"allow_pickle\s*=\s*True", r"joblib"):
            if re.search(pattern, text, re.M):
                offenders.append(f"{f.name}: {pattern}")
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            if "weights_only=True" not in call:
                offenders.append(f"{f.name}: {call}")
        if re.search(r"tcp://(\*|0\.0\.0\.0)", text):
            offenders.append(f"{f.name}: binds every interface")
    assert not offenders
    cfg = to_dict(small_config())["run"]
    assert cfg["input"]["address"].startswith("tcp://127.0.0.1:") and cfg["output"]["address"].startswith(
        "tcp://127.0.0.1:"
    )
