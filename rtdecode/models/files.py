"""One reader and writer for every model file: arrays in NPZ, metadata in JSON, checked on load.

A model is ``<name>.npz`` (arrays only, read with ``allow_pickle=False``) beside ``<name>.json``
(``format``, ``version``, the model's own metadata, and ``<suffix>_sha256``, the SHA-256 of the
NPZ and of any further file, e.g. ``npz_sha256``, ``pt_sha256``). Loading refuses another format
or version, naming both, and any file whose checksum differs from the JSON. Decoder bundles, MLP
bundles, latent maps and classifiers all use it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rtdecode.errors import ModelFileError


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, as hex."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def mask_checksum(mask: np.ndarray) -> str:
    """SHA-256 of a boolean mask's shape and C-order bits, as hex."""
    mask = np.asarray(mask, dtype=bool)
    h = hashlib.sha256(json.dumps(list(mask.shape)).encode())
    h.update(np.packbits(mask.ravel()).tobytes())
    return h.hexdigest()


def _sum_key(path: Path) -> str:
    return f"{path.suffix.lstrip('.')}_sha256"


def write_model(
    base: str | Path,
    fmt: str,
    version: int,
    arrays: Mapping[str, np.ndarray],
    meta: Mapping[str, Any],
    companions: Iterable[str] = (),
) -> Path:
    """Write ``<base>.npz`` and ``<base>.json``; return the JSON path.

    Parameters
    ----------
    base : str or Path
        Path without suffix; its directory is created.
    fmt, version
        The format name and version, first in the JSON.
    arrays : mapping of str to numpy.ndarray
    meta : mapping
        JSON-serialisable fields of the model.
    companions : iterable of str
        Names of files already written beside it (e.g. ``mlp.pt``) whose checksums the JSON
        records too.
    """
    base = Path(base)
    base.parent.mkdir(parents=True, exist_ok=True)
    npz = base.with_suffix(".npz")
    np.savez(npz, **arrays)
    files = [npz, *(base.parent / n for n in companions)]
    doc = {"format": fmt, "version": version, **meta} | {_sum_key(p): file_sha256(p) for p in files}
    base.with_suffix(".json").write_text(json.dumps(doc, indent=1))
    return base.with_suffix(".json")


def read_format(base: str | Path) -> str | None:
    """The ``format`` named in ``<base>.json``, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(base).with_suffix(".json").read_text()).get("format")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def read_model(
    base: str | Path, fmt: str, version: int, companions: Iterable[str] = ()
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read and verify a model written by :func:`write_model` (``companions`` as there).

    Returns
    -------
    meta : dict
        The JSON document.
    arrays : dict of str to numpy.ndarray

    Raises
    ------
    ModelFileError
        A file is missing or not readable, the format or version differs (both are named), or a
        checksum differs from the JSON.
    """
    base = Path(base)
    doc_path = base.with_suffix(".json")
    try:
        meta = json.loads(doc_path.read_text())
    except FileNotFoundError as err:
        raise ModelFileError(f"no {fmt} model at {str(base.parent)!r}: {doc_path.name} is missing") from err
    except (OSError, json.JSONDecodeError) as err:
        raise ModelFileError(f"{doc_path}: not readable JSON ({err})") from err
    if not isinstance(meta, dict) or meta.get("format") != fmt or meta.get("version") != version:
        got = (meta.get("format"), meta.get("version")) if isinstance(meta, dict) else (None, None)
        raise ModelFileError(
            f"{doc_path}: expected format {fmt!r} version {version}, got {got[0]!r} version {got[1]!r}"
        )
    if "npz_sha256" not in meta:
        raise ModelFileError(f"{doc_path}: lists no npz_sha256")
    for path in [base.with_suffix(".npz"), *(base.parent / n for n in companions)]:
        expected = meta.get(_sum_key(path))
        if not path.exists():
            raise ModelFileError(f"{path}: missing")
        if file_sha256(path) != expected:
            raise ModelFileError(f"{path}: checksum differs from {doc_path.name} (file changed or corrupt)")
    try:
        with np.load(base.with_suffix(".npz"), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as err:
        raise ModelFileError(f"{base.with_suffix('.npz')}: not a readable NPZ ({err})") from err
    return meta, arrays
