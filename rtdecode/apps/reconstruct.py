"""``rtdecode reconstruct``: a subscriber that turns each decoded block into an image.

It sees only the wire, like ``record`` and ``dashboard``: a reader thread follows the decoder's
publisher (nothing is dropped; a restarted decoder is reconnected to by ZeroMQ), the main thread
reconstructs each final ``block`` result in turn and publishes a ``reconstruction`` message on
its own address, with the PNG, and writes the PNG and a line of ``index.jsonl`` under ``--out``.
A block that cannot be reconstructed (empty, predictions that do not fit the bank, no latents)
is skipped with its reason, logged and published as a ``status`` event; the next block is not
affected.

Methods: ``features`` inverts the block's predicted DNN features (:mod:`rtdecode.models.inversion`);
``ldm`` runs Takagi & Nishimoto's img2img on the block's averaged ``latent`` targets
(:mod:`rtdecode.models.ldm`).
"""

from __future__ import annotations

import io
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rtdecode.errors import ConfigError, ProtocolError
from rtdecode.transport.subscription import messages
from rtdecode.wire import messages as m

if TYPE_CHECKING:
    from rtdecode.models.inversion import InversionParams

log = logging.getLogger(__name__)

# Latent targets kept per series for blocks still to come (a GOD block is 3 volumes, a trial 8).
KEEP_LATENTS = 200


class SkipBlock(Exception):
    """A block that cannot be reconstructed; the message says why."""


def png_bytes(image: np.ndarray) -> bytes:
    """An RGB uint8 image as a PNG file."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def split_layers(block: m.Block, roi: str, n_units: dict[str, int]) -> dict[str, np.ndarray]:
    """The block's prediction of ``roi`` cut into its layers, checked against the bank's unit counts.

    Raises
    ------
    SkipBlock
        The block has no prediction, not this ROI, a layer the bank lacks, sizes that do not add up
        or values that are not finite.
    """
    if block.status != "ok" or block.predictions is None:
        raise SkipBlock(f"block {block.block} has no prediction (status {block.status!r})")
    if roi not in block.rois:
        raise SkipBlock(f"block {block.block}: ROI {roi!r} not decoded (the decoder has {block.rois})")
    if missing := [ly for ly in block.layers if ly not in n_units]:
        raise SkipBlock(f"block {block.block}: layers {missing} are not in the feature bank")
    pred = np.asarray(block.predictions)
    sizes = [n_units[ly] for ly in block.layers]
    if pred.ndim != 2 or pred.shape != (len(block.rois), sum(sizes)):
        raise SkipBlock(
            f"block {block.block}: predictions of shape {pred.shape}, the bank's layers "
            f"{block.layers} need ({len(block.rois)}, {sum(sizes)})"
        )
    row = pred[block.rois.index(roi)]
    if not np.isfinite(row).all():
        raise SkipBlock(f"block {block.block}: the prediction of {roi} has non-finite values")
    edges = np.cumsum([0, *sizes])
    return {ly: row[a:b] for ly, a, b in zip(block.layers, edges[:-1], edges[1:])}


class LatentStore:
    """The recent ``latent`` targets of each series, to average over a block's volumes."""

    def __init__(self, keep: int = KEEP_LATENTS) -> None:
        self.keep = keep
        self._by_series: dict[tuple[str, str], dict[int, dict[str, np.ndarray]]] = {}

    def add(self, msg: m.Latent) -> None:
        """Keep one volume's targets (the oldest of its series go beyond ``keep``)."""
        series = self._by_series.setdefault((msg.session, msg.series), {})
        series[msg.seq] = {k: np.array(v) for k, v in msg.targets.items()}
        while len(series) > self.keep:
            del series[min(series)]

    def block_mean(self, block: m.Block) -> dict[str, np.ndarray]:
        """Each target averaged over the block's volumes.

        Raises
        ------
        SkipBlock
            None of the block's volumes has targets, or they are not finite.
        """
        series = self._by_series.get((block.session, block.series), {})
        found = [series[s] for s in block.seqs if isinstance(s, int) and s in series]
        if not found:
            raise SkipBlock(f"block {block.block}: no latent targets for its volumes (is run.latents on?)")
        names = set.intersection(*(set(f) for f in found))
        out = {k: np.mean([f[k] for f in found], axis=0) for k in sorted(names)}
        if not all(np.isfinite(v).all() for v in out.values()):
            raise SkipBlock(f"block {block.block}: latent targets with non-finite values")
        return out


def _reader(address: str, inbox: queue.Queue, stop: threading.Event, timeout_s: float) -> None:
    try:
        for msg in messages(
            address, topics=("block", "latent", "status"), stop=stop, timeout_s=timeout_s, queue=0
        ):
            inbox.put((time.monotonic(), msg))
    finally:
        inbox.put((time.monotonic(), None))


def run_reconstructor(
    address: str,
    make_image: Callable[[m.Block, LatentStore], tuple[np.ndarray, dict]],
    method: str,
    publish: str | None = None,
    out_dir: str | Path | None = None,
    until_end: bool = False,
    timeout_s: float = 0.0,
    ready_file: str | Path | None = None,
    seed: int = 0,
) -> int:
    """Follow a decoder and reconstruct every final block result; return how many were made.

    Parameters
    ----------
    address : str
        The decoder's PUB address.
    make_image : callable
        ``(block, latents) -> (RGB uint8 image, {"iterations", "seconds", "loss", "roi"})``; raises
        :class:`SkipBlock` (or ``ValueError``/``KeyError``) for a block it cannot use.
    method : str
        ``features`` or ``ldm``, as published.
    publish : str, optional
        Bind a PUB socket here for ``reconstruction`` (and ``status`` skip) messages.
    out_dir : str or Path, optional
        Write ``<session>/<series>/block-NNN-<method>.png`` and ``index.jsonl`` here.
    until_end : bool
        Stop after the decoder's end-of-series (once every block before it is done).
    timeout_s : float
        Stop after this long without a message from the decoder (0: never).
    ready_file : str or Path, optional
        Created once the reader is subscribed and the publisher bound.
    seed : int
        Published with each reconstruction.
    """
    from rtdecode.transport.zmq import Publisher

    pub = Publisher(publish) if publish else None
    out = Path(out_dir) if out_dir else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    inbox: queue.Queue = queue.Queue()
    stop = threading.Event()
    reader = threading.Thread(target=_reader, args=(address, inbox, stop, timeout_s), daemon=True)
    reader.start()
    if ready_file is not None:
        Path(ready_file).write_text("ready\n")
    latents, made = LatentStore(), 0
    try:
        while True:
            arrived, msg = inbox.get()
            if msg is None:
                return made
            if isinstance(msg, m.Latent):
                latents.add(msg)
            elif isinstance(msg, m.Status) and msg.event == "end" and until_end:
                return made
            elif isinstance(msg, m.Block) and not msg.running:
                made += _one(msg, arrived, make_image, latents, method, pub, out, seed)
    finally:
        stop.set()
        if pub is not None:
            pub.close()


def _one(
    block: m.Block, arrived: float, make_image: Callable, latents: LatentStore, method: str,
    pub, out: Path | None, seed: int,
) -> int:  # fmt: skip
    try:
        image, info = make_image(block, latents)
    except (SkipBlock, ValueError, KeyError, ProtocolError) as err:
        log.warning("block %s of %s/%s skipped: %s", block.block, block.session, block.series, err)
        if pub is not None:
            pub.publish(m.Status(event="skipped", reason=f"reconstruction: {err}", session=block.session,
                                 series=block.series))  # fmt: skip
        return 0
    msg = m.Reconstruction(
        session=block.session,
        series=block.series,
        block=block.block,
        label=block.label,
        condition=block.condition,
        seqs=list(block.seqs),
        method=method,
        roi=info.get("roi"),
        iterations=int(info["iterations"]),
        seconds=float(info["seconds"]),
        lag_s=0.0,
        loss=info.get("loss"),
        seed=seed,
        png=np.frombuffer(png_bytes(image), dtype=np.uint8),
    )
    if out is not None:
        folder = out.resolve() / _safe(block.session) / _safe(block.series)
        path = folder / f"block-{block.block:03d}-{method}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(msg.png.tobytes())
        msg.path = str(path)
    msg.lag_s = time.monotonic() - arrived
    if out is not None:
        with open(out / "index.jsonl", "a") as f:
            f.write(json.dumps(msg.header()) + "\n")
    if pub is not None:
        pub.publish(msg)
    log.info(
        "block %s (%s): %s in %.1f s, lag %.1f s", block.block, block.label, method, msg.seconds, msg.lag_s
    )
    return 1


def _safe(name: str) -> str:
    """A session or series id as a file name (ids come from the network)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).lstrip(".") or "_"


def features_method(
    bank: str | Path, roi: str = "VC", params: InversionParams | None = None, generator: str = ""
) -> Callable[[m.Block, LatentStore], tuple[np.ndarray, dict]]:
    """Feature inversion of ``roi``'s block predictions through the network of ``bank``.

    Parameters
    ----------
    bank : str or Path
        The ``features.npz``/``features.json`` folder the decoders' features came from
        (``tools/extract_features.py``): network, layers and sampled units.
    roi : str
    params : InversionParams, optional
    generator : str
        ``module:factory`` of an image prior (a callable returning a torch module, see
        :class:`~rtdecode.models.inversion.FeatureInverter`); "" for none.
    """
    import torch

    from rtdecode.models.cnn import BankSpec
    from rtdecode.models.inversion import FeatureInverter

    torch.set_num_threads(1)  # two cores: the decoder keeps the other
    spec = BankSpec.load(bank)
    inverter = FeatureInverter(spec, params, generator=_load_generator(generator) if generator else None)
    n_units = {ly: spec.units[ly].size for ly in spec.layers}

    def make(block: m.Block, _latents: LatentStore) -> tuple[np.ndarray, dict]:
        result = inverter.reconstruct(split_layers(block, roi, n_units))
        return result.image, {
            "iterations": result.steps,
            "seconds": result.seconds,
            "loss": result.loss,
            "roi": roi,
        }

    return make


def ldm_method(
    folder: str | Path, strength: float = 0.8, steps: int = 50, guidance: float = 5.0, seed: int = 0,
    device: str = "auto", image_target: str = "image", text_target: str = "text",
) -> Callable[[m.Block, LatentStore], tuple[np.ndarray, dict]]:  # fmt: skip
    """Takagi & Nishimoto's img2img from a block's mean ``latent`` targets (``image``: z, ``text``: c)."""
    from rtdecode.models.ldm import LdmReconstructor

    ldm = LdmReconstructor(folder, strength, steps, guidance, device)

    def make(block: m.Block, latents: LatentStore) -> tuple[np.ndarray, dict]:
        targets = latents.block_mean(block)
        if image_target not in targets or text_target not in targets:
            raise SkipBlock(
                f"block {block.block}: latents {sorted(targets)} lack {image_target!r}/{text_target!r}"
            )
        return ldm.reconstruct(targets[image_target], targets[text_target], seed)

    return make


def _load_generator(spec: str):
    """Call ``module:factory`` (the user's own code, imported like a plug-in) for the generator prior."""
    import importlib

    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)()
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(f"--generator {spec!r}: cannot import and call it ({err})") from err


def read_index(out_dir: str | Path) -> list[dict]:
    """The reconstructions ``index.jsonl`` under ``out_dir`` lists, in the order they were made."""
    path = Path(out_dir) / "index.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
