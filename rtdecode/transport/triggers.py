"""The scanner's trigger pulses as a lab receives them: from a trigger box or an LSL stream.

A serial/USB trigger box sends a character per volume (a Current Designs or Cedrus box types ``5``),
or the lab's LSL setup republishes the pulses as markers; stimulus programs already read them.
Each pulse is time-stamped on this computer's monotonic clock the moment it is read;
:class:`~rtdecode.scanner.clock.ScannerClock` pairs them with volumes.
"""

from __future__ import annotations

import logging
import threading
import time

from rtdecode.errors import ConfigError, EndpointError

log = logging.getLogger(__name__)


class SerialTriggers:
    """Pulses from a serial (or USB serial) trigger box: one character per volume.

    Parameters
    ----------
    port : str
        The device (``/dev/ttyACM0``, ``COM3``).
    char : str
        The character the box sends for a pulse; other characters (button presses) are ignored.
    baud : int
        The box's baud rate.

    Raises
    ------
    EndpointError
        If the port cannot be opened.
    """

    def __init__(self, port: str, char: str = "5", baud: int = 115200) -> None:
        import serial

        try:
            self._port = serial.Serial(port, baud, timeout=0.05)
        except (serial.SerialException, OSError, ValueError) as err:
            raise EndpointError(f"cannot open the trigger port {port!r}: {err}") from err
        self._char = char.encode()
        self._times: list[int] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="serial-triggers", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._port.read(1)  # returns as soon as a byte is in: stamp it then
                now = time.monotonic_ns()
                data = first + (self._port.read(self._port.in_waiting) if first else b"")
            except Exception:  # an unplugged box: say so, keep the session going without pulses
                log.exception("trigger port failed; no more pulses")
                return
            with self._lock:
                self._times.extend(now for b in data if bytes([b]) == self._char)

    def times_ns(self) -> list[int]:
        """Every pulse so far, monotonic ns, oldest first."""
        with self._lock:
            return list(self._times)

    def close(self) -> None:
        """Stop reading and close the port."""
        self._stop.set()
        self._thread.join(1.0)
        self._port.close()


class LslTriggers:
    """Pulses from an LSL marker stream (type ``Markers``) of the given name.

    Parameters
    ----------
    name : str
        The stream's name.
    value : str
        Only markers with this text are pulses; empty: every marker.
    """

    def __init__(self, name: str, value: str = "") -> None:
        from rtdecode.transport.lsl import MarkerInlet

        self._inlet = MarkerInlet(name)
        self._value = value
        self._times: list[int] = []

    def times_ns(self) -> list[int]:
        """Every pulse so far, monotonic ns (LSL time-corrected), oldest first."""
        self._times.extend(t for text, t in self._inlet.poll() if not self._value or text == self._value)
        return list(self._times)

    def close(self) -> None:
        """Stop receiving."""
        self._inlet.close()


def open_triggers(spec: str, char: str | None = None, baud: int = 115200) -> SerialTriggers | LslTriggers:
    """Open ``serial:<device>`` or ``lsl:<stream name>``.

    ``char`` is the pulse's character (serial, default ``5``) or marker text (LSL, default any).

    Raises
    ------
    ConfigError
        If ``spec`` names neither.
    """
    kind, _, where = spec.partition(":")
    if kind == "serial" and where:
        return SerialTriggers(where, "5" if char is None else char, baud)
    if kind == "lsl" and where:
        return LslTriggers(where, char or "")
    raise ConfigError(f"--trigger must be serial:<device> or lsl:<stream name>, got {spec!r}")
