"""How a wire message is declared: header fields and array frames with type, unit and meaning.

A message kind is a dataclass deriving from :class:`WireMessage` whose fields are made with
:func:`header` or :func:`array`. From those declarations alone it encodes itself, reads itself
back with strict JSON types, and prints its table for ``docs/protocol.md``
(:func:`field_table`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np

from rtdecode.errors import ProtocolError
from rtdecode.wire.frames import Message, encode

# JSON types of header fields, each with its strict check.
TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "list": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


def header(json_type: str, meaning: str, unit: str = "", optional: bool = False) -> Any:
    """A header field of JSON type ``json_type`` (a key of :data:`TYPES`); optional ones default to None."""
    meta = {"where": "header", "type": json_type, "unit": unit, "meaning": meaning, "optional": optional}
    return dataclasses.field(default=None, metadata=meta) if optional else dataclasses.field(metadata=meta)


def array(dtype: str, shape: str, meaning: str, optional: bool = False) -> Any:
    """An array frame of ``dtype`` and ``shape`` (as text, e.g. ``[n_rois, n_layers, k]``)."""
    meta = {"where": "array", "type": dtype, "unit": shape, "meaning": meaning, "optional": optional}
    return dataclasses.field(default=None, metadata=meta) if optional else dataclasses.field(metadata=meta)


@functools.cache
def _declared(cls: type, where: str) -> tuple[tuple[str, bool], ...]:
    # (name, optional) of a message class's header fields or arrays, in declaration order: read
    # once per class, not for every message sent (a volume's results are a dozen messages).
    return tuple(
        (f.name, f.metadata["optional"]) for f in dataclasses.fields(cls) if f.metadata["where"] == where
    )


@dataclasses.dataclass(kw_only=True)
class WireMessage:
    """Base of every declared message: header fields and arrays as dataclass fields."""

    kind: ClassVar[str]

    @property
    def topic(self) -> str:
        """The ZeroMQ topic (frame 0)."""
        return self.kind

    def header(self) -> dict[str, Any]:
        """The JSON header fields, ``kind`` first; unset optional fields are left out."""
        out: dict[str, Any] = {"kind": self.kind}
        for name, optional in _declared(type(self), "header"):
            value = getattr(self, name)
            if value is not None or not optional:
                out[name] = value
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        """The array frames by name, in declaration order; unset optional arrays are left out."""
        found = ((name, getattr(self, name)) for name, _ in _declared(type(self), "array"))
        return {name: value for name, value in found if value is not None}

    def encode(self) -> list[bytes | memoryview]:
        """Frames for ``send_multipart`` (arrays are not copied)."""
        return encode(self.topic, self.header(), self.arrays())

    @classmethod
    def from_wire(cls, msg: Message) -> WireMessage:
        """Read a decoded message of this kind, checking every declared field's type.

        Raises
        ------
        ProtocolError
            A required field is missing, or a field has the wrong JSON type.
        """
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            where, optional = f.metadata["where"], f.metadata["optional"]
            source = msg.header if where == "header" else msg.arrays
            if f.name not in source or (where == "header" and source[f.name] is None and optional):
                if not optional:
                    raise ProtocolError(f"{cls.kind} message lacks {where} field {f.name!r}")
                continue
            value = source[f.name]
            if where == "header" and not TYPES[f.metadata["type"]](value):
                raise ProtocolError(
                    f"{cls.kind} field {f.name!r} must be a JSON {f.metadata['type']}, got {value!r}"
                )
            values[f.name] = value
        return cls(**values)


def field_table(cls: type[WireMessage]) -> str:
    """The Markdown table of a message's fields, as ``docs/protocol.md`` shows it."""
    rows = ["| field | in | type | unit or shape | meaning |", "|---|---|---|---|---|"]
    rows.append(f"| `kind` | header | string | | `{cls.kind}` |")
    for f in dataclasses.fields(cls):
        m: Mapping[str, Any] = f.metadata
        opt = " (optional)" if m["optional"] else ""
        rows.append(f"| `{f.name}` | {m['where']} | {m['type']}{opt} | {m['unit']} | {m['meaning']} |")
    return "\n".join(rows)
