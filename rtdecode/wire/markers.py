"""Stimulus markers: the strings stimulus programs send to mark blocks, parsed strictly.

A marker is a JSON object ``{"event": "start", "label": ..., "condition": ...}`` or
``{"event": "end"}``, or the plain text ``start:<label>:<condition>`` / ``end``; it arrives on an
LSL stream of type ``Markers`` with its time stamp (``docs/protocol.md``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from rtdecode.errors import ProtocolError

MARKER_EVENTS = ("start", "end")


@dataclass(frozen=True)
class Marker:
    """One stimulus marker: ``event`` is ``start`` or ``end`` of a block."""

    event: str
    time_ns: int
    label: str = ""
    condition: str = ""


def parse_marker(text: str, time_ns: int) -> Marker:
    """Parse a marker string.

    Two spellings are accepted: a JSON object ``{"event": "start", "label": "n02084071",
    "condition": "perception"}`` or plain text ``start:<label>:<condition>`` / ``end``
    (label and condition optional).

    Raises
    ------
    ProtocolError
        If the text is neither, or the event is not ``start`` or ``end``.
    """
    text = text.strip()
    if text.startswith(("{", "[")):
        try:
            d = json.loads(text)
        except json.JSONDecodeError as err:
            raise ProtocolError(f"marker {text!r}: not valid JSON ({err.msg})") from err
        if not isinstance(d, dict):
            raise ProtocolError(f"marker {text!r}: JSON marker must be an object")
        event, label, condition = d.get("event"), d.get("label", ""), d.get("condition", "")
    else:
        parts = text.split(":")
        event = parts[0]
        label = parts[1] if len(parts) > 1 else ""
        condition = parts[2] if len(parts) > 2 else ""
    if event not in MARKER_EVENTS:
        raise ProtocolError(f"marker {text!r}: event must be one of {MARKER_EVENTS}, got {event!r}")
    return Marker(event, int(time_ns), str(label), str(condition))
