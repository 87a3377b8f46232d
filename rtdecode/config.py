"""YAML configuration: one file with sections ``simulate``, ``train``, ``run`` and ``demo``.

Every section is a dataclass; loading checks every key and value and raises
:class:`~rtdecode.errors.ConfigError` naming the file, the key, the rule and the value.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rtdecode.errors import ConfigError


@dataclass
class SocketConfig:
    """A ZeroMQ endpoint: ``address`` such as ``tcp://127.0.0.1:5555``; ``bind`` or connect."""

    address: str = "tcp://127.0.0.1:5555"
    bind: bool = True


@dataclass
class MotionConfig:
    """Motion correction stage (see :class:`rtdecode.motion.MotionCorrector`)."""

    enabled: bool = True
    reference: str = ""  # a NIfTI volume; empty: the first volume(s) of the series
    n_reference: int = 1
    fd_threshold_mm: float = 0.5


@dataclass
class PreprocessConfig:
    """Causal preprocessing (see :class:`rtdecode.preprocess.Preprocessor`)."""

    baseline_volumes: int = 8
    detrend_tau_s: float = 60.0


@dataclass
class RunConfig:
    """The real-time decoder."""

    input: SocketConfig = field(default_factory=SocketConfig)
    output: SocketConfig = field(default_factory=lambda: SocketConfig("tcp://127.0.0.1:5556", True))
    bundle: str = "demo-out/decoder"
    candidates: str = ""  # default: <bundle>/candidates.npz
    top_k: int = 5
    heartbeat_s: float = 0.5
    publish_input: bool = False  # republish each received volume on topic "volume" (for recorders)
    motion: MotionConfig = field(default_factory=MotionConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)


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
    n_voxels: int = 500
    alpha: float = 100.0
    hrf_shift_s: float = 6.0
    scrub_censored: bool = True  # leave volumes flagged by motion out of the block averages


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
    if base is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where}: must be an integer, got {value!r}")
    if not isinstance(value, base):
        raise ConfigError(f"{where}: must be of type {base.__name__}, got {value!r}")
    return value


def _validate(cfg: Config, where: str) -> None:
    r = cfg.run
    rules = [
        (r.top_k >= 1, "run.top_k", "must be >= 1", r.top_k),
        (r.heartbeat_s > 0, "run.heartbeat_s", "must be > 0", r.heartbeat_s),
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
        (cfg.train.alpha > 0, "train.alpha", "must be > 0", cfg.train.alpha),
        (cfg.demo.speed > 0, "demo.speed", "must be > 0", cfg.demo.speed),
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
        raise ConfigError(f"cannot read config {str(path)!r}: {err.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    cfg = _convert(Config, data or {}, str(path))
    _validate(cfg, str(path))
    return cfg


def to_dict(cfg: Config) -> dict:
    """The configuration as plain data (for writing YAML)."""
    return dataclasses.asdict(cfg)
