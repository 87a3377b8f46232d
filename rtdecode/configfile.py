"""Reading and checking a configuration: YAML or data in, a valid :class:`~rtdecode.config.Config` out.

Every mistake is reported with the file, the key, the rule and the value (a
:class:`~rtdecode.errors.ConfigError`); the settings themselves are declared in :mod:`rtdecode.config`.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from rtdecode._typecheck import from_mapping, short
from rtdecode.config import (
    CONTENT_FEEDBACK_KINDS,
    FEEDBACK_KINDS,
    NORMALISATIONS,
    NUISANCE_REGRESSORS,
    Config,
    RunConfig,
    is_loopback,
)
from rtdecode.errors import ConfigError


def _tcp_port_ok(address: str) -> bool:
    if not address.startswith("tcp://"):
        return True
    host, sep, port = address[len("tcp://") :].rpartition(":")
    return bool(sep and host) and (port == "*" or (port.isdigit() and 0 <= int(port) <= 65535))


def _validate(cfg: Config, where: str) -> None:
    r, d = cfg.run, cfg.demo
    rules = [
        (
            r.rank_precision in ("float32", "int8"),
            "run.rank_precision",
            "must be 'float32' or 'int8'",
            r.rank_precision,
        ),
        (1 <= r.top_k <= 1000, "run.top_k", "must be between 1 and 1000", r.top_k),
        (1 <= r.rank_threads <= 64, "run.rank_threads", "must be between 1 and 64", r.rank_threads),
        (1 <= r.decode_threads <= 64, "run.decode_threads", "must be between 1 and 64", r.decode_threads),
        (1 <= r.batch_volumes <= 256, "run.batch_volumes", "must be between 1 and 256", r.batch_volumes),
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
        (r.expected_volumes >= 0, "run.expected_volumes", "must be >= 0", r.expected_volumes),
        (
            r.input.address != r.output.address,
            "run.output.address",
            "must differ from run.input.address",
            r.output.address,
        ),
        (
            r.history.address not in (r.input.address, r.output.address),
            "run.history.address",
            "must differ from run.input.address and run.output.address",
            r.history.address,
        ),
        (r.motion.n_reference >= 1, "run.motion.n_reference", "must be >= 1", r.motion.n_reference),
        (r.motion.fd_threshold_mm > 0, "run.motion.fd_threshold_mm", "must be > 0", r.motion.fd_threshold_mm),
        (r.motion.threads in (1, 2), "run.motion.threads", "must be 1 or 2", r.motion.threads),
        (
            r.preprocess.baseline_volumes >= 2,
            "run.preprocess.baseline_volumes",
            "must be >= 2",
            r.preprocess.baseline_volumes,
        ),
        (
            r.preprocess.normalise in NORMALISATIONS,
            "run.preprocess.normalise",
            f"must be one of {', '.join(NORMALISATIONS)}",
            r.preprocess.normalise,
        ),
        (
            r.preprocess.detrend_tau_s > 0,
            "run.preprocess.detrend_tau_s",
            "must be > 0",
            r.preprocess.detrend_tau_s,
        ),
        (
            r.preprocess.despike.threshold > 0,
            "run.preprocess.despike.threshold",
            "must be > 0",
            r.preprocess.despike.threshold,
        ),
        (
            r.preprocess.despike.tau_s > 0,
            "run.preprocess.despike.tau_s",
            "must be > 0",
            r.preprocess.despike.tau_s,
        ),
        (
            set(r.preprocess.nuisance.regressors) <= set(NUISANCE_REGRESSORS),
            "run.preprocess.nuisance.regressors",
            f"must be some of {list(NUISANCE_REGRESSORS)}",
            r.preprocess.nuisance.regressors,
        ),
        (
            r.preprocess.smoothing_fwhm_mm >= 0,
            "run.preprocess.smoothing_fwhm_mm",
            "must be >= 0",
            r.preprocess.smoothing_fwhm_mm,
        ),
        (
            r.preprocess.nuisance.penalty > 0,
            "run.preprocess.nuisance.penalty",
            "must be > 0",
            r.preprocess.nuisance.penalty,
        ),
        (
            r.motion.enabled or not {"motion", "motion_derivatives"} & set(r.preprocess.nuisance.regressors),
            "run.preprocess.nuisance.regressors",
            "motion regressors need run.motion.enabled",
            r.preprocess.nuisance.regressors,
        ),
        (
            r.preprocess.nuisance.compcor_components >= 1,
            "run.preprocess.nuisance.compcor_components",
            "must be >= 1",
            r.preprocess.nuisance.compcor_components,
        ),
        (r.physio.window_s > 10, "run.physio.window_s", "must be > 10 s", r.physio.window_s),
        (r.physio.max_wait_s >= 0, "run.physio.max_wait_s", "must be >= 0", r.physio.max_wait_s),
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
        (d.reconstruct_steps >= 1, "demo.reconstruct_steps", "must be >= 1", d.reconstruct_steps),
        (d.reconstruct_crops >= 1, "demo.reconstruct_crops", "must be >= 1", d.reconstruct_crops),
        (r.transport in ("zmq", "lsl"), "run.transport", "must be zmq or lsl", r.transport),
        (r.blocks.hrf_shift_s >= 0, "run.blocks.hrf_shift_s", "must be >= 0", r.blocks.hrf_shift_s),
        (
            all(
                isinstance(k, str)
                and isinstance(w, list)
                and len(w) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in w)
                and 0 <= w[0] < w[1]
                for k, w in r.blocks.windows.items()
            ),
            "run.blocks.windows",
            "must map condition names to [from_s, to_s] with 0 <= from_s < to_s",
            r.blocks.windows,
        ),
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
    for sock in ("input", "output", "history")[: 3 if r.history.address else 2]:
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
    nu = cfg.preprocess.nuisance
    for tissue in ("wm", "csf"):  # a mask named outright, or the bundle's when a regressor needs it
        named = getattr(nu, f"{tissue}_mask")
        path = Path(named) if named else bundle / f"{tissue}_mask.nii.gz"
        paths.append(
            (f"run.preprocess.nuisance.{tissue}_mask", path, bool(named) or tissue in nu.masks_needed)
        )
    for key, path, needed in paths:
        if needed and not path.exists():
            raise ConfigError(f"{where}: {key}: {str(path)!r} does not exist")
