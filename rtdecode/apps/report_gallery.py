"""The report's reconstruction gallery: each block's image beside the photograph shown, inline."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np

from rtdecode.apps.reconstruct import read_index
from rtdecode.offline.image_quality import identification, pixel_vectors, read_png

_CSS = (
    "figure.pair{display:inline-block;margin:0.4em;text-align:center;font-size:12px}"
    "figure.pair img{width:112px;height:112px;image-rendering:auto;margin:1px}"
)


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def pixel_identification(made: list[dict], shown: dict[str, Path]) -> float:
    """Pairwise identification by pixels of the reconstructions whose label is shown (``{label: PNG}``)."""
    known = [r for r in made if r.get("label") in shown]
    names = sorted(shown)
    return identification(
        pixel_vectors([read_png(r["path"]) for r in known]),
        pixel_vectors([read_png(shown[n]) for n in names]),
        [names.index(r["label"]) for r in known],
    )


def gallery_section(reconstructions: str | Path, stimuli: str | Path | None = None) -> str:
    """HTML of every reconstruction ``rtdecode reconstruct --out`` made, in block order.

    With ``stimuli`` (a folder of ``<label>.png``), each is shown beside the photograph of its
    block's label, and pairwise identification by pixels among the photographs is given.
    """
    made = [r for r in read_index(reconstructions) if r.get("path") and Path(r["path"]).exists()]
    if not made:
        return f"<p>No reconstructions in {html.escape(str(reconstructions))}.</p>"
    shown = {p.stem: p for p in Path(stimuli).glob("*.png")} if stimuli else {}
    pairs, seconds = [], np.array([r["seconds"] for r in made])
    for r in made:
        label = r.get("label") or ""
        original = _img(shown[label], f"shown: {label}") if label in shown else ""
        loss = f", loss {r['loss']:.2f}" if r.get("loss") is not None else ""
        caption = (
            f"block {r['block']} {html.escape(label)}<br>{html.escape(r['method'])}: {r['iterations']} "
            f"steps, {r['seconds']:.1f} s{loss}; ready {r['lag_s']:.1f} s after the block"
        )
        pairs.append(f'<figure class="pair">{original}{_img(Path(r["path"]), "reconstruction")}'
                     f"<figcaption>{caption}</figcaption></figure>")  # fmt: skip
    text = (
        f"<p>{len(made)} blocks reconstructed by {html.escape(made[0]['method'])}; seconds per image "
        f"median {np.median(seconds):.1f}, max {seconds.max():.1f}."
    )
    if len(shown) > 1 and any(r.get("label") in shown for r in made):
        text += (
            f" Pairwise identification by pixels (each reconstruction against the {len(shown)} "
            f"photographs; chance 0.5): <b>{pixel_identification(made, shown):.2f}</b>."
        )
    return f"<style>{_CSS}</style>{text}</p><p>Left: shown; right: reconstructed.</p>{''.join(pairs)}"
