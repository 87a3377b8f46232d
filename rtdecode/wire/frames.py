"""Wire protocol v1: messages as ZeroMQ multipart frames, pure encode/decode (no sockets).

A message is ``[topic, header, array frame 0, array frame 1, ...]``:

* ``topic`` -- UTF-8 bytes (``volume``, ``features.<roi>.<layer>``, ``ranking``, ...).
* ``header`` -- UTF-8 JSON object. ``protocol`` is ``"rtdecode"`` and ``version`` is ``1``;
  ``arrays`` lists, in frame order, each array's ``name``, ``dtype`` (a numpy name such as
  ``float32``), ``byteorder`` (``little`` or ``big``) and ``shape`` (C order).
* one raw frame per array, exactly ``prod(shape) * itemsize`` bytes.

The fields of each message kind are declared in :mod:`rtdecode.wire.messages`; the contract is
``docs/protocol.md``.
Encoding never copies array data: frames alias the arrays, so a sender must hand over a fresh
array for each message and not write to it afterwards.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rtdecode.errors import ProtocolError

PROTOCOL = "rtdecode"
VERSION = 1
VOLUME_TOPIC = "volume"
END_TOPIC = "end"

DTYPES = frozenset(
    {
        "uint8",
        "int8",
        "uint16",
        "int16",
        "uint32",
        "int32",
        "uint64",
        "int64",
        "float16",
        "float32",
        "float64",
        "complex64",
        "complex128",
        "bool",
    }
)
_NATIVE = sys.byteorder  # "little" or "big"
_MAX_HEADER_BYTES = 1 << 20


@dataclass
class Message:
    """A decoded message.

    Parameters
    ----------
    topic : str
        The message's topic.
    header : dict
        The JSON header, ``arrays`` entry removed.
    arrays : dict of str to numpy.ndarray
        Arrays by name, read-only views on the received frames (no copy).
    """

    topic: str
    header: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def encode(
    topic: str, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None
) -> list[bytes | memoryview]:
    """Encode a message into frames.

    Parameters
    ----------
    topic : str
        Message topic.
    header : mapping
        JSON-serialisable fields; must not contain ``protocol``, ``version`` or ``arrays``.
    arrays : mapping of str to numpy.ndarray, optional
        Arrays to send, each as its own frame. Non-contiguous arrays are made contiguous
        (the only copy encode ever makes).

    Returns
    -------
    list
        Frames for ``socket.send_multipart(frames, copy=False)``.

    Raises
    ------
    ProtocolError
        If a dtype is not supported or the header reuses a reserved field.
    """
    reserved = {"protocol", "version", "arrays"} & set(header)
    if reserved:
        raise ProtocolError(f"header fields {sorted(reserved)!r} are reserved by the protocol")
    specs = []
    buffers: list[memoryview] = []
    for name, arr in (arrays or {}).items():
        arr = np.asarray(arr)
        if not arr.flags.c_contiguous:
            arr = arr.copy(order="C")
        dtype_name = arr.dtype.name
        if dtype_name not in DTYPES:
            raise ProtocolError(f"array {name!r}: dtype {arr.dtype!r} is not supported by protocol v1")
        order = arr.dtype.byteorder
        byteorder = _NATIVE if order in "=|" else ("little" if order == "<" else "big")
        specs.append({"name": name, "dtype": dtype_name, "byteorder": byteorder, "shape": list(arr.shape)})
        buffers.append(memoryview(arr).cast("B") if arr.size else memoryview(b""))
    full = {"protocol": PROTOCOL, "version": VERSION, **header, "arrays": specs}
    head = json.dumps(full, separators=(",", ":"), allow_nan=False).encode()
    return [topic.encode(), head, *buffers]


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]!r} overflows a double")
    return value


def _buffer(frame: Any) -> memoryview:
    # zmq.Frame exposes its memory through .buffer; bytes and memoryviews are used as they are.
    return memoryview(getattr(frame, "buffer", frame))


def decode(frames: Sequence[Any]) -> Message:
    """Decode frames into a :class:`Message`, checking them strictly.

    Parameters
    ----------
    frames : sequence
        Frames as received: ``bytes``, ``memoryview`` or ``zmq.Frame``.

    Returns
    -------
    Message

    Raises
    ------
    ProtocolError
        For a missing or non-JSON header, an unknown protocol or version, a bad array spec
        or a frame whose size does not match its spec. The message names the field and value.
    """
    if len(frames) < 2:
        raise ProtocolError(f"a message needs at least 2 frames (topic, header), got {len(frames)}")
    try:
        topic = bytes(_buffer(frames[0])).decode()
    except UnicodeDecodeError as err:
        raise ProtocolError(f"topic is not UTF-8: {err}") from err
    raw_header = _buffer(frames[1])
    if raw_header.nbytes > _MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {raw_header.nbytes} bytes exceeds {_MAX_HEADER_BYTES}")
    try:
        header = json.loads(bytes(raw_header), parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError as err:
        raise ProtocolError(f"header of topic {topic!r} is nested too deeply to read") from err
    except (UnicodeDecodeError, ValueError) as err:  # JSONDecodeError is a ValueError
        raise ProtocolError(f"header of topic {topic!r} is not valid JSON: {err}") from err
    if not isinstance(header, dict):
        raise ProtocolError(f"header must be a JSON object, got {type(header).__name__}")
    if header.get("protocol") != PROTOCOL:
        raise ProtocolError(f"header 'protocol' must be {PROTOCOL!r}, got {header.get('protocol')!r}")
    if type(header.get("version")) is not int or header["version"] != VERSION:  # true is not 1
        raise ProtocolError(
            f"unsupported protocol version {header.get('version')!r}; this reader speaks {VERSION}"
        )
    specs = header.pop("arrays", [])
    if not isinstance(specs, list):
        raise ProtocolError(f"header 'arrays' must be a list, got {specs!r}")
    if len(specs) != len(frames) - 2:
        raise ProtocolError(
            f"header lists {len(specs)} arrays but the message has {len(frames) - 2} data frames"
        )
    arrays = {}
    for spec, frame in zip(specs, frames[2:]):
        name, dtype = _check_spec(spec)
        buf = _buffer(frame)
        shape = tuple(spec["shape"])
        expected = math.prod(shape) * dtype.itemsize  # Python ints: a huge shape cannot wrap around
        if buf.nbytes != expected:
            raise ProtocolError(
                f"array {name!r}: frame has {buf.nbytes} bytes, shape {list(shape)} of "
                f"{spec['dtype']} needs {expected}"
            )
        arrays[name] = np.frombuffer(buf, dtype=dtype).reshape(shape)
    return Message(topic=topic, header=header, arrays=arrays)


def _check_spec(spec: Any) -> tuple[str, np.dtype]:
    if not isinstance(spec, dict):
        raise ProtocolError(f"array spec must be an object, got {spec!r}")
    name = spec.get("name")
    if not isinstance(name, str):
        raise ProtocolError(f"array spec 'name' must be a string, got {name!r}")
    if spec.get("dtype") not in DTYPES:
        raise ProtocolError(f"array {name!r}: unsupported dtype {spec.get('dtype')!r}")
    if spec.get("byteorder") not in ("little", "big"):
        raise ProtocolError(
            f"array {name!r}: 'byteorder' must be 'little' or 'big', got {spec.get('byteorder')!r}"
        )
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
    ):
        raise ProtocolError(f"array {name!r}: 'shape' must be a list of integers >= 0, got {shape!r}")
    dtype = np.dtype(spec["dtype"])
    if dtype.itemsize > 1:
        dtype = dtype.newbyteorder("<" if spec["byteorder"] == "little" else ">")
    return name, dtype
