"""Cost per volume of the PSC feedback's nuisance fit over a long series (incremental vs refit).

    python tools/bench_psc.py [--volumes 2000] [--json PATH]

Reports the median and p99 time of one update in the first and last 100 volumes, for the
incremental fit (rtdecode) and, as the baseline in the same process, a least-squares refit over
the whole history on every volume (what rtdecode did before).
"""

import argparse
import json
import time

import numpy as np

from rtdecode.pipeline.feedback import PercentSignalChange


def refit(y, x, rest, baseline):
    fit = np.array([i < baseline or r for i, r in enumerate(rest)])
    k = 1 + min(8, max(0, (int(fit.sum()) - baseline) // 4))
    xs = np.array(x)[:, :k]
    beta = np.linalg.lstsq(xs[fit], np.array(y)[fit], rcond=None)[0]
    cleaned = np.array(y) - xs[:, 1:] @ beta[1:]
    base = cleaned[:baseline].mean()
    return 100 * (cleaned[-1] - base) / base


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--volumes", type=int, default=2000)
    ap.add_argument("--json")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n, baseline = args.volumes, 10
    psc = PercentSignalChange(np.arange(500), baseline)
    inc, full = np.empty(n), np.empty(n)
    ys, xs, rests = [], [], []
    for seq in range(n):
        values = 1000 + rng.normal(0, 2, 2000)
        motion, rest = rng.normal(0, 0.2, 6), (seq // 15) % 2 == 0
        t0 = time.perf_counter_ns()
        psc.update(values, motion, seq, rest)
        inc[seq] = time.perf_counter_ns() - t0
        t0 = time.perf_counter_ns()
        ys.append(values[:500].mean())
        xs.append(np.concatenate([[1.0, seq, seq * seq], motion]))
        rests.append(rest)
        if seq >= baseline:
            refit(ys, xs, rests, baseline)
        full[seq] = time.perf_counter_ns() - t0

    def stats(a):
        return {"p50_us": float(np.median(a) / 1e3), "p99_us": float(np.percentile(a, 99) / 1e3)}

    out = {
        "volumes": n,
        "incremental": {"first_100": stats(inc[baseline : baseline + 100]), "last_100": stats(inc[-100:])},
        "refit_baseline": {
            "first_100": stats(full[baseline : baseline + 100]),
            "last_100": stats(full[-100:]),
        },
    }
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
