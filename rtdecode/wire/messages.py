"""Every message of protocol v1, declared once: its topic, header fields and arrays.

Each message kind is a dataclass. A field's metadata says where it travels (header or array
frame), its JSON type, its unit and its meaning; the decoder builds messages from these classes,
every consumer reads them back with :func:`parse`, and ``docs/protocol.md``'s tables are checked
against :func:`field_table` by a test. Adding or renaming a field is a change here and nowhere else.

JSON types are checked strictly when a message is read: ``true`` is not a number and ``"3.0"`` is
not a number either. Header fields a reader does not know are ignored (a newer writer may add
some); a missing required field is a :class:`~rtdecode.errors.ProtocolError`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np

from rtdecode.errors import ProtocolError
from rtdecode.volume import Volume, stamps_from_dict, stamps_to_dict
from rtdecode.wire.frames import Message, decode, encode

# JSON types of header fields, each with its strict check.
_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "list": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


def _header(json_type: str, meaning: str, unit: str = "", optional: bool = False) -> Any:
    meta = {"where": "header", "type": json_type, "unit": unit, "meaning": meaning, "optional": optional}
    return dataclasses.field(default=None, metadata=meta) if optional else dataclasses.field(metadata=meta)


def _array(dtype: str, shape: str, meaning: str, optional: bool = False) -> Any:
    meta = {"where": "array", "type": dtype, "unit": shape, "meaning": meaning, "optional": optional}
    return dataclasses.field(default=None, metadata=meta) if optional else dataclasses.field(metadata=meta)


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
        for f in dataclasses.fields(self):
            if f.metadata["where"] == "header":
                value = getattr(self, f.name)
                if value is not None or not f.metadata["optional"]:
                    out[f.name] = value
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        """The array frames by name, in declaration order; unset optional arrays are left out."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.metadata["where"] == "array" and getattr(self, f.name) is not None
        }

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
            if where == "header" and not _TYPES[f.metadata["type"]](value):
                raise ProtocolError(
                    f"{cls.kind} field {f.name!r} must be a JSON {f.metadata['type']}, got {value!r}"
                )
            values[f.name] = value
        return cls(**values)


# Fields that every per-volume result carries, so a consumer can file it under its volume.
def _volume_fields() -> dict[str, Any]:
    return {
        "session": _header("string", "session id of the volume"),
        "series": _header("string", "series (run) id of the volume"),
        "seq": _header("integer", "volume index within the series"),
        "acq_time_s": _header("number", "acquisition time, Unix seconds (wall clock)", "s"),
        "tr_s": _header("number", "repetition time of the series", "s"),
        "status": _header("string", "`ok` (decoded) or `baseline` (collecting the baseline)"),
    }


def _with_volume_fields(cls: type) -> type:
    # Dataclass fields come from annotations: add the shared ones in front of the kind's own.
    shared = _volume_fields()
    cls.__annotations__ = {**dict.fromkeys(shared, Any), **cls.__annotations__}
    for name, fld in shared.items():
        setattr(cls, name, fld)
    return dataclasses.dataclass(kw_only=True)(cls)


@_with_volume_fields
class Features(WireMessage):
    """Predicted DNN features of one ROI and layer (topic ``features.<roi>.<layer>``)."""

    kind: ClassVar[str] = "features"
    roi: str = _header("string", "the ROI whose decoder made the prediction")
    layer: str = _header("string", "the DNN layer")
    features: np.ndarray = _array("float32", "[n_units]", "the predicted feature vector")

    @property
    def topic(self) -> str:
        """``features.<roi>.<layer>``."""
        return f"features.{self.roi}.{self.layer}"


@_with_volume_fields
class Ranking(WireMessage):
    """The top candidates of every ROI and layer for one volume."""

    kind: ClassVar[str] = "ranking"
    censored: bool = _header("boolean", "framewise displacement above the censoring threshold")
    rois: list | None = _header("list", "ROI names (absent while `status` is `baseline`)", optional=True)
    layers: list | None = _header("list", "layer names (absent while `status` is `baseline`)", optional=True)
    labels: list | None = _header(
        "list", "category names, `[n_rois][n_layers][k]` (absent while `status` is `baseline`)", optional=True
    )
    indices: np.ndarray | None = _array(
        "int32", "[n_rois, n_layers, k]", "candidate indices, best first (absent in baseline)", optional=True
    )
    scores: np.ndarray | None = _array(
        "float32", "[n_rois, n_layers, k]", "Pearson r of each (absent in baseline)", optional=True
    )


@_with_volume_fields
class Motion(WireMessage):
    """Rigid-body motion of one volume against the reference."""

    kind: ClassVar[str] = "motion"
    params: list = _header("list", "tx, ty, tz (mm), rx, ry, rz (deg)", "mm, deg")
    fd_mm: float = _header("number", "framewise displacement against the previous volume", "mm")
    censored: bool = _header("boolean", "`fd_mm` above `fd_threshold_mm`")
    fd_threshold_mm: float = _header("number", "the censoring threshold", "mm")
    iterations: int = _header("integer", "Gauss-Newton iterations the estimate took")


@_with_volume_fields
class Feedback(WireMessage):
    """Neurofeedback scores of one volume."""

    kind: ClassVar[str] = "feedback"
    scores: dict = _header(
        "object", '`{name: {"value": v, "raw": r}}` per configured score; `null` while not computable'
    )


@_with_volume_fields
class Latency(WireMessage):
    """A volume's time stamps and stage durations; the last message of each volume."""

    kind: ClassVar[str] = "latency"
    stamps: dict = _header("object", "stage name → `time.monotonic_ns()` value", "ns")
    ms: dict = _header("object", "durations between consecutive stages and `end_to_end`", "ms")


@dataclasses.dataclass(kw_only=True)
class Latent(WireMessage):
    """Decoded diffusion-model targets of one volume (only with ``run.latents``)."""

    kind: ClassVar[str] = "latent"
    session: str = _header("string", "session id of the volume")
    series: str = _header("string", "series id of the volume")
    seq: int = _header("integer", "volume index within the series")
    acq_time_s: float = _header("number", "acquisition time, Unix seconds", "s")
    shapes: dict = _header("object", "target name → shape of its array")
    ms: float = _header("number", "time to compute the targets", "ms")
    targets: dict = dataclasses.field(
        default_factory=dict,
        metadata={
            "where": "arrays", "type": "float32", "unit": "as trained", "optional": True,
            "meaning": "one array per target, named as it (`image` `[4, 40, 40]`, `text` `[77, 768]`)",
        },
    )  # fmt: skip

    def arrays(self) -> dict[str, np.ndarray]:
        """One frame per target."""
        return dict(self.targets)

    @classmethod
    def from_wire(cls, msg: Message) -> Latent:
        """Read a ``latent`` message; every array is a target."""
        fixed = {f.name for f in dataclasses.fields(cls) if f.name != "targets"}
        lat = super().from_wire(Message(msg.topic, {k: v for k, v in msg.header.items() if k in fixed}))
        lat.targets = dict(msg.arrays)
        return lat


@dataclasses.dataclass(kw_only=True)
class Block(WireMessage):
    """A completed stimulus block (from markers): its averaged prediction, ranked."""

    kind: ClassVar[str] = "block"
    session: str = _header("string", "session id")
    series: str = _header("string", "series id")
    seq: int = _header("integer", "index of the volume that completed the block")
    acq_time_s: float = _header("number", "acquisition time of that volume, Unix seconds", "s")
    block: int = _header("integer", "block index, from 0")
    label: str | None = _header("string", "the category shown (from the marker)", optional=True)
    condition: str | None = _header("string", "the condition (from the marker)", optional=True)
    onset_s: float = _header("number", "block onset, scan seconds since volume 0", "s")
    offset_s: float = _header("number", "block offset, scan seconds since volume 0", "s")
    seqs: list = _header("list", "the volumes averaged")
    status: str = _header("string", "`ok`, or `empty` when no volume of the block could be used")
    rois: list = _header("list", "ROI names")
    layers: list = _header("list", "layer names")
    feedback: dict = _header("object", "block scores, as in `feedback`")
    labels: list | None = _header("list", "top category names `[n_rois][n_layers][k]`", optional=True)
    label_rank: list | None = _header(
        "list", "rank of `label` per ROI and layer (1 = best; when it is a candidate)", optional=True
    )
    label_correlation: list | None = _header(
        "list", "correlation with `label` per ROI and layer (when it is a candidate)", "r", optional=True
    )
    indices: np.ndarray | None = _array("int32", "[n_rois, n_layers, k]", "as in `ranking`", optional=True)
    scores: np.ndarray | None = _array("float32", "[n_rois, n_layers, k]", "as in `ranking`", optional=True)
    predictions: np.ndarray | None = _array(
        "float32", "[n_rois, n_units_total]", "the block-averaged prediction", optional=True
    )


@dataclasses.dataclass(kw_only=True)
class Status(WireMessage):
    """An event of the decoder: start, heartbeat, skip, gap, pause, end, stop."""

    kind: ClassVar[str] = "status"
    event: str = _header(
        "string",
        "`started`, `heartbeat`, `skipped`, `gap`, `paused`, `pause-ended`, `sender-disconnected`, "
        "`marker-skipped`, `end`, `stopped`",
    )
    reason: str | None = _header(
        "string", "why (`skipped`, `marker-skipped`, `sender-disconnected`)", optional=True
    )
    session: str | None = _header("string", "the session concerned", optional=True)
    series: str | None = _header("string", "the series concerned", optional=True)
    seq: int | None = _header("integer", "the volume concerned (`pause-ended`)", optional=True)
    received: int | None = _header("integer", "messages received so far", optional=True)
    processed: int | None = _header("integer", "volumes processed so far", optional=True)
    skipped: int | None = _header("integer", "messages and volumes skipped so far", optional=True)
    dropped: int | None = _header("integer", "volumes missing so far (gaps)", optional=True)
    missing_from: int | None = _header("integer", "`gap`: first missing volume", optional=True)
    missing_to: int | None = _header("integer", "`gap`: last missing volume", optional=True)
    after_restart: bool | None = _header(
        "boolean", "`gap`: the volumes were lost with a decoder restarted from its checkpoint", optional=True
    )
    last_seq: int | None = _header("integer", "`paused`: the last volume before the pause", optional=True)
    silent_s: float | None = _header("number", "`paused`: time without a volume", "s", optional=True)
    tr_s: float | None = _header("number", "`paused`: the series' TR", "s", optional=True)
    paused_s: float | None = _header("number", "`pause-ended`: length of the pause", "s", optional=True)
    n_sent: int | None = _header("integer", "`end`: volumes the sender says it sent", optional=True)
    latency_ms: dict | None = _header(
        "object", "`end`: p50/p95/p99/max/n per stage interval", "ms", optional=True
    )
    resumed: dict | None = _header(
        "object",
        "`started`: the checkpoint's `session`, `series`, `last_seq` (absent: a fresh start)",
        optional=True,
    )
    settings: dict | None = _header(
        "object", "`started`, `end`: the `run` configuration and `n_candidates`", optional=True
    )


@dataclasses.dataclass(kw_only=True)
class VolumeMessage(WireMessage):
    """One fMRI volume, sender → decoder (and republished with ``run.publish_input``)."""

    kind: ClassVar[str] = "volume"
    session: str = _header("string", "session id")
    series: str = _header("string", "series (run) id; a new series restarts preprocessing")
    seq: int = _header("integer", "volume index within the series, from 0, increasing")
    affine: list = _header("list", "4×4 voxel indices → RAS+ millimetres (NIfTI/nibabel convention)", "mm")
    tr_s: float = _header("number", "repetition time", "s")
    acq_time_s: float = _header("number", "acquisition time, Unix seconds (wall clock)", "s")
    stamps: dict = _header(
        "object", "stage name → `time.monotonic_ns()` value; the sender sets `acquired` and `sent`", "ns",
        optional=True,
    )  # fmt: skip
    data: np.ndarray = _array("any real dtype", "[nx, ny, nz]", "voxel values in scanner units, C order")

    @classmethod
    def of(cls, vol: Volume) -> VolumeMessage:
        """The message of a :class:`~rtdecode.volume.Volume` (data not copied)."""
        return cls(
            session=vol.session,
            series=vol.series,
            seq=int(vol.seq),
            affine=np.asarray(vol.affine, dtype=float).tolist(),
            tr_s=float(vol.tr_s),
            acq_time_s=float(vol.acq_time_s),
            stamps=stamps_to_dict(vol.stamps),
            data=vol.data,
        )

    def to_volume(self) -> Volume:
        """The :class:`~rtdecode.volume.Volume` it carries, checked.

        Raises
        ------
        ProtocolError
            A value out of range: affine not 4×4 numbers, data not 3-D, ``seq`` < 0, ``tr_s`` not
            finite and > 0, ``acq_time_s`` not finite, stamps not integers.
        """
        affine = self.affine
        if len(affine) != 4 or not all(
            isinstance(row, list) and len(row) == 4 and all(_TYPES["number"](v) for v in row)
            for row in affine
        ):
            raise ProtocolError(f"volume 'affine' must be a 4x4 list of numbers, got {affine!r}")
        if self.data.ndim != 3:
            raise ProtocolError(f"volume data must be 3-D, got shape {self.data.shape}")
        if self.seq < 0:
            raise ProtocolError(f"volume 'seq' must be an integer >= 0, got {self.seq!r}")
        if not (math.isfinite(self.tr_s) and self.tr_s > 0) or not math.isfinite(self.acq_time_s):
            raise ProtocolError(
                f"volume 'tr_s' must be > 0 and 'acq_time_s' finite, got {self.tr_s!r}, {self.acq_time_s!r}"
            )
        stamps = self.stamps or {}
        if not all(_TYPES["integer"](v) for v in stamps.values()):
            raise ProtocolError(f"volume 'stamps' must map stage names to integer ns, got {stamps!r}")
        return Volume(
            self.data,
            np.asarray(affine, dtype=np.float64),
            self.seq,
            float(self.tr_s),
            float(self.acq_time_s),
            self.session,
            self.series,
            stamps_from_dict(stamps),
        )


@dataclasses.dataclass(kw_only=True)
class End(WireMessage):
    """A sender's word that a series is complete."""

    kind: ClassVar[str] = "end"
    session: str = _header("string", "session id")
    series: str = _header("string", "the series that ended")
    n_sent: int | None = _header("integer", "volumes sent in the series", optional=True)


RESULTS: tuple[type[WireMessage], ...] = (Features, Ranking, Motion, Feedback, Latency, Latent, Block, Status)
INPUTS: tuple[type[WireMessage], ...] = (VolumeMessage, End)
_BY_KIND: dict[str, type[WireMessage]] = {cls.kind: cls for cls in RESULTS + INPUTS}


def parse(msg: Message) -> WireMessage:
    """The declared message a decoded :class:`~rtdecode.wire.frames.Message` carries.

    Raises
    ------
    ProtocolError
        An unknown or missing ``kind``, or a field that breaks its declaration.
    """
    kind = msg.header.get("kind")
    cls = _BY_KIND.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"unknown message kind {kind!r}; expected one of {sorted(_BY_KIND)}")
    if cls in INPUTS and msg.topic != kind:
        raise ProtocolError(f"a {kind!r} message must have topic {kind!r}, got {msg.topic!r}")
    return cls.from_wire(msg)


def parse_frames(frames: Any) -> WireMessage:
    """:func:`parse` of raw frames (:func:`~rtdecode.wire.frames.decode` first)."""
    return parse(decode(frames))


def encode_volume(vol: Volume) -> list[bytes | memoryview]:
    """Frames of a ``volume`` message (data not copied)."""
    return VolumeMessage.of(vol).encode()


def decode_volume(msg: Message) -> Volume:
    """The checked :class:`~rtdecode.volume.Volume` of a decoded ``volume`` message.

    Raises
    ------
    ProtocolError
        A field is missing, of the wrong JSON type, or out of range.
    """
    return VolumeMessage.from_wire(msg).to_volume()


def field_table(cls: type[WireMessage]) -> str:
    """The Markdown table of a message's fields, as ``docs/protocol.md`` shows it."""
    rows = ["| field | in | type | unit | meaning |", "|---|---|---|---|---|"]
    rows.append(f"| `kind` | header | string | | `{cls.kind}` |")
    for f in dataclasses.fields(cls):
        m: Mapping[str, Any] = f.metadata
        opt = " (optional)" if m["optional"] else ""
        rows.append(f"| `{f.name}` | {m['where']} | {m['type']}{opt} | {m['unit']} | {m['meaning']} |")
    return "\n".join(rows)
