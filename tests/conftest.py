import dataclasses
import os
import time
from pathlib import Path

import pytest

# Every LSL library in the tests and their subprocesses (pylsl, mne-lsl) keeps to this machine,
# whatever the developer's environment says; set before anything loads liblsl.
os.environ["LSLAPICFG"] = str(Path(__file__).parents[1] / "rtdecode" / "transport" / "lsl_loopback.cfg")

from rtdecode.apps.demo import free_tcp_address
from rtdecode.config import ClassifierConfig, Config, LatentsConfig, TrainConfig
from rtdecode.errors import ReceiveTimeout
from rtdecode.offline.train import train_session
from rtdecode.sim.session import SimParams, make_subject, simulate_session, write_session

# Small but realistic: the default noise, tuning and motion, fewer categories and units.
SMALL = SimParams(n_train_categories=80, n_test_categories=20, n_units=50)
ROIS = ["V1", "LOC", "LVC", "HVC", "VC"]


free_address = free_tcp_address


# The DecNef classifier's target class: the categories of superclasses 0-11 (of 25), about half.
TARGET_CLASS = "_s(0[0-9]|1[01])$"


def small_config() -> Config:
    train = TrainConfig(
        rois=ROIS,
        classifier=ClassifierConfig(roi="HVC", target=TARGET_CLASS),
        latents=LatentsConfig(enabled=True),
    )
    return Config(train=train)


def _make(root, **overrides):
    p_train = dataclasses.replace(SMALL, kind="train", seed=1, latents=True, **overrides)
    p_test = dataclasses.replace(SMALL, kind="test", seed=2, latents=True, **overrides)
    subject = make_subject(p_train)
    write_session(root / "train", p_train, simulate_session(p_train, subject))
    write_session(root / "test", p_test, simulate_session(p_test, subject))
    cfg = small_config()
    if not overrides.get("motion", True):
        cfg.run.motion.enabled = False
    train_session(root / "train", root / "decoder", cfg)
    return root


@pytest.fixture(scope="session")
def experiment(tmp_path_factory):
    """A simulated subject with default (realistic) settings: train and test sessions, a bundle."""
    return _make(tmp_path_factory.mktemp("experiment"))


@pytest.fixture(scope="session")
def noiseless_experiment(tmp_path_factory):
    """The same subject without noise, drift or motion."""
    return _make(tmp_path_factory.mktemp("noiseless"), noiseless=True, motion=False, drift_pct=0.0)


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


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    """A real headless Chromium driven by chromedriver (Debian's chromium and chromium-driver).

    Skipped where they are not installed, unless RTDECODE_REQUIRE_BROWSER is set (as CI does).
    """
    import shutil

    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        message = "Debian's chromium and chromium-driver are not installed"
        if os.environ.get("RTDECODE_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium')}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def open_page(driver, url: str) -> None:
    """Open ``url`` with a clean console: the previous page (a dashboard whose server has gone,
    still reconnecting) is left first and its messages are dropped."""
    driver.get("about:blank")
    driver.get_log("browser")
    driver.get(url)


def page_errors(driver) -> list[str]:
    """The browser console's errors since the last call (JavaScript exceptions, failed loads)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
