"""Soak: 28,800 volumes (4 h at TR 0.5 s) unpaced through a decoder, with bad input mixed in.

    python tools/soak.py --workload W1 --volumes 28800 --json bench-out/soak.json

A sender process streams a workload's series (``tools/bench.py``) over and over as one series,
with a malformed message or a bad volume after every ``--bad-every`` volumes (non-JSON header,
wrong version, truncated frame, NaN volume, all-zero volume, a repeat); the decoder
(``rtdecode run``) and a subscriber process run as in the benchmark. Reported: whether every valid
volume gave exactly one result and every bad message one skip record, the decoder's RSS over time
(growth from 10 % to the end) and its processing time (received -> published) per tenth of the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from bench import (
    WORKLOADS,
    looped,
    percentiles,
    prepare,
    rss_summary,
    run_config,
    start_decoder_and_listener,
    watch_rss,
)

from rtdecode import wire
from rtdecode.transport.zmq import Subscriber, VolumeSender
from rtdecode.volume import Stage, stamps_from_dict

BAD_KINDS = ("not-json", "version", "truncated", "nan", "zeros", "repeat")


def role_send(args: argparse.Namespace) -> None:
    """Sender: the series looped to ``--volumes``, a bad message after every ``--bad-every``."""
    vols = looped(Path(args.bold), -(-args.volumes // args.series_length))[: args.volumes]
    n_bad = 0
    with VolumeSender(
        args.to, linger_ms=600_000, send_timeout_s=600.0
    ) as tx:  # see rtdecode.replay.open_sender
        for v in vols:
            tx.send(v)
            if v.seq % args.bad_every == args.bad_every - 1:
                kind = BAD_KINDS[n_bad % len(BAD_KINDS)]
                frames = wire.encode_volume(v)
                header = json.loads(bytes(frames[1]))
                nxt = dataclasses.replace(v, seq=v.seq + 1)  # refused, so the real next one is not
                if kind == "not-json":
                    tx.send_frames([b"volume", b"{not json"])
                elif kind == "version":
                    tx.send_frames([b"volume", json.dumps(header | {"version": 9}).encode(), frames[2]])
                elif kind == "truncated":
                    tx.send_frames([b"volume", frames[1], bytes(frames[2])[:-2]])
                elif kind == "nan":
                    tx.send(dataclasses.replace(nxt, data=np.full(v.data.shape, np.nan, np.float32)))
                elif kind == "zeros":
                    tx.send(dataclasses.replace(nxt, data=np.zeros_like(v.data)))
                else:
                    tx.send(dataclasses.replace(v))  # a repeat
                n_bad += 1
        tx.send_end(vols[0].session, vols[0].series, len(vols))
    print(json.dumps({"sent": len(vols), "bad": n_bad}), flush=True)


def role_listen(args: argparse.Namespace) -> None:
    """Subscriber: results per volume, skips, processing time, until the series ends."""
    seqs, skips, proc_ms, end = [], 0, [], None
    with Subscriber(args.address, ["ranking", "latency", "status"]) as sub:
        Path(args.ready).write_text("")
        while end is None:
            msg = sub.recv(300)
            if msg.topic == "ranking":
                seqs.append(msg.header["seq"])
            elif msg.topic == "latency":
                s = stamps_from_dict(msg.header["stamps"])
                proc_ms.append((s[Stage.PUBLISHED] - s[Stage.RECEIVED]) / 1e6)
            elif msg.header.get("event") == "skipped":
                skips += 1
            elif msg.header.get("event") == "end":
                end = msg.header
    Path(args.out).write_text(json.dumps({"seqs": seqs, "skips": skips, "proc_ms": proc_ms, "end": end}))


def soak(args: argparse.Namespace) -> dict:
    """Run the three processes and summarise."""
    work = Path(args.work)
    d = prepare(args.workload, work)
    bold = d / "session" / "bold.nii"
    cfg = run_config(d, "int8", args.rank_threads)
    cfg, decoder, listener, rec = start_decoder_and_listener(cfg, work, "soak", __file__)
    me = [sys.executable, __file__]
    n_series = int(json.loads((bold.parent / "session.json").read_text())["n_volumes"])
    sender = subprocess.Popen(
        me + ["send", "--bold", str(bold), "--to", cfg.input.address, "--volumes", str(args.volumes),
              "--series-length", str(n_series), "--bad-every", str(args.bad_every)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    rss, wall = watch_rss(decoder, 1.0)
    sent = json.loads(sender.communicate(timeout=60)[0].strip().splitlines()[-1])
    listener.wait(60)
    got = json.loads(rec.read_text())
    seqs = np.array(got["seqs"])
    tenths = np.array_split(np.array(got["proc_ms"]), 10)
    out = {
        "workload": args.workload,
        "volumes_sent": sent["sent"],
        "bad_sent": sent["bad"],
        "results": int(seqs.size),
        "every_volume_one_result": bool(np.array_equal(np.sort(seqs), np.arange(sent["sent"]))),
        "skip_records": got["skips"],
        "end": got["end"],
        "wall_s": wall,
        "volumes_per_s": sent["sent"] / wall,
        "processing_ms_per_tenth": [percentiles(x) for x in tenths],
    } | rss_summary(rss)
    print(json.dumps({k: v for k, v in out.items() if k != "processing_ms_per_tenth"}, indent=1))
    for i, p in enumerate(out["processing_ms_per_tenth"]):
        print(f"tenth {i + 1}: processing p50 {p['p50']:.1f} ms, p99 {p['p99']:.1f} ms")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="role")
    s = sub.add_parser("send", help="(internal) the sender process")
    s.add_argument("--bold", required=True)
    s.add_argument("--to", required=True)
    s.add_argument("--volumes", type=int, required=True)
    s.add_argument("--series-length", type=int, required=True)
    s.add_argument("--bad-every", type=int, required=True)
    li = sub.add_parser("listen", help="(internal) the subscriber process")
    li.add_argument("--address", required=True)
    li.add_argument("--out", required=True)
    li.add_argument("--ready", required=True)
    ap.add_argument("--workload", choices=sorted(WORKLOADS), default="W1")
    ap.add_argument("--work", default="bench-out")
    ap.add_argument("--volumes", type=int, default=28800)
    ap.add_argument("--bad-every", type=int, default=100)
    ap.add_argument("--rank-threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.role == "send":
        return role_send(args)
    if args.role == "listen":
        return role_listen(args)
    out = soak(args)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
