"""A simulated subject who sees real photographs: the stimuli, bank and sessions of ``demo --reconstruct``.

The test stimuli are scikit-image's photographs; the decoders are trained on other images
(random crops, flips and colour permutations of the *other* photographs), so no test photograph
or any part of it is seen in training. Features are EfficientNet-lite0's
(:mod:`rtdecode.models.cnn`): the simulated voxels respond to them, and the decoders predict
them, as in Horikawa & Kamitani (2017).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from rtdecode.config import Config
from rtdecode.io.nifti import read_events
from rtdecode.offline.train import block_average

# Shown in the test session: colour and grey-level photographs of different kinds.
TEST_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "brick", "text")
# Units sampled per layer; the simulator needs the same count in every layer (fc has 1,000).
PHOTO_UNITS = 500


def photo_stimuli(
    photos: dict[str, np.ndarray] | None = None,
    test: tuple[str, ...] = TEST_PHOTOS,
    n_crops: int = 60,
    seed: int = 0,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(training images, test photographs)`` by name.

    Training images are ``n_crops`` random square crops (a third to all of the short side,
    mirrored half the time, colour channels permuted) of each photograph not in ``test``.
    ``photos`` defaults to scikit-image's (:func:`~rtdecode.models.cnn.skimage_photos`).
    """
    from rtdecode.models.cnn import skimage_photos

    photos = skimage_photos(grey=True) if photos is None else photos
    rng = np.random.default_rng(seed)
    train = {}
    for name, img in photos.items():
        if name in test:
            continue
        rgb = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]
        h, w = rgb.shape[:2]
        for k in range(n_crops):
            s = int(min(h, w) * rng.uniform(1 / 3, 1))
            top, left = rng.integers(0, h - s + 1), rng.integers(0, w - s + 1)
            crop = rgb[top : top + s, left : left + s]
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            train[f"{name}-{k:02d}"] = np.ascontiguousarray(crop[..., rng.permutation(3)])
    return train, {name: photos[name] for name in test}


def photo_sim_overrides(bank_npz: str | Path, n_train: int, test: tuple[str, ...] = TEST_PHOTOS) -> dict:
    """The simulated sessions over the photo bank: every training image once, each photograph once."""
    return {
        "feature_bank": str(bank_npz),
        "n_train_categories": n_train,
        "test_labels": tuple(test),
        "n_test_categories": len(test),
        "train_blocks_per_category": 1,
        "test_blocks_per_category": 1,
    }


def photo_config(cfg: Config) -> Config:
    """The demo's configuration with one decoder, whole visual cortex (VC), as Shen et al. (2019)."""
    train = dataclasses.replace(cfg.train, rois=["VC"], alphas=[1000.0, 10000.0, 100000.0])
    return dataclasses.replace(cfg, train=train)


def decoded_blocks(
    features: dict[tuple[str, str], np.ndarray], seqs: np.ndarray, tr_s: float, events_tsv: str | Path,
    hrf_shift_s: float, roi: str = "VC",
) -> dict[str, dict[str, np.ndarray]]:  # fmt: skip
    """The averaged prediction per layer of each category's test blocks: ``{label: {layer: units}}``.

    ``features`` are per-volume predictions (NaN rows where not decoded) as a recording or the
    subscriber's file holds them, ``seqs`` their volume indices. A category shown in several
    blocks gets the mean of its blocks (Shen et al. 2019 average the repetitions of a test image).
    """
    events = [e for e in read_events(events_tsv) if e.get("trial_type", "stimulus") == "stimulus"]
    onsets = np.array([float(e["onset"]) for e in events])
    duration = float(events[0]["duration"])
    rows: dict[str, dict[str, list[np.ndarray]]] = {}
    for (r, layer), f in features.items():
        if r != roi:
            continue
        avg, kept = block_average(f, seqs * tr_s, onsets, duration, hrf_shift_s)
        for row, b in zip(avg, kept):
            rows.setdefault(events[b]["category_label"], {}).setdefault(layer, []).append(row)
    return {label: {ly: np.mean(r, axis=0) for ly, r in layers.items()} for label, layers in rows.items()}


def prepare_photo_demo(cfg: Config, out: Path) -> tuple[Config, dict]:
    """Write the photo bank, the test photographs and the candidates the live decoder ranks.

    ``out/bank`` (``features.npz``, ``features.json``, ``candidates.npz``, and
    ``test-candidates.npz``: the test photographs only), ``out/stimuli/<name>.png``. Returns the
    demo's configuration (:func:`photo_config`) and the simulator's overrides
    (:func:`photo_sim_overrides`).
    """
    import torch

    from rtdecode.apps.reconstruct import png_bytes
    from rtdecode.models.bank import CandidateBank
    from rtdecode.models.cnn import centre_square, extract_bank, write_bank

    torch.set_num_threads(1)
    train, test = photo_stimuli(n_crops=cfg.demo.reconstruct_crops)
    bank = extract_bank({k: [v] for k, v in {**train, **test}.items()}, n_units=PHOTO_UNITS, seed=0)
    write_bank(out / "bank", bank, seed=0)
    tests_only = CandidateBank.load(out / "bank" / "candidates.npz").without(train)
    tests_only.save(out / "bank" / "test-candidates.npz")
    (out / "stimuli").mkdir(parents=True, exist_ok=True)
    for name, img in test.items():
        (out / "stimuli" / f"{name}.png").write_bytes(png_bytes(np.rint(centre_square(img)).astype(np.uint8)))
    return photo_config(cfg), photo_sim_overrides(out / "bank" / "features.npz", len(train))


def reconstructor_command(
    exe: list[str], address: str, publish: str, out: Path, ready: Path, timeout_s: float, steps: int
) -> list[str]:
    """``rtdecode reconstruct`` for the demo: VC's features inverted, images in ``out/reconstructions``."""
    return [
        *exe, "reconstruct", "--address", address, "--publish", publish, "--bank", str(out / "bank"),
        "--out", str(out / "reconstructions"), "--until-end", "--ready-file", str(ready),
        "--timeout", str(timeout_s), "--steps", str(steps),
    ]  # fmt: skip


def score_reconstructions(out: Path) -> dict:
    """Pairwise identification of the demo's reconstructions among the test photographs, by pixels."""
    from rtdecode.apps.reconstruct import read_index
    from rtdecode.apps.report_gallery import pixel_identification

    made = read_index(out / "reconstructions")
    if not made:
        return {"n_blocks": 0}
    shown = {p.stem: p for p in (out / "stimuli").glob("*.png")}
    seconds = np.array([r["seconds"] for r in made])
    return {
        "n_blocks": len(made),
        "pixel_identification": pixel_identification(made, shown),
        "n_photographs": len(shown),
        "seconds": {"p50": float(np.median(seconds)), "max": float(seconds.max())},
        "lag_s_max": float(max(r["lag_s"] for r in made)),
        "iterations_p50": float(np.median([r["iterations"] for r in made])),
    }
