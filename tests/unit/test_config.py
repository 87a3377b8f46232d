import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rtdecode.config import Config
from rtdecode.configfile import load_config
from rtdecode.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_shipped_configs_load():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        assert isinstance(load_config(path), Config)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("run: [1, 2", "not valid YAML"),
        ("run:\n  top_k: 0\n", r"broken.yaml: run.top_k: must be between 1 and 1000, got 0"),
        ("run:\n  top_k: five\n", r"run.top_k: must be an integer, got 'five'"),
        (
            "run:\n  motion:\n    enabled: yes\n    fd_threshold: 1\n",
            r"run.motion: unknown key\(s\) \['fd_threshold'\]",
        ),
        ("run:\n  input:\n    address: 127.0.0.1:5555\n", r"run.input.address: must start with tcp://"),
        ("train:\n  alpha: -1\n", r"train.alpha: must be > 0, got -1.0"),
        ("run:\n  heartbeat_s: .inf\n", r"run.heartbeat_s: must be a finite number, got inf"),
        ("run:\n  input: {max_message_mb: 1.0e+30}\n", r"run.input.max_message_mb: must be > 0 and <= 4096"),
        ("run:\n  input: {max_message_mb: 1e30}\n", r"YAML reads this as text"),
        (
            "run:\n  output: {address: 'tcp://127.0.0.1:99999'}\n",
            r"run.output.address: must be tcp://HOST:PORT",
        ),
        ("run:\n  output: {address: 'tcp://127.0.0.1:5555'}\n", r"must differ from run.input.address"),
        ("run:\n  output: {address: 'tcp://0.0.0.0:5556'}\n", r"binds beyond this machine"),
        ("run:\n  history: {address: 'tcp://0.0.0.0:5557'}\n", r"run.history.address: binds beyond"),
        ("run:\n  history: {address: 'tcp://127.0.0.1:5556'}\n", r"run.history.address: must differ"),
        ("run:\n  history: {address: '127.0.0.1:5557'}\n", r"run.history.address: must start with tcp://"),
        ("run:\n  input: {address: 'tcp://10.0.0.5:5555'}\n", r"turn on run.curve"),
        ("run: {top_k: !!python/name:os.system }\n", r"not valid YAML at line 1"),
        ("train:\n  rois: [1]\n", r"train.rois\[0\]: must be a string, got 1"),
        ("colour: blue\n", r"unknown key\(s\) \['colour'\]"),
        ("- a\n- b\n", "must be a mapping"),
    ],
)
def test_broken_configs_name_file_key_and_value(tmp_path, text, match):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_a_trusted_network_may_be_opened_explicitly(tmp_path):
    path = tmp_path / "lab.yaml"
    path.write_text("run:\n  allow_insecure_network: true\n  output: {address: 'tcp://0.0.0.0:5556'}\n")
    assert load_config(path).run.output.address == "tcp://0.0.0.0:5556"


def test_missing_file():
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config("/nonexistent/rtdecode.yaml")


@pytest.mark.parametrize(
    ("run", "key"),
    [
        ({"bundle": "no/such/bundle"}, "run.bundle"),
        ({"candidates": "no/such/bank.npz"}, "run.candidates"),
        ({"motion": {"reference": "no/ref.nii.gz"}}, "run.motion.reference"),
        ({"latents": "no/latents"}, "run.latents"),
        (
            {"preprocess": {"nuisance": {"regressors": ["wm"], "wm_mask": "no/wm.nii.gz"}}},
            "run.preprocess.nuisance.wm_mask",
        ),
    ],
)
@pytest.mark.integration
def test_a_decoder_config_naming_a_missing_file_fails_before_starting(experiment, tmp_path, run, key):
    run = {"bundle": str(experiment / "decoder")} | run
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"run": run}))
    proc = subprocess.run(
        [sys.executable, "-m", "rtdecode", "run", "-c", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert f"{path}: {key}: 'no/" in proc.stderr and "does not exist" in proc.stderr, proc.stderr


@pytest.mark.integration
def test_mistakes_found_at_start_name_the_file_and_key_in_one_line(experiment, tmp_path):
    import socket

    from helpers import free_address

    target = {
        "bundle": str(experiment / "decoder"),
        "feedback": [{"name": "nf", "target": "no-such-category"}],
    }
    path = tmp_path / "nf.yaml"

    def refused(run: dict) -> str:
        path.write_text(yaml.safe_dump({"run": run}))
        proc = subprocess.run(
            [sys.executable, "-m", "rtdecode", "run", "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        return proc.stderr

    stderr = refused(target)
    assert f"{path}: run.feedback[0]" in stderr and "not a candidate label" in stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = {"bundle": str(experiment / "decoder"), "input": {"address": free_address()},
               "output": {"address": f"tcp://127.0.0.1:{port}"}}  # fmt: skip
        assert f"{path}: run.output.address: cannot bind" in refused(run)


@pytest.mark.integration
def test_a_dashboard_for_the_network_needs_allow_remote():
    proc = subprocess.run(
        [sys.executable, "-m", "rtdecode", "dashboard", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2 and "--allow-remote" in proc.stderr and "Traceback" not in proc.stderr
