"""YAML configuration: one file with sections ``simulate``, ``train``, ``run`` and ``demo``.

Every section is a dataclass; loading checks every key and value and raises
:class:`~rtdecode.errors.ConfigError` naming the file, the key, the rule and the value.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from rtdecode._typecheck import from_mapping, short
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
    bundle: str = ""  # the decoder bundle directory (required by rtdecode run and offline)
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
    max_gap_volumes: int = 10_000  # a volume further ahead of the last one is refused (a corrupt index)
    allow_insecure_network: bool = False  # bind beyond loopback without CurveZMQ (warned at every start)


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

    rois: list[str] = field(
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


def is_loopback(address: str) -> bool:
    """Whether a ZeroMQ address stays on this machine (``ipc://``, ``inproc://``, ``tcp://`` to loopback)."""
    if not address.startswith("tcp://"):
        return True
    host = address[len("tcp://") :].rpartition(":")[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def _tcp_port_ok(address: str) -> bool:
    if not address.startswith("tcp://"):
        return True
    host, sep, port = address[len("tcp://") :].rpartition(":")
    return bool(sep and host) and (port == "*" or (port.isdigit() and 0 <= int(port) <= 65535))


def _validate(cfg: Config, where: str) -> None:
    r = cfg.run
    rules = [
        (
            r.rank_precision in ("float32", "int8"),
            "run.rank_precision",
            "must be 'float32' or 'int8'",
            r.rank_precision,
        ),
        (1 <= r.top_k <= 1000, "run.top_k", "must be between 1 and 1000", r.top_k),
        (1 <= r.rank_threads <= 64, "run.rank_threads", "must be between 1 and 64", r.rank_threads),
        (0 < r.heartbeat_s <= 60, "run.heartbeat_s", "must be > 0 and <= 60", r.heartbeat_s),
        (0 < r.pause_trs <= 1e6, "run.pause_trs", "must be > 0 and <= 1e6", r.pause_trs),
        (0 <= r.reorder_ms <= 10_000, "run.reorder_ms", "must be between 0 and 10000", r.reorder_ms),
        (
            0 < r.input.max_message_mb <= 4096,
            "run.input.max_message_mb",
            "must be > 0 and <= 4096",
            r.input.max_message_mb,
        ),
        (r.max_gap_volumes >= 1, "run.max_gap_volumes", "must be >= 1", r.max_gap_volumes),
        (
            r.input.address != r.output.address,
            "run.output.address",
            "must differ from run.input.address",
            r.output.address,
        ),
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
        s = getattr(r, sock)
        rules += [
            (
                s.address.startswith(("tcp://", "ipc://", "inproc://")),
                f"run.{sock}.address",
                "must start with tcp://, ipc:// or inproc://",
                s.address,
            ),
            (
                _tcp_port_ok(s.address),
                f"run.{sock}.address",
                "must be tcp://HOST:PORT, PORT 0-65535 or *",
                s.address,
            ),
            (
                not s.bind or is_loopback(s.address) or r.curve.enabled or r.allow_insecure_network,
                f"run.{sock}.address",
                "binds beyond this machine without encryption: turn on run.curve (see `rtdecode keygen`), "
                "or set run.allow_insecure_network: true on a network you trust",
                s.address,
            ),
        ]
    for ok, key, rule, value in rules:
        if not ok:
            raise ConfigError(f"{where}: {key}: {rule}, got {short(value)}")


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
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from err
    except (ValueError, RecursionError) as err:  # YAML that names values Python cannot hold
        raise ConfigError(f"{path}: not readable YAML: {type(err).__name__}: {short(str(err))}") from err
    return config_from_data(data if data is not None else {}, str(path))


def config_from_data(data: object, where: str) -> Config:
    """A validated :class:`Config` from parsed YAML (what :func:`load_config` does after parsing).

    Raises
    ------
    ConfigError
        ``<where>: <key>: <rule>, got <value>``, one line.
    """
    cfg = from_mapping(Config, data, where)
    _validate(cfg, where)
    return cfg


def check_run_files(cfg: RunConfig, where: str) -> None:
    """Check that the files and directories ``run`` names exist, before anything is loaded.

    Raises
    ------
    ConfigError
        Naming the config file, the key and the path.
    """
    if not cfg.bundle:
        raise ConfigError(f"{where}: run.bundle: must name a decoder bundle directory (rtdecode train --out)")
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
