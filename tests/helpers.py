"""Helpers shared by the tests (fixtures live in conftest.py): configurations, processes, waits."""

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from rtdecode.apps.demo import free_tcp_address
from rtdecode.config import ClassifierConfig, Config, LatentsConfig, TrainConfig, to_dict
from rtdecode.errors import ReceiveTimeout
from rtdecode.sim.session import SimParams

# Small but realistic: the default noise, tuning and motion, fewer categories and units.
SMALL = SimParams(n_train_categories=80, n_test_categories=20, n_units=50)
ROIS = ["V1", "LOC", "LVC", "HVC", "VC"]
# The DecNef classifier's target class: the categories of superclasses 0-11 (of 25), about half.
TARGET_CLASS = "_s(0[0-9]|1[01])$"
EXE = [sys.executable, "-m", "rtdecode"]

free_address = free_tcp_address


def small_config() -> Config:
    """The configuration the test bundles are trained with."""
    train = TrainConfig(
        rois=ROIS,
        classifier=ClassifierConfig(roi="HVC", target=TARGET_CLASS),
        latents=LatentsConfig(enabled=True),
    )
    return Config(train=train)


def small_params(kind: str, seed: int, **overrides) -> SimParams:
    """Simulation parameters of the small test subject."""
    return dataclasses.replace(SMALL, kind=kind, seed=seed, latents=True, **overrides)


def write_run_config(cfg: Config, path: Path) -> Path:
    """Write the ``run`` section of ``cfg`` as a YAML file for ``rtdecode run -c``."""
    path.write_text(yaml.safe_dump({"run": to_dict(cfg)["run"]}))
    return path


def start_decoder(cfg: Config, tmp_path: Path, *args: str, **popen) -> subprocess.Popen:
    """``rtdecode run -c <tmp_path>/run.yaml ARGS`` as a separate process (output discarded by default)."""
    path = write_run_config(cfg, tmp_path / "run.yaml")
    popen.setdefault("stdout", subprocess.DEVNULL)
    popen.setdefault("stderr", subprocess.DEVNULL)
    return subprocess.Popen([*EXE, "run", "-c", str(path), *args], **popen)


def stop(*procs: subprocess.Popen, timeout_s: float = 10) -> None:
    """Terminate processes still running, reap them and close their pipes."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout_s)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def wait_for_file(path: Path, timeout_s: float = 60, proc: subprocess.Popen | None = None) -> None:
    """Wait until ``path`` exists (a process's ready file); fail early if ``proc`` exits first."""
    deadline = time.monotonic() + timeout_s
    while not Path(path).exists():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the process exited ({proc.returncode}) before creating {path}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout_s} s")
        time.sleep(0.05)


def is_end(msg) -> bool:
    """The decoder's end-of-series status message."""
    return msg.header.get("kind") == "status" and msg.header.get("event") == "end"


def collect(sub, until=is_end, timeout_s: float = 120):
    """Messages from a ZeroMQ subscriber until ``until(msg)`` holds (that message included)."""
    msgs, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            msg = sub.recv(0.5)
        except ReceiveTimeout:
            continue
        msgs.append(msg)
        if until(msg):
            return msgs
    raise TimeoutError(f"the expected message did not arrive; got {len(msgs)} messages")


# Flags for Debian's Chromium in a sandboxed CI machine with no network (see the README).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1800,1100",
)
ARTIFACTS = Path(os.environ.get("RTDECODE_ARTIFACTS", Path(__file__).parents[1] / "test-artifacts"))


def open_page(driver, url: str) -> None:
    """Open ``url`` with a clean console: the previous page (a dashboard whose server has gone,
    still reconnecting) is left first and its messages are dropped."""
    driver.get("about:blank")
    driver.get_log("browser")
    driver.get(url)


def page_errors(driver) -> list[str]:
    """The browser console's errors since the last call (JavaScript exceptions, failed loads)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def assert_slice_times_equal(vols, reference, reference_affine, atol):
    """Every volume's slice times equal a reference's (dcm2niix's SliceTiming), the slice order
    reversed where the reference's slice axis points the other way."""
    flip = np.dot(vols[0].affine[:3, 2], reference_affine[:3, 2]) < 0
    expected = np.asarray(reference)[::-1] if flip else np.asarray(reference)
    for v in vols:
        assert v.slice_times_s is not None, v.seq
        np.testing.assert_allclose(v.slice_times_s, expected, atol=atol)
