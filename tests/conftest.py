import os
from pathlib import Path

import pytest

# Every LSL library in the tests and their subprocesses (pylsl, mne-lsl) keeps to this machine,
# whatever the developer's environment says; set before anything loads liblsl.
os.environ["LSLAPICFG"] = str(Path(__file__).parents[1] / "rtdecode" / "transport" / "lsl_loopback.cfg")

from helpers import CHROMIUM_FLAGS, small_config, small_params, start_decoder, stop

from rtdecode.offline.train import train_session
from rtdecode.sim.session import make_subject, simulate_session, write_session

INTEGRATION = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(items):
    # Tests under integration/ start processes, open sockets and LSL streams, drive a browser or
    # need the simulated experiment; `pytest -m "not integration"` runs the unit tests in seconds.
    for item in items:
        if INTEGRATION in Path(item.fspath).parents:
            item.add_marker(pytest.mark.integration)


def _make(root, **overrides):
    p_train = small_params("train", 1, **overrides)
    p_test = small_params("test", 2, **overrides)
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


@pytest.fixture
def run_decoder(tmp_path):
    """Start ``rtdecode run`` processes for a test (``run_decoder(cfg, *args, **popen)``); all are
    stopped when the test ends, whatever happened."""
    procs = []

    def start(cfg, *args, **popen):
        procs.append(start_decoder(cfg, tmp_path, *args, **popen))
        return procs[-1]

    yield start
    stop(*procs)
