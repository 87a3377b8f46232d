"""The scanner's trigger pulses from a serial trigger box (a real pseudo-terminal) and an LSL marker
stream, and what the scanner clock makes of them."""

import os
import time
import tty

import numpy as np
import pytest

from rtdecode.errors import ConfigError, EndpointError
from rtdecode.scanner.clock import ScannerClock, wall_at
from rtdecode.scanner.readers import ScanVolume
from rtdecode.transport.lsl import MarkerOutlet, monotonic_ns_to_lsl
from rtdecode.transport.triggers import open_triggers
from rtdecode.volume import Stage

SCANNER_BEHIND_S = 100.0  # the scanner's clock runs this far behind this computer's


def _until(pred, timeout_s=20.0):
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _scan_volume(seq, acquired_wall, series="7"):
    data = np.zeros((4, 4, 3), np.int16)
    return ScanVolume(data, np.eye(4), series, seq, 1.0, acquired_wall - SCANNER_BEHIND_S)


@pytest.fixture
def serial_box():
    """A trigger box on a pseudo-terminal: write to the returned descriptor as the box would."""
    box, device = os.openpty()
    tty.setraw(device)
    yield box, os.ttyname(device)
    os.close(box)
    os.close(device)


def test_serial_pulses_become_the_acquired_stamps_and_measure_the_clock_offset(serial_box):
    box, device = serial_box
    trig = open_triggers(f"serial:{device}")
    try:
        clock = ScannerClock(triggers=trig)
        sent = []
        for _ in range(3):
            sent.append(time.monotonic_ns())
            os.write(box, b"5")
            os.write(box, b"1")  # a button press on the same box: not a pulse
            time.sleep(0.1)
        _until(lambda: len(trig.times_ns()) == 3)
        pulses = trig.times_ns()
        assert all(0 <= p - s < 50_000_000 for p, s in zip(pulses, sent))
        vols = [clock.volume(_scan_volume(k, wall_at(sent[k])), time.monotonic_ns()) for k in range(3)]
    finally:
        trig.close()
    assert [v.stamps[Stage.ACQUIRED] for v in vols] == pulses
    assert {v.acquired_from for v in vols} == {"trigger"}
    assert clock.offset_from == "trigger" and clock.offset_s == pytest.approx(SCANNER_BEHIND_S, abs=0.05)


def test_a_new_series_takes_the_pulses_after_the_last_series(serial_box):
    box, device = serial_box
    trig = open_triggers(f"serial:{device}", char="t")
    try:
        clock = ScannerClock(offset_s=SCANNER_BEHIND_S, triggers=trig)
        for _ in range(5):
            os.write(box, b"t")
            time.sleep(0.02)
        _until(lambda: len(trig.times_ns()) == 5)
        pulses = trig.times_ns()
        now = time.monotonic_ns()
        first = [clock.volume(_scan_volume(k, time.time(), "7"), now) for k in range(3)]
        second = [clock.volume(_scan_volume(k, time.time(), "8"), now) for k in range(2)]
    finally:
        trig.close()
    assert [v.stamps[Stage.ACQUIRED] for v in first + second] == pulses
    assert clock.offset_from == "set" and first[0].clock_offset_s == SCANNER_BEHIND_S


def test_a_volume_without_its_pulse_falls_back_to_the_scanner_clock(serial_box):
    box, device = serial_box
    trig = open_triggers(f"serial:{device}")
    try:
        vol = ScannerClock(offset_s=SCANNER_BEHIND_S, triggers=trig).volume(
            _scan_volume(0, time.time()), time.monotonic_ns()
        )
    finally:
        trig.close()
    assert vol.acquired_from == "scanner clock" and vol.stamps[Stage.ACQUIRED] > 0


def test_lsl_marker_pulses_are_stamped_on_this_clock():
    name = f"scanner-trigger-{os.getpid()}"
    outlet = MarkerOutlet(name)
    trig = open_triggers(f"lsl:{name}", char="5")
    try:
        assert outlet.wait_for_consumer(20)
        time.sleep(0.5)  # the inlet's clock correction
        sent = []
        for text in ("5", "start", "5"):
            t = time.monotonic_ns()
            outlet.send(text, monotonic_ns_to_lsl(t))
            if text == "5":
                sent.append(t)
        _until(lambda: len(trig.times_ns()) == 2)
    finally:
        trig.close()
    np.testing.assert_allclose(trig.times_ns(), sent, atol=2e6)  # 2 ms: LSL's clock correction


def test_a_bad_trigger_spec_or_device_is_named():
    with pytest.raises(ConfigError, match="serial:<device> or lsl:<stream name>"):
        open_triggers("usb0")
    with pytest.raises(EndpointError, match="cannot open the trigger port '/dev/nonexistent-box'"):
        open_triggers("serial:/dev/nonexistent-box")
