"""Every message of protocol v1, declared once: its topic, header fields and arrays.

The inputs (a volume, the end of a series) are declared in :mod:`rtdecode.wire.inputs`.

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
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from rtdecode.errors import ProtocolError
from rtdecode.volume import Volume
from rtdecode.wire.frames import Message
from rtdecode.wire.inputs import End, VolumeMessage
from rtdecode.wire.schema import TYPES, WireMessage, array, header


def _volume_ref() -> dict[str, Any]:
    # Which volume a message is about: a consumer files it under (session, series, seq).
    return {
        "session": header("string", "session id of the volume"),
        "series": header("string", "series (run) id of the volume"),
        "seq": header("integer", "volume index within the series"),
        "acq_time_s": header("number", "acquisition time of the volume, Unix seconds (wall clock)", "s"),
    }


def _per_volume() -> dict[str, Any]:
    # What every per-volume result carries besides the reference.
    return {
        **_volume_ref(),
        "tr_s": header("number", "repetition time of the series", "s"),
        "status": header("string", "`ok` (decoded) or `baseline` (collecting the baseline)"),
    }


def _with(shared: Callable[[], dict[str, Any]]) -> Callable[[type], type]:
    """Make a message dataclass whose fields are ``shared()``'s, then the class's own."""

    def make(cls: type) -> type:
        fields = shared()
        cls.__annotations__ = {**dict.fromkeys(fields, Any), **cls.__annotations__}
        for name, fld in fields.items():
            setattr(cls, name, fld)
        return dataclasses.dataclass(kw_only=True)(cls)

    return make


def volume_context(header: dict[str, Any]) -> dict[str, Any]:
    """The ``session``, ``series`` and ``seq`` of a header that may break the protocol, where readable."""
    out = {k: header[k] for k in ("session", "series") if isinstance(header.get(k), str)}
    if TYPES["integer"](header.get("seq")):
        out["seq"] = header["seq"]
    return out


def volume_ref(vol: Volume) -> dict[str, Any]:
    """The reference fields of a message about ``vol``."""
    return {"session": vol.session, "series": vol.series, "seq": vol.seq, "acq_time_s": vol.acq_time_s}


@_with(_per_volume)
class Features(WireMessage):
    """Predicted DNN features of one ROI and layer (topic ``features.<roi>.<layer>``)."""

    kind: ClassVar[str] = "features"
    roi: str = header("string", "the ROI whose decoder made the prediction")
    layer: str = header("string", "the DNN layer")
    features: np.ndarray = array("float32", "[n_units]", "the predicted feature vector")

    @property
    def topic(self) -> str:
        """``features.<roi>.<layer>``."""
        return f"features.{self.roi}.{self.layer}"


@_with(_per_volume)
class Ranking(WireMessage):
    """The top candidates of every ROI and layer for one volume."""

    kind: ClassVar[str] = "ranking"
    censored: bool = header("boolean", "framewise displacement above the censoring threshold")
    rois: list | None = header("list", "ROI names (absent while `status` is `baseline`)", optional=True)
    layers: list | None = header("list", "layer names (absent while `status` is `baseline`)", optional=True)
    labels: list | None = header(
        "list", "category names, `[n_rois][n_layers][k]` (absent while `status` is `baseline`)", optional=True
    )
    indices: np.ndarray | None = array(
        "int32", "[n_rois, n_layers, k]", "candidate indices, best first (absent in baseline)", optional=True
    )
    scores: np.ndarray | None = array(
        "float32", "[n_rois, n_layers, k]", "Pearson r of each (absent in baseline)", optional=True
    )


@_with(_per_volume)
class Motion(WireMessage):
    """Rigid-body motion of one volume against the reference."""

    kind: ClassVar[str] = "motion"
    params: list = header("list", "tx, ty, tz (mm), rx, ry, rz (deg)", "mm, deg")
    fd_mm: float = header("number", "framewise displacement against the previous volume", "mm")
    censored: bool = header("boolean", "`fd_mm` above `fd_threshold_mm`")
    fd_threshold_mm: float = header("number", "the censoring threshold", "mm")
    iterations: int = header("integer", "Gauss-Newton iterations the estimate took")


@_with(_per_volume)
class Feedback(WireMessage):
    """Neurofeedback scores of one volume."""

    kind: ClassVar[str] = "feedback"
    scores: dict = header(
        "object", '`{name: {"value": v, "raw": r}}` per configured score; `null` while not computable'
    )


@_with(_per_volume)
class Qa(WireMessage):
    """Quality of one volume and of the series so far (:mod:`rtdecode.pipeline.quality`)."""

    kind: ClassVar[str] = "qa"
    fd_mm: float | None = header(
        "number", "framewise displacement (`null` without motion correction)", "mm", optional=True
    )
    spikes: int | None = header(
        "integer", "analysis voxels the despiker replaced (`null` with despiking off)", optional=True
    )
    dvars_pct: float | None = header(
        "number", "RMS change of the analysis voxels from the previous volume (`null` at the first)",
        "% of mean", optional=True,
    )  # fmt: skip
    global_signal: float = header("number", "mean of the analysis voxels after denoising", "scanner units")
    tsnr: dict = header(
        "object", "`{roi: tSNR}`: median over the ROI of running mean / SD (`null` before 3 volumes)"
    )
    frames_under: dict = header(
        "object", '`{"0.2": share, "0.3": share, "0.5": share}` of frames so far with FD at or under (mm)'
    )
    clean_minutes: float = header("number", "frames not censored so far × TR", "min")
    projected_clean_minutes: float | None = header(
        "number", "clean minutes projected at the end of the run (with `run.expected_volumes`)", "min",
        optional=True,
    )  # fmt: skip


@_with(_per_volume)
class Latency(WireMessage):
    """A volume's time stamps and stage durations; the last message of each volume."""

    kind: ClassVar[str] = "latency"
    stamps: dict = header("object", "stage name → `time.monotonic_ns()` value", "ns")
    ms: dict = header("object", "durations between consecutive stages and `end_to_end`", "ms")
    stamps_dropped: list | None = header(
        "list",
        "sender stamps refused as impossible (more than one TR after reception, or a day before it); "
        "the volume's latency is then left out of the summaries",
        optional=True,
    )
    export_ms: float | None = header(
        "number",
        "the scanner's reconstruction and export: `acquired` → `file_complete` (absent without both)",
        "ms",
        optional=True,
    )
    acquired_from: str | None = header("string", "what `acquired` is (as on the volume)", optional=True)


@_with(_volume_ref)
class Latent(WireMessage):
    """Decoded diffusion-model targets of one volume (only with ``run.latents``)."""

    kind: ClassVar[str] = "latent"
    shapes: dict = header("object", "target name → shape of its array")
    ms: float = header("number", "time to compute the targets", "ms")
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


@_with(_volume_ref)
class Block(WireMessage):
    """A stimulus block (from markers), published with the volume that completed it.

    While a block runs, each of its volumes also publishes a *running* block message (``running``
    true): the ranking of its volumes so far.
    """

    kind: ClassVar[str] = "block"
    block: int = header("integer", "block index, from 0")
    label: str | None = header("string", "the category shown (from the marker)", optional=True)
    condition: str | None = header("string", "the condition (from the marker)", optional=True)
    onset_s: float = header("number", "block onset, scan seconds since volume 0", "s")
    offset_s: float | None = header(
        "number", "block offset, scan seconds since volume 0 (absent while running)", "s", optional=True
    )
    running: bool | None = header(
        "boolean", "`true`: the block is in progress; the ranking of its volumes so far", optional=True
    )
    seqs: list = header("list", "the volumes averaged")
    status: str = header("string", "`ok`, or `empty` when no volume of the block could be used")
    rois: list = header("list", "ROI names")
    layers: list = header("list", "layer names")
    feedback: dict = header("object", "block scores, as in `feedback`")
    labels: list | None = header("list", "top category names `[n_rois][n_layers][k]`", optional=True)
    label_rank: list | None = header(
        "list", "rank of `label` per ROI and layer (1 = best; when it is a candidate)", optional=True
    )
    label_correlation: list | None = header(
        "list", "correlation with `label` per ROI and layer (when it is a candidate)", "r", optional=True
    )
    indices: np.ndarray | None = array("int32", "[n_rois, n_layers, k]", "as in `ranking`", optional=True)
    scores: np.ndarray | None = array("float32", "[n_rois, n_layers, k]", "as in `ranking`", optional=True)
    predictions: np.ndarray | None = array(
        "float32", "[n_rois, n_units_total]", "the block-averaged prediction", optional=True
    )


@dataclasses.dataclass(kw_only=True)
class Status(WireMessage):
    """An event of the decoder: start, heartbeat, skip, gap, pause, end, stop."""

    kind: ClassVar[str] = "status"
    event: str = header(
        "string",
        "`started`, `heartbeat`, `skipped`, `gap`, `paused`, `pause-ended`, `sender-disconnected`, "
        "`marker-skipped`, `end`, `stopped`",
    )
    reason: str | None = header(
        "string", "why (`skipped`, `marker-skipped`, `sender-disconnected`)", optional=True
    )
    session: str | None = header("string", "the session concerned (`skipped`, `gap`, `end`)", optional=True)
    series: str | None = header(
        "string", "the series concerned (`skipped`, `gap`, `end`, `paused`)", optional=True
    )
    seq: int | None = header(
        "integer",
        "the volume concerned (`skipped`, `pause-ended`); absent when a message could not be read that far",
        optional=True,
    )
    received: int | None = header("integer", "messages received so far (all series)", optional=True)
    processed: int | None = header("integer", "volumes processed so far", optional=True)
    skipped: int | None = header("integer", "messages and volumes skipped so far", optional=True)
    dropped: int | None = header("integer", "volumes missing so far (gaps)", optional=True)
    missing_from: int | None = header("integer", "`gap`: first missing volume", optional=True)
    missing_to: int | None = header("integer", "`gap`: last missing volume", optional=True)
    after_restart: bool | None = header(
        "boolean", "`gap`: the volumes were lost with a decoder restarted from its checkpoint", optional=True
    )
    last_seq: int | None = header("integer", "`paused`: the last volume before the pause", optional=True)
    silent_s: float | None = header("number", "`paused`: time without a volume", "s", optional=True)
    tr_s: float | None = header("number", "`paused`: the series' TR", "s", optional=True)
    paused_s: float | None = header("number", "`pause-ended`: length of the pause", "s", optional=True)
    n_sent: int | None = header("integer", "`end`: volumes the sender says it sent", optional=True)
    series_counts: dict | None = header(
        "object",
        "`end`: this series' own `received`, `processed`, `skipped`, `dropped` (the plain fields count "
        "every series since the decoder started)",
        optional=True,
    )
    at_end: bool | None = header(
        "boolean",
        "`gap`: the volumes were missing at the end of the series (from `end`'s `n_sent`)",
        optional=True,
    )
    latency_ms: dict | None = header(
        "object", "`end`: p50/p95/p99/max/n per stage interval", "ms", optional=True
    )
    resumed: dict | None = header(
        "object",
        "`started`: the checkpoint's `session`, `series`, `last_seq` (absent: a fresh start)",
        optional=True,
    )
    settings: dict | None = header(
        "object",
        "`started`, `end`: the `run` configuration, `n_candidates` and `int8_kernel` (the int8 ranking's "
        "instructions: `avx512vnni`, `avxvnni`, `avx2`, `portable`; null with float32 ranking)",
        optional=True,
    )


@dataclasses.dataclass(kw_only=True)
class Reconstruction(WireMessage):
    """An image reconstructed from a block's decoded features (``rtdecode reconstruct``, its own port)."""

    kind: ClassVar[str] = "reconstruction"
    session: str = header("string", "session id of the block")
    series: str = header("string", "series id of the block")
    block: int = header("integer", "block index, as in `block`")
    label: str | None = header("string", "the category shown (from the marker)", optional=True)
    condition: str | None = header("string", "the condition (from the marker)", optional=True)
    seqs: list = header("list", "the volumes the block averaged")
    method: str = header("string", "`features` (feature inversion) or `ldm` (latent diffusion img2img)")
    roi: str | None = header("string", "`features`: the ROI whose predictions were inverted", optional=True)
    iterations: int = header("integer", "optimisation steps (`features`) or denoising steps run (`ldm`)")
    seconds: float = header("number", "time the reconstruction took", "s")
    lag_s: float = header("number", "from the block result's arrival to this message", "s")
    loss: float | None = header(
        "number", "`features`: final weighted mean over layers of 1 − r with the decoded features",
        optional=True,
    )  # fmt: skip
    seed: int = header("integer", "seed of the reconstruction (same inputs and seed, same image)")
    path: str | None = header("string", "the PNG file written (with `--out`)", optional=True)
    png: np.ndarray = array("uint8", "[n_bytes]", "the image as a PNG file")


RESULTS: tuple[type[WireMessage], ...] = (
    Features, Ranking, Motion, Feedback, Qa, Latency, Latent, Block, Status, Reconstruction
)  # fmt: skip
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
    out = cls.from_wire(msg)
    if msg.topic != out.topic:
        raise ProtocolError(f"a {kind!r} message must have topic {out.topic!r}, got {msg.topic!r}")
    return out
