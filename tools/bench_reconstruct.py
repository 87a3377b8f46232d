"""How good and how fast feature inversion is, on real photographs, from true and from decoded features.

    python tools/bench_reconstruct.py --json bench-reconstruct.json [--images DIR] [--steps 150]

Photographs: ``--images DIR`` (every .jpg/.jpeg/.png under it, named by file), default
scikit-image's 16. The bank of EfficientNet-lite0 features (500 sampled units per layer) is the
demo's (``rtdecode demo --reconstruct``): the test photographs (the demo's, or every other
photograph of ``DIR``) and training crops of the others.

1. *True features*: each photograph is reconstructed from its own features of the sampled units.
2. *Decoded features*: the demo's simulated subject sees the training crops, decoders (VC) are
   trained, a test session with ``--repeats`` blocks per test photograph (default 4) is decoded
   by the same pipeline as live, and each photograph's prediction, averaged over its blocks as
   Shen et al. (2019) average a test image's repetitions, is reconstructed (``--repeats 1``: one
   block, as ``rtdecode demo --reconstruct`` reconstructs live).
3. *Baseline*, in the same process: the test photographs from their true and from their decoded
   features with plain pixels (no pyramid, no jitter, no total variation, no pixel penalty): what
   the priors buy.

Each reconstruction is identified among the set (pairwise, chance 0.5) by pixel correlation at
64 x 64 and by the network's pooled final-convolution features (1,280 values, a layer the
optimisation never sees), also after 25, 50 and 75 steps: how quality grows with time. Seconds
per image are wall clock on one thread.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rtdecode.apps.batch import decode_series
from rtdecode.apps.demo import sim_params
from rtdecode.apps.demo_photos import (
    PHOTO_UNITS,
    TEST_PHOTOS,
    decoded_blocks,
    photo_config,
    photo_sim_overrides,
    photo_stimuli,
)
from rtdecode.configfile import load_config
from rtdecode.io.recording import Recording
from rtdecode.models.cnn import (
    BankSpec,
    Network,
    centre_square,
    extract_bank,
    skimage_photos,
    to_input,
    write_bank,
)
from rtdecode.models.inversion import FeatureInverter, InversionParams, true_features
from rtdecode.offline.image_quality import identification, pixel_vectors, read_png
from rtdecode.offline.train import train_session
from rtdecode.sim.session import simulate_session, write_session

CHECKPOINTS = (25, 50, 75)


def read_images(folder: str | Path) -> dict[str, np.ndarray]:
    """Every photograph under ``folder`` by file stem."""
    files = sorted(f for f in Path(folder).rglob("*") if f.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if len(files) < 4:
        raise SystemExit(f"{folder}: need at least 4 photographs, found {len(files)}")
    return {f.stem: read_png(f) for f in files}


def head_vectors(net: Network, images: list[np.ndarray]) -> np.ndarray:
    """The network's final convolution averaged over space: features no reconstruction optimised."""
    with torch.no_grad():
        return np.array([net.model.extract_features(to_input(img)).mean((2, 3))[0].numpy() for img in images])


def score(net: Network, recons: dict[str, np.ndarray], originals: dict[str, np.ndarray]) -> dict:
    """Pairwise identification of each reconstruction among the originals, by pixels and by head features."""
    names = list(originals)
    truth = [names.index(n) for n in recons]
    shown = [np.rint(centre_square(originals[n])).astype(np.uint8) for n in names]
    return {
        "pixel_identification": identification(
            pixel_vectors(list(recons.values())), pixel_vectors(shown), truth
        ),
        "feature_identification": identification(
            head_vectors(net, list(recons.values())), head_vectors(net, shown), truth
        ),
        "n": len(recons),
    }


def reconstruct_all(
    inverter: FeatureInverter, targets: dict[str, dict], label: str
) -> tuple[dict, list, dict]:
    """Images, seconds and ``{step: ({name: image}, [seconds to reach it])}`` of every target."""
    images, seconds, snaps = {}, [], {k: ({}, []) for k in CHECKPOINTS}
    for i, (name, t) in enumerate(targets.items()):
        out = inverter.reconstruct(t)
        images[name] = out.image
        seconds.append(out.seconds)
        for k, img in out.snapshots.items():
            snaps[k][0][name] = img
            snaps[k][1].append(out.history[k - 1][0])
        print(
            f"  {label} {i + 1}/{len(targets)} {name}: {out.seconds:.1f} s, loss {out.loss:.3f}", flush=True
        )
    return images, seconds, snaps


def decoded_targets(
    work: Path, bank_npz: Path, n_train: int, test: tuple[str, ...], repeats: int
) -> dict[str, dict]:
    """The demo subject's decoded block features of each test photograph (VC), as decoded live."""
    cfg = photo_config(load_config(None))
    overrides = {**photo_sim_overrides(bank_npz, n_train, test), "test_blocks_per_category": repeats}
    p_train = sim_params(cfg, kind="train", seed=1, **overrides)
    p_test = sim_params(cfg, kind="test", seed=2, **overrides)
    sim = simulate_session(p_train)
    write_session(work / "train", p_train, sim)
    write_session(work / "test", p_test, simulate_session(p_test, sim["subject"]))
    del sim
    train_session(work / "train", work / "decoder", cfg)
    decode_series(
        dataclasses.replace(cfg.run, bundle=str(work / "decoder")),
        work / "test" / "bold.nii",
        work / "rec.h5",
    )
    rec = Recording.load(work / "rec.h5")
    return decoded_blocks(
        rec.features, rec.seq, rec.tr_s, work / "test" / "events.tsv", cfg.train.hrf_shift_s
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True, help="write the results here")
    ap.add_argument("--images", help="a folder of photographs (default: scikit-image's)")
    ap.add_argument("--steps", type=int, default=InversionParams.steps, help="optimisation steps per image")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--repeats", type=int, default=4, help="blocks per test photograph, averaged (1: as live)"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.monotonic()
    photos = read_images(args.images) if args.images else skimage_photos(grey=True)
    test = tuple(sorted(photos)[::2]) if args.images else TEST_PHOTOS
    train, tests = photo_stimuli(photos, test)
    net = Network()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # The demo's bank exactly (training crops and test photographs): the same simulated subject.
        print(f"bank: {len(tests)} test photographs and {len(train)} training crops", flush=True)
        write_bank(
            work / "bank",
            extract_bank({k: [v] for k, v in {**train, **tests}.items()}, PHOTO_UNITS, 0, net),
            0,
        )
        spec = BankSpec.load(work / "bank")
        params = InversionParams(steps=args.steps, seed=args.seed, snapshots=CHECKPOINTS)
        inverter = FeatureInverter(spec, params, net)
        own = true_features(spec, photos, net)
        true_images, true_s, true_snaps = reconstruct_all(inverter, own, "true")
        plain = FeatureInverter(
            spec, dataclasses.replace(params, pyramid=(224,), jitter_px=0, tv_weight=0.0, l2_weight=0.0), net
        )
        base_images, base_s, _ = reconstruct_all(plain, {n: own[n] for n in test}, "plain, true")
        print("decoded features: simulate, train, decode", flush=True)
        decoded = decoded_targets(work, work / "bank" / "features.npz", len(train), test, args.repeats)
        dec_images, dec_s, dec_snaps = reconstruct_all(inverter, decoded, "decoded")
        base_dec_images, _, _ = reconstruct_all(plain, decoded, "plain, decoded")
        r_layers = {
            ly: float(np.mean([np.corrcoef(decoded[n][ly], own[n][ly])[0, 1] for n in decoded]))
            for ly in spec.layers
        }
    seconds = np.array(true_s + dec_s)
    result = {
        "images": len(photos),
        "test_images": list(test),
        "steps": args.steps,
        "repeats": args.repeats,
        "true_features": {
            **score(net, true_images, photos),
            "by_steps": {
                k: {**score(net, true_snaps[k][0], photos), "seconds_p50": float(np.median(true_snaps[k][1]))}
                for k in CHECKPOINTS
            },
        },
        "decoded_features": {
            **score(net, dec_images, tests),
            "by_steps": {k: score(net, dec_snaps[k][0], tests) for k in CHECKPOINTS},
            "decoded_vs_true_r": r_layers,
        },
        "baseline_plain_pixels": {
            "true_features": score(net, base_images, tests),
            "decoded_features": score(net, base_dec_images, tests),
            "seconds_p50": float(np.median(base_s)),
        },
        "seconds_per_image": {
            "p50": float(np.median(seconds)),
            "p99": float(np.percentile(seconds, 99)),
            "max": float(seconds.max()),
        },
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(),
        },
        "total_s": time.monotonic() - t0,
    }
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "test_images"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
