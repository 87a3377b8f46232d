"""YAML configuration: one file with sections ``simulate``, ``train``, ``run`` and ``demo``.

Every section is a dataclass; loading checks every key and value and raises
:class:`~rtdecode.errors.ConfigError` naming the file, the key, the rule and the value.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rtdecode.errors import ConfigError

# Feedback scores computed from the decoded content (against a target category), then the others.
CONTENT_FEEDBACK_KINDS = ("correlation", "rank", "softmax")
FEEDBACK_KINDS = (*CONTENT_FEEDBACK_KINDS, "psc", "classifier")
HRF_SHIFT_S = 6.0  # the hemodynamic delay blocks are shifted by, seconds (Horikawa & Kamitani 2017)


@dataclass
class SocketConfig:
    """A ZeroMQ endpoint: ``address`` such as ``tcp://127.0.0.1:5555``; ``bind`` or connect."""

    address: str = "tcp://127.0.0.1:5555"
    bind: bool = True
    max_message_mb: float = 256.0  # the volume input refuses larger messages (drops the connection)


@dataclass
class CurveConfig:
    """CurveZMQ on the decoder's sockets (keys from ``rtdecode keygen``)."""

    enabled: bool = False
    secret_key: str = ""  # the decoder's .key_secret file
    clients: str = ""  # directory of allowed client public keys (.key files)


@dataclass
class MotionConfig:
    """Motion correction stage (see :class:`rtdecode.pipeline.motion.MotionCorrector`)."""

    enabled: bool = True
    reference: str = ""  # a NIfTI volume; empty: the first volume(s) of the series
    n_reference: int = 1
    fd_threshold_mm: float = 0.5


@dataclass
class PreprocessConfig:
    """Causal preprocessing (see :class:`rtdecode.pipeline.preprocess.Preprocessor`)."""

    baseline_volumes: int = 8
    detrend_tau_s: float = 60.0


@dataclass
class LslConfig:
    """Lab Streaming Layer endpoints (stream layouts in ``docs/protocol.md``)."""

    outputs: bool = False  # publish every result on LSL streams too
    prefix: str = "rtdecode"  # output stream names start with this
    volume_stream: str = ""  # with run.transport "lsl": only a volume stream of this name
    marker_stream: str = ""  # with run.blocks.enabled: only a marker stream of this name


@dataclass
class BlocksConfig:
    """Block decoding from stimulus markers (see :mod:`rtdecode.pipeline.blocks`)."""

    enabled: bool = False  # listen for LSL markers and decode each marked block
    hrf_shift_s: float = HRF_SHIFT_S


@dataclass
class FeedbackConfig:
    """One neurofeedback score (see :mod:`rtdecode.pipeline.feedback`)."""

    name: str = "feedback"
    kind: str = "correlation"  # one of FEEDBACK_KINDS
    roi: str = "VC"
    layer: str = "cnn8"  # decoded-content kinds
    target: str = ""  # decoded-content kinds: a candidate label
    temperature: float = 0.05  # softmax
    classifier: str = ""  # kind classifier: a classifier file; "" for <bundle>/classifier.json
    normalise: str = "none"  # none | zscore (against the scores of the first baseline_volumes)
    baseline_volumes: int = 10
    smoothing_volumes: float = 0.0  # exponential smoothing time constant in volumes; 0: none


@dataclass
class RunConfig:
    """The real-time decoder."""

    transport: str = "zmq"  # where volumes come from: zmq (run.input) or lsl (a stream of type fMRI)
    input: SocketConfig = field(default_factory=SocketConfig)
    output: SocketConfig = field(default_factory=lambda: SocketConfig("tcp://127.0.0.1:5556", True))
    bundle: str = "demo-out/decoder"
    candidates: str = ""  # default: <bundle>/candidates.npz
    top_k: int = 5
    rank_precision: str = "int8"  # int8: certified int8 pre-ranking, same result as float32, 1/4 the reads
    rank_threads: int = 1  # layers ranked in parallel (2 on a quiet two-core machine)
    heartbeat_s: float = 0.5
    pause_trs: float = 10.0  # no volume for this many TRs: announce a scanner pause (status "paused")
    reorder_ms: float = 100.0  # hold a volume that follows a gap this long, for late ones to catch up
    publish_input: bool = False  # republish each received volume on topic "volume" (for recorders)
    motion: MotionConfig = field(default_factory=MotionConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    lsl: LslConfig = field(default_factory=LslConfig)
    blocks: BlocksConfig = field(default_factory=BlocksConfig)
    feedback: list[FeedbackConfig] = field(default_factory=list)
    latents: str = ""  # a latents directory (train.latents writes <bundle>/latents); "" none
    checkpoint: str = ""  # a directory for the state after each volume, to resume after a crash; "" none
    curve: CurveConfig = field(default_factory=CurveConfig)  # encryption and client allow-list


@dataclass
class ClassifierConfig:
    """A DecNef classifier trained with the decoders (see :mod:`rtdecode.models.classifier`)."""

    roi: str = ""  # "" trains none
    target: str = ""  # regular expression on events.tsv category_label marking the target class
    c: float = 0.0  # inverse L2 penalty; 0 chooses it by cross-validation


@dataclass
class LatentsConfig:
    """Diffusion-model targets trained with the decoders (see :mod:`rtdecode.models.latents`)."""

    enabled: bool = False  # needs <session>/latents.npz with one target array per block
    sources: dict = field(default_factory=lambda: {"image": "LVC", "text": "HVC"})  # target -> ROI
    alphas: list = field(default_factory=lambda: [100.0, 1000.0, 10000.0, 100000.0])


@dataclass
class TrainConfig:
    """Decoder training."""

    rois: list = field(
        default_factory=lambda: ["V1", "V2", "V3", "V4", "LOC", "FFA", "PPA", "LVC", "HVC", "VC"]
    )
    composites: dict = field(
        default_factory=lambda: {
            "LVC": ["V1", "V2", "V3"],
            "HVC": ["LOC", "FFA", "PPA"],
            "VC": ["V1", "V2", "V3", "V4", "LOC", "FFA", "PPA"],
        }
    )
    n_voxels: int = 500  # voxels selected per unit, single ROIs
    n_voxels_composite: int = 1000  # voxels per unit for the composites (GOD: LVC, HVC, VC)
    alpha: float = 100.0  # ridge penalty when alphas is empty
    alphas: list = field(default_factory=lambda: [10.0, 100.0, 1000.0, 10000.0])  # chosen by CV; [] fixed
    hrf_shift_s: float = HRF_SHIFT_S
    scrub_censored: bool = True  # leave volumes flagged by motion out of the block averages
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    latents: LatentsConfig = field(default_factory=LatentsConfig)


@dataclass
class DemoConfig:
    """The demo: how fast the test session is streamed and how long to wait."""

    speed: float = 20.0
    timeout_s: float = 120.0


@dataclass
class Config:
    """A whole configuration file."""

    simulate: dict = field(default_factory=dict)  # SimParams overrides, checked by simulate
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)


def _convert(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = _check_value(hints[key], value, f"{where}.{key}")
    return cls(**kwargs)


def _check_value(tp: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _convert(tp, value, where)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: must be a number, got {value!r}")
        return float(value)
    base = typing.get_origin(tp) or tp
    args = typing.get_args(tp)
    if base is list and args and dataclasses.is_dataclass(args[0]):
        if not isinstance(value, list):
            raise ConfigError(f"{where}: must be a list, got {value!r}")
        return [_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if base is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where}: must be an integer, got {value!r}")
    if not isinstance(value, base):
        raise ConfigError(f"{where}: must be of type {base.__name__}, got {value!r}")
    return value


def _validate(cfg: Config, where: str) -> None:
    r = cfg.run
    rules = [
        (r.top_k >= 1, "run.top_k", "must be >= 1", r.top_k),
        (
            r.rank_precision in ("float32", "int8"),
            "run.rank_precision",
            "must be 'float32' or 'int8'",
            r.rank_precision,
        ),
        (r.rank_threads >= 1, "run.rank_threads", "must be >= 1", r.rank_threads),
        (r.heartbeat_s > 0, "run.heartbeat_s", "must be > 0", r.heartbeat_s),
        (r.pause_trs > 0, "run.pause_trs", "must be > 0", r.pause_trs),
        (0 <= r.reorder_ms <= 10_000, "run.reorder_ms", "must be between 0 and 10000", r.reorder_ms),
        (r.input.max_message_mb > 0, "run.input.max_message_mb", "must be > 0", r.input.max_message_mb),
        (r.motion.n_reference >= 1, "run.motion.n_reference", "must be >= 1", r.motion.n_reference),
        (r.motion.fd_threshold_mm > 0, "run.motion.fd_threshold_mm", "must be > 0", r.motion.fd_threshold_mm),
        (
            r.preprocess.baseline_volumes >= 2,
            "run.preprocess.baseline_volumes",
            "must be >= 2",
            r.preprocess.baseline_volumes,
        ),
        (
            r.preprocess.detrend_tau_s > 0,
            "run.preprocess.detrend_tau_s",
            "must be > 0",
            r.preprocess.detrend_tau_s,
        ),
        (cfg.train.n_voxels >= 1, "train.n_voxels", "must be >= 1", cfg.train.n_voxels),
        (
            cfg.train.n_voxels_composite >= 1,
            "train.n_voxels_composite",
            "must be >= 1",
            cfg.train.n_voxels_composite,
        ),
        (
            all(isinstance(a, (int, float)) and not isinstance(a, bool) and a > 0 for a in cfg.train.alphas),
            "train.alphas",
            "must be a list of numbers > 0",
            cfg.train.alphas,
        ),
        (cfg.train.alpha > 0, "train.alpha", "must be > 0", cfg.train.alpha),
        (cfg.train.classifier.c >= 0, "train.classifier.c", "must be >= 0", cfg.train.classifier.c),
        (cfg.demo.speed > 0, "demo.speed", "must be > 0", cfg.demo.speed),
        (r.transport in ("zmq", "lsl"), "run.transport", "must be zmq or lsl", r.transport),
        (r.blocks.hrf_shift_s >= 0, "run.blocks.hrf_shift_s", "must be >= 0", r.blocks.hrf_shift_s),
    ]
    if r.curve.enabled:
        rules += [
            (
                r.input.bind and r.output.bind,
                "run.curve.enabled",
                "needs run.input.bind and run.output.bind",
                True,
            ),
            (
                Path(r.curve.secret_key).is_file(),
                "run.curve.secret_key",
                "must be a key file",
                r.curve.secret_key,
            ),
            (
                Path(r.curve.clients).is_dir(),
                "run.curve.clients",
                "must be a directory of .key files",
                r.curve.clients,
            ),
        ]
    try:
        re.compile(cfg.train.classifier.target)
        target_ok = True
    except re.error:
        target_ok = False
    rules.append(
        (target_ok, "train.classifier.target", "must be a regular expression", cfg.train.classifier.target)
    )
    names = [f.name for f in r.feedback]
    rules.append((len(set(names)) == len(names), "run.feedback", "names must be unique", names))
    for i, f in enumerate(r.feedback):
        key = f"run.feedback[{i}]"
        rules += [
            (f.kind in FEEDBACK_KINDS, f"{key}.kind", f"must be one of {FEEDBACK_KINDS}", f.kind),
            (f.normalise in ("none", "zscore"), f"{key}.normalise", "must be none or zscore", f.normalise),
            (f.baseline_volumes >= 2, f"{key}.baseline_volumes", "must be >= 2", f.baseline_volumes),
            (f.smoothing_volumes >= 0, f"{key}.smoothing_volumes", "must be >= 0", f.smoothing_volumes),
            (f.temperature > 0, f"{key}.temperature", "must be > 0", f.temperature),
            (
                f.kind not in CONTENT_FEEDBACK_KINDS or bool(f.target),
                f"{key}.target",
                "must name a candidate label for this kind",
                f.target,
            ),
        ]
    for sock in ("input", "output"):
        addr = getattr(r, sock).address
        rules.append(
            (
                addr.startswith(("tcp://", "ipc://", "inproc://")),
                f"run.{sock}.address",
                "must start with tcp://, ipc:// or inproc://",
                addr,
            )
        )
    for ok, key, rule, value in rules:
        if not ok:
            raise ConfigError(f"{where}: {key} {rule}, got {value!r}")


def load_config(path: str | Path | None) -> Config:
    """Load and validate a configuration file; ``None`` gives the defaults.

    Raises
    ------
    ConfigError
        If the file is missing, not YAML, or any key or value breaks a rule.
    """
    if path is None:
        return Config()
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read config {str(path)!r}: {err.strerror}") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    cfg = _convert(Config, data or {}, str(path))
    _validate(cfg, str(path))
    return cfg


def check_run_files(cfg: RunConfig, where: str) -> None:
    """Check that the files and directories ``run`` names exist, before anything is loaded.

    Raises
    ------
    ConfigError
        Naming the config file, the key and the path.
    """
    bundle = Path(cfg.bundle)
    paths = [
        ("run.bundle", bundle / "decoder.json", True),
        ("run.candidates", Path(cfg.candidates) if cfg.candidates else bundle / "candidates.npz", True),
        ("run.motion.reference", Path(cfg.motion.reference), bool(cfg.motion.reference)),
        ("run.latents", Path(cfg.latents) / "latents.json", bool(cfg.latents)),
        ("run.curve.secret_key", Path(cfg.curve.secret_key), cfg.curve.enabled),
        ("run.curve.clients", Path(cfg.curve.clients), cfg.curve.enabled),
    ]
    for key, path, needed in paths:
        if needed and not path.exists():
            raise ConfigError(f"{where}: {key}: {str(path)!r} does not exist")


def to_dict(cfg: Config) -> dict:
    """The configuration as plain data (for writing YAML)."""
    return dataclasses.asdict(cfg)
