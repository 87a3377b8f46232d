"""Latency and throughput at the W1-W3 workloads, against a naive pipeline in the same run.

    pip install -e '.[bench]'                  # SimpleITK, for the naive pipeline
    python tools/bench.py --workload W1 --json bench-out/W1.json
    python tools/bench.py --scaling --json bench-out/scaling.json

Workloads (synthetic subject, decoders and candidates of the sizes that matter; the volumes come
from the simulator, with head motion, so motion correction does real work):

- W1 (GOD scale): 64x64x50 volume, 5,000 VC voxels, 8 layers x 1,000 units, 500 voxels per unit,
  15,372 candidates per layer, motion correction on.
- W2 (multiband): 104x104x72 volume, 20,000 voxels, otherwise as W1.
- W3 (diffusion latents): W1 with 15,000 voxels and latent maps to 6,400 + 59,136 outputs (random
  factors of the exact ridge map's shapes, rank 1,200 = training blocks).
- W4 (every ROI): W1 with GOD's ten ROIs decoded and ranked (V1-V4, LOC, FFA, PPA of roughly
  GOD's sizes, 4,970 voxels, and their unions LVC, HVC, VC); one pass over the bank ranks all
  ten ROIs' predictions.

One run of a workload:

1. the machine's read bandwidth, one and two threads (measured again before and after the paced
   run and at the end; the median of the four sets the ranking's bound);
2. the pipeline in this process, no sockets, on every volume (the baseline), the top-10 of every
   volume and ROI checked against float64 rankings (plus float16 / raw int8 storage, emulated),
   and the ranking timed for all ROIs at once and for each ROI alone;
3. live: a sender process, ``rtdecode run`` and a subscriber process on loopback ZeroMQ, paced at
   the TR (1 s) and unpaced; the decoder's RSS sampled from /proc;
4. the naive pipeline (SimpleITK rigid registration, scikit-learn ``predict``, one
   ``numpy.corrcoef`` per candidate) on the first ``--naive-volumes`` volumes.

``--repeat N`` sends the series N times as one long series (the unpaced run), for the RSS figure
over 28,800 volumes. ``--scaling`` times each stage alone over volume size, voxels, units and
candidates instead. Work directories are reused.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy: one BLAS thread everywhere

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

from rtdecode.apps.demo import free_tcp_address  # noqa: E402
from rtdecode.apps.replay import send_volumes  # noqa: E402
from rtdecode.apps.setup import build_pipeline  # noqa: E402
from rtdecode.config import NUISANCE_REGRESSORS, Config, RunConfig, SocketConfig, to_dict  # noqa: E402
from rtdecode.errors import ReceiveTimeout  # noqa: E402
from rtdecode.io.nifti import iter_volumes  # noqa: E402
from rtdecode.io.physio import physio_path_for, read_physio  # noqa: E402
from rtdecode.models.bank import CandidateBank  # noqa: E402
from rtdecode.models.files import mask_checksum  # noqa: E402
from rtdecode.models.latents import LatentDecoders, LatentMap  # noqa: E402
from rtdecode.models.linear import LinearBundle  # noqa: E402
from rtdecode.numerics.intdot import padded_width, selected  # noqa: E402
from rtdecode.numerics.stats import normalise_rows  # noqa: E402
from rtdecode.pipeline.helpers import share  # noqa: E402
from rtdecode.pipeline.latency import LatencyTracker, format_table  # noqa: E402
from rtdecode.pipeline.ranking import Identifier, QuantisedRows, top_k  # noqa: E402
from rtdecode.sim.features import make_feature_bank  # noqa: E402
from rtdecode.sim.physio import simulate_recording, write_physio  # noqa: E402
from rtdecode.sim.session import SimParams, simulate_session, write_session  # noqa: E402
from rtdecode.sim.subject import slice_times  # noqa: E402
from rtdecode.transport.zmq import Subscriber  # noqa: E402
from rtdecode.volume import Stage, Volume, new_stamps, stamp, stamps_from_dict  # noqa: E402

# The seven ROIs of GOD's visual cortex at roughly its sizes (voxels), and its three unions.
GOD_ROIS = {"V1": 1000, "V2": 1000, "V3": 760, "V4": 740, "LOC": 540, "FFA": 570, "PPA": 360}
GOD_UNIONS = {"LVC": ("V1", "V2", "V3"), "HVC": ("LOC", "FFA", "PPA"), "VC": tuple(GOD_ROIS)}
WORKLOADS = {
    "W1": {"shape": (64, 64, 50), "voxel_mm": 3.0, "voxels": 5000, "latents": False, "rois": False},
    "W2": {"shape": (104, 104, 72), "voxel_mm": 2.0, "voxels": 20000, "latents": False, "rois": False},
    "W3": {"shape": (64, 64, 50), "voxel_mm": 3.0, "voxels": 15000, "latents": True, "rois": False},
    "W4": {"shape": (64, 64, 50), "voxel_mm": 3.0, "voxels": 4970, "latents": False, "rois": True},
}
LAYERS, UNITS, PER_UNIT, CANDIDATES, TOP = 8, 1000, 500, 15372, 10
LATENTS = {"image": (4, 40, 40), "text": (77, 768)}
LATENT_RANK = 1200


def percentiles(values: list[float] | np.ndarray) -> dict[str, float]:
    """p50/p95/p99/max and n of a list of milliseconds."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return {"n": 0}
    out = {f"p{q}": float(np.percentile(v, q)) for q in (50, 95, 99)}
    return out | {"max": float(v.max()), "n": int(v.size)}


# --- workload -----------------------------------------------------------------------------------


def synthetic_bundle(
    mask: np.ndarray, affine: np.ndarray, rng: np.random.Generator, god_rois: bool = False
) -> LinearBundle:
    """Decoders whose units each read ``PER_UNIT`` random voxels of their ROI (all, if fewer).

    One ROI, VC, over all analysis voxels; or with ``god_rois`` the ten of GOD: seven disjoint
    ROIs of :data:`GOD_ROIS`' sizes, in order along the analysis voxels, and their unions.
    """
    n_vox, n_out = int(mask.sum()), LAYERS * UNITS
    rois = {"VC": np.arange(n_vox)}
    if god_rois:
        ends = np.cumsum(list(GOD_ROIS.values()))
        rois = {r: np.arange(e - n, e) for (r, n), e in zip(GOD_ROIS.items(), ends)}
        rois |= {u: np.concatenate([rois[r] for r in parts]) for u, parts in GOD_UNIONS.items()}
    weights = {}
    for roi, pos in rois.items():
        w = weights[roi] = np.zeros((pos.size, n_out), dtype=np.float32)
        per_unit = min(PER_UNIT, pos.size)
        for u in range(n_out):
            rows = rng.choice(pos.size, per_unit, replace=False)
            w[rows, u] = rng.standard_normal(per_unit) / np.sqrt(per_unit)
    layers = [f"layer{i + 1}" for i in range(LAYERS)]
    return LinearBundle(
        mask, affine, rois, layers, [UNITS] * LAYERS, weights,
        {r: np.zeros(n_out, np.float32) for r in rois}, {"synthetic": "bench workload"},
    )  # fmt: skip


def prepare(name: str, work: Path) -> Path:
    """Simulate the volumes and write bundle, candidates (and latents) once; return the directory."""
    spec = WORKLOADS[name]
    d = work / name
    if (d / "ready").exists():
        return d
    rng = np.random.default_rng(7)
    p = SimParams(
        shape=spec["shape"], voxel_size_mm=spec["voxel_mm"], tr_s=1.0, n_categories=60, n_units=20,
        n_train_categories=50, n_test_categories=10, kind="train",
    )  # fmt: skip
    print(f"{name}: simulating {p.shape} volumes ...", flush=True)
    sim = simulate_session(p)
    write_session(d / "session", p, sim)
    ph = sim["subject"].phantom
    # The analysis voxels: visual cortex first, then the nearest other brain voxels.
    vc = np.zeros(p.shape, bool)
    vc.ravel()[sim["subject"].voxel_index] = True
    brain = np.flatnonzero(ph.brain)
    centre = np.argwhere(vc).mean(0)
    dist = np.linalg.norm(np.argwhere(ph.brain) - centre, axis=1) - 1e6 * vc.ravel()[brain]
    mask = np.zeros(p.shape, bool)
    mask.ravel()[brain[np.argsort(dist)[: spec["voxels"]]]] = True
    print(f"{name}: decoders ({mask.sum()} voxels) and {CANDIDATES} candidates ...", flush=True)
    bundle = synthetic_bundle(mask, ph.affine, rng, spec["rois"])
    bundle.save(d / "decoder")
    for tissue in ("wm", "csf"):  # the nuisance masks, as rtdecode train copies them into a bundle
        shutil.copy(d / "session" / f"{tissue}_mask.nii.gz", d / "decoder")
    fb = make_feature_bank(CANDIDATES, UNITS, seed=3)
    CandidateBank(
        fb.labels, {ly: fb.category_features[old] for ly, old in zip(bundle.layers, fb.layers)}
    ).save(d / "decoder" / "candidates.npz")
    if spec["latents"]:
        n = int(mask.sum())
        maps = {
            k: LatentMap(
                k,
                shape,
                np.arange(n),
                rng.standard_normal((n, LATENT_RANK), dtype=np.float32) / np.float32(np.sqrt(n)),
                rng.standard_normal((LATENT_RANK, int(np.prod(shape))), dtype=np.float32),
                np.zeros(int(np.prod(shape)), np.float32),
                {"synthetic": True},
            )  # fmt: skip
            for k, shape in LATENTS.items()
        }
        LatentDecoders(maps, mask_checksum(mask)).save(d / "latents")
    (d / "ready").write_text("")
    return d


def run_config(d: Path, precision: str, threads: int) -> RunConfig:
    """The decoder settings of a workload."""
    return dataclasses.replace(
        RunConfig(),
        bundle=str(d / "decoder"),
        top_k=TOP,
        rank_precision=precision,
        rank_threads=threads,
        decode_threads=threads,
        motion=dataclasses.replace(RunConfig().motion, threads=min(threads, 2)),
        latents=str(d / "latents") if (d / "latents").exists() else "",
    )


# --- machine ------------------------------------------------------------------------------------


def read_bandwidth(megabytes: int = 512, repeats: int = 5) -> dict[str, float]:
    """Read bandwidth from memory in GB/s: best of ``repeats`` integer sums, 1 and 2 threads."""
    a = np.ones(megabytes * 2**20 // 8, dtype=np.int64)
    halves = np.array_split(a, 2)

    def best(fn) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return a.nbytes / min(times) / 1e9

    def two() -> None:  # numpy releases the GIL in reductions
        ts = [threading.Thread(target=np.sum, args=(h,)) for h in halves]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    return {"one_thread_gbs": best(lambda: np.sum(a)), "two_threads_gbs": best(two)}


def median_bandwidth(samples: list[dict[str, float]]) -> dict:
    """The median of :func:`read_bandwidth` measured at several times of one run, and the samples.

    The memory of these shared machines reads at different speeds minutes apart (two threads:
    13.4 and 21.5 GB/s ten minutes apart on one machine; 43 GB/s in one of six runs on another,
    31-33 in the rest), and one best-of-five at the start of a run was the ranking's bound for the
    whole run. The median of measurements spread over the run follows what the memory gave while
    the paced run ranked, and one fluke in either direction does not set it.
    """
    keys = ("one_thread_gbs", "two_threads_gbs")
    return {k: float(np.median([s[k] for s in samples])) for k in keys} | {"samples": samples}


def _gbs(bw: dict[str, float]) -> str:
    return f"{bw['one_thread_gbs']:.1f} / {bw['two_threads_gbs']:.1f} GB/s"


def steal_s() -> float:
    """CPU seconds the hypervisor ran something else on this machine's CPUs since boot, all CPUs.

    The ``steal`` column of ``/proc/stat``, in steps of 1/``SC_CLK_TCK`` s; nan where there is none.
    """
    try:
        return int(Path("/proc/stat").read_text().split(maxsplit=9)[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def watch_rss(proc: subprocess.Popen, period_s: float) -> tuple[list[tuple[float, int, int]], float]:
    """Sample (seconds, VmRSS KiB, VmHWM KiB) of ``proc`` until it exits; return them and the wall time."""
    t0, samples = time.monotonic(), []
    while proc.poll() is None:
        try:
            samples.append((time.monotonic() - t0, *rss_kib(proc.pid)))
        except (FileNotFoundError, ProcessLookupError, KeyError):  # KeyError: exited, not yet reaped
            break
        time.sleep(period_s)
    return samples, time.monotonic() - t0


def rss_summary(samples: list[tuple[float, int, int]]) -> dict:
    """RSS after the first tenth of the run (warm) against the last tenth's median, and the peak."""
    if len(samples) < 8:
        return {}
    t = np.array([r[0] for r in samples])
    m = np.array([r[1] for r in samples], dtype=float)
    early, late = m[t <= t[-1] * 0.1][-1], np.median(m[t >= t[-1] * 0.9])
    return {
        "rss_mb": {
            "after_10pct": early / 1024,
            "last_10pct": late / 1024,
            "peak": max(r[2] for r in samples) / 1024,
        },
        "rss_growth_pct": float((late - early) / early * 100),
    }


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


# --- baseline and precision ---------------------------------------------------------------------


def baseline(cfg: RunConfig, bold: Path) -> tuple[dict, list[np.ndarray], list[np.ndarray]]:
    """The pipeline in this process on every volume.

    Returns the latency summary, and per volume the predictions (n_rois, units) and top indices
    (n_rois, layers, k) of every ROI.
    """
    pipe = build_pipeline(cfg)
    if pipe.physio is not None:
        rec = read_physio(physio_path_for(bold))
        pipe.physio.add(rec["time"], rec["cardiac"], rec["respiratory"])
    tracker, preds, tops = LatencyTracker(), [], []
    for vol in iter_volumes(bold):
        stamp(vol.stamps, Stage.RECEIVED)
        res = pipe.process(vol)
        stamp(vol.stamps, Stage.PUBLISHED)
        tracker.add(vol.stamps)
        if res.predictions is not None:
            preds.append(res.predictions)
            tops.append(res.top_indices)
    return tracker.summary(), preds, tops


def denoise_cost(cfg: RunConfig, bold: Path, base: dict) -> dict:
    """The preprocessing stages with every denoising step on, against ``base`` (them off).

    Same process, same volumes. Slice-timing correction (interleaved slice times in a BIDS
    sidecar beside the series) runs before motion correction, in stage ``received->motion``, with
    the reslicing of the white-matter and CSF voxels; despiking, 6 mm smoothing inside the mask and
    nuisance regression (every regressor: 35 columns, RETROICOR and RVT from a simulated recording
    beside the series) in ``motion->preprocessed``, with the quality figures (on in both) and the
    z-scoring. Medians and p99 in ms per stage, and the sum of the medians' differences.
    """
    img = nib.load(bold)
    tr = float(img.header.get_zooms()[3])
    times = slice_times("interleaved", img.shape[2], tr)
    sidecar = bold.with_name(bold.name.removesuffix(".nii") + ".json")
    sidecar.write_text(json.dumps({"SliceTiming": times.tolist()}))
    recording = write_physio(
        physio_path_for(bold), simulate_recording(img.shape[3] * tr + 5, np.random.default_rng(1))
    )
    try:
        on = dataclasses.replace(
            cfg, preprocess=dataclasses.replace(cfg.preprocess, smoothing_fwhm_mm=6.0, slice_timing=True)
        )
        on.preprocess.despike = dataclasses.replace(on.preprocess.despike, enabled=True)
        on.preprocess.nuisance = dataclasses.replace(
            on.preprocess.nuisance, regressors=list(NUISANCE_REGRESSORS)
        )
        with_steps, _, _ = baseline(on, bold)
    finally:
        sidecar.unlink()
        recording.unlink()
    stages = ("received->motion", "motion->preprocessed")
    out = {
        stage: {
            "off": {q: base[stage][q] for q in ("p50", "p99")},
            "on": {q: with_steps[stage][q] for q in ("p50", "p99")},
        }
        for stage in stages
    }
    out["cost_p50_ms"] = sum(with_steps[s]["p50"] - base[s]["p50"] for s in stages)
    out["tr_s"] = tr
    return out


def precision_check(d: Path, preds: list[np.ndarray], tops: list[np.ndarray], n_signal: int) -> dict:
    """Share of rankings whose top-10 equals float64's, per way of storing the bank.

    Two query sets: the pipeline's predictions of the workload's volumes, every ROI (unrelated to
    the candidates: a hard case of many near-equal scores), and ``n_signal`` predictions made of
    a candidate's features plus noise at r ~ 0.3 (the accuracy of real feature decoders). A
    ranking counts as identical when every layer's top-10 is.
    """
    bank = CandidateBank.load(d / "decoder" / "candidates.npz")
    rng = np.random.default_rng(11)
    signal = []
    for c in rng.integers(0, len(bank.labels), n_signal):
        f = np.concatenate([bank.features[ly][c] for ly in bank.features])
        signal.append(f + rng.normal(0, 3.0 * f.std(), f.size))
    sets = {"pipeline": np.concatenate(preds), "signal": np.array(signal, dtype=np.float32)}
    stores = [  # each layer's bank read every way, made once for both query sets
        {
            "float64": normalise_rows(f.astype(np.float64)),
            "float16": f.astype(np.float16).astype(np.float32),  # float16 storage, float32 arithmetic
            "int8_raw": QuantisedRows.quantise(f),  # int8 codes alone, no re-scoring
        }
        for f in bank.features.values()
    ]
    published = np.concatenate(tops)  # (volumes x ROIs, layers, k), as the pipeline ranked them
    out = {}
    for qname, queries in sets.items():
        kinds = ["float32", "float16", "int8_raw"] + (["int8_certified"] if qname == "pipeline" else [])
        same = {kind: np.ones(len(queries), bool) for kind in kinds}
        for j, (f, st) in enumerate(zip(bank.features.values(), stores)):
            p = normalise_rows(queries[:, j * UNITS : (j + 1) * UNITS])
            truth = top_k(p @ st["float64"].T, TOP)[0]
            p32 = p.astype(np.float32)
            got = {
                "float32": top_k(p32 @ f.T, TOP)[0],
                "float16": top_k(p32 @ st["float16"].T, TOP)[0],
                "int8_raw": top_k(st["int8_raw"].dot_bounds(p32)[0], TOP)[0],
            }
            if qname == "pipeline":
                got["int8_certified"] = published[:, j]
            for kind in kinds:
                same[kind] &= (got[kind] == truth).all(1)
        out[qname] = {"n": len(queries)} | {kind: float(v.mean()) for kind, v in same.items()}
    return out


def roi_rank_times(cfg: RunConfig, preds: list[np.ndarray]) -> dict:
    """Ranking time per volume: all ROIs in one pass over the bank, and each ROI alone.

    In this process, with the decoder's ranking settings, on the pipeline's predictions;
    medians in ms.
    """
    bundle = LinearBundle.load(cfg.bundle)
    bank = CandidateBank.load(Path(cfg.bundle) / "candidates.npz")
    with Identifier(bank, bundle.layer_slices, cfg.top_k, cfg.rank_precision, cfg.rank_threads) as ident:
        shared = _median_ms(partial(next, map(ident.rank, preds * 2)), len(preds))
        alone = {
            roi: _median_ms(partial(next, map(ident.rank, [p[i : i + 1] for p in preds] * 2)), len(preds))
            for i, roi in enumerate(bundle.roi_names)
        }
        same_bytes = rank_vs_reading_codes(ident, preds) if ident.quantised else None
    return {
        "all_rois_ms": shared,
        "per_roi_shared_ms": shared / len(bundle.roi_names),
        "per_roi_alone_ms": alone,
        "kernel": selected().isa if cfg.rank_precision == "int8" else "float32",
        "vs_reading_the_codes": same_bytes,
    }


def rank_vs_reading_codes(ident: Identifier, preds: list[np.ndarray], rounds: int = 30) -> dict:
    """The ranking against numpy summing the same int8 codes on as many threads, in turns.

    Each after 0.3 s idle, as a paced volume's ranking comes: the sum reads every code once and
    does nothing else, so it is the read time of these bytes in this process at that moment (the
    bound uses a separate array: :func:`median_bandwidth`). The ranking scores each ROI's
    prediction against every code it reads: with many ROIs (W4) it does that much more per byte.
    Medians in ms.
    """
    layers = list(ident.quantised)
    groups = [[layers[i] for i in positions] for positions, _ in ident._tasks]  # the ranking's own tasks

    def read(i: int) -> None:
        for layer in groups[i]:
            ident.quantised[layer].codes.view(np.int64).sum()

    def read_all() -> None:  # shared out as the ranking's layer sets are, on its own threads
        share(ident._pool, read, len(groups))

    rank_ms, read_ms = [], []
    for i in range(rounds):
        time.sleep(0.3)
        rank_ms.append(_median_ms(partial(ident.rank, preds[i % len(preds)]), 1))
        time.sleep(0.3)
        read_ms.append(_median_ms(read_all, 1))
    rank, codes = float(np.median(rank_ms)), float(np.median(read_ms))
    return {"rank_ms": rank, "read_codes_ms": codes, "ratio": rank / codes}


# --- live ---------------------------------------------------------------------------------------


def looped(bold: Path, repeat: int) -> list[Volume]:
    """The series ``repeat`` times over as one series (volume indices continue)."""
    vols = list(iter_volumes(bold, session="bench", series="run-01"))
    return [
        dataclasses.replace(v, seq=r * len(vols) + v.seq, stamps=new_stamps())
        for r in range(repeat)
        for v in vols
    ]


def role_send(args: argparse.Namespace) -> None:
    """Sender process: stream the series to the decoder, then stay until the run is over.

    A scanner keeps running after its last volume; this process's exit (0.5 s of CPU tearing down
    the interpreter, measured) would otherwise take a core from the decoder while it clears the
    unpaced backlog.
    """
    vols = looped(Path(args.bold), args.repeat)
    time.sleep(args.lead)
    n = send_volumes(iter(vols), args.to, args.speed)
    print(json.dumps({"sent": n}), flush=True)
    deadline = time.monotonic() + 300
    while args.hold and not Path(args.hold).exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def role_listen(args: argparse.Namespace) -> None:
    """Subscriber process: every topic, stamps and arrival times until the series ends."""
    latency, arrival, latent_ms, latent_arrival, n_msgs = [], [], [], [], 0
    with Subscriber(args.address, [""]) as sub:
        Path(args.ready).write_text("")
        while True:
            msg = sub.recv(120)
            now = time.monotonic_ns()
            n_msgs += 1
            if msg.topic == "latency":
                s = stamps_from_dict(msg.header["stamps"])
                latency.append(s.tolist())
                arrival.append((now - s[Stage.PUBLISHED]) / 1e6)
            elif msg.topic == "latent":
                latent_ms.append(msg.header["ms"])
                latent_arrival.append(now)
            elif msg.topic == "status" and msg.header.get("event") == "end":
                break
    Path(args.out).write_text(
        json.dumps({"stamps": latency, "delivered_ms": arrival, "latent_ms": latent_ms, "messages": n_msgs})
    )


def start_decoder_and_listener(
    cfg: RunConfig, work: Path, tag: str, script: str
) -> tuple[RunConfig, subprocess.Popen, subprocess.Popen, Path]:
    """``rtdecode run`` on fresh loopback ports and ``script listen``; return once both are live.

    Returns the config with its addresses, both processes and where the listener writes its record.
    """
    cfg = dataclasses.replace(
        cfg, input=SocketConfig(free_tcp_address(), True), output=SocketConfig(free_tcp_address(), True)
    )
    cfg_path, ready, rec = work / f"{tag}-run.yaml", work / f"{tag}.ready", work / f"{tag}-listener.json"
    ready.unlink(missing_ok=True)
    rec.unlink(missing_ok=True)  # the sender holds on until the listener writes it
    cfg_path.write_text(yaml.safe_dump({"run": to_dict(Config(run=cfg))["run"]}))
    decoder = subprocess.Popen(
        [sys.executable, "-m", "rtdecode", "run", "-c", str(cfg_path), "--exit-after-series"],
        stdout=subprocess.DEVNULL,
    )
    listener = subprocess.Popen(
        [
            sys.executable,
            script,
            "listen",
            "--address",
            cfg.output.address,
            "--out",
            str(rec),
            "--ready",
            str(ready),
        ]
    )
    deadline = time.monotonic() + 300
    with Subscriber(cfg.output.address, ["status"]) as probe:  # the decoder is up once it beats
        while True:
            try:
                probe.recv(0.5)
                break
            except ReceiveTimeout:
                if time.monotonic() > deadline or decoder.poll() is not None:
                    decoder.kill()
                    listener.kill()
                    raise RuntimeError("decoder did not start") from None
    while not ready.exists():
        time.sleep(0.05)
    time.sleep(0.5)  # the listener's subscription reaches the publisher
    return cfg, decoder, listener, rec


def slowest(durations: list[dict[str, float]], n: int) -> list[dict]:
    """The ``n`` volumes of longest end to end time (they set p99 at ~200 volumes), each by stage.

    ``durations``: each volume's stage durations, as :meth:`LatencyTracker.add` returns them.
    """
    e2e = [d.get("end_to_end", -1.0) for d in durations]
    return [{"volume": int(i), "stages_ms": durations[i]} for i in np.argsort(e2e)[::-1][:n]]


def slow_stretches(e2e: np.ndarray, factor: float = 2.0) -> list[list[int]]:
    """First and last index of each run of consecutive volumes slower than ``factor`` x the median.

    Tells a volume held up by the decoder from a stretch in which the machine itself ran slow:
    traced, those lasted 5-20 s and slowed every stage and process alike.
    """
    slow = np.flatnonzero(e2e > factor * np.nanmedian(e2e))  # NaN: a volume without the stamps
    if not slow.size:
        return []
    breaks = np.flatnonzero(np.diff(slow) > 1)
    return [[int(a), int(b)] for a, b in zip(slow[np.r_[0, breaks + 1]], slow[np.r_[breaks, -1]])]


def live(cfg: RunConfig, bold: Path, speed: float, work: Path, repeat: int = 1) -> dict:
    """Sender, decoder and subscriber processes; summaries from the subscriber's record."""
    cfg, decoder, listener, rec = start_decoder_and_listener(cfg, work, "bench", __file__)
    me = [sys.executable, __file__]
    try:
        sender = subprocess.Popen(
            me + ["send", "--bold", str(bold), "--to", cfg.input.address, "--speed", str(speed),
                  "--repeat", str(repeat), "--hold", str(rec)]
        )  # fmt: skip
        stolen = steal_s()
        rss, wall = watch_rss(decoder, 0.25)
        stolen = steal_s() - stolen
        sender.wait(60)
        listener.wait(60)
    finally:
        for p in (decoder, listener):
            if p.poll() is None:
                p.kill()
    got = json.loads(rec.read_text())
    tracker = LatencyTracker()
    stamps = np.array(got["stamps"], dtype=np.int64)
    durations = [tracker.add(s) for s in stamps]
    n = len(stamps)
    span_s = (stamps[-1, Stage.PUBLISHED] - stamps[0, Stage.RECEIVED]) / 1e9 if n > 1 else float("nan")
    out = {
        "volumes": n,
        "stages_ms": tracker.summary(),
        "delivered_ms": percentiles(got["delivered_ms"]),
        "volumes_per_s": (n - 1) / span_s if n > 1 else 0.0,
        "wall_s": wall,
        "messages": got["messages"],
        "peak_rss_mb": max(r[2] for r in rss) / 1024 if rss else None,
        "slowest": slowest(durations, 3),
        "over_2x_p50": slow_stretches(np.array([d.get("end_to_end", np.nan) for d in durations])),
        "steal_s": stolen,  # the hypervisor's share of both CPUs while the decoder ran
    }
    if got["latent_ms"]:
        out["latent_ms"] = percentiles(got["latent_ms"])
    out |= rss_summary(rss)
    return out


# --- naive --------------------------------------------------------------------------------------


def naive(d: Path, bold: Path, n: int, baseline_volumes: int) -> dict:
    """The pipeline as the standard libraries give it, timed per stage on ``n`` volumes.

    SimpleITK rigid registration to volume 0, z-scoring against the first volumes, scikit-learn
    Ridge ``predict`` with the same weights, ``numpy.corrcoef`` against every candidate, argsort.
    """
    import SimpleITK as sitk
    from bench_motion import _RAS_TO_LPS, sitk_image, sitk_rigid
    from sklearn.linear_model import Ridge

    from rtdecode.numerics.rigid import grid_centre_mm

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    bundle = LinearBundle.load(d / "decoder")
    bank = CandidateBank.load(d / "decoder" / "candidates.npz")
    model = Ridge()
    n_vox, n_out = bundle.n_voxels, sum(bundle.n_units)
    model.fit(np.zeros((2, n_vox)), np.zeros((2, n_out)))
    model.coef_ = bundle.weights["VC"].T.astype(np.float64)
    model.intercept_ = bundle.intercepts["VC"].astype(np.float64)
    index = np.flatnonzero(bundle.mask)
    vols = list(iter_volumes(bold))
    affine = vols[0].affine
    fixed = sitk_image(sitk, vols[0].data.astype(np.float32), affine)
    centre = (_RAS_TO_LPS[:3, :3] @ grid_centre_mm(affine, vols[0].data.shape)).tolist()
    stages = {"motion": [], "preprocess": [], "decode": [], "rank": [], "end_to_end": []}
    base = []
    for k, vol in enumerate(vols[: baseline_volumes + n]):
        t0 = time.perf_counter()
        moving = sitk_image(sitk, vol.data.astype(np.float32), affine)
        tx = sitk_rigid(sitk, centre).Execute(fixed, moving) if k else sitk.Euler3DTransform()
        moved = sitk.Resample(moving, fixed, tx, sitk.sitkLinear)
        values = sitk.GetArrayFromImage(moved).transpose(2, 1, 0).ravel()[index]
        t1 = time.perf_counter()
        if k < baseline_volumes:
            base.append(values)
            continue
        b = np.array(base)
        x = (values - b.mean(0)) / np.where(b.std(0) > 0, b.std(0), 1)
        t2 = time.perf_counter()
        pred = model.predict(x[None])[0]
        t3 = time.perf_counter()
        for ly, sl in bundle.layer_slices.items():
            r = np.array([np.corrcoef(pred[sl], c)[0, 1] for c in bank.features[ly]])
            np.argsort(-r)[:TOP]
        t4 = time.perf_counter()
        for key, a, b_ in (("motion", t0, t1), ("preprocess", t1, t2), ("decode", t2, t3), ("rank", t3, t4)):
            stages[key].append((b_ - a) * 1e3)
        stages["end_to_end"].append((t4 - t0) * 1e3)
        print(f"  naive volume {k}: {stages['end_to_end'][-1]:.0f} ms", flush=True)
    return {k: percentiles(v) for k, v in stages.items()}


# --- report -------------------------------------------------------------------------------------


def bytes_per_volume(d: Path, cfg: RunConfig, rescored_rows: float = 0.0) -> dict[str, int]:
    """Bytes each stage reads per volume (arrays it must stream; caches ignored)."""
    bundle = LinearBundle.load(cfg.bundle)
    shape = bundle.mask.shape
    vol = int(np.prod(shape))
    decode = sum(
        bundle.sparse[roi].nbytes if roi in bundle.sparse else bundle.weights[roi].nbytes
        for roi in bundle.roi_names
    )
    row = padded_width(UNITS) if cfg.rank_precision == "int8" else 4 * UNITS  # int8 rows padded to 64 B
    out = {
        "volume": vol * 2,
        # spline coefficients (float32) built over the volume, read at <= 10,000 points per iteration
        "motion": vol * (2 + 4 * 3),
        "decode": int(decode),
        "rank": LAYERS * CANDIDATES * row,
    }
    if cfg.latents:
        lat = LatentDecoders.load(cfg.latents)
        out["latents"] = int(sum(m.left.nbytes + m.right.nbytes for m in lat.maps.values()))
    return out


def run_workload(args: argparse.Namespace) -> dict:
    """Everything for one workload; prints tables, returns the JSON."""
    work = Path(args.work)
    d = prepare(args.workload, work)
    bold = d / "session" / "bold.nii"
    cfg = run_config(d, args.precision, args.rank_threads)
    reads = [read_bandwidth()]
    print(f"read bandwidth, one / two threads: {_gbs(reads[0])}")
    base, preds, tops = baseline(cfg, bold)
    print("baseline (this process, no sockets)\n" + format_table(base))
    base_f32, _, _ = baseline(dataclasses.replace(cfg, rank_precision="float32", rank_threads=1), bold)
    denoise = denoise_cost(cfg, bold, base)
    print(f"denoising (slice timing, despike, 6 mm smoothing, every regressor): {json.dumps(denoise)}")
    prec = precision_check(d, preds, tops, args.signal_queries)
    print("top-10 identical to float64:", json.dumps(prec))
    per_roi = roi_rank_times(cfg, preds)
    print("ranking per volume (this process):", json.dumps(per_roi))
    reads.append(read_bandwidth())
    paced = live(cfg, bold, 1.0, work)
    reads.append(read_bandwidth())
    print(f"live, paced at TR 1 s (CPU time the host took: {paced['steal_s']:.2f} s)")
    print(format_table(paced["stages_ms"]))
    print("volumes over 2x the median end to end, first-last:", paced["over_2x_p50"])
    unpaced = live(cfg, bold, float("inf"), work, args.repeat)
    print(f"live, unpaced: {unpaced['volumes_per_s']:.1f} volumes/s over {unpaced['volumes']} volumes")
    nv = naive(d, bold, args.naive_volumes, cfg.preprocess.baseline_volumes) if args.naive_volumes else None
    bw = median_bandwidth(reads + [read_bandwidth()])
    print(f"read bandwidth, one / two threads: {', '.join(map(_gbs, bw['samples']))}; median {_gbs(bw)}")
    e2e = paced["stages_ms"]["end_to_end"]
    rank_key = "decoded->identified"
    rank_ms = paced["stages_ms"][rank_key]["p50"]
    nbytes = bytes_per_volume(d, cfg)
    bw_rank = bw["two_threads_gbs"] if args.rank_threads > 1 else bw["one_thread_gbs"]
    bound_ms = nbytes["rank"] / (bw_rank * 1e9) * 1e3
    out = {
        "workload": args.workload,
        "spec": WORKLOADS[args.workload] | {"layers": LAYERS, "units": UNITS, "per_unit": PER_UNIT,
                                            "candidates": CANDIDATES},
        "rank_precision": args.precision,
        "rank_threads": args.rank_threads,
        "batch_volumes": cfg.batch_volumes,  # a backlog (the unpaced run) is ranked this many at a time
        "end_to_end_ms": e2e,
        "naive_end_to_end_ms": nv["end_to_end"] if nv else None,
        "speedup_vs_naive": nv["end_to_end"]["p50"] / e2e["p50"] if nv else None,
        "volumes_per_s": unpaced["volumes_per_s"],
        "rank_stage_ms": paced["stages_ms"][rank_key],
        "rank_stage_bound_ms": bound_ms,
        "rank_stage_vs_bandwidth_bound": rank_ms / bound_ms,
        "rank_achieved_gbs": nbytes["rank"] / rank_ms / 1e6,
        "bandwidth": bw,
        "bytes_per_volume": nbytes | {"total": sum(nbytes.values())},
        "rss_growth_pct": unpaced.get("rss_growth_pct"),
        "peak_rss_mb": max(paced["peak_rss_mb"] or 0, unpaced["peak_rss_mb"] or 0),
        "paced": paced,
        "unpaced": unpaced,
        "baseline_ms": base,
        "baseline_float32_rank_ms": base_f32,
        "denoise": denoise,
        "naive_ms": nv,
        "top10_equal_float64": prec,
        "rank_per_roi": per_roi,
        "numpy": np.__version__,
    }  # fmt: skip
    if "latent_ms" in paced:
        out["latent_decode_ms"] = paced["latent_ms"]
    print(
        f"\n{args.workload}: end to end p50 {e2e['p50']:.1f} / p99 {e2e['p99']:.1f} ms; "
        + (f"naive p50 {nv['end_to_end']['p50']:.0f} ms ({out['speedup_vs_naive']:.0f}x); " if nv else "")
        + f"rank {rank_ms:.1f} ms vs bound {bound_ms:.1f} ms ({out['rank_stage_vs_bandwidth_bound']:.2f}x); "
        f"unpaced {out['volumes_per_s']:.0f} volumes/s; RSS growth {out['rss_growth_pct']}"
    )
    return out


# --- scaling ------------------------------------------------------------------------------------


def _median_ms(fn, repeats: int) -> float:
    t = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        fn()
        t.append((time.perf_counter_ns() - t0) / 1e6)
    return float(np.median(t))


def scaling(repeats: int = 15) -> dict:
    """Each stage alone, one thread, over the sizes that set its cost."""
    from rtdecode.numerics.kernels import grid_points, warm_up
    from rtdecode.pipeline.motion import MotionCorrector
    from rtdecode.sim.phantom import make_phantom
    from rtdecode.sim.session import apply_motion

    warm_up()
    rng = np.random.default_rng(0)
    rows = []
    for shape, mm in (((64, 64, 36), 3.0), ((64, 64, 50), 3.0), ((96, 96, 60), 2.0), ((104, 104, 72), 2.0)):
        ph = make_phantom(shape, mm, seed=0)
        pts = grid_points(shape)
        poses = [rng.uniform(-1, 1, 6) for _ in range(repeats + 1)]
        imgs = [apply_motion(ph.baseline.astype(np.float32), ph.affine, pose, pts) for pose in poses]
        mc = MotionCorrector(np.flatnonzero(ph.brain)[:5000])
        mc.correct(imgs[0], ph.affine)
        it = iter(imgs[1:])
        ms = _median_ms(lambda mc=mc, it=it, a=ph.affine: mc.correct(next(it), a), repeats)
        rows.append({"stage": "motion", "volume": "x".join(map(str, shape)), "ms": ms})
        print(rows[-1], flush=True)
    for n_vox in (1000, 5000, 20000, 50000):
        b = synthetic_bundle(np.ones((n_vox, 1, 1), bool), np.eye(4), rng)
        x = rng.standard_normal(n_vox).astype(np.float32)
        ms = _median_ms(partial(b.predict, x), repeats)
        rows.append({"stage": "decode", "voxels": n_vox, "units": LAYERS * UNITS, "ms": ms})
        print(rows[-1], flush=True)
        del b
    for n_cand, units in ((1000, 1000), (10000, 1000), (15372, 1000), (50000, 1000), (100000, 1000),
                          (15372, 200), (15372, 4000)):  # fmt: skip
        fb = make_feature_bank(n_cand, units, seed=1)
        bank = CandidateBank(fb.labels, fb.category_features)
        del fb
        sl = {ly: slice(i * units, (i + 1) * units) for i, ly in enumerate(bank.features)}
        pred = rng.standard_normal((1, LAYERS * units)).astype(np.float32)
        for prec in ("float32", "int8"):
            ident = Identifier(bank, sl, TOP, prec)
            rows.append({"stage": "rank", "candidates": n_cand, "units": units, "precision": prec,
                         "megabytes": LAYERS * n_cand * units * (1 if prec == "int8" else 4) / 1e6,
                         "ms": _median_ms(partial(ident.rank, pred), max(5, repeats // 3))})  # fmt: skip
            print(rows[-1], flush=True)
            del ident
        del bank
    return {"bandwidth": read_bandwidth(), "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="role")
    s = sub.add_parser("send", help="(internal) the sender process")
    s.add_argument("--bold", required=True)
    s.add_argument("--to", required=True)
    s.add_argument("--speed", type=float, default=1.0)
    s.add_argument("--repeat", type=int, default=1)
    s.add_argument("--lead", type=float, default=0.2)
    s.add_argument("--hold", help="exit only once this file exists (the subscriber's record)")
    li = sub.add_parser("listen", help="(internal) the subscriber process")
    li.add_argument("--address", required=True)
    li.add_argument("--out", required=True)
    li.add_argument("--ready", required=True)
    ap.add_argument("--workload", choices=sorted(WORKLOADS), default="W1")
    ap.add_argument("--work", default="bench-out", help="working directory (reused)")
    ap.add_argument("--precision", choices=["int8", "float32"], default="int8")
    ap.add_argument("--rank-threads", type=int, default=2, help="decoder's run.rank_threads")
    ap.add_argument("--repeat", type=int, default=1, help="unpaced run: send the series N times")
    ap.add_argument("--naive-volumes", type=int, default=10, help="0: skip the naive pipeline")
    ap.add_argument("--signal-queries", type=int, default=200)
    ap.add_argument("--scaling", action="store_true", help="time each stage over sizes instead")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    if args.role == "send":
        return role_send(args)
    if args.role == "listen":
        return role_listen(args)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    out = scaling() if args.scaling else run_workload(args)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
