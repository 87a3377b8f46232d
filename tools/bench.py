"""Per-stage latency of the demo workload: live (decoder process, ZeroMQ) against an in-process baseline.

The baseline runs the same pipeline on the same volumes in this process, with no sockets; the live
run starts ``rtdecode run`` as a subprocess, streams the test session to it from this process and
reads every volume's stamps from its ``latency`` topic. Both are summarised from the stamps the
volumes carry (median, p95, p99, max, in ms).

    python tools/bench.py --work bench-out --json bench-out/bench.json

The work directory is filled with a simulated subject and a trained decoder on first use (as the
demo does) and reused afterwards.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import yaml

from rtdecode.config import Config, load_config, to_dict
from rtdecode.demo import free_tcp_address, sim_params
from rtdecode.errors import ReceiveTimeout
from rtdecode.latency import LatencyTracker, format_table
from rtdecode.nifti import iter_volumes
from rtdecode.run import build_pipeline
from rtdecode.sim.scanner import stream_session
from rtdecode.sim.session import simulate_session, write_session
from rtdecode.train import train_session
from rtdecode.transport.zmq import Subscriber
from rtdecode.volume import Stage, stamp, stamps_from_dict


def prepare(work: Path, cfg: Config) -> None:
    """Simulate and train once; later runs reuse the directory."""
    if (work / "decoder" / "decoder.json").exists() and (work / "test" / "bold.nii").exists():
        return
    p_train, p_test = sim_params(cfg, kind="train", seed=1), sim_params(cfg, kind="test", seed=2)
    sim = simulate_session(p_train)
    write_session(work / "train", p_train, sim)
    write_session(work / "test", p_test, simulate_session(p_test, sim["subject"]))
    train_session(work / "train", work / "decoder", cfg)


def baseline(run_cfg, bold: Path) -> LatencyTracker:
    """The same pipeline in this process, no sockets: RECEIVED is stamped when the volume is read."""
    pipe = build_pipeline(run_cfg)
    tracker = LatencyTracker()
    for vol in iter_volumes(bold):
        stamp(vol.stamps, Stage.RECEIVED)
        pipe.process(vol)
        stamp(vol.stamps, Stage.PUBLISHED)
        tracker.add(vol.stamps)
    return tracker


def live(run_cfg, bold: Path, speed: float, work: Path) -> LatencyTracker:
    """Decoder subprocess, sender in this process, latency read back over ZeroMQ."""
    run_cfg = dataclasses.replace(run_cfg)
    run_cfg.input = dataclasses.replace(run_cfg.input, address=free_tcp_address(), bind=True)
    run_cfg.output = dataclasses.replace(run_cfg.output, address=free_tcp_address(), bind=True)
    cfg_path = work / "bench-run.yaml"
    cfg_path.write_text(yaml.safe_dump({"run": to_dict(Config(run=run_cfg))["run"]}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "rtdecode", "run", "-c", str(cfg_path), "--exit-after-series"],
        stdout=subprocess.DEVNULL,
    )
    tracker = LatencyTracker()
    try:
        with Subscriber(run_cfg.output.address, ["latency", "status"]) as sub:
            deadline = time.monotonic() + 60
            while True:  # wait until the subscription is live (first heartbeat)
                try:
                    sub.recv(0.5)
                    break
                except ReceiveTimeout:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError("decoder did not start") from None
            sender = threading.Thread(
                target=stream_session, args=(bold, run_cfg.input.address, speed), daemon=True
            )
            sender.start()
            while True:
                msg = sub.recv(60)
                if msg.topic == "latency":
                    tracker.add(stamps_from_dict(msg.header["stamps"]))
                elif msg.header.get("event") == "end":
                    break
            sender.join()
    finally:
        proc.wait(30)
    return tracker


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="bench-out", help="working directory (reused)")
    ap.add_argument("-c", "--config", help="YAML config (default: the demo's)")
    ap.add_argument("--speed", type=float, default=20.0, help="stream at N x TR pace (inf: unpaced)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    cfg = load_config(args.config)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    prepare(work, cfg)
    run_cfg = dataclasses.replace(cfg.run, bundle=str(work / "decoder"), candidates="")
    bold = work / "test" / "bold.nii"
    base = baseline(run_cfg, bold).summary()
    print("baseline: same pipeline in this process, no sockets\n" + format_table(base))
    lv = live(run_cfg, bold, args.speed, work).summary()
    print(f"\nlive: decoder process, volumes over ZeroMQ at {args.speed:g}x TR pace\n" + format_table(lv))
    e2e_live, e2e_base = lv["end_to_end"]["p50"], base["end_to_end"]["p50"]
    print(
        f"\nmedian end to end: live {e2e_live:.2f} ms, compute only {e2e_base:.2f} ms "
        f"(sockets, decoding of messages and publishing: {e2e_live - e2e_base:.2f} ms)"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "speed": args.speed,
                    "baseline_ms": base,
                    "live_ms": lv,
                    "end_to_end_p50_ms": {"live": e2e_live, "baseline": e2e_base},
                    "numpy": np.__version__,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
