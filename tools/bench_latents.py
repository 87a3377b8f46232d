"""Per-volume time and error of the latent decoders at the W3 scale (Takagi & Nishimoto targets).

    python tools/bench_latents.py --json bench-out/latents.json

Synthetic data of the sizes that matter: 1,200 training blocks (GOD), 15,000 voxels, targets of
6,400 (image latent) and 59,136 (text conditioning) values with a low-dimensional structure plus
noise. Fits the exact ridge map (factored, rank = blocks) and reports, for it and for truncated
ranks, the median and p99 time per volume (one thread) and the relative RMS
error against the exact map on held-out patterns.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from rtdecode.models.latents import fit_latent_map  # noqa: E402


def _time(m, xs: np.ndarray) -> tuple[float, float]:
    t = []
    for x in xs:
        t0 = time.perf_counter_ns()
        m.predict(x)
        t.append((time.perf_counter_ns() - t0) / 1e6)
    return float(np.median(t)), float(np.percentile(t, 99))


def main() -> None:
    """Fit, time, compare; print a table and optionally write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=1200)
    ap.add_argument("--voxels", type=int, default=15000)
    ap.add_argument("--volumes", type=int, default=100, help="volumes timed per variant")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.blocks, args.voxels)).astype(np.float32)
    test = rng.standard_normal((args.volumes, args.voxels)).astype(np.float32)
    results = {}
    for name, n_out, shape in (("image", 6400, (4, 40, 40)), ("text", 59136, (77, 768))):
        code = x[:, :2000] @ rng.standard_normal((2000, 32)).astype(np.float32) / 45
        y = code @ rng.standard_normal((32, n_out)).astype(np.float32) + rng.standard_normal(
            (args.blocks, n_out)
        )
        t0 = time.perf_counter()
        exact = fit_latent_map(name, x, y.astype(np.float32), shape, np.arange(args.voxels), [1e3, 1e4, 1e5])
        fit_s = time.perf_counter() - t0
        del y
        rows = {}
        for label, m in [
            ("exact", exact),
            ("rank256", exact.reduced(rank=256)),
            ("rank64", exact.reduced(rank=64)),
        ]:
            p50, p99 = _time(m, test)
            err = 0.0 if m is exact else m.error_against(exact, test[:20])
            mb = (m.left.nbytes + m.right.nbytes) / 1e6
            rows[label] = {"p50_ms": p50, "p99_ms": p99, "rel_rms_error": err, "megabytes": mb}
            print(f"{name:6} {label:8} p50 {p50:8.2f} ms  p99 {p99:8.2f} ms  error {err:.2e}  {mb:7.1f} MB")
        results[name] = {"fit_s": fit_s, "alpha": exact.meta["alpha"], "variants": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
