"""Motion correction: rtdecode against SimpleITK on the same draws, in one process, one thread.

Each draw moves the phantom by a random rigid transform (up to 3 mm and 3 degrees per axis,
rendered with cubic B-splines) and adds noise for a brain tSNR of about 60; both tools estimate the
pose from the reference pose (no warm start). Errors are the framewise displacement (Power et al.
2012) between the true and the estimated pose.

    pip install -e '.[bench]'          # SimpleITK
    python tools/bench_motion.py --json bench-motion.json
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # one thread for every tool, set before numpy loads

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from rtdecode.numerics.kernels import warm_up  # noqa: E402
from rtdecode.numerics.rigid import framewise_displacement, grid_centre_mm, params_from_matrix  # noqa: E402
from rtdecode.pipeline.motion import MotionCorrector  # noqa: E402
from rtdecode.sim.phantom import make_phantom  # noqa: E402
from rtdecode.sim.session import apply_motion  # noqa: E402

SIZES = {"64x64x36": ((64, 64, 36), 3.0), "96x96x60": ((96, 96, 60), 2.0)}
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def draws(n: int, seed: int) -> np.ndarray:
    """Random poses, shape (n, 6), up to 3 mm and 3 degrees per axis."""
    return np.random.default_rng(seed).uniform(-3, 3, (n, 6))


def _summary(times_s: list[float], errors: list[float]) -> dict:
    t = np.array(times_s) * 1000
    return {
        "median_ms": float(np.median(t)),
        "p95_ms": float(np.percentile(t, 95)),
        "fd_err_median_mm": float(np.median(errors)),
        "fd_err_max_mm": float(np.max(errors)),
        "n": len(errors),
    }


def bench_rtdecode(ref: np.ndarray, affine: np.ndarray, moved: list[np.ndarray], truth: np.ndarray) -> dict:
    mc = MotionCorrector(np.arange(10)).set_reference(ref, affine)
    times, errors = [], []
    for vol, t in zip(moved, truth):
        mc.pose_ = np.eye(4)
        t0 = time.perf_counter()
        est, _ = mc.estimate(vol)
        times.append(time.perf_counter() - t0)
        errors.append(framewise_displacement(np.stack([t, est]))[1])
    return _summary(times, errors)


def sitk_image(sitk, data: np.ndarray, affine: np.ndarray):
    # SimpleITK wants (z, y, x) arrays and LPS physical space.
    img = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)).astype(np.float32))
    lps = _RAS_TO_LPS @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    img.SetSpacing(spacing.tolist())
    img.SetOrigin(lps[:3, 3].tolist())
    img.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
    return img


def sitk_rigid(sitk, centre_lps: list[float]):
    """SimpleITK's usual rigid recipe, from its registration notebooks.

    Euler3D about the grid centre, mean squares on 10 % random samples, regular-step gradient
    descent, two levels.
    """
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMeanSquares()
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.1, 42)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-4, numberOfIterations=100, relaxationFactor=0.5
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([2, 1])
    reg.SetSmoothingSigmasPerLevel([1.0, 0.0])
    init = sitk.Euler3DTransform()
    init.SetCenter(centre_lps)
    reg.SetInitialTransform(init, inPlace=False)
    return reg


def bench_simpleitk(ref: np.ndarray, affine: np.ndarray, moved: list[np.ndarray], truth: np.ndarray) -> dict:
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    fixed = sitk_image(sitk, ref, affine)
    centre_lps = (_RAS_TO_LPS[:3, :3] @ grid_centre_mm(affine, ref.shape)).tolist()
    times, errors = [], []
    for vol, t in zip(moved, truth):
        moving = sitk_image(sitk, vol, affine)
        reg = sitk_rigid(sitk, centre_lps)
        t0 = time.perf_counter()
        out = reg.Execute(fixed, moving)
        times.append(time.perf_counter() - t0)
        tx = sitk.Euler3DTransform(sitk.CompositeTransform(out).GetNthTransform(0))
        m = np.eye(4)  # fixed physical point -> moving physical point, LPS
        rot = np.array(tx.GetMatrix()).reshape(3, 3)
        c = np.array(tx.GetCenter())
        m[:3, :3] = rot
        m[:3, 3] = c - rot @ c + np.array(tx.GetTranslation())
        est = params_from_matrix(_RAS_TO_LPS @ m @ _RAS_TO_LPS, affine, ref.shape)
        errors.append(framewise_displacement(np.stack([t, est]))[1])
    return _summary(times, errors)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--draws", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--no-simpleitk", action="store_true", help="only rtdecode")
    args = ap.parse_args()
    warm_up()
    results = {}
    for name, (shape, voxel_mm) in SIZES.items():
        ph = make_phantom(shape, voxel_mm)
        truth = draws(args.draws, args.seed)
        rng = np.random.default_rng(args.seed + 1)
        sigma = ph.baseline[ph.brain].mean() / 60.0
        moved = [
            (apply_motion(ph.baseline, ph.affine, t) + rng.normal(0, sigma, shape)).astype(np.float32)
            for t in truth
        ]
        res = {"rtdecode": bench_rtdecode(ph.baseline, ph.affine, moved, truth)}
        if not args.no_simpleitk:
            res["simpleitk"] = bench_simpleitk(ph.baseline, ph.affine, moved, truth)
            res["speedup_vs_simpleitk"] = res["simpleitk"]["median_ms"] / res["rtdecode"]["median_ms"]
        results[name] = res
        for tool in ("rtdecode", "simpleitk"):
            if tool in res:
                r = res[tool]
                print(
                    f"{name} {tool:<10} median {r['median_ms']:7.1f} ms  p95 {r['p95_ms']:7.1f} ms  "
                    f"FD error median {r['fd_err_median_mm']:.3f} mm  max {r['fd_err_max_mm']:.3f} mm"
                )
        if "speedup_vs_simpleitk" in res:
            print(f"{name} speed-up vs SimpleITK: {res['speedup_vs_simpleitk']:.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
